//! `exec` and `shell`: one session from start to exit code, over the connect step
//! ([`crate::connect`]).
//!
//! Order matters: the agent first (it reports the target's addresses and the datagram size),
//! then the QUIC connection and handshake, then the session namespaces with a TUN sized to the
//! datagram, then the user's command. Every step that fails leaves nothing behind: the agent
//! dies with its `LocalAgent` handle (and with this process), the session's namespaces die
//! with its last process.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::SessionArgs;
use crate::connect::{preflight, session_remote_root, start_agent_and_connect, Preflight};
use crate::environment::CommandEnv;
use crate::incoming;
use crate::progress::Progress;
use crate::remote_paths::{self, FsMode};
use crate::run_error::RunError;
use crate::session_agent::SessionAgent;
use mirrord_net_session::{self as session, Session, SessionPrivileges, SessionSpec};
use mirrord_net_tunnel::{self as tunnel, pump, Tunnel};

/// How long the user's command gets to exit after the agent is lost, before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(3);

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
            for answer in &resolved {
                match &answer.addresses {
                    Ok(addresses) => tracing::info!(
                        name = %answer.name,
                        count = addresses.len(),
                        ?addresses,
                        "a --remote name, as the target resolves it"
                    ),
                    Err(err) => tracing::info!(name = %answer.name, %err, "a --remote name"),
                }
            }
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
    // A rootless session leaves it out (`session::spec`).
    let routed_target = match &*agent {
        SessionAgent::Local(local) => local.routed_target(),
        _ => None,
    };
    let framing = pump::Framing::for_mtu(tunnel.mtu);
    let options = session::SessionOptions {
        privileges,
        tun_name: session::tun_name_for(tunnel.target.interface.as_deref()),
        tun_offload,
        tun_segmentation: !tun_offload && framing == pump::Framing::Segmented,
        target_localhost: !args.no_target_localhost,
        outgoing,
        dns,
        routed_target,
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

/// The command of `mirrord-net shell`: the user's shell.
pub fn shell_command() -> Vec<OsString> {
    vec![std::env::var_os("SHELL")
        .filter(|shell| !shell.is_empty())
        .unwrap_or_else(|| OsString::from("/bin/sh"))]
}
