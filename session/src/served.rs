//! The ports the session's programs serve, watched in one place for everyone who needs them:
//! the loopback redirect (a port a program of the session serves stays in the session) and
//! the incoming side (the ports a steal or mirror may take, sent to the agent as the
//! session's heartbeat).
//!
//! Four times a second the watcher asks the session's network namespace which TCP ports have
//! a listener and which UDP ports an unconnected socket, and publishes the answer on a
//! `watch` channel when it changes. It asks with `NETLINK_SOCK_DIAG` on a socket the session's
//! child opened in that namespace (`mirrord_net_netfilter::sock_diag`): reading
//! `/proc/PID/net/tcp` instead makes the kernel walk its whole established-connection table
//! on every read, which showed as a tenth of the client's CPU beside a bulk transfer. The
//! `/proc` tables remain the fallback when the socket could not be opened.
//!
//! The relay sockets of the outgoing filter listen in the session too, but they are the
//! tool's, not a program's: their ports are left out here, once for both users.

use std::os::fd::OwnedFd;
use std::time::Duration;

use mirrord_net_netfilter::sock_diag::{Diag, Served};
use mirrord_net_protocol::listening::{parse_bound_udp, parse_listening};
use tokio::sync::watch;

/// How often the session's sockets are read.
const WATCH: Duration = Duration::from_millis(250);

/// Ports of the tool's own sockets in the session, never reported as served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnPorts {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

/// The watcher's task and the latest answer; the task ends when this is dropped.
pub struct ServedWatch {
    task: tokio::task::JoinHandle<()>,
    served: watch::Receiver<Served>,
}

impl ServedWatch {
    /// Starts watching the namespace of `diag` (or, without it, of process `session_pid`).
    pub fn start(diag: Option<OwnedFd>, session_pid: u32, own: OwnPorts) -> Self {
        let mut source = Source {
            diag: diag.map(Diag::from_fd),
            session_pid,
        };
        let first = source.read(&own);
        let (publish, served) = watch::channel(first);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = source.read(&own);
                publish.send_if_modified(|served| {
                    let changed = *served != now;
                    *served = now;
                    changed
                });
            }
        });
        ServedWatch { task, served }
    }

    /// A receiver of the served ports: the latest answer, and a wake-up on each change.
    pub fn subscribe(&self) -> watch::Receiver<Served> {
        self.served.clone()
    }
}

impl Drop for ServedWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where the answer comes from: the namespace's sock_diag socket while it works, else the
/// `/proc` tables of a process in it.
struct Source {
    diag: Option<Diag>,
    session_pid: u32,
}

impl Source {
    fn read(&mut self, own: &OwnPorts) -> Served {
        let asked = self.diag.as_mut().map(Diag::served);
        let mut served = match asked {
            Some(Ok(served)) => served,
            Some(Err(err)) => {
                tracing::debug!("sock_diag failed ({err}); reading /proc from now on");
                self.diag = None;
                from_proc(self.session_pid)
            }
            None => from_proc(self.session_pid),
        };
        served.tcp.retain(|port| !own.tcp.contains(port));
        served.udp.retain(|port| !own.udp.contains(port));
        served
    }
}

/// The same answer from `/proc/PID/net/{tcp,tcp6,udp,udp6}`: `session_pid` is in the
/// session's network namespace, and `/proc/PID/net` shows that namespace's tables.
fn from_proc(session_pid: u32) -> Served {
    let read = |table: &str, parse: fn(&str) -> Vec<u16>| -> Vec<u16> {
        std::fs::read_to_string(format!("/proc/{session_pid}/net/{table}"))
            .map(|text| parse(&text))
            .unwrap_or_default()
    };
    let mut served = Served {
        tcp: [read("tcp", parse_listening), read("tcp6", parse_listening)].concat(),
        udp: [read("udp", parse_bound_udp), read("udp6", parse_bound_udp)].concat(),
    };
    for ports in [&mut served.tcp, &mut served.udp] {
        ports.sort_unstable();
        ports.dedup();
    }
    served
}
