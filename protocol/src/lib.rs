//! The wire protocol shared by the `mirrord-net` client and `mirrord-net-agent`.
//!
//! A session is one QUIC connection. IP packets travel in DATAGRAM frames exactly as the TUN
//! device produced them (no header of ours: the IP header already says everything the other end
//! needs). Everything else travels on streams as length-prefixed [`postcard`] frames
//! ([`framing`]), starting with a versioned handshake on the first bidirectional stream
//! ([`messages`], [`handshake`]).
//!
//! Trust ([`trust`]) is per session and needs no shared secret: each end makes a fresh
//! self-signed certificate, and each end is told the SHA-256 of the other's certificate out of
//! band (the client passes its own on the agent's command line; the agent prints its own on
//! the [`ready`] line). A peer presenting any other certificate is refused during the TLS
//! handshake.
//!
//! File requests of the session's FUSE file system ride on further bidirectional streams
//! ([`fs`]), one stream per request, each opened with a stream-kind byte.
//!
//! Where only a byte stream reaches the agent, [`stream_datagrams`] frames the QUIC datagrams
//! on it. The target's mount table and resolv.conf, sent in the hello, are read by [`mountinfo`]
//! and [`resolv_conf`].
//!
//! Nothing in this crate does I/O; the QUIC settings in [`transport`] are plain values. Its one
//! process-wide effect is [`heap::tune_for_packets`], the allocator setting both binaries make
//! first thing in `main`.

pub mod framing;
pub mod fs;
pub mod handshake;
pub mod heap;
pub mod hosts;
pub mod http_filter;
pub mod listening;
pub mod loopback;
pub mod messages;
pub mod mountinfo;
pub mod ready;
pub mod resolv_conf;
pub mod stream_datagrams;
pub mod transport;
pub mod trust;

/// Version of the session protocol. Bumped on any incompatible change to messages or to how
/// datagrams are used; both ends must agree exactly.
pub const PROTOCOL_VERSION: u32 = 8;

/// ALPN token of the session protocol, so a QUIC peer of another kind fails the TLS handshake
/// instead of misreading our streams.
pub const ALPN: &[u8] = b"mirrord-net/1";

/// Version of this build, reported in the handshake for error messages.
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");
