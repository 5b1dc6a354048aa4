//! Why a session (or a command that connects to the agent) failed, and the error class of
//! any error a command returns (`--json`, exit codes).

use mirrord_net_protocol::trust::TrustError;

use crate::incoming;
use crate::local_agent::AgentError;
use crate::outgoing::OutgoingError;
use crate::report::{Failure, Kind};
use crate::target::TargetError;
use mirrord_net_kubernetes::KubeError;
use mirrord_net_session::SessionError;
use mirrord_net_tunnel::{pump, TunnelError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "mirrord-net needs root to enter the namespaces of pid/ targets and to create a \
         session's: run it with sudo"
    )]
    NeedRoot,
    #[error("/dev/net/tun is missing: load the tun module (modprobe tun) or run where TUN devices are allowed")]
    NoTunDevice,
    #[error("/dev/fuse is missing, which the target's files need: load the fuse module (modprobe fuse), or run with --fs-mode off")]
    NoFuseDevice,
    #[error("{0}")]
    UserNamespacesDisabled(&'static str),
    #[error("/dev/net/tun is not readable and writable by you: a session without root needs it mode 0666 (as Debian's udev makes it; `chmod 0666 /dev/net/tun`), or run mirrord-net with sudo")]
    TunNotAccessible,
    #[error("/dev/fuse is not readable and writable by you: a session without root needs it mode 0666 for the target's files (`chmod 0666 /dev/fuse`), or run with --fs-mode off")]
    FuseNotAccessible,
    #[error("{0}")]
    Target(#[from] TargetError),
    #[error("{0}")]
    Agent(#[from] AgentError),
    #[error("{0}")]
    Kubernetes(#[from] KubeError),
    #[error("{0}")]
    Tunnel(#[from] TunnelError),
    #[error("{0}")]
    Session(#[from] SessionError),
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("{0}")]
    Incoming(#[from] incoming::IncomingError),
    #[error("{0}")]
    Outgoing(#[from] OutgoingError),
    #[error("{0}; the session was stopped")]
    AgentLost(pump::PumpError),
    /// The agent stayed silent through the reconnect window (`liveness::lost_line`).
    #[error("{0}")]
    AgentSilent(String),
    #[error("cannot look up the invoking user: {0}")]
    UserLookup(std::io::Error),
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error("cannot hand the session's TUN device to the agent: {0}")]
    TunHandOver(std::io::Error),
}

impl RunError {
    /// The class of this failure (see [`report`](crate::report)).
    pub fn kind(&self) -> Kind {
        match self {
            RunError::NeedRoot | RunError::TunNotAccessible | RunError::FuseNotAccessible => {
                Kind::Permission
            }
            RunError::NoTunDevice
            | RunError::NoFuseDevice
            | RunError::UserNamespacesDisabled(_) => Kind::Environment,
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
}

/// The kind of any error the CLI's commands return.
pub fn classify(err: &anyhow::Error) -> Kind {
    if let Some(failure) = err.downcast_ref::<Failure>() {
        return failure.kind;
    }
    if let Some(err) = err.downcast_ref::<RunError>() {
        return err.kind();
    }
    if let Some(err) = err.downcast_ref::<KubeError>() {
        return kube_kind(err);
    }
    Kind::Internal
}

/// The class of a Kubernetes failure.
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
    }
}
