//! Connections the agent opens *into* the session: stolen inbound connections.
//!
//! The incoming side of the agent (`mirrord_net_agent::incoming`) accepts a connection that was meant
//! for the target and hands it to the stack as an [`InboundConnection`]. The TCP table
//! makes a smoltcp socket whose local endpoint is the original client's address and port
//! and which connects to the session's address and the local program's port, so the
//! program's `accept()` sees the real peer. From then on the flow is an ordinary one (see
//! `tcp/mod.rs`) whose "upstream" socket is the accepted connection. If the session answers the
//! SYN with RST (nothing listens), or not within a few seconds, the accepted connection is
//! given back untouched through [`InboundConnection::done`], so the caller can take it to
//! the target instead.

use std::net::SocketAddr;

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// The outcome of opening a connection into the session: `Ok` once the session accepted
/// (the stack relays from then on), or the stream back when it did not.
pub type InboundDone = oneshot::Sender<Result<(), TcpStream>>;

/// A connection to open into the session.
pub struct InboundConnection {
    /// The original client: the source address and port the session sees.
    pub peer: SocketAddr,
    /// The session's address and the port its program listens on.
    pub session: SocketAddr,
    /// The accepted connection, relayed both ways once the session accepts.
    pub stream: TcpStream,
    pub done: InboundDone,
}

/// Where the incoming side sends connections for the stack.
pub type InboundSender = mpsc::UnboundedSender<InboundConnection>;
/// The stack's end of it.
pub type InboundReceiver = mpsc::UnboundedReceiver<InboundConnection>;

/// A channel from the incoming side to the stack.
pub fn channel() -> (InboundSender, InboundReceiver) {
    mpsc::unbounded_channel()
}
