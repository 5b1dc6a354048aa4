//! `mirrord-net`: the command-line entry. Parsing and wiring only; the work is in the library.

use std::process::ExitCode;

use mirrord_net::background::{self, control, join};
use mirrord_net::cli::{Cli, Command};
use mirrord_net::report::Failure;
use mirrord_net::run_error::classify;
use mirrord_net::{demo, env_command, environment, manual, run};

fn main() -> ExitCode {
    // The session child re-executes this binary; it must not start a runtime or parse the
    // user's arguments.
    match std::env::args_os().nth(1) {
        Some(arg) if arg == "__session" => mirrord_net_session::child_main(),
        Some(arg) if arg == demo::POD_ARG => demo::pod_main(),
        Some(arg) if arg == demo::PROBE_ARG => demo::probe_main(),
        Some(arg) if arg == background::KEEP_ARG => background::keep_main(),
        _ => {}
    }
    let cli = Cli::parse_with_config();
    // Background sessions' commands run before any thread exists: `up` forks its holder,
    // `exec --session` enters namespaces (`setns` wants a single-threaded caller).
    let cli = match cli.command {
        Command::Up {
            session,
            name,
            json,
        } => return ExitCode::from(background::up(session, name, json)),
        Command::Ps { json } => return finish(control::ps(json), json),
        Command::Down { name, json } => return finish(control::down(&name), json),
        Command::Exec {
            session:
                mirrord_net::cli::SessionArgs {
                    session: Some(name),
                    ..
                },
            command,
        } => return finish_code(join::run(&name, command)),
        Command::Shell {
            session:
                mirrord_net::cli::SessionArgs {
                    session: Some(name),
                    ..
                },
        } => return finish_code(join::run(&name, run::shell_command())),
        command => Cli { command },
    };
    let json = cli.command.json();
    match &cli.command {
        Command::Completions { .. } | Command::Man => {
            let mut out = std::io::stdout().lock();
            let written = match &cli.command {
                Command::Completions { shell } => manual::completions(*shell, &mut out),
                _ => manual::man_page(&mut out),
            };
            return match written {
                Ok(()) => ExitCode::SUCCESS,
                // `mirrord-net man | head`: the reader had enough.
                Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("mirrord-net: cannot write it: {err}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    mirrord_net_protocol::heap::tune_for_packets();
    mirrord_net::init_logging(cli.command.verbose());

    // Children (the agent, the session) are spawned from this thread, inside `block_on`: their
    // parent-death signal is tied to the spawning thread, and this one lives to the end.
    // One thread: a packet crosses several tasks (pump, quinn's connection and endpoint), and
    // on worker threads each hand-over could cost a cross-thread wake-up (docs/architecture.md).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("mirrord-net: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Exec { session, command } => run::run_session(&session, command)
                .await
                .map_err(anyhow::Error::from),
            Command::Shell { session } => run::run_session(&session, run::shell_command())
                .await
                .map_err(anyhow::Error::from),
            Command::Env {
                session,
                format,
                json,
            } => {
                let format = if json {
                    environment::EnvFormat::Json
                } else {
                    format
                };
                if session.session.is_some() {
                    Err(Failure::new(
                        mirrord_net::report::Kind::Usage,
                        "--session is for exec and shell",
                    )
                    .into())
                } else {
                    env_command::print_env(&session, format)
                        .await
                        .map_err(anyhow::Error::from)
                }
            }
            Command::Ls { cluster, json, .. } => mirrord_net_kubernetes::ls::run(&cluster, json)
                .await
                .map_err(anyhow::Error::from),
            Command::Doctor { args, .. } => Ok(mirrord_net::doctor::run(&args).await),
            Command::Clean { args, .. } => mirrord_net_kubernetes::clean::run(&args)
                .await
                .map_err(anyhow::Error::from),
            Command::Demo { verbose, command } => {
                let command = (!command.is_empty()).then_some(command);
                demo::run_demo(verbose, command)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Completions { .. }
            | Command::Man
            | Command::Up { .. }
            | Command::Ps { .. }
            | Command::Down { .. } => Ok(0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(err) => {
            let failure = Failure::new(classify(&err), err.to_string());
            ExitCode::from(failure.print(json))
        }
    }
}

/// The exit of a command that prints its own output.
fn finish(result: Result<u8, Failure>, json: bool) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => ExitCode::from(failure.print(json)),
    }
}

/// The exit of a command in a background session: its own code, or the failure's.
fn finish_code(result: Result<i32, Failure>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(failure) => ExitCode::from(failure.print(false)),
    }
}
