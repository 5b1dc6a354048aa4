//! Packets larger than the link's MTU, as IPv4 or IPv6 fragments: a reply the stack builds
//! ([`push_datagram`]) and a packet already built for a larger MTU ([`push_fragments`]). The
//! session's kernel reassembles them.

use std::net::IpAddr;

use smoltcp::wire::{IpProtocol, Ipv4Packet, Ipv6Packet};

use super::header::{
    ip_header_len, write_ip_header, IPV4_HEADER_LEN, IPV6_FRAGMENT_HEADER_LEN, IPV6_HEADER_LEN,
};
use crate::device::TxQueue;

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
pub(super) fn push_datagram(
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
