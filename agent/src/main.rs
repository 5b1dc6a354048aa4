//! `mirrord-net-agent`: the far end of a mirrord-net session.
//!
//! Started by the client (local targets) or as a pod (Kubernetes), it binds its QUIC socket
//! where the client can reach it, then enters the target's namespaces, prints its ready line
//! and serves exactly one session.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mirrord_net_agent::control;
use mirrord_net_agent::files::{Access, FileServer};
use mirrord_net_agent::namespaces::TargetNamespaces;
use mirrord_net_agent::root_fs::TargetRoot;
use mirrord_net_agent::target_info;
use mirrord_net_protocol::ready::AgentReady;
use mirrord_net_protocol::transport::{self, PathProfile};
use mirrord_net_protocol::trust::{Fingerprint, SessionIdentity};

#[derive(Debug, Parser)]
#[command(name = "mirrord-net-agent", version, about)]
struct Args {
    /// The process whose network namespace, hostname and files the session takes on.
    #[arg(long, value_name = "PID")]
    target_pid: u32,
    /// SHA-256 of the only client certificate this agent accepts.
    #[arg(long, value_name = "HEX")]
    client_cert_sha256: Fingerprint,
    /// Where to listen for the client (bound before entering the target's namespace).
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
}

fn parse_profile(value: &str) -> Result<PathProfile, String> {
    match value {
        "loopback" => Ok(PathProfile::Loopback),
        "network" => Ok(PathProfile::Network),
        other => Err(format!("unknown path profile {other:?} (loopback|network)")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mirrord-net-agent: {err:#}");
            ExitCode::FAILURE
        }
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

fn run(args: Args) -> anyhow::Result<()> {
    let pid = args.target_pid;
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
    let socket = bind_socket(args.listen)?;
    let identity = SessionIdentity::generate()?;

    // From here on, this thread (and every thread it starts) lives in the target's namespaces.
    namespaces.enter(pid)?;
    let target = target_info::gather(&root, pid)?;
    tracing::debug!(?target.ipv4, ?target.ipv6, hostname = %target.hostname, "target");

    // One thread, for the same reason as the client's: no cross-thread wake-ups between the
    // stack's engine and quinn's tasks on every packet.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server_config =
            transport::server_config(&identity, args.client_cert_sha256, args.path)?;
        let endpoint = quinn::Endpoint::new(
            transport::endpoint_config(args.path),
            Some(server_config),
            socket,
            quinn::default_runtime().context("no async runtime")?,
        )?;
        let ready = AgentReady {
            addr: endpoint.local_addr()?,
            cert_sha256: identity.fingerprint(),
        };
        announce(&ready)?;
        control::serve_one_session(
            endpoint,
            target,
            Duration::from_secs(args.accept_timeout_secs),
            files,
        )
        .await
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
