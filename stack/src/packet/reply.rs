//! Outbound, the packets smoltcp does not write:
//! * [`push_tcp_reset`]: the RST a closed port answers a segment with (RFC 9293 3.10.7.1):
//!   `seq = SEG.ACK` if the segment had ACK, else `seq = 0, ack = SEG.SEQ + SEG.LEN` with
//!   ACK set. For a SYN that makes the session's `connect()` fail with ECONNREFUSED at once.
//! * [`push_unreachable`]: ICMP / ICMPv6 destination unreachable quoting the offending packet
//!   (as much as RFC 1812 / RFC 4443 allow), so the session's kernel finds the socket and
//!   reports EHOSTUNREACH, ENETUNREACH, ECONNREFUSED (port) or EACCES/EHOSTUNREACH
//!   (administratively prohibited).
//! * [`push_udp`] and [`push_echo_reply`]: replies from a destination. A reply larger than
//!   the link's MTU (a 4 KiB DNS answer on a 1400-byte tunnel) is fragmented, IPv4 or IPv6,
//!   rather than dropped (`fragment.rs`).
//! * [`echo_request`] (what the agent sends for the session's ping) and [`synthetic_udp`].

use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::{
    checksum, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, TcpSeqNumber,
};

use super::fragment::push_datagram;
use super::header::{
    ip_header_len, transport_checksum, write_ip_header, ICMP_HEADER_LEN, IPV4_HEADER_LEN,
    IPV6_HEADER_LEN, TCP_HEADER_LEN, UDP_HEADER_LEN,
};
use super::parse::{parse, FlowKey, Parsed};
use crate::device::TxQueue;

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
