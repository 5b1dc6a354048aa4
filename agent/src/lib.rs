//! The mirrord-net agent: the end of a session's tunnel inside the target's network namespace.
//!
//! The `mirrord-net-agent` binary binds its QUIC socket, enters the target's namespaces and
//! serves one session. This library holds what the binary wires together:
//!
//! - [`container`]: finding a Kubernetes container's main process by its container ID;
//! - [`namespaces`]: entering the target's network and UTS namespaces;
//! - [`root_fs`]: reading the target's files as the target sees them;
//! - [`target_info`]: the addresses, hostname and resolver files a session takes on;
//! - [`files`]: the file server that answers the session's FUSE requests from the target's
//!   root;
//! - [`stream_relay`]: the TCP listener that relays QUIC datagrams framed on a byte stream
//!   (the Kubernetes port-forward) to the agent's QUIC socket;
//! - [`tun_handoff`]: receiving the session's TUN descriptor from a local client, so the
//!   stack serves the device itself;
//! - [`control`]: accepting the one pinned client and its handshake;
//! - [`incoming`]: the target's inbound traffic for sessions: stealing TCP connections into
//!   the session (its nftables table, the listener, the hand-over to the stack), HTTP
//!   requests routed per request by filters, and connections rebuilt from sniffed segments
//!   for mirroring;
//! - [`stack`]: the userspace network stack that terminates the session's IP packets and
//!   re-originates every flow from real sockets in the target's namespace.

pub use mirrord_net_stack::busy_poll;
pub mod container;
pub mod control;
pub mod files;
pub mod incoming;
pub mod memory_limit;
pub mod namespaces;
pub mod privileges;
pub mod resolve;
pub mod root_fs;
pub mod seccomp;
pub use mirrord_net_stack as stack;
pub mod stream_relay;
pub mod target_info;
pub mod tun_handoff;
