//! The agent's TCP listener: QUIC datagrams on a byte stream, relayed to its own QUIC socket.
//!
//! The Kubernetes port-forward carries TCP only. Besides its UDP socket, the agent listens on
//! TCP at the same address and port; a client there sends the session's QUIC packets framed
//! on the stream ([`mirrord_net_protocol::stream_datagrams`]). The relay turns each frame into
//! a UDP datagram sent from its own socket to the agent's QUIC socket, and each datagram the
//! QUIC socket sends back into a frame on the stream:
//!
//! ```text
//!  client ══ TCP (port-forward) ══▶ listener ─ relay ─ UDP 127.0.0.1:R ─▶ QUIC socket :P
//! ```
//!
//! To the QUIC endpoint the client is then an ordinary UDP peer at the relay's address, which
//! is why the relay and not a second kind of socket: one endpoint and one accept loop serve
//! both paths, and the agent tells a stream client by that address (and gives it the stream's
//! transport settings, see [`StreamPeer`]). The cost is one loopback hop per datagram, small
//! next to what a port-forward costs.
//!
//! The listener and the relay's socket are made in the agent's own network namespace, before
//! it enters the target's, like the QUIC socket, so that all three stay reachable by each
//! other and by the client. Both are made at start, which is why the relay serves one stream at
//! a time: a new connection replaces the current one. That is also how a client reconnects a
//! broken port-forward: the QUIC connection sees the same peer address and carries on.
//!
//! Loss: a datagram the relay cannot hand on (the stream's writer is behind and the relay
//! socket's receive buffer is full) is dropped by the kernel, as a router would drop it; QUIC
//! recovers it and slows down. The client's side pushes back instead (`stream_socket`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use mirrord_net_protocol::stream_datagrams::{self, Decoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of frames gathered before one write to the stream (a busy downlink batches datagrams
/// into few writes).
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes asked of each stream read.
const READ_CHUNK: usize = 256 * 1024;

/// The relay's sockets, bound (in the agent's own namespace) and not yet serving.
#[derive(Debug)]
pub struct StreamRelay {
    listener: std::net::TcpListener,
    socket: std::net::UdpSocket,
}

/// How the control loop recognises a client that came through the relay: its QUIC peer
/// address is the relay's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPeer(pub SocketAddr);

impl StreamRelay {
    /// Listens on TCP at `quic_addr` (the QUIC socket's bound address and port) and makes the
    /// relay's UDP socket, connected to the QUIC socket.
    pub fn bind(quic_addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(quic_addr)
            .with_context(|| format!("cannot listen on TCP {quic_addr}"))?;
        let target = reachable(quic_addr);
        let socket = std::net::UdpSocket::bind((target.ip(), 0))
            .with_context(|| format!("cannot make the stream relay's socket on {}", target.ip()))?;
        mirrord_net_protocol::transport::enlarge_socket_buffers(&socket);
        socket
            .connect(target)
            .with_context(|| format!("cannot aim the stream relay at {target}"))?;
        listener.set_nonblocking(true)?;
        socket.set_nonblocking(true)?;
        Ok(Self { listener, socket })
    }

    /// The address the QUIC endpoint sees a relayed client at.
    pub fn peer(&self) -> anyhow::Result<StreamPeer> {
        Ok(StreamPeer(self.socket.local_addr()?))
    }

    /// Accepts stream connections and relays each (the newest replaces the current one) until
    /// the task is dropped. Must run inside the tokio runtime.
    pub async fn serve(self) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let socket = Arc::new(tokio::net::UdpSocket::from_std(self.socket)?);
        let mut current: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let (stream, peer) = listener.accept().await?;
            tracing::debug!(%peer, "stream client connected");
            let _ = stream.set_nodelay(true);
            if let Some(previous) = current.take() {
                previous.abort();
            }
            current = Some(tokio::spawn(relay(stream, socket.clone())));
        }
    }
}

/// The address that reaches a socket bound to `addr` from this namespace: the loopback of its
/// family when it is bound to the unspecified address.
fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Relays one stream both ways until either direction fails or the stream ends.
async fn relay(stream: tokio::net::TcpStream, socket: Arc<tokio::net::UdpSocket>) {
    let (reader, writer) = stream.into_split();
    let result = tokio::select! {
        result = stream_to_socket(reader, &socket) => result,
        result = socket_to_stream(&socket, writer) => result,
    };
    match result {
        Ok(()) => tracing::debug!("stream client went away"),
        Err(err) => tracing::debug!("stream relay: {err:#}"),
    }
}

async fn stream_to_socket(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    socket: &tokio::net::UdpSocket,
) -> anyhow::Result<()> {
    let mut decoder = Decoder::new();
    loop {
        let spare = decoder.spare(READ_CHUNK);
        let n = reader.read(spare).await?;
        decoder.filled(n);
        if n == 0 {
            anyhow::ensure!(
                !decoder.has_partial_frame(),
                "the stream ended inside a frame"
            );
            return Ok(());
        }
        while let Some(datagram) = decoder.next_datagram() {
            // The QUIC socket's buffer is large; a send it refuses is a loss QUIC repairs.
            if let Err(err) = socket.send(datagram).await {
                tracing::debug!("relaying a datagram: {err}");
            }
        }
    }
}

async fn socket_to_stream(
    socket: &tokio::net::UdpSocket,
    mut writer: tokio::net::tcp::OwnedWriteHalf,
) -> anyhow::Result<()> {
    let mut datagram = vec![0u8; stream_datagrams::MAX_DATAGRAM];
    let mut frames = Vec::with_capacity(WRITE_BATCH + stream_datagrams::frame_len(datagram.len()));
    loop {
        let n = socket.recv(&mut datagram).await?;
        stream_datagrams::encode_into(&datagram[..n], &mut frames)?;
        // Gather what else is waiting, so a burst costs one write.
        while frames.len() < WRITE_BATCH {
            match socket.try_recv(&mut datagram) {
                Ok(n) => stream_datagrams::encode_into(&datagram[..n], &mut frames)?,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => return Err(err.into()),
            }
        }
        writer.write_all(&frames).await?;
        frames.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert_eq!(reachable(at("0.0.0.0:7")), at("127.0.0.1:7"));
        assert_eq!(reachable(at("[::]:7")), at("[::1]:7"));
        assert_eq!(reachable(at("10.1.2.3:7")), at("10.1.2.3:7"));
    }

    /// A stand-in QUIC socket: frames sent on the stream arrive as datagrams at it, and its
    /// answers come back as frames, in order, through a stream that replaced an earlier one.
    #[tokio::test]
    async fn frames_become_datagrams_and_back() {
        tokio::time::timeout(std::time::Duration::from_secs(20), relay_round_trip())
            .await
            .expect("the relay round trip finishes");
    }

    async fn relay_round_trip() {
        // Buffers as large as the agent's: the test reads only after sending everything.
        let quic = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        mirrord_net_protocol::transport::enlarge_socket_buffers(&quic);
        quic.set_nonblocking(true).unwrap();
        let quic = tokio::net::UdpSocket::from_std(quic).unwrap();
        let relay = StreamRelay::bind(quic.local_addr().unwrap()).unwrap();
        let listen = relay.listener.local_addr().unwrap();
        assert_eq!(
            listen,
            quic.local_addr().unwrap().to_string().parse().unwrap()
        );
        let StreamPeer(relay_addr) = relay.peer().unwrap();
        tokio::spawn(relay.serve());

        // The first client is replaced by the second.
        let _first = tokio::net::TcpStream::connect(listen).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut client = tokio::net::TcpStream::connect(listen).await.unwrap();

        let sent: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + 3000 * i as usize]).collect();
        let mut wire = Vec::new();
        for datagram in &sent {
            stream_datagrams::encode_into(datagram, &mut wire).unwrap();
        }
        client.write_all(&wire).await.unwrap();
        let mut buf = vec![0u8; 65_536];
        for datagram in &sent {
            let (n, from) = quic.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, relay_addr);
            assert_eq!(&buf[..n], &datagram[..]);
            quic.send_to(&buf[..n], from).await.unwrap();
        }
        let mut back = vec![0u8; wire.len()];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(back, wire);
    }
}
