//! The capture: a packet socket in the target's network namespace that sees the TCP segments
//! arriving for the mirrored ports, and the loop that feeds them to the [`FlowTable`].
//!
//! An `AF_PACKET`/`SOCK_DGRAM` socket receives every frame of every interface of the namespace
//! it was made in, link header removed (so IPv4 and IPv6 packets start at their IP header,
//! whatever the link). A classic BPF program attached to it keeps only what mirroring needs,
//! in the kernel, before any copy to the agent:
//!
//! ```text
//!   pkttype == HOST (arriving, not sent) ─▶ IPv4: protocol TCP, first fragment, dst port ∈ ports
//!                                        └▶ IPv6: next header TCP,            dst port ∈ ports
//! ```
//!
//! so the target's answers, its other ports and its other protocols cost the agent nothing.
//! (On loopback each packet passes twice, once sent and once received: the pkttype test keeps
//! one.) The socket only reads copies: the target's traffic is neither delayed nor changed.
//! IPv6 packets with extension headers before TCP are not matched; see [`super::packet`].
//!
//! The socket must be made in the target's namespace (`Sniffer::open` on a thread that entered
//! it), and needs `CAP_NET_RAW` there.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::flows::{FlowEvent, FlowTable};
use super::packet::{self, FlowKey};

// Classic BPF opcodes (linux/filter.h).
const LD: u16 = 0x00;
const LDX: u16 = 0x01;
const JMP: u16 = 0x05;
const RET: u16 = 0x06;
const W: u16 = 0x00;
const H: u16 = 0x08;
const B: u16 = 0x10;
const ABS: u16 = 0x20;
const IND: u16 = 0x40;
const MSH: u16 = 0xa0;
const JA: u16 = 0x00;
const JEQ: u16 = 0x10;
const JSET: u16 = 0x40;
const K: u16 = 0x00;
/// Ancillary loads: `SKF_AD_OFF + SKF_AD_PROTOCOL` and `+ SKF_AD_PKTTYPE`.
const AD_PROTOCOL: u32 = (-0x1000i32) as u32;
const AD_PKTTYPE: u32 = (-0x1000i32 + 4) as u32;
/// Bytes of each packet kept: headers and a full loopback-sized segment.
const SNAPLEN: u32 = 0x40000;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The BPF program for `ports` (see the module comment). At most 200 ports: the jumps are
/// 8-bit.
pub fn program(ports: &[u16]) -> Vec<libc::sock_filter> {
    assert!(
        !ports.is_empty() && ports.len() <= 200,
        "1 to 200 mirrored ports"
    );
    let n = ports.len() as u8;
    // Offsets to the last two instructions (accept, reject) from the instruction after `at`.
    let total = 15 + usize::from(n) + 2;
    let reject = |at: usize| (total - 1 - (at + 1)) as u8;
    let mut p = vec![
        op(LD | W | ABS, 0, 0, AD_PKTTYPE),       // 0
        op(JMP | JEQ | K, 0, reject(1), 0),       // 1: PACKET_HOST
        op(LD | W | ABS, 0, 0, AD_PROTOCOL),      // 2
        op(JMP | JEQ | K, 1, 0, 0x0800),          // 3: IPv4 → 5
        op(JMP | JEQ | K, 7, reject(4), 0x86dd),  // 4: IPv6 → 12
        op(LD | B | ABS, 0, 0, 9),                // 5: protocol
        op(JMP | JEQ | K, 0, reject(6), 6),       // 6: TCP
        op(LD | H | ABS, 0, 0, 6),                // 7: flags and fragment offset
        op(JMP | JSET | K, reject(8), 0, 0x1fff), // 8: not a later fragment
        op(LDX | B | MSH, 0, 0, 0),               // 9: X = IP header length
        op(LD | H | IND, 0, 0, 2),                // 10: destination port
        op(JMP | JA, 0, 0, 3),                    // 11: → 15
        op(LD | B | ABS, 0, 0, 6),                // 12: next header
        op(JMP | JEQ | K, 0, reject(13), 6),      // 13: TCP
        op(LD | H | ABS, 0, 0, 42),               // 14: destination port
    ];
    for (i, &port) in ports.iter().enumerate() {
        let at = 15 + i;
        let accept = (total - 2 - (at + 1)) as u8;
        let next_or_reject = if i + 1 == ports.len() { reject(at) } else { 0 };
        p.push(op(JMP | JEQ | K, accept, next_or_reject, u32::from(port)));
    }
    p.push(op(RET | K, 0, 0, SNAPLEN));
    p.push(op(RET | K, 0, 0, 0));
    debug_assert_eq!(p.len(), total);
    p
}

/// A packet socket seeing the segments that arrive for some ports.
pub struct Sniffer {
    fd: AsyncFd<OwnedFd>,
}

impl Sniffer {
    /// Opens the capture in the current thread's network namespace.
    pub fn open(ports: &[u16]) -> io::Result<Self> {
        let protocol = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let filter = program(ports);
        let fprog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: `fprog` points at `filter`, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&fprog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd keeps its descriptor, unchanged, until the AsyncFd that owns it
        // drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// The next captured packet, from its IP header; its length (cut at `buf`'s).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for writes of its length.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            if let Ok(result) = result {
                return result;
            }
        }
    }
}

/// Feeds captured segments to `table` forever, calling `on_event` with each connection's
/// events and next bytes, and forgetting idle connections (reported as [`FlowEvent::Aborted`])
/// every `sweep`.
pub async fn capture(
    sniffer: &Sniffer,
    table: &mut FlowTable,
    sweep: Duration,
    mut on_event: impl FnMut(FlowKey, FlowEvent, &[u8]),
) -> io::Result<()> {
    let mut packet = vec![0u8; SNAPLEN as usize];
    let mut out = Vec::new();
    let mut next_sweep = Instant::now() + sweep;
    loop {
        let received = tokio::time::timeout_at(next_sweep.into(), sniffer.recv(&mut packet)).await;
        let now = Instant::now();
        if now >= next_sweep {
            for key in table.expire(now) {
                on_event(key, FlowEvent::Aborted, &[]);
            }
            next_sweep = now + sweep;
        }
        let Ok(received) = received else { continue };
        let len = received?;
        let Some((key, segment)) = packet::parse(&packet[..len]) else {
            continue;
        };
        out.clear();
        let event = table.segment(now, key, &segment, &mut out);
        if event != FlowEvent::Ignored {
            on_event(key, event, &out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_jumps_land_on_accept_or_reject() {
        for ports in [&[80u16][..], &[80, 8080, 443]] {
            let p = program(ports);
            let (accept, reject) = (p.len() - 2, p.len() - 1);
            for (i, insn) in p.iter().enumerate() {
                if insn.code & 0x07 == JMP && insn.code != JMP | JA {
                    for target in [i + 1 + usize::from(insn.jt), i + 1 + usize::from(insn.jf)] {
                        assert!(target < p.len(), "jump out of the program at {i}");
                    }
                }
            }
            // Every port test jumps to accept when equal.
            for (i, _) in ports.iter().enumerate() {
                let at = 15 + i;
                assert_eq!(at + 1 + usize::from(p[at].jt), accept);
            }
            let last = 15 + ports.len() - 1;
            assert_eq!(last + 1 + usize::from(p[last].jf), reject);
            assert_eq!(1 + 1 + usize::from(p[1].jf), reject);
            assert_eq!(11 + 1 + p[11].k as usize, 15);
            assert_eq!(4 + 1 + usize::from(p[4].jt), 12);
        }
    }
}
