//! Finding a container's main process from its container ID.
//!
//! A Kubernetes agent pod runs privileged with `hostPID: true` on the target's node, so it sees
//! every process of the machine: the target's containers, but also the cluster's daemons, the
//! shims, shells, and other pods. It is told the target container's ID as Kubernetes writes it
//! in the pod status (`containerd://<64 hex>`, `cri-o://…`, `docker://…`) and finds the
//! container's processes by their cgroup, the one place the runtime writes the full ID for
//! every process it starts:
//!
//! | runtime, cgroup driver | a line of `/proc/PID/cgroup` |
//! | --- | --- |
//! | containerd or Docker, cgroupfs | `4:memory:/kubepods/besteffort/pod<UID>/<ID>` |
//! | containerd, systemd | `0::/kubepods.slice/…/cri-containerd-<ID>.scope` |
//! | CRI-O, systemd | `0::/kubepods.slice/…/crio-<ID>.scope` |
//! | CRI-O, cgroupfs | `0::/kubepods/burstable/pod<UID>/crio-<ID>` |
//! | Docker, systemd | `0::/system.slice/docker-<ID>.scope` |
//!
//! The match is strict: one path component must be exactly the ID, or the ID with one of the
//! runtimes' prefixes (and `.scope`). A substring match would also take CRI-O's
//! `crio-conmon-<ID>.scope` (the monitor, not the container), and the pod UID alone names
//! every container of the pod (mountinfo shows it for every process on a default setup, so
//! it is no use either). Any component counts, not only the last: a container that makes its
//! own sub-cgroups (systemd inside a container) keeps the ID above them, and under a private
//! cgroup namespace the path is relative (`/../../pod<UID>/<ID>`).
//!
//! Of the container's processes, the main one is the process whose parent is outside the
//! container; `kubectl exec` sessions also have their parent outside (the shim), so among
//! several such roots the one started first wins (the container's init starts before any exec
//! into it). Parsing and choosing are free of I/O and unit tested on real lines; the `/proc`
//! walk is [`find_main_process`].

use std::fmt;
use std::io;
use std::path::Path;

/// A container ID as the runtimes write it in cgroup paths: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerId(String);

/// Prefixes the runtimes put before the ID in a cgroup component name (systemd driver, CRI-O
/// cgroupfs).
const RUNTIME_PREFIXES: &[&str] = &["cri-containerd-", "crio-", "docker-"];
/// URL schemes Kubernetes puts before the ID in `containerStatuses[].containerID`.
const STATUS_SCHEMES: &[&str] = &["containerd://", "cri-o://", "docker://"];
const ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    #[error(
        "container ID {given:?} is not one Kubernetes writes: expected `containerd://`, \
         `cri-o://` or `docker://` followed by 64 hex digits, or the 64 hex digits alone"
    )]
    BadId { given: String },
    #[error(
        "no process of container {id} on this node: the container has exited, or the agent \
         runs on another node or without hostPID"
    )]
    NoProcess { id: ContainerId },
    #[error("cannot list processes in /proc: {0}")]
    Proc(String),
}

impl ContainerId {
    /// Parses an ID as Kubernetes writes it (with or without the runtime's scheme).
    pub fn parse(given: &str) -> Result<Self, ContainerError> {
        let bare = STATUS_SCHEMES
            .iter()
            .find_map(|scheme| given.strip_prefix(scheme))
            .unwrap_or(given);
        let is_hex = bare
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if bare.len() != ID_LEN || !is_hex {
            return Err(ContainerError::BadId {
                given: given.to_owned(),
            });
        }
        Ok(Self(bare.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when one component of a cgroup path names this container.
    fn names_component(&self, component: &str) -> bool {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        if name == self.0 {
            // cgroupfs names the bare ID; a `.scope` unit is always prefixed.
            return name.len() == component.len();
        }
        RUNTIME_PREFIXES
            .iter()
            .any(|prefix| name.strip_prefix(prefix) == Some(self.0.as_str()))
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// True when the text of a `/proc/PID/cgroup` file puts the process in container `id` (in any
/// hierarchy: v1 lines `N:controllers:/path`, the v2 line `0::/path`).
pub fn cgroup_names_container(cgroup: &str, id: &ContainerId) -> bool {
    cgroup.lines().any(|line| {
        // The path is everything after the second colon; it may itself hold colons.
        let Some(path) = line.splitn(3, ':').nth(2) else {
            return false;
        };
        path.split('/')
            .any(|component| id.names_component(component))
    })
}

/// One process of a container, as far as choosing the main one needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub parent: u32,
    /// Start time in clock ticks since boot (`/proc/PID/stat` field 22).
    pub start_time: u64,
}

/// The container's main process among its `members`: a process whose parent is not a member,
/// the earliest started if there are several (execs into the container come later).
pub fn main_process(members: &[Member]) -> Option<u32> {
    members
        .iter()
        .filter(|member| !members.iter().any(|other| other.pid == member.parent))
        .min_by_key(|member| (member.start_time, member.pid))
        .map(|member| member.pid)
}

/// The parent PID and start time from the text of `/proc/PID/stat`.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses: the
    // fields after it start after the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; field 4 (ppid) fields[1]; field 22 (starttime) fields[19].
    let parent = fields.get(1)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((parent, start_time))
}

/// Walks `proc_root` (normally `/proc`) for the processes of container `id` and returns the
/// main one. Processes that exit during the walk are skipped.
pub fn find_main_process(proc_root: &Path, id: &ContainerId) -> Result<u32, ContainerError> {
    let entries =
        std::fs::read_dir(proc_root).map_err(|err| ContainerError::Proc(err.to_string()))?;
    let mut members = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| ContainerError::Proc(err.to_string()))?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let read =
            |file: &str| -> io::Result<String> { std::fs::read_to_string(entry.path().join(file)) };
        let Ok(cgroup) = read("cgroup") else {
            continue;
        };
        if !cgroup_names_container(&cgroup, id) {
            continue;
        }
        let Some((parent, start_time)) = read("stat").ok().as_deref().and_then(parse_stat) else {
            continue;
        };
        members.push(Member {
            pid,
            parent,
            start_time,
        });
    }
    tracing::debug!(container = %id, ?members, "processes of the container");
    main_process(&members).ok_or_else(|| ContainerError::NoProcess { id: id.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1d5c0b8e7a4f2d9c6b1a0e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c";
    const OTHER: &str = "9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d";

    fn id() -> ContainerId {
        ContainerId::parse(ID).unwrap()
    }

    #[test]
    fn ids_parse_as_kubernetes_writes_them() {
        for given in [
            format!("containerd://{ID}"),
            format!("cri-o://{ID}"),
            format!("docker://{ID}"),
            ID.to_owned(),
        ] {
            assert_eq!(ContainerId::parse(&given), Ok(id()), "{given}");
        }
    }

    #[test]
    fn malformed_ids_are_refused() {
        for given in [
            "",
            "containerd://",
            &ID[..12],
            &format!("{ID}0"),
            &ID.to_uppercase(),
            &format!("rkt://{ID}"),
            "containerd://../../etc",
        ] {
            assert!(
                matches!(ContainerId::parse(given), Err(ContainerError::BadId { .. })),
                "{given}"
            );
        }
    }

    // A process of a container of the test cluster, as read on its node (containerd, cgroupfs
    // driver, cgroup v1 hierarchies plus the v2 line of a hybrid setup); the ID is replaced.
    fn containerd_cgroupfs_v1() -> String {
        let pod = "/kubepods/besteffort/pod90b2afe5-c024-4c47-9057-f6f989eaf5e8";
        [
            "9:name=systemd",
            "8:pids",
            "7:blkio",
            "6:freezer",
            "5:devices",
            "4:memory",
            "3:cpuset",
            "2:cpuacct",
            "1:cpu",
            "0:",
        ]
        .iter()
        .map(|hierarchy| format!("{hierarchy}:{pod}/{ID}\n"))
        .collect()
    }

    #[test]
    fn each_runtime_and_driver_names_its_container() {
        let samples = [
            containerd_cgroupfs_v1(),
            // containerd, systemd driver, cgroup v2.
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod8d1e0c3b_6a5f_4e2d_9c1b_0a9e8d7c6b5a.slice/\
                 cri-containerd-{ID}.scope\n"
            ),
            // CRI-O, systemd driver, cgroup v1.
            format!(
                "11:memory:/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod1b2c3d4e_5f6a_7b8c_9d0e_1f2a3b4c5d6e.slice/crio-{ID}.scope\n\
                 1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/\
                 kubepods-besteffort-pod1b2c3d4e_5f6a_7b8c_9d0e_1f2a3b4c5d6e.slice/crio-{ID}.scope\n"
            ),
            // CRI-O, cgroupfs driver.
            format!("0::/kubepods/burstable/pod1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e/crio-{ID}\n"),
            // Docker (dockershim), cgroupfs and systemd drivers.
            format!("3:cpuset:/kubepods/pod1b2c3d4e-5f6a-7b8c-9d0e-1f2a3b4c5d6e/{ID}\n"),
            format!("0::/system.slice/docker-{ID}.scope\n"),
            // A private cgroup namespace shows paths relative to the reader's.
            format!("0::/../../besteffort/pod5ae4f8a1-3a9e-4d0c-9f1b-1c0a3e6f2b7d/{ID}\n"),
            // systemd inside the container: sub-cgroups below the container's.
            format!("0::/kubepods.slice/cri-containerd-{ID}.scope/init.scope\n"),
        ];
        for sample in &samples {
            assert!(cgroup_names_container(sample, &id()), "{sample}");
            let other = ContainerId::parse(OTHER).unwrap();
            assert!(!cgroup_names_container(sample, &other), "{sample}");
        }
    }

    #[test]
    fn near_misses_do_not_name_the_container() {
        let samples = [
            // CRI-O's monitor of the container is not the container.
            format!("0::/kubepods.slice/crio-conmon-{ID}.scope\n"),
            // The pod's cgroup (the pause process, other containers).
            "4:memory:/kubepods/besteffort/pod5ae4f8a1-3a9e-4d0c-9f1b-1c0a3e6f2b7d\n".to_owned(),
            // Longer and shorter names that contain the ID.
            format!("0::/kubepods/besteffort/podX/{ID}0\n"),
            format!("0::/kubepods/besteffort/podX/{}\n", &ID[..63]),
            format!("0::/kubepods/besteffort/podX/x{ID}\n"),
            // A bare ID is a cgroupfs directory, never a systemd unit.
            format!("0::/kubepods/{ID}.scope\n"),
            // The host's processes.
            "0::/\n12:pids:/user.slice/user-0.slice/session-4.scope\n".to_owned(),
            // The ID elsewhere in a line, not as a path component.
            format!("4:memory{ID}:/\n"),
        ];
        for sample in &samples {
            assert!(!cgroup_names_container(sample, &id()), "{sample}");
        }
    }

    #[test]
    fn stat_parsing_survives_odd_command_names() {
        let stat = "4242 (my (odd) cmd) S 4200 4242 4242 0 -1 4194560 137 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 2437120 178 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0";
        assert_eq!(parse_stat(stat), Some((4200, 987654)));
        assert_eq!(parse_stat("4242 (truncated) S"), None);
    }

    #[test]
    fn the_main_process_is_the_earliest_root_of_the_container() {
        let member = |pid, parent, start_time| Member {
            pid,
            parent,
            start_time,
        };
        // shim 100 started init 101, which forked 102; `kubectl exec` made 200 (also a child
        // of the shim, started later) which forked 201.
        let members = [
            member(102, 101, 50),
            member(200, 100, 90),
            member(201, 200, 91),
            member(101, 100, 40),
        ];
        assert_eq!(main_process(&members), Some(101));
        // Without 101, its child 102 is the earliest process with a parent outside.
        assert_eq!(main_process(&members[..3]), Some(102));
        assert_eq!(main_process(&members[1..3]), Some(200));
        assert_eq!(main_process(&[]), None);
    }

    #[test]
    fn the_walk_reads_cgroup_and_stat_of_each_process() {
        // A /proc look-alike: init 101 of the container, its child 102, the shim 100 and a
        // host process 7; entries that are no process are skipped.
        let root = std::env::temp_dir().join(format!("container-walk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let process = |pid: u32, parent: u32, start: u64, cgroup: &str| {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("cgroup"), cgroup).unwrap();
            let stat =
                format!("{pid} (sh) S {parent} 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 {start} 0");
            std::fs::write(dir.join("stat"), stat).unwrap();
        };
        let inside = containerd_cgroupfs_v1();
        process(7, 1, 5, "0::/\n");
        process(100, 1, 30, "0::/kubepods/besteffort/pod5ae4f8a1\n");
        process(101, 100, 40, &inside);
        process(102, 101, 50, &inside);
        std::fs::create_dir_all(root.join("self")).unwrap();
        std::fs::write(root.join("uptime"), "1 1").unwrap();
        let found = find_main_process(&root, &id());
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(found, Ok(101));
    }

    #[test]
    fn the_walk_finds_no_such_container_on_this_machine() {
        let err = find_main_process(Path::new("/proc"), &id()).unwrap_err();
        assert_eq!(err, ContainerError::NoProcess { id: id() });
        assert!(err
            .to_string()
            .starts_with(&format!("no process of container {ID}")));
    }
}
