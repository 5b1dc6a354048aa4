//! Packets as a session's kernel writes them: for the stack's tests and the flow-engine fuzz
//! target (`fuzzing::flow_engine`), which both play the session.

use std::net::{IpAddr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpAddress, IpProtocol, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use super::header::{ip_header_len, transport_checksum, write_ip_header};
use super::reply::{echo_request, push_udp};
use crate::device::TxQueue;

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
