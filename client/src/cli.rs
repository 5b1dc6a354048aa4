//! The command line of `mirrord-net`.

use std::ffi::OsString;

use clap::{Args, Parser, Subcommand};

use crate::environment::{EnvArgs, EnvFormat};
use crate::incoming::IncomingArgs;
use crate::outgoing::OutgoingArgs;
use crate::remote_paths::FsMode;
use crate::target::Target;
use mirrord_net_kubernetes::{ClusterArgs, KubeArgs};
use mirrord_net_tunnel::ReconnectArgs;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "mirrord-net",
    version,
    about = "Run a local process as if it were inside a target: its network, DNS and hostname",
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a session on the target; exits with the command's exit code.
    Exec {
        #[command(flatten)]
        session: SessionArgs,
        /// The command and its arguments.
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// Start an interactive shell ($SHELL, else /bin/sh) in a session on the target.
    Shell {
        #[command(flatten)]
        session: SessionArgs,
    },
    /// Print the environment a session's command would get on the target, and exit.
    Env {
        #[command(flatten)]
        session: SessionArgs,
        /// How to print it: dotenv (reads back with --env-file or `set -a; . FILE`) or json.
        #[arg(long, value_enum, default_value_t = EnvFormat::Dotenv)]
        format: EnvFormat,
        /// The same as --format json, and errors as JSON on stderr.
        #[arg(long)]
        json: bool,
    },
    /// List the Kubernetes targets of a namespace: running pods (with their containers) and
    /// workloads, as --target takes them.
    Ls {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Print JSON: {"namespace": …, "targets": [{"target": "pod/x", "containers": […]}, …]}.
        #[arg(long)]
        json: bool,
        /// More logs on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
        #[arg(long, short = 'v', action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Check every prerequisite of a session (devices, user namespaces, kubeconfig, each RBAC
    /// permission the agent mode needs, the target, the agent image on its node): one line
    /// each with the fix; exits 0 only when a session would start.
    Doctor {
        #[command(flatten)]
        args: crate::doctor::DoctorArgs,
        /// More logs on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
        #[arg(long, short = 'v', action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Remove the agents of sessions that are over (Kubernetes Jobs of dead or never-started
    /// sessions, local agents whose client is gone); never a live session's.
    Clean {
        #[command(flatten)]
        args: mirrord_net_kubernetes::clean::CleanArgs,
        /// More logs on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
        #[arg(long, short = 'v', action = clap::ArgAction::Count)]
        verbose: u8,
    },
    /// Start a background session on the target and return once it is ready; `exec
    /// --session NAME` and `shell --session NAME` run in it at once, `down NAME` ends it.
    Up {
        /// The session's name (letters, digits, `.`, `_`, `-`; at most 64).
        #[arg(long, value_name = "NAME")]
        name: String,
        /// Print the session as JSON on stdout, and errors as JSON on stderr.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        session: SessionArgs,
    },
    /// List your background sessions: name, target, pod, agent, addresses, start, commands
    /// running, state.
    Ps {
        /// Print JSON: {"sessions": [{"name": …, "target": …, …}]}.
        #[arg(long)]
        json: bool,
    },
    /// End a background session and every command still running in it.
    Down {
        /// The session's name.
        name: String,
        /// Errors as JSON on stderr.
        #[arg(long)]
        json: bool,
    },
    /// Start a throwaway local "pod" and run a command in a session on it (default: a probe
    /// that prints what the session sees); the pod is removed afterwards.
    Demo {
        /// More logs on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
        #[arg(long, short = 'v', action = clap::ArgAction::Count)]
        verbose: u8,
        /// The command to run in the session instead of the probe, after `--`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        command: Vec<OsString>,
    },
    /// Print the completion script for a shell: `source <(mirrord-net completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `mirrord-net man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    /// Read flags from this file (JSON, or TOML if it ends in .toml): mirrord-net's own flags
    /// by name, or a mirrord configuration (.mirrord/mirrord.json). Flags given here win.
    #[arg(long, short = 'f', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to impersonate: pod/NAME, deploy/NAME, statefulset/NAME, daemonset/NAME,
    /// job/NAME, replicaset/NAME (Kubernetes), or pid/PID (a process on this machine).
    #[arg(
        long,
        short = 't',
        value_name = "KIND/NAME",
        required_unless_present = "session"
    )]
    pub target: Option<Target>,
    /// exec, shell: run in the background session NAME (`mirrord-net up`) instead of
    /// starting one: no agent start, its namespaces joined at once.
    #[arg(long, value_name = "NAME", conflicts_with = "target")]
    pub session: Option<String>,
    /// Run the command as root instead of the user who invoked sudo.
    #[arg(long)]
    pub as_root: bool,
    /// More logs on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress line.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    #[command(flatten)]
    pub env: EnvArgs,
    /// The target's files: `read` (changes fail with EROFS), `write` (changes go to the
    /// target) or `off` (no remote files). `$MIRRORD_NET_FS_MODE` sets it too (e.g. for
    /// every session of a worker pod without /dev/fuse).
    #[arg(
        long,
        value_enum,
        default_value_t = FsMode::Read,
        value_name = "MODE",
        env = "MIRRORD_NET_FS_MODE"
    )]
    pub fs_mode: FsMode,
    /// Also show this path from the target (repeatable).
    #[arg(long, value_name = "PATH")]
    pub fs_remote: Vec<PathBuf>,
    /// Keep this path local even if the target has a mount there (repeatable).
    #[arg(long, value_name = "PATH")]
    pub fs_local: Vec<PathBuf>,
    /// Keep localhost (127.0.0.0/8, ::1) the session's own. By default connections to it
    /// reach the target's loopback, except ports a program of the session listens on.
    #[arg(long)]
    pub no_target_localhost: bool,
    #[command(flatten)]
    pub outgoing: OutgoingArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    #[command(flatten)]
    pub incoming: IncomingArgs,
    #[command(flatten)]
    pub reconnect: ReconnectArgs,
}

impl SessionArgs {
    /// The target. Only `exec --session`/`shell --session` come without one, and they never
    /// start a session of their own.
    ///
    /// # Panics
    ///
    /// Without `--target`, which the command line requires unless `--session` is given.
    pub fn target(&self) -> &Target {
        self.target
            .as_ref()
            .expect("the command line requires --target without --session")
    }
}

impl Cli {
    /// Parses the process's command line, with the flags of a `-f/--config` file merged in
    /// (see [`config_file`](crate::config_file)); a usage error or a bad file ends the process
    /// with clap's exit code 2 and one message.
    pub fn parse_with_config() -> Self {
        use clap::CommandFactory;
        let argv: Vec<OsString> = std::env::args_os().collect();
        // `--json` anywhere before `--`: usage errors too are one JSON object.
        let json = argv
            .iter()
            .skip(1)
            .take_while(|arg| *arg != "--")
            .any(|arg| arg == "--json");
        // Found while reading the command line: nothing started, exit 2 whatever the kind.
        let usage = |kind: crate::report::Kind, message: String| -> ! {
            crate::report::Failure::new(kind, message).print(json);
            std::process::exit(2)
        };
        let argv = match crate::config_file::merge_into_command_line(Self::command(), argv) {
            Ok(argv) => argv,
            Err(crate::config_file::MergeError::Usage(err)) if json && err.use_stderr() => {
                usage(crate::report::Kind::Usage, first_line(&err))
            }
            Err(crate::config_file::MergeError::Usage(err)) => err.exit(),
            Err(crate::config_file::MergeError::Config(err)) => {
                usage(crate::report::Kind::BadConfig, err.to_string())
            }
        };
        match Self::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(err) if json && err.use_stderr() => {
                usage(crate::report::Kind::Usage, first_line(&err))
            }
            Err(err) => err.exit(),
        }
    }
}

/// clap's message without its "error: " prefix and usage lines.
fn first_line(err: &clap::Error) -> String {
    let text = err.kind().to_string();
    let rendered = err.to_string();
    let line = rendered
        .lines()
        .next()
        .unwrap_or(&text)
        .trim_start_matches("error: ")
        .to_owned();
    if line.is_empty() {
        text
    } else {
        line
    }
}

impl Command {
    /// Whether errors are to be JSON (`--json`).
    pub fn json(&self) -> bool {
        match self {
            Command::Ls { json, .. }
            | Command::Up { json, .. }
            | Command::Ps { json }
            | Command::Down { json, .. } => *json,
            Command::Env { json, .. } => *json,
            _ => false,
        }
    }

    /// The -v count of any subcommand.
    pub fn verbose(&self) -> u8 {
        match self {
            Command::Exec { session, .. }
            | Command::Shell { session }
            | Command::Env { session, .. } => session.verbose,
            Command::Up { session, .. } => session.verbose,
            Command::Demo { verbose, .. }
            | Command::Ls { verbose, .. }
            | Command::Doctor { verbose, .. }
            | Command::Clean { verbose, .. } => *verbose,
            Command::Completions { .. }
            | Command::Man
            | Command::Ps { .. }
            | Command::Down { .. } => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_takes_everything_after_the_separator_verbatim() {
        let cli = Cli::try_parse_from([
            "mirrord-net",
            "exec",
            "--target",
            "pid/7",
            "--",
            "curl",
            "-v",
            "--target",
            "x",
        ])
        .unwrap();
        let Command::Exec { session, command } = cli.command else {
            panic!("not exec")
        };
        assert_eq!(session.target(), &Target::Pid(7));
        assert_eq!(command, ["curl", "-v", "--target", "x"]);
    }

    #[test]
    fn kubernetes_flags_parse_next_to_the_session_flags() {
        use mirrord_net_kubernetes::{AgentMode, TransportMode};
        let cli = Cli::try_parse_from([
            "mirrord-net",
            "exec",
            "-t",
            "deploy/web",
            "-n",
            "team",
            "--context",
            "prod",
            "--kubeconfig",
            "/k",
            "-c",
            "app",
            "--agent",
            "ephemeral",
            "--agent-image",
            "img",
            "--agent-namespace",
            "agents",
            "--transport",
            "port-forward",
            "--",
            "curl",
        ])
        .unwrap();
        let Command::Exec { session, .. } = cli.command else {
            panic!("not exec")
        };
        assert_eq!(session.target().to_string(), "deploy/web");
        let kube = session.kube;
        assert_eq!(kube.cluster.namespace.as_deref(), Some("team"));
        assert_eq!(kube.cluster.context.as_deref(), Some("prod"));
        assert_eq!(kube.cluster.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(kube.container.as_deref(), Some("app"));
        assert_eq!(kube.agent, AgentMode::Ephemeral);
        assert_eq!(kube.agent_image.as_deref(), Some("img"));
        assert_eq!(kube.agent_namespace.as_deref(), Some("agents"));
        assert_eq!(kube.transport, TransportMode::PortForward);
        let cli = Cli::try_parse_from(["mirrord-net", "ls", "-n", "team", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Ls { json: true, .. }));
    }

    #[test]
    fn exec_without_a_command_is_an_error() {
        assert!(Cli::try_parse_from(["mirrord-net", "exec", "--target", "pid/7"]).is_err());
    }

    #[test]
    fn a_malformed_target_is_a_usage_error() {
        let err = Cli::try_parse_from(["mirrord-net", "shell", "--target", "nope"]).unwrap_err();
        assert!(err.to_string().contains("KIND/NAME"), "{err}");
    }
}

#[cfg(test)]
mod demo_cli_tests {
    use super::*;

    #[test]
    fn demo_takes_an_optional_command_after_the_separator() {
        let cli =
            Cli::try_parse_from(["mirrord-net", "demo", "-v", "--", "sh", "-c", "x -v"]).unwrap();
        let Command::Demo { verbose, command } = cli.command else {
            panic!("not demo")
        };
        assert_eq!(verbose, 1);
        assert_eq!(command, ["sh", "-c", "x -v"]);
        let cli = Cli::try_parse_from(["mirrord-net", "demo"]).unwrap();
        assert!(matches!(cli.command, Command::Demo { command, .. } if command.is_empty()));
    }
}
