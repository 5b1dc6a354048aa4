//! `mirrord-net up`: the holder, a small background process that owns one session.
//!
//! ```text
//!  mirrord-net up ──fork──▶ holder (setsid; stdout/stderr to NAME.log)
//!    waits on a pipe          ├── janitor: removes NAME.sock and NAME.log when the holder dies
//!    for "ready" or an        ├── the agent (local), or the agent's pod (cluster)
//!    error, prints it,        └── session child ── init (PID 1) ── keeper (PID 2, pause())
//!    exits                    serves NAME.sock: ps, exec/shell --session, down
//! ```
//!
//! `up` forks before any thread exists; the child becomes the holder: a new session (no
//! terminal), its output in the log, and then exactly what `exec` does — agent, connection,
//! namespaces — with a *keeper* as the session's command: a process that only waits, so the
//! session's init and namespaces stay. Everything the session has hangs on the holder as it
//! hangs on an `exec` client (parent-death signals, the connection), so a holder killed by
//! SIGKILL takes it all along; the one thing the kernel does not remove, the socket file, is
//! the janitor's: a process forked first that waits for the end of a pipe only the holder
//! holds.
//!
//! A command joins by the init's pidfd ([`super::join`]), so the holder takes no part in
//! running it; a joined connection stays open while the command runs, which is how `ps`
//! counts commands and how each command learns that the session ended. When the agent is
//! lost or the session's processes end, the holder ends the session (SIGKILL of its init
//! ends every process in it, joined commands included), tells every joined command why, and
//! stays as a tombstone that `ps` shows with the reason until `down`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use super::dir;
use mirrord_net_protocol::framing::{self, FrameDecoder};

use super::control_messages::{
    self as messages, Action, HolderState, JoinInfo, Phase, Reply, Request, SessionInfo,
};
use crate::cli::SessionArgs;
use crate::connect;
use crate::remote_paths::FsMode;
use crate::report::{Failure, Kind};
use crate::run;
use crate::run_error::{classify, RunError};
use crate::session_agent::SessionAgent;
use crate::target::Target;
use mirrord_net_session::SessionPrivileges;

/// The keeper's argument: `/proc/self/exe __keep` is the session's command.
pub const KEEP_ARG: &str = "__keep";

/// What the holder tells `up` on the ready pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Outcome {
    Ready(SessionInfo),
    Failed { kind: Kind, message: String },
}

/// The keeper: the session's command in a background session. Waits until killed.
pub fn keep_main() -> ! {
    let _ = nix::sys::prctl::set_name(c"mirrord-net-keep");
    loop {
        nix::unistd::pause();
    }
}

/// `mirrord-net up`. Called before any thread exists (it forks). Returns the exit code.
pub fn up(args: SessionArgs, name: String, json: bool) -> u8 {
    match start(args, &name, json) {
        Ok(code) => code,
        Err(failure) => failure.print(json),
    }
}

fn start(args: SessionArgs, name: &str, json: bool) -> Result<u8, Failure> {
    messages::check_name(name).map_err(|message| Failure::new(Kind::Usage, message))?;
    if args.session.is_some() {
        return Err(Failure::new(
            Kind::Usage,
            "--session is for exec and shell; up starts a session with --target",
        ));
    }
    let (uid, gid) = dir::owner();
    let dir =
        dir::ensure(uid, gid).map_err(|err| Failure::new(Kind::Permission, err.to_string()))?;
    let socket = dir::socket(&dir, name);
    if super::control::is_live(&socket) {
        return Err(Failure::new(
            Kind::SessionExists,
            format!("a session named {name} is already up (mirrord-net down {name} ends it)"),
        ));
    }
    let _ = std::fs::remove_file(&socket);

    let (ready_read, ready_write) = pipe()?;
    // SAFETY: no thread exists yet (main calls this before its runtime), so the child may run
    // any code.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            drop(ready_read);
            let code = holder_main(args, name, &dir, (uid, gid), ready_write);
            std::process::exit(code)
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => {}
        Err(err) => {
            return Err(Failure::new(
                Kind::Internal,
                format!("cannot start the session's holder: {err}"),
            ))
        }
    }
    drop(ready_write);
    let mut text = String::new();
    let _ = std::fs::File::from(ready_read).read_to_string(&mut text);
    match serde_json::from_str::<Outcome>(&text) {
        Ok(Outcome::Ready(info)) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&info).expect("session info serializes")
                );
            } else if !args.quiet {
                eprintln!(
                    "mirrord-net: session {name} is up on {} ({}): mirrord-net exec --session {name} -- CMD",
                    info.target, info.agent
                );
            }
            Ok(0)
        }
        Ok(Outcome::Failed { kind, message }) => Err(Failure::new(kind, message)),
        Err(_) => Err(Failure::new(
            Kind::Internal,
            "the session's holder ended before the session was ready",
        )),
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Failure> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|err| Failure::new(Kind::Internal, format!("cannot make a pipe: {err}")))
}

/// The holder process, from the fork to its end. Returns its exit status.
fn holder_main(
    args: SessionArgs,
    name: &str,
    dir: &Path,
    owner: (u32, u32),
    ready: OwnedFd,
) -> i32 {
    let _ = nix::unistd::setsid();
    let socket = dir::socket(dir, name);
    let log = dir::log(dir, name);
    if let Err(err) = redirect_output(&log, owner) {
        report(ready, Failure::new(Kind::Internal, err));
        return 1;
    }
    let janitor = match start_janitor(&socket, &log) {
        Ok(fd) => fd,
        Err(failure) => {
            report(ready, failure);
            return 1;
        }
    };
    crate::init_logging(args.verbose);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            report(
                ready,
                Failure::new(Kind::Internal, format!("cannot start the runtime: {err}")),
            );
            return 1;
        }
    };
    let code = runtime.block_on(hold(args, name.to_owned(), socket, log, owner, ready));
    // Everything of the session is gone: exit now, without waiting for the runtime's idle
    // threads (the janitor's pipe closes with the process).
    drop(janitor);
    std::process::exit(code)
}

fn report(ready: OwnedFd, failure: Failure) {
    let outcome = Outcome::Failed {
        kind: failure.kind,
        message: failure.message,
    };
    let _ = std::fs::File::from(ready)
        .write_all(&serde_json::to_vec(&outcome).expect("outcome serializes"));
}

/// Standard input from /dev/null, output and errors to the session's log (the owner's).
fn redirect_output(log: &Path, owner: (u32, u32)) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(log)
        .map_err(|err| format!("cannot create {}: {err}", log.display()))?;
    let _ = std::os::unix::fs::fchown(&file, Some(owner.0), Some(owner.1));
    let null = std::fs::File::open("/dev/null").map_err(|err| err.to_string())?;
    for (from, to) in [
        (null.as_raw_fd(), 0),
        (file.as_raw_fd(), 1),
        (file.as_raw_fd(), 2),
    ] {
        // SAFETY: dup2 onto the standard descriptors, which stay open for the process's life.
        if unsafe { libc::dup2(from, to) } < 0 {
            return Err(format!(
                "cannot redirect output: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// Forks the janitor; returns the pipe end whose closing (the holder's exit, however it
/// happens) tells it to remove the session's files.
fn start_janitor(socket: &Path, log: &Path) -> Result<OwnedFd, Failure> {
    let (read, write) = pipe()?;
    // SAFETY: still single-threaded.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let keep = read.as_raw_fd();
            close_all_but(keep);
            let _ = nix::sys::prctl::set_name(c"mirrord-net-jan");
            let mut byte = [0u8; 1];
            let mut pipe = std::fs::File::from(read);
            while matches!(pipe.read(&mut byte), Ok(n) if n > 0) {}
            // The holder is gone. A socket someone answers on belongs to a newer holder.
            if !super::control::is_live(socket) {
                let _ = std::fs::remove_file(socket);
                let _ = std::fs::remove_file(log);
            }
            std::process::exit(0)
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => Ok(write),
        Err(err) => Err(Failure::new(
            Kind::Internal,
            format!("cannot start the session's janitor: {err}"),
        )),
    }
}

/// Closes every descriptor from 3 on except `keep` (the janitor must hold nothing that keeps
/// `up` waiting or a session's device open).
fn close_all_but(keep: i32) {
    let fds: Vec<i32> = match std::fs::read_dir("/proc/self/fd") {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (3..1024).collect(),
    };
    for fd in fds {
        if fd > 2 && fd != keep {
            // SAFETY: closing descriptors of a freshly forked, single-threaded process that
            // no Rust object will use again (the process exits without returning).
            unsafe { libc::close(fd) };
        }
    }
}

/// The holder's life: start the session, answer requests, end.
async fn hold(
    args: SessionArgs,
    name: String,
    socket: PathBuf,
    log: PathBuf,
    owner: (u32, u32),
    ready: OwnedFd,
) -> i32 {
    let started = match start_session(&args, &name, &socket, owner).await {
        Ok(started) => started,
        Err(err) => {
            let failure = match err.downcast::<Failure>() {
                Ok(failure) => failure,
                Err(err) => Failure::new(classify(&err), err.to_string()),
            };
            report(ready, failure);
            return 1;
        }
    };
    let Started {
        mut agent,
        tunnel,
        mut running,
        listener,
        shared,
    } = started;
    let info = shared.state.lock().expect("state").info.clone();
    let _ = std::fs::File::from(ready)
        .write_all(&serde_json::to_vec(&Outcome::Ready(info)).expect("outcome serializes"));

    let (down_tx, mut down_rx) = mpsc::channel::<UnixStream>(4);
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    let mut tunnel = Some(tunnel);
    let mut live = true;
    let down_stream = loop {
        tokio::select! {
            code = running.session.wait(), if live => {
                let reason = format!("the session's processes ended (exit code {code})");
                end(&shared, &mut running, &mut agent, &mut tunnel, reason).await;
                live = false;
            }
            result = &mut running.pump_task, if live => {
                let cause = match result {
                    Ok(Err(err)) => err.to_string(),
                    Ok(Ok(())) => "its connection closed".to_owned(),
                    Err(join) => join.to_string(),
                };
                let reason = match agent_last_error(&agent) {
                    Some(last) => format!("the agent was lost ({cause}): {last}"),
                    None => format!("the agent was lost ({cause})"),
                };
                end(&shared, &mut running, &mut agent, &mut tunnel, reason).await;
                live = false;
            }
            stream = down_rx.recv() => break stream,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(serve(stream, shared.clone(), down_tx.clone()));
                }
            }
            _ = terminate.recv() => break None,
            _ = interrupt.recv() => break None,
            _ = hangup.recv() => break None,
        }
    };
    if live {
        end(
            &shared,
            &mut running,
            &mut agent,
            &mut tunnel,
            "the session was ended (mirrord-net down)".to_owned(),
        )
        .await;
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&log);
    if let Some(mut stream) = down_stream {
        let _ = stream.write_all(&framing::encode_json(&Reply::Down)).await;
    }
    0
}

fn agent_last_error(agent: &Option<SessionAgent>) -> Option<String> {
    agent.as_ref().and_then(SessionAgent::last_error)
}

/// What the holder keeps while the session runs.
struct Started {
    agent: Option<SessionAgent>,
    tunnel: mirrord_net_tunnel::Tunnel,
    running: run::Running,
    listener: UnixListener,
    shared: Arc<Shared>,
}

/// What every connection's task shares.
struct Shared {
    state: Mutex<HolderState>,
    owner: u32,
    /// A pidfd of the session's init, sent to every joining command.
    init: OwnedFd,
    join: JoinInfo,
    /// Set to the reason once the session has ended.
    ended: watch::Sender<Option<String>>,
}

async fn start_session(
    args: &SessionArgs,
    name: &str,
    socket: &Path,
    owner: (u32, u32),
) -> anyhow::Result<Started> {
    let checked = connect::preflight(args)?;
    let privileges = checked.privileges;
    let incoming = args.incoming.config().map_err(RunError::from)?;
    let (mut agent, mut tunnel) = connect::start_agent_and_connect(args).await?;
    let command = vec![OsString::from("/proc/self/exe"), OsString::from(KEEP_ARG)];
    let running =
        match run::start_connected(args, command, checked, incoming, &mut agent, &mut tunnel).await
        {
            Ok(running) => running,
            Err(err) => {
                agent.end_session(tunnel, Duration::from_secs(2)).await;
                return Err(err.into());
            }
        };
    let init = match find_init(running.session.child_pid()).await {
        Ok(init) => init,
        Err(err) => {
            agent.end_session(tunnel, Duration::from_secs(2)).await;
            return Err(Failure::new(Kind::Internal, err).into());
        }
    };
    let listener = bind(socket, owner)?;
    let addresses = tunnel
        .target
        .ipv4
        .iter()
        .map(|ip| std::net::IpAddr::V4(*ip))
        .chain(
            tunnel
                .target
                .ipv6
                .iter()
                .map(|ip| std::net::IpAddr::V6(*ip)),
        )
        .collect();
    let (pod, agent_name) = describe_agent(args.target(), &agent);
    let info = SessionInfo {
        name: name.to_owned(),
        target: args.target().to_string(),
        pod,
        agent: agent_name,
        addresses,
        started: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        commands: 0,
        phase: Phase::Running,
        holder_pid: std::process::id(),
        owner_uid: owner.0,
    };
    let join = JoinInfo {
        environ: tunnel.target.environ.clone(),
        include: args
            .env
            .include
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        exclude: args
            .env
            .exclude
            .iter()
            .map(|p| p.as_str().to_owned())
            .collect(),
        overrides: args
            .env
            .files
            .iter()
            .flat_map(|file| file.vars.iter().cloned())
            .chain(args.env.set.iter().cloned())
            .collect(),
        run_as: if args.as_root {
            None
        } else {
            mirrord_net_session::invoking_user().map(|user| (user.uid, user.gid))
        },
        remote_root: (args.fs_mode != FsMode::Off).then(|| {
            use std::os::unix::ffi::OsStringExt;
            connect::session_remote_root(privileges)
                .into_os_string()
                .into_vec()
        }),
        user_namespace: matches!(privileges, SessionPrivileges::Rootless(_)),
    };
    let (ended, _) = watch::channel(None);
    Ok(Started {
        agent: Some(agent),
        tunnel,
        running,
        listener,
        shared: Arc::new(Shared {
            state: Mutex::new(HolderState::new(info)),
            owner: owner.0,
            init,
            join,
            ended,
        }),
    })
}

fn describe_agent(target: &Target, agent: &SessionAgent) -> (Option<String>, String) {
    match agent {
        SessionAgent::Local(local) => (
            None,
            match local.pid() {
                Some(pid) => format!("local pid {pid}"),
                None => "local".to_owned(),
            },
        ),
        SessionAgent::Kubernetes(kube) => {
            let pod = match target {
                Target::Kubernetes(_) => kube.target_pod.clone(),
                Target::Pid(_) => None,
            };
            let agent = kube
                .container
                .as_ref()
                .map(|container| container.describe())
                .unwrap_or_else(|| "in the cluster".to_owned());
            (pod, agent)
        }
    }
}

/// The control socket, the owner's, 0600.
fn bind(socket: &Path, owner: (u32, u32)) -> anyhow::Result<UnixListener> {
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket).map_err(|err| {
        Failure::new(
            Kind::Internal,
            format!("cannot listen on {}: {err}", socket.display()),
        )
    })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    if nix::unistd::geteuid().as_raw() != owner.0 {
        std::os::unix::fs::chown(socket, Some(owner.0), Some(owner.1))?;
    }
    Ok(listener)
}

/// A pidfd of the session's init: the session child's only child, which it forks on `Go`.
async fn find_init(session_child: u32) -> Result<OwnedFd, String> {
    let children = format!("/proc/{session_child}/task/{session_child}/children");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let listed = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = listed
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return pidfd_open(pid).map_err(|err| format!("cannot open the session's init: {err}"));
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the session's init did not start".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn pidfd_open(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain system call; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pidfd_open returned a new descriptor (close-on-exec) owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Ends the session: every joined command is told why, the session's init is killed (and
/// every process of it with it), the agent is let go.
async fn end(
    shared: &Shared,
    running: &mut run::Running,
    agent: &mut Option<SessionAgent>,
    tunnel: &mut Option<mirrord_net_tunnel::Tunnel>,
    reason: String,
) {
    tracing::warn!("{reason}");
    if shared
        .state
        .lock()
        .expect("state")
        .ended(reason.clone())
        .is_some()
    {
        shared.ended.send_replace(Some(reason));
    }
    // Let the connections' tasks write the news before their commands die.
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    let _ = running.session.signal(Signal::SIGKILL);
    running.session.wait().await;
    running.pump_task.abort();
    // Nothing of the session may stay for the tombstone: its TUN goes too.
    drop(running.session.take_tun());
    drop(running.session.take_tun_fd());
    if let (Some(agent), Some(tunnel)) = (agent.take(), tunnel.take()) {
        agent.end_session(tunnel, Duration::from_secs(2)).await;
    }
}

/// One connection: who it is, its request, and for a joined command its life.
async fn serve(mut stream: UnixStream, shared: Arc<Shared>, down: mpsc::Sender<UnixStream>) {
    let peer = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(_) => return,
    };
    if let Err(reason) = messages::authorize(peer, shared.owner) {
        let _ = stream
            .write_all(&framing::encode_json(&Reply::Refused { reason }))
            .await;
        return;
    }
    let mut decoder = FrameDecoder::local();
    let request: Request =
        match tokio::time::timeout(Duration::from_secs(10), read_message(&stream, &mut decoder))
            .await
        {
            Ok(Some(request)) => request,
            _ => return,
        };
    let action = shared.state.lock().expect("state").on_request(&request);
    match action {
        Action::Reply(reply) => {
            let _ = stream.write_all(&framing::encode_json(&reply)).await;
        }
        Action::Shutdown => {
            let _ = down.send(stream).await;
        }
        Action::Join => {
            let reply = Reply::Joined(Box::new(shared.join.clone()));
            if send_with_fd(
                &stream,
                &framing::encode_json(&reply),
                shared.init.as_raw_fd(),
            )
            .await
            .is_err()
            {
                return;
            }
            shared.state.lock().expect("state").command_started();
            joined(&mut stream, &shared).await;
            shared.state.lock().expect("state").command_ended();
        }
    }
}

/// A joined command's connection: open until the command ends; told when the session does.
async fn joined(stream: &mut UnixStream, shared: &Shared) {
    let mut ended = shared.ended.subscribe();
    let mut told = false;
    loop {
        if !told {
            let news = ended.borrow_and_update().clone();
            if let Some(reason) = news {
                let _ = stream
                    .write_all(&framing::encode_json(&Reply::Ended { reason }))
                    .await;
                told = true;
            }
        }
        tokio::select! {
            readable = stream.readable() => {
                if readable.is_err() {
                    return;
                }
                let mut buf = [0u8; 64];
                match stream.try_read(&mut buf) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => return,
                }
            }
            changed = ended.changed(), if !told => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

async fn read_message<T: for<'de> Deserialize<'de>>(
    stream: &UnixStream,
    decoder: &mut FrameDecoder,
) -> Option<T> {
    loop {
        if let Ok(Some(message)) = decoder.next_json_message() {
            return Some(message);
        }
        stream.readable().await.ok()?;
        let mut buf = [0u8; 4096];
        match stream.try_read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => decoder.push(&buf[..n]),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

/// Writes `frame` with `fd` attached to its first bytes.
async fn send_with_fd(stream: &UnixStream, frame: &[u8], fd: i32) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < frame.len() {
        stream.writable().await?;
        let attached: &[i32] = if sent == 0 { &[fd] } else { &[] };
        let result = stream.try_io(tokio::io::Interest::WRITABLE, || {
            mirrord_net_fd_passing::send_with_fds(stream.as_fd(), &frame[sent..], attached)
        });
        match result {
            Ok(n) => sent += n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
