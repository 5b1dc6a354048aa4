//! [`AgentSettings`]: what every agent of a session is started with, whichever way it is
//! delivered (a Job, `agent_job`, or an ephemeral container, `ephemeral`). Below both, so
//! they import it and not the module that chooses between them.

use std::time::Duration;

use mirrord_net_protocol::trust::Fingerprint;

use super::agent_resources::AgentResources;

/// What every agent of a session is started with.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// Names the session's objects; from the client certificate, so unique per session.
    pub session: String,
    /// Where the agent's objects live.
    pub namespace: String,
    pub image: String,
    /// The only client the agent accepts.
    pub client: Fingerprint,
    /// The agent's `--fs-mode` (`read`, `write` or `off`; the client's `FsMode::as_arg`).
    pub fs_mode: &'static str,
    /// The agent's `--incoming` (see `IncomingArgs::agent_arg`).
    pub incoming: &'static str,
    /// The agent's `--redirect-with`, when not its default (`auto`).
    pub redirect_with: Option<&'static str>,
    pub log_filter: Option<&'static str>,
    pub timeout: Duration,
    /// The Job container's resource limits.
    pub resources: AgentResources,
    /// A privileged Job container instead of named capabilities.
    pub privileged: bool,
    /// This client, for `mirrord-net clean` (see [`crate::client_process`]).
    pub client_process: Option<String>,
}
