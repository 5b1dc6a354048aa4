//! Reading the process table and namespace identities from /proc.
//!
//! Namespaces are compared by their `/proc/PID/ns/*` link text (`net:[4026532246]`), which is
//! what the kernel uses as their identity. Processes can vanish between two reads; every
//! function here treats a vanished process as absent rather than as an error.

use std::fs;
use std::path::Path;

/// A namespace identity, as `readlink /proc/PID/ns/KIND` prints it: `net:[4026532246]`.
pub type NsId = String;

/// One process, from `/proc/PID/stat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: i32,
    pub ppid: i32,
    pub pgid: i32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub comm: String,
}

impl Proc {
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z' || self.state == 'X'
    }
}

/// Every process (thread-group leader) now alive, zombies included.
pub fn all() -> Vec<Proc> {
    pids().into_iter().filter_map(stat).collect()
}

pub fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|dir| {
            dir.flatten()
                .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub fn stat(pid: i32) -> Option<Proc> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may itself contain spaces and parentheses: it ends at the last ')'.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let mut fields = text[close + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        pgid,
        state,
        comm,
    })
}

/// A PID no process has (the highest free one below `pid_max`).
pub fn unused_pid() -> u32 {
    let max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (1000..max)
        .rev()
        .find(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        .expect("some PID is free")
}

pub fn is_alive(pid: i32) -> bool {
    stat(pid).is_some_and(|proc| !proc.is_zombie())
}

/// The namespace of `kind` (`net`, `mnt`, `uts`, ...) of a process.
pub fn ns_of(pid: i32, kind: &str) -> Option<NsId> {
    link_text(format!("/proc/{pid}/ns/{kind}"))
}

/// The namespaces of `kind` of every thread of a process: a process may have moved one
/// thread into another namespace (setns is per thread for network namespaces).
pub fn thread_ns_of(pid: i32, kind: &str) -> Vec<NsId> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.flatten()
                .filter_map(|task| link_text(task.path().join("ns").join(kind)))
                .collect()
        })
        .unwrap_or_default()
}

/// The file name of the program a process runs (`/proc/PID/exe`), falling back to argv[0]
/// for processes whose exe link cannot be read.
pub fn program_name(pid: i32) -> Option<String> {
    let path = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|path| {
            path.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_string()
        })
        .or_else(|| cmdline(pid).into_iter().next())?;
    Some(
        Path::new(&path)
            .file_name()
            .map_or(path.clone(), |name| name.to_string_lossy().into_owned()),
    )
}

/// How many descriptors process `pid` has open (0 once it is gone).
pub fn open_fds(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| fds.count())
        .unwrap_or(0)
}

pub fn cmdline(pid: i32) -> Vec<String> {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|bytes| {
            bytes
                .split(|&byte| byte == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process descended from `root` (not `root` itself), following parent links.
pub fn descendants_of(root: i32) -> Vec<Proc> {
    let procs = all();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for proc in procs.iter().filter(|proc| proc.ppid == parent) {
            frontier.push(proc.pid);
            found.push(proc.clone());
        }
    }
    found
}

/// Processes any of whose threads is in the namespace `ns` of `kind`.
pub fn processes_in(kind: &str, ns: &str) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&pid| thread_ns_of(pid, kind).iter().any(|id| id == ns))
        .collect()
}

/// Open file descriptors, in any process, whose link text is `target` (e.g. a namespace held
/// open as `net:[...]`): (pid, fd).
pub fn fds_pointing_to(target: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for pid in pids() {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if link_text(fd.path()).as_deref() == Some(target) {
                found.push((pid, fd.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    found
}

/// The TCP ports `pid` listens on in this process's network namespace (its listening
/// sockets found among its descriptors, by inode, in `/proc/net/tcp` and `tcp6`).
pub fn listening_tcp_ports(pid: i32) -> Vec<u16> {
    let inodes: Vec<String> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| link_text(fd.path()))
                .filter_map(|text| {
                    Some(text.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let mut ports = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if *state != "0A" || !inodes.iter().any(|wanted| wanted == inode) {
                continue;
            }
            if let Some(port) = local
                .rsplit(':')
                .next()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok())
            {
                ports.push(port);
            }
        }
    }
    ports
}

fn link_text(path: impl AsRef<Path>) -> Option<String> {
    fs::read_link(path)
        .ok()
        .map(|target| target.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = stat(std::process::id() as i32).expect("own stat");
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert!(ns_of(me.pid, "net").unwrap().starts_with("net:["));
    }

    #[test]
    fn a_child_is_a_descendant() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let found = descendants_of(std::process::id() as i32)
            .iter()
            .any(|proc| proc.pid == pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(found);
    }
}
