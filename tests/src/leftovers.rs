//! Proving that a session left nothing behind.
//!
//! A [`Baseline`] is taken before the session starts; [`Baseline::assert_clean_within`] then
//! polls until none of these remain, or fails listing those that do:
//!
//! - a `mirrord-net-agent` in the pod's network namespace, or descended from this test;
//! - any other process descended from this test that the fixture did not start. The test
//!   process makes itself a child subreaper, so a process whose parent died (an agent whose
//!   client was SIGKILLed) is re-parented to the test and still counts as descended from it;
//! - any process in, or file descriptor holding, the session's network or mount namespace
//!   (a namespace lives while either does; its TUN and mounts live with it);
//! - a mount in the host's mount table, a TUN device in the host namespace, or an interface
//!   in the pod namespace that was not there before.
//!
//! Everything is scoped to this test's pod and descendants, so tests running in parallel do
//! not see each other's sessions. nextest runs every test in its own process, which is what
//! makes the subreaper and descendant scoping exact.

use std::collections::HashSet;
use std::fs;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::pod::Pod;
use crate::procfs::{self, NsId};
use crate::sweep;

/// The namespaces a session's command ran in, as it printed them with [`PRINT_NAMESPACES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionNamespaces {
    pub net: NsId,
    pub mnt: NsId,
    pub uts: NsId,
}

/// A shell command that prints the namespaces it runs in, one per line.
pub const PRINT_NAMESPACES: &str = "readlink /proc/self/ns/net /proc/self/ns/mnt /proc/self/ns/uts";

impl SessionNamespaces {
    /// Reads what [`PRINT_NAMESPACES`] printed.
    pub fn parse(stdout: &str) -> Option<SessionNamespaces> {
        let find = |kind: &str| {
            stdout
                .lines()
                .map(str::trim)
                .find(|line| line.starts_with(&format!("{kind}:[")))
                .map(str::to_string)
        };
        Some(SessionNamespaces {
            net: find("net")?,
            mnt: find("mnt")?,
            uts: find("uts")?,
        })
    }
}

/// Makes orphaned descendants of this process its children (`PR_SET_CHILD_SUBREAPER`).
pub fn become_subreaper() {
    // SAFETY: prctl with integer arguments.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(
        rc,
        0,
        "PR_SET_CHILD_SUBREAPER: {}",
        std::io::Error::last_os_error()
    );
}

/// One thing a session left behind, with the process to kill if it is one.
struct Leftover {
    what: String,
    pid: Option<i32>,
}

impl Leftover {
    fn process(pid: i32, what: String) -> Leftover {
        Leftover {
            what,
            pid: Some(pid),
        }
    }

    fn other(what: String) -> Leftover {
        Leftover { what, pid: None }
    }
}

/// What the machine looked like before a session.
#[derive(Debug)]
pub struct Baseline {
    me: i32,
    pod_net: Option<NsId>,
    pod_links: Vec<String>,
    /// `nft list ruleset` in the pod's namespace.
    pod_ruleset: Option<String>,
    fixture_pgids: Vec<i32>,
    host_mounts: Vec<String>,
    host_tuns: HashSet<String>,
    pod_name: Option<String>,
}

impl Baseline {
    /// Takes the baseline (and makes this test process a subreaper). `pod` is `None` for
    /// sessions that have no pod, such as one on a PID that does not exist.
    pub fn capture(pod: Option<&Pod>) -> Baseline {
        become_subreaper();
        Baseline {
            me: std::process::id() as i32,
            pod_net: pod.map(|pod| pod.pod_netns().id().expect("pod netns id")),
            pod_links: pod
                .map(|pod| pod.pod_netns().links().expect("pod links"))
                .unwrap_or_default(),
            pod_ruleset: pod.map(crate::netfilter_state::pod_nft_ruleset),
            fixture_pgids: pod.map(Pod::fixture_pgids).unwrap_or_default(),
            host_mounts: host_mounts(),
            host_tuns: host_tuns(),
            pod_name: pod.map(|pod| pod.pod_netns().name().to_string()),
        }
    }

    /// Polls until nothing is left, or panics after `within` listing what is. Before it
    /// panics it SIGKILLs the leftover processes, so a failing test does not leave them on
    /// the machine either.
    #[track_caller]
    pub fn assert_clean_within(
        &self,
        pod: Option<&Pod>,
        session: Option<&SessionNamespaces>,
        within: Duration,
    ) {
        poll_until_clean(
            within,
            Duration::from_millis(20),
            || self.find(pod, session),
            || format!("the session left things behind {within:?} after it ended"),
        );
    }

    /// Counts the process group `pgid` (a server the test started itself, outside the pod
    /// fixture) as part of the fixture: its processes are not leftovers.
    pub fn also_fixture(mut self, pgid: i32) -> Baseline {
        self.fixture_pgids.push(pgid);
        self
    }

    /// [`Baseline::assert_clean_within`] for many sessions at once: polls until none of them
    /// left anything (and nothing else is left), or panics after `within` listing what is,
    /// with `context` (what the sessions were) on the first line. A session's namespaces
    /// count as left only when a process of this test's holds them (see `find_all`).
    #[track_caller]
    pub fn assert_all_clean_within(
        &self,
        pod: Option<&Pod>,
        sessions: &[SessionNamespaces],
        within: Duration,
        context: &str,
    ) {
        poll_until_clean(
            within,
            Duration::from_millis(50),
            || self.find_all(pod, sessions),
            || format!("{context}: the sessions left things behind {within:?} after they ended"),
        );
    }

    /// What any of `sessions` (or no session in particular) left, each thing once.
    ///
    /// The kernel gives a new namespace the lowest free number, so the number of a session
    /// that ended is soon another's, maybe a parallel test's. With many sessions that is
    /// likely, so here only processes descended from this test (everything its sessions
    /// started, orphans included) count as holding one of `sessions`' namespaces.
    fn find_all(&self, pod: Option<&Pod>, sessions: &[SessionNamespaces]) -> Vec<Leftover> {
        let mut left = self.find(pod, None);
        let ours: HashSet<i32> = procfs::descendants_of(self.me)
            .iter()
            .map(|proc| proc.pid)
            .collect();
        let mut wanted: Vec<(&str, &NsId)> = Vec::new();
        for session in sessions {
            for kind in [("net", &session.net), ("mnt", &session.mnt)] {
                if !wanted.contains(&kind) {
                    wanted.push(kind);
                }
            }
        }
        for (kind, ns) in wanted {
            for pid in procfs::processes_in(kind, ns) {
                if ours.contains(&pid) && procfs::is_alive(pid) {
                    left.push(Leftover::process(
                        pid,
                        format!("process {pid} still in a session's {ns}"),
                    ));
                }
            }
            for (pid, fd) in procfs::fds_pointing_to(ns) {
                if ours.contains(&pid) {
                    left.push(Leftover::other(format!(
                        "process {pid} holds a session's {ns} open as fd {fd}"
                    )));
                }
            }
        }
        left
    }

    /// Everything a session left, described; empty if nothing.
    pub fn leftovers(&self, pod: Option<&Pod>, session: Option<&SessionNamespaces>) -> Vec<String> {
        self.find(pod, session)
            .into_iter()
            .map(|item| item.what)
            .collect()
    }

    fn find(&self, pod: Option<&Pod>, session: Option<&SessionNamespaces>) -> Vec<Leftover> {
        self.reap_orphans();
        let mut left = Vec::new();
        let descendants = procfs::descendants_of(self.me);

        for pid in procfs::pids() {
            let Some(name) = procfs::program_name(pid) else {
                continue;
            };
            if !name.contains("mirrord-net-agent") || !procfs::is_alive(pid) {
                continue;
            }
            let in_pod = self
                .pod_net
                .as_ref()
                .is_some_and(|net| procfs::thread_ns_of(pid, "net").contains(net));
            if in_pod || descendants.iter().any(|proc| proc.pid == pid) {
                let cmdline = procfs::cmdline(pid);
                left.push(Leftover::process(
                    pid,
                    format!("agent process {pid} still running: {cmdline:?}"),
                ));
            }
        }
        for proc in &descendants {
            if proc.is_zombie() || self.fixture_pgids.contains(&proc.pgid) {
                continue;
            }
            let cmdline = procfs::cmdline(proc.pid);
            left.push(Leftover::process(
                proc.pid,
                format!(
                    "process {} ({}) left running: {cmdline:?}",
                    proc.pid, proc.comm
                ),
            ));
        }
        if let Some(session) = session {
            for (kind, ns) in [("net", &session.net), ("mnt", &session.mnt)] {
                for pid in procfs::processes_in(kind, ns) {
                    if procfs::is_alive(pid) {
                        left.push(Leftover::process(
                            pid,
                            format!("process {pid} still in the session's {ns}"),
                        ));
                    }
                }
                for (pid, fd) in procfs::fds_pointing_to(ns) {
                    left.push(Leftover::other(format!(
                        "process {pid} holds the session's {ns} open as fd {fd}"
                    )));
                }
            }
        }
        let before: HashSet<&String> = self.host_mounts.iter().collect();
        for mount in host_mounts() {
            if !before.contains(&mount) {
                left.push(Leftover::other(format!(
                    "new mount in the host's mount table: {mount}"
                )));
            }
        }
        for tun in host_tuns().difference(&self.host_tuns) {
            left.push(Leftover::other(format!(
                "new TUN device {tun} in the host namespace"
            )));
        }
        if let (Some(pod), Some(_)) = (pod, &self.pod_name) {
            if let Ok(links) = pod.pod_netns().links() {
                for link in links.iter().filter(|link| !self.pod_links.contains(link)) {
                    left.push(Leftover::other(format!(
                        "new interface {link} in the pod's namespace"
                    )));
                }
            }
            let ruleset = crate::netfilter_state::pod_nft_ruleset(pod);
            if Some(&ruleset) != self.pod_ruleset.as_ref() {
                left.push(Leftover::other(format!(
                    "the pod's nftables rule set changed:\n{ruleset}"
                )));
            }
        }
        left
    }

    /// Reaps exited processes that were re-parented to this (subreaper) test process.
    fn reap_orphans(&self) {
        for proc in procfs::all() {
            if proc.ppid == self.me && proc.is_zombie() && !self.fixture_pgids.contains(&proc.pgid)
            {
                let _ = waitpid(Pid::from_raw(proc.pid), Some(WaitPidFlag::WNOHANG));
            }
        }
    }
}

/// Reaps those of `pids` that are (now) children of this process, as they exit.
/// Polls `find` every `interval` until it finds nothing, or panics after `within` with
/// `heading` and what is left. Before it panics it SIGKILLs the leftover processes, so a
/// failing test does not leave them on the machine either.
#[track_caller]
fn poll_until_clean(
    within: Duration,
    interval: Duration,
    find: impl Fn() -> Vec<Leftover>,
    heading: impl FnOnce() -> String,
) {
    let deadline = Instant::now() + within;
    loop {
        let left = find();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            let pids: Vec<Pid> = left
                .iter()
                .filter_map(|item| item.pid)
                .map(Pid::from_raw)
                .collect();
            for &pid in &pids {
                let _ = kill(pid, Signal::SIGKILL);
            }
            reap(&pids, Duration::from_secs(1));
            let lines: Vec<String> = left.into_iter().map(|item| item.what).collect();
            panic!("{}:\n  {}", heading(), lines.join("\n  "));
        }
        std::thread::sleep(interval);
    }
}

fn reap(pids: &[Pid], within: Duration) {
    let deadline = Instant::now() + within;
    let mut waiting: Vec<Pid> = pids.to_vec();
    while !waiting.is_empty() && Instant::now() < deadline {
        waiting.retain(|&pid| {
            matches!(
                waitpid(pid, Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The host's mount table (this process's mount namespace), without the pods' own
/// namespace names (`/run/netns/mnet-*`), which parallel tests add and remove all the time,
/// and /run/netns itself, which the first `ip netns add` turns into a mount.
fn host_mounts() -> Vec<String> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|line| {
            let mount_point = line.split(' ').nth(4).unwrap_or_default();
            mount_point != "/run/netns"
                && !mount_point.starts_with(&format!("/run/netns/{}", sweep::PREFIX))
        })
        .map(str::to_string)
        .collect()
}

/// TUN/TAP devices in the host namespace (those with a `tun_flags` attribute).
fn host_tuns() -> HashSet<String> {
    fs::read_dir("/sys/class/net")
        .map(|dir| {
            dir.flatten()
                .filter(|entry| entry.path().join("tun_flags").exists())
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_namespace_script_prints() {
        let ns = SessionNamespaces::parse("net:[1]\nmnt:[2]\nuts:[3]\n").unwrap();
        assert_eq!(ns.net, "net:[1]");
        assert_eq!(ns.mnt, "mnt:[2]");
        assert_eq!(ns.uts, "uts:[3]");
        assert_eq!(SessionNamespaces::parse("net:[1]\n"), None);
    }
}
