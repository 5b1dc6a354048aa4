//! Starting the agent for a local target.
//!
//! The agent is a separate binary (`mirrord-net-agent`, next to `mirrord-net` or named by
//! `$MIRRORD_NET_AGENT`). It is started with the client certificate's fingerprint, prints its
//! ready line on stdout, and logs on stderr. `PR_SET_PDEATHSIG` ties it to this process: when
//! the client dies, even by SIGKILL, the kernel kills the agent; the QUIC idle timeout is the
//! second line of defence. The death signal fires when the *thread* that spawned the agent
//! exits, so the agent must be spawned from the main thread (which lives as long as the
//! process), never from a runtime worker or blocking-pool thread.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrord_net_protocol::ready::AgentReady;
use mirrord_net_protocol::trust::Fingerprint;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long an agent may take to print its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of agent stderr kept to explain a failure.
const STDERR_TAIL: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "cannot find the agent binary at {0} — install mirrord-net-agent next to mirrord-net \
         or set MIRRORD_NET_AGENT to its path"
    )]
    NotFound(PathBuf),
    #[error("cannot start the agent {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the agent failed: {0}")]
    Failed(String),
    #[error("the agent did not become ready within {0:?}")]
    Timeout(Duration),
}

/// Which way a local session's packets travel between its TUN and the agent's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalPackets {
    /// The agent reads and writes the session's TUN itself: one relay, no tunnel.
    Tun,
    /// The client relays them as QUIC datagrams, as for a remote agent.
    Quic,
    /// The session's namespace is joined to the target's by a veth, and its IPv4 flows to
    /// other hosts take the kernel's path through the target's namespace; the rest (IPv6,
    /// the pod's localhost, answers to incoming connections) takes the TUN the agent serves,
    /// as with [`LocalPackets::Tun`]. Root sessions only (`session::routed`).
    Routed,
}

/// A running local agent. Killed when dropped.
pub struct LocalAgent {
    child: Child,
    pub ready: AgentReady,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    /// Our end of the socket the session's TUN is sent on ([`LocalPackets::Tun`]).
    tun_socket: Option<UnixStream>,
    /// The target's pid, when its namespace and the session's are to be joined
    /// ([`LocalPackets::Routed`]).
    routed_target: Option<u32>,
}

impl LocalAgent {
    /// Whether the agent takes the session's TUN itself.
    pub fn takes_tun(&self) -> bool {
        self.tun_socket.is_some()
    }

    /// The target's pid, when the session's namespace is to be routed into the target's.
    pub fn routed_target(&self) -> Option<u32> {
        self.routed_target
    }

    /// Sends the session's TUN descriptor to the agent, whose stack then serves it.
    pub fn hand_over_tun(&mut self, tun: BorrowedFd<'_>) -> std::io::Result<()> {
        let socket = self
            .tun_socket
            .take()
            .ok_or_else(|| std::io::Error::other("this agent does not take the TUN"))?;
        mirrord_net_fd_passing::send_with_fds(socket.as_fd(), &[1], &[tun.as_raw_fd()])?;
        Ok(())
    }

    /// The agent's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resolves once the agent process has exited, whatever ended it (it is not reaped
    /// here: [`finish`](Self::finish) still does). A killed local agent is then noticed at
    /// once instead of after QUIC's idle timeout (3 s plus the reconnect window). `None`
    /// when its exit cannot be watched (no pidfd on this kernel).
    pub fn exited(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        let pid = self.child.id()?;
        // SAFETY: pidfd_open(2) with a pid and no flags; the result is a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as RawFd) };
        // SAFETY: the `OwnedFd` stays open, and names the same descriptor, until it is
        // dropped with the `AsyncFd`.
        let watched = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
        }
        .ok()?;
        // A pidfd turns readable when its process exits (a zombie not yet reaped included).
        Some(async move {
            let _ = watched.readable().await;
        })
    }

    /// The agent's last words on stderr, for error messages.
    pub fn last_error(&self) -> Option<String> {
        last_line(&self.stderr_tail)
    }

    /// Waits up to `grace` for the agent to exit by itself (it does once the session's
    /// connection closes), then kills it.
    /// Says so (a warning) when it does not exit, or exits with a failure: a session that
    /// ended normally ends its agent with status 0.
    pub async fn finish(mut self, grace: Duration) {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => match self.last_error() {
                Some(said) => tracing::warn!("the agent exited with {status}: {said}"),
                None => tracing::warn!("the agent exited with {status}"),
            },
            Ok(Err(err)) => tracing::warn!("cannot wait for the agent: {err}"),
            Err(_) => {
                tracing::warn!("the agent did not exit within {grace:?} of the session's end");
                let _ = self.child.start_kill();
                let _ = self.child.wait().await;
            }
        }
    }
}

/// Where the agent binary is.
pub fn agent_path() -> Result<PathBuf, AgentError> {
    let path = match std::env::var_os("MIRRORD_NET_AGENT") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("mirrord-net-agent")))
            .unwrap_or_else(|| PathBuf::from("mirrord-net-agent")),
    };
    if path.is_file() {
        Ok(path)
    } else {
        Err(AgentError::NotFound(path))
    }
}

/// Starts an agent for local process `pid` that accepts only `client`.
pub async fn start_local(
    pid: u32,
    client: Fingerprint,
    log_filter: Option<&str>,
    fs_mode: crate::remote_paths::FsMode,
    packets: LocalPackets,
    listen: Option<std::net::SocketAddr>,
    incoming: &crate::incoming::IncomingArgs,
) -> Result<LocalAgent, AgentError> {
    let path = agent_path()?;
    let mut command = Command::new(&path);
    if let Some(addr) = listen {
        // Reached over a real network path: small datagrams, as a cluster agent's.
        command
            .arg("--listen")
            .arg(addr.to_string())
            .args(["--path", "network"]);
    }
    // Close-on-exec in this process (no other child inherits it); the agent's copy is made
    // inheritable between fork and exec below.
    let (tun_socket, agent_end) = match packets {
        LocalPackets::Tun | LocalPackets::Routed => {
            let (ours, theirs) = UnixStream::pair().map_err(|source| AgentError::Spawn {
                path: path.clone(),
                source,
            })?;
            command
                .arg("--tun-socket-fd")
                .arg(theirs.as_raw_fd().to_string());
            (Some(ours), Some(theirs))
        }
        LocalPackets::Quic => (None, None),
    };
    let inherit = agent_end.as_ref().map(|socket| socket.as_raw_fd());
    command
        .arg("--target-pid")
        .arg(pid.to_string())
        .arg("--client-cert-sha256")
        .arg(client.to_string())
        .arg("--fs-mode")
        .arg(fs_mode.as_arg())
        .arg("--incoming")
        .arg(incoming.agent_arg())
        .args(
            incoming
                .agent_redirect_arg()
                .map(|means| ["--redirect-with", means])
                .into_iter()
                .flatten(),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C meant for the user's command must not reach it.
        .process_group(0);
    if let Some(filter) = log_filter {
        command.env("MIRRORD_NET_AGENT_LOG", filter);
    }
    // Who its client is, for `mirrord-net clean`.
    if let Some(client) = mirrord_net_kubernetes::client_process::ClientProcess::current() {
        command.env(
            mirrord_net_kubernetes::client_process::LOCAL_CLIENT_ENV,
            client.to_text(),
        );
    }
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(fd) = inherit {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|source| AgentError::Spawn {
        path: path.clone(),
        source,
    })?;
    drop(agent_end);

    let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    tokio::spawn(collect_stderr(
        stderr,
        stderr_tail.clone(),
        log_filter.is_some(),
    ));

    let stdout = child.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(ready) = AgentReady::parse_line(&line) {
                return Some(ready);
            }
        }
        None
    })
    .await;
    match ready {
        Ok(Some(ready)) => Ok(LocalAgent {
            child,
            ready,
            stderr_tail,
            tun_socket,
            routed_target: (packets == LocalPackets::Routed).then_some(pid),
        }),
        Ok(None) => {
            // The agent closed stdout without a ready line: it is exiting. Give its stderr
            // reader a moment to catch the reason.
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            Err(AgentError::Failed(last_line(&stderr_tail).unwrap_or_else(
                || "it exited without saying why".to_owned(),
            )))
        }
        Err(_) => Err(AgentError::Timeout(READY_TIMEOUT)),
    }
}

async fn collect_stderr(
    stderr: tokio::process::ChildStderr,
    tail: Arc<Mutex<VecDeque<String>>>,
    echo: bool,
) {
    let mut lines = BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if echo {
            eprintln!("{line}");
        }
        let mut tail = tail.lock().expect("stderr tail lock");
        if tail.len() == STDERR_TAIL {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

fn last_line(tail: &Mutex<VecDeque<String>>) -> Option<String> {
    let tail = tail.lock().expect("stderr tail lock");
    tail.back().map(|line| {
        line.strip_prefix("mirrord-net-agent: ")
            .unwrap_or(line)
            .to_owned()
    })
}
