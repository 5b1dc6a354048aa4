//! The smoltcp `phy::Device` of the stack, and the queue of packets waiting for the tunnel.
//!
//! What maps to what: smoltcp sees one IP-medium device. Its receive side is a single slot
//! that the TCP code fills with exactly one inbound packet right before it asks the
//! interface to process it (each TCP flow has its own socket set, so the flow table decides
//! which socket a packet reaches, not a linear scan in smoltcp). Its transmit side appends to
//! [`TxQueue`], which the tunnel drains; UDP and ICMP replies, built without smoltcp, go
//! into the same queue so all output keeps one order and one limit.
//!
//! Backpressure: `transmit()` (smoltcp's egress path, i.e. new TCP data) refuses a token once
//! the queue holds `high` bytes and records the refusal; the TCP code then parks the flow
//! until the tunnel has drained the queue below `low`. smoltcp keeps unsent data in the
//! socket, so refusing costs nothing and nothing is dropped. Replies produced while
//! processing an inbound packet (smoltcp's ACKs and RSTs through `receive()`, the RSTs and
//! ICMP errors the flow tables build) are at most one small packet per inbound packet, but
//! the session decides how many inbound packets there are: a SYN flood towards refused or
//! capped destinations while the tunnel is slow would queue one reply per SYN without end.
//! So the queue has a hard bound above `high` ([`TxQueue::set_bound`]): a reply beyond it is
//! dropped and counted (`dropped_queue_full`, logged once); the session's TCP retransmits
//! what it still wants answered. New work never reaches the bound, since it stops at `high`.
//!
//! Buffers: small packets (ACKs, handshakes, small replies) are carved out of a shared
//! `BytesMut` arena; once the tunnel has dropped every packet of a chunk, `reserve` reclaims
//! it. Large packets (bulk TCP segments, up to the MTU) use buffers from a pool that return
//! to it when the tunnel drops them, so they need neither an allocation of their size nor
//! zeroing (a 64 KiB memset per segment showed in profiles); only their first bytes, where
//! headers and option padding go, are cleared. Inbound packets are the tunnel's own
//! `Bytes`, read in place.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::stats::Stats;

/// Size of one arena chunk that small outbound packets are carved from.
const ARENA_CHUNK: usize = 256 << 10;
/// Packets at least this long come from the buffer pool.
const POOLED_MIN: usize = 2048;
/// Free buffers the pool keeps (at most this many MTU-sized buffers stay allocated idle).
const POOL_MAX: usize = 64;
/// Bytes of a pooled buffer cleared before use: every header (IPv6 + TCP with options)
/// fits, so stale option padding never leaks into a packet.
const HEADROOM_CLEARED: usize = 128;

/// Recycled MTU-sized buffers for large packets.
#[derive(Debug, Default)]
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

/// A pooled buffer lent to a `Bytes`; goes back to the pool when the last clone drops.
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if let Ok(mut free) = self.pool.free.lock() {
            if free.len() < POOL_MAX {
                free.push(buf);
            }
        }
    }
}

/// Packets built by the stack, waiting for the tunnel.
#[derive(Debug)]
pub struct TxQueue {
    packets: VecDeque<Bytes>,
    bytes: usize,
    arena: BytesMut,
    pool: Arc<Pool>,
    /// Size of pooled buffers: the largest packet the stack builds.
    pooled_size: usize,
    high: usize,
    low: usize,
    refused: bool,
    /// Bytes beyond which replies are dropped, and where their drops are counted.
    bound: usize,
    stats: Option<Arc<Stats>>,
    /// Where a dropped reply is written, so smoltcp's token still has a buffer.
    scratch: Vec<u8>,
    /// Whether a drop has been logged.
    drop_logged: bool,
}

impl TxQueue {
    /// A queue that pushes back at `high` queued bytes and releases at `low`.
    pub(crate) fn new(high: usize, low: usize) -> Self {
        Self {
            packets: VecDeque::new(),
            bytes: 0,
            arena: BytesMut::new(),
            pool: Arc::default(),
            pooled_size: 0,
            high,
            low: low.min(high),
            refused: false,
            bound: usize::MAX,
            stats: None,
            scratch: Vec::new(),
            drop_logged: false,
        }
    }

    /// Drops replies once `bound` bytes are queued (at least the high-water mark), counting
    /// each drop in `stats`.
    pub(crate) fn set_bound(&mut self, bound: usize, stats: Arc<Stats>) {
        self.bound = bound.max(self.high);
        self.stats = Some(stats);
    }

    /// Whether a reply to an inbound packet may be queued; when not, counts it as dropped.
    pub(crate) fn admit_reply(&mut self) -> bool {
        if self.bytes < self.bound {
            return true;
        }
        if let Some(stats) = &self.stats {
            Stats::inc(&stats.dropped_queue_full);
        }
        if !std::mem::replace(&mut self.drop_logged, true) {
            tracing::warn!(
                queued = self.bytes,
                bound = self.bound,
                "the queue towards the session is full; dropping replies to inbound packets \
                 (counted as dropped_queue_full)"
            );
        }
        false
    }

    /// Number of queued packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// Whether no packet is queued.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Total bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The oldest queued packet.
    pub fn front(&self) -> Option<&Bytes> {
        self.packets.front()
    }

    /// Removes and returns the oldest queued packet.
    pub fn pop_front(&mut self) -> Option<Bytes> {
        let pkt = self.packets.pop_front()?;
        self.bytes -= pkt.len();
        Some(pkt)
    }

    /// Whether new work may add packets (below the high-water mark).
    pub(crate) fn has_room(&self) -> bool {
        self.bytes < self.high
    }

    /// Whether the queue has drained enough to resume parked producers.
    pub(crate) fn below_low(&self) -> bool {
        self.bytes <= self.low
    }

    /// Clears the "a transmit was refused" flag before a producer runs.
    pub(crate) fn clear_refused(&mut self) {
        self.refused = false;
    }

    /// Whether a transmit was refused since [`clear_refused`](Self::clear_refused).
    pub(crate) fn was_refused(&self) -> bool {
        self.refused
    }

    /// Appends one packet of `len` bytes written by `fill`, which must write every byte
    /// past the first 128 (those are zeroed; beyond them the buffer may hold an old
    /// packet). Always succeeds: callers check [`has_room`](Self::has_room) before
    /// producing new work.
    pub(crate) fn push_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> R {
        let (pkt, result) = if len >= POOLED_MIN {
            let recycled = self.pool.free.lock().ok().and_then(|mut f| f.pop());
            let mut buf = match recycled {
                Some(buf) if buf.len() >= len => buf,
                _ => {
                    self.pooled_size = self.pooled_size.max(len);
                    vec![0; self.pooled_size]
                }
            };
            buf[..HEADROOM_CLEARED].fill(0);
            let result = fill(&mut buf[..len]);
            let owner = Pooled {
                buf,
                len,
                pool: self.pool.clone(),
            };
            (Bytes::from_owner(owner), result)
        } else {
            if self.arena.capacity() < len {
                self.arena.reserve(ARENA_CHUNK);
            }
            self.arena.resize(len, 0);
            let result = fill(&mut self.arena[..len]);
            (self.arena.split_to(len).freeze(), result)
        };
        self.bytes += pkt.len();
        self.packets.push_back(pkt);
        result
    }
}

impl TxQueue {
    /// Puts a packet back at the front (the tunnel re-queues what it had to split).
    pub(crate) fn push_front_bytes(&mut self, pkt: Bytes) {
        self.bytes += pkt.len();
        self.packets.push_front(pkt);
    }

    /// Removes and returns the newest queued packet.
    pub(crate) fn pop_back(&mut self) -> Option<Bytes> {
        let pkt = self.packets.pop_back()?;
        self.bytes -= pkt.len();
        Some(pkt)
    }
}

/// The device smoltcp polls: one inbound slot, the outbound queue.
pub(crate) struct LinkDevice {
    /// The packet the next `receive()` hands to smoltcp.
    pub rx: Option<Bytes>,
    pub tx: TxQueue,
    mtu: usize,
    /// Whether the link tells the session's kernel that TCP checksums need no check, so
    /// smoltcp leaves them out (see [`set_tcp_checksum_trusted`](Self::set_tcp_checksum_trusted)).
    tcp_checksum_trusted: bool,
}

impl LinkDevice {
    pub(crate) fn new(mtu: usize, tx: TxQueue) -> Self {
        Self {
            rx: None,
            tx,
            mtu,
            tcp_checksum_trusted: false,
        }
    }

    /// Stops smoltcp from computing TCP checksums: for a link that marks every packet it
    /// delivers as checked (a TUN with virtio-net headers, `VIRTIO_NET_HDR_F_NEEDS_CSUM`).
    /// Must be set before the interface is made: smoltcp reads the capabilities once.
    pub(crate) fn set_tcp_checksum_trusted(&mut self, trusted: bool) {
        self.tcp_checksum_trusted = trusted;
    }

    pub(crate) fn mtu(&self) -> usize {
        self.mtu
    }

    pub(crate) fn set_mtu(&mut self, mtu: usize) {
        self.mtu = mtu;
    }
}

impl phy::Device for LinkDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let pkt = self.rx.take()?;
        // smoltcp may answer any inbound packet; beyond the bound that answer is dropped.
        let drop = !self.tx.admit_reply();
        Some((
            RxToken(pkt),
            TxToken(&mut self.tx, self.tcp_checksum_trusted, drop),
        ))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if !self.tx.has_room() {
            self.tx.refused = true;
            return None;
        }
        Some(TxToken(&mut self.tx, self.tcp_checksum_trusted, false))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Inbound packets come from the session's own kernel over an authenticated tunnel;
        // verifying their transport checksums again would only cost time (and would reject
        // packets whose checksum a TUN offload left partial). Outbound checksums are
        // computed, since the session's kernel verifies them, except TCP's on a link whose
        // packets the kernel takes as checked (the IPv4 header checksum is verified whatever
        // the link says, and ICMP and UDP are built outside smoltcp).
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Both;
        checksum.tcp = if self.tcp_checksum_trusted {
            Checksum::None
        } else {
            Checksum::Tx
        };
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

pub(crate) struct RxToken(Bytes);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

/// The queue, whether TCP checksums are left partial (see
/// [`LinkDevice::set_tcp_checksum_trusted`]), and whether the packet is to be dropped (a
/// reply beyond the queue's bound: smoltcp writes it into scratch space, nothing is queued).
pub(crate) struct TxToken<'a>(&'a mut TxQueue, bool, bool);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if self.2 {
            let scratch = &mut self.0.scratch;
            scratch.clear();
            scratch.resize(len, 0);
            return f(scratch);
        }
        let partial = self.1;
        self.0.push_with(len, |buf| {
            let result = f(buf);
            if partial {
                set_tcp_pseudo_header_sum(buf);
            }
            result
        })
    }
}

/// Puts the pseudo-header sum (not complemented) in the checksum field of `packet` if it is
/// TCP: a partial checksum as an offloading NIC expects it (`CHECKSUM_PARTIAL`). The kernel
/// takes such a packet as checked when it delivers it locally, and completes the sum over
/// the segment should it ever send it on.
pub(crate) fn set_tcp_pseudo_header_sum(packet: &mut [u8]) {
    use smoltcp::wire::{checksum, IpProtocol};
    use std::net::{Ipv4Addr, Ipv6Addr};
    let Some(&first) = packet.first() else {
        return;
    };
    let (offset, sum) = match first >> 4 {
        4 if packet.len() >= 20 && packet[9] == 6 => {
            let hl = usize::from(first & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([packet[2], packet[3]]));
            let src = Ipv4Addr::from(<[u8; 4]>::try_from(&packet[12..16]).unwrap());
            let dst = Ipv4Addr::from(<[u8; 4]>::try_from(&packet[16..20]).unwrap());
            let len = total.saturating_sub(hl) as u32;
            (
                hl + 16,
                checksum::pseudo_header_v4(&src, &dst, IpProtocol::Tcp, len),
            )
        }
        6 if packet.len() >= 40 && packet[6] == 6 => {
            let len = u32::from(u16::from_be_bytes([packet[4], packet[5]]));
            let src = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[8..24]).unwrap());
            let dst = Ipv6Addr::from(<[u8; 16]>::try_from(&packet[24..40]).unwrap());
            (
                40 + 16,
                checksum::pseudo_header_v6(&src, &dst, IpProtocol::Tcp, len),
            )
        }
        _ => return,
    };
    if let Some(field) = packet.get_mut(offset..offset + 2) {
        field.copy_from_slice(&sum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device, TxToken as _};

    #[test]
    fn transmit_refuses_above_high_water_and_records_it() {
        let mut dev = LinkDevice::new(1500, TxQueue::new(3000, 1000));
        for _ in 0..2 {
            let tok = dev.transmit(Instant::ZERO).expect("room");
            tok.consume(1500, |buf| buf.fill(7));
        }
        assert_eq!(dev.tx.bytes(), 3000);
        assert!(!dev.tx.was_refused());
        assert!(dev.transmit(Instant::ZERO).is_none());
        assert!(dev.tx.was_refused());
        // Replies to inbound packets still pass.
        dev.rx = Some(Bytes::from_static(&[0x45]));
        assert!(dev.receive(Instant::ZERO).is_some());
        dev.tx.pop_front();
        assert!(!dev.tx.below_low());
        dev.tx.pop_front();
        assert!(dev.tx.below_low());
        assert!(dev.tx.is_empty());
    }

    #[test]
    fn replies_beyond_the_bound_are_dropped_and_counted() {
        let stats = Arc::new(Stats::default());
        let mut dev = LinkDevice::new(1500, TxQueue::new(1000, 500));
        dev.tx.set_bound(2000, stats.clone());
        // Replies pass the high-water mark, up to the bound.
        for _ in 0..4 {
            dev.rx = Some(Bytes::from_static(&[0x45]));
            let (_, tok) = dev.receive(Instant::ZERO).expect("a packet");
            tok.consume(500, |buf| buf.fill(1));
        }
        assert_eq!(dev.tx.bytes(), 2000);
        assert!(
            dev.transmit(Instant::ZERO).is_none(),
            "new work stopped long ago"
        );
        // The next reply is written into scratch space and dropped.
        dev.rx = Some(Bytes::from_static(&[0x45]));
        let (_, tok) = dev.receive(Instant::ZERO).expect("a packet");
        let seen = tok.consume(40, |buf| {
            buf.fill(2);
            buf.len()
        });
        assert_eq!(
            seen, 40,
            "smoltcp still gets a buffer of the size it asked for"
        );
        assert_eq!(dev.tx.bytes(), 2000);
        assert_eq!(dev.tx.len(), 4);
        // RSTs and ICMP errors the flow tables build are refused the same way.
        assert!(!dev.tx.admit_reply());
        assert_eq!(stats.snapshot().dropped_queue_full, 2);
        // Once the tunnel drains, replies pass again.
        dev.tx.pop_front();
        assert!(dev.tx.admit_reply());
        assert_eq!(stats.snapshot().dropped_queue_full, 2);
    }

    #[test]
    fn the_bound_is_never_below_the_high_water_mark() {
        let mut q = TxQueue::new(1000, 500);
        q.set_bound(10, Arc::default());
        q.push_with(999, |b| b.fill(0));
        assert!(q.admit_reply());
        q.push_with(1, |b| b.fill(0));
        assert!(!q.admit_reply());
    }

    #[test]
    fn arena_chunks_are_reclaimed_once_packets_are_dropped() {
        let mut q = TxQueue::new(usize::MAX, 0);
        q.push_with(1000, |b| b.fill(1));
        let first = q.front().unwrap().as_ptr();
        q.pop_front();
        // Cycle through more than a chunk's worth with every packet dropped as soon as it
        // is queued: the chunk comes back instead of a new allocation.
        let mut reused = false;
        for i in 0..2 * (ARENA_CHUNK / 1000) {
            q.push_with(1000, |b| b.fill(i as u8));
            let pkt = q.pop_front().unwrap();
            assert!(pkt.iter().all(|&b| b == i as u8));
            reused |= pkt.as_ptr() == first;
        }
        assert!(reused);

        // A packet still held elsewhere keeps its chunk: the arena moves to a new one.
        let held = {
            q.push_with(1000, |b| b.fill(9));
            q.pop_front().unwrap()
        };
        let mut moved = false;
        for _ in 0..2 * (ARENA_CHUNK / 1000) {
            q.push_with(1000, |b| b.fill(0));
            let pkt = q.pop_front().unwrap();
            let start = held.as_ptr() as usize;
            let p = pkt.as_ptr() as usize;
            moved |= p < start.saturating_sub(ARENA_CHUNK) || p > start + ARENA_CHUNK;
        }
        assert!(moved);
        assert!(held.iter().all(|&b| b == 9), "the held packet is intact");
    }

    #[test]
    fn large_packets_reuse_pooled_buffers_with_clean_headers() {
        let mut q = TxQueue::new(usize::MAX, 0);
        q.push_with(9000, |b| b.fill(0xee));
        let first = q.pop_front().unwrap();
        let addr = first.as_ptr();
        assert_eq!(first.len(), 9000);
        drop(first);

        // The buffer comes back, with its header area cleared for the next packet.
        let seen = q.push_with(5000, |b| {
            (b[..HEADROOM_CLEARED].iter().all(|&x| x == 0), b[200])
        });
        assert_eq!(seen, (true, 0xee), "only the header area is cleared");
        let second = q.pop_front().unwrap();
        assert_eq!(second.as_ptr(), addr);
        assert_eq!(second.len(), 5000);

        // While a packet is held, the next one gets another buffer.
        q.push_with(5000, |b| b.fill(1));
        let third = q.pop_front().unwrap();
        assert_ne!(third.as_ptr(), addr);
        assert!(second.iter().all(|&x| x == 0xee || x == 0));
    }

    #[test]
    fn a_partial_tcp_checksum_completes_to_the_full_one() {
        use smoltcp::wire::{checksum, IpAddress, Ipv4Packet, Ipv6Packet, TcpPacket};
        for (packet, hl) in [
            (
                hex(
                    "45000028000040004006000a0a0000010a000002\
                     1f90c00100000001000000025010200000000000",
                ),
                20,
            ),
            (
                hex(
                    "6000000000140640fd000000000000000000000000000001fd000000000000000000000000000002\
                     1f90c00100000001000000025010200000000000",
                ),
                40,
            ),
        ] {
            let mut packet = packet;
            set_tcp_pseudo_header_sum(&mut packet);
            // What an offloading NIC (or the kernel's skb_checksum_help) does with it.
            let sum = !checksum::data(&packet[hl..]);
            packet[hl + 16..hl + 18].copy_from_slice(&sum.to_be_bytes());
            let (src, dst) = if hl == 20 {
                let ip = Ipv4Packet::new_checked(&packet[..]).unwrap();
                (IpAddress::from(ip.src_addr()), IpAddress::from(ip.dst_addr()))
            } else {
                let ip = Ipv6Packet::new_checked(&packet[..]).unwrap();
                (IpAddress::from(ip.src_addr()), IpAddress::from(ip.dst_addr()))
            };
            let tcp = TcpPacket::new_checked(&packet[hl..]).unwrap();
            assert!(tcp.verify_checksum(&src, &dst), "{hl}-byte IP header");
        }
        // Not TCP: left alone.
        let mut udp = hex("4500001c000040004011000a0a0000010a000002003500350008abcd");
        let before = udp.clone();
        set_tcp_pseudo_header_sum(&mut udp);
        assert_eq!(udp, before);
    }

    fn hex(text: &str) -> Vec<u8> {
        let text: String = text.split_whitespace().collect();
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
