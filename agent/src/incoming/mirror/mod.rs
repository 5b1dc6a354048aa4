//! Mirroring: rebuilding each inbound connection's client→server bytes from the target's
//! traffic as sniffed, so that the session can be sent a copy without touching the target.
//!
//! The target's own socket answers its clients; the agent only watches the segments that
//! arrive for the mirrored ports and, per connection, rebuilds the byte stream the target's
//! process reads. That stream is then replayed into the session (whose answers are dropped):
//!
//! ```text
//!  sniffed frame ─▶ packet::parse ─▶ (4-tuple, segment) ─▶ FlowTable ─▶ Reassembler
//!                                                               │         │ in-order bytes
//!                                                               ▼         ▼
//!                                              FlowEvent: Opened, Data, Finished, Reset, Dropped
//! ```
//!
//! - [`packet`]: the IPv4/IPv6 and TCP headers of a captured frame, nothing more;
//! - [`reassembly`]: one connection's byte stream from its segments (SYN, sequence numbers,
//!   out-of-order buffering with a cap, duplicates, FIN and RST);
//! - [`flows`]: the connections by 4-tuple, created by a SYN, expired when idle.
//!
//! All three are free of I/O: segments and the current time go in, bytes and events come out.
//! Around them:
//!
//! - [`sniffer`]: the packet socket of the target's namespace and its BPF filter;
//! - [`select`]: with an HTTP filter, the matching requests of a rebuilt stream (no I/O);
//! - [`replay`]: the [`Mirror`] at work: each rebuilt connection opened into the session
//!   from the original client's address (the stolen connections' path), its bytes written,
//!   the session's answers dropped.

pub mod flows;
pub mod packet;
pub mod reassembly;
pub mod replay;
pub mod select;
pub mod sniffer;

pub use self::replay::{Mirror, MirrorPort};
