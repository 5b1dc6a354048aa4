//! The session's agent, wherever it runs: a local process or a Kubernetes pod.
//!
//! The session needs only two things from it: why it failed ([`SessionAgent::last_error`])
//! and an end ([`SessionAgent::end_session`]): the QUIC close with [`SESSION_OVER`] must reach
//! the agent, which then exits 0 at once, before anything that carries it goes away. A local
//! agent's exit says it arrived (waiting for it is the wait); a Kubernetes agent is reached
//! through a port-forward or a path the client cannot watch, so the close is let out first
//! (the endpoint drained, briefly bounded) and only then the port-forward stopped and the
//! agent's objects removed.
//!
//! [`SESSION_OVER`]: mirrord_net_tunnel::SESSION_OVER

use std::time::Duration;

use crate::local_agent::LocalAgent;
use mirrord_net_kubernetes::KubeAgent;
use mirrord_net_tunnel::Tunnel;

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

    /// Ends the session on `tunnel` (see the module comment), then waits up to `grace` for
    /// the agent to end by itself and stops or removes it.
    pub async fn end_session(self, tunnel: Tunnel, grace: Duration) {
        match self {
            SessionAgent::Local(agent) => tunnel.close_until(agent.finish(grace)).await,
            SessionAgent::Kubernetes(agent) => {
                tunnel.close().await;
                agent.finish(grace).await;
            }
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
