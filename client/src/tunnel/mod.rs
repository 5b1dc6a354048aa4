//! The client's end of the QUIC connection to the agent.
//!
//! [`connect`] makes the connection (pinned to the agent's certificate) and runs the
//! handshake on the control stream; [`pump`] moves packets between the session's TUN device
//! and DATAGRAM frames for as long as the connection lives.

mod connect;
pub mod pump;
mod release;

pub use connect::{connect, Tunnel, TunnelError};
pub use release::release_with_namespace;
