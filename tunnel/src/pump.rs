//! Moving packets between the session's TUN device and QUIC datagrams.
//!
//! Two loops share the connection: uplink reads IP packets from the TUN and sends each as one
//! datagram; downlink writes each received datagram to the TUN. Packets are not inspected on
//! a loopback or stream path — the IP header already says everything the agent needs.
//!
//! Uplink uses `send_datagram_wait`: when QUIC's send buffer is full the loop stops reading
//! the TUN, the TUN's queue fills, and the local kernel's TCP slows down — backpressure instead
//! of drops inside the tunnel. The TUN is read straight into the spare capacity of a `BytesMut`
//! ([`Tun::recv_into`]), whose memory is reclaimed once QUIC has sent (and dropped) earlier
//! packets: no copy of the packet in this process before QUIC's own, no zeroing of an
//! MTU-sized buffer per read, and no allocation per packet in steady state. (A 64 KiB copy from
//! a scratch buffer was about half of the client's `memmove` time in a bulk upload.)
//!
//! On an MTU-limited path (a cluster's pod network: datagrams of ~1452 bytes) the TUN carries
//! virtio-net headers with TCP segmentation offload ([`Framing::Segmented`]): uplink reads
//! 64 KiB super-segments and cuts them into one packet per datagram, and downlink drains the
//! datagrams that have arrived and writes consecutive segments of a flow as one coalesced
//! super-segment (`writev` of the rewritten headers and the datagrams' payloads), see
//! [`offload`](super::offload). Each TUN read or write then moves up to 64 KiB instead of one
//! MTU, and the session's kernel runs its TCP once per super-segment.
//!
//! A local agent that was handed the TUN moves the packets itself; the client then runs
//! [`watch`] instead, which holds no descriptor of the device and ends with the connection.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use quinn::{ConnectionError, SendDatagramError};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::offload::{self, Coalescer, TunWrite, VNET_HDR_LEN};

/// Datagram sizes below this are an MTU-limited network path, whose TUN segments and
/// coalesces ([`Framing::Segmented`]); loopback and stream paths carry ~64 KiB datagrams.
pub const SEGMENTING_BELOW: u16 = 16_000;
/// The largest read from the TUN: a 64 KiB IP packet and its virtio-net header.
const MAX_READ: usize = 65_535 + VNET_HDR_LEN;
/// At most this many datagrams are drained into one coalescing batch.
const COALESCE_BATCH: usize = 128;

/// What the TUN's reads and writes hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Bare IP packets, one per datagram (`IFF_NO_PI`, no virtio-net header).
    Plain,
    /// A virtio-net header before each packet, with TCP segmentation offload.
    Segmented,
}

impl Framing {
    /// The framing for a tunnel whose datagrams are `mtu` bytes.
    pub fn for_mtu(mtu: u16) -> Framing {
        if mtu < SEGMENTING_BELOW {
            Framing::Segmented
        } else {
            Framing::Plain
        }
    }
}

/// Counters of one session's packet flow, for `--verbose` reports and benchmarks.
#[derive(Debug, Default)]
pub struct PumpStats {
    pub packets_up: AtomicU64,
    pub bytes_up: AtomicU64,
    pub packets_down: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Packets larger than the datagram size (only after QUIC lowered its MTU).
    pub too_large: AtomicU64,
    /// Writes the TUN refused (e.g. a malformed packet from the far end).
    pub tun_write_errors: AtomicU64,
    /// TUN reads and writes (segmented framing: fewer than packets).
    pub tun_reads: AtomicU64,
    pub tun_writes: AtomicU64,
    /// Reads the segmentation refused.
    pub unsegmentable: AtomicU64,
}

impl PumpStats {
    pub fn summary(&self) -> String {
        format!(
            "up {} packets / {} bytes, down {} packets / {} bytes, too large {}, tun write \
             errors {}, TUN reads {}, TUN writes {}, unsegmentable {}",
            self.packets_up.load(Ordering::Relaxed),
            self.bytes_up.load(Ordering::Relaxed),
            self.packets_down.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
            self.too_large.load(Ordering::Relaxed),
            self.tun_write_errors.load(Ordering::Relaxed),
            self.tun_reads.load(Ordering::Relaxed),
            self.tun_writes.load(Ordering::Relaxed),
            self.unsegmentable.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("the connection to the agent was lost: {0}")]
    Connection(#[from] ConnectionError),
    #[error("the agent does not take datagrams: {0}")]
    Datagram(SendDatagramError),
    #[error("cannot read the session's TUN device: {0}")]
    Tun(std::io::Error),
    /// The local agent's process ended (killed, crashed) while the session ran.
    #[error("the agent process exited")]
    AgentExited,
}

/// Runs both directions until the connection ends or the TUN fails. `tun` is the session's
/// TUN descriptor, opened for `framing`.
pub async fn pump(
    tun: OwnedFd,
    framing: Framing,
    connection: quinn::Connection,
    mtu: u16,
    stats: Arc<PumpStats>,
) -> Result<(), PumpError> {
    let tun = Arc::new(Tun::new(tun).map_err(PumpError::Tun)?);
    let uplink = async {
        match framing {
            Framing::Plain => uplink(&tun, &connection, mtu, &stats).await,
            Framing::Segmented => uplink_segmented(&tun, &connection, &stats).await,
        }
    };
    let downlink = async {
        match framing {
            Framing::Plain => downlink(&tun, &connection, &stats).await,
            Framing::Segmented => downlink_coalesced(&tun, &connection, &stats).await,
        }
    };
    tokio::select! {
        result = uplink => result,
        result = downlink => result,
    }
}

/// For a session whose packets do not pass through this process (the agent serves the TUN):
/// ends, as [`pump`] would, when the connection to the agent does.
pub async fn watch(connection: quinn::Connection) -> Result<(), PumpError> {
    Err(connection.closed().await.into())
}

async fn send(
    connection: &quinn::Connection,
    packet: Bytes,
    stats: &PumpStats,
) -> Result<(), PumpError> {
    let len = packet.len();
    match connection.send_datagram_wait(packet).await {
        Ok(()) => {
            stats.packets_up.fetch_add(1, Ordering::Relaxed);
            stats.bytes_up.fetch_add(len as u64, Ordering::Relaxed);
            Ok(())
        }
        Err(SendDatagramError::TooLarge) => {
            stats.too_large.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(len, "packet larger than the datagram size dropped");
            Ok(())
        }
        Err(SendDatagramError::ConnectionLost(err)) => Err(err.into()),
        Err(err) => Err(PumpError::Datagram(err)),
    }
}

async fn uplink(
    tun: &Tun,
    connection: &quinn::Connection,
    mtu: u16,
    stats: &PumpStats,
) -> Result<(), PumpError> {
    let mtu = usize::from(mtu);
    let mut buffer = BytesMut::with_capacity(mtu * 16);
    loop {
        tun.recv_into(&mut buffer, mtu)
            .await
            .map_err(PumpError::Tun)?;
        stats.tun_reads.fetch_add(1, Ordering::Relaxed);
        send(connection, buffer.split().freeze(), stats).await?;
    }
}

/// Uplink of a segmenting TUN: each read (up to a 64 KiB super-segment) becomes the packets
/// it stands for, one datagram each.
async fn uplink_segmented(
    tun: &Tun,
    connection: &quinn::Connection,
    stats: &PumpStats,
) -> Result<(), PumpError> {
    let mut read = BytesMut::with_capacity(MAX_READ);
    let mut out = BytesMut::with_capacity(4 * MAX_READ);
    let mut packets = Vec::with_capacity(64);
    loop {
        read.clear();
        tun.recv_into(&mut read, MAX_READ)
            .await
            .map_err(PumpError::Tun)?;
        stats.tun_reads.fetch_add(1, Ordering::Relaxed);
        out.reserve(2 * read.len());
        if let Err(err) = offload::segment(&read, &mut out, &mut packets) {
            stats.unsegmentable.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(len = read.len(), "TUN read not segmented: {err}");
        }
        for packet in packets.drain(..) {
            send(connection, packet, stats).await?;
        }
    }
}

async fn downlink(
    tun: &Tun,
    connection: &quinn::Connection,
    stats: &PumpStats,
) -> Result<(), PumpError> {
    loop {
        let packet = connection.read_datagram().await?;
        write_counted(tun, &[&packet], 1, packet.len(), stats).await?;
    }
}

/// Downlink of a segmenting TUN: the datagrams that have arrived are coalesced into as few
/// writes as their flows allow.
async fn downlink_coalesced(
    tun: &Tun,
    connection: &quinn::Connection,
    stats: &PumpStats,
) -> Result<(), PumpError> {
    let mut coalescer = Coalescer::default();
    let mut writes: Vec<TunWrite> = Vec::new();
    loop {
        let first = connection.read_datagram().await;
        let mut ended = None;
        match first {
            Ok(packet) => coalescer.push(packet),
            Err(err) => return Err(err.into()),
        }
        for _ in 1..COALESCE_BATCH {
            match connection.read_datagram().now_or_never() {
                Some(Ok(packet)) => coalescer.push(packet),
                Some(Err(err)) => {
                    ended = Some(err);
                    break;
                }
                None => break,
            }
        }
        coalescer.drain(&mut writes);
        for write in writes.drain(..) {
            let len = write.packet_len();
            let packets = write.payloads.len().max(1);
            let mut parts: Vec<&[u8]> = Vec::with_capacity(2 + write.payloads.len());
            parts.push(&write.vnet);
            parts.push(&write.head);
            parts.extend(write.payloads.iter().map(|p| &p[..]));
            write_counted(tun, &parts, packets, len, stats).await?;
        }
        if let Some(err) = ended {
            return Err(err.into());
        }
    }
}

/// Writes one packet (in `parts`) standing for `packets` packets of `len` bytes in all.
async fn write_counted(
    tun: &Tun,
    parts: &[&[u8]],
    packets: usize,
    len: usize,
    stats: &PumpStats,
) -> Result<(), PumpError> {
    match tun.write_vectored(parts).await {
        Ok(()) => {
            stats.tun_writes.fetch_add(1, Ordering::Relaxed);
            stats
                .packets_down
                .fetch_add(packets as u64, Ordering::Relaxed);
            stats.bytes_down.fetch_add(len as u64, Ordering::Relaxed);
        }
        Err(err) if err.raw_os_error() == Some(libc::EBADFD) => return Err(PumpError::Tun(err)),
        Err(err) => {
            stats.tun_write_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("TUN refused a packet of {len} bytes: {err}");
        }
    }
    Ok(())
}

/// The session's TUN descriptor, non-blocking, registered for reads and writes. Reads go
/// straight into memory that then travels on as the datagram.
struct Tun {
    fd: AsyncFd<OwnedFd>,
}

impl Tun {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
        unsafe {
            let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: an `OwnedFd` stays open, and names the same descriptor, until it is dropped
        // with the `AsyncFd`.
        let fd = unsafe {
            AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE)
        }?;
        Ok(Self { fd })
    }

    /// Appends the next packet (at most `max` bytes) to `buffer`; returns its length.
    async fn recv_into(&self, buffer: &mut BytesMut, max: usize) -> io::Result<usize> {
        buffer.reserve(max);
        loop {
            let mut ready = self.fd.readable().await?;
            let read = ready.try_io(|fd| {
                let spare = buffer.spare_capacity_mut();
                let room = spare.len().min(max);
                // SAFETY: the kernel writes at most `room` bytes into the spare capacity, which
                // is valid for writes of that many bytes.
                let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), room) };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(len)) => {
                    // SAFETY: the read initialised `len` bytes right after the current length.
                    unsafe { buffer.set_len(buffer.len() + len) };
                    return Ok(len);
                }
                Ok(Err(err)) => return Err(err),
                // Readiness was stale; `try_io` cleared it, so wait again.
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes one packet made of `parts`. A TUN takes writes at once; `EAGAIN` only waits.
    async fn write_vectored(&self, parts: &[&[u8]]) -> io::Result<()> {
        loop {
            match writev(self.fd.as_raw_fd(), parts) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let mut ready = self.fd.writable().await?;
            ready.clear_ready();
        }
    }
}

/// One `writev(2)` of `parts` as one packet.
fn writev(fd: libc::c_int, parts: &[&[u8]]) -> io::Result<()> {
    let iov: Vec<libc::iovec> = parts
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    // SAFETY: every iovec points into a slice borrowed for the whole call.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
