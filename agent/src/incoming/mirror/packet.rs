//! The headers of a captured IP packet carrying TCP: its 4-tuple and its segment.
//!
//! Only what mirroring needs is read: addresses, ports, sequence number, flags and payload.
//! Checksums are not verified (the kernel already accepted or will reject the packet; a
//! capture taken on the receiving side sees offloaded checksums unfilled anyway). IPv4
//! fragments other than the first and IPv6 extension headers are not parsed: such packets are
//! skipped, which a gap in the stream then turns into a dropped mirror, never a corrupt one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::reassembly::Segment;

const TCP: u8 = 6;

/// A connection's addresses as the client sent them: client → server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// Reads an IPv4 or IPv6 packet carrying TCP; `None` for anything else or a truncated one.
pub fn parse(packet: &[u8]) -> Option<(FlowKey, Segment<'_>)> {
    let (source, destination, tcp) = match packet.first()? >> 4 {
        4 => {
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
            let flags_fragment = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]);
            if header_len < 20 || packet.len() < header_len || packet[9] != TCP {
                return None;
            }
            if flags_fragment & 0x1fff != 0 || flags_fragment & 0x2000 != 0 {
                return None; // a fragment
            }
            if total > packet.len() {
                return None; // cut short: skipped, so a gap, never corrupt bytes
            }
            let end = total;
            let src: [u8; 4] = packet[12..16].try_into().ok()?;
            let dst: [u8; 4] = packet[16..20].try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                packet.get(header_len..end)?,
            )
        }
        6 => {
            if packet.len() < 40 || packet[6] != TCP {
                return None;
            }
            let payload_len = usize::from(u16::from_be_bytes([packet[4], packet[5]]));
            let end = 40 + payload_len;
            if end > packet.len() {
                return None;
            }
            let src: [u8; 16] = packet[8..24].try_into().ok()?;
            let dst: [u8; 16] = packet[24..40].try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                &packet[40..end],
            )
        }
        _ => return None,
    };
    if tcp.len() < 20 {
        return None;
    }
    let data_offset = usize::from(tcp[12] >> 4) * 4;
    if data_offset < 20 || tcp.len() < data_offset {
        return None;
    }
    let flags = tcp[13];
    let key = FlowKey {
        client: SocketAddr::new(source, u16::from_be_bytes([tcp[0], tcp[1]])),
        server: SocketAddr::new(destination, u16::from_be_bytes([tcp[2], tcp[3]])),
    };
    let segment = Segment {
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        payload: &tcp[data_offset..],
    };
    Some((key, segment))
}

/// Builds an IPv4 TCP packet (no options, checksums zero), for tests and examples.
pub fn build_ipv4(key: &FlowKey, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (key.client.ip(), key.server.ip()) else {
        panic!("build_ipv4 takes IPv4 addresses");
    };
    let total = 40 + payload.len();
    let mut packet = vec![0u8; total];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[6] = 0x40; // don't fragment
    packet[8] = 64;
    packet[9] = TCP;
    packet[12..16].copy_from_slice(&src.octets());
    packet[16..20].copy_from_slice(&dst.octets());
    let tcp = &mut packet[20..];
    tcp[0..2].copy_from_slice(&key.client.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&key.server.port().to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    tcp[20..].copy_from_slice(payload);
    packet
}

/// TCP flag bits for [`build_ipv4`].
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            client: "10.0.0.2:40000".parse().unwrap(),
            server: "10.0.0.1:8080".parse().unwrap(),
        }
    }

    #[test]
    fn ipv4_tcp_round_trips() {
        let packet = build_ipv4(&key(), 123, flags::PSH | flags::ACK | flags::FIN, b"abc");
        let (k, s) = parse(&packet).unwrap();
        assert_eq!(k, key());
        assert_eq!(
            (s.seq, s.fin, s.syn, s.rst, s.payload),
            (123, true, false, false, &b"abc"[..])
        );
    }

    #[test]
    fn ethernet_padding_is_cut_by_the_ip_length() {
        let mut packet = build_ipv4(&key(), 1, flags::ACK, b"x");
        packet.extend_from_slice(&[0; 6]);
        assert_eq!(parse(&packet).unwrap().1.payload, b"x");
    }

    #[test]
    fn other_packets_are_skipped() {
        let mut udp = build_ipv4(&key(), 1, 0, b"");
        udp[9] = 17;
        assert!(parse(&udp).is_none());
        let mut fragment = build_ipv4(&key(), 1, 0, b"");
        fragment[6] = 0x20; // more fragments
        assert!(parse(&fragment).is_none());
        assert!(parse(&[0x45, 0, 0]).is_none());
        let cut = build_ipv4(&key(), 1, flags::ACK, b"abcdef");
        assert!(
            parse(&cut[..cut.len() - 2]).is_none(),
            "a capture cut short is skipped, not read as a shorter payload"
        );
        assert!(parse(&[]).is_none());
    }

    #[test]
    fn ipv6_tcp_is_read() {
        let mut packet = vec![0u8; 40 + 20 + 2];
        packet[0] = 0x60;
        packet[4..6].copy_from_slice(&22u16.to_be_bytes());
        packet[6] = TCP;
        packet[23] = 1; // ::1
        packet[39] = 2; // ::2
        let tcp = &mut packet[40..];
        tcp[0..2].copy_from_slice(&5555u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp[4..8].copy_from_slice(&7u32.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = flags::SYN;
        tcp[20..].copy_from_slice(b"hi");
        let (k, s) = parse(&packet).unwrap();
        assert_eq!(k.client, "[::1]:5555".parse().unwrap());
        assert_eq!(k.server, "[::2]:80".parse().unwrap());
        assert!(s.syn && s.payload == b"hi" && s.seq == 7);
    }
}
