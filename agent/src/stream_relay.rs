//! The agent's TCP listener: QUIC datagrams on a byte stream, relayed to its own QUIC socket.
//!
//! The Kubernetes port-forward carries TCP only. Besides its UDP socket, the agent listens on
//! TCP at the same address and port; a client there sends the session's QUIC packets framed
//! on the stream ([`mirrord_net_protocol::stream_datagrams`]). The relay turns each frame into
//! a UDP datagram sent from a socket of its own to the agent's QUIC socket, and each datagram
//! the QUIC socket sends back into a frame on the stream:
//!
//! ```text
//!  client ══ TCP (port-forward) ══▶ listener ─ relay ─ UDP 127.0.0.1:R1 ─▶ QUIC socket :P
//!  stranger ══ TCP ═══════════════▶    "     ─ relay ─ UDP 127.0.0.1:R2 ─▶      "
//! ```
//!
//! To the QUIC endpoint each stream is then an ordinary UDP peer at its relay socket's
//! address, which is why the relay and not a second kind of socket: one endpoint and one
//! accept loop serve both paths, and the agent tells a stream client by that address (and
//! gives it the stream's transport settings, see [`StreamPeers`]). The cost is one loopback
//! hop per datagram, small next to what a port-forward costs.
//!
//! **Who is the client.** Anyone who reaches the port may open a stream, so every stream gets
//! its own socket and thus its own QUIC peer address: QUIC's mutual certificate pinning, not
//! the order of arrival, decides which stream carries the session. When the control loop has
//! accepted the pinned client it names that client's address (the `claimed` watch), and
//! every other stream is closed. The session's stream is never closed by the relay. New streams
//! are still relayed, because the client re-opens its stream when the old one broke (a
//! port-forward that dropped, a cut that outlasted TCP): its packets on the new stream arrive
//! from a new relay socket, which to QUIC is a path change of the same connection (migration,
//! which only the pinned client's packets can cause), and the control loop names the new
//! address, which closes the old stream. A stream that has not become the session within
//! [`RelayLimits::unclaimed`] is closed, and at most [`RelayLimits::streams`] are relayed at
//! once; one more evicts the oldest that is not the session's ([`Slots`], the decisions
//! without I/O), so a stranger who holds streams open delays the real client by at most the
//! time it takes him to open that many, and never closes the session's.
//!
//! The listener and the relay's sockets are made in the agent's own network namespace, before
//! it enters the target's, like the QUIC socket, so that all of them stay reachable by each
//! other and by the client. That is why the sockets are a fixed pool made at start, which is
//! also the cap on streams. A socket is emptied of stale datagrams before it serves another
//! stream.
//!
//! Loss: a datagram the relay cannot hand on (the stream's writer is behind and the relay
//! socket's receive buffer is full) is dropped by the kernel, as a router would drop it; QUIC
//! recovers it and slows down. The client's side pushes back instead (`stream_socket`).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mirrord_net_protocol::stream_datagrams::{self, Decoder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// Bytes of frames gathered before one write to the stream (a busy downlink batches datagrams
/// into few writes).
const WRITE_BATCH: usize = 256 * 1024;
/// Bytes asked of each stream read.
const READ_CHUNK: usize = 256 * 1024;

/// How many streams are relayed at once and how long one may go without becoming the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayLimits {
    /// Streams relayed at once (one relay socket each).
    pub streams: usize,
    /// How long a stream may be relayed before the control loop has accepted a client on it.
    pub unclaimed: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        Self {
            streams: 16,
            // As long as the client waits for its handshake.
            unclaimed: Duration::from_secs(10),
        }
    }
}

/// The relay's sockets, bound (in the agent's own namespace) and not yet serving.
#[derive(Debug)]
pub struct StreamRelay {
    listener: std::net::TcpListener,
    sockets: Vec<std::net::UdpSocket>,
    limits: RelayLimits,
}

/// How the control loop recognises a client that came through the relay: its QUIC peer
/// address is one of the relay's sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPeers(Vec<SocketAddr>);

impl StreamPeers {
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.0.contains(&addr)
    }
}

impl StreamRelay {
    /// Listens on TCP at `quic_addr` (the QUIC socket's bound address and port) and makes the
    /// relay's UDP sockets, each connected to the QUIC socket.
    pub fn bind(quic_addr: SocketAddr, limits: RelayLimits) -> anyhow::Result<Self> {
        anyhow::ensure!(
            limits.streams > 0,
            "the stream relay needs at least one stream"
        );
        let listener = std::net::TcpListener::bind(quic_addr)
            .with_context(|| format!("cannot listen on TCP {quic_addr}"))?;
        let target = reachable(quic_addr);
        let sockets = (0..limits.streams)
            .map(|_| {
                let socket = std::net::UdpSocket::bind((target.ip(), 0)).with_context(|| {
                    format!("cannot make the stream relay's socket on {}", target.ip())
                })?;
                mirrord_net_protocol::transport::enlarge_socket_buffers(&socket);
                socket
                    .connect(target)
                    .with_context(|| format!("cannot aim the stream relay at {target}"))?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener,
            sockets,
            limits,
        })
    }

    /// The addresses the QUIC endpoint sees relayed clients at.
    pub fn peers(&self) -> anyhow::Result<StreamPeers> {
        let addrs = self
            .sockets
            .iter()
            .map(|socket| socket.local_addr())
            .collect::<std::io::Result<_>>()?;
        Ok(StreamPeers(addrs))
    }

    /// Accepts stream connections and relays them until the task is dropped. `claimed` names
    /// the session's client once the control loop has accepted it (see the module comment).
    /// Must run inside the tokio runtime.
    pub async fn serve(
        self,
        mut claimed: watch::Receiver<Option<SocketAddr>>,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        let mut addrs = Vec::with_capacity(self.sockets.len());
        let mut sockets = Vec::with_capacity(self.sockets.len());
        for socket in self.sockets {
            addrs.push(socket.local_addr()?);
            sockets.push(Arc::new(tokio::net::UdpSocket::from_std(socket)?));
        }
        let mut slots = Slots::new(sockets.len(), self.limits.unclaimed);
        let mut tasks: HashMap<u64, tokio::task::AbortHandle> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut watching = true;
        loop {
            let deadline = slots.next_deadline();
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of descriptors or the like: try again shortly.
                            tracing::warn!("stream relay: accepting: {err}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    match slots.admit(Instant::now()) {
                        Admission::Refuse => {
                            tracing::debug!(%peer, "stream refused: the session has its client");
                        }
                        Admission::Relay { id, slot, evict } => {
                            if let Some(victim) = evict {
                                tracing::debug!(stream = victim, "stream evicted for a newer one");
                                tasks.remove(&victim).inspect(|task| task.abort());
                            }
                            tracing::debug!(%peer, stream = id, "stream client connected");
                            let _ = stream.set_nodelay(true);
                            let socket = sockets[slot].clone();
                            drain(&socket);
                            let done = Done { id, tx: done_tx.clone() };
                            let task = tokio::spawn(async move {
                                let _done = done;
                                relay(stream, socket).await;
                            });
                            tasks.insert(id, task.abort_handle());
                        }
                    }
                }
                Some(id) = done_rx.recv() => {
                    slots.release(id);
                    tasks.remove(&id);
                }
                changed = claimed.changed(), if watching => {
                    let client = match changed {
                        Ok(()) => *claimed.borrow_and_update(),
                        Err(_) => None,
                    };
                    if changed.is_err() {
                        watching = false;
                    }
                    if let Some(client) = client {
                        let slot = addrs.iter().position(|addr| *addr == client);
                        for id in slots.claim(slot) {
                            tracing::debug!(stream = id, "stream closed: the session has its client");
                            tasks.remove(&id).inspect(|task| task.abort());
                        }
                    }
                }
                () = sleep_until(deadline) => {
                    for id in slots.expired(Instant::now()) {
                        tracing::debug!(stream = id, "stream closed: no session on it in time");
                        tasks.remove(&id).inspect(|task| task.abort());
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// Tells the serve loop that a relay task has ended, however it ended.
struct Done {
    id: u64,
    tx: mpsc::UnboundedSender<u64>,
}

impl Drop for Done {
    fn drop(&mut self) {
        let _ = self.tx.send(self.id);
    }
}

/// Empties a relay socket of datagrams the QUIC socket sent to its previous stream.
fn drain(socket: &tokio::net::UdpSocket) {
    let mut scratch = [0u8; 2048];
    for _ in 0..100_000 {
        if socket.try_recv(&mut scratch).is_err() {
            return;
        }
    }
}

/// What to do with a new stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Close it: every socket serves the session's stream.
    Refuse,
    /// Relay it as stream `id` through socket `slot`, after ending stream `evict`, which had
    /// that socket.
    Relay {
        id: u64,
        slot: usize,
        evict: Option<u64>,
    },
}

/// Which stream has which relay socket, and until when: the relay's decisions, without I/O.
#[derive(Debug)]
pub struct Slots {
    free: Vec<usize>,
    /// Streams being relayed, oldest first: (id, slot, deadline; none for the session's).
    active: VecDeque<(u64, usize, Option<Instant>)>,
    next_id: u64,
    unclaimed: Duration,
}

impl Slots {
    pub fn new(sockets: usize, unclaimed: Duration) -> Self {
        Self {
            free: (0..sockets).rev().collect(),
            active: VecDeque::new(),
            next_id: 0,
            unclaimed,
        }
    }

    /// A new stream at `now`: a free socket, else that of the oldest stream that is not the
    /// session's.
    pub fn admit(&mut self, now: Instant) -> Admission {
        let (slot, evict) = match self.free.pop() {
            Some(slot) => (slot, None),
            None => {
                let oldest = self
                    .active
                    .iter()
                    .position(|(_, _, deadline)| deadline.is_some());
                match oldest.and_then(|at| self.active.remove(at)) {
                    Some((victim, slot, _)) => (slot, Some(victim)),
                    None => return Admission::Refuse,
                }
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        self.active
            .push_back((id, slot, Some(now + self.unclaimed)));
        Admission::Relay { id, slot, evict }
    }

    /// Stream `id` has ended (a stream already evicted or closed changes nothing).
    pub fn release(&mut self, id: u64) {
        if let Some(at) = self.active.iter().position(|(active, ..)| *active == id) {
            let (_, slot, _) = self.active.remove(at).expect("position is in range");
            self.free.push(slot);
        }
    }

    /// The session's client is the stream on `slot` (none: it came over UDP), now or again
    /// after it moved to a new stream. Returns the streams to close: all others.
    pub fn claim(&mut self, slot: Option<usize>) -> Vec<u64> {
        let mut closed = Vec::new();
        let active = std::mem::take(&mut self.active);
        for (id, at, _) in active {
            if Some(at) == slot {
                self.active.push_back((id, at, None));
            } else {
                closed.push(id);
                self.free.push(at);
            }
        }
        closed
    }

    /// The streams whose time to become the session has run out at `now`; they are released.
    pub fn expired(&mut self, now: Instant) -> Vec<u64> {
        let expired: Vec<u64> = self
            .active
            .iter()
            .filter(|(_, _, deadline)| deadline.is_some_and(|deadline| deadline <= now))
            .map(|(id, ..)| *id)
            .collect();
        for id in &expired {
            self.release(*id);
        }
        expired
    }

    /// When the next stream's time runs out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active
            .iter()
            .filter_map(|(_, _, deadline)| *deadline)
            .min()
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

    const TEN: Duration = Duration::from_secs(10);

    fn relayed(admission: Admission) -> (u64, usize, Option<u64>) {
        match admission {
            Admission::Relay { id, slot, evict } => (id, slot, evict),
            Admission::Refuse => panic!("refused"),
        }
    }

    #[test]
    fn streams_get_sockets_of_their_own_and_the_oldest_makes_room() {
        let now = Instant::now();
        let mut slots = Slots::new(2, TEN);
        let (a, slot_a, _) = relayed(slots.admit(now));
        let (b, slot_b, _) = relayed(slots.admit(now));
        assert_ne!(slot_a, slot_b);
        let (c, slot_c, evict) = relayed(slots.admit(now));
        assert_eq!((slot_c, evict), (slot_a, Some(a)));
        // The evicted stream's end frees nothing: its socket is c's.
        slots.release(a);
        let (_, _, evict) = relayed(slots.admit(now));
        assert_eq!(evict, Some(b));
        slots.release(c);
        let (_, slot, evict) = relayed(slots.admit(now));
        assert_eq!((slot, evict), (slot_c, None));
    }

    #[test]
    fn the_claim_closes_every_other_stream_and_the_sessions_is_never_evicted() {
        let now = Instant::now();
        let mut slots = Slots::new(2, TEN);
        let (a, _, _) = relayed(slots.admit(now));
        let (b, slot_b, _) = relayed(slots.admit(now));
        assert_eq!(slots.claim(Some(slot_b)), vec![a]);
        // The client's stream never runs out of time.
        assert_eq!(slots.next_deadline(), None);
        assert!(slots.expired(now + TEN * 100).is_empty());
        // A new stream (a stranger, or the client re-opening) gets the free socket, and the
        // one after it evicts that one, never the session's.
        let (c, _, evict) = relayed(slots.admit(now));
        assert_eq!(evict, None);
        let (_, _, evict) = relayed(slots.admit(now));
        assert_eq!(evict, Some(c));
        assert_eq!(slots.next_deadline(), Some(now + TEN));
        let _ = b;
    }

    #[test]
    fn with_only_the_sessions_stream_a_new_one_is_refused() {
        let now = Instant::now();
        let mut slots = Slots::new(1, TEN);
        let (_, slot, _) = relayed(slots.admit(now));
        assert!(slots.claim(Some(slot)).is_empty());
        assert_eq!(slots.admit(now), Admission::Refuse);
    }

    #[test]
    fn a_client_that_moved_to_a_new_stream_closes_its_old_one() {
        let now = Instant::now();
        let mut slots = Slots::new(4, TEN);
        let (old, slot_old, _) = relayed(slots.admit(now));
        assert!(slots.claim(Some(slot_old)).is_empty());
        let (new, slot_new, _) = relayed(slots.admit(now));
        let (stranger, _, _) = relayed(slots.admit(now));
        assert_eq!(slots.claim(Some(slot_new)), vec![old, stranger]);
        assert_eq!(slots.next_deadline(), None);
        let _ = new;
    }

    #[test]
    fn a_udp_client_closes_every_stream() {
        let now = Instant::now();
        let mut slots = Slots::new(2, TEN);
        let (a, _, _) = relayed(slots.admit(now));
        assert_eq!(slots.claim(None), vec![a]);
        // Later streams are strangers' and run out of time.
        let (b, _, _) = relayed(slots.admit(now));
        assert_eq!(slots.expired(now + TEN), vec![b]);
    }

    #[test]
    fn streams_that_do_not_become_the_session_run_out_of_time() {
        let now = Instant::now();
        let mut slots = Slots::new(2, TEN);
        let (a, _, _) = relayed(slots.admit(now));
        let (b, _, _) = relayed(slots.admit(now + Duration::from_secs(5)));
        assert_eq!(slots.next_deadline(), Some(now + TEN));
        assert!(slots.expired(now + Duration::from_secs(9)).is_empty());
        assert_eq!(slots.expired(now + TEN), vec![a]);
        assert_eq!(slots.next_deadline(), Some(now + Duration::from_secs(15)));
        // a's socket is free again.
        let (_, _, evict) = relayed(slots.admit(now + TEN));
        assert_eq!(evict, None);
        let _ = b;
    }

    /// A stand-in QUIC socket at which every stream's frames arrive as datagrams from an
    /// address of its own, and whose answers go back to that stream only.
    #[tokio::test]
    async fn streams_are_relayed_at_once_each_from_its_own_address() {
        tokio::time::timeout(Duration::from_secs(20), concurrent_round_trips())
            .await
            .expect("the relay round trips finish");
    }

    async fn quic_and_relay(
        limits: RelayLimits,
    ) -> (
        tokio::net::UdpSocket,
        SocketAddr,
        StreamPeers,
        watch::Sender<Option<SocketAddr>>,
    ) {
        // Buffers as large as the agent's: the test reads only after sending everything.
        let quic = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        mirrord_net_protocol::transport::enlarge_socket_buffers(&quic);
        quic.set_nonblocking(true).unwrap();
        let quic = tokio::net::UdpSocket::from_std(quic).unwrap();
        let relay = StreamRelay::bind(quic.local_addr().unwrap(), limits).unwrap();
        let listen = relay.listener.local_addr().unwrap();
        assert_eq!(listen, quic.local_addr().unwrap());
        let peers = relay.peers().unwrap();
        let (claim, claimed) = watch::channel(None);
        tokio::spawn(relay.serve(claimed));
        (quic, listen, peers, claim)
    }

    async fn concurrent_round_trips() {
        let (quic, listen, peers, claim) = quic_and_relay(RelayLimits::default()).await;
        let mut first = tokio::net::TcpStream::connect(listen).await.unwrap();
        let mut second = tokio::net::TcpStream::connect(listen).await.unwrap();

        let sent: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + 3000 * i as usize]).collect();
        let mut wire = Vec::new();
        for datagram in &sent {
            stream_datagrams::encode_into(datagram, &mut wire).unwrap();
        }
        let mut buf = vec![0u8; 65_536];
        let mut from_first = None;
        for client in [&mut first, &mut second] {
            client.write_all(&wire).await.unwrap();
            let mut from = None;
            for datagram in &sent {
                let (n, sender) = quic.recv_from(&mut buf).await.unwrap();
                assert!(peers.contains(sender), "{sender} is not a relay socket");
                assert!(
                    from.is_none_or(|from| from == sender),
                    "one address per stream"
                );
                from = Some(sender);
                assert_eq!(&buf[..n], &datagram[..]);
                quic.send_to(&buf[..n], sender).await.unwrap();
            }
            let mut back = vec![0u8; wire.len()];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(back, wire);
            assert_ne!(from, from_first, "the streams share an address");
            from_first = from;
        }

        // The second stream becomes the session: the first is closed.
        claim.send(from_first).unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(
            first.read(&mut byte).await.unwrap(),
            0,
            "first stream closed"
        );
        second.write_all(&wire[..wire.len() / 2]).await.unwrap();
        let (_, sender) = quic.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            Some(sender),
            from_first,
            "the session's stream still relays"
        );

        // The client moves to a new stream: once it is named, the old one is closed.
        let mut third = tokio::net::TcpStream::connect(listen).await.unwrap();
        third.write_all(&wire[..wire.len() / 2]).await.unwrap();
        let moved = loop {
            let (_, sender) = quic.recv_from(&mut buf).await.unwrap();
            if Some(sender) != from_first {
                break sender;
            }
        };
        assert!(peers.contains(moved));
        claim.send(Some(moved)).unwrap();
        assert_eq!(
            second.read(&mut byte).await.unwrap_or(0),
            0,
            "old stream closed"
        );
        quic.send_to(b"back", moved).await.unwrap();
        let mut back = vec![0u8; stream_datagrams::frame_len(4)];
        third.read_exact(&mut back).await.unwrap();
        assert_eq!(&back[2..], b"back");
    }

    /// More streams than sockets: the oldest goes, the newest is relayed.
    #[tokio::test]
    async fn a_stream_beyond_the_cap_replaces_the_oldest() {
        let limits = RelayLimits {
            streams: 2,
            unclaimed: Duration::from_secs(10),
        };
        let run = async {
            let (quic, listen, _peers, _claim) = quic_and_relay(limits).await;
            let mut streams = Vec::new();
            for _ in 0..3 {
                streams.push(tokio::net::TcpStream::connect(listen).await.unwrap());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut byte = [0u8; 1];
            assert_eq!(
                streams[0].read(&mut byte).await.unwrap_or(0),
                0,
                "oldest closed"
            );
            let mut wire = Vec::new();
            stream_datagrams::encode_into(b"newest", &mut wire).unwrap();
            streams[2].write_all(&wire).await.unwrap();
            let mut buf = [0u8; 64];
            let n = quic.recv(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"newest");
        };
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("finished");
    }

    #[tokio::test]
    async fn a_stream_that_does_not_become_the_session_is_closed() {
        let limits = RelayLimits {
            streams: 2,
            unclaimed: Duration::from_millis(300),
        };
        let run = async {
            let (_quic, listen, _peers, _claim) = quic_and_relay(limits).await;
            let started = Instant::now();
            let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.unwrap_or(0), 0);
            assert!(started.elapsed() >= Duration::from_millis(300));
        };
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("finished");
    }
}
