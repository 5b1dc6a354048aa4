//! Inbound: [`parse`] looks at each packet from the session once and says which table it
//! belongs to (TCP segment, UDP datagram, ICMP echo request) with the flow key, or why it is
//! dropped. Fragments are dropped (the session's TUN MTU equals the datagram size, so its
//! kernel never fragments), as are IPv6 extension headers, multicast and broadcast, and ICMP
//! other than echo requests (a TUN's router solicitations and MLD reports have no one to go
//! to). Transport checksums are not verified: the packets come from the session's kernel over
//! the session's own TUN or an authenticated tunnel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket};

use super::header::{ICMP_HEADER_LEN, IPV6_HEADER_LEN, UDP_HEADER_LEN};

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
