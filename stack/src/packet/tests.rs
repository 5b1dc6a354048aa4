//! The packet module's tests.

use std::net::{IpAddr, SocketAddr};

use smoltcp::wire::{
    Icmpv4Packet, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpControl,
    TcpPacket, TcpSeqNumber, UdpPacket,
};

use super::header::IPV4_HEADER_LEN;
use super::*;
use crate::device::TxQueue;

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
