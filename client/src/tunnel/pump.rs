//! Moving packets between the session's TUN device and QUIC datagrams.
//!
//! Two loops share the connection: uplink reads IP packets from the TUN and sends each as one
//! datagram; downlink writes each received datagram to the TUN. Packets are not inspected —
//! the IP header already says everything the agent needs.
//!
//! Uplink uses `send_datagram_wait`: when QUIC's send buffer is full the loop stops reading
//! the TUN, the TUN's queue fills, and the local kernel's TCP slows down — backpressure instead
//! of drops inside the tunnel. The TUN is read straight into the spare capacity of a `BytesMut`
//! ([`TunReader`]), whose memory is reclaimed once QUIC has sent (and dropped) earlier
//! packets: no copy of the packet in this process before QUIC's own, no zeroing of an
//! MTU-sized buffer per read, and no allocation per packet in steady state. (A 64 KiB copy from
//! a scratch buffer was about half of the client's `memmove` time in a bulk upload.)
//!
//! A local agent that was handed the TUN moves the packets itself; the client then runs
//! [`watch`] instead, which holds no descriptor of the device and ends with the connection.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use quinn::{ConnectionError, SendDatagramError};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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
}

impl PumpStats {
    pub fn summary(&self) -> String {
        format!(
            "up {} packets / {} bytes, down {} packets / {} bytes, too large {}, tun write errors {}",
            self.packets_up.load(Ordering::Relaxed),
            self.bytes_up.load(Ordering::Relaxed),
            self.packets_down.load(Ordering::Relaxed),
            self.bytes_down.load(Ordering::Relaxed),
            self.too_large.load(Ordering::Relaxed),
            self.tun_write_errors.load(Ordering::Relaxed),
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
}

/// Runs both directions until the connection ends or the TUN fails.
pub async fn pump(
    tun: Arc<tun_rs::AsyncDevice>,
    connection: quinn::Connection,
    mtu: u16,
    stats: Arc<PumpStats>,
) -> Result<(), PumpError> {
    let uplink = uplink(tun.clone(), connection.clone(), mtu, stats.clone());
    let downlink = downlink(tun, connection, stats);
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

async fn uplink(
    tun: Arc<tun_rs::AsyncDevice>,
    connection: quinn::Connection,
    mtu: u16,
    stats: Arc<PumpStats>,
) -> Result<(), PumpError> {
    let mtu = usize::from(mtu);
    let reader = TunReader::new(&tun).map_err(PumpError::Tun)?;
    let mut buffer = BytesMut::with_capacity(mtu * 16);
    loop {
        let len = reader
            .recv_into(&mut buffer, mtu)
            .await
            .map_err(PumpError::Tun)?;
        let packet = buffer.split().freeze();
        match connection.send_datagram_wait(packet).await {
            Ok(()) => {
                stats.packets_up.fetch_add(1, Ordering::Relaxed);
                stats.bytes_up.fetch_add(len as u64, Ordering::Relaxed);
            }
            Err(SendDatagramError::TooLarge) => {
                stats.too_large.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(len, "packet larger than the datagram size dropped");
            }
            Err(SendDatagramError::ConnectionLost(err)) => return Err(err.into()),
            Err(err) => return Err(PumpError::Datagram(err)),
        }
    }
}

async fn downlink(
    tun: Arc<tun_rs::AsyncDevice>,
    connection: quinn::Connection,
    stats: Arc<PumpStats>,
) -> Result<(), PumpError> {
    loop {
        let packet = connection.read_datagram().await?;
        match tun.send(&packet).await {
            Ok(_) => {
                stats.packets_down.fetch_add(1, Ordering::Relaxed);
                stats
                    .bytes_down
                    .fetch_add(packet.len() as u64, Ordering::Relaxed);
            }
            Err(err) => {
                stats.tun_write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("TUN refused a packet of {} bytes: {err}", packet.len());
            }
        }
    }
}

/// The receiving side of the TUN, reading each packet into memory that then travels on as
/// the datagram. It owns a duplicate of the device's descriptor with its own registration in
/// the runtime (read interest only; the device's own registration keeps serving writes).
struct TunReader {
    fd: AsyncFd<OwnedFd>,
}

impl TunReader {
    fn new(tun: &tun_rs::AsyncDevice) -> io::Result<Self> {
        // SAFETY: `tun` keeps its descriptor open while borrowed here; the clone is our own.
        let device = unsafe { BorrowedFd::borrow_raw(tun.as_raw_fd()) };
        let fd = device.try_clone_to_owned()?;
        // SAFETY: an `OwnedFd` stays open, and names the same descriptor, until it is dropped
        // with the `AsyncFd`.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
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
}
