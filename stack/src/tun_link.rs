//! The session's TUN device as the stack's link: the one-relay path of local targets.
//!
//! When the agent runs on the client's machine, the client hands it the session's TUN
//! descriptor (see the agent's `tun_handoff`) and the stack reads and writes the
//! device itself: no QUIC, no encryption and no second process on the packet path. The QUIC
//! connection still carries the control stream and the file requests, and its end still ends
//! the session.
//!
//! * Receiving reads one packet per `read(2)` (a TUN without `IFF_VNET_HDR` gives exactly one
//!   IP packet per read) straight into the spare room of a `BytesMut`, whose memory comes back
//!   once the stack has dropped earlier packets: no copy, no zeroing, no allocation per packet
//!   in steady state. The engine calls it until it is `Pending`, so a burst is drained until
//!   `EAGAIN` before the task sleeps; only then is the descriptor's readiness re-armed.
//! * Sending writes each queued packet with `write(2)` from the engine's own task. The kernel
//!   processes a TUN write synchronously (the packet goes up the session's stack inside the
//!   call), so there is no hand-off to another task or thread. A TUN's send buffer is
//!   unlimited, so `EAGAIN` is not expected; if it comes, the packet stays queued and the
//!   stack feels backpressure as with a full tunnel. A packet the kernel refuses (malformed)
//!   is counted and dropped.
//! * Virtio-net headers: a client that hands its TUN to the agent opens it with
//!   `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM)` (the link finds out with `TUNGETIFF`, so a
//!   plain TUN works too). Each read then starts with a `virtio_net_hdr`, which is skipped:
//!   the session's kernel no longer computes the checksums of what it sends (they arrive
//!   partial, `NEEDS_CSUM`), and the stack does not verify them anyway. Each TCP segment the
//!   link writes goes behind a header with `VIRTIO_NET_HDR_F_NEEDS_CSUM`, `csum_start` at the
//!   TCP header and `csum_offset` 16: the kernel makes it `CHECKSUM_PARTIAL`, which local
//!   delivery takes as checked, so smoltcp computes no TCP checksum
//!   ([`tx_checksum_trusted`](PacketLink::tx_checksum_trusted)); the device leaves the
//!   pseudo-header sum in the field, as an offloading NIC expects, so a packet the session
//!   forwards gets a right checksum. (`VIRTIO_NET_HDR_F_DATA_VALID` would be simpler, but a
//!   TUN ignores it on writes: the kernel verifies such packets and drops them.) Other packets
//!   go behind an empty header with their checksums computed: the IPv4 header checksum is
//!   always verified, and ICMP replies reach programs (ping) that check theirs. TSO is not
//!   turned on: the device's MTU is already the largest IP packet on this path.
//! * The session's network namespace deleting the device (its last process exited) makes
//!   reads and writes fail with `EBADFD`: that is [`LinkError::Closed`].

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::device::TxQueue;
use super::link::{LinkError, PacketLink};
use super::stats::Stats;

/// Packets' worth of buffer reserved at once for reads.
const READ_BATCH: usize = 16;
/// The largest IP packet (without jumbograms). Reads always leave room for one: a TUN read
/// into a smaller buffer silently truncates the packet, and the device's MTU is the client's
/// choice, not necessarily the stack's.
const MAX_PACKET: usize = 65_535;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` is partial.
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// Where the TCP checksum field is in the TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;
/// The largest virtio-net header the link accepts (`virtio_net_hdr_mrg_rxbuf` is 12 bytes,
/// `virtio_net_hdr_v1_hash` 20).
const MAX_VNET_HDR: usize = 24;

/// A TUN device (`IFF_TUN | IFF_NO_PI`, maybe `IFF_VNET_HDR`) carrying the session's
/// packets.
pub struct TunLink {
    fd: AsyncFd<OwnedFd>,
    /// The virtio-net header written before each packet (zeros): empty without
    /// `IFF_VNET_HDR`.
    vnet_hdr: Vec<u8>,
    /// The header written before TCP segments (see the module comment), filled per packet.
    tcp_hdr: Vec<u8>,
    /// Room left for each read.
    max_read: usize,
    buffer: BytesMut,
    stats: Arc<Stats>,
}

impl TunLink {
    /// Takes over `fd`, a TUN descriptor, making it non-blocking. `mtu` is the largest packet
    /// the stack builds (reads take up to [`MAX_PACKET`] whatever it is).
    pub fn new(fd: OwnedFd, mtu: usize, stats: Arc<Stats>) -> io::Result<Self> {
        let mtu = mtu.max(MAX_PACKET);
        set_nonblocking(&fd)?;
        let vnet_hdr = vec![0u8; vnet_hdr_len(&fd)?];
        let mut tcp_hdr = vnet_hdr.clone();
        if let Some(flags) = tcp_hdr.first_mut() {
            *flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
            tcp_hdr[8..10].copy_from_slice(&TCP_CHECKSUM_OFFSET.to_le_bytes());
        }
        // SAFETY: the `OwnedFd` stays open, naming the same device, until the `AsyncFd` drops
        // it.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(Self {
            fd,
            max_read: mtu + vnet_hdr.len(),
            vnet_hdr,
            tcp_hdr,
            buffer: BytesMut::with_capacity(mtu * READ_BATCH),
            stats,
        })
    }

    fn read_one(&mut self) -> io::Result<usize> {
        self.buffer.reserve(self.max_read);
        let spare = self.buffer.spare_capacity_mut();
        let room = spare.len().min(self.max_read);
        // SAFETY: the kernel writes at most `room` bytes into the spare capacity, which is
        // valid for writes of that many bytes.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), spare.as_mut_ptr().cast(), room) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the read initialised `n` bytes right after the current length.
        unsafe { self.buffer.set_len(self.buffer.len() + n) };
        Ok(n)
    }

    fn write_one(&mut self, packet: &[u8]) -> io::Result<usize> {
        let hdr = match tcp_header_start(packet) {
            Some(start) if !self.tcp_hdr.is_empty() => {
                self.tcp_hdr[6..8].copy_from_slice(&start.to_le_bytes());
                &self.tcp_hdr
            }
            _ => &self.vnet_hdr,
        };
        let iov = [
            libc::iovec {
                iov_base: hdr.as_ptr() as *mut _,
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut _,
                iov_len: packet.len(),
            },
        ];
        let (iov, count) = if self.vnet_hdr.is_empty() {
            (&iov[1..], 1)
        } else {
            (&iov[..], 2)
        };
        // SAFETY: both buffers are valid for reads of their lengths; the kernel only reads.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), count) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

/// Where the TCP header of `packet` starts, if it is an unfragmented TCP segment.
fn tcp_header_start(packet: &[u8]) -> Option<u16> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 && packet[9] == 6 => Some(u16::from(packet[0] & 0x0f) * 4),
        6 if packet.len() >= 40 && packet[6] == 6 => Some(40),
        _ => None,
    }
}

/// Length of the virtio-net header the device puts before each packet: 0 without
/// `IFF_VNET_HDR`.
fn vnet_hdr_len(fd: &OwnedFd) -> io::Result<usize> {
    // SAFETY: TUNGETIFF fills the `ifreq` we pass, which is valid for writes.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETIFF, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TUNGETIFF sets the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_VNET_HDR as libc::c_short == 0 {
        return Ok(0);
    }
    let mut len: libc::c_int = 0;
    // SAFETY: TUNGETVNETHDRSZ writes one int into `len`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNGETVNETHDRSZ, &mut len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    match usize::try_from(len) {
        Ok(len) if (10..=MAX_VNET_HDR).contains(&len) => Ok(len),
        _ => Err(io::Error::other(format!(
            "the TUN's virtio-net header is {len} bytes, not 10 to {MAX_VNET_HDR}"
        ))),
    }
}

/// Whether `err` says the device is gone (its namespace deleted it).
fn device_gone(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EBADFD) | Some(libc::EIO))
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl PacketLink for TunLink {
    fn tx_checksum_trusted(&self) -> bool {
        !self.vnet_hdr.is_empty()
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, LinkError>> {
        loop {
            match self.read_one() {
                Ok(0) => return Poll::Ready(Err(LinkError::Closed)),
                Ok(n) if n <= self.vnet_hdr.len() => {
                    // A header without a packet: nothing to hand on.
                    self.buffer.clear();
                }
                Ok(_) => {
                    let mut packet = self.buffer.split();
                    packet.advance(self.vnet_hdr.len());
                    return Poll::Ready(Ok(packet.freeze()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    match self.fd.poll_read_ready(cx) {
                        // Stale readiness: clear it and read again (a packet that arrived
                        // since carries a newer readiness event, which this does not clear).
                        Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(LinkError::Tun(err))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if device_gone(&err) => return Poll::Ready(Err(LinkError::Closed)),
                Err(err) => return Poll::Ready(Err(LinkError::Tun(err))),
            }
        }
    }

    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut TxQueue,
    ) -> Poll<Result<(), LinkError>> {
        while let Some(packet) = queue.front() {
            match self.write_one(packet) {
                Ok(_) => {
                    queue.pop_front();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    match self.fd.poll_write_ready(cx) {
                        Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(LinkError::Tun(err))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if device_gone(&err) => return Poll::Ready(Err(LinkError::Closed)),
                Err(err) => {
                    Stats::inc(&self.stats.dropped_tun_refused);
                    tracing::debug!(len = packet.len(), "the TUN refused a packet: {err}");
                    queue.pop_front();
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::FromRawFd;

    /// A fresh TUN (kernel-chosen name, gone when its descriptor closes) opened with `flags`
    /// and the offloads `offloads`.
    fn open_tun(flags: libc::c_int, offloads: libc::c_uint) -> OwnedFd {
        // SAFETY: open of a path with flags; the result is checked.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(fd >= 0, "/dev/net/tun: {}", io::Error::last_os_error());
        // SAFETY: `fd` was just opened and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: TUNSETIFF reads the `ifreq` we pass; TUNSETOFFLOAD takes an int by value.
        unsafe {
            let mut req: libc::ifreq = std::mem::zeroed();
            req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI | flags) as libc::c_short;
            assert_eq!(
                libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req),
                0,
                "TUNSETIFF: {}",
                io::Error::last_os_error()
            );
            assert_eq!(
                libc::ioctl(
                    fd.as_raw_fd(),
                    libc::TUNSETOFFLOAD,
                    offloads as libc::c_ulong
                ),
                0
            );
        }
        fd
    }

    #[tokio::test]
    async fn a_tun_with_virtio_net_headers_is_found_out_and_trusted() {
        let tun = open_tun(libc::IFF_VNET_HDR, libc::TUN_F_CSUM);
        let link = TunLink::new(tun, 1500, Arc::default()).unwrap();
        assert_eq!(link.vnet_hdr.len(), 10, "the default virtio_net_hdr");
        assert!(link.vnet_hdr.iter().all(|&b| b == 0), "no flags, no GSO");
        assert_eq!(link.tcp_hdr[0], VIRTIO_NET_HDR_F_NEEDS_CSUM);
        assert_eq!(&link.tcp_hdr[8..10], &16u16.to_le_bytes(), "csum_offset");
        assert_eq!(link.max_read, MAX_PACKET + 10);
        assert!(link.tx_checksum_trusted());
    }

    #[tokio::test]
    async fn a_plain_tun_gets_bare_packets_and_computed_checksums() {
        let tun = open_tun(0, 0);
        let link = TunLink::new(tun, 1500, Arc::default()).unwrap();
        assert!(link.vnet_hdr.is_empty());
        assert_eq!(link.max_read, MAX_PACKET);
        assert!(!link.tx_checksum_trusted());
    }
}
