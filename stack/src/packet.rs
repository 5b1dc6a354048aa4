//! Reading the packets the session sends, and writing the ones the stack makes itself.
//!
//! Inbound: [`parse`] looks at each tunnel packet once and says which table it belongs to
//! (TCP segment, UDP datagram, ICMP echo request) with the flow key, or why it is dropped.
//! Fragments are dropped (the session's TUN MTU equals the datagram size, so its kernel
//! never fragments), as are IPv6 extension headers, multicast and broadcast, and ICMP other
//! than echo requests (a TUN's router solicitations and MLD reports have no one to go to).
//! Transport checksums are not verified: the packets come from the session's kernel over an
//! authenticated tunnel.
//!
//! Outbound, everything smoltcp does not write:
//! * [`push_tcp_reset`]: the RST a closed port answers a segment with (RFC 9293 3.10.7.1):
//!   `seq = SEG.ACK` if the segment had ACK, else `seq = 0, ack = SEG.SEQ + SEG.LEN` with
//!   ACK set. For a SYN that makes the session's `connect()` fail with ECONNREFUSED at once.
//! * [`push_unreachable`]: ICMP / ICMPv6 destination unreachable quoting the offending packet
//!   (as much as RFC 1812 / RFC 4443 allow), so the session's kernel finds the socket and
//!   reports EHOSTUNREACH, ENETUNREACH, ECONNREFUSED (port) or EACCES/EHOSTUNREACH
//!   (administratively prohibited).
//! * [`push_udp`] and [`push_echo_reply`]: replies from a destination. A reply larger than
//!   the tunnel MTU (a 4 KiB DNS answer on a 1400-byte tunnel) is fragmented, IPv4 or IPv6,
//!   rather than dropped; the session's kernel reassembles it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    checksum, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket,
    TcpSeqNumber, UdpPacket,
};

use super::device::TxQueue;

pub(crate) const IPV4_HEADER_LEN: usize = 20;
pub(crate) const IPV6_HEADER_LEN: usize = 40;
const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
const TCP_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;
const ICMP_HEADER_LEN: usize = 8;
const HOP_LIMIT: u8 = 64;

/// A TCP or UDP flow as the session sees it: its own endpoint and the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// An ICMP echo flow: who pings whom with which identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct EchoKey {
    pub client: IpAddr,
    pub server: IpAddr,
    pub ident: u16,
}

/// What the flow table needs to know about a TCP segment before smoltcp sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Segment {
    pub syn: bool,
    pub ack: bool,
    pub rst: bool,
    pub fin: bool,
    pub seq: u32,
    pub ack_number: u32,
    pub payload_len: usize,
}

impl Segment {
    /// A segment that opens a connection: SYN without ACK or RST.
    pub fn is_initial_syn(&self) -> bool {
        self.syn && !self.ack && !self.rst
    }

    /// Sequence space the segment occupies.
    pub fn len(&self) -> u32 {
        self.payload_len as u32 + u32::from(self.syn) + u32::from(self.fin)
    }
}

/// Why an inbound packet is not passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    Malformed,
    Fragment,
    Unsupported,
}

/// An inbound packet, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    Tcp {
        key: FlowKey,
        seg: Segment,
    },
    Udp {
        key: FlowKey,
        /// Where the UDP payload is in the packet.
        payload: Range<usize>,
    },
    Echo {
        key: EchoKey,
        seq: u16,
        /// Where the echo data is in the packet.
        data: Range<usize>,
    },
    Drop(DropReason),
}

/// Which ICMP destination-unreachable to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unreachable {
    /// No route to the network: ENETUNREACH.
    Net,
    /// The host does not answer: EHOSTUNREACH.
    Host,
    /// Nothing listens on the port (UDP): ECONNREFUSED.
    Port,
    /// A filter rejected it.
    Prohibited,
}

impl Unreachable {
    fn icmpv4_code(self) -> u8 {
        match self {
            Unreachable::Net => 0,
            Unreachable::Host => 1,
            Unreachable::Port => 3,
            Unreachable::Prohibited => 13,
        }
    }

    fn icmpv6_code(self) -> u8 {
        match self {
            Unreachable::Net => 0,
            Unreachable::Host => 3,
            Unreachable::Port => 4,
            Unreachable::Prohibited => 1,
        }
    }
}

fn unicast_v4(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast() || a.is_broadcast())
}

fn unicast_v6(a: Ipv6Addr) -> bool {
    !(a.is_unspecified() || a.is_multicast())
}

/// Classifies one inbound IP packet.
pub(crate) fn parse(pkt: &[u8]) -> Parsed {
    match pkt.first().map(|b| b >> 4) {
        Some(4) => parse_v4(pkt),
        Some(6) => parse_v6(pkt),
        _ => Parsed::Drop(DropReason::Malformed),
    }
}

fn parse_v4(pkt: &[u8]) -> Parsed {
    let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
        return Parsed::Drop(DropReason::Malformed);
    };
    if ip.more_frags() || ip.frag_offset() != 0 {
        return Parsed::Drop(DropReason::Fragment);
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if !unicast_v4(src) || !unicast_v4(dst) {
        return Parsed::Drop(DropReason::Unsupported);
    }
    let range = usize::from(ip.header_len())..usize::from(ip.total_len());
    transport(pkt, src.into(), dst.into(), ip.next_header(), range)
}

fn parse_v6(pkt: &[u8]) -> Parsed {
    let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
        return Parsed::Drop(DropReason::Malformed);
    };
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if !unicast_v6(src) || !unicast_v6(dst) {
        return Parsed::Drop(DropReason::Unsupported);
    }
    let range = IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(ip.payload_len());
    transport(pkt, src.into(), dst.into(), ip.next_header(), range)
}

fn transport(
    pkt: &[u8],
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    range: Range<usize>,
) -> Parsed {
    let body = &pkt[range.clone()];
    match (proto, src) {
        (IpProtocol::Tcp, _) => {
            let Ok(tcp) = TcpPacket::new_checked(body) else {
                return Parsed::Drop(DropReason::Malformed);
            };
            if tcp.src_port() == 0 || tcp.dst_port() == 0 {
                return Parsed::Drop(DropReason::Malformed);
            }
            let seg = Segment {
                syn: tcp.syn(),
                ack: tcp.ack(),
                rst: tcp.rst(),
                fin: tcp.fin(),
                seq: tcp.seq_number().0 as u32,
                ack_number: tcp.ack_number().0 as u32,
                payload_len: body.len() - usize::from(tcp.header_len()),
            };
            let key = FlowKey {
                client: SocketAddr::new(src, tcp.src_port()),
                server: SocketAddr::new(dst, tcp.dst_port()),
            };
            Parsed::Tcp { key, seg }
        }
        (IpProtocol::Udp, _) => {
            let Ok(udp) = UdpPacket::new_checked(body) else {
                return Parsed::Drop(DropReason::Malformed);
            };
            if udp.src_port() == 0 || udp.dst_port() == 0 {
                return Parsed::Drop(DropReason::Malformed);
            }
            let key = FlowKey {
                client: SocketAddr::new(src, udp.src_port()),
                server: SocketAddr::new(dst, udp.dst_port()),
            };
            let payload = range.start + UDP_HEADER_LEN..range.start + usize::from(udp.len());
            Parsed::Udp { key, payload }
        }
        (IpProtocol::Icmp, IpAddr::V4(_)) | (IpProtocol::Icmpv6, IpAddr::V6(_)) => {
            if body.len() < ICMP_HEADER_LEN {
                return Parsed::Drop(DropReason::Malformed);
            }
            let echo_request = if src.is_ipv4() { 8 } else { 128 };
            if body[0] != echo_request || body[1] != 0 {
                return Parsed::Drop(DropReason::Unsupported);
            }
            let key = EchoKey {
                client: src,
                server: dst,
                ident: u16::from_be_bytes([body[4], body[5]]),
            };
            Parsed::Echo {
                key,
                seq: u16::from_be_bytes([body[6], body[7]]),
                data: range.start + ICMP_HEADER_LEN..range.end,
            }
        }
        _ => Parsed::Drop(DropReason::Unsupported),
    }
}

fn ip_header_len(addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    }
}

/// Writes an unfragmented IP header for `payload_len` bytes of `proto`; returns its length.
fn write_ip_header(
    buf: &mut [u8],
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    payload_len: usize,
) -> usize {
    match (src, dst) {
        (IpAddr::V4(src_addr), IpAddr::V4(dst_addr)) => {
            let repr = Ipv4Repr {
                src_addr,
                dst_addr,
                next_header: proto,
                payload_len,
                hop_limit: HOP_LIMIT,
            };
            repr.emit(
                &mut Ipv4Packet::new_unchecked(&mut buf[..IPV4_HEADER_LEN]),
                &ChecksumCapabilities::default(),
            );
            IPV4_HEADER_LEN
        }
        (IpAddr::V6(src_addr), IpAddr::V6(dst_addr)) => {
            let repr = Ipv6Repr {
                src_addr,
                dst_addr,
                next_header: proto,
                payload_len,
                hop_limit: HOP_LIMIT,
            };
            repr.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..IPV6_HEADER_LEN]));
            IPV6_HEADER_LEN
        }
        _ => unreachable!("reply addresses of one family"),
    }
}

/// The transport checksum over `parts` (each of even length but the last) of a datagram
/// from `src` to `dst`, as it goes on the wire. ICMPv4 has no pseudo-header.
fn transport_checksum(src: IpAddr, dst: IpAddr, proto: IpProtocol, parts: &[&[u8]]) -> u16 {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut sums = [0u16; 4];
    let mut n = 0;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) if proto != IpProtocol::Icmp => {
            sums[n] = checksum::pseudo_header_v4(&s, &d, proto, len as u32);
            n += 1;
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            sums[n] = checksum::pseudo_header_v6(&s, &d, proto, len as u32);
            n += 1;
        }
        _ => {}
    }
    for part in parts {
        sums[n] = checksum::data(part);
        n += 1;
    }
    !checksum::combine(&sums[..n])
}

/// Builds the RST a closed port sends in answer to `original` (a TCP segment from the
/// session). Returns false, sending nothing, for a RST, a packet that is not TCP, or a queue
/// at its bound ([`TxQueue::admit_reply`], which counts the drop).
pub(crate) fn push_tcp_reset(tx: &mut TxQueue, original: &[u8]) -> bool {
    let Parsed::Tcp { key, seg } = parse(original) else {
        return false;
    };
    if seg.rst || !tx.admit_reply() {
        return false;
    }
    let (seq, ack) = if seg.ack {
        (seg.ack_number, None)
    } else {
        (0, Some(seg.seq.wrapping_add(seg.len())))
    };
    let (src, dst) = (key.server, key.client);
    let hl = ip_header_len(src.ip());
    tx.push_with(hl + TCP_HEADER_LEN, |buf| {
        write_ip_header(buf, src.ip(), dst.ip(), IpProtocol::Tcp, TCP_HEADER_LEN);
        let mut tcp = TcpPacket::new_unchecked(&mut buf[hl..]);
        tcp.set_src_port(src.port());
        tcp.set_dst_port(dst.port());
        tcp.set_seq_number(TcpSeqNumber(seq as i32));
        tcp.set_ack_number(TcpSeqNumber(ack.unwrap_or(0) as i32));
        tcp.set_header_len(TCP_HEADER_LEN as u8);
        tcp.clear_flags();
        tcp.set_rst(true);
        tcp.set_ack(ack.is_some());
        tcp.set_window_len(0);
        tcp.set_urgent_at(0);
        tcp.fill_checksum(&IpAddress::from(src.ip()), &IpAddress::from(dst.ip()));
    });
    true
}

/// Builds a destination-unreachable error about `original` (a packet from the session),
/// sent from the address `original` was for. Returns false for a packet it cannot quote, or
/// when the queue is at its bound.
pub(crate) fn push_unreachable(
    tx: &mut TxQueue,
    mtu: usize,
    original: &[u8],
    why: Unreachable,
) -> bool {
    let (src, dst, quoted) = match original.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(ip) = Ipv4Packet::new_checked(original) else {
                return false;
            };
            let total = usize::from(ip.total_len());
            // RFC 1812 4.3.2.3: as much as fits in 576 bytes.
            let limit = 576 - IPV4_HEADER_LEN - ICMP_HEADER_LEN;
            (
                IpAddr::V4(ip.dst_addr()),
                IpAddr::V4(ip.src_addr()),
                &original[..total.min(limit)],
            )
        }
        Some(6) => {
            let Ok(ip) = Ipv6Packet::new_checked(original) else {
                return false;
            };
            let total = IPV6_HEADER_LEN + usize::from(ip.payload_len());
            // RFC 4443 2.4(c): as much as fits in the minimum IPv6 MTU.
            let limit = 1280 - IPV6_HEADER_LEN - ICMP_HEADER_LEN;
            (
                IpAddr::V6(ip.dst_addr()),
                IpAddr::V6(ip.src_addr()),
                &original[..total.min(limit)],
            )
        }
        _ => return false,
    };
    if !tx.admit_reply() {
        return false;
    }
    let hl = ip_header_len(src);
    let quoted = &quoted[..quoted.len().min(mtu.saturating_sub(hl + ICMP_HEADER_LEN))];
    let (proto, head) = match src {
        IpAddr::V4(_) => (IpProtocol::Icmp, [3, why.icmpv4_code(), 0, 0, 0, 0, 0, 0]),
        IpAddr::V6(_) => (IpProtocol::Icmpv6, [1, why.icmpv6_code(), 0, 0, 0, 0, 0, 0]),
    };
    let cksum = transport_checksum(src, dst, proto, &[&head, quoted]);
    let icmp_len = ICMP_HEADER_LEN + quoted.len();
    tx.push_with(hl + icmp_len, |buf| {
        write_ip_header(buf, src, dst, proto, icmp_len);
        buf[hl..hl + ICMP_HEADER_LEN].copy_from_slice(&head);
        buf[hl + 2..hl + 4].copy_from_slice(&cksum.to_be_bytes());
        buf[hl + ICMP_HEADER_LEN..].copy_from_slice(quoted);
    });
    true
}

/// Builds a UDP datagram from `src` (the destination the session talked to) to `dst` (the
/// session's endpoint), fragmented to `mtu` if needed. `ident` is the IP identification for
/// fragments.
pub(crate) fn push_udp(
    tx: &mut TxQueue,
    mtu: usize,
    ident: u32,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let mut head = [0u8; UDP_HEADER_LEN];
    head[0..2].copy_from_slice(&src.port().to_be_bytes());
    head[2..4].copy_from_slice(&dst.port().to_be_bytes());
    head[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    let mut cksum = transport_checksum(src.ip(), dst.ip(), IpProtocol::Udp, &[&head, payload]);
    if cksum == 0 {
        cksum = 0xffff;
    }
    head[6..8].copy_from_slice(&cksum.to_be_bytes());
    push_datagram(
        tx,
        mtu,
        ident,
        src.ip(),
        dst.ip(),
        IpProtocol::Udp,
        &head,
        payload,
    );
}

/// Builds an ICMP / ICMPv6 echo reply from `src` to `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn push_echo_reply(
    tx: &mut TxQueue,
    mtu: usize,
    ip_ident: u32,
    src: IpAddr,
    dst: IpAddr,
    echo_ident: u16,
    seq: u16,
    data: &[u8],
) {
    let (proto, kind) = match src {
        IpAddr::V4(_) => (IpProtocol::Icmp, 0),
        IpAddr::V6(_) => (IpProtocol::Icmpv6, 129),
    };
    let mut head = [kind, 0, 0, 0, 0, 0, 0, 0];
    head[4..6].copy_from_slice(&echo_ident.to_be_bytes());
    head[6..8].copy_from_slice(&seq.to_be_bytes());
    let cksum = transport_checksum(src, dst, proto, &[&head, data]);
    head[2..4].copy_from_slice(&cksum.to_be_bytes());
    push_datagram(tx, mtu, ip_ident, src, dst, proto, &head, data);
}

/// Writes an ICMP / ICMPv6 echo request into `out` (cleared first). The ICMPv4 checksum is
/// filled in (raw sockets send it as is); ICMPv6 leaves it to the kernel, which always
/// computes it for ICMPv6 sockets.
pub(crate) fn echo_request(out: &mut Vec<u8>, v6: bool, ident: u16, seq: u16, data: &[u8]) {
    out.clear();
    out.extend_from_slice(&[if v6 { 128 } else { 8 }, 0, 0, 0]);
    out.extend_from_slice(&ident.to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(data);
    if !v6 {
        let cksum = !checksum::data(out);
        out[2..4].copy_from_slice(&cksum.to_be_bytes());
    }
}

/// A UDP header from `key.client` to `key.server` behind an IP header, standing in for a
/// datagram whose refusal is learnt only later (from a receive on a connected socket).
pub(crate) fn synthetic_udp(key: FlowKey) -> Vec<u8> {
    let hl = ip_header_len(key.client.ip());
    let mut buf = vec![0u8; hl + UDP_HEADER_LEN];
    write_ip_header(
        &mut buf,
        key.client.ip(),
        key.server.ip(),
        IpProtocol::Udp,
        UDP_HEADER_LEN,
    );
    buf[hl..hl + 2].copy_from_slice(&key.client.port().to_be_bytes());
    buf[hl + 2..hl + 4].copy_from_slice(&key.server.port().to_be_bytes());
    buf[hl + 4..hl + 6].copy_from_slice(&(UDP_HEADER_LEN as u16).to_be_bytes());
    buf
}

/// Re-emits a packet the stack built as IP fragments of at most `mtu` bytes (the tunnel's
/// datagram size shrank under packets already sized for the old one). Returns false, and
/// emits nothing, for a packet it cannot split (not IPv4/IPv6, or an MTU too small to
/// carry any payload).
pub(crate) fn push_fragments(tx: &mut TxQueue, mtu: usize, ident: u32, pkt: &[u8]) -> bool {
    let (src, dst, proto, payload) = match pkt.first().map(|b| b >> 4) {
        Some(4) => {
            let Ok(ip) = Ipv4Packet::new_checked(pkt) else {
                return false;
            };
            (
                IpAddr::V4(ip.src_addr()),
                IpAddr::V4(ip.dst_addr()),
                ip.next_header(),
                &pkt[usize::from(ip.header_len())..usize::from(ip.total_len())],
            )
        }
        Some(6) => {
            let Ok(ip) = Ipv6Packet::new_checked(pkt) else {
                return false;
            };
            (
                IpAddr::V6(ip.src_addr()),
                IpAddr::V6(ip.dst_addr()),
                ip.next_header(),
                &pkt[IPV6_HEADER_LEN..IPV6_HEADER_LEN + usize::from(ip.payload_len())],
            )
        }
        _ => return false,
    };
    if mtu < IPV6_HEADER_LEN + IPV6_FRAGMENT_HEADER_LEN + 8 {
        return false;
    }
    push_datagram(tx, mtu, ident, src, dst, proto, &[], payload);
    true
}

/// Copies `out.len()` bytes of the concatenation `head ‖ body`, starting at `start`.
fn copy_concat(out: &mut [u8], head: &[u8], body: &[u8], start: usize) {
    let mut written = 0;
    if start < head.len() {
        let n = (head.len() - start).min(out.len());
        out[..n].copy_from_slice(&head[start..start + n]);
        written = n;
    }
    if written < out.len() {
        let from = start + written - head.len();
        let n = out.len() - written;
        out[written..].copy_from_slice(&body[from..from + n]);
    }
}

/// Emits a transport datagram (`head` with its checksum filled, then `body`) from `src` to
/// `dst`, fragmenting when it does not fit `mtu`.
#[allow(clippy::too_many_arguments)]
fn push_datagram(
    tx: &mut TxQueue,
    mtu: usize,
    ident: u32,
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    head: &[u8],
    body: &[u8],
) {
    let total = head.len() + body.len();
    let hl = ip_header_len(src);
    if hl + total <= mtu {
        tx.push_with(hl + total, |buf| {
            write_ip_header(buf, src, dst, proto, total);
            copy_concat(&mut buf[hl..], head, body, 0);
        });
        return;
    }
    match (src, dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let chunk = (mtu - IPV4_HEADER_LEN) & !7;
            let mut offset = 0;
            while offset < total {
                let len = chunk.min(total - offset);
                let more = offset + len < total;
                tx.push_with(IPV4_HEADER_LEN + len, |buf| {
                    write_ip_header(buf, src, dst, proto, len);
                    let mut ip = Ipv4Packet::new_unchecked(&mut buf[..IPV4_HEADER_LEN]);
                    ip.set_ident(ident as u16);
                    ip.set_dont_frag(false);
                    ip.set_more_frags(more);
                    ip.set_frag_offset(offset as u16);
                    ip.fill_checksum();
                    copy_concat(&mut buf[IPV4_HEADER_LEN..], head, body, offset);
                });
                offset += len;
            }
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => {
            let hl = IPV6_HEADER_LEN + IPV6_FRAGMENT_HEADER_LEN;
            let chunk = (mtu - hl) & !7;
            let mut offset = 0;
            while offset < total {
                let len = chunk.min(total - offset);
                let more = offset + len < total;
                tx.push_with(hl + len, |buf| {
                    write_ip_header(
                        buf,
                        src,
                        dst,
                        IpProtocol::Ipv6Frag,
                        IPV6_FRAGMENT_HEADER_LEN + len,
                    );
                    let frag = &mut buf[IPV6_HEADER_LEN..hl];
                    frag[0] = proto.into();
                    frag[1] = 0;
                    let off_flags = (offset as u16) | u16::from(more);
                    frag[2..4].copy_from_slice(&off_flags.to_be_bytes());
                    frag[4..8].copy_from_slice(&ident.to_be_bytes());
                    copy_concat(&mut buf[hl..], head, body, offset);
                });
                offset += len;
            }
        }
        _ => unreachable!("reply addresses of one family"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv4Packet, Icmpv6Packet, TcpControl, TcpRepr};

    /// A TCP segment from `client` to `server` with the given flags and no options.
    pub(crate) fn tcp_segment(
        client: SocketAddr,
        server: SocketAddr,
        seq: u32,
        ack: Option<u32>,
        control: TcpControl,
        payload: &[u8],
    ) -> Vec<u8> {
        let repr = TcpRepr {
            src_port: client.port(),
            dst_port: server.port(),
            control,
            seq_number: TcpSeqNumber(seq as i32),
            ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
            window_len: 64240,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let hl = ip_header_len(client.ip());
        let mut buf = vec![0u8; hl + repr.buffer_len()];
        write_ip_header(
            &mut buf,
            client.ip(),
            server.ip(),
            IpProtocol::Tcp,
            repr.buffer_len(),
        );
        repr.emit(
            &mut TcpPacket::new_unchecked(&mut buf[hl..]),
            &IpAddress::from(client.ip()),
            &IpAddress::from(server.ip()),
            &ChecksumCapabilities::default(),
        );
        buf
    }

    /// A UDP datagram from `client` to `server`.
    pub(crate) fn udp_datagram(client: SocketAddr, server: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let mut q = TxQueue::new(usize::MAX, 0);
        push_udp(&mut q, 65535, 0, client, server, payload);
        q.pop_front().unwrap().to_vec()
    }

    /// An echo request from `client` to `server`.
    pub(crate) fn echo_request_packet(
        client: IpAddr,
        server: IpAddr,
        ident: u16,
        seq: u16,
        data: &[u8],
    ) -> Vec<u8> {
        let proto = if client.is_ipv4() {
            IpProtocol::Icmp
        } else {
            IpProtocol::Icmpv6
        };
        let mut icmp = Vec::new();
        echo_request(&mut icmp, client.is_ipv6(), ident, seq, data);
        icmp[2..4].copy_from_slice(&[0, 0]);
        let cksum = transport_checksum(client, server, proto, &[&icmp]);
        icmp[2..4].copy_from_slice(&cksum.to_be_bytes());
        let hl = ip_header_len(client);
        let mut buf = vec![0u8; hl + icmp.len()];
        write_ip_header(&mut buf, client, server, proto, icmp.len());
        buf[hl..].copy_from_slice(&icmp);
        buf
    }

    fn v4(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn only_packet(q: &mut TxQueue) -> Vec<u8> {
        let pkt = q.pop_front().expect("one packet");
        assert!(q.is_empty(), "exactly one packet");
        pkt.to_vec()
    }

    fn tcp_of(pkt: &[u8]) -> (IpAddress, IpAddress, Vec<u8>) {
        match pkt[0] >> 4 {
            4 => {
                let ip = Ipv4Packet::new_checked(pkt).unwrap();
                assert!(ip.verify_checksum());
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    ip.payload().to_vec(),
                )
            }
            _ => {
                let ip = Ipv6Packet::new_checked(pkt).unwrap();
                (
                    ip.src_addr().into(),
                    ip.dst_addr().into(),
                    ip.payload().to_vec(),
                )
            }
        }
    }

    #[test]
    fn parse_classifies_tcp_udp_echo_and_drops_the_rest() {
        let c = v4("10.0.0.2:40000");
        let s = v4("10.1.2.3:80");
        let syn = tcp_segment(c, s, 1000, None, TcpControl::Syn, &[]);
        match parse(&syn) {
            Parsed::Tcp { key, seg } => {
                assert_eq!(
                    key,
                    FlowKey {
                        client: c,
                        server: s
                    }
                );
                assert!(seg.is_initial_syn());
                assert_eq!(seg.seq, 1000);
                assert_eq!(seg.len(), 1);
            }
            other => panic!("{other:?}"),
        }

        let udp = udp_datagram(c, s, b"hello");
        match parse(&udp) {
            Parsed::Udp { key, payload } => {
                assert_eq!(
                    key,
                    FlowKey {
                        client: c,
                        server: s
                    }
                );
                assert_eq!(&udp[payload], b"hello");
            }
            other => panic!("{other:?}"),
        }

        let ping = echo_request_packet(c.ip(), s.ip(), 7, 9, b"abc");
        match parse(&ping) {
            Parsed::Echo { key, seq, data } => {
                assert_eq!(key.ident, 7);
                assert_eq!(seq, 9);
                assert_eq!(&ping[data], b"abc");
            }
            other => panic!("{other:?}"),
        }

        let mut frag = udp.clone();
        {
            let mut ip = Ipv4Packet::new_unchecked(&mut frag[..]);
            ip.set_more_frags(true);
            ip.fill_checksum();
        }
        assert_eq!(parse(&frag), Parsed::Drop(DropReason::Fragment));
        assert_eq!(parse(&udp[..10]), Parsed::Drop(DropReason::Malformed));
        assert_eq!(parse(&[]), Parsed::Drop(DropReason::Malformed));
        let mcast = udp_datagram(c, v4("224.0.0.251:5353"), b"q");
        assert_eq!(parse(&mcast), Parsed::Drop(DropReason::Unsupported));
    }

    #[test]
    fn rst_for_a_syn_acks_it_with_a_valid_checksum() {
        let c = v4("10.0.0.2:40000");
        let s = v4("192.0.2.7:443");
        let syn = tcp_segment(c, s, 0xfffffff0, None, TcpControl::Syn, &[]);
        let mut q = TxQueue::new(usize::MAX, 0);
        assert!(push_tcp_reset(&mut q, &syn));
        let pkt = only_packet(&mut q);
        let (src, dst, tcp_bytes) = tcp_of(&pkt);
        assert_eq!(
            (src, dst),
            (IpAddress::from(s.ip()), IpAddress::from(c.ip()))
        );
        let tcp = TcpPacket::new_checked(&tcp_bytes[..]).unwrap();
        assert!(tcp.verify_checksum(&src, &dst));
        assert_eq!(tcp.src_port(), 443);
        assert_eq!(tcp.dst_port(), 40000);
        assert!(tcp.rst() && tcp.ack() && !tcp.syn());
        assert_eq!(tcp.seq_number(), TcpSeqNumber(0));
        assert_eq!(tcp.ack_number(), TcpSeqNumber(0xfffffff1_u32 as i32));
        assert_eq!(tcp.window_len(), 0);
    }

    #[test]
    fn rst_for_an_ack_takes_its_sequence_from_the_ack_v6() {
        let c: SocketAddr = "[fd00::2]:40000".parse().unwrap();
        let s: SocketAddr = "[2001:db8::7]:22".parse().unwrap();
        let seg = tcp_segment(c, s, 5, Some(777), TcpControl::Psh, b"data");
        let mut q = TxQueue::new(usize::MAX, 0);
        assert!(push_tcp_reset(&mut q, &seg));
        let pkt = only_packet(&mut q);
        let (src, dst, tcp_bytes) = tcp_of(&pkt);
        let tcp = TcpPacket::new_checked(&tcp_bytes[..]).unwrap();
        assert!(tcp.verify_checksum(&src, &dst));
        assert!(tcp.rst() && !tcp.ack());
        assert_eq!(tcp.seq_number(), TcpSeqNumber(777));

        let rst = tcp_segment(c, s, 5, None, TcpControl::Rst, &[]);
        assert!(!push_tcp_reset(&mut q, &rst), "never answer a RST");
        assert!(q.is_empty());
    }

    #[test]
    fn icmpv4_unreachable_quotes_the_syn() {
        let c = v4("10.0.0.2:40000");
        let s = v4("10.9.9.9:80");
        let syn = tcp_segment(c, s, 42, None, TcpControl::Syn, &[]);
        let mut q = TxQueue::new(usize::MAX, 0);
        assert!(push_unreachable(&mut q, 1500, &syn, Unreachable::Host));
        let pkt = only_packet(&mut q);
        let ip = Ipv4Packet::new_checked(&pkt[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!(ip.next_header(), IpProtocol::Icmp);
        assert_eq!(IpAddr::from(ip.src_addr()), s.ip());
        assert_eq!(IpAddr::from(ip.dst_addr()), c.ip());
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(
            icmp.msg_type(),
            smoltcp::wire::Icmpv4Message::DstUnreachable
        );
        assert_eq!(icmp.msg_code(), 1);
        assert_eq!(&ip.payload()[8..], &syn[..], "the whole SYN is quoted");

        let mut q = TxQueue::new(usize::MAX, 0);
        assert!(push_unreachable(&mut q, 1500, &syn, Unreachable::Net));
        let pkt = only_packet(&mut q);
        assert_eq!(pkt[IPV4_HEADER_LEN + 1], 0);
    }

    #[test]
    fn icmpv6_unreachable_quotes_the_packet_within_the_minimum_mtu() {
        let c: SocketAddr = "[fd00::2]:5000".parse().unwrap();
        let s: SocketAddr = "[2001:db8::9]:53".parse().unwrap();
        let big = udp_datagram(c, s, &[0x5a; 3000]);
        let mut q = TxQueue::new(usize::MAX, 0);
        assert!(push_unreachable(&mut q, 65000, &big, Unreachable::Port));
        let pkt = only_packet(&mut q);
        assert_eq!(pkt.len(), 1280);
        let ip = Ipv6Packet::new_checked(&pkt[..]).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
        assert_eq!(
            icmp.msg_type(),
            smoltcp::wire::Icmpv6Message::DstUnreachable
        );
        assert_eq!(icmp.msg_code(), 4);
        assert_eq!(&ip.payload()[8..], &big[..1280 - 48]);
    }

    #[test]
    fn udp_replies_have_valid_checksums_both_families() {
        for (c, s) in [
            (v4("10.0.0.2:5353"), v4("10.96.0.10:53")),
            (
                "[fd00::2]:5353".parse().unwrap(),
                "[fd00:10::a]:53".parse().unwrap(),
            ),
        ] {
            let mut q = TxQueue::new(usize::MAX, 0);
            push_udp(&mut q, 1500, 1, s, c, b"answer");
            let pkt = only_packet(&mut q);
            let (src, dst, body) = tcp_of(&pkt);
            let udp = UdpPacket::new_checked(&body[..]).unwrap();
            assert!(udp.verify_checksum(&src, &dst));
            assert_eq!(udp.src_port(), s.port());
            assert_eq!(udp.dst_port(), c.port());
            assert_eq!(udp.payload(), b"answer");
            // Round trip through the parser, seen from the other side.
            match parse(&pkt) {
                Parsed::Udp { key, .. } => assert_eq!(key.client, s),
                other => panic!("{other:?}"),
            }
        }
    }

    /// Reassembles fragments (in order) into the transport payload.
    fn reassemble(frags: &[Vec<u8>]) -> (IpAddress, IpAddress, Vec<u8>) {
        let mut out = Vec::new();
        let mut addrs = None;
        for (i, f) in frags.iter().enumerate() {
            match f[0] >> 4 {
                4 => {
                    let ip = Ipv4Packet::new_checked(&f[..]).unwrap();
                    assert!(ip.verify_checksum());
                    assert_eq!(usize::from(ip.frag_offset()), out.len());
                    assert_eq!(ip.more_frags(), i + 1 < frags.len());
                    assert_eq!(ip.ident(), 0x1234);
                    addrs = Some((ip.src_addr().into(), ip.dst_addr().into()));
                    out.extend_from_slice(ip.payload());
                }
                _ => {
                    let ip = Ipv6Packet::new_checked(&f[..]).unwrap();
                    assert_eq!(ip.next_header(), IpProtocol::Ipv6Frag);
                    let p = ip.payload();
                    assert_eq!(p[0], u8::from(IpProtocol::Udp));
                    let off_flags = u16::from_be_bytes([p[2], p[3]]);
                    assert_eq!(usize::from(off_flags & !7), out.len());
                    assert_eq!(off_flags & 1 == 1, i + 1 < frags.len());
                    assert_eq!(u32::from_be_bytes([p[4], p[5], p[6], p[7]]), 0x1234);
                    addrs = Some((ip.src_addr().into(), ip.dst_addr().into()));
                    out.extend_from_slice(&p[8..]);
                }
            }
        }
        let (s, d) = addrs.unwrap();
        (s, d, out)
    }

    #[test]
    fn oversized_udp_replies_are_fragmented_to_the_mtu() {
        let payload: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        for (c, s) in [
            (v4("10.0.0.2:5353"), v4("10.96.0.10:53")),
            (
                "[fd00::2]:5353".parse().unwrap(),
                "[fd00:10::a]:53".parse().unwrap(),
            ),
        ] {
            let mut q = TxQueue::new(usize::MAX, 0);
            push_udp(&mut q, 1400, 0x1234, s, c, &payload);
            let mut frags = Vec::new();
            while let Some(p) = q.pop_front() {
                assert!(p.len() <= 1400);
                frags.push(p.to_vec());
            }
            assert_eq!(frags.len(), 3);
            let (src, dst, udp_bytes) = reassemble(&frags);
            let udp = UdpPacket::new_checked(&udp_bytes[..]).unwrap();
            assert!(udp.verify_checksum(&src, &dst));
            assert_eq!(udp.payload(), &payload[..]);
        }
    }

    #[test]
    fn echo_replies_carry_the_original_identifier_and_valid_checksums() {
        for (c, s) in [
            (
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "1.1.1.1".parse().unwrap(),
            ),
            ("fd00::2".parse().unwrap(), "2001:db8::1".parse().unwrap()),
        ] {
            let mut q = TxQueue::new(usize::MAX, 0);
            push_echo_reply(&mut q, 1500, 0, s, c, 0xbeef, 3, b"payload");
            let pkt = only_packet(&mut q);
            let (src, dst, body) = tcp_of(&pkt);
            if c.is_ipv4() {
                let icmp = Icmpv4Packet::new_checked(&body[..]).unwrap();
                assert!(icmp.verify_checksum());
                assert_eq!(icmp.msg_type(), smoltcp::wire::Icmpv4Message::EchoReply);
                assert_eq!(icmp.echo_ident(), 0xbeef);
                assert_eq!(icmp.echo_seq_no(), 3);
                assert_eq!(icmp.data(), b"payload");
            } else {
                let (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) = (src, dst) else {
                    panic!("v6");
                };
                let icmp = Icmpv6Packet::new_checked(&body[..]).unwrap();
                assert!(icmp.verify_checksum(&src, &dst));
                assert_eq!(icmp.msg_type(), smoltcp::wire::Icmpv6Message::EchoReply);
                assert_eq!(icmp.echo_ident(), 0xbeef);
                assert_eq!(icmp.echo_seq_no(), 3);
                assert_eq!(icmp.payload(), b"payload");
            }
        }
    }

    #[test]
    fn echo_request_checksum_is_valid_for_raw_icmpv4() {
        let mut out = Vec::new();
        echo_request(&mut out, false, 1, 2, b"xyz");
        let icmp = Icmpv4Packet::new_checked(&out[..]).unwrap();
        assert!(icmp.verify_checksum());
        assert_eq!(icmp.echo_ident(), 1);
        assert_eq!(icmp.echo_seq_no(), 2);
    }

    #[test]
    fn synthetic_udp_quotes_the_flow() {
        let key = FlowKey {
            client: v4("10.0.0.2:1111"),
            server: v4("10.0.0.9:2222"),
        };
        match parse(&synthetic_udp(key)) {
            Parsed::Udp { key: got, payload } => {
                assert_eq!(got, key);
                assert!(payload.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn built_packets_can_be_refragmented_to_a_smaller_mtu() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 3) as u8).collect();
        for (c, s) in [
            (v4("10.0.0.2:5353"), v4("10.96.0.10:53")),
            (
                "[fd00::2]:5353".parse().unwrap(),
                "[fd00:10::a]:53".parse().unwrap(),
            ),
        ] {
            let mut q = TxQueue::new(usize::MAX, 0);
            push_udp(&mut q, 65000, 0, s, c, &payload);
            let whole = q.pop_front().unwrap();
            assert!(push_fragments(&mut q, 8000, 0x1234, &whole));
            let mut frags = Vec::new();
            while let Some(p) = q.pop_front() {
                assert!(p.len() <= 8000);
                frags.push(p.to_vec());
            }
            assert_eq!(frags.len(), 3);
            let (src, dst, udp_bytes) = reassemble(&frags);
            let udp = UdpPacket::new_checked(&udp_bytes[..]).unwrap();
            assert!(udp.verify_checksum(&src, &dst));
            assert_eq!(udp.payload(), &payload[..]);
        }
        let mut q = TxQueue::new(usize::MAX, 0);
        assert!(!push_fragments(&mut q, 8000, 0, &[0u8; 40]));
    }
}
