//! Connecting to the agent and the session handshake.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use mirrord_net_protocol::framing::{self, FrameDecoder};
use mirrord_net_protocol::handshake::{self, HandshakeError};
use mirrord_net_protocol::messages::{AgentMessage, ClientMessage, TargetInfo};
use mirrord_net_protocol::transport::{self, PathProfile};
use mirrord_net_protocol::trust::{Fingerprint, SessionIdentity, TrustError, AGENT_SERVER_NAME};

/// How long the QUIC handshake and hello exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Application error code sent when the session ends normally.
pub const SESSION_OVER: u32 = 0;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("cannot open the tunnel socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot connect to the agent at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
    #[error("cannot connect to the agent at {addr}: {source}")]
    BadAddress {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("the agent at {0} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout(SocketAddr),
    #[error("the handshake with the agent failed: {0}")]
    Protocol(String),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("the agent does not accept datagrams large enough for IP packets")]
    NoDatagrams,
}

/// An established session connection.
pub struct Tunnel {
    pub connection: quinn::Connection,
    /// What the agent reported about its target.
    pub target: TargetInfo,
    /// The largest IP packet one datagram carries: the session's TUN MTU.
    pub mtu: u16,
    // Kept open for the session's lifetime: closing the control stream ends the session.
    _control: (quinn::SendStream, quinn::RecvStream),
    endpoint: quinn::Endpoint,
}

impl Tunnel {
    /// Ends the session and keeps the endpoint running until `peer_gone` completes — for a
    /// local agent, its exit, which it takes as soon as the close arrives. Waiting for the
    /// endpoint's draining period instead ([`Tunnel::close`]) costs three probe timeouts,
    /// ~100 ms on every session's exit, to learn what the agent's exit already says.
    pub async fn close_until(self, peer_gone: impl std::future::Future<Output = ()>) {
        self.connection.close(SESSION_OVER.into(), b"session over");
        peer_gone.await;
    }

    /// Ends the session cleanly and waits (briefly) until the agent has been told.
    pub async fn close(self) {
        self.connection.close(SESSION_OVER.into(), b"session over");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

/// Connects to the agent at `addr`, accepting only the certificate `agent`.
pub async fn connect(
    addr: SocketAddr,
    identity: &SessionIdentity,
    agent: Fingerprint,
    profile: PathProfile,
) -> Result<Tunnel, TunnelError> {
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        connect_inner(addr, identity, agent, profile),
    )
    .await
    .map_err(|_| TunnelError::Timeout(addr))?
}

async fn connect_inner(
    addr: SocketAddr,
    identity: &SessionIdentity,
    agent: Fingerprint,
    profile: PathProfile,
) -> Result<Tunnel, TunnelError> {
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local).map_err(TunnelError::Socket)?;
    transport::enlarge_socket_buffers(&socket);
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TunnelError::Socket(std::io::Error::other("no async runtime")))?;
    let mut endpoint =
        quinn::Endpoint::new(transport::endpoint_config(profile), None, socket, runtime)
            .map_err(TunnelError::Socket)?;
    endpoint.set_default_client_config(transport::client_config(identity, agent, profile)?);

    let connection = endpoint
        .connect(addr, AGENT_SERVER_NAME)
        .map_err(|source| TunnelError::BadAddress { addr, source })?
        .await
        .map_err(|source| TunnelError::Connect { addr, source })?;

    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|source| TunnelError::Connect { addr, source })?;
    let hello = framing::encode(&ClientMessage::Hello(handshake::client_hello()))
        .map_err(|err| TunnelError::Protocol(err.to_string()))?;
    send.write_all(&hello)
        .await
        .map_err(|err| TunnelError::Protocol(err.to_string()))?;
    let answer: AgentMessage = read_message(&mut recv).await?;
    let hello = handshake::accept_agent_message(answer)?;

    let mtu = connection
        .max_datagram_size()
        .filter(|size| *size >= 1280)
        .ok_or(TunnelError::NoDatagrams)?;
    let mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
    Ok(Tunnel {
        connection,
        target: hello.target,
        mtu,
        _control: (send, recv),
        endpoint,
    })
}

async fn read_message(recv: &mut quinn::RecvStream) -> Result<AgentMessage, TunnelError> {
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(message) = decoder
            .next_message()
            .map_err(|err| TunnelError::Protocol(err.to_string()))?
        {
            return Ok(message);
        }
        match recv.read(&mut chunk).await {
            Ok(Some(n)) => decoder.push(&chunk[..n]),
            Ok(None) => {
                return Err(TunnelError::Protocol(
                    "the agent closed the control stream without answering".into(),
                ))
            }
            Err(err) => return Err(TunnelError::Protocol(err.to_string())),
        }
    }
}
