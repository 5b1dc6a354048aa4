//! Who a session's client is, named so that another process can tell whether it still runs:
//! the machine's boot ID, the client's PID namespace, its PID and its start time (a reused
//! PID is another process). Kubernetes agent Jobs carry it as an annotation, local agents in
//! their environment; `mirrord-net clean` reads it (see `kubernetes::clean`).

/// The annotation of an agent Job naming its client (see [`ClientProcess`]).
pub const CLIENT_ANNOTATION: &str = "mirrord-net/client";
/// The annotation of an agent Job with the seconds its client waits for it to start.
pub const TIMEOUT_ANNOTATION: &str = "mirrord-net/agent-timeout";
/// The environment variable of a local agent naming its client.
pub const LOCAL_CLIENT_ENV: &str = "MIRRORD_NET_CLIENT";

/// A client process, as precisely as a PID can be named: the machine's boot, its PID
/// namespace, the PID and the process's start time (so a reused PID is another process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientProcess {
    pub host: String,
    pub boot_id: String,
    pub pid_ns: u64,
    pub pid: u32,
    pub start: u64,
}

impl ClientProcess {
    /// This process.
    pub fn current() -> Option<Self> {
        let pid = std::process::id();
        Some(Self {
            host: nix::unistd::gethostname()
                .ok()?
                .to_string_lossy()
                .into_owned(),
            boot_id: boot_id()?,
            pid_ns: pid_ns()?,
            pid,
            start: start_time(pid)?,
        })
    }

    /// `host=H boot=B pidns=N pid=P start=S`.
    pub fn to_text(&self) -> String {
        format!(
            "host={} boot={} pidns={} pid={} start={}",
            self.host, self.boot_id, self.pid_ns, self.pid, self.start
        )
    }

    pub fn parse(text: &str) -> Option<Self> {
        let field = |name: &str| {
            text.split_whitespace()
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
        };
        Some(Self {
            host: field("host")?.to_owned(),
            boot_id: field("boot")?.to_owned(),
            pid_ns: field("pidns")?.parse().ok()?,
            pid: field("pid")?.parse().ok()?,
            start: field("start")?.parse().ok()?,
        })
    }

    /// Whether this process could be seen from here: same boot, same PID namespace.
    pub fn is_local_to(&self, here: &Here) -> bool {
        self.boot_id == here.boot_id && self.pid_ns == here.pid_ns
    }

    /// Whether the process still runs (on this machine: see [`Self::is_local_to`]).
    pub fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }
}

/// Where `clean` runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Here {
    pub boot_id: String,
    pub pid_ns: u64,
}

impl Here {
    pub fn current() -> Option<Self> {
        Some(Self {
            boot_id: boot_id()?,
            pid_ns: pid_ns()?,
        })
    }
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
}

fn pid_ns() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .ok()
        .map(|meta| meta.ino())
}

/// The process's start time in clock ticks since boot (field 22 of `/proc/PID/stat`).
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_reads_back_and_a_bad_one_is_none() {
        let me = ClientProcess::current().expect("this process");
        assert_eq!(ClientProcess::parse(&me.to_text()), Some(me.clone()));
        assert!(me.is_alive());
        assert!(me.is_local_to(&Here::current().unwrap()));
        let reused = ClientProcess {
            start: me.start + 1,
            ..me
        };
        assert!(!reused.is_alive(), "a reused PID is another process");
        assert_eq!(ClientProcess::parse("host=x boot=y pid=1"), None);
        assert_eq!(ClientProcess::parse(""), None);
    }
}
