//! The client's side of a session: starting the child, taking its TUN, waiting for the end.
//!
//! [`Session::start`] checks the spec, looks the user up, and re-executes this binary as
//! `__session FD` with the child's end of a socketpair; stdin, stdout and stderr are inherited
//! untouched, so the command gets the user's terminal. The child is spawned from the calling
//! task's thread, synchronously: its `PR_SET_PDEATHSIG` (set between fork and exec, so there
//! is no window in which the client's death goes unnoticed) fires when the *thread* that
//! forked it exits, so that thread must live as long as the session — the thread that runs
//! `block_on` does. Never call `start` from a blocking-pool thread.
//!
//! The conversation of [`child_messages`](super::child_messages) then runs on a blocking-pool thread
//! (it is a few blocking reads and writes on a socket that nothing else uses), under a
//! timeout after which the child is killed. Once the TUN descriptor is in hand it is wrapped
//! as a tokio [`tun_rs::AsyncDevice`] and only then is the child told to go, so the tunnel
//! pump can start before the command sends its first packet.
//!
//! The child is tracked by a pidfd taken right after the spawn, while the child cannot have
//! been reaped: signals go through `pidfd_send_signal`, which can never hit a recycled pid,
//! and the exit is awaited by polling the pidfd with tokio's reactor (it becomes readable
//! when the process exits) and then reaping it with `waitid(P_PIDFD, WNOHANG)` — no thread
//! blocks in `waitpid`, and the wait is cancel-safe, so it can sit in a `select!` loop. If
//! the [`Session`] is dropped before the session child was reaped, it is SIGKILLed and
//! reaped on a short-lived thread: the session never outlives its owner.
//!
//! The tracked process is the session child, which stays in the host's PID namespace as the
//! parent of the session's init ([`init`](super::init)): its exit code is the command's, the
//! signals sent to it that the command should see (SIGTERM, SIGHUP, ...) are passed on, and
//! SIGKILL ends it, then init through its parent-death signal, then every process of the
//! session with init.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::channel::{self, ChannelError};
use super::child_messages::{ChildMessage, ParentMessage, SetupFailure, SetupStep};
use super::dns_relay::{DnsRelay, DnsSockets};
use super::error::SessionError;
use super::exec;
use super::identity;
use super::loopback::{self, NatPlan};
use super::outgoing_relay::{Relay, RelaySockets};
use super::served::{OwnPorts, ServedWatch};
use super::spec::{self, RemoteFiles, SessionOptions, SessionSpec};
use super::userns;

/// The program re-executed when [`SessionOptions::program`] is `None`.
const SELF_EXE: &str = "/proc/self/exe";
/// How long a child that ended the conversation early gets to exit before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// A running session: the user's command in its namespaces, and the TUN that carries its
/// packets.
pub struct Session {
    child: ChildProcess,
    /// `None` once handed over with [`take_tun`](Self::take_tun), and for a TUN with
    /// virtio-net headers ([`SessionOptions::tun_offload`]), which is `offload_tun`.
    tun: Option<Arc<tun_rs::AsyncDevice>>,
    /// The TUN opened with `IFF_VNET_HDR`, as a bare descriptor: its reader must handle the
    /// headers. `None` once handed over with [`take_tun_fd`](Self::take_tun_fd).
    offload_tun: Option<OwnedFd>,
    tun_name: String,
    /// The FUSE server of the target's files, when there is one.
    _files: Option<Box<dyn std::any::Any + Send>>,
    /// The watcher of the ports the session's programs serve.
    served: ServedWatch,
    /// The task that keeps the session's served ports out of the loopback redirect.
    _loopback: Option<loopback::Follower>,
    /// The outgoing filter's relay: the session's local flows, opened from the host.
    _outgoing: Option<Relay>,
    /// The DNS filter's relay: the session's queries, answered here or by the target.
    _dns: Option<DnsRelay>,
}

impl Session {
    /// Starts the child and returns once the TUN fd is in hand and the child has been told
    /// to go.
    ///
    /// Must be awaited on a thread that lives as long as the session (the `block_on` thread),
    /// see the module documentation.
    pub async fn start(spec: SessionSpec) -> Result<Session, SessionError> {
        Self::start_with(spec, SessionOptions::default()).await
    }

    /// [`start`](Self::start) with non-default [`SessionOptions`].
    pub async fn start_with(
        spec: SessionSpec,
        options: SessionOptions,
    ) -> Result<Session, SessionError> {
        Self::start_with_files(spec, options, None).await
    }

    /// [`start_with`](Self::start_with), with the target's files mounted in the session.
    pub async fn start_with_files(
        spec: SessionSpec,
        options: SessionOptions,
        files: Option<RemoteFiles>,
    ) -> Result<Session, SessionError> {
        let privileges = options.privileges;
        Self::start_inner(spec, options, files)
            .await
            .map_err(|err| userns::explain(err, privileges))
    }

    async fn start_inner(
        spec: SessionSpec,
        options: SessionOptions,
        files: Option<RemoteFiles>,
    ) -> Result<Session, SessionError> {
        let mut child_spec = spec::child_spec(&spec, &options, None)?;
        child_spec.remote_files = files.as_ref().map(RemoteFiles::wire);
        let outgoing = child_spec.outgoing.clone();
        let has_fuse = files.is_some();
        let dns_rules = options.dns.clone();
        let dns_resolvers = child_spec.dns_resolvers.clone();
        let has_table = options.target_localhost || outgoing.is_some() || dns_rules.is_some();
        if let Some(run_as) = spec.run_as {
            let user = tokio::task::spawn_blocking(move || identity::resolve(run_as))
                .await
                .map_err(|err| io::Error::other(err.to_string()))
                .and_then(|result| result)
                .map_err(|source| SessionError::User {
                    uid: run_as.uid,
                    source,
                })?;
            child_spec.user = Some(user);
        }

        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|err| SessionError::ControlSocket(err.into()))?;
        let program = options
            .program
            .clone()
            .unwrap_or_else(|| PathBuf::from(SELF_EXE));
        let mut child = spawn(&program, theirs)?;

        let message = ParentMessage::Spec(Box::new(child_spec));
        let conversation =
            tokio::task::spawn_blocking(move || converse(ours, &message, has_table, has_fuse));
        let outcome = match tokio::time::timeout(options.setup_timeout, conversation).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(join)) => Err(Conversation::Broken(join.to_string())),
            Err(_) => {
                // Killing the child ends the blocked read on the other thread with EOF.
                let _ = child.signal(Signal::SIGKILL);
                child.wait_status().await;
                return Err(SessionError::Timeout(options.setup_timeout));
            }
        };
        let ready = match outcome {
            Ok(ready) => ready,
            Err(problem) => return Err(child.fail(problem).await),
        };

        for warning in &ready.warnings {
            tracing::warn!("{warning}");
        }
        let mut ready = ready;
        let mut served = None;
        if let (Some(files), Some(device)) = (files, ready.fuse.take()) {
            match serve_and_bind(&ready.socket, files, device, options.setup_timeout).await {
                Ok(guard) => served = Some(guard),
                Err(problem) => return Err(child.fail(problem).await),
            }
        }
        let (tun, offload_tun) = if options.tun_offload || options.tun_segmentation {
            (None, Some(ready.tun))
        } else {
            // SAFETY: the descriptor came from the child's TUNSETIFF with IFF_NO_PI and
            // without IFF_VNET_HDR, and is owned by nothing else here.
            let tun = unsafe { tun_rs::AsyncDevice::from_fd(ready.tun.into_raw_fd()) }
                .map_err(SessionError::Tun)?;
            (Some(Arc::new(tun)), None)
        };
        let relay = match ready.relay.take() {
            Some(sockets) => {
                let ports = sockets.ports();
                let started = ports.and_then(|ports| Ok((ports, Relay::start(sockets)?)));
                match started {
                    Ok(started) => Some(started),
                    Err(err) => {
                        let failure = SetupFailure::os(SetupStep::OutgoingFilter, err);
                        return Err(child.fail(Conversation::Failed(failure)).await);
                    }
                }
            }
            None => None,
        };
        let dns = match (ready.dns.take(), dns_rules) {
            (Some(sockets), Some(rules)) => {
                let ports = sockets.ports();
                let started = ports.and_then(|ports| Ok((ports, DnsRelay::start(sockets, rules)?)));
                match started {
                    Ok(started) => Some(started),
                    Err(err) => {
                        let failure = SetupFailure::os(SetupStep::DnsFilter, err);
                        return Err(child.fail(Conversation::Failed(failure)).await);
                    }
                }
            }
            _ => None,
        };
        let plan_dns = match (&dns_resolvers, &dns) {
            (Some(resolvers), Some((ports, _))) => Some((resolvers.clone(), *ports)),
            _ => None,
        };
        let plan_outgoing = match (&outgoing, &relay) {
            (Some(rules), Some((ports, _))) => Some((rules.clone(), *ports)),
            _ => None,
        };
        // The tool's own sockets in the session, which are no program's.
        let mut own = OwnPorts::default();
        if let Some((ports, _)) = &relay {
            own.tcp
                .extend([Some(ports.tcp4), ports.tcp6].into_iter().flatten());
            own.udp
                .extend([Some(ports.udp4), ports.udp6].into_iter().flatten());
        }
        if let Some((ports, _)) = &dns {
            own.udp.extend(ports.udp());
            own.tcp.extend(ports.tcp());
        }
        let served_watch = ServedWatch::start(ready.served.take(), child.pid, own);
        let loopback_follower = ready.loopback.take().map(|(socket, ipv6)| {
            let plan = NatPlan {
                target_localhost: options.target_localhost,
                ipv6,
                outgoing: plan_outgoing,
                dns: plan_dns,
            };
            loopback::Follower::start(socket, served_watch.subscribe(), plan)
        });
        if let Err(err) = channel::send(ready.socket.as_fd(), &ParentMessage::Go, &[]) {
            return Err(child.fail(Conversation::from(err)).await);
        }
        tracing::debug!(pid = child.pid, tun = %ready.tun_name, "session started");
        Ok(Session {
            child,
            tun,
            offload_tun,
            tun_name: ready.tun_name,
            _files: served,
            _loopback: loopback_follower,
            served: served_watch,
            _outgoing: relay.map(|(_, relay)| relay),
            _dns: dns.map(|(_, relay)| relay),
        })
    }

    /// The session's TUN device, for the tunnel pump. Name-based queries on it (`name()`,
    /// `mtu()`, ...) would look in the client's namespace: use [`tun_name`](Self::tun_name).
    ///
    /// # Panics
    ///
    /// After [`take_tun`](Self::take_tun).
    pub fn tun(&self) -> &Arc<tun_rs::AsyncDevice> {
        self.tun
            .as_ref()
            .expect("the session's TUN was handed over")
    }

    /// Takes the session's TUN device out of the session, for a relay that serves it
    /// elsewhere (a local agent's stack). Once the caller drops it, this process no longer
    /// watches the device, so its packets wake only whoever serves it now.
    pub fn take_tun(&mut self) -> Option<Arc<tun_rs::AsyncDevice>> {
        self.tun.take()
    }

    /// The session's TUN descriptor, whichever way it was opened; `None` once handed over.
    pub fn tun_fd(&self) -> Option<BorrowedFd<'_>> {
        match (&self.tun, &self.offload_tun) {
            (Some(tun), _) => {
                // SAFETY: the device keeps its descriptor open while `self` is borrowed.
                Some(unsafe { BorrowedFd::borrow_raw(tun.as_raw_fd()) })
            }
            (None, Some(fd)) => Some(fd.as_fd()),
            (None, None) => None,
        }
    }

    /// Takes the session's TUN descriptor out of the session, whichever way it was opened,
    /// for a relay that serves it elsewhere (a local agent's stack). Once it is dropped,
    /// this process no longer watches the device.
    pub fn take_tun_fd(&mut self) -> Option<OwnedFd> {
        if let Some(fd) = self.offload_tun.take() {
            return Some(fd);
        }
        let tun = self.tun.take()?;
        // SAFETY: `dup` of a descriptor `tun` keeps open; the copy is owned by the caller.
        let fd = unsafe { libc::fcntl(tun.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return None;
        }
        // SAFETY: `fd` was just made and nothing else owns it.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Name of the TUN device inside the session.
    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    /// Pid of the session child, in the client's PID namespace. It is in the session's
    /// network, mount and UTS namespaces, and the parent of the session's init, which is the
    /// parent of the user's command.
    pub fn child_pid(&self) -> u32 {
        self.child.pid
    }

    /// The ports the session's programs serve: the latest answer, and a wake-up on each
    /// change.
    pub fn served(&self) -> tokio::sync::watch::Receiver<super::Served> {
        self.served.subscribe()
    }

    /// Waits for the command to exit; returns the shell-style exit code (code, or 128+signal).
    /// Cancel-safe; once the command has exited it returns the same code again.
    pub async fn wait(&mut self) -> i32 {
        let status = self.child.wait_status().await;
        exec::exit_code(status).unwrap_or(1)
    }

    /// Sends `sig` to the session: SIGTERM, SIGHUP, SIGINT, SIGQUIT, SIGUSR1 and SIGUSR2 are
    /// passed on to the command, SIGKILL ends the whole session at once. Fails with `ESRCH`
    /// once the session has been reaped.
    pub fn signal(&self, sig: Signal) -> nix::Result<()> {
        self.child.signal(sig)
    }
}

/// What the conversation with the child gave.
struct Ready {
    socket: OwnedFd,
    tun: OwnedFd,
    /// The session table's netlink socket, and whether it covers IPv6.
    loopback: Option<(OwnedFd, bool)>,
    /// The outgoing relay's sockets.
    relay: Option<RelaySockets>,
    /// The DNS relay's sockets.
    dns: Option<DnsSockets>,
    fuse: Option<OwnedFd>,
    /// The sock_diag socket of the session's network namespace.
    served: Option<OwnedFd>,
    tun_name: String,
    warnings: Vec<String>,
}

/// How the conversation with the child went wrong.
enum Conversation {
    Failed(SetupFailure),
    Closed,
    Broken(String),
    Io(io::Error),
    Serve(io::Error),
}

impl From<ChannelError> for Conversation {
    fn from(err: ChannelError) -> Self {
        match err {
            ChannelError::Closed => Conversation::Closed,
            ChannelError::Io(err) => Conversation::Io(err),
            ChannelError::Frame(err) => Conversation::Broken(err.to_string()),
        }
    }
}

/// Sends the spec and reads the child's answer. Blocking.
fn converse(
    socket: OwnedFd,
    spec: &ParentMessage,
    has_table: bool,
    has_fuse: bool,
) -> Result<Ready, Conversation> {
    channel::send(socket.as_fd(), spec, &[])?;
    let (message, fds) = channel::recv::<ChildMessage>(socket.as_fd())?;
    match message {
        ChildMessage::Ready {
            tun_name,
            warnings,
            loopback_ipv6,
            outgoing_relay,
            dns_relay,
            served_ports,
        } => {
            let relay_fds = if outgoing_relay {
                RelaySockets::fd_count(loopback_ipv6)
            } else {
                0
            };
            let dns_fds = if dns_relay {
                DnsSockets::fd_count(loopback_ipv6)
            } else {
                0
            };
            let expected = 1
                + usize::from(has_table)
                + relay_fds
                + dns_fds
                + usize::from(has_fuse)
                + usize::from(served_ports);
            if fds.len() != expected {
                return Err(Conversation::Broken(format!(
                    "Ready came with {} descriptors instead of {expected}",
                    fds.len()
                )));
            }
            // In the child's order: TUN, the table's socket, the relay's, the DNS relay's,
            // FUSE, sock_diag.
            let mut fds = fds.into_iter();
            let tun = fds.next().expect("counted");
            let loopback = if has_table {
                fds.next().map(|socket| (socket, loopback_ipv6))
            } else {
                None
            };
            let relay = if outgoing_relay {
                let relay: Vec<OwnedFd> = fds.by_ref().take(relay_fds).collect();
                RelaySockets::from_fds(relay)
            } else {
                None
            };
            let dns = if dns_relay {
                let dns: Vec<OwnedFd> = fds.by_ref().take(dns_fds).collect();
                DnsSockets::from_fds(dns)
            } else {
                None
            };
            let fuse = if has_fuse { fds.next() } else { None };
            let served = if served_ports { fds.next() } else { None };
            Ok(Ready {
                socket,
                tun,
                loopback,
                relay,
                dns,
                fuse,
                served,
                tun_name,
                warnings,
            })
        }
        ChildMessage::Failed(failure) => Err(Conversation::Failed(failure)),
        other => Err(Conversation::Broken(format!(
            "expected Ready, got {other:?}"
        ))),
    }
}

/// Starts the FUSE server on `device`, then has the child bind the remote paths (each bind
/// looks its path up, so the server must run first).
async fn serve_and_bind(
    socket: &OwnedFd,
    files: RemoteFiles,
    device: OwnedFd,
    timeout: Duration,
) -> Result<Box<dyn std::any::Any + Send>, Conversation> {
    let serve = files.serve;
    // Reads the kernel's INIT from the device: blocking, but already queued.
    let guard = tokio::task::spawn_blocking(move || serve(device))
        .await
        .map_err(|join| Conversation::Broken(join.to_string()))?
        .map_err(Conversation::Serve)?;
    let socket = socket.try_clone().map_err(Conversation::Io)?;
    let bind = tokio::task::spawn_blocking(move || {
        channel::send(socket.as_fd(), &ParentMessage::BindRemote, &[])?;
        channel::recv::<ChildMessage>(socket.as_fd()).map(|(message, _)| message)
    });
    match tokio::time::timeout(timeout, bind).await {
        Ok(Ok(Ok(ChildMessage::Bound { warnings }))) => {
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            Ok(guard)
        }
        Ok(Ok(Ok(ChildMessage::Failed(failure)))) => Err(Conversation::Failed(failure)),
        Ok(Ok(Ok(other))) => Err(Conversation::Broken(format!(
            "expected Bound, got {other:?}"
        ))),
        Ok(Ok(Err(err))) => Err(err.into()),
        Ok(Err(join)) => Err(Conversation::Broken(join.to_string())),
        Err(_) => Err(Conversation::Broken(format!(
            "the remote paths were not bound within {timeout:?}"
        ))),
    }
}

/// Starts `program __session FD` with `theirs` as FD.
fn spawn(program: &PathBuf, theirs: OwnedFd) -> Result<ChildProcess, SessionError> {
    let fd = theirs.as_raw_fd();
    let mut command = Command::new(program);
    command.arg("__session").arg(fd.to_string());
    // SAFETY: only async-signal-safe calls (fcntl, prctl) run between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // The socket is close-on-exec everywhere else; only this child keeps it.
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0
                || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|source| SessionError::Spawn {
        program: program.clone(),
        source,
    })?;
    drop(theirs);
    let pid = child.id();
    // The child is ours and unreaped, so its pid cannot have been reused yet.
    let pidfd = pidfd_open(pid).and_then(|fd| {
        // SAFETY: the AsyncFd owns the pidfd, which stays open and the same until it is
        // dropped or taken back with into_inner.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    });
    match pidfd {
        Ok(pidfd) => Ok(ChildProcess {
            pid,
            pidfd: Some(pidfd),
            status: None,
        }),
        Err(source) => {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
            Err(SessionError::Spawn {
                program: program.clone(),
                source,
            })
        }
    }
}

/// The session child, tracked by its pidfd.
struct ChildProcess {
    pid: u32,
    /// `None` only while being dropped.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<WaitStatus>,
}

impl ChildProcess {
    fn pidfd(&self) -> &AsyncFd<OwnedFd> {
        self.pidfd.as_ref().expect("pidfd is present until drop")
    }

    fn signal(&self, sig: Signal) -> nix::Result<()> {
        if self.status.is_some() {
            return Err(Errno::ESRCH);
        }
        pidfd_send_signal(self.pidfd().get_ref(), sig)
    }

    /// Reaps the process if it has exited.
    fn try_reap(&mut self) -> nix::Result<Option<WaitStatus>> {
        if self.status.is_none() {
            self.status = reap(self.pidfd().get_ref())?;
        }
        Ok(self.status)
    }

    /// Waits for the process to exit and reaps it. Cancel-safe.
    async fn wait_status(&mut self) -> WaitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let pidfd = self.pidfd.as_ref().expect("pidfd is present until drop");
        let problem = loop {
            // Readable means exited. The reap that follows collects it; a spurious wake-up
            // finds the process still alive and waits again.
            let mut guard = match pidfd.readable().await {
                Ok(guard) => guard,
                Err(err) => break err,
            };
            match reap(pidfd.get_ref()) {
                Ok(Some(status)) => {
                    self.status = Some(status);
                    return status;
                }
                Ok(None) => guard.clear_ready(),
                Err(Errno::EINTR) => {}
                Err(err) => break err.into(),
            }
        };
        self.wait_blocking(problem).await
    }

    /// Last resort when the reactor cannot watch the pidfd: a blocking `waitid` on the pool.
    async fn wait_blocking(&mut self, why: io::Error) -> WaitStatus {
        tracing::debug!(
            pid = self.pid,
            "cannot poll the session's pidfd ({why}); blocking"
        );
        let pidfd = match self.pidfd().get_ref().try_clone() {
            Ok(fd) => fd,
            Err(_) => return self.lost(),
        };
        let waited = tokio::task::spawn_blocking(move || loop {
            match waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED) {
                Err(Errno::EINTR) => continue,
                other => return other,
            }
        })
        .await;
        match waited {
            Ok(Ok(status)) => {
                self.status = Some(status);
                status
            }
            _ => self.lost(),
        }
    }

    /// The process can no longer be waited for (someone else reaped it): report a failure.
    fn lost(&mut self) -> WaitStatus {
        tracing::error!(pid = self.pid, "lost track of the session process");
        let status = WaitStatus::Exited(nix::unistd::Pid::from_raw(self.pid as i32), 1);
        self.status = Some(status);
        status
    }

    /// Turns a failed conversation into the error to report, making sure the child is gone.
    async fn fail(&mut self, problem: Conversation) -> SessionError {
        let exited = tokio::time::timeout(EXIT_GRACE, self.wait_status()).await;
        if exited.is_err() {
            let _ = self.signal(Signal::SIGKILL);
            self.wait_status().await;
        }
        match problem {
            Conversation::Failed(failure) => SessionError::Setup(failure),
            Conversation::Broken(what) => SessionError::Protocol(what),
            Conversation::Io(err) => SessionError::Control(err),
            Conversation::Serve(err) => SessionError::ServeFiles(err),
            Conversation::Closed => match exited {
                Ok(status) => SessionError::ChildExited(exec::describe(status)),
                Err(_) => SessionError::Protocol("the session process closed its socket".into()),
            },
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        if matches!(self.try_reap(), Ok(Some(_))) {
            return;
        }
        let _ = pidfd_send_signal(self.pidfd().get_ref(), Signal::SIGKILL);
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        let pidfd = pidfd.into_inner();
        // SIGKILL takes effect promptly, but not synchronously: reap off this thread.
        let _ = std::thread::Builder::new()
            .name("mirrord-net-reap".into())
            .spawn(move || {
                while let Err(Errno::EINTR) = waitid(Id::PIDFd(pidfd.as_fd()), WaitPidFlag::WEXITED)
                {
                }
            });
    }
}

/// `waitid(P_PIDFD, WEXITED | WNOHANG)`: the status if the process has exited.
fn reap(pidfd: &OwnedFd) -> nix::Result<Option<WaitStatus>> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
    match waitid(Id::PIDFd(pidfd.as_fd()), flags)? {
        WaitStatus::StillAlive => Ok(None),
        status => Ok(Some(status)),
    }
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

fn pidfd_send_signal(pidfd: &OwnedFd, sig: Signal) -> nix::Result<()> {
    // SAFETY: plain system call on a live pidfd with no siginfo; the result is checked.
    let result = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    Errno::result(result).map(drop)
}
