//! The errors of Kubernetes targets, each one line that says what failed and what to do.

use std::time::Duration;

use super::rbac::{describe_denial, Operation};

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Denied(String),
    #[error("cannot {operation}: {message}")]
    Api {
        operation: Operation,
        message: String,
    },
    #[error("target {target} not found in namespace {namespace}")]
    NotFound { target: String, namespace: String },
    #[error("{target} has no running and ready pod in namespace {namespace} ({detail})")]
    NoReadyPod {
        target: String,
        namespace: String,
        detail: String,
    },
    #[error("pod {pod} is not running (phase {phase}{reason})")]
    PodNotRunning {
        pod: String,
        phase: String,
        reason: String,
    },
    #[error("container {container} of pod {pod} is not running{reason}")]
    ContainerNotRunning {
        pod: String,
        container: String,
        reason: String,
    },
    #[error("pod {pod} has several containers ({containers}): choose one with --container NAME")]
    ContainerNeeded { pod: String, containers: String },
    #[error("pod {pod} has no container {container} (it has: {containers})")]
    NoSuchContainer {
        pod: String,
        container: String,
        containers: String,
    },
    #[error(
        "agent image {image} is not present on node {node} ({reason}): import it into the \
         node's container runtime (scripts/build-agent-image.sh builds it) or name another \
         with --agent-image"
    )]
    ImageMissing {
        image: String,
        node: String,
        reason: String,
    },
    #[error("the agent {what} did not become ready within {timeout:?}{detail}")]
    AgentTimeout {
        what: String,
        timeout: Duration,
        detail: String,
    },
    #[error("the agent {what} failed: {reason}")]
    AgentFailed { what: String, reason: String },
    #[error("interrupted while starting the agent; it was removed")]
    Interrupted,
    #[error("cannot reach the agent {0}")]
    Transport(String),
}

impl KubeError {
    /// Maps a failed API call made for `operation`: a 403 names the missing permission.
    pub fn api(operation: Operation, err: kube::Error) -> Self {
        match err {
            kube::Error::Api(status) if status.code == 403 => {
                KubeError::Denied(describe_denial(&status, &operation))
            }
            kube::Error::Api(status) => KubeError::Api {
                operation,
                message: if status.message.is_empty() {
                    status.reason.clone()
                } else {
                    status.message.clone()
                },
            },
            other => KubeError::Api {
                operation,
                message: other.to_string(),
            },
        }
    }
}

/// `Result::map_err` helper: `.map_err(api_error(Operation::new(…)))`.
pub fn api_error(operation: Operation) -> impl FnOnce(kube::Error) -> KubeError {
    move |err| KubeError::api(operation, err)
}

/// Whether `err` is the API server's 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}
