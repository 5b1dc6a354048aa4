//! The agent's ready line: how an agent tells its client where to connect and which
//! certificate it will present.
//!
//! The agent prints exactly one line on stdout once its QUIC socket is bound:
//!
//! ```text
//! MIRRORD_NET_AGENT_READY {"addr":"127.0.0.1:40123","cert_sha256":"3f…"}
//! ```
//!
//! A local client reads it from the agent's stdout pipe; a Kubernetes client reads it from the
//! agent pod's log. Either way only a public fingerprint travels, never a key.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::trust::Fingerprint;

pub const READY_PREFIX: &str = "MIRRORD_NET_AGENT_READY ";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReady {
    /// Where the agent's QUIC endpoint listens.
    pub addr: SocketAddr,
    /// SHA-256 of the certificate the agent will present.
    pub cert_sha256: Fingerprint,
}

impl AgentReady {
    pub fn to_line(&self) -> String {
        format!(
            "{READY_PREFIX}{}",
            serde_json_line(self).expect("ready line serializes")
        )
    }

    /// Parses a ready line; `None` for any other line (agents may log before it).
    pub fn parse_line(line: &str) -> Option<Self> {
        let json = line.trim_end().strip_prefix(READY_PREFIX)?;
        parse_json(json)
    }
}

// A tiny JSON writer/reader for this one flat object, so the protocol crate does not pull a
// JSON library into the agent's static binary for two fields.
fn serde_json_line(ready: &AgentReady) -> Option<String> {
    Some(format!(
        "{{\"addr\":\"{}\",\"cert_sha256\":\"{}\"}}",
        ready.addr, ready.cert_sha256
    ))
}

fn parse_json(json: &str) -> Option<AgentReady> {
    let body = json.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut addr = None;
    let mut cert = None;
    for field in body.split(',') {
        let (key, value) = field.split_once(':')?;
        let key = key.trim().strip_prefix('"')?.strip_suffix('"')?;
        let value = value.trim().strip_prefix('"')?.strip_suffix('"')?;
        match key {
            "addr" => addr = Some(value.parse().ok()?),
            "cert_sha256" => cert = Some(value.parse().ok()?),
            _ => {}
        }
    }
    Some(AgentReady {
        addr: addr?,
        cert_sha256: cert?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_line_round_trips_for_both_families() {
        for addr in ["127.0.0.1:4433", "[::1]:9"] {
            let ready = AgentReady {
                addr: addr.parse().unwrap(),
                cert_sha256: Fingerprint::of(b"certificate"),
            };
            let line = ready.to_line();
            assert!(line.starts_with(READY_PREFIX));
            assert_eq!(AgentReady::parse_line(&line), Some(ready));
        }
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        assert_eq!(AgentReady::parse_line("INFO starting"), None);
        assert_eq!(
            AgentReady::parse_line("MIRRORD_NET_AGENT_READY {\"addr\":\"nonsense\"}"),
            None
        );
    }
}
