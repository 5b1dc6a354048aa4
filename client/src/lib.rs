//! mirrord-net: run an unmodified local process as if it were inside a target's namespaces.
//!
//! The `mirrord-net` binary wires the crates that do the work — `mirrord_net_session` (the
//! session's namespaces, TUN device and the user's command), `mirrord_net_tunnel` (the QUIC
//! connection to the agent and the packet pump), `mirrord_net_kubernetes` (Kubernetes targets
//! and their agents) — through these modules:
//!
//! - [`cli`]: the command line;
//! - [`config_file`]: `-f/--config`, a file (or mirrord's configuration) as flags;
//! - [`target`]: what `--target` names and how to check it exists;
//! - [`local_agent`]: starting the agent for a local target and reading its ready line;
//! - [`session_agent`]: the session's agent, local or in a cluster (`mirrord_net_kubernetes`),
//!   behind one type;
//! - [`remote_paths`]: which of the target's paths the session shows (`--fs-*`);
//! - [`incoming`]: the steal flags and the session's side of stealing (its listening ports,
//!   the heartbeat);
//! - [`connect`]: the checks before a session and the agent started and connected, which
//!   every command that needs the target shares;
//! - [`run`]: `exec` and `shell`, one session from start to exit code;
//! - [`run_error`]: why a session failed, and the class of any command's error;
//! - [`environment`]: the command's environment (flags, composition);
//! - [`env_command`]: `mirrord-net env`, which prints it;
//! - [`progress`]: the one status line shown while a session starts;
//! - [`background`]: background sessions (`up`, `exec --session`, `ps`, `down`);
//! - [`report`]: error kinds, and errors as JSON for `--json`.

pub mod background;
pub mod cli;
pub mod config_file;
pub mod connect;
pub mod demo;
pub mod doctor;
pub mod env_command;
pub mod environment;
pub mod incoming;
pub mod local_agent;
pub mod manual;
pub mod outgoing;
pub mod progress;
pub mod remote_paths;
pub mod report;
pub mod run;
pub mod run_error;
pub mod session_agent;
pub mod target;

/// Logs on stderr at the -v level (or as `RUST_LOG` says).
pub fn init_logging(verbose: u8) {
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
