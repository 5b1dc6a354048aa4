//! Errors for programs: every failure of the CLI has a stable [`Kind`], and with `--json` it
//! is printed as one JSON object on stderr instead of the `mirrord-net: …` line:
//!
//! ```text
//! {"error":{"kind":"target-not-found","message":"target pid/9 does not exist (…)"}}
//! ```
//!
//! The kinds are the error classes that exist ([`classify`] maps each error type to one);
//! their names never change meaning, and docs/agents.md lists them with the exit codes.
//! Usage errors (clap's, a bad `-f` file) exit 2, everything else 1, as before: the kind, not
//! the code, tells the classes apart. A usage error is JSON too when `--json` comes before
//! `--` on the command line.

use serde::{Deserialize, Serialize};

use crate::agent::AgentError;
use crate::kubernetes::KubeError;
use crate::run::RunError;
use crate::target::TargetError;

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

/// The kind of any error the CLI's commands return.
pub fn classify(err: &anyhow::Error) -> Kind {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        return failure.kind;
    }
    if let Some(err) = err.downcast_ref::<RunError>() {
        return run_kind(err);
    }
    if let Some(err) = err.downcast_ref::<KubeError>() {
        return kube_kind(err);
    }
    Kind::Internal
}

fn run_kind(err: &RunError) -> Kind {
    match err {
        RunError::NeedRoot | RunError::TunNotAccessible | RunError::FuseNotAccessible => {
            Kind::Permission
        }
        RunError::NoTunDevice | RunError::NoFuseDevice | RunError::UserNamespacesDisabled(_) => {
            Kind::Environment
        }
        RunError::Target(TargetError::NoSuchProcess(_)) => Kind::TargetNotFound,
        RunError::Target(_) => Kind::Usage,
        RunError::Agent(AgentError::NotFound(_)) => Kind::Environment,
        RunError::Agent(_) => Kind::AgentFailed,
        RunError::Kubernetes(err) => kube_kind(err),
        RunError::Tunnel(_) | RunError::Trust(_) => Kind::Connection,
        RunError::Incoming(_) | RunError::Outgoing(_) => Kind::BadConfig,
        RunError::AgentLost(_) | RunError::AgentSilent(_) => Kind::AgentLost,
        RunError::Session(_)
        | RunError::UserLookup(_)
        | RunError::Output(_)
        | RunError::TunHandOver(_) => Kind::Internal,
    }
}

fn kube_kind(err: &KubeError) -> Kind {
    match err {
        KubeError::Config(_) => Kind::BadConfig,
        KubeError::Denied(_) => Kind::Permission,
        KubeError::NotFound { .. } => Kind::TargetNotFound,
        KubeError::NoReadyPod { .. }
        | KubeError::PodNotRunning { .. }
        | KubeError::ContainerNotRunning { .. } => Kind::TargetUnavailable,
        KubeError::ContainerNeeded { .. } | KubeError::NoSuchContainer { .. } => Kind::BadConfig,
        KubeError::ImageMissing { .. }
        | KubeError::AgentTimeout { .. }
        | KubeError::AgentFailed { .. }
        | KubeError::Interrupted => Kind::AgentFailed,
        KubeError::Transport(_) => Kind::Connection,
        KubeError::Api { .. } => Kind::Internal,
    }
}

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
    fn run_errors_fall_into_their_classes() {
        let kind = |err: RunError| classify(&anyhow::Error::from(err));
        assert_eq!(
            kind(RunError::Target(TargetError::NoSuchProcess(9))),
            Kind::TargetNotFound
        );
        assert_eq!(kind(RunError::NeedRoot), Kind::Permission);
        assert_eq!(kind(RunError::NoTunDevice), Kind::Environment);
        assert_eq!(
            kind(RunError::Agent(AgentError::Failed("x".into()))),
            Kind::AgentFailed
        );
        assert_eq!(
            kind(RunError::Kubernetes(KubeError::Denied("no".into()))),
            Kind::Permission
        );
        assert_eq!(
            classify(&anyhow::Error::from(Failure::new(Kind::SessionEnded, "x"))),
            Kind::SessionEnded
        );
        assert_eq!(Kind::Usage.exit_code(), 2);
        assert_eq!(Kind::AgentLost.exit_code(), 1);
    }
}
