//! Where the bench's servers listen, and the small wire conventions client and server share.
//!
//! Every server listens on the services end of the pod's veth
//! ([`mirrord_net_tests::topology::SERVICES_V4`]); the ports are apart from the fixture's own
//! servers (DNS on 53, HTTP on 80), which the pod also runs.

use std::net::{IpAddr, SocketAddr};

use mirrord_net_tests::topology::{POD_V4, SERVICES_V4};

/// TCP echo: every byte comes back.
pub const ECHO: u16 = 9101;
/// HTTP/1.1 keep-alive: every request gets [`HTTP_BODY`] bytes.
pub const HTTP: u16 = 9102;
/// Bulk sink: reads until EOF, then answers the byte count (8 bytes, little endian).
pub const SINK: u16 = 9103;
/// Bulk source: reads a byte limit (8 bytes, little endian), sends that many bytes or until
/// the client closes.
pub const SOURCE: u16 = 9104;
/// UDP echo: every datagram back to its sender.
pub const UDP_ECHO: u16 = 9105;
/// Hold: keeps every connection open until the client sends a byte, then closes first.
pub const HOLD: u16 = 9106;

/// The target's own HTTP service (the same protocol as [`HTTP`], each answer saying who
/// served it in `X-Served-By`), on the pod's address: what the incoming rows steal.
pub const INCOMING: u16 = 9110;
/// The header the incoming rows' session steals by.
pub const STEAL_HEADER: &str = "X-Bench-Run";
pub const STEAL_VALUE: &str = "steal";

/// The TCP ports, for the readiness probe.
pub const TCP_PORTS: &[u16] = &[ECHO, HTTP, SINK, SOURCE, HOLD];

/// The body size of every HTTP response.
pub const HTTP_BODY: usize = 1024;

pub fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(SERVICES_V4), port)
}

/// The target's incoming service, as a client in the services namespace reaches it.
pub fn incoming_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(POD_V4), INCOMING)
}
