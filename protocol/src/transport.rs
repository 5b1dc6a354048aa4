//! QUIC settings of a session, per kind of path.
//!
//! The TUN device's MTU is the QUIC datagram size, so the UDP payload size decides how big the
//! inner IP packets are, and packet size is most of throughput: each inner packet costs one
//! TUN read, one encryption and one UDP send whatever its size. On loopback (a local target)
//! the UDP payload can be almost 64 KiB, and inner TCP then moves ~64 KiB segments. On a real
//! network the path MTU rules.
//!
//! The MTU is fixed (no discovery): the TUN MTU is set from the datagram size when the session
//! starts, and a datagram size that later shrank below it would make quinn refuse packets the
//! local kernel already sized to fit. `min_mtu` cannot simply equal the loopback MTU: QUIC pads
//! Initial packets to `min_mtu`, and long-header packets carry a 14-bit length, so the floor
//! stays under 16 KiB ([`PathProfile::min_udp_payload_size`]). Only black-hole detection (a
//! burst of lost full-size packets) could lower the MTU to that floor. The tunnel pump then
//! drops each packet that no longer fits and counts it (`too large` in its statistics, logged
//! at debug level); nothing tells the session's kernel, whose TCP keeps sending full-size
//! segments. That is why the MTU is fixed and the floor only a formality.
//!
//! Datagram buffers are large on purpose. The inner TCP stacks retransmit on loss, but the
//! agent's userspace stack has a one-second minimum RTO, so a datagram dropped on a full
//! queue costs a second; backpressure (`send_datagram_wait`) is used on the send side, and the
//! receive side must simply never be the bottleneck.
//!
//! **Liveness.** Keep-alives every second make silence mean something; the idle timeout is
//! not the 3 s after which an agent gives stolen traffic back ([`SILENCE_LIMIT`], an
//! application decision made on the control stream's heartbeat) but that plus the session's
//! reconnect window ([`idle_timeout`]), so a cut shorter than that leaves the connection, its
//! streams and the flows inside it intact: QUIC retransmits what was lost once packets pass
//! again. The agent advertises the longest window and the client its own; QUIC takes the
//! smaller, so the client's `--reconnect-window` reaches the agent without a message of its
//! own, and both ends give up at the same moment.

use std::sync::Arc;
use std::time::Duration;

use crate::messages::SILENCE_LIMIT;
use crate::trust::{self, Fingerprint, SessionIdentity, TrustError};

/// What lies between client and agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProfile {
    /// Both ends on one machine (a local `pid/` target): 64 KiB loopback MTU.
    Loopback,
    /// An ordinary network with a 1500-byte MTU (a Kubernetes pod network).
    Network,
    /// A reliable byte stream (the Kubernetes port-forward), datagrams framed on it
    /// ([`crate::stream_datagrams`]): no MTU but the 16-bit frame length, no loss, and the
    /// stream's own flow control as backpressure. Datagrams as large as loopback's.
    Stream,
}

impl PathProfile {
    /// The smallest UDP payload size QUIC may fall back to on this path.
    pub fn min_udp_payload_size(self) -> u16 {
        match self {
            PathProfile::Loopback | PathProfile::Stream => 16_000,
            PathProfile::Network => 1452,
        }
    }

    /// The UDP payload size QUIC uses on this path.
    pub fn udp_payload_size(self) -> u16 {
        match self {
            // Loopback's MTU is 65536: leave room for the IPv6 and UDP headers. A stream frame
            // could carry 65535, but the agent relays it over loopback UDP.
            PathProfile::Loopback | PathProfile::Stream => 65_000,
            // 1500 minus IPv6 (40) and UDP (8) headers.
            PathProfile::Network => 1452,
        }
    }
}

/// How long an agent waits for a client it lost, unless the client says otherwise
/// (`--reconnect-window`).
pub const DEFAULT_RECONNECT_WINDOW: Duration = Duration::from_secs(15);
/// The longest reconnect window a client may ask for; also what the agent offers, so that
/// the client's choice decides (QUIC takes the smaller of both ends' idle timeouts).
pub const MAX_RECONNECT_WINDOW: Duration = Duration::from_secs(600);
/// Keep-alives: an idle but live session is heard at least this often, well inside
/// [`SILENCE_LIMIT`], so silence means the path or the peer is gone.
pub const KEEP_ALIVE: Duration = Duration::from_millis(1000);

/// How long a silent peer is kept: [`SILENCE_LIMIT`] (after which an agent gives stolen
/// traffic back to the target) and then the reconnect window, within which the same client
/// may still come back, on the same path or a new one. When it runs out, both ends close the
/// connection: the agent exits, the client ends the session.
pub fn idle_timeout(reconnect_window: Duration) -> Duration {
    SILENCE_LIMIT + reconnect_window.min(MAX_RECONNECT_WINDOW)
}

const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024 * 1024;
const DATAGRAM_SEND_BUFFER: usize = 16 * 1024 * 1024;

/// Transport parameters for either end; `idle` is this end's idle timeout (see
/// [`idle_timeout`]).
pub fn transport_config(profile: PathProfile, idle: Duration) -> quinn::TransportConfig {
    let mtu = profile.udp_payload_size();
    let mut config = quinn::TransportConfig::default();
    config
        .max_idle_timeout(Some(idle.try_into().expect("idle timeout fits a varint")))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .initial_mtu(mtu)
        .min_mtu(profile.min_udp_payload_size())
        .mtu_discovery_config(None)
        .datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_SEND_BUFFER)
        .max_concurrent_bidi_streams(1024u32.into())
        .max_concurrent_uni_streams(1024u32.into());
    if matches!(profile, PathProfile::Loopback | PathProfile::Stream) {
        // Loopback does not lose packets to congestion, nor does a stream; start with a window
        // that fills it instead of probing up from 10 packets (a slower stream pushes back).
        // A GSO batch of ~64 KiB datagrams exceeds what one UDP send may carry; the kernel loses
        // such batches silently and quinn's black-hole detection then shrinks the MTU to the
        // floor. Each datagram already fills a loopback packet, so batching gains nothing.
        config.enable_segmentation_offload(false);
        let mut cubic = quinn::congestion::CubicConfig::default();
        cubic.initial_window(8 * 1024 * 1024);
        config
            .congestion_controller_factory(Arc::new(cubic))
            .send_window(64 * 1024 * 1024)
            .receive_window((64u32 * 1024 * 1024).into())
            .stream_receive_window((16u32 * 1024 * 1024).into());
    }
    config
}

/// Endpoint settings: accept UDP payloads as large as the profile uses.
pub fn endpoint_config(profile: PathProfile) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(profile.udp_payload_size().max(1472))
        .expect("payload size within QUIC's limits");
    config
}

/// The agent's endpoint settings: its client may come on the `profile` path or over the
/// stream relay, so it accepts the larger payloads of either. (What a peer actually sends is
/// bounded by its own profile's MTU.)
pub fn agent_endpoint_config(profile: PathProfile) -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    let largest = profile
        .udp_payload_size()
        .max(PathProfile::Stream.udp_payload_size());
    config
        .max_udp_payload_size(largest)
        .expect("payload size within QUIC's limits");
    config
}

/// The client's QUIC configuration for one session, with the default reconnect window.
pub fn client_config(
    identity: &SessionIdentity,
    agent: Fingerprint,
    profile: PathProfile,
) -> Result<quinn::ClientConfig, TrustError> {
    client_config_with_window(identity, agent, profile, DEFAULT_RECONNECT_WINDOW)
}

/// The client's QUIC configuration for one session whose agent waits `reconnect_window` for
/// it after [`SILENCE_LIMIT`]. The client's idle timeout is the session's: the agent offers
/// the longest one ([`MAX_RECONNECT_WINDOW`]) and QUIC takes the smaller.
pub fn client_config_with_window(
    identity: &SessionIdentity,
    agent: Fingerprint,
    profile: PathProfile,
    reconnect_window: Duration,
) -> Result<quinn::ClientConfig, TrustError> {
    let tls = trust::client_tls(identity, agent)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|_| TrustError::Tls(rustls::Error::General("no QUIC cipher suite".into())))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        profile,
        idle_timeout(reconnect_window),
    )));
    Ok(config)
}

/// The agent's QUIC configuration for one session. Migration is on: a client that comes back
/// after a cut from another address or port (a new socket, a NAT's new mapping, a re-opened
/// stream, which the relay gives a new source port) carries on the same connection. Only the
/// pinned client can: a packet on a new path must decrypt with the connection's keys.
pub fn server_config(
    identity: &SessionIdentity,
    client: Fingerprint,
    profile: PathProfile,
) -> Result<quinn::ServerConfig, TrustError> {
    let tls = trust::server_tls(identity, client)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|_| TrustError::Tls(rustls::Error::General("no QUIC cipher suite".into())))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(
        profile,
        idle_timeout(MAX_RECONNECT_WINDOW),
    )));
    config.migration(true);
    Ok(config)
}

// Socket buffer sizes for the tunnel's UDP socket: the one piece of this crate that touches a
// socket, kept here because both ends need exactly the same setting.
//
// A 64 KiB datagram is one packet of the inner TCP; the default socket buffers (~200 KiB) hold
// three of them, and a burst beyond that is dropped by the kernel before QUIC sees it. As root
// the `*BUFFORCE` options exceed `net.core.rmem_max`; without root the plain options give what
// the sysctl allows.
const TUNNEL_SOCKET_BUFFER: usize = 16 * 1024 * 1024;

/// Enlarges the send and receive buffers of the tunnel's UDP socket (best effort).
pub fn enlarge_socket_buffers(socket: &impl std::os::fd::AsRawFd) {
    let fd = socket.as_raw_fd();
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size = TUNNEL_SOCKET_BUFFER as libc::c_int;
        // SAFETY: setsockopt with a pointer to a c_int of the size we pass.
        let set = |option| unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        };
        if !set(force) && !set(plain) {
            // Best effort: a smaller buffer costs speed, not correctness.
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_peer_is_kept_for_the_silence_limit_and_the_window() {
        assert_eq!(
            idle_timeout(DEFAULT_RECONNECT_WINDOW),
            Duration::from_secs(18)
        );
        assert_eq!(idle_timeout(Duration::ZERO), SILENCE_LIMIT);
        assert_eq!(
            idle_timeout(Duration::from_secs(100_000)),
            SILENCE_LIMIT + MAX_RECONNECT_WINDOW
        );
        assert!(KEEP_ALIVE < SILENCE_LIMIT);
    }
}
