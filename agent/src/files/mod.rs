//! The agent's file server: the target's files, answered over QUIC streams.
//!
//! The session's FUSE file system turns every kernel request into one [`FsRequest`] on its own
//! QUIC stream (see `mirrord_net_protocol::fs`). The agent answers from the target's root,
//! `/proc/PID/root`, which is the target's root directory *and* its mount namespace: crossing a
//! directory on which the target has a mount (a secret, a config map, a tmpfs) enters that
//! mount, exactly as the target sees it, though the agent itself stays in the host's mount
//! namespace.
//!
//! - `nodes`: node ids ↔ `O_PATH` descriptors, with the kernel's reference counts. A node is a
//!   descriptor, not a path, so a renamed file stays the same node and nothing is resolved
//!   twice; names are resolved one component at a time below their parent, never following a
//!   symlink or `..` out of the root.
//! - `server`: one request in, one answer out, all blocking system calls (`pread` for reads,
//!   so sparse and large files cost what their bytes cost). Errors are the errno the user's
//!   process sees. A read-only session answers every change with `EROFS` here too, whatever
//!   the client's mount says.
//! - `streams`: reading requests off streams and running them on tokio's blocking pool, so
//!   parallel readers are never serialised behind one slow request.
//!
//! Permissions: the agent is root and could read anything; the session mounts with
//! `default_permissions`, so the kernel checks every access against the mode, uid and gid the
//! agent reports, for the user's own uid. Files created in write mode are given to the
//! creating user's uid and gid.

mod nodes;
mod server;
mod streams;
mod sys;

pub use server::{Access, Answer, FileServer};
pub use streams::serve_stream;
