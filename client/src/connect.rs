//! The first half of every command that needs the target: the checks before anything starts
//! ([`preflight`], [`session_privileges`]), and the agent started and connected
//! ([`start_agent_and_connect`]). `exec`/`shell` ([`run`](crate::run)), `env`
//! ([`env_command`](crate::env_command)) and a background session's holder
//! ([`background`](crate::background)) each go on from here.
//!
//! The preflight decides the session's privileges ([`session_privileges`]): a root client
//! builds a root session as always; a client without root gets a rootless one (its own user
//! namespace) where the target allows it, after checks that name what the machine forbids
//! before anything is started.

use std::path::Path;

use mirrord_net_protocol::transport::PathProfile;
use mirrord_net_protocol::trust::SessionIdentity;

use crate::cli::SessionArgs;
use crate::local_agent::{self, AgentError};
use crate::progress::Progress;
use crate::remote_paths::FsMode;
use crate::run_error::RunError;
use crate::session_agent::SessionAgent;
use crate::target::Target;
use mirrord_net_kubernetes as kubernetes;
use mirrord_net_session::{self as session, userns, SessionPrivileges};
use mirrord_net_tunnel::{self as tunnel, Tunnel, TunnelError};

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
                    redirect_with: args.incoming.agent_redirect_arg(),
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
    let packets = local_packets(nix::unistd::geteuid().is_root());
    let listen = local_agent_listen();
    let agent = local_agent::start_local(
        pid,
        identity.fingerprint(),
        agent_log_filter(args.verbose),
        args.fs_mode,
        packets,
        listen,
        &args.incoming,
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
/// itself (`tun`); `MIRRORD_NET_LOCAL_PACKETS=routed` (root sessions) joins the session's
/// namespace to the target's by a veth, so that its IPv4 flows to other hosts take the
/// kernel's path through the target's namespace (`session::routed`); `quic` keeps them on
/// the QUIC tunnel, as a remote agent's do (tests and measurements of that path without a
/// cluster).
fn local_packets(root: bool) -> local_agent::LocalPackets {
    use local_agent::LocalPackets;
    match std::env::var(LOCAL_PACKETS_ENV).as_deref() {
        Ok("quic") => LocalPackets::Quic,
        Ok("routed") if root => LocalPackets::Routed,
        Ok("routed") => {
            tracing::warn!(
                "{LOCAL_PACKETS_ENV}=routed needs a root session (it changes the target's \
                 network namespace); using tun"
            );
            LocalPackets::Tun
        }
        Ok("tun") | Ok("") | Err(_) => LocalPackets::Tun,
        Ok(other) => {
            tracing::warn!(
                "{LOCAL_PACKETS_ENV}={other:?} is none of tun, routed and quic; using tun"
            );
            LocalPackets::Tun
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
