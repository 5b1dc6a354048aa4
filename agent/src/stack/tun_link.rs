//! The session's TUN device as the stack's link: the one-relay path of local targets.
//!
//! When the agent runs on the client's machine, the client hands it the session's TUN
//! descriptor (see [`tun_handoff`](crate::tun_handoff)) and the stack reads and writes the
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
//! * The session's network namespace deleting the device (its last process exited) makes
//!   reads and writes fail with `EBADFD`: that is [`LinkError::Closed`].

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
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

/// A TUN device (`IFF_TUN | IFF_NO_PI`) carrying the session's packets.
pub struct TunLink {
    fd: AsyncFd<OwnedFd>,
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
        // SAFETY: the `OwnedFd` stays open, naming the same device, until the `AsyncFd` drops
        // it.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(Self {
            fd,
            max_read: mtu,
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

    fn write_one(&self, packet: &[u8]) -> io::Result<usize> {
        // SAFETY: `packet` is valid for reads of its length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
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
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, LinkError>> {
        loop {
            match self.read_one() {
                Ok(0) => return Poll::Ready(Err(LinkError::Closed)),
                Ok(_) => return Poll::Ready(Ok(self.buffer.split().freeze())),
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
