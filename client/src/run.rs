//! One session from start to exit code.
//!
//! Order matters: the agent first (it reports the target's addresses and the datagram size),
//! then the QUIC connection and handshake, then the session namespaces with a TUN sized to the
//! datagram, then the user's command. Every step that fails leaves nothing behind: the agent
//! dies with its `LocalAgent` handle (and with this process), the session's namespaces die
//! with its last process.
//!
//! The preflight decides the session's privileges ([`session_privileges`]): a root client
//! builds a root session as always; a client without root gets a rootless one (its own user
//! namespace) where the target allows it, after checks that name what the machine forbids
//! before anything is started.

use crate::outgoing::OutgoingError;
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mirrord_net_protocol::transport::PathProfile;
use mirrord_net_protocol::trust::{SessionIdentity, TrustError};
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::SessionArgs;
use crate::environment::CommandEnv;
use crate::incoming;
use crate::local_agent::{self, AgentError};
use crate::progress::Progress;
use crate::remote_paths::{self, FsMode};
use crate::report::{Failure, Kind};
use crate::session_agent::SessionAgent;
use crate::target::{Target, TargetError};
use mirrord_net_kubernetes::{self as kubernetes, KubeError};
use mirrord_net_session::{
    self as session, userns, Session, SessionError, SessionPrivileges, SessionSpec,
};
use mirrord_net_tunnel::{self as tunnel, pump, Tunnel, TunnelError};

/// How long the user's command gets to exit after the agent is lost, before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "mirrord-net needs root to enter the namespaces of pid/ targets and to create a \
         session's: run it with sudo"
    )]
    NeedRoot,
    #[error("/dev/net/tun is missing: load the tun module (modprobe tun) or run where TUN devices are allowed")]
    NoTunDevice,
    #[error("/dev/fuse is missing, which the target's files need: load the fuse module (modprobe fuse), or run with --fs-mode off")]
    NoFuseDevice,
    #[error("{0}")]
    UserNamespacesDisabled(&'static str),
    #[error("/dev/net/tun is not readable and writable by you: a session without root needs it mode 0666 (as Debian's udev makes it; `chmod 0666 /dev/net/tun`), or run mirrord-net with sudo")]
    TunNotAccessible,
    #[error("/dev/fuse is not readable and writable by you: a session without root needs it mode 0666 for the target's files (`chmod 0666 /dev/fuse`), or run with --fs-mode off")]
    FuseNotAccessible,
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Kubernetes(#[from] KubeError),
    #[error("{0}")]
    Tunnel(#[from] TunnelError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("{0}")]
    Incoming(#[from] incoming::IncomingError),
    #[error("{0}")]
    Outgoing(#[from] OutgoingError),
    #[error("{0}; the session was stopped")]
    AgentLost(pump::PumpError),
    /// The agent stayed silent through the reconnect window (`liveness::lost_line`).
    #[error("{0}")]
    AgentSilent(String),
    #[error("cannot look up the invoking user: {0}")]
    UserLookup(std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error("cannot hand the session's TUN device to the agent: {0}")]
    TunHandOver(std::io::Error),
}

impl RunError {
    /// The class of this failure (see [`report`](crate::report)).
    pub fn kind(&self) -> Kind {
        match self {
            RunError::NeedRoot | RunError::TunNotAccessible | RunError::FuseNotAccessible => {
                Kind::Permission
            }
            RunError::NoTunDevice
            | RunError::NoFuseDevice
            | RunError::UserNamespacesDisabled(_) => Kind::Environment,
            RunError::Target(TargetError::NoSuchProcess(_)) => Kind::TargetNotFound,
            RunError::Target(_) => Kind::Usage,
            RunError::Agent(AgentError::NotFound(_)) => Kind::Environment,
            RunError::Agent(_) => Kind::AgentFailed,
            RunError::Kubernetes(err) => kube_kind(err),
            RunError::Tunnel(_) | RunError::Trust(_) => Kind::Connection,
            RunError::Incoming(_) | RunError::Outgoing(_) => Kind::BadConfig,
            RunError::AgentLost(_) | RunError::AgentSilent(_) => Kind::AgentLost,
            RunError::Session(_)
            | RunError::UserLookup(_)
            | RunError::Output(_)
            | RunError::TunHandOver(_) => Kind::Internal,
        }
    }
}

/// The kind of any error the CLI's commands return.
pub fn classify(err: &anyhow::Error) -> Kind {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        return failure.kind;
    }
    if let Some(err) = err.downcast_ref::<RunError>() {
        return err.kind();
    }
    if let Some(err) = err.downcast_ref::<KubeError>() {
        return kube_kind(err);
    }
    Kind::Internal
}

/// The class of a Kubernetes failure.
fn kube_kind(err: &KubeError) -> Kind {
    match err {
        KubeError::Config(_) => Kind::BadConfig,
        KubeError::Denied(_) => Kind::Permission,
        KubeError::NotFound { .. } => Kind::TargetNotFound,
        KubeError::NoReadyPod { .. }
        | KubeError::PodNotRunning { .. }
        | KubeError::ContainerNotRunning { .. } => Kind::TargetUnavailable,
        KubeError::ContainerNeeded { .. } | KubeError::NoSuchContainer { .. } => Kind::BadConfig,
        KubeError::ImageMissing { .. }
        | KubeError::AgentTimeout { .. }
        | KubeError::AgentFailed { .. }
        | KubeError::Interrupted => Kind::AgentFailed,
        KubeError::Transport(_) => Kind::Connection,
        KubeError::Api { .. } => Kind::Internal,
    }
}

/// Runs `command` in a session on `args.target` and returns the shell-style exit code.
pub async fn run_session(args: &SessionArgs, command: Vec<OsString>) -> Result<i32, RunError> {
    let checked = preflight(args)?;
    let incoming = args.incoming.config()?;
    let (mut agent, mut tunnel) = start_agent_and_connect(args).await?;
    let outcome = run_connected(args, command, checked, incoming, &mut agent, &mut tunnel).await;
    // Every way out, failures included, ends the session with its close.
    agent.end_session(tunnel, Duration::from_secs(2)).await;
    outcome
}

/// The session once the agent is connected: everything but its end.
async fn run_connected(
    args: &SessionArgs,
    command: Vec<OsString>,
    checked: Preflight,
    incoming: Option<mirrord_net_protocol::messages::IncomingConfig>,
    agent: &mut SessionAgent,
    tunnel: &mut Tunnel,
) -> Result<i32, RunError> {
    let mut running = start_connected(args, command, checked, incoming, agent, tunnel).await?;
    let outcome = match supervise(&mut running.session, &mut running.pump_task).await {
        Err(RunError::AgentLost(pump::PumpError::Connection(quinn::ConnectionError::TimedOut))) => {
            Err(RunError::AgentSilent(tunnel::liveness::lost_line(
                args.reconnect.window(),
            )))
        }
        outcome => outcome,
    };
    running.pump_task.abort();
    tracing::info!("packets: {}", running.stats.summary());
    outcome
}

/// A started session: its namespaces and command, and the task that carries its packets (or
/// watches the connection, when the agent serves the TUN itself); the pump task ends when
/// the agent is lost.
pub(crate) struct Running {
    pub session: Session,
    pub pump_task: tokio::task::JoinHandle<Result<(), pump::PumpError>>,
    _incoming: Option<AbortOnDrop>,
    stats: Arc<pump::PumpStats>,
}

/// Starts the session's namespaces and `command` on a connected agent (the part of a session
/// a background session's holder shares, see [`crate::background`]).
pub(crate) async fn start_connected(
    args: &SessionArgs,
    command: Vec<OsString>,
    checked: Preflight,
    incoming: Option<mirrord_net_protocol::messages::IncomingConfig>,
    agent: &mut SessionAgent,
    tunnel: &mut Tunnel,
) -> Result<Running, RunError> {
    let Preflight {
        privileges,
        outgoing,
        remote_names,
        dns,
    } = checked;
    let mut progress = Progress::new(args.quiet);

    let outgoing = match remote_names.is_empty() {
        true => outgoing,
        false => {
            progress.step("resolving the --remote names in the target");
            let resolved = tunnel.resolve(remote_names).await?;
            args.outgoing.rules_with(|name| {
                resolved
                    .iter()
                    .find(|answer| answer.name == name)
                    .map_or_else(
                        || Err("not answered".into()),
                        |answer| answer.addresses.clone(),
                    )
            })?
        }
    };

    progress.step("creating the session");
    let env = CommandEnv::for_target(&args.env, &tunnel.target.environ);
    let spec = SessionSpec {
        ipv4: tunnel.target.ipv4.clone(),
        ipv6: tunnel.target.ipv6.clone(),
        mtu: tunnel.mtu,
        hostname: tunnel.target.hostname.clone(),
        resolv_conf: tunnel.target.resolv_conf.clone(),
        hosts: tunnel.target.hosts.as_deref().map(|hosts| {
            session::hosts::with_hostname_entry(
                hosts,
                &tunnel.target.hostname,
                tunnel.target.ipv4.first().copied(),
                tunnel.target.ipv6.first().copied(),
            )
        }),
        command,
        run_as: if args.as_root {
            None
        } else {
            session::invoking_user()
        },
        env: Some(env.base_os()),
        env_overrides: env.overrides_os(),
    };
    let files = remote_files(
        args,
        &tunnel.target.mountinfo,
        &tunnel.connection,
        privileges,
    );
    progress.clear();
    // A TUN the local agent serves itself carries virtio-net headers (checksum offload); one
    // this process relays over QUIC carries bare packets, except on an MTU-limited path,
    // where it segments and coalesces (virtio-net headers with TSO, `tunnel::offload`).
    let tun_offload = matches!(agent, SessionAgent::Local(local) if local.takes_tun());
    let framing = pump::Framing::for_mtu(tunnel.mtu);
    let options = session::SessionOptions {
        privileges,
        tun_offload,
        tun_segmentation: !tun_offload && framing == pump::Framing::Segmented,
        target_localhost: !args.no_target_localhost,
        outgoing,
        dns,
        ..session::SessionOptions::default()
    };
    let mut session = Session::start_with_files(spec, options, files).await?;
    if let Some(tun) = session.tun_fd() {
        tunnel::release_with_namespace(&tun);
    }
    // Aborted when dropped, at the end of the session; it holds the control stream until then.
    let _incoming = match incoming {
        Some(config) => tunnel.take_control().map(|(send, recv)| {
            AbortOnDrop(tokio::spawn(incoming::control::run(
                send,
                recv,
                config,
                session.served(),
            )))
        }),
        None => None,
    };

    let stats = Arc::new(pump::PumpStats::default());
    // A local agent that dies ends the session at once, not after QUIC's idle timeout.
    let agent_exited = match &*agent {
        SessionAgent::Local(local) => local.exited(),
        _ => None,
    };
    let pump_task = match agent {
        SessionAgent::Local(local) if local.takes_tun() => {
            // One relay: the agent's stack serves the TUN itself. This process keeps no
            // descriptor of it (so its packets never wake us) and only watches the connection,
            // whose end still ends the session.
            let tun = session.take_tun_fd().expect("the TUN is still ours");
            if let Err(err) = local.hand_over_tun(tun.as_fd()) {
                let _ = session.signal(Signal::SIGKILL);
                session.wait().await;
                return Err(RunError::TunHandOver(err));
            }
            drop(tun);
            tokio::spawn(until_agent_exits(
                pump::watch(tunnel.connection.clone()),
                agent_exited,
            ))
        }
        _ => tokio::spawn(until_agent_exits(
            pump::pump(
                session.take_tun_fd().expect("the TUN is still ours"),
                framing,
                tunnel.connection.clone(),
                tunnel.mtu,
                stats.clone(),
            ),
            agent_exited,
        )),
    };

    Ok(Running {
        session,
        pump_task,
        _incoming,
        stats,
    })
}

/// `pump`, ended early with [`pump::PumpError::AgentExited`] when `agent_exited` resolves.
async fn until_agent_exits(
    pump: impl std::future::Future<Output = Result<(), pump::PumpError>>,
    agent_exited: Option<impl std::future::Future<Output = ()>>,
) -> Result<(), pump::PumpError> {
    match agent_exited {
        Some(exited) => tokio::select! {
            result = pump => result,
            () = exited => Err(pump::PumpError::AgentExited),
        },
        None => pump.await,
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the agent for `args.target` and connects to it: the first half of a session, which
/// `mirrord-net env` shares.
pub(crate) async fn start_agent_and_connect(
    args: &SessionArgs,
) -> Result<(SessionAgent, Tunnel), RunError> {
    args.target().check_exists()?;
    let pid = match args.target() {
        Target::Pid(pid) => *pid,
        Target::Kubernetes(target) => {
            let mut progress = Progress::new(args.quiet);
            let identity = SessionIdentity::generate()?;
            let (agent, tunnel) = kubernetes::start_agent_and_connect(
                &args.kube,
                target,
                &identity,
                kubernetes::SessionWants {
                    fs_mode: args.fs_mode.as_arg(),
                    incoming: args.incoming.agent_arg(),
                    log_filter: agent_log_filter(args.verbose),
                    reconnect_window: args.reconnect.window(),
                },
                &mut |step| progress.step(step),
            )
            .await?;
            log_connected(&tunnel);
            progress.clear();
            return Ok((SessionAgent::Kubernetes(agent), tunnel));
        }
    };

    let mut progress = Progress::new(args.quiet);
    progress.step(&format!("starting the agent for {}", args.target()));
    let identity = SessionIdentity::generate()?;
    let packets = local_packets();
    let listen = local_agent_listen();
    let agent = local_agent::start_local(
        pid,
        identity.fingerprint(),
        agent_log_filter(args.verbose),
        args.fs_mode,
        packets,
        listen,
        args.incoming.agent_arg(),
    )
    .await?;

    progress.step("connecting to the agent");
    let transport = local_transport();
    let connected = match transport {
        LocalTransport::Udp => {
            tunnel::connect(
                agent.ready.addr,
                &identity,
                agent.ready.cert_sha256,
                match listen {
                    Some(_) => PathProfile::Network,
                    None => PathProfile::Loopback,
                },
                args.reconnect.window(),
            )
            .await
        }
        LocalTransport::Stream => match tokio::net::TcpStream::connect(agent.ready.addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let addr = agent.ready.addr;
                let reopen: tunnel::ReopenStream = Box::new(move || {
                    Box::pin(async move {
                        let stream = tokio::net::TcpStream::connect(addr).await?;
                        let _ = stream.set_nodelay(true);
                        Ok(Box::new(stream) as Box<dyn tunnel::ByteStream>)
                    })
                });
                tunnel::connect_over_stream(
                    stream,
                    &identity,
                    agent.ready.cert_sha256,
                    PathProfile::Stream,
                    args.reconnect.window(),
                    Some(reopen),
                )
                .await
            }
            Err(err) => Err(TunnelError::Socket(err)),
        },
    };
    let tunnel = match connected {
        Ok(tunnel) => tunnel,
        Err(err) => {
            // The agent usually knows better why (e.g. the target exited meanwhile).
            return Err(match agent.last_error() {
                Some(reason) => RunError::Agent(AgentError::Failed(reason)),
                None => err.into(),
            });
        }
    };
    tracing::info!(?transport, ?packets, "local agent transport");
    log_connected(&tunnel);
    progress.clear();
    Ok((SessionAgent::Local(agent), tunnel))
}

fn log_connected(tunnel: &Tunnel) {
    tracing::info!(
        hostname = %tunnel.target.hostname,
        ipv4 = ?tunnel.target.ipv4,
        ipv6 = ?tunnel.target.ipv6,
        environ = tunnel.target.environ.len(),
        mtu = tunnel.mtu,
        "connected to the agent"
    );
}

/// How the client reaches a local agent: QUIC over UDP, or QUIC framed on a TCP connection
/// to the agent's same port (`MIRRORD_NET_LOCAL_TRANSPORT=stream`), the path a Kubernetes
/// port-forward takes, which this exercises and measures without a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalTransport {
    Udp,
    Stream,
}

const LOCAL_TRANSPORT_ENV: &str = "MIRRORD_NET_LOCAL_TRANSPORT";

fn local_transport() -> LocalTransport {
    match std::env::var(LOCAL_TRANSPORT_ENV).as_deref() {
        Ok("stream") => LocalTransport::Stream,
        Ok("udp") | Ok("") | Err(_) => LocalTransport::Udp,
        Ok(other) => {
            tracing::warn!("{LOCAL_TRANSPORT_ENV}={other:?} is neither udp nor stream; using udp");
            LocalTransport::Udp
        }
    }
}

const LOCAL_AGENT_LISTEN_ENV: &str = "MIRRORD_NET_LOCAL_AGENT_LISTEN";

/// Where a local agent listens when not on loopback (`MIRRORD_NET_LOCAL_AGENT_LISTEN=ADDR`):
/// with the agent started in another network namespace (`MIRRORD_NET_AGENT` pointing at a
/// wrapper that enters it), the session then crosses a real link with a real MTU, as a
/// cluster agent's does. Both ends use the network path profile (datagrams of one MTU).
/// The bench's cluster-path mode measures that path this way.
fn local_agent_listen() -> Option<std::net::SocketAddr> {
    let value = std::env::var(LOCAL_AGENT_LISTEN_ENV).ok()?;
    match value.parse() {
        Ok(addr) => Some(addr),
        Err(_) => {
            tracing::warn!(
                "{LOCAL_AGENT_LISTEN_ENV}={value:?} is not an address and port; ignored"
            );
            None
        }
    }
}

const LOCAL_PACKETS_ENV: &str = "MIRRORD_NET_LOCAL_PACKETS";

/// Which way a local target's packets go: by default the agent serves the session's TUN
/// itself (`tun`); `MIRRORD_NET_LOCAL_PACKETS=quic` keeps them on the QUIC tunnel, as a
/// remote agent's do (tests and measurements of that path without a cluster).
fn local_packets() -> local_agent::LocalPackets {
    match std::env::var(LOCAL_PACKETS_ENV).as_deref() {
        Ok("quic") => local_agent::LocalPackets::Quic,
        Ok("tun") | Ok("") | Err(_) => local_agent::LocalPackets::Tun,
        Ok(other) => {
            tracing::warn!("{LOCAL_PACKETS_ENV}={other:?} is neither tun nor quic; using tun");
            local_agent::LocalPackets::Tun
        }
    }
}

/// The target's files for the session: its root at [`session::remote_root`], its own mounts
/// (and `--fs-remote` paths) over the local ones, served over the session's connection.
/// `target_mountinfo` is the target's mount table as the agent read it (the target may be on
/// another machine).
fn remote_files(
    args: &SessionArgs,
    target_mountinfo: &str,
    connection: &quinn::Connection,
    privileges: SessionPrivileges,
) -> Option<session::RemoteFiles> {
    if args.fs_mode == FsMode::Off {
        return None;
    }
    let mount_point = session_remote_root(privileges);
    let own_mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_else(|err| {
        tracing::warn!(
            "cannot read /proc/self/mountinfo: {err}; all the target's mounts are shown"
        );
        String::new()
    });
    let chosen = remote_paths::choose(
        &remote_paths::parse_mountinfo(target_mountinfo),
        &remote_paths::parse_mountinfo(&own_mountinfo),
        &args.fs_remote,
        &args.fs_local,
        &mount_point,
    );
    tracing::info!(remote = ?chosen.remote, keep_local = ?chosen.keep_local, "target paths");
    let transport = mirrord_net_fuse_fs::QuicTransport::new(connection.clone());
    let runtime = tokio::runtime::Handle::current();
    Some(session::RemoteFiles {
        mount_point,
        writable: args.fs_mode == FsMode::Write,
        binds: chosen.remote,
        keep_local: chosen.keep_local,
        serve: Box::new(move |device| {
            let server = mirrord_net_fuse_fs::serve(
                device,
                transport,
                runtime,
                mirrord_net_fuse_fs::DEFAULT_TTL,
            )?;
            Ok(Box::new(server) as Box<dyn std::any::Any + Send>)
        }),
    })
}

/// Waits for the command while relaying signals; stops it if the agent goes away.
async fn supervise(
    session: &mut Session,
    pump_task: &mut tokio::task::JoinHandle<Result<(), pump::PumpError>>,
) -> Result<i32, RunError> {
    // The terminal sends SIGINT/SIGQUIT to the whole foreground process group, the command
    // included; the command decides what they mean, and we learn it from its exit status.
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
    // SIGTERM and SIGHUP are meant for the session as a whole: pass them on.
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut hangup = signal(SignalKind::hangup()).expect("SIGHUP handler");
    loop {
        tokio::select! {
            code = session.wait() => return Ok(code),
            _ = interrupt.recv() => {}
            _ = quit.recv() => {}
            _ = terminate.recv() => { let _ = session.signal(Signal::SIGTERM); }
            _ = hangup.recv() => { let _ = session.signal(Signal::SIGHUP); }
            result = &mut *pump_task => {
                let err = match result {
                    Ok(Err(err)) => err,
                    Ok(Ok(())) => pump::PumpError::Connection(quinn::ConnectionError::LocallyClosed),
                    Err(join) => pump::PumpError::Tun(std::io::Error::other(join.to_string())),
                };
                let _ = session.signal(Signal::SIGTERM);
                if tokio::time::timeout(TERMINATE_GRACE, session.wait()).await.is_err() {
                    let _ = session.signal(Signal::SIGKILL);
                    session.wait().await;
                }
                return Err(RunError::AgentLost(err));
            }
        }
    }
}

/// Checks what the session needs before anything is started, and chooses its privileges.
pub(crate) fn preflight(args: &SessionArgs) -> Result<Preflight, RunError> {
    // Before any agent starts: a `--local` name this machine cannot resolve is a usage error.
    // `--remote` names wait for the target's resolver (`start_connected`).
    let remote_names = args.outgoing.remote_names();
    let outgoing = match remote_names.is_empty() {
        true => args.outgoing.rules()?,
        false => None,
    };
    let privileges = session_privileges(args.target(), args.as_root)?;
    if !Path::new(TUN).exists() {
        return Err(RunError::NoTunDevice);
    }
    let files = args.fs_mode != FsMode::Off;
    if files && !Path::new(FUSE).exists() {
        return Err(RunError::NoFuseDevice);
    }
    if let SessionPrivileges::Rootless(_) = privileges {
        if let Some(reason) = userns::Sysctls::read().forbids() {
            return Err(RunError::UserNamespacesDisabled(reason));
        }
        // Capabilities in a user namespace never override the modes of these devices.
        if !read_writable(TUN) {
            return Err(RunError::TunNotAccessible);
        }
        if files && !read_writable(FUSE) {
            return Err(RunError::FuseNotAccessible);
        }
    }
    Ok(Preflight {
        privileges,
        outgoing,
        remote_names,
        dns: args.outgoing.dns_rules(),
    })
}

/// What the preflight decided: the session's privileges, and the outgoing filter with its
/// `--local` names already resolved.
pub(crate) struct Preflight {
    pub privileges: SessionPrivileges,
    /// `None` also while `remote_names` wait for the target.
    pub outgoing: Option<mirrord_net_session::OutgoingRules>,
    /// The `--remote` names, which the target resolves once the agent is connected.
    pub remote_names: Vec<String>,
    /// The DNS filter.
    pub dns: Option<mirrord_net_session::DnsRules>,
}

const TUN: &str = "/dev/net/tun";
const FUSE: &str = "/dev/fuse";

/// Where a session with `privileges` mounts the target's root (see [`session::remote_root`]).
pub(crate) fn session_remote_root(privileges: SessionPrivileges) -> std::path::PathBuf {
    let rootless_uid = match privileges {
        SessionPrivileges::Root => None,
        SessionPrivileges::Rootless(maps) => Some(maps.uid.outside),
    };
    session::remote_root(
        rootless_uid,
        std::env::var_os("XDG_RUNTIME_DIR")
            .as_deref()
            .map(std::path::Path::new),
    )
}

/// Root sessions for a root client; without root, a rootless session (its own user
/// namespace) unless the target needs root.
pub(crate) fn session_privileges(
    target: &Target,
    as_root: bool,
) -> Result<SessionPrivileges, RunError> {
    if nix::unistd::geteuid().is_root() {
        return Ok(SessionPrivileges::Root);
    }
    if target_needs_root(target) {
        return Err(RunError::NeedRoot);
    }
    Ok(SessionPrivileges::Rootless(session::IdMaps::current_user(
        as_root,
    )))
}

/// A `pid/` target's agent runs here and enters the target's namespaces, which takes root.
/// Targets whose agent runs elsewhere (in a cluster) need none.
fn target_needs_root(target: &Target) -> bool {
    matches!(target, Target::Pid(_))
}

fn read_writable(path: &str) -> bool {
    nix::unistd::access(
        path,
        nix::unistd::AccessFlags::R_OK | nix::unistd::AccessFlags::W_OK,
    )
    .is_ok()
}

/// Starting the agent needs root only where [`target_needs_root`] says so.
pub(crate) fn check_root_for_agent(target: &Target) -> Result<(), RunError> {
    if target_needs_root(target) && !nix::unistd::geteuid().is_root() {
        return Err(RunError::NeedRoot);
    }
    Ok(())
}

/// The agent logs at the client's verbosity; without -v it logs warnings only (or as
/// MIRRORD_NET_AGENT_LOG says), and its stderr is kept to explain failures.
fn agent_log_filter(verbose: u8) -> Option<&'static str> {
    match verbose {
        0 => None,
        1 => Some("info"),
        2 => Some("debug"),
        _ => Some("trace"),
    }
}

/// The command of `mirrord-net shell`: the user's shell.
pub fn shell_command() -> Vec<OsString> {
    vec![std::env::var_os("SHELL")
        .filter(|shell| !shell.is_empty())
        .unwrap_or_else(|| OsString::from("/bin/sh"))]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_errors_fall_into_their_classes() {
        let kind = |err: RunError| classify(&anyhow::Error::from(err));
        assert_eq!(
            kind(RunError::Target(TargetError::NoSuchProcess(9))),
            Kind::TargetNotFound
        );
        assert_eq!(kind(RunError::NeedRoot), Kind::Permission);
        assert_eq!(kind(RunError::NoTunDevice), Kind::Environment);
        assert_eq!(
            kind(RunError::Agent(AgentError::Failed("x".into()))),
            Kind::AgentFailed
        );
        assert_eq!(
            kind(RunError::Kubernetes(KubeError::Denied("no".into()))),
            Kind::Permission
        );
        assert_eq!(
            classify(&anyhow::Error::from(Failure::new(Kind::SessionEnded, "x"))),
            Kind::SessionEnded
        );
    }
}
