//! `mirrord-net-agent`: the far end of a mirrord-net session.
//!
//! Started by the client (local targets) or as a pod (Kubernetes), it binds its QUIC socket
//! (UDP) and a TCP listener on the same address and port where the client can reach it, then
//! enters the target's namespaces, drops the privileges the session does not use (see
//! `privileges`) and installs its system call allow-list (see `seccomp`), prints its ready line and serves exactly one session, to a client that comes
//! over UDP or over a byte stream (see `stream_relay`). The stack's caps on flows and connects
//! in progress are options (see `stack::limits`).
//!
//! The target is a process (`--target-pid`) or, for an agent pod on the target's node, a
//! container ID from the pod status (`--target-container-id`), which names the container's
//! main process (see `container`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirrord_net_agent::container::{self, ContainerId};
use mirrord_net_agent::control;
use mirrord_net_agent::files::{Access, FileServer};
use mirrord_net_agent::incoming::iptables::keeper;
use mirrord_net_agent::incoming::{RedirectChoice, RedirectWith};
use mirrord_net_agent::memory_limit;
use mirrord_net_agent::namespaces::TargetNamespaces;
use mirrord_net_agent::privileges;
use mirrord_net_agent::root_fs::TargetRoot;
use mirrord_net_agent::seccomp;
use mirrord_net_agent::stack::Limits;
use mirrord_net_agent::stream_relay::{RelayLimits, StreamRelay};
use mirrord_net_agent::target_info;
use mirrord_net_agent::tun_handoff::TunHandoff;
use mirrord_net_protocol::ready::AgentReady;
use mirrord_net_protocol::transport::{self, PathProfile};
use mirrord_net_protocol::trust::{Fingerprint, SessionIdentity};

#[derive(Debug, Parser)]
#[command(name = "mirrord-net-agent", version, about)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["target_pid", "target_container_id"])))]
struct Args {
    /// The process whose network namespace, hostname and files the session takes on.
    #[arg(long, value_name = "PID")]
    target_pid: Option<u32>,
    /// Or: the container whose main process is the target, as the pod status writes its ID
    /// (`containerd://<64 hex>`, `cri-o://…`, `docker://…` or the bare hex). Needs the
    /// node's processes in sight (a hostPID pod).
    #[arg(long, value_name = "ID", value_parser = parse_container_id)]
    target_container_id: Option<ContainerId>,
    /// SHA-256 of the only client certificate this agent accepts.
    #[arg(long, value_name = "HEX")]
    client_cert_sha256: Fingerprint,
    /// Where to listen for the client, on UDP and TCP (same port; bound before entering the
    /// target's namespace).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// What lies between client and agent: `loopback` or `network`.
    #[arg(long, default_value = "loopback", value_parser = parse_profile)]
    path: PathProfile,
    /// The target's files for the session: `read` (changes fail with EROFS), `write` or
    /// `off` (no file requests are answered).
    #[arg(long, default_value = "read", value_parser = ["read", "write", "off"])]
    fs_mode: String,
    /// Give up when no client connects within this many seconds.
    #[arg(long, default_value_t = 30)]
    accept_timeout_secs: u64,
    /// Most flows a session may hold, per protocol (TCP, UDP, ICMP echo); new ones beyond
    /// it are refused (RST, ICMP prohibited, dropped). Default: 16384, fewer where the
    /// agent's memory limit would not hold them (`Limits::within_memory`), as for the caps
    /// and the budget below.
    #[arg(long, value_name = "N")]
    max_flows: Option<usize>,
    /// Most TCP connects in progress at once for the session; SYNs beyond it get RST.
    /// Default: 4096.
    #[arg(long, value_name = "N")]
    max_half_open: Option<usize>,
    /// Most TCP connects in progress at once towards one destination address. Default: 1024.
    #[arg(long, value_name = "N")]
    max_half_open_per_host: Option<usize>,
    /// Seconds a TCP connect may take before the agent gives up and resets the session's
    /// connection.
    #[arg(long, default_value_t = Limits::default().connect_timeout.as_secs(), value_name = "SECS")]
    connect_timeout_secs: u64,
    /// MiB that all TCP flows together may hold in their buffers; beyond it flows wait
    /// (upstream data stays unread, the session's segments are retransmitted). Default: 256.
    #[arg(long, value_name = "MIB")]
    buffer_budget_mib: Option<usize>,
    /// An inherited Unix socket on which a local client sends the session's TUN device; the
    /// stack then reads and writes the device itself instead of QUIC datagrams.
    #[arg(long, value_name = "FD", hide = true)]
    tun_socket_fd: Option<i32>,
    /// The inbound traffic the session may ask for: `steal`, `mirror`, `all` or `none`. The
    /// capabilities the others need are dropped at start (see `privileges`).
    #[arg(long, default_value = "all", value_parser = ["all", "steal", "mirror", "none"])]
    incoming: String,
    /// The system call allow-list: `enforce`, `log` (allow and log what it would refuse)
    /// or `off` (see `seccomp`).
    #[arg(long, default_value = "enforce", value_name = "MODE")]
    seccomp: seccomp::Mode,
    /// How stolen ports are redirected in the target's namespace: `nftables`, `iptables`
    /// (iptables-legacy, through a keeper process; see `incoming::iptables`) or `auto`
    /// (nftables where the target's kernel has it).
    #[arg(long, value_enum, default_value = "auto", value_name = "MEANS")]
    redirect_with: RedirectChoice,
}

fn parse_container_id(value: &str) -> Result<ContainerId, String> {
    ContainerId::parse(value).map_err(|err| err.to_string())
}

fn parse_profile(value: &str) -> Result<PathProfile, String> {
    match value {
        "loopback" => Ok(PathProfile::Loopback),
        "network" => Ok(PathProfile::Network),
        other => Err(format!("unknown path profile {other:?} (loopback|network)")),
    }
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == keeper::ARG)
    {
        return keeper::run();
    }
    let args = Args::parse();
    // Read before the agent enters the target's namespaces: these are its own cgroup files.
    let memory_limit = memory_limit::own();
    mirrord_net_protocol::heap::tune_for_packets_within(memory_limit);
    init_logging();
    match run(args, memory_limit) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mirrord-net-agent: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The stack's limits: the options given, the rest sized to the memory limit.
fn limits(args: &Args, memory_limit: Option<u64>) -> Limits {
    let sized = memory_limit.map_or_else(Limits::default, Limits::within_memory);
    Limits {
        max_flows: args.max_flows.unwrap_or(sized.max_flows),
        max_half_open: args.max_half_open.unwrap_or(sized.max_half_open),
        max_half_open_per_host: args
            .max_half_open_per_host
            .unwrap_or(sized.max_half_open_per_host),
        connect_timeout: Duration::from_secs(args.connect_timeout_secs),
        buffer_budget: args
            .buffer_budget_mib
            .map_or(sized.buffer_budget, |mib| mib.saturating_mul(1 << 20)),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIRRORD_NET_AGENT_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run(args: Args, memory_limit: Option<u64>) -> anyhow::Result<()> {
    let pid = match (&args.target_container_id, args.target_pid) {
        (Some(id), _) => {
            let pid = container::find_main_process(std::path::Path::new("/proc"), id)?;
            // Said on every start: the pod's log then shows which process the session is about.
            eprintln!("container {id} is process {pid} on this node");
            pid
        }
        (None, Some(pid)) => pid,
        (None, None) => unreachable!("clap requires a target"),
    };
    let tun = args
        .tun_socket_fd
        .map(TunHandoff::from_inherited)
        .transpose()?;
    let namespaces = TargetNamespaces::open(pid)?;
    let root = TargetRoot::of_pid(pid)
        .with_context(|| format!("cannot open the root of process {pid}"))?;
    let access = match args.fs_mode.as_str() {
        "write" => Some(Access::ReadWrite),
        "off" => None,
        _ => Some(Access::ReadOnly),
    };
    let files = match access {
        Some(access) => Some(std::sync::Arc::new(
            FileServer::open(std::path::Path::new(&format!("/proc/{pid}/root")), access)
                .with_context(|| format!("cannot serve the files of process {pid}"))?,
        )),
        None => None,
    };
    let (socket, relay) = bind_sockets(args.listen)?;
    let stream_peers = relay.peers()?;
    let identity = SessionIdentity::generate()?;
    let limits = limits(&args, memory_limit);
    if let Some(bytes) = memory_limit {
        tracing::debug!(
            limit_mib = bytes >> 20,
            ?limits,
            "sized to the memory limit"
        );
    }

    // From here on, this thread (and every thread it starts) lives in the target's namespaces.
    namespaces.enter(pid)?;
    let target = target_info::gather(&root, pid)?;
    // Everything that needed more is open: keep what the session's features use, then
    // refuse every system call the agent does not make.
    let mirror = matches!(args.incoming.as_str(), "mirror" | "all");
    let needs = privileges::Needs {
        write_files: access == Some(Access::ReadWrite),
        steal: matches!(args.incoming.as_str(), "steal" | "all"),
        raw_sockets: mirror || !privileges::ping_sockets_allowed(),
    };
    // The iptables keeper, where it is needed, starts before the privileges go.
    let redirect_with = if needs.steal {
        RedirectWith::choose(args.redirect_with)
    } else {
        RedirectWith::Unavailable("the session may not steal (--incoming)".into())
    };
    privileges::drop_to(privileges::kept(needs)).context("cannot drop the agent's privileges")?;
    seccomp::install(args.seccomp)?;
    tracing::debug!(?target.ipv4, ?target.ipv6, hostname = %target.hostname, "target");

    // One thread, for the same reason as the client's: no cross-thread wake-ups between the
    // stack's engine and quinn's tasks on every packet.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // A LocalSet: the incoming side's filtered connections are tasks that are not `Send`.
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let server_config =
            transport::server_config(&identity, args.client_cert_sha256, args.path)?;
        let (claimed, claimed_rx) = tokio::sync::watch::channel(None);
        let stream_clients = control::StreamClients {
            peers: stream_peers,
            claimed,
            config: Arc::new(transport::server_config(
                &identity,
                args.client_cert_sha256,
                PathProfile::Stream,
            )?),
        };
        let endpoint = quinn::Endpoint::new(
            transport::agent_endpoint_config(args.path),
            Some(server_config),
            socket,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        let ready = AgentReady {
            addr: endpoint.local_addr()?,
            cert_sha256: identity.fingerprint(),
        };
        let relay = tokio::spawn(relay.serve(claimed_rx));
        announce(&ready)?;
        let served = control::serve_one_session(
            endpoint,
            target,
            Duration::from_secs(args.accept_timeout_secs),
            files,
            Some(stream_clients),
            control::SessionMeans {
                tun,
                limits,
                redirect_with,
            },
        )
        .await;
        relay.abort();
        served
    })
}

/// How often a free UDP port is tried for TCP too, when the kernel picks the port.
const PORT_ATTEMPTS: usize = 20;

/// Binds the QUIC socket and, on the same address and port, the stream relay's listener.
fn bind_sockets(addr: SocketAddr) -> anyhow::Result<(std::net::UdpSocket, StreamRelay)> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let socket = bind_socket(addr)?;
        let bound = socket.local_addr()?;
        match StreamRelay::bind(bound, RelayLimits::default()) {
            Ok(relay) => return Ok((socket, relay)),
            // The kernel's free UDP port may be taken on TCP: try another one.
            Err(err) if addr.port() == 0 && attempt < PORT_ATTEMPTS && is_addr_in_use(&err) => {
                continue
            }
            Err(err) => return Err(err),
        }
    }
}

fn is_addr_in_use(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    })
}

/// Binds the QUIC socket with buffers big enough for 64 KiB datagrams in bursts.
fn bind_socket(addr: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    transport::enlarge_socket_buffers(&socket);
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok(socket.into())
}

fn announce(ready: &AgentReady) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", ready.to_line())?;
    stdout.flush()?;
    Ok(())
}
