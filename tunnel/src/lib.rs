//! The client's end of the QUIC connection to the agent.
//!
//! [`connect`] makes the connection (pinned to the agent's certificate) and runs the
//! handshake on the control stream, over UDP; [`connect_over_stream`] does the same over a
//! byte stream (e.g. a Kubernetes port-forward), framing the datagrams ([`stream_socket`]); [`pump`] moves packets between the session's TUN device
//! and DATAGRAM frames for as long as the connection lives. When a local agent serves the
//! TUN itself, [`pump::watch`] only waits for the connection's end, which ends the session
//! as the pump's would. [`liveness`] keeps the connection across a network cut shorter than
//! the session's reconnect window.

mod connect;
pub mod liveness;
pub mod offload;
pub mod pump;
mod release;
pub mod stream_socket;

pub use connect::{
    connect, connect_over_stream, AgentPath, ByteStream, ReopenStream, Tunnel, TunnelError,
    SESSION_OVER, STREAM_ENDED,
};
pub use liveness::ReconnectArgs;
pub use release::release_with_namespace;
