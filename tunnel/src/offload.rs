//! TCP segmentation and coalescing between a TUN with virtio-net headers and a tunnel whose
//! datagrams hold one MTU-sized packet each. No I/O: the pump reads and writes, this module
//! only rewrites bytes.
//!
//! On a path with a ~1500-byte MTU every inner packet costs one datagram whatever happens, but
//! it need not cost one TUN read or write, nor one pass of the session kernel's TCP stack. The
//! TUN is opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`,
//! so:
//!
//! * **Uplink (segmentation, [`segment`]).** The session's kernel hands over TCP
//!   super-segments of up to 64 KiB behind a header saying `gso_type` TCPv4/v6 and
//!   `gso_size` (the flow's MSS), with the TCP checksum left partial. Each is cut here into
//!   the packets the kernel would have sent: the IP and TCP headers copied, IPv4 total length
//!   and id (+1 per segment, as the kernel numbers them) and IPv6 payload length set,
//!   sequence numbers advanced by the bytes before, CWR only on the first segment and FIN and
//!   PSH only on the last, and both checksums computed. Each segment is one complete packet
//!   in one datagram, so a lost datagram costs one MSS of retransmission. A packet without
//!   `gso_type` whose checksum is partial (`NEEDS_CSUM`: UDP, small TCP segments) gets it
//!   completed; any other goes on as it came.
//! * **Downlink (coalescing, [`Coalescer`]).** Packets the agent sends back arrive one per
//!   datagram; the pump drains what has arrived and coalesces consecutive in-order segments
//!   of one TCP flow (same addresses, ports, acknowledgement, window, header length and
//!   options, IPv4 TOS/TTL/DF, nothing but ACK and PSH set, the same payload size except a
//!   shorter last one, at most 64 KiB) into one super-segment written behind a header with
//!   `gso_type` and `gso_size`, the IP lengths rewritten and the TCP checksum field holding
//!   the pseudo-header sum with `NEEDS_CSUM` (`CHECKSUM_PARTIAL`, which local delivery takes
//!   as checked). The session's kernel then runs its receive path once per super-segment, as
//!   its own GRO would do for a NIC. A segment that cannot join goes out alone behind an empty
//!   header, its own checksums as the agent made them. Coalesced payloads are not copied: a
//!   write is the rewritten headers followed by slices of the received datagrams (`writev`).
//!
//! This is the design of wireguard-go's `tun/offload_linux.go`, written for this tunnel: the
//! datagrams come from an authenticated QUIC connection, so the segments' checksums are not
//! verified before coalescing (the agent's stack computed them).

use bytes::{Bytes, BytesMut};

/// `sizeof(struct virtio_net_hdr)`: what a TUN with `IFF_VNET_HDR` puts before each packet
/// unless told otherwise (`TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 10;

const F_NEEDS_CSUM: u8 = 1;
const GSO_NONE: u8 = 0;
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const GSO_ECN: u8 = 0x80;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;
/// The largest IP packet a coalesced write may make.
const MAX_COALESCED: usize = 65_535;

/// A `virtio_net_hdr` (the TUN's byte order is the host's, little-endian on every target this
/// runs on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub fn decode(bytes: &[u8]) -> Option<VnetHdr> {
        let b = bytes.get(..VNET_HDR_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    pub fn encode(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Why a packet read from the TUN could not be turned into datagrams.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("shorter than its virtio-net header")]
    NoHeader,
    #[error("a segmentation request for something that is not a well-formed TCP packet")]
    NotTcp,
    #[error("segment size {0} does not fit")]
    BadSegmentSize(u16),
    #[error("unsupported segmentation type {0}")]
    UnsupportedGso(u8),
    #[error("checksum position outside the packet")]
    BadChecksumOffset,
}

/// Ones'-complement sum of `data` added to `initial`, not folded. Big-endian 32-bit words
/// summed into 64 bits (no carry is lost below 2^32 words), which the compiler vectorises;
/// folding the 32-bit halves later gives the 16-bit sum.
fn sum(data: &[u8], initial: u64) -> u64 {
    let mut words = data.chunks_exact(4);
    let mut acc = initial;
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut tail = [0u8; 4];
    let rest = words.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    acc + u64::from(u32::from_be_bytes(tail))
}

fn fold(acc: u64) -> u16 {
    let mut acc = (acc & 0xffff_ffff) + (acc >> 32);
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum (complemented) of `data` starting from the partial sum `initial`.
fn checksum(data: &[u8], initial: u64) -> u16 {
    !fold(sum(data, initial))
}

/// The TCP pseudo-header's sum for a packet whose IP header is `ip` (v4 or v6) and whose
/// TCP header and payload are `tcp_len` bytes.
fn pseudo_header_sum(ip: &[u8], v6: bool, tcp_len: usize) -> u64 {
    let addrs = if v6 { &ip[8..40] } else { &ip[12..20] };
    sum(addrs, u64::from(PROTO_TCP) + tcp_len as u64)
}

/// Header lengths of a TCP packet: (IP header, TCP header), and whether it is IPv6. `None`
/// for anything else (IPv6 extension headers included).
fn tcp_headers(packet: &[u8]) -> Option<(usize, usize, bool)> {
    let version = packet.first()? >> 4;
    let (ip_len, v6) = match version {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl || packet[9] != PROTO_TCP {
                return None;
            }
            // A fragment is not a whole TCP segment.
            let frag = u16::from_be_bytes([packet[6], packet[7]]);
            if frag & 0x3fff != 0 {
                return None;
            }
            (ihl, false)
        }
        6 => {
            if packet.len() < 40 || packet[6] != PROTO_TCP {
                return None;
            }
            (40, true)
        }
        _ => return None,
    };
    let tcp = packet.get(ip_len..ip_len + 20)?;
    let tcp_len = usize::from(tcp[12] >> 4) * 4;
    if tcp_len < 20 || packet.len() < ip_len + tcp_len {
        return None;
    }
    Some((ip_len, tcp_len, v6))
}

/// Sets the IP length field of the packet whose headers start `head` to mean `total` bytes of
/// packet, and the IPv4 id and header checksum.
fn set_ip_length(head: &mut [u8], ip_len: usize, v6: bool, total: usize, id: Option<u16>) {
    if v6 {
        head[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    } else {
        head[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        if let Some(id) = id {
            head[4..6].copy_from_slice(&id.to_be_bytes());
        }
        head[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(&head[..ip_len], 0);
        head[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

/// Turns one read from the TUN (`read`: virtio-net header, then the packet) into the packets
/// to send, each appended to `out` and pushed to `packets` as its own `Bytes`.
pub fn segment(
    read: &[u8],
    out: &mut BytesMut,
    packets: &mut Vec<Bytes>,
) -> Result<(), SegmentError> {
    let hdr = VnetHdr::decode(read).ok_or(SegmentError::NoHeader)?;
    let packet = &read[VNET_HDR_LEN..];
    let gso = hdr.gso_type & !GSO_ECN;
    if gso == GSO_NONE {
        out.extend_from_slice(packet);
        if hdr.flags & F_NEEDS_CSUM != 0 {
            let start = usize::from(hdr.csum_start);
            let at = start + usize::from(hdr.csum_offset);
            if at + 2 > out.len() {
                out.clear();
                return Err(SegmentError::BadChecksumOffset);
            }
            // The field holds the pseudo-header sum: summing from `csum_start` with it in
            // place gives the checksum.
            let c = checksum(&out[start..], 0);
            // A UDP checksum of zero means "none": send it as all ones.
            let c = if c == 0 && packet.get(9) == Some(&17) {
                0xffff
            } else {
                c
            };
            out[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        packets.push(out.split().freeze());
        return Ok(());
    }
    if gso != GSO_TCPV4 && gso != GSO_TCPV6 {
        return Err(SegmentError::UnsupportedGso(hdr.gso_type));
    }
    let (ip_len, tcp_len, v6) = tcp_headers(packet).ok_or(SegmentError::NotTcp)?;
    if v6 != (gso == GSO_TCPV6) {
        return Err(SegmentError::NotTcp);
    }
    let headers = ip_len + tcp_len;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(SegmentError::BadSegmentSize(hdr.gso_size));
    }
    let payload = &packet[headers..];
    let first_id = u16::from_be_bytes([packet[4], packet[5]]);
    let seq = u32::from_be_bytes(packet[ip_len + 4..ip_len + 8].try_into().expect("4 bytes"));
    let flags = packet[ip_len + 13];
    let count = payload.len().div_ceil(mss).max(1);
    for (i, chunk) in payload
        .chunks(mss)
        .chain(payload.is_empty().then_some(&[][..]))
        .enumerate()
    {
        let start = out.len();
        out.extend_from_slice(&packet[..headers]);
        out.extend_from_slice(chunk);
        let seg = &mut out[start..];
        let total = headers + chunk.len();
        let id = (!v6).then(|| first_id.wrapping_add(i as u16));
        set_ip_length(seg, ip_len, v6, total, id);
        let tcp = &mut seg[ip_len..];
        tcp[4..8].copy_from_slice(&seq.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut f = flags;
        if i != 0 {
            f &= !TCP_CWR;
        }
        if i + 1 != count {
            f &= !(TCP_FIN | TCP_PSH);
        }
        tcp[13] = f;
        tcp[16..18].copy_from_slice(&[0, 0]);
        let pseudo = pseudo_header_sum(&seg[..ip_len], v6, total - ip_len);
        let c = checksum(&seg[ip_len..], pseudo);
        seg[ip_len + 16..ip_len + 18].copy_from_slice(&c.to_be_bytes());
        packets.push(out.split().freeze());
    }
    Ok(())
}

/// What identifies a TCP flow's segments that may be coalesced: addresses and ports, and the
/// header fields that must be equal in every segment of a super-segment.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FlowKey {
    addrs: [u8; 32],
    v6: bool,
    ports: [u8; 4],
    ack: [u8; 4],
    window: [u8; 2],
    /// IPv4 TOS, TTL and the DF bit; IPv6 traffic class and hop limit.
    ip_fields: [u8; 3],
}

/// One write to the TUN: a virtio-net header, the packet's headers (rewritten when several
/// segments were coalesced), then the payload slices.
#[derive(Debug)]
pub struct TunWrite {
    pub vnet: [u8; VNET_HDR_LEN],
    /// The packet's IP and TCP headers, or the whole packet when it is not coalescable TCP.
    pub head: Bytes,
    pub payloads: Vec<Bytes>,
}

impl TunWrite {
    /// The IP packet's length.
    pub fn packet_len(&self) -> usize {
        self.head.len() + self.payloads.iter().map(Bytes::len).sum::<usize>()
    }

    /// The bytes written, in one buffer (tests, and a writer without `writev`).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = self.vnet.to_vec();
        v.extend_from_slice(&self.head);
        for p in &self.payloads {
            v.extend_from_slice(p);
        }
        v
    }
}

#[derive(Debug)]
struct Item {
    key: Option<FlowKey>,
    /// The headers (or whole packet) as received.
    head: Bytes,
    payloads: Vec<Bytes>,
    /// Only for TCP items.
    ip_len: usize,
    /// The sequence number the next segment must carry.
    next_seq: u32,
    /// Payload size of the first segment: every one but the last must have it.
    gso_size: usize,
    total: usize,
    /// No more segments may join (a shorter or PSH segment ended it, or the flow moved on).
    closed: bool,
}

/// Coalesces the packets of one drained batch of datagrams into TUN writes; see the module
/// comment.
#[derive(Debug, Default)]
pub struct Coalescer {
    items: Vec<Item>,
}

/// What of a packet makes it coalescable: its key, header lengths, sequence number, flags
/// and payload length.
fn coalescable(packet: &[u8]) -> Option<(FlowKey, usize, usize, u32, u8)> {
    let (ip_len, tcp_len, v6) = tcp_headers(packet)?;
    let headers = ip_len + tcp_len;
    // The IP length must describe the packet exactly (no padding, nothing cut).
    let ip_total = if v6 {
        40 + usize::from(u16::from_be_bytes([packet[4], packet[5]]))
    } else {
        usize::from(u16::from_be_bytes([packet[2], packet[3]]))
    };
    if ip_total != packet.len() || packet.len() == headers {
        return None;
    }
    if !v6 && ip_len != 20 {
        return None;
    }
    let tcp = &packet[ip_len..];
    let flags = tcp[13];
    if flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) != 0
        || flags & TCP_ACK == 0
    {
        return None;
    }
    let mut addrs = [0u8; 32];
    let ip_fields = if v6 {
        addrs.copy_from_slice(&packet[8..40]);
        let tc = (u16::from_be_bytes([packet[0], packet[1]]) >> 4) as u8;
        // The flow label must match too, as the kernel's GRO requires.
        if packet[1] & 0x0f != 0 || packet[2] != 0 || packet[3] != 0 {
            return None;
        }
        [tc, packet[7], 0]
    } else {
        addrs[..8].copy_from_slice(&packet[12..20]);
        [packet[1], packet[8], packet[6] & 0x40]
    };
    let key = FlowKey {
        addrs,
        v6,
        ports: tcp[..4].try_into().expect("4 bytes"),
        ack: tcp[8..12].try_into().expect("4 bytes"),
        window: tcp[14..16].try_into().expect("2 bytes"),
        ip_fields,
    };
    let seq = u32::from_be_bytes(tcp[4..8].try_into().expect("4 bytes"));
    Some((key, ip_len, tcp_len, seq, flags))
}

impl Coalescer {
    /// Adds the next packet of the batch.
    pub fn push(&mut self, packet: Bytes) {
        let Some((key, ip_len, tcp_len, seq, flags)) = coalescable(&packet) else {
            self.items.push(Item {
                key: None,
                head: packet,
                payloads: Vec::new(),
                ip_len: 0,
                next_seq: 0,
                gso_size: 0,
                total: 0,
                closed: true,
            });
            return;
        };
        let headers = ip_len + tcp_len;
        let payload_len = packet.len() - headers;
        // The latest item of this flow, if it may take the segment.
        if let Some(item) = self
            .items
            .iter_mut()
            .rev()
            .find(|i| i.key.as_ref() == Some(&key))
        {
            let joins = !item.closed
                && item.next_seq == seq
                && item.head.len() == headers
                && item.head[ip_len + 20..] == packet[ip_len + 20..headers]
                && payload_len <= item.gso_size
                && item.total + payload_len <= MAX_COALESCED;
            if joins {
                item.payloads.push(packet.slice(headers..));
                item.total += payload_len;
                item.next_seq = seq.wrapping_add(payload_len as u32);
                // Only the last segment may be shorter or carry PSH; the kernel's own GRO
                // ends a super-segment there too.
                if payload_len < item.gso_size || flags & TCP_PSH != 0 {
                    item.closed = true;
                }
                if flags & TCP_PSH != 0 {
                    // The super-segment carries PSH: its headers are the first segment's.
                    let mut head = BytesMut::from(&item.head[..]);
                    head[ip_len + 13] |= TCP_PSH;
                    item.head = head.freeze();
                }
                return;
            }
            item.closed = true;
        }
        self.items.push(Item {
            key: Some(key),
            head: packet.slice(..headers),
            payloads: vec![packet.slice(headers..)],
            ip_len,
            next_seq: seq.wrapping_add(payload_len as u32),
            gso_size: payload_len,
            total: packet.len(),
            closed: flags & TCP_PSH != 0,
        });
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The writes for everything pushed since the last drain, in arrival order of each
    /// write's first segment.
    pub fn drain(&mut self, writes: &mut Vec<TunWrite>) {
        for item in self.items.drain(..) {
            if item.payloads.len() <= 1 {
                writes.push(TunWrite {
                    vnet: [0; VNET_HDR_LEN],
                    head: item.head,
                    payloads: item.payloads,
                });
                continue;
            }
            let key = item.key.expect("only TCP items coalesce");
            let ip_len = item.ip_len;
            let mut head = BytesMut::from(&item.head[..]);
            set_ip_length(&mut head, ip_len, key.v6, item.total, None);
            let pseudo = pseudo_header_sum(&head[..ip_len], key.v6, item.total - ip_len);
            head[ip_len + 16..ip_len + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
            let vnet = VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type: if key.v6 { GSO_TCPV6 } else { GSO_TCPV4 },
                hdr_len: head.len() as u16,
                gso_size: item.gso_size as u16,
                csum_start: ip_len as u16,
                csum_offset: 16,
            };
            writes.push(TunWrite {
                vnet: vnet.encode(),
                head: head.freeze(),
                payloads: item.payloads,
            });
        }
    }
}

#[cfg(test)]
mod tests;
