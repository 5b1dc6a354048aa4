//! A memory cgroup of a test's own, to run one process (the agent) under a memory limit.
//!
//! The client starts its local agent from `$MIRRORD_NET_AGENT`; [`MemoryCgroup::wrapper`]
//! writes a script for that variable which moves itself into the cgroup and then `exec`s the
//! real agent, so the agent is the client's child as usual (same PID, same inherited
//! descriptors) and every page it ever touches is charged to the cgroup.
//!
//! Both cgroup layouts are handled, since machines differ:
//!
//! | layout                       | where the cgroup is made                    | limit, OOM kills |
//! |------------------------------|---------------------------------------------|------------------|
//! | v2 (unified, memory on it)   | `/sys/fs/cgroup/<name>` (the root may hold processes and enable controllers) | `memory.max`, `oom_kill` of `memory.events` |
//! | v1 (memory hierarchy apart)  | under the test's own memory cgroup, so any limit set around the suite still holds | `memory.limit_in_bytes` (and `memsw`), `oom_kill` of `memory.oom_control` |
//!
//! Names carry the test's unique id, so parallel tests never share one. `Drop` kills whatever
//! is still inside (only processes the test put there) and removes the directory, on failure
//! too.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const V2_ROOT: &str = "/sys/fs/cgroup";

/// Where the cgroup v2 hierarchy is mounted: `/sys/fs/cgroup` on a unified system,
/// `/sys/fs/cgroup/unified` on a hybrid one; `None` without one.
pub fn v2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        // "... MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS"
        let (before, after) = line.split_once(" - ")?;
        (after.split_whitespace().next() == Some("cgroup2"))
            .then(|| before.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}
const V1_ROOT: &str = "/sys/fs/cgroup/memory";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

pub struct MemoryCgroup {
    dir: PathBuf,
    version: Version,
}

impl MemoryCgroup {
    /// Makes cgroup `name` limited to `limit` bytes of memory (no swap).
    pub fn create(name: &str, limit: u64) -> Result<MemoryCgroup> {
        let v2_controllers = fs::read_to_string(Path::new(V2_ROOT).join("cgroup.controllers"));
        let (dir, version) = match v2_controllers {
            Ok(controllers) if controllers.split_whitespace().any(|c| c == "memory") => {
                let subtree = Path::new(V2_ROOT).join("cgroup.subtree_control");
                let enabled = fs::read_to_string(&subtree).unwrap_or_default();
                if !enabled.split_whitespace().any(|c| c == "memory") {
                    fs::write(&subtree, "+memory")
                        .with_context(|| format!("enabling memory in {}", subtree.display()))?;
                }
                (Path::new(V2_ROOT).join(name), Version::V2)
            }
            _ if Path::new(V1_ROOT).join("memory.limit_in_bytes").is_file() => {
                (own_v1_cgroup()?.join(name), Version::V1)
            }
            _ => bail!("no cgroup memory controller under {V2_ROOT} (neither v2 nor v1)"),
        };
        fs::create_dir(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        let cgroup = MemoryCgroup { dir, version };
        match version {
            Version::V2 => {
                cgroup.write("memory.max", &limit.to_string())?;
                // Absent without swap accounting; then there is no swap to escape to.
                let _ = cgroup.write("memory.swap.max", "0");
            }
            Version::V1 => {
                cgroup.write("memory.limit_in_bytes", &limit.to_string())?;
                let _ = cgroup.write("memory.memsw.limit_in_bytes", &limit.to_string());
            }
        }
        Ok(cgroup)
    }

    pub fn version(&self) -> Version {
        self.version
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A shell script in `dir` that joins this cgroup and execs `program` with its arguments.
    pub fn wrapper(&self, dir: &Path, program: &Path) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let script = dir.join("in-cgroup.sh");
        fs::write(
            &script,
            format!(
                "#!/bin/sh\necho $$ > '{}' || exit 1\nexec '{}' \"$@\"\n",
                self.dir.join("cgroup.procs").display(),
                program.display()
            ),
        )
        .with_context(|| format!("writing {}", script.display()))?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        Ok(script)
    }

    /// The processes in the cgroup.
    pub fn procs(&self) -> Vec<i32> {
        self.read("cgroup.procs")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect()
    }

    /// Bytes charged to the cgroup now.
    pub fn usage(&self) -> Result<u64> {
        let file = match self.version {
            Version::V2 => "memory.current",
            Version::V1 => "memory.usage_in_bytes",
        };
        self.read_number(file)
    }

    /// The most ever charged to the cgroup (`None` where the kernel does not keep it).
    pub fn peak(&self) -> Option<u64> {
        let file = match self.version {
            Version::V2 => "memory.peak",
            Version::V1 => "memory.max_usage_in_bytes",
        };
        self.read_number(file).ok()
    }

    /// The kernel's breakdown of what is charged (`memory.stat`), plus on v1 the kernel's own
    /// memory (`memory.kmem.usage_in_bytes`: sockets, page tables, slab), which v2 lists in
    /// `memory.stat` already.
    pub fn stat(&self) -> Result<String> {
        let stat = self.read("memory.stat")?;
        Ok(match self.version {
            Version::V2 => stat,
            Version::V1 => match self.read_number("memory.kmem.usage_in_bytes") {
                Ok(kmem) => format!("{stat}kmem {kmem}\n"),
                Err(_) => stat,
            },
        })
    }

    /// The file that counts OOM kills, as text: `memory.events` (v2) or `memory.oom_control` (v1).
    pub fn events(&self) -> Result<String> {
        match self.version {
            Version::V2 => self.read("memory.events"),
            Version::V1 => self.read("memory.oom_control"),
        }
    }

    /// Processes the kernel killed for want of memory in this cgroup.
    pub fn oom_kills(&self) -> Result<u64> {
        let events = self.events()?;
        events
            .lines()
            .find_map(|line| line.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .with_context(|| format!("no oom_kill count in {}:\n{events}", self.dir.display()))
    }

    /// Times an allocation hit the limit (v2: `max` of `memory.events`; v1: `memory.failcnt`).
    pub fn limit_hits(&self) -> Result<u64> {
        match self.version {
            Version::V2 => {
                let events = self.read("memory.events")?;
                events
                    .lines()
                    .find_map(|line| line.strip_prefix("max "))
                    .and_then(|n| n.trim().parse().ok())
                    .context("no max count in memory.events")
            }
            Version::V1 => self.read_number("memory.failcnt"),
        }
    }

    fn read(&self, file: &str) -> Result<String> {
        let path = self.dir.join(file);
        fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    fn read_number(&self, file: &str) -> Result<u64> {
        let text = self.read(file)?;
        text.trim()
            .parse()
            .with_context(|| format!("{file} holds {text:?}"))
    }

    fn write(&self, file: &str, value: &str) -> Result<()> {
        let path = self.dir.join(file);
        fs::write(&path, value).with_context(|| format!("writing {value} to {}", path.display()))
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.procs();
            if procs.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in procs {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Err(err) = fs::remove_dir(&self.dir) {
            eprintln!("could not remove cgroup {}: {err}", self.dir.display());
        }
    }
}

/// This process's cgroup in the v1 memory hierarchy.
fn own_v1_cgroup() -> Result<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let path = text
        .lines()
        .find_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })
        .context("no memory line in /proc/self/cgroup")?;
    let dir = Path::new(V1_ROOT).join(path.trim_start_matches('/'));
    if !dir.is_dir() {
        bail!(
            "this process's memory cgroup {} is not visible (a cgroup namespace?)",
            dir.display()
        );
    }
    Ok(dir)
}
