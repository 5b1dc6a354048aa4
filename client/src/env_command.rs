//! `mirrord-net env`: the environment a session's command would get on the target, printed
//! as dotenv or JSON. It starts the agent and connects as a session does ([`run`]), and
//! composes the variables with the session's own function, so what it prints is what the
//! command gets ([`environment`](crate::environment) explains the composition).

use std::io::Write;
use std::os::unix::ffi::OsStringExt;
use std::time::Duration;

use mirrord_net_env_injector::{self as injector, dotenv, Var};

use crate::cli::SessionArgs;
use crate::connect;
use crate::environment::{CommandEnv, EnvFormat};
use crate::run_error::RunError;
use mirrord_net_session as session;

/// `mirrord-net env`: starts the agent and connects as a session does, prints the
/// environment the session's command would get, and exits. No namespaces, no TUN.
pub async fn print_env(args: &SessionArgs, format: EnvFormat) -> Result<i32, RunError> {
    connect::check_root_for_agent(args.target())?;
    let privileges = connect::session_privileges(args.target(), args.as_root)?;
    let (agent, tunnel) = connect::start_agent_and_connect(args).await?;
    let env = CommandEnv::for_target(&args.env, &tunnel.target.environ);
    agent.end_session(tunnel, Duration::from_secs(2)).await;

    let run_as = if args.as_root {
        None
    } else {
        session::invoking_user()
    };
    let base = env.base.clone();
    let overrides = env.overrides.clone();
    // The session's command also learns where the target's root is mounted: the same
    // directory a session of this user would mount it on.
    let remote_root = (args.fs_mode != crate::remote_paths::FsMode::Off).then(|| {
        connect::session_remote_root(privileges)
            .into_os_string()
            .into_vec()
    });
    let composed = tokio::task::spawn_blocking(move || {
        session::command_env(Some(&base), &overrides, run_as, remote_root.as_deref())
    })
    .await
    .expect("the user lookup does not panic")
    .map_err(RunError::UserLookup)?;
    let composed: Vec<Var> = composed
        .into_iter()
        .map(|(name, value)| (name.into_vec(), value.into_vec()))
        .collect();

    let (text, skipped) = match format {
        EnvFormat::Dotenv => {
            let rendered = dotenv::render(&composed);
            (rendered.text, rendered.skipped)
        }
        EnvFormat::Json => {
            let (text, skipped) = injector::json::render(&composed);
            (text.into_bytes(), skipped)
        }
    };
    for name in skipped {
        eprintln!(
            "mirrord-net: left out {:?}: the {format:?} format cannot name it",
            String::from_utf8_lossy(&name)
        );
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&text)
        .and_then(|()| stdout.flush())
        .map_err(RunError::Output)?;
    Ok(0)
}
