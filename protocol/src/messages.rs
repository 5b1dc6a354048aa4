//! Control messages exchanged on the session's first bidirectional stream.
//!
//! The client opens the stream and sends [`ClientMessage::Hello`]; the agent answers with
//! [`AgentMessage::Hello`] (versions agree) or [`AgentMessage::Refused`] (they don't, or the
//! agent cannot serve the session) and closes the connection. After the hello the stream stays
//! open for later control messages; its end means the session is over.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Messages the client sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    Hello(ClientHello),
    /// What the session wants of the target's inbound traffic. Sent once after the hello
    /// (and again if it changes); see [`IncomingConfig`].
    Incoming(IncomingConfig),
    /// The TCP ports the session's programs listen on now (local ports, sorted). Sent when
    /// the set changes and at least every [`HEARTBEAT`] otherwise: it is also the client's
    /// heartbeat, by which the agent knows the client is alive.
    Listening(Vec<u16>),
    /// The names of the session's `--remote` entries, resolved by the target's resolver
    /// before the session is made (only the target knows its cluster's names). Sent once,
    /// right after the hello, and answered by [`AgentMessage::Resolved`].
    Resolve(Vec<String>),
}

/// How often the client speaks on the control stream while incoming traffic is stolen.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// After this long without a word from the client, the agent gives stolen traffic back to
/// the target.
pub const SILENCE_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Messages the agent sends on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    Hello(AgentHello),
    Refused(Refusal),
    /// The target ports whose inbound connections now go to the session (sorted), sent
    /// whenever the set changes.
    Stealing(Vec<u16>),
    /// Inbound traffic could not be taken as asked; one line for the user.
    IncomingFailed(String),
    /// The target ports whose inbound connections are now copied into the session (sorted),
    /// sent whenever the set changes.
    Mirroring(Vec<u16>),
    /// The answer to [`ClientMessage::Resolve`]: one per name, in its order.
    Resolved(Vec<Resolution>),
}

/// A name as the target's resolver resolved it: its addresses, or why there are none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub name: String,
    pub addresses: Result<Vec<IpAddr>, String>,
}

/// Which of the target's inbound TCP connections a session takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncomingConfig {
    /// Target ports to steal (their connections go to the session instead of the target).
    pub steal: Vec<u16>,
    /// Steal every port the session listens on that the target serves too.
    pub steal_all: bool,
    /// Target ports to mirror (the session gets a copy of their inbound connections' bytes;
    /// the target still serves them).
    pub mirror: Vec<u16>,
    /// Mirror every port the session listens on that the target serves too.
    pub mirror_all: bool,
    /// `(local, remote)`: the session's program listens on `local` for the target's
    /// `remote`. Ports not named here are the same on both sides.
    pub port_map: Vec<(u16, u16)>,
    /// Steal (or mirror) only the HTTP requests this filter matches, on its ports; `None`
    /// takes whole connections.
    pub http_filter: Option<HttpFilterConfig>,
    /// Who the session is, for other sessions' users (`user@host pid N`): a steal refused
    /// because this session holds the port names it.
    pub session: String,
}

/// A session's HTTP filter as the user wrote it: the agent compiles it with
/// [`crate::http_filter::HttpFilter::new`] (the client already did, so it compiles).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpFilterConfig {
    /// The regex tried against each header's `Name: value`.
    pub header: Option<String>,
    /// The regex tried against the path with its query.
    pub path: Option<String>,
    /// Replaces `{{ key }}` in both, regex-escaped.
    pub key: Option<String>,
    /// Target ports the filter applies to; empty: every stolen port.
    pub ports: Vec<u16>,
}

impl HttpFilterConfig {
    /// Whether connections to target port `port` are filtered per request.
    pub fn applies_to(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientHello {
    pub protocol_version: u32,
    /// The client's build version, only for error messages.
    pub client_version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub protocol_version: u32,
    pub agent_version: String,
    pub target: TargetInfo,
}

/// Why an agent refused a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The two ends speak different protocol versions.
    VersionMismatch {
        agent_protocol: u32,
        agent_version: String,
    },
    /// The agent could not prepare the session (e.g. the target exited).
    Unavailable { reason: String },
}

/// What the session needs to know about the target to look like it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetInfo {
    /// The target's hostname (its UTS namespace).
    pub hostname: String,
    /// The target's own addresses, global scope, in the order the kernel lists them.
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
    /// The name of the interface that holds the target's first address (`eth0` in most pods),
    /// which the session's TUN takes so that programs finding their address by interface
    /// name find it; `None` when the target has no global address.
    pub interface: Option<String>,
    /// The target's `/etc/resolv.conf` and `/etc/hosts`, as seen from its root; `None` when
    /// the target has no such file.
    pub resolv_conf: Option<Vec<u8>>,
    pub hosts: Option<Vec<u8>>,
    /// The target process's environment (`/proc/PID/environ`), in its order: names and values
    /// are bytes, not necessarily UTF-8.
    pub environ: Vec<(Vec<u8>, Vec<u8>)>,
    /// The target process's `/proc/PID/mountinfo`, as the agent read it: which mounts the
    /// target has, so the client can show the target's own mounts (secrets, volumes) without
    /// seeing the target's machine itself.
    pub mountinfo: String,
}
