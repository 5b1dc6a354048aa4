//! The memory limit the agent runs under: the smallest limit of its memory cgroup and the
//! cgroups above it (a Kubernetes container's `resources.limits.memory`, a pod's, a test's).
//!
//! The agent sizes what a session may hold to it (`Limits::within_memory`, the allocator's
//! kept memory): a limit the defaults would outgrow ends in the kernel's OOM killer, which
//! takes every flow of the session at once, where a lower cap refuses only the flows beyond
//! it. Read once at start, before the agent enters the target's namespaces (the cgroup files
//! are those of the agent's own mount namespace).
//!
//! * cgroup v2: `/proc/self/cgroup` holds `0::PATH`; each of `PATH`'s directories under
//!   `/sys/fs/cgroup` may have a `memory.max` (`max` when unlimited), and the smallest rules.
//! * cgroup v1: the `memory` line's `PATH`; `memory.stat`'s `hierarchical_memory_limit`
//!   under `/sys/fs/cgroup/memory/PATH` is already the smallest above (a huge number when
//!   unlimited).
//!
//! In a container with a cgroup namespace, `PATH` is `/` and the container's cgroup is the
//! mount's root, which is where the walk starts. Anything unreadable means no limit known.

use std::path::{Path, PathBuf};

/// Where the cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// At or above this, a limit is "none" (v1 writes unlimited as the largest page multiple).
const UNLIMITED: u64 = 1 << 60;

/// The memory limit of this process, in bytes, if it has one.
pub fn own() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    limit_under(Path::new(CGROUP_ROOT), &cgroups)
}

/// The memory limit for a process whose `/proc/PID/cgroup` reads `cgroups`, with the
/// cgroup file systems mounted under `root`.
fn limit_under(root: &Path, cgroups: &str) -> Option<u64> {
    let (v2, v1) = paths(cgroups);
    let v2 = v2.and_then(|path| v2_limit(root, &path));
    let v1 = v1.and_then(|path| v1_limit(&root.join("memory"), &path));
    v2.into_iter()
        .chain(v1)
        .min()
        .filter(|&limit| limit < UNLIMITED)
}

/// The cgroup v2 path and the v1 memory controller's path in a `/proc/PID/cgroup` text.
fn paths(cgroups: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_owned());
        } else if controllers.split(',').any(|c| c == "memory") {
            v1 = Some(path.to_owned());
        }
    }
    (v2, v1)
}

/// The directory of `path` under a hierarchy mounted at `mount`, or the mount itself when
/// the path is not visible there (a cgroup namespace shows its root as `/`).
fn directory(mount: &Path, path: &str) -> PathBuf {
    let dir = mount.join(path.trim_start_matches('/'));
    if dir.is_dir() {
        dir
    } else {
        mount.to_owned()
    }
}

/// The smallest `memory.max` from the cgroup at `path` up to the mount's root.
fn v2_limit(mount: &Path, path: &str) -> Option<u64> {
    let mut dir = directory(mount, path);
    let mut smallest: Option<u64> = None;
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join("memory.max")) {
            if let Ok(limit) = text.trim().parse::<u64>() {
                smallest = Some(smallest.map_or(limit, |s| s.min(limit)));
            }
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            break;
        }
    }
    smallest
}

/// `hierarchical_memory_limit` of the v1 cgroup at `path`.
fn v1_limit(mount: &Path, path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(directory(mount, path).join("memory.stat")).ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("hierarchical_memory_limit "))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of files, removed when dropped.
    struct Tree(PathBuf);

    impl Tree {
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tree(files: &[(&str, &str)]) -> Tree {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mnet-cgroup-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        Tree(dir)
    }

    #[test]
    fn v2_takes_the_smallest_limit_on_the_way_up() {
        let root = tree(&[
            ("kubepods/memory.max", "1073741824\n"),
            ("kubepods/pod1/memory.max", "67108864\n"),
            ("kubepods/pod1/agent/memory.max", "max\n"),
        ]);
        let cgroups = "0::/kubepods/pod1/agent\n";
        assert_eq!(limit_under(root.path(), cgroups), Some(64 << 20));
    }

    #[test]
    fn v2_in_a_cgroup_namespace_reads_the_mount_root() {
        let root = tree(&[("memory.max", "134217728\n")]);
        assert_eq!(limit_under(root.path(), "0::/\n"), Some(128 << 20));
    }

    #[test]
    fn v1_reads_the_hierarchical_limit_of_the_memory_controller() {
        let root = tree(&[(
            "memory/process_api/x/agent/memory.stat",
            "cache 0\nhierarchical_memory_limit 67108864\nhierarchical_memsw_limit 67108864\n",
        )]);
        let cgroups = "12:pids:/x\n4:memory:/process_api/x/agent\n1:name=systemd:/x\n";
        assert_eq!(limit_under(root.path(), cgroups), Some(64 << 20));
    }

    #[test]
    fn unlimited_or_unreadable_is_no_limit() {
        let root = tree(&[
            (
                "memory/memory.stat",
                "hierarchical_memory_limit 9223372036854771712\n",
            ),
            ("memory.max", "max\n"),
        ]);
        assert_eq!(limit_under(root.path(), "4:memory:/\n0::/\n"), None);
        assert_eq!(limit_under(root.path(), "garbage"), None);
        assert_eq!(limit_under(Path::new("/nonexistent"), "0::/a\n"), None);
    }
}
