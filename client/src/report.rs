//! Errors for programs: every failure of the CLI has a stable [`Kind`], and with `--json` it
//! is printed as one JSON object on stderr instead of the `mirrord-net: …` line:
//!
//! ```text
//! {"error":{"kind":"target-not-found","message":"target pid/9 does not exist (…)"}}
//! ```
//!
//! The kinds are the error classes that exist: each error type says its own (`kind()`), and
//! [`classify`](crate::run_error::classify) finds it for any error a command returns; this module
//! imports none of them. Their names never change meaning, and docs/agents.md lists them with
//! the exit codes. Usage errors (clap's, a bad `-f` file) exit 2, everything else 1, as
//! before: the kind, not the code, tells the classes apart. A usage error is JSON too when
//! `--json` comes before `--` on the command line.

use serde::{Deserialize, Serialize};

/// The class of a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The command line is wrong (exit 2).
    Usage,
    /// A configuration file (exit 2, found while reading the command line) or a flag's value
    /// (exit 1, found when it is used) cannot be used.
    BadConfig,
    /// The target does not exist (no such process, pod or workload).
    TargetNotFound,
    /// The target exists but cannot be used now (no ready pod, container not running).
    TargetUnavailable,
    /// The agent could not be started or did not become ready.
    AgentFailed,
    /// The agent went away during the session.
    AgentLost,
    /// Not allowed: root needed, a device mode, an RBAC permission, another user's session.
    Permission,
    /// The machine lacks something a session needs (a device, user namespaces).
    Environment,
    /// The agent cannot be reached (network, port-forward, handshake).
    Connection,
    /// No background session of that name.
    SessionNotFound,
    /// A background session of that name is already up.
    SessionExists,
    /// The background session has ended (its agent died, its processes ended).
    SessionEnded,
    /// Anything else (I/O errors of this machine).
    Internal,
}

impl Kind {
    /// The process's exit code for a failure of this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::Usage => 2,
            _ => 1,
        }
    }
}

/// A failure as programs see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub kind: Kind,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, message: impl Into<String>) -> Failure {
        Failure {
            kind,
            message: message.into(),
        }
    }

    /// The stderr text: `mirrord-net: MESSAGE`, or the JSON object.
    pub fn render(&self, json: bool) -> String {
        if json {
            serde_json::json!({ "error": self }).to_string()
        } else {
            format!("mirrord-net: {}", self.message)
        }
    }

    /// Prints it on stderr and returns the exit code.
    pub fn print(&self, json: bool) -> u8 {
        eprintln!("{}", self.render(json));
        self.kind.exit_code()
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_are_one_object_with_a_kebab_case_kind() {
        let failure = Failure::new(Kind::TargetNotFound, "target pid/9 does not exist");
        let text = failure.render(true);
        assert!(!text.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["error"]["kind"], "target-not-found");
        assert_eq!(value["error"]["message"], "target pid/9 does not exist");
        assert_eq!(
            failure.render(false),
            "mirrord-net: target pid/9 does not exist"
        );
    }

    #[test]
    fn usage_errors_exit_2_and_everything_else_1() {
        assert_eq!(Kind::Usage.exit_code(), 2);
        assert_eq!(Kind::AgentLost.exit_code(), 1);
    }
}
