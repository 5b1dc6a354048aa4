//! The tunnel as the stack sees it: a source and a sink of whole IP packets.
//!
//! [`PacketLink`] is poll-based so the stack can wait on the tunnel, its timers and its
//! sockets from one task without spawning anything. Three implementations:
//!
//! * `QuinnLink` (used by [`serve`](super::serve)): one QUIC DATAGRAM per packet. Receiving
//!   drains datagrams quinn has already buffered without waiting; only when none is left does
//!   it park a boxed `read_datagram` future (one allocation per idle-to-busy transition, none
//!   per packet). Sending never uses `send_datagram`, which silently drops the *oldest*
//!   queued datagram when quinn's buffer is full (each such drop costs a TCP flow a 1 s
//!   retransmission timeout in smoltcp). It tries `send_datagram_wait` without waiting and,
//!   when quinn pushes back, parks that future; the stack's queue then fills and backpressure
//!   reaches the TCP sockets. If quinn's datagram size ever shrinks under the MTU the stack
//!   was given (black-hole detection lowers it), a packet it refuses as too large is split
//!   into IP fragments that fit, rather than dropped: established TCP flows keep their
//!   negotiated segment size and would otherwise stall for good.
//! * [`TunLink`](super::tun_link::TunLink): the session's TUN descriptor itself, for a
//!   local target whose client handed it over (no QUIC on the packet path).
//! * [`MemoryLink`]: an in-process pipe with a bounded outbound side, so tests can drive the
//!   whole stack without QUIC (and see backpressure work).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;

use super::device::TxQueue;
use super::stats::Stats;

/// Why the tunnel stopped.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The session ended normally (either side closed the connection).
    #[error("the tunnel was closed")]
    Closed,
    /// The QUIC connection failed (timed out, reset, protocol error).
    #[error("the QUIC connection failed")]
    Connection(#[source] quinn::ConnectionError),
    /// The QUIC connection cannot carry DATAGRAM frames.
    #[error("the QUIC connection cannot carry packets")]
    Datagrams(#[source] quinn::SendDatagramError),
    /// The session's TUN device failed (direct TUN link).
    #[error("the session's TUN device failed")]
    Tun(#[source] std::io::Error),
}

/// A bidirectional carrier of raw IP packets (IPv4 or IPv6, no extra header).
pub trait PacketLink: Send {
    /// The next inbound packet, or `Pending` with `cx` registered for wake-up.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, LinkError>>;

    /// Hands packets from the front of `queue` to the tunnel until the queue is empty
    /// (`Ready(Ok)`) or the tunnel pushes back (`Pending`, `cx` registered). Packets are
    /// never dropped for lack of room.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut TxQueue,
    ) -> Poll<Result<(), LinkError>>;

    /// The largest packet the link carries now, if it has shrunk below the size the stack
    /// was configured with. The stack then sizes what it builds to fit.
    fn mtu(&self) -> Option<usize> {
        None
    }

    /// Whether the packets the link delivers are taken as checked by the receiving kernel
    /// (a TUN with virtio-net headers writes TCP as `CHECKSUM_PARTIAL`), so the stack need not
    /// compute TCP checksums.
    fn tx_checksum_trusted(&self) -> bool {
        false
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A QUIC connection carrying packets as DATAGRAM frames.
pub(crate) struct QuinnLink {
    conn: quinn::Connection,
    recv: Option<BoxFuture<Result<Bytes, quinn::ConnectionError>>>,
    send: Option<BoxFuture<(Bytes, Result<(), quinn::SendDatagramError>)>>,
    stats: Arc<Stats>,
    /// The datagram size, as last learnt (quinn's lock makes asking per packet costly).
    max: usize,
    /// Whether `max` shrank below the size the stack was started with.
    shrunk: bool,
    ident: u32,
}

impl QuinnLink {
    pub fn new(conn: quinn::Connection, mtu: usize, stats: Arc<Stats>) -> Self {
        Self {
            conn,
            recv: None,
            send: None,
            stats,
            max: mtu,
            shrunk: false,
            ident: 0,
        }
    }
}

fn connection_error(e: quinn::ConnectionError) -> LinkError {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(_) | E::ConnectionClosed(_) | E::LocallyClosed => LinkError::Closed,
        other => LinkError::Connection(other),
    }
}

impl QuinnLink {
    /// Handles a send result for `pkt`: a packet too large for the (shrunk) datagram size
    /// goes back to the front of `queue` as fragments.
    fn sent(
        &mut self,
        queue: &mut TxQueue,
        pkt: &[u8],
        r: Result<(), quinn::SendDatagramError>,
    ) -> Result<(), LinkError> {
        use quinn::SendDatagramError as E;
        match r {
            Ok(()) => Ok(()),
            Err(E::TooLarge) => {
                let max = self.conn.max_datagram_size().unwrap_or(0);
                if max < self.max {
                    tracing::warn!(
                        from = self.max,
                        to = max,
                        "QUIC datagram size shrank; fragmenting larger packets"
                    );
                    self.max = max;
                    self.shrunk = true;
                }
                self.ident = self.ident.wrapping_add(1);
                let mut fragments = TxQueue::new(usize::MAX, 0);
                if pkt.len() <= max
                    || !super::packet::push_fragments(&mut fragments, max, self.ident, pkt)
                {
                    Stats::inc(&self.stats.dropped_too_large);
                    tracing::trace!(len = pkt.len(), max, "packet too large for the tunnel");
                }
                while let Some(frag) = fragments.pop_back() {
                    queue.push_front_bytes(frag);
                }
                Ok(())
            }
            Err(E::ConnectionLost(e)) => Err(connection_error(e)),
            Err(e) => Err(LinkError::Datagrams(e)),
        }
    }
}

impl PacketLink for QuinnLink {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, LinkError>> {
        if self.recv.is_none() {
            if let Some(r) = self.conn.read_datagram().now_or_never() {
                return Poll::Ready(r.map_err(connection_error));
            }
            let conn = self.conn.clone();
            self.recv = Some(Box::pin(async move { conn.read_datagram().await }));
        }
        let fut = self.recv.as_mut().expect("set above");
        match fut.as_mut().poll(cx) {
            Poll::Ready(r) => {
                self.recv = None;
                Poll::Ready(r.map_err(connection_error))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut TxQueue,
    ) -> Poll<Result<(), LinkError>> {
        loop {
            if let Some(fut) = self.send.as_mut() {
                let (pkt, r) = std::task::ready!(fut.as_mut().poll(cx));
                self.send = None;
                self.sent(queue, &pkt, r)?;
            }
            let Some(pkt) = queue.pop_front() else {
                return Poll::Ready(Ok(()));
            };
            match self.conn.send_datagram_wait(pkt.clone()).now_or_never() {
                Some(r) => self.sent(queue, &pkt, r)?,
                None => {
                    let conn = self.conn.clone();
                    self.send = Some(Box::pin(async move {
                        let r = conn.send_datagram_wait(pkt.clone()).await;
                        (pkt, r)
                    }));
                }
            }
        }
    }

    fn mtu(&self) -> Option<usize> {
        self.shrunk.then_some(self.max)
    }
}

#[derive(Debug, Default)]
struct PipeState {
    queue: VecDeque<Bytes>,
    closed: bool,
}

/// One direction of a [`MemoryLink`].
#[derive(Debug)]
struct Pipe {
    state: Mutex<PipeState>,
    capacity: usize,
    /// Largest packet carried (0: no limit); larger ones are split into IP fragments.
    mtu: std::sync::atomic::AtomicUsize,
    /// Woken when a packet is pushed or the pipe closes.
    readable: AtomicWaker,
    /// Woken when a packet is popped or the pipe closes.
    writable: AtomicWaker,
}

impl Pipe {
    fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            capacity,
            mtu: std::sync::atomic::AtomicUsize::new(0),
            readable: AtomicWaker::new(),
            writable: AtomicWaker::new(),
        })
    }

    fn close(&self) {
        self.state.lock().expect("pipe poisoned").closed = true;
        self.readable.wake();
        self.writable.wake();
    }

    fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.readable.register(cx.waker());
        let mut st = self.state.lock().expect("pipe poisoned");
        if let Some(pkt) = st.queue.pop_front() {
            drop(st);
            self.writable.wake();
            return Poll::Ready(Some(pkt));
        }
        if st.closed {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
}

/// The stack's end of an in-process link; see [`memory_link`].
#[derive(Debug)]
pub struct MemoryLink {
    inbound: Arc<Pipe>,
    outbound: Arc<Pipe>,
}

/// The other end of a [`MemoryLink`]: what a client (or a test) uses.
#[derive(Debug)]
pub struct MemoryPeer {
    inbound: Arc<Pipe>,
    outbound: Arc<Pipe>,
}

/// An in-process link whose stack-to-peer direction holds at most `capacity` packets before
/// the stack feels backpressure. The peer-to-stack direction is unbounded.
pub fn memory_link(capacity: usize) -> (MemoryLink, MemoryPeer) {
    let inbound = Pipe::new(usize::MAX);
    let outbound = Pipe::new(capacity.max(1));
    (
        MemoryLink {
            inbound: inbound.clone(),
            outbound: outbound.clone(),
        },
        MemoryPeer { inbound, outbound },
    )
}

impl PacketLink for MemoryLink {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, LinkError>> {
        self.inbound
            .poll_pop(cx)
            .map(|pkt| pkt.ok_or(LinkError::Closed))
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut TxQueue,
    ) -> Poll<Result<(), LinkError>> {
        self.outbound.writable.register(cx.waker());
        let mut st = self.outbound.state.lock().expect("pipe poisoned");
        if st.closed {
            return Poll::Ready(Err(LinkError::Closed));
        }
        let mut pushed = false;
        let mtu = self.outbound.mtu.load(std::sync::atomic::Ordering::Relaxed);
        while st.queue.len() < self.outbound.capacity {
            let Some(pkt) = queue.pop_front() else { break };
            if mtu != 0 && pkt.len() > mtu {
                // As the QUIC link does when its datagram size shrank.
                let mut fragments = TxQueue::new(usize::MAX, 0);
                super::packet::push_fragments(&mut fragments, mtu, 0, &pkt);
                while let Some(frag) = fragments.pop_back() {
                    queue.push_front_bytes(frag);
                }
                continue;
            }
            st.queue.push_back(pkt);
            pushed = true;
        }
        drop(st);
        if pushed {
            self.outbound.readable.wake();
        }
        if queue.is_empty() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    fn mtu(&self) -> Option<usize> {
        self.shrunk_mtu()
    }
}

impl MemoryLink {
    fn shrunk_mtu(&self) -> Option<usize> {
        match self.outbound.mtu.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            mtu => Some(mtu),
        }
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        self.inbound.close();
        self.outbound.close();
    }
}

impl MemoryPeer {
    /// Sends a packet to the stack.
    pub fn send(&self, pkt: Bytes) {
        self.inbound
            .state
            .lock()
            .expect("pipe poisoned")
            .queue
            .push_back(pkt);
        self.inbound.readable.wake();
    }

    /// A packet from the stack, if one is waiting.
    pub fn try_recv(&self) -> Option<Bytes> {
        let pkt = self
            .outbound
            .state
            .lock()
            .expect("pipe poisoned")
            .queue
            .pop_front();
        if pkt.is_some() {
            self.outbound.writable.wake();
        }
        pkt
    }

    /// Waits for the next packet from the stack; `None` once the stack has gone.
    pub async fn recv(&self) -> Option<Bytes> {
        std::future::poll_fn(|cx| self.outbound.poll_pop(cx)).await
    }

    /// Shrinks the largest packet the link carries towards the peer, as a QUIC path whose
    /// datagram size dropped does: larger packets arrive as IP fragments, and the stack
    /// sizes new packets to fit.
    pub fn set_mtu(&self, mtu: usize) {
        self.outbound
            .mtu
            .store(mtu, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends the session, as a client closing its connection does.
    pub fn close(&self) {
        self.inbound.close();
    }
}

impl Drop for MemoryPeer {
    fn drop(&mut self) {
        self.inbound.close();
        self.outbound.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn memory_link_pushes_back_when_the_peer_does_not_read() {
        let (mut link, peer) = memory_link(2);
        let mut q = TxQueue::new(usize::MAX, 0);
        for i in 0..3u8 {
            q.push_with(1, |b| b[0] = i);
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(link.poll_send(&mut cx, &mut q).is_pending());
        assert_eq!(q.len(), 1, "one packet waits in the stack's queue");
        assert_eq!(peer.try_recv().unwrap()[0], 0);
        assert!(matches!(
            link.poll_send(&mut cx, &mut q),
            Poll::Ready(Ok(()))
        ));
        assert_eq!(peer.try_recv().unwrap()[0], 1);
        assert_eq!(peer.try_recv().unwrap()[0], 2);
        assert!(peer.try_recv().is_none());

        peer.send(Bytes::from_static(b"x"));
        assert!(matches!(link.poll_recv(&mut cx), Poll::Ready(Ok(p)) if &p[..] == b"x"));
        assert!(link.poll_recv(&mut cx).is_pending());
        peer.close();
        assert!(matches!(
            link.poll_recv(&mut cx),
            Poll::Ready(Err(LinkError::Closed))
        ));
    }
}
