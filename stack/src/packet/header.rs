//! The IP layer shared by every packet the stack builds: header sizes, an unfragmented IPv4
//! or IPv6 header, and the transport checksum with its pseudo-header.

use std::net::IpAddr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{checksum, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr};

pub(crate) const IPV4_HEADER_LEN: usize = 20;
pub(crate) const IPV6_HEADER_LEN: usize = 40;
pub(super) const IPV6_FRAGMENT_HEADER_LEN: usize = 8;
pub(super) const TCP_HEADER_LEN: usize = 20;
pub(super) const UDP_HEADER_LEN: usize = 8;
pub(super) const ICMP_HEADER_LEN: usize = 8;
pub(super) const HOP_LIMIT: u8 = 64;

pub(super) fn ip_header_len(addr: IpAddr) -> usize {
    match addr {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    }
}

/// Writes an unfragmented IP header for `payload_len` bytes of `proto`; returns its length.
pub(super) fn write_ip_header(
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
pub(super) fn transport_checksum(
    src: IpAddr,
    dst: IpAddr,
    proto: IpProtocol,
    parts: &[&[u8]],
) -> u16 {
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
