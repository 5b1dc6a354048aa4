//! The agent's end of the session: accept the one client, answer its hello, run the stack.
//!
//! One agent serves one session. The QUIC endpoint accepts connections until the pinned client
//! completes a handshake (anything else fails TLS and is dropped). Handshakes run side by side,
//! each within [`HANDSHAKE_TIMEOUT`] and at most [`MAX_HANDSHAKES`] at once (one more is
//! refused), so a stalled or hostile attempt never holds up the real client; once the client is
//! in, every new attempt is refused at once rather than left queued for the session's
//! lifetime, and the stream relay is told which of its streams is the client's (again
//! whenever the client moves to a re-opened stream, [`follow_client`]; see
//! [`stream_relay`](crate::stream_relay)). The first bidirectional stream carries the hello;
//! then packets flow until the connection closes — because the client said so, or because it
//! fell silent for the idle timeout — and the agent exits 0 either way.
//!
//! **A lost client.** The idle timeout is the liveness rule's: 3 s of silence, after which the
//! incoming side gives stolen traffic back (it watches the control stream's heartbeat), then
//! the client's reconnect window, which the client's own idle timeout sets (QUIC takes the
//! smaller of both ends'; `transport::idle_timeout`). Within it the same client may come back
//! on the same connection, from the same address or a new one (QUIC migration; only the
//! pinned client's packets decrypt). After it the connection times out, the session ends and
//! the agent exits 0 with one line: a client that went away is not the agent's failure.
//! Every later bidirectional stream starts with a `StreamKind` byte and is dispatched by it
//! (today: one file request per stream, answered by [`files`](crate::files)).
//!
//! A local client may hand the agent the session's TUN descriptor ([`TunHandoff`]); the
//! packets then never cross QUIC: the stack runs on the device, and the connection carries
//! only control and files. The session still ends when the connection does.

use std::time::Duration;

use anyhow::{anyhow, Context};
use mirrord_net_protocol::framing::{self, FrameDecoder};
use mirrord_net_protocol::handshake;
use mirrord_net_protocol::messages::{AgentMessage, ClientMessage, Resolution, TargetInfo};
use mirrord_net_protocol::resolv_conf::ResolvConf;

use crate::files::{self, FileServer};
use crate::incoming;
use crate::resolve;
use crate::stack::{self, StackConfig};
use crate::stream_relay::StreamPeers;
use crate::tun_handoff::TunHandoff;
use mirrord_net_protocol::fs::StreamKind;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};

/// How long one QUIC handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; a further attempt is refused.
pub const MAX_HANDSHAKES: usize = 32;

/// The QUIC settings for a client that comes through the stream relay, which the endpoint
/// knows by the relay's address.
pub struct StreamClients {
    pub peers: StreamPeers,
    pub config: Arc<quinn::ServerConfig>,
    /// Told the session's client address once it is in (see `StreamRelay::serve`).
    pub claimed: watch::Sender<Option<SocketAddr>>,
}

/// What the session's data plane and incoming side start from, prepared before the agent
/// dropped its privileges where that was needed (the TUN's hand-over socket, the iptables
/// keeper).
pub struct SessionMeans {
    /// The session's TUN device comes through this (a local client), else packets come as
    /// QUIC datagrams.
    pub tun: Option<TunHandoff>,
    pub limits: stack::Limits,
    /// How stolen ports are to be redirected.
    pub redirect_with: incoming::RedirectWith,
}

/// Waits for the pinned client and serves its session to the end.
pub async fn serve_one_session(
    endpoint: quinn::Endpoint,
    target: TargetInfo,
    accept_timeout: Duration,
    files: Option<Arc<FileServer>>,
    stream_clients: Option<StreamClients>,
    means: SessionMeans,
) -> anyhow::Result<()> {
    let SessionMeans {
        tun,
        limits,
        redirect_with,
    } = means;
    let accept = accept_pinned(&endpoint, stream_clients.as_ref());
    let connection = tokio::time::timeout(accept_timeout, accept)
        .await
        .map_err(|_| anyhow!("no client connected within {accept_timeout:?}"))??;
    tracing::debug!(peer = %connection.remote_address(), "client connected");
    if let Some(stream) = stream_clients {
        let _ = stream.claimed.send(Some(connection.remote_address()));
        tokio::spawn(follow_client(connection.clone(), stream.claimed));
    }
    tokio::spawn(refuse_all(endpoint.clone()));

    let (mut send, mut recv) = connection
        .accept_bi()
        .await
        .context("client opened no control stream")?;
    let hello: ClientMessage = read_message(&mut recv)
        .await?
        .ok_or_else(|| anyhow!("client closed the control stream before its hello"))?;
    let ClientMessage::Hello(hello) = hello else {
        return Err(anyhow!("client spoke before its hello: {hello:?}"));
    };
    let addrs = incoming::SessionAddrs {
        ipv4: target.ipv4.clone(),
        ipv6: target.ipv6.clone(),
    };
    let names = Arc::new(TargetNames::of(&target));
    let answer = handshake::answer_client_hello(&hello, target);
    let refused = matches!(answer, AgentMessage::Refused(_));
    send.write_all(&framing::encode(&answer)?).await?;
    if refused {
        send.finish()?;
        // Let the refusal reach the client before the connection goes.
        let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
        return Err(anyhow!("refused client: {answer:?}"));
    }

    let mtu = connection
        .max_datagram_size()
        .ok_or_else(|| anyhow!("client does not accept datagrams"))?;
    let config = StackConfig {
        mtu,
        limits,
        ..StackConfig::default()
    };
    // The control stream stays open for the session's lifetime (its later messages go to
    // the incoming side); the stack ends when the connection does.
    let (events, events_rx) = mpsc::unbounded_channel();
    let (report, report_rx) = mpsc::unbounded_channel();
    let (inbound, inbound_rx) = stack::inbound::channel();
    tokio::spawn(control_stream(
        send,
        recv,
        events,
        report.clone(),
        report_rx,
        names,
    ));
    // Local: filtered connections are served by tasks that are not `Send`.
    tokio::task::spawn_local(incoming::run(
        events_rx,
        inbound,
        report,
        addrs,
        redirect_with,
    ));
    tokio::spawn(accept_streams(connection.clone(), files));
    let served = match tun {
        None => stack::serve_with_inbound(connection.clone(), config, Some(inbound_rx)).await,
        Some(handoff) => serve_on_tun(connection.clone(), handoff, config, inbound_rx).await,
    };
    if client_lost(connection.close_reason()) {
        // Not the agent's failure: the session is over, and its end is an ordinary one.
        eprintln!(
            "mirrord-net-agent: the client was silent through its reconnect window; the session is over"
        );
        return Ok(());
    }
    served
}

/// Whether the connection ended because the client stayed silent past the idle timeout,
/// i.e. [`SILENCE_LIMIT`](mirrord_net_protocol::messages::SILENCE_LIMIT) and then the
/// session's reconnect window (see `transport::idle_timeout`).
fn client_lost(reason: Option<quinn::ConnectionError>) -> bool {
    matches!(reason, Some(quinn::ConnectionError::TimedOut))
}

/// The stack on the session's TUN, once the client has sent it, until the connection ends.
async fn serve_on_tun(
    connection: quinn::Connection,
    handoff: TunHandoff,
    config: StackConfig,
    inbound: stack::inbound::InboundReceiver,
) -> anyhow::Result<()> {
    let tun = tokio::select! {
        tun = handoff.receive() => tun.context("cannot receive the session's TUN device")?,
        reason = connection.closed() => return connection_ended(reason),
    };
    let Some(tun) = tun else {
        // No session (the client only wanted the target's details): serve files and control.
        return connection_ended(connection.closed().await);
    };
    tracing::info!("packets on the session's TUN device");
    // One process between the session and the upstream sockets: poll on briefly after
    // traffic rather than pay a wake-up per crossing (see `busy_poll`).
    let config = StackConfig {
        busy_poll: crate::busy_poll::BusyPoll::process(),
        ..config
    };
    tokio::select! {
        served = stack::serve_tun(tun, config, Some(inbound)) => {
            served?;
            // The device went with the session's namespace; the client closes next.
            connection_ended(connection.closed().await)
        }
        reason = connection.closed() => connection_ended(reason),
    }
}

/// A close by either side is a normal end; a timeout or protocol error is not.
///
/// A stateless reset is a close too: only the client's own endpoint holds the token that makes
/// one valid, and it sends one when it no longer knows the connection, i.e. after the client
/// closed it and its draining period ended. An agent kept busy at the session's end (a flood
/// of packets still queued on the session's TUN) can read the client's packets after that
/// period is over.
fn connection_ended(reason: quinn::ConnectionError) -> anyhow::Result<()> {
    use quinn::ConnectionError as E;
    match reason {
        E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::LocallyClosed | E::Reset => Ok(()),
        other => Err(anyhow::Error::new(other).context("the connection to the client failed")),
    }
}

/// What the target's resolver reads: for the client's `--remote` names.
struct TargetNames {
    conf: ResolvConf,
    hosts: Vec<u8>,
}

impl TargetNames {
    fn of(target: &TargetInfo) -> TargetNames {
        let resolv_conf = target.resolv_conf.as_deref().unwrap_or_default();
        TargetNames {
            conf: ResolvConf::parse_bytes(resolv_conf),
            hosts: target.hosts.clone().unwrap_or_default(),
        }
    }

    /// Resolves `names` one after the other and answers with all of them.
    async fn answer(&self, names: Vec<String>) -> AgentMessage {
        let mut resolved = Vec::with_capacity(names.len());
        for name in names {
            let addresses = resolve::resolve(&self.conf, &self.hosts, &name).await;
            tracing::debug!(%name, ?addresses, "resolved for the client");
            resolved.push(Resolution { name, addresses });
        }
        AgentMessage::Resolved(resolved)
    }
}

/// Reads the client's control messages after the hello and passes them to the incoming
/// side (a `Resolve` is answered here); writes what the incoming side reports. Ends with
/// the stream (which ends the incoming side: its rules go with it).
async fn control_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    events: mpsc::UnboundedSender<incoming::ControlEvent>,
    answers: mpsc::UnboundedSender<AgentMessage>,
    mut report: mpsc::UnboundedReceiver<AgentMessage>,
    names: Arc<TargetNames>,
) {
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        tokio::select! {
            read = recv.read(&mut chunk) => {
                let n = match read {
                    Ok(Some(n)) => n,
                    Ok(None) | Err(_) => return,
                };
                decoder.push(&chunk[..n]);
                loop {
                    let event = match decoder.next_message::<ClientMessage>() {
                        Ok(Some(ClientMessage::Incoming(config))) => incoming::ControlEvent::Config(config),
                        Ok(Some(ClientMessage::Listening(ports))) => incoming::ControlEvent::Listening(ports),
                        Ok(Some(ClientMessage::Hello(_))) => continue,
                        Ok(Some(ClientMessage::Resolve(asked))) => {
                            let (names, answers) = (names.clone(), answers.clone());
                            tokio::spawn(async move {
                                let _ = answers.send(names.answer(asked).await);
                            });
                            continue;
                        }
                        Ok(None) => break,
                        Err(err) => {
                            tracing::warn!("control stream: {err}");
                            return;
                        }
                    };
                    if events.send(event).is_err() {
                        return;
                    }
                }
            }
            Some(message) = report.recv() => {
                let Ok(frame) = framing::encode(&message) else { continue };
                if send.write_all(&frame).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Accepts the client's further streams and dispatches each by its kind byte.
async fn accept_streams(connection: quinn::Connection, files: Option<Arc<FileServer>>) {
    while let Ok((send, mut recv)) = connection.accept_bi().await {
        let files = files.clone();
        tokio::spawn(async move {
            let mut kind = [0u8; 1];
            if recv.read_exact(&mut kind).await.is_err() {
                return;
            }
            let result = match (StreamKind::from_byte(kind[0]), files) {
                (Some(StreamKind::Files), Some(server)) => {
                    files::serve_stream(server, send, recv).await
                }
                (Some(StreamKind::Files), None) => {
                    // Files are off for this session: refuse the stream outright.
                    let mut send = send;
                    let _ = send.reset(quinn::VarInt::from_u32(1));
                    Ok(())
                }
                (None, _) => Err(anyhow!("unknown stream kind {}", kind[0])),
            };
            if let Err(err) = result {
                tracing::debug!("stream: {err:#}");
            }
        });
    }
}

/// Accepts QUIC attempts until one completes its handshake, i.e. is the pinned client:
/// handshakes run concurrently (see [`HandshakeCap`]).
async fn accept_pinned(
    endpoint: &quinn::Endpoint,
    stream_clients: Option<&StreamClients>,
) -> anyhow::Result<quinn::Connection> {
    let mut handshakes = tokio::task::JoinSet::new();
    let cap = HandshakeCap::new(MAX_HANDSHAKES);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let incoming = incoming.ok_or_else(|| anyhow!("endpoint closed"))?;
                if !cap.admits(handshakes.len()) {
                    tracing::warn!(peer = %incoming.remote_address(), "refused a connection: too many handshakes at once");
                    incoming.refuse();
                    continue;
                }
                let connecting = match stream_clients {
                    Some(stream) if stream.peers.contains(incoming.remote_address()) => {
                        incoming.accept_with(stream.config.clone())
                    }
                    _ => incoming.accept(),
                };
                match connecting {
                    Ok(connecting) => {
                        handshakes.spawn(tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting));
                    }
                    Err(err) => tracing::warn!("refused a connection: {err}"),
                }
            }
            Some(done) = handshakes.join_next() => match done {
                Ok(Ok(Ok(connection))) => return Ok(connection),
                // A peer without the pinned certificate: not our client. Keep waiting.
                Ok(Ok(Err(err))) => tracing::warn!("refused a connection: {err}"),
                Ok(Err(_)) => tracing::warn!("refused a connection: no handshake within {HANDSHAKE_TIMEOUT:?}"),
                Err(err) => tracing::warn!("handshake task: {err}"),
            },
        }
    }
}

/// The bound on handshakes in progress at once.
#[derive(Debug, Clone, Copy)]
struct HandshakeCap(usize);

impl HandshakeCap {
    fn new(max: usize) -> Self {
        Self(max)
    }

    /// Whether another handshake may start while `running` are in progress.
    fn admits(self, running: usize) -> bool {
        running < self.0
    }
}

/// How often the client's address is compared with the one the stream relay knows.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// Tells the stream relay where the client is whenever its address changes (it moved to a
/// re-opened stream, which QUIC sees as a path change), so the relay keeps that stream and
/// closes the others. Ends with the connection.
async fn follow_client(connection: quinn::Connection, claimed: watch::Sender<Option<SocketAddr>>) {
    let mut ticks = tokio::time::interval(FOLLOW_EVERY);
    loop {
        tokio::select! {
            _ = connection.closed() => return,
            _ = ticks.tick() => {}
        }
        let now = connection.remote_address();
        claimed.send_if_modified(|known| {
            if *known == Some(now) {
                return false;
            }
            tracing::info!(peer = %now, "the client moved to a new path");
            *known = Some(now);
            true
        });
    }
}

/// Once the session has its client: refuses every new QUIC attempt at once.
async fn refuse_all(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tracing::debug!(peer = %incoming.remote_address(), "refused a connection: the session has its client");
        incoming.refuse();
    }
}

async fn read_message<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> anyhow::Result<Option<T>> {
    let mut decoder = FrameDecoder::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        if let Some(message) = decoder.next_message()? {
            return Ok(Some(message));
        }
        match recv.read(&mut chunk).await? {
            Some(n) => decoder.push(&chunk[..n]),
            None if decoder.has_partial_frame() => {
                return Err(anyhow!("control stream ended inside a message"))
            }
            None => return Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_beyond_the_cap_are_refused() {
        let cap = HandshakeCap::new(2);
        assert!(cap.admits(0));
        assert!(cap.admits(1));
        assert!(!cap.admits(2));
    }
}
