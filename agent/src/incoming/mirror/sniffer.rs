//! The capture: a packet socket in the target's network namespace that sees the TCP segments
//! arriving for the mirrored ports, and the loop that feeds them to the [`FlowTable`].
//!
//! An `AF_PACKET`/`SOCK_DGRAM` socket receives every frame of every interface of the namespace
//! it was made in, link header removed (so IPv4 and IPv6 packets start at their IP header,
//! whatever the link). A classic BPF program attached to it keeps only what mirroring needs,
//! in the kernel, before any copy to the agent:
//!
//! ```text
//!   not loopback, pkttype == HOST (arriving, not sent)
//!        ├─▶ IPv4: protocol TCP, first fragment, dst port ∈ ports
//!        └─▶ IPv6: next header TCP,              dst port ∈ ports
//! ```
//!
//! so the target's answers, its other ports and its other protocols cost the agent nothing.
//! Loopback is left out ([`Loopback::Skip`], the mirror's setting): what crosses it comes
//! from inside the namespace (the pod's other containers, and the agents' own connections to
//! the target when a session steals the port and hands a request back), not from the
//! target's clients, and mirroring those would copy a stolen-then-returned request twice.
//! The socket only reads copies: the target's traffic is neither delayed nor changed. The
//! filter can be replaced while the socket runs ([`Sniffer::set_ports`]), so the mirrored
//! set changes without losing the connections in progress on the ports that stay.
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
/// Ancillary loads: `SKF_AD_OFF + SKF_AD_PROTOCOL`, `+ SKF_AD_PKTTYPE`, `+ SKF_AD_IFINDEX`.
const AD_PROTOCOL: u32 = (-0x1000i32) as u32;
const AD_PKTTYPE: u32 = (-0x1000i32 + 4) as u32;
const AD_IFINDEX: u32 = (-0x1000i32 + 8) as u32;
/// Instructions before the port tests.
const HEAD: usize = 17;
/// The receive buffer asked for: bursts of a busy port wait here while the agent is busy
/// (a packet the buffer cannot hold is a gap, which drops that connection's mirror).
const RCVBUF: usize = 8 << 20;
/// Bytes of each packet kept: headers and a full loopback-sized segment.
const SNAPLEN: u32 = 0x40000;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Whether segments crossing the loopback interface are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loopback {
    /// Left out: the mirror's setting (see the module comment).
    Skip,
    /// Captured too: for a capture of a namespace whose traffic is all local.
    Capture,
}

/// The BPF program for `ports` (see the module comment). At most 200 ports: the jumps are
/// 8-bit.
pub fn program(ports: &[u16], loopback: Loopback) -> Vec<libc::sock_filter> {
    assert!(
        !ports.is_empty() && ports.len() <= 200,
        "1 to 200 mirrored ports"
    );
    let n = ports.len() as u8;
    // Offsets to the last two instructions (accept, reject) from the instruction after `at`.
    let total = HEAD + usize::from(n) + 2;
    let reject = |at: usize| (total - 1 - (at + 1)) as u8;
    let skip_loopback = |to_reject: u8| match loopback {
        Loopback::Skip => to_reject,
        Loopback::Capture => 0,
    };
    let mut p = vec![
        op(LD | W | ABS, 0, 0, AD_IFINDEX), // 0
        // 1: not loopback (ifindex 1), unless it is captured
        op(JMP | JEQ | K, skip_loopback(reject(1)), 0, 1),
        op(LD | W | ABS, 0, 0, AD_PKTTYPE),        // 2
        op(JMP | JEQ | K, 0, reject(3), 0),        // 3: PACKET_HOST
        op(LD | W | ABS, 0, 0, AD_PROTOCOL),       // 4
        op(JMP | JEQ | K, 1, 0, 0x0800),           // 5: IPv4 → 7
        op(JMP | JEQ | K, 7, reject(6), 0x86dd),   // 6: IPv6 → 14
        op(LD | B | ABS, 0, 0, 9),                 // 7: protocol
        op(JMP | JEQ | K, 0, reject(8), 6),        // 8: TCP
        op(LD | H | ABS, 0, 0, 6),                 // 9: flags and fragment offset
        op(JMP | JSET | K, reject(10), 0, 0x1fff), // 10: not a later fragment
        op(LDX | B | MSH, 0, 0, 0),                // 11: X = IP header length
        op(LD | H | IND, 0, 0, 2),                 // 12: destination port
        op(JMP | JA, 0, 0, 3),                     // 13: → 17
        op(LD | B | ABS, 0, 0, 6),                 // 14: next header
        op(JMP | JEQ | K, 0, reject(15), 6),       // 15: TCP
        op(LD | H | ABS, 0, 0, 42),                // 16: destination port
    ];
    for (i, &port) in ports.iter().enumerate() {
        let at = HEAD + i;
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
    loopback: Loopback,
}

impl Sniffer {
    /// Opens the capture in the current thread's network namespace.
    pub fn open(ports: &[u16], loopback: Loopback) -> io::Result<Self> {
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
        attach(&fd, ports, loopback)?;
        let socket = socket2::SockRef::from(&fd);
        // Past the system's rmem_max with CAP_NET_ADMIN; within it otherwise.
        if set_int(&fd, libc::SO_RCVBUFFORCE, RCVBUF).is_err() {
            let _ = socket.set_recv_buffer_size(RCVBUF);
        }
        // SAFETY: the OwnedFd keeps its descriptor, unchanged, until the AsyncFd that owns it
        // drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self { fd, loopback })
    }

    /// Replaces the filter: from now on only segments for `ports` arrive.
    pub fn set_ports(&self, ports: &[u16]) -> io::Result<()> {
        attach(self.fd.get_ref(), ports, self.loopback)
    }

    /// The next captured packet, from its IP header, and its length before any cut
    /// (larger than `buf` when it did not fit: such a packet must be skipped).
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let result = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for writes of its length.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_TRUNC,
                    )
                };
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

/// Attaches the BPF program for `ports` to the socket, replacing any before it.
fn attach(fd: &OwnedFd, ports: &[u16], loopback: Loopback) -> io::Result<()> {
    let filter = program(ports, loopback);
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
    Ok(())
}

fn set_int(fd: &OwnedFd, option: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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
        if len > packet.len() {
            continue; // cut: a gap, never a corrupt stream
        }
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
            let p = program(ports, Loopback::Skip);
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
                let at = HEAD + i;
                assert_eq!(at + 1 + usize::from(p[at].jt), accept);
            }
            let last = HEAD + ports.len() - 1;
            assert_eq!(last + 1 + usize::from(p[last].jf), reject);
            assert_eq!(1 + 1 + usize::from(p[1].jt), reject, "loopback");
            assert_eq!(3 + 1 + usize::from(p[3].jf), reject, "not arriving");
            assert_eq!(13 + 1 + p[13].k as usize, HEAD);
            assert_eq!(5 + 1 + usize::from(p[5].jt), 7);
            assert_eq!(6 + 1 + usize::from(p[6].jt), 14);
            let with_loopback = program(ports, Loopback::Capture);
            assert_eq!(with_loopback[1].jt, 0, "loopback goes on to the next test");
        }
    }
}
