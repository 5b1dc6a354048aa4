//! The version check of the session handshake, without I/O.
//!
//! The agent decides; the client only reports what the agent said. Keeping the rule here (one
//! exact protocol version) lets both ends and their tests share it.

use crate::messages::{AgentHello, AgentMessage, ClientHello, Refusal, TargetInfo};
use crate::{BUILD_VERSION, PROTOCOL_VERSION};

/// The hello this build of the client sends.
pub fn client_hello() -> ClientHello {
    ClientHello {
        protocol_version: PROTOCOL_VERSION,
        client_version: BUILD_VERSION.to_owned(),
    }
}

/// The agent's answer to a client's hello.
pub fn answer_client_hello(hello: &ClientHello, target: TargetInfo) -> AgentMessage {
    if hello.protocol_version != PROTOCOL_VERSION {
        return AgentMessage::Refused(Refusal::VersionMismatch {
            agent_protocol: PROTOCOL_VERSION,
            agent_version: BUILD_VERSION.to_owned(),
        });
    }
    AgentMessage::Hello(AgentHello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: BUILD_VERSION.to_owned(),
        target,
    })
}

/// Why a handshake failed, as the client sees it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    #[error(
        "the agent speaks protocol version {agent_protocol} (mirrord-net-agent {agent_version}), \
         this client speaks {client_protocol} (mirrord-net {client_version}); \
         use an agent from the same release as the client"
    )]
    VersionMismatch {
        agent_protocol: u32,
        agent_version: String,
        client_protocol: u32,
        client_version: String,
    },
    #[error("the agent cannot serve this session: {0}")]
    Unavailable(String),
}

/// The client's reading of the agent's answer: the target's description, or why not.
pub fn accept_agent_message(message: AgentMessage) -> Result<AgentHello, HandshakeError> {
    match message {
        AgentMessage::Hello(hello) if hello.protocol_version == PROTOCOL_VERSION => Ok(hello),
        AgentMessage::Hello(hello) => Err(HandshakeError::VersionMismatch {
            agent_protocol: hello.protocol_version,
            agent_version: hello.agent_version,
            client_protocol: PROTOCOL_VERSION,
            client_version: BUILD_VERSION.to_owned(),
        }),
        AgentMessage::Refused(Refusal::VersionMismatch {
            agent_protocol,
            agent_version,
        }) => Err(HandshakeError::VersionMismatch {
            agent_protocol,
            agent_version,
            client_protocol: PROTOCOL_VERSION,
            client_version: BUILD_VERSION.to_owned(),
        }),
        AgentMessage::Refused(Refusal::Unavailable { reason }) => {
            Err(HandshakeError::Unavailable(reason))
        }
        other => Err(HandshakeError::Unavailable(format!(
            "the agent answered the hello with {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetInfo {
        TargetInfo {
            hostname: "pod-a".into(),
            ipv4: vec!["10.0.0.5".parse().unwrap()],
            ipv6: vec![],
            interface: Some("eth0".into()),
            resolv_conf: Some(b"nameserver 10.0.0.2\n".to_vec()),
            hosts: None,
            environ: vec![(b"APP_MODE".to_vec(), b"prod".to_vec())],
            mountinfo: "36 35 98:0 /mnt1 /mnt1 rw - ext3 /dev/root rw\n".into(),
        }
    }

    #[test]
    fn matching_versions_yield_the_target() {
        let answer = answer_client_hello(&client_hello(), target());
        let hello = accept_agent_message(answer).unwrap();
        assert_eq!(hello.target, target());
    }

    #[test]
    fn other_protocol_version_is_refused_with_both_versions_named() {
        let mut hello = client_hello();
        hello.protocol_version = PROTOCOL_VERSION + 1;
        let answer = answer_client_hello(&hello, target());
        assert!(matches!(
            answer,
            AgentMessage::Refused(Refusal::VersionMismatch { .. })
        ));
        let err = accept_agent_message(answer).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(&format!("protocol version {PROTOCOL_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn agent_hello_of_another_version_is_rejected_by_the_client() {
        let answer = AgentMessage::Hello(AgentHello {
            protocol_version: PROTOCOL_VERSION + 7,
            agent_version: "9.9.9".into(),
            target: target(),
        });
        assert!(matches!(
            accept_agent_message(answer),
            Err(HandshakeError::VersionMismatch { agent_protocol, .. }) if agent_protocol == PROTOCOL_VERSION + 7
        ));
    }
}
