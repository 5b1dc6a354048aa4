//! `mirrord-net`: the command-line entry. Parsing and wiring only; the work is in the library.

use std::process::ExitCode;

use mirrord_net::cli::{Cli, Command};
use mirrord_net::{demo, environment, manual, run};

fn main() -> ExitCode {
    // The session child re-executes this binary; it must not start a runtime or parse the
    // user's arguments.
    match std::env::args_os().nth(1) {
        Some(arg) if arg == "__session" => mirrord_net::session::child_main(),
        Some(arg) if arg == demo::POD_ARG => demo::pod_main(),
        Some(arg) if arg == demo::PROBE_ARG => demo::probe_main(),
        _ => {}
    }
    let cli = Cli::parse_with_config();
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
    mirrord_net_protocol::transport::tune_heap_for_packets();
    init_logging(cli.command.verbose());

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
            Command::Env { session, format } => environment::print_env(&session, format)
                .await
                .map_err(anyhow::Error::from),
            Command::Ls { cluster, json, .. } => mirrord_net::kubernetes::ls::run(&cluster, json)
                .await
                .map_err(anyhow::Error::from),
            Command::Doctor { args, .. } => Ok(mirrord_net::doctor::run(&args).await),
            Command::Clean { args, .. } => mirrord_net::kubernetes::clean::run(&args)
                .await
                .map_err(anyhow::Error::from),
            Command::Demo { verbose, command } => {
                let command = (!command.is_empty()).then_some(command);
                demo::run_demo(verbose, command)
                    .await
                    .map_err(anyhow::Error::from)
            }
            Command::Completions { .. } | Command::Man => Ok(0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(u8::MAX)),
        Err(err) => {
            eprintln!("mirrord-net: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        // A send the network refuses (a cut, a lost route) is quinn_udp's warning on every
        // retry; the session says itself whether it lost the agent (one line), so without
        // -v those stay quiet.
        0 => "warn,quinn_udp=error",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
