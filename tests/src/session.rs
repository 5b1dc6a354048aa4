//! Running commands the two ways a test compares: through a mirrord-net session on the
//! pod's target, and directly inside the target's namespaces.
//!
//! Both get the same clean environment: the system PATH, no `SUDO_*` variables unless the
//! test asks for a user (so a suite started with sudo still runs commands as root, as the
//! tests expect), and `RUST_LOG`/`RUST_BACKTRACE`/`MIRRORD_NET_AGENT` passed through for
//! debugging. Every run has a timeout; a command that overruns is killed with its process
//! group and the test fails showing what it printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::unistd::{Uid, User};

use crate::exec::{self, Outcome, Running};
use crate::pod::Pod;
use crate::tools::{tool, SYSTEM_PATH};

/// Long enough for a session to start and run a short command on a loaded 2-core machine.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `mirrord-net` and `mirrord-net-agent` are: `$MIRRORD_NET_BIN_DIR`, else
/// `$CARGO_TARGET_DIR/release`, else the workspace's `target/release`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MIRRORD_NET_BIN_DIR") {
        return PathBuf::from(dir);
    }
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("release"),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the tests crate lives in the workspace")
            .join("target/release"),
    }
}

/// The `mirrord-net` binary; panics with how to build it if it is missing.
pub fn client_binary() -> PathBuf {
    let path = bin_dir().join("mirrord-net");
    assert!(
        path.is_file(),
        "{} does not exist: build it with `cargo build --release --workspace --bins`, \
         or point MIRRORD_NET_BIN_DIR at the directory that holds it",
        path.display()
    );
    path
}

/// Runs `args` through `mirrord-net exec --target pid/<target>` and waits for it.
#[track_caller]
pub fn run_in_session(pod: &Pod, args: &[&str]) -> Outcome {
    Invocation::session(pod, args).run()
}

/// Runs `args` through a session whose packets take `packets`.
#[track_caller]
pub fn run_in_session_via(pod: &Pod, packets: Packets, args: &[&str]) -> Outcome {
    Invocation::session(pod, args).packets(packets).run()
}

/// Which way a local session's packets travel (`MIRRORD_NET_LOCAL_PACKETS`): the agent
/// serving the session's TUN itself (the default); the session's namespace routed into the
/// target's, its IPv4 flows to other hosts never leaving the kernel; or QUIC datagrams
/// relayed by the client, as for a remote agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packets {
    Tun,
    Routed,
    Quic,
}

impl Packets {
    pub fn env_value(self) -> &'static str {
        match self {
            Packets::Tun => "tun",
            Packets::Routed => "routed",
            Packets::Quic => "quic",
        }
    }
}

/// Runs `args` directly in the target's network, mount and UTS namespaces.
#[track_caller]
pub fn run_in_pod(pod: &Pod, args: &[&str]) -> Outcome {
    Invocation::in_pod(pod, args).run()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Session,
    Nsenter,
    /// `mirrord-net ARGS` itself, any subcommand.
    Client,
}

/// One command to run, with its options.
#[derive(Debug, Clone)]
pub struct Invocation {
    via: Via,
    target_pid: u32,
    args: Vec<String>,
    client_flags: Vec<String>,
    envs: Vec<(String, String)>,
    user: Option<(u32, u32)>,
    timeout: Duration,
}

impl Invocation {
    /// Through a session on the pod's target.
    pub fn session(pod: &Pod, args: &[&str]) -> Invocation {
        Invocation::session_on(pod.target_pid(), args)
    }

    /// Through a session on any PID (also one that does not exist).
    pub fn session_on(target_pid: u32, args: &[&str]) -> Invocation {
        Invocation::new(Via::Session, target_pid, args)
    }

    /// `mirrord-net ARGS` (e.g. `env --target ...`), with the same environment a session's
    /// client gets.
    pub fn client(args: &[&str]) -> Invocation {
        Invocation::new(Via::Client, 0, args)
    }

    /// Directly in the pod's target namespaces, for comparison.
    pub fn in_pod(pod: &Pod, args: &[&str]) -> Invocation {
        Invocation::new(Via::Nsenter, pod.target_pid(), args)
    }

    fn new(via: Via, target_pid: u32, args: &[&str]) -> Invocation {
        assert!(!args.is_empty(), "no command given");
        Invocation {
            via,
            target_pid,
            args: args.iter().map(|arg| arg.to_string()).collect(),
            client_flags: Vec::new(),
            envs: Vec::new(),
            user: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Invocation {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// The packet path of the session (see [`Packets`]).
    pub fn packets(self, packets: Packets) -> Invocation {
        self.env("MIRRORD_NET_LOCAL_PACKETS", packets.env_value())
    }

    /// An extra flag for `mirrord-net exec` (e.g. `--as-root`); sessions only.
    pub fn client_flag(mut self, flag: &str) -> Invocation {
        assert_eq!(
            self.via,
            Via::Session,
            "client flags only apply to sessions"
        );
        self.client_flags.push(flag.to_string());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Invocation {
        self.timeout = timeout;
        self
    }

    /// Runs the command as `uid:gid`: in a session by setting `SUDO_UID`/`SUDO_GID` (as sudo
    /// would), directly in the pod by nsenter's own switch.
    pub fn as_user(mut self, uid: u32, gid: u32) -> Invocation {
        self.user = Some((uid, gid));
        self
    }

    /// The command, ready to spawn.
    pub fn command(&self) -> Command {
        let mut command = match self.via {
            Via::Session => {
                let mut command = Command::new(client_binary());
                command.args([
                    "exec",
                    "--target",
                    &format!("pid/{}", self.target_pid),
                    "--quiet",
                ]);
                command.args(&self.client_flags).arg("--");
                command
            }
            Via::Nsenter => {
                let mut command = Command::new(tool("nsenter"));
                command.args([
                    "--target",
                    &self.target_pid.to_string(),
                    "--net",
                    "--mount",
                    "--uts",
                ]);
                if let Some((uid, gid)) = self.user {
                    command.args(["--setuid", &uid.to_string(), "--setgid", &gid.to_string()]);
                }
                command.arg("--");
                command
            }
            Via::Client => Command::new(client_binary()),
        };
        command.args(&self.args);
        command.env_clear();
        command.env("PATH", SYSTEM_PATH).env("LANG", "C.UTF-8");
        // HOME as a login would set it: the user's, or root's.
        let user = self
            .user
            .and_then(|(uid, _)| User::from_uid(Uid::from_raw(uid)).ok().flatten());
        match (self.user, &user) {
            (None, _) => command.env("HOME", "/root"),
            (Some(_), Some(user)) => command.env("HOME", &user.dir),
            (Some(_), None) => command.env("HOME", "/"),
        };
        for key in ["RUST_LOG", "RUST_BACKTRACE", "MIRRORD_NET_AGENT"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        if let (Via::Session | Via::Client, Some((uid, gid))) = (self.via, self.user) {
            command
                .env("SUDO_UID", uid.to_string())
                .env("SUDO_GID", gid.to_string());
            if let Some(user) = &user {
                command.env("SUDO_USER", &user.name);
            }
        }
        for (key, value) in &self.envs {
            command.env(key, value);
        }
        command
    }

    /// Runs to completion; panics (showing its output) if it overruns its timeout.
    #[track_caller]
    pub fn run(&self) -> Outcome {
        match exec::run(self.command(), self.timeout) {
            Ok(outcome) => outcome,
            Err(timed_out) => panic!("{timed_out}"),
        }
    }

    /// Starts the command and returns it running, for tests that act while it runs.
    #[track_caller]
    pub fn start(&self) -> Running {
        let command = self.command();
        let text = exec::describe(&command);
        Running::start(command).unwrap_or_else(|err| panic!("could not start {text}: {err}"))
    }

    pub fn timeout_value(&self) -> Duration {
        self.timeout
    }
}
