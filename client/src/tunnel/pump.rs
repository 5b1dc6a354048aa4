//! Moving packets between the session's TUN device and QUIC datagrams.
//!
//! Two loops share the connection: uplink reads IP packets from the TUN and sends each as one
//! datagram; downlink writes each received datagram to the TUN. Packets are not inspected —
//! the IP header already says everything the agent needs.
//!
//! Uplink uses `send_datagram_wait`: when QUIC's send buffer is full the loop stops reading
//! the TUN, the TUN's queue fills, and the local kernel's TCP slows down — backpressure instead
//! of drops inside the tunnel. The TUN is read into one scratch buffer that stays initialised
//! (zeroing an MTU-sized buffer per read cost more than copying a small packet out of it), and
//! each packet is copied into a `BytesMut` that reclaims its memory once QUIC has sent (and
//! dropped) earlier packets, so steady state allocates nothing per packet.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::BytesMut;
use quinn::{ConnectionError, SendDatagramError};

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

async fn uplink(
    tun: Arc<tun_rs::AsyncDevice>,
    connection: quinn::Connection,
    mtu: u16,
    stats: Arc<PumpStats>,
) -> Result<(), PumpError> {
    let mtu = usize::from(mtu);
    let mut scratch = vec![0u8; mtu];
    let mut buffer = BytesMut::with_capacity(mtu * 16);
    loop {
        let len = tun.recv(&mut scratch).await.map_err(PumpError::Tun)?;
        buffer.reserve(len);
        buffer.extend_from_slice(&scratch[..len]);
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
