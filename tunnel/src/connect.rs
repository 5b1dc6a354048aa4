//! Connecting to the agent and the session handshake.
//!
//! Two ways to reach the agent, one handshake: [`connect`] sends QUIC over UDP to the agent's
//! address; [`connect_over_stream`] frames the same QUIC packets on a byte stream the caller
//! opened to the agent's TCP listener (e.g. a Kubernetes port-forward), through
//! [`StreamSocket`].
//!
//! Both take the session's reconnect window (see [`liveness`](super::liveness)), which sets
//! the connection's idle timeout at both ends. Over UDP the client also watches for a silent
//! agent and moves to a new socket ([`liveness::keep_path`]). A stream's TCP connection
//! retransmits across a cut by itself; when the stream breaks, the caller's `reopen` gives a
//! new one and the endpoint moves onto it ([`follow_stream`]), which the agent's relay shows
//! QUIC as a new source port: a path change of the same connection.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use mirrord_net_protocol::framing::{self, FrameDecoder};
use mirrord_net_protocol::handshake::{self, HandshakeError};
use mirrord_net_protocol::messages::{AgentMessage, ClientMessage, Resolution, TargetInfo};
use mirrord_net_protocol::transport::{self, PathProfile};
use mirrord_net_protocol::trust::{Fingerprint, SessionIdentity, TrustError, AGENT_SERVER_NAME};
use tokio::io::{AsyncRead, AsyncWrite};

use super::liveness;
use super::stream_socket::{StreamSocket, STREAM_PEER};

/// How long the QUIC handshake and hello exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the target's resolver may take for all the `--remote` names. With the C
/// library's defaults (5 s, two rounds), a nameserver that never answers costs 10 s before
/// the next is asked; a cluster's resolv.conf names one.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(30);

/// Application error code sent when the session ends normally.
pub const SESSION_OVER: u32 = 0;

/// How the client reaches the agent, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentPath {
    /// QUIC over UDP to this address.
    Udp(SocketAddr),
    /// QUIC framed on a byte stream.
    Stream,
}

impl std::fmt::Display for AgentPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentPath::Udp(addr) => write!(f, "the agent at {addr}"),
            AgentPath::Stream => f.write_str("the agent over its stream"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("{0}")]
    Trust(#[from] TrustError),
    #[error("cannot open the tunnel socket: {0}")]
    Socket(std::io::Error),
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: AgentPath,
        source: quinn::ConnectionError,
    },
    #[error("cannot connect to {path}: {source}")]
    BadAddress {
        path: AgentPath,
        source: quinn::ConnectError,
    },
    #[error("{0} did not answer within {CONNECT_TIMEOUT:?}")]
    Timeout(AgentPath),
    #[error("the handshake with the agent failed: {0}")]
    Protocol(String),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    #[error("the agent does not accept datagrams large enough for IP packets")]
    NoDatagrams,
    #[error("asking the target to resolve names: {0}")]
    Resolve(String),
}

/// An established session connection.
pub struct Tunnel {
    pub connection: quinn::Connection,
    /// What the agent reported about its target.
    pub target: TargetInfo,
    /// The largest IP packet one datagram carries: the session's TUN MTU.
    pub mtu: u16,
    // Kept open for the session's lifetime: closing the control stream ends the session.
    // Taken by whoever speaks on it after the hello (see `Tunnel::take_control`).
    control: Option<(quinn::SendStream, quinn::RecvStream)>,
    endpoint: quinn::Endpoint,
}

impl Tunnel {
    /// The control stream, for messages after the hello (the incoming side's). Whoever takes
    /// it must keep it for the session's lifetime.
    pub fn take_control(&mut self) -> Option<(quinn::SendStream, quinn::RecvStream)> {
        self.control.take()
    }

    /// Asks the agent to resolve `names` with the target's resolver (the outgoing filter's
    /// `--remote` names), before the control stream is taken. The answers come in the order
    /// of `names`.
    pub async fn resolve(&mut self, names: Vec<String>) -> Result<Vec<Resolution>, TunnelError> {
        let (send, recv) = self
            .control
            .as_mut()
            .ok_or_else(|| TunnelError::Resolve("the control stream is in use".into()))?;
        let request = framing::encode(&ClientMessage::Resolve(names))
            .map_err(|err| TunnelError::Resolve(err.to_string()))?;
        send.write_all(&request)
            .await
            .map_err(|err| TunnelError::Resolve(err.to_string()))?;
        match tokio::time::timeout(RESOLVE_TIMEOUT, read_message(recv)).await {
            Ok(Ok(AgentMessage::Resolved(resolved))) => Ok(resolved),
            Ok(Ok(other)) => Err(TunnelError::Resolve(format!(
                "the agent answered {other:?}"
            ))),
            Ok(Err(err)) => Err(TunnelError::Resolve(err.to_string())),
            Err(_) => Err(TunnelError::Resolve(format!(
                "no answer within {RESOLVE_TIMEOUT:?}"
            ))),
        }
    }

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

/// Connects to the agent at `addr`, accepting only the certificate `agent`; the agent waits
/// `reconnect_window` for this client after a silence.
pub async fn connect(
    addr: SocketAddr,
    identity: &SessionIdentity,
    agent: Fingerprint,
    profile: PathProfile,
    reconnect_window: Duration,
) -> Result<Tunnel, TunnelError> {
    let path = AgentPath::Udp(addr);
    let socket = liveness::new_socket(addr).map_err(TunnelError::Socket)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TunnelError::Socket(std::io::Error::other("no async runtime")))?;
    let socket = runtime
        .wrap_udp_socket(socket)
        .map_err(TunnelError::Socket)?;
    let endpoint = endpoint_on(socket, runtime, identity, agent, profile, reconnect_window)?;
    let tunnel = tokio::time::timeout(CONNECT_TIMEOUT, handshake(endpoint, addr, path))
        .await
        .map_err(|_| TunnelError::Timeout(path))??;
    tokio::spawn(liveness::keep_path(
        tunnel.endpoint.clone(),
        tunnel.connection.clone(),
        addr,
    ));
    Ok(tunnel)
}

/// Connects to the agent over `stream`, a byte stream to its TCP listener (the agent's
/// address and port, or a port-forward to them), accepting only the certificate `agent`.
/// QUIC runs on the stream exactly as on UDP. When the stream ends, `reopen` (if given) is
/// asked for a new one until it gives one or the connection ends (the reconnect window), and
/// the connection moves onto it; without `reopen`, the stream's end ends the connection.
/// Use [`PathProfile::Stream`] unless the datagrams must stay small.
pub async fn connect_over_stream<S>(
    stream: S,
    identity: &SessionIdentity,
    agent: Fingerprint,
    profile: PathProfile,
    reconnect_window: Duration,
    reopen: Option<ReopenStream>,
) -> Result<Tunnel, TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let path = AgentPath::Stream;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| TunnelError::Socket(std::io::Error::other("no async runtime")))?;
    let socket = StreamSocket::new(stream);
    let ended = socket.ended();
    let endpoint = endpoint_on(socket, runtime, identity, agent, profile, reconnect_window)?;
    let tunnel = tokio::time::timeout(CONNECT_TIMEOUT, handshake(endpoint, STREAM_PEER, path))
        .await
        .map_err(|_| TunnelError::Timeout(path))??;
    tokio::spawn(follow_stream(
        tunnel.endpoint.clone(),
        tunnel.connection.clone(),
        Box::pin(ended),
        reopen,
    ));
    Ok(tunnel)
}

/// A byte stream to the agent's TCP listener.
pub trait ByteStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteStream for T {}

/// Opens a new stream to the agent's listener, for a client whose stream broke.
pub type ReopenStream = Box<
    dyn FnMut() -> Pin<Box<dyn Future<Output = std::io::Result<Box<dyn ByteStream>>> + Send>>
        + Send,
>;

/// How long after a failed attempt a broken stream is re-opened again.
const REOPEN_EVERY: Duration = Duration::from_millis(500);

/// Moves the connection to a new stream each time its stream ends, or ends the connection at
/// once when there is no way to open one (rather than after QUIC's idle timeout).
async fn follow_stream(
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    mut ended: Pin<Box<dyn Future<Output = ()> + Send>>,
    mut reopen: Option<ReopenStream>,
) {
    loop {
        tokio::select! {
            _ = &mut ended => {}
            _ = connection.closed() => return,
        }
        let Some(reopen) = reopen.as_mut() else {
            connection.close(STREAM_ENDED.into(), b"the stream to the agent ended");
            return;
        };
        tracing::info!("the stream to the agent ended: re-opening it");
        let lost = std::time::Instant::now();
        let stream = loop {
            let attempt = tokio::select! {
                opened = reopen() => opened,
                _ = connection.closed() => return,
            };
            match attempt {
                Ok(stream) => break stream,
                Err(err) => {
                    tracing::debug!("re-opening the stream to the agent: {err}");
                    tokio::select! {
                        _ = tokio::time::sleep(REOPEN_EVERY) => {}
                        _ = connection.closed() => return,
                    }
                }
            }
        };
        let socket = StreamSocket::new(stream);
        ended = Box::pin(socket.ended());
        // quinn pings the agent from the new socket at once: to QUIC, a path change.
        match endpoint.rebind_abstract(socket) {
            Ok(()) => tracing::info!(
                "moved to a new stream {:?} after the old one ended",
                lost.elapsed()
            ),
            Err(err) => tracing::warn!("cannot move to the new stream: {err}"),
        }
    }
}

/// Application error code of a connection whose stream ended under it.
pub const STREAM_ENDED: u32 = 1;

fn endpoint_on(
    socket: std::sync::Arc<dyn quinn::AsyncUdpSocket>,
    runtime: std::sync::Arc<dyn quinn::Runtime>,
    identity: &SessionIdentity,
    agent: Fingerprint,
    profile: PathProfile,
    reconnect_window: Duration,
) -> Result<quinn::Endpoint, TunnelError> {
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        transport::endpoint_config(profile),
        None,
        socket,
        runtime,
    )
    .map_err(TunnelError::Socket)?;
    endpoint.set_default_client_config(transport::client_config_with_window(
        identity,
        agent,
        profile,
        reconnect_window,
    )?);
    Ok(endpoint)
}

/// The QUIC handshake with the agent at `addr` on `endpoint`, then the session's hello.
async fn handshake(
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    path: AgentPath,
) -> Result<Tunnel, TunnelError> {
    let connection = endpoint
        .connect(addr, AGENT_SERVER_NAME)
        .map_err(|source| TunnelError::BadAddress { path, source })?
        .await
        .map_err(|source| TunnelError::Connect { path, source })?;

    let (mut send, mut recv) = connection
        .open_bi()
        .await
        .map_err(|source| TunnelError::Connect { path, source })?;
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
        control: Some((send, recv)),
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
