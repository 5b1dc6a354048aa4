use super::*;

const SRC4: [u8; 4] = [10, 0, 0, 1];
const DST4: [u8; 4] = [10, 0, 0, 9];

/// A TCP packet with a correct checksum: IPv4 unless `v6`, with a 12-byte timestamp
/// option.
fn tcp_packet(v6: bool, seq: u32, flags: u8, payload: &[u8], id: u16) -> Vec<u8> {
    let mut tcp = vec![0u8; 32];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&7777u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = flags;
    tcp[14..16].copy_from_slice(&512u16.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
    tcp.extend_from_slice(payload);
    let mut ip = if v6 {
        let mut ip = vec![0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(tcp.len() as u16).to_be_bytes());
        ip[6] = PROTO_TCP;
        ip[7] = 64;
        ip[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        ip[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
        ip
    } else {
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = PROTO_TCP;
        ip[12..16].copy_from_slice(&SRC4);
        ip[16..20].copy_from_slice(&DST4);
        let c = checksum(&ip, 0);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        ip
    };
    let ip_len = ip.len();
    let pseudo = pseudo_header_sum(&ip, v6, tcp.len());
    let c = checksum(&tcp, pseudo);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&tcp);
    assert_eq!(ip.len(), ip_len + 32 + payload.len());
    ip
}

fn valid_checksums(packet: &[u8]) -> bool {
    let (ip_len, _, v6) = tcp_headers(packet).expect("TCP");
    let ip_ok = v6 || checksum(&packet[..ip_len], 0) == 0;
    let pseudo = pseudo_header_sum(&packet[..ip_len], v6, packet.len() - ip_len);
    ip_ok && checksum(&packet[ip_len..], pseudo) == 0
}

/// What the kernel hands over for a super-segment: the TCP checksum field holding the
/// pseudo-header sum of the whole, `NEEDS_CSUM`, `gso_size`.
fn super_segment(v6: bool, payload: &[u8], mss: u16, flags: u8) -> Vec<u8> {
    let mut packet = tcp_packet(v6, 1000, flags, payload, 300);
    let ip_len = if v6 { 40 } else { 20 };
    let pseudo = pseudo_header_sum(&packet[..ip_len], v6, packet.len() - ip_len);
    packet[ip_len + 16..ip_len + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 },
        hdr_len: (ip_len + 32) as u16,
        gso_size: mss,
        csum_start: ip_len as u16,
        csum_offset: 16,
    };
    let mut read = hdr.encode().to_vec();
    read.extend_from_slice(&packet);
    read
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn a_super_segment_becomes_mss_sized_packets_with_right_headers() {
    for v6 in [false, true] {
        let data = payload(5000);
        let read = super_segment(v6, &data, 1400, TCP_ACK | TCP_PSH | TCP_CWR);
        let mut out = BytesMut::new();
        let mut packets = Vec::new();
        segment(&read, &mut out, &mut packets).unwrap();
        assert_eq!(packets.len(), 4);
        let ip_len = if v6 { 40 } else { 20 };
        let mut joined = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            assert!(
                valid_checksums(p),
                "segment {i} (v6 {v6}) has a bad checksum"
            );
            let tcp = &p[ip_len..];
            let seq = u32::from_be_bytes(tcp[4..8].try_into().unwrap());
            assert_eq!(seq, 1000 + (i as u32) * 1400);
            let flags = tcp[13];
            assert_eq!(flags & TCP_CWR != 0, i == 0, "CWR on the first only");
            assert_eq!(flags & TCP_PSH != 0, i == 3, "PSH on the last only");
            assert!(flags & TCP_ACK != 0);
            let expected = if i < 3 { 1400 } else { 800 };
            assert_eq!(p.len(), ip_len + 32 + expected);
            if v6 {
                assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])), 32 + expected);
            } else {
                assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
                assert_eq!(u16::from_be_bytes([p[4], p[5]]), 300 + i as u16);
            }
            joined.extend_from_slice(&p[ip_len + 32..]);
        }
        assert_eq!(joined, data);
    }
}

#[test]
fn a_fin_goes_on_the_last_segment_only() {
    let read = super_segment(false, &payload(3000), 1000, TCP_ACK | TCP_FIN);
    let mut out = BytesMut::new();
    let mut packets = Vec::new();
    segment(&read, &mut out, &mut packets).unwrap();
    let fins: Vec<bool> = packets.iter().map(|p| p[20 + 13] & TCP_FIN != 0).collect();
    assert_eq!(fins, [false, false, true]);
}

#[test]
fn a_partial_checksum_without_segmentation_is_completed() {
    let mut packet = tcp_packet(false, 5, TCP_ACK, b"hello", 1);
    let expected = packet.clone();
    let pseudo = pseudo_header_sum(&packet[..20], false, packet.len() - 20);
    packet[36..38].copy_from_slice(&fold(pseudo).to_be_bytes());
    let hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        csum_start: 20,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let mut read = hdr.encode().to_vec();
    read.extend_from_slice(&packet);
    let mut out = BytesMut::new();
    let mut packets = Vec::new();
    segment(&read, &mut out, &mut packets).unwrap();
    assert_eq!(packets, [Bytes::from(expected)]);
}

#[test]
fn a_plain_packet_passes_unchanged_and_bad_requests_are_refused() {
    let packet = tcp_packet(true, 5, TCP_ACK, b"x", 0);
    let mut read = VnetHdr::default().encode().to_vec();
    read.extend_from_slice(&packet);
    let mut out = BytesMut::new();
    let mut packets = Vec::new();
    segment(&read, &mut out, &mut packets).unwrap();
    assert_eq!(packets, [Bytes::from(packet.clone())]);

    assert_eq!(
        segment(&read[..4], &mut out, &mut packets),
        Err(SegmentError::NoHeader)
    );
    let mut udp_gso = read.clone();
    udp_gso[1] = 5;
    assert_eq!(
        segment(&udp_gso, &mut out, &mut packets),
        Err(SegmentError::UnsupportedGso(5))
    );
    let mut wrong_family = read.clone();
    wrong_family[1] = GSO_TCPV4;
    wrong_family[4] = 100;
    assert_eq!(
        segment(&wrong_family, &mut out, &mut packets),
        Err(SegmentError::NotTcp)
    );
    let mut bad_offset = read;
    bad_offset[0] = F_NEEDS_CSUM;
    bad_offset[6..8].copy_from_slice(&2000u16.to_le_bytes());
    assert_eq!(
        segment(&bad_offset, &mut out, &mut packets),
        Err(SegmentError::BadChecksumOffset)
    );
}

/// What the kernel's GSO does with a coalesced write: the segments back, checksums
/// computed. Used to check that coalescing then segmenting gives the packets back.
fn resegment(write: &TunWrite) -> Vec<Vec<u8>> {
    let mut out = BytesMut::new();
    let mut packets = Vec::new();
    let bytes = write.to_vec();
    let hdr = VnetHdr::decode(&bytes).unwrap();
    if hdr.gso_type != GSO_NONE {
        // The kernel's view of a CHECKSUM_PARTIAL packet: the whole must check once
        // completed.
        let mut whole = bytes[VNET_HDR_LEN..].to_vec();
        let start = usize::from(hdr.csum_start);
        let c = checksum(&whole[start..], 0);
        whole[start + 16..start + 18].copy_from_slice(&c.to_be_bytes());
        assert!(valid_checksums(&whole));
    }
    segment(&bytes, &mut out, &mut packets).unwrap();
    packets.iter().map(|p| p.to_vec()).collect()
}

#[test]
fn in_order_segments_of_one_flow_become_one_write() {
    for v6 in [false, true] {
        let data = payload(1400 * 5 + 300);
        let segments: Vec<Vec<u8>> = data
            .chunks(1400)
            .enumerate()
            .map(|(i, chunk)| {
                let flags = if i == 5 { TCP_ACK | TCP_PSH } else { TCP_ACK };
                tcp_packet(v6, 1000 + (i * 1400) as u32, flags, chunk, i as u16)
            })
            .collect();
        let mut coalescer = Coalescer::default();
        for s in &segments {
            coalescer.push(Bytes::from(s.clone()));
        }
        let mut writes = Vec::new();
        coalescer.drain(&mut writes);
        assert!(coalescer.is_empty());
        assert_eq!(writes.len(), 1, "v6 {v6}");
        let hdr = VnetHdr::decode(&writes[0].vnet).unwrap();
        assert_eq!(hdr.gso_size, 1400);
        assert_eq!(hdr.gso_type, if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(
            writes[0].packet_len(),
            if v6 { 72 } else { 52 } + data.len()
        );
        let back = resegment(&writes[0]);
        assert_eq!(back.len(), 6);
        for (i, (b, s)) in back.iter().zip(&segments).enumerate() {
            if v6 {
                assert_eq!(b, s, "segment {i}");
            } else {
                // The kernel numbers the ids from the first; the rest is identical.
                assert_eq!(b[20..], s[20..], "segment {i}");
            }
        }
    }
}

#[test]
fn gaps_other_flows_and_other_packets_stay_apart() {
    let a0 = tcp_packet(false, 1000, TCP_ACK, &payload(100), 0);
    let a1 = tcp_packet(false, 1100, TCP_ACK, &payload(100), 1);
    // A gap in the sequence space.
    let a3 = tcp_packet(false, 1300, TCP_ACK, &payload(100), 2);
    let mut other = tcp_packet(false, 1200, TCP_ACK, &payload(100), 3);
    other[20..22].copy_from_slice(&40001u16.to_be_bytes());
    let fin = tcp_packet(false, 1400, TCP_ACK | TCP_FIN, &payload(100), 4);
    let bare_ack = tcp_packet(false, 1400, TCP_ACK, &[], 5);
    let udp = {
        let mut p = a0.clone();
        p[9] = 17;
        p
    };
    let mut coalescer = Coalescer::default();
    for p in [&a0, &other, &a1, &a3, &fin, &bare_ack, &udp] {
        coalescer.push(Bytes::from(p.clone()));
    }
    let mut writes = Vec::new();
    coalescer.drain(&mut writes);
    let lens: Vec<usize> = writes.iter().map(|w| w.payloads.len().max(1)).collect();
    assert_eq!(lens, [2, 1, 1, 1, 1, 1], "a0+a1, other, a3, fin, ack, udp");
    for w in &writes[1..] {
        assert_eq!(w.vnet, [0; VNET_HDR_LEN], "single packets go as they came");
    }
    assert_eq!(writes[1].to_vec()[VNET_HDR_LEN..], other[..]);
    assert_eq!(writes[5].to_vec()[VNET_HDR_LEN..], udp[..]);
}

#[test]
fn a_shorter_segment_ends_the_super_segment_and_size_is_bounded() {
    let mut coalescer = Coalescer::default();
    let mut seq = 0u32;
    let mut push = |c: &mut Coalescer, len: usize| {
        c.push(Bytes::from(tcp_packet(
            false,
            seq,
            TCP_ACK,
            &payload(len),
            0,
        )));
        seq += len as u32;
    };
    push(&mut coalescer, 1000);
    push(&mut coalescer, 500);
    push(&mut coalescer, 1000);
    for _ in 0..70 {
        push(&mut coalescer, 1000);
    }
    let mut writes = Vec::new();
    coalescer.drain(&mut writes);
    assert_eq!(writes[0].payloads.len(), 2, "1000 + 500");
    assert!(writes.iter().all(|w| w.packet_len() <= MAX_COALESCED));
    let segments: usize = writes.iter().map(|w| w.payloads.len()).sum();
    assert_eq!(segments, 73);
    assert_eq!(writes.len(), 3);
}
