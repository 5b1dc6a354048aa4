//! The session's agent, wherever it runs: a local process or a Kubernetes pod.
//!
//! The session needs only two things from it: why it failed ([`SessionAgent::last_error`])
//! and an end ([`SessionAgent::finish`]), which for a local agent waits for its exit and for a
//! Kubernetes agent removes what the session created in the cluster.

use std::time::Duration;

use crate::agent::LocalAgent;
use crate::kubernetes::KubeAgent;

// One per session, moved a handful of times: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum SessionAgent {
    Local(LocalAgent),
    Kubernetes(KubeAgent),
}

impl SessionAgent {
    /// The agent's last words (stderr or pod log), for error messages.
    pub fn last_error(&self) -> Option<String> {
        match self {
            SessionAgent::Local(agent) => agent.last_error(),
            SessionAgent::Kubernetes(agent) => agent.last_error(),
        }
    }

    /// Waits up to `grace` for the agent to end by itself, then stops or removes it.
    pub async fn finish(self, grace: Duration) {
        match self {
            SessionAgent::Local(agent) => agent.finish(grace).await,
            SessionAgent::Kubernetes(agent) => agent.finish(grace).await,
        }
    }
}
