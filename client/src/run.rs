//! One session from start to exit code.
//!
//! Order matters: the agent first (it reports the target's addresses and the datagram size),
//! then the QUIC connection and handshake, then the session namespaces with a TUN sized to the
//! datagram, then the user's command. Every step that fails leaves nothing behind: the agent
//! dies with its `LocalAgent` handle (and with this process), the session's namespaces die
//! with its last process.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use mirrord_net_protocol::transport::PathProfile;
use mirrord_net_protocol::trust::{SessionIdentity, TrustError};
use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::agent::{self, AgentError};
use crate::cli::SessionArgs;
use crate::progress::Progress;
use crate::session::{self, Session, SessionError, SessionSpec};
use crate::target::{Target, TargetError};
use crate::tunnel::{self, pump, TunnelError};

/// How long the user's command gets to exit after the agent is lost, before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "mirrord-net needs root to create network namespaces and a TUN device for pid/ \
         targets: run it with sudo"
    )]
    NeedRoot,
    #[error("/dev/net/tun is missing: load the tun module (modprobe tun) or run where TUN devices are allowed")]
    NoTunDevice,
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Tunnel(#[from] TunnelError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("{0}; the session was stopped")]
    AgentLost(pump::PumpError),
}

/// Runs `command` in a session on `args.target` and returns the shell-style exit code.
pub async fn run_session(args: &SessionArgs, command: Vec<OsString>) -> Result<i32, RunError> {
    preflight()?;
    args.target.check_exists()?;
    let Target::Pid(pid) = args.target;

    let mut progress = Progress::new(args.quiet);
    progress.step(&format!("starting the agent for {}", args.target));
    let identity = SessionIdentity::generate()?;
    let agent =
        agent::start_local(pid, identity.fingerprint(), agent_log_filter(args.verbose)).await?;

    progress.step("connecting to the agent");
    let tunnel = match tunnel::connect(
        agent.ready.addr,
        &identity,
        agent.ready.cert_sha256,
        PathProfile::Loopback,
    )
    .await
    {
        Ok(tunnel) => tunnel,
        Err(err) => {
            // The agent usually knows better why (e.g. the target exited meanwhile).
            return Err(match agent.last_error() {
                Some(reason) => RunError::Agent(AgentError::Failed(reason)),
                None => err.into(),
            });
        }
    };
    tracing::info!(
        hostname = %tunnel.target.hostname,
        ipv4 = ?tunnel.target.ipv4,
        ipv6 = ?tunnel.target.ipv6,
        mtu = tunnel.mtu,
        "connected to the agent"
    );

    progress.step("creating the session");
    let spec = SessionSpec {
        ipv4: tunnel.target.ipv4.clone(),
        ipv6: tunnel.target.ipv6.clone(),
        mtu: tunnel.mtu,
        hostname: tunnel.target.hostname.clone(),
        resolv_conf: tunnel.target.resolv_conf.clone(),
        hosts: tunnel.target.hosts.clone(),
        command,
        run_as: if args.as_root {
            None
        } else {
            session::invoking_user()
        },
        env: None,
    };
    progress.clear();
    let mut session = Session::start(spec).await?;
    tunnel::release_with_namespace(session.tun().as_ref());

    let stats = Arc::new(pump::PumpStats::default());
    let mut pump_task = tokio::spawn(pump::pump(
        session.tun().clone(),
        tunnel.connection.clone(),
        tunnel.mtu,
        stats.clone(),
    ));

    let outcome = supervise(&mut session, &mut pump_task).await;
    pump_task.abort();
    tracing::info!("packets: {}", stats.summary());
    tunnel
        .close_until(agent.finish(Duration::from_secs(2)))
        .await;
    outcome
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

fn preflight() -> Result<(), RunError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(RunError::NeedRoot);
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Err(RunError::NoTunDevice);
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
