//! The session's FUSE file system: the target's files, served by the agent.
//!
//! The session child opens `/dev/fuse` and mounts it in the session's mount namespace
//! ([`mount_device`]); the descriptor comes back to the client, which serves it from the host's
//! namespaces ([`serve`]) over the session's QUIC connection. Every kernel request becomes one
//! `mirrord_net_protocol::fs` request on its own stream, answered from a tokio task, so any
//! number are in flight at once.
//!
//! # Caching
//!
//! - Entries and attributes are valid in the kernel for a TTL (1 s by default): a file
//!   changed, created or removed on the target is seen within it.
//! - A directory's whole listing, with every entry's attributes, is fetched once and kept for
//!   the TTL ([`listings`]); the kernel's `readdirplus` pages are answered from it, so `ls -l`
//!   and `find` within the TTL cost no round trip. The session's own changes drop the
//!   listings they affect at once. The references the agent holds for cached entries and
//!   those the kernel takes are reconciled by the [`ledger`].
//! - The page cache of a file is kept across opens (`FOPEN_KEEP_CACHE`) while its size and
//!   mtime are those of the previous open; otherwise the kernel drops it. With
//!   `FUSE_AUTO_INVAL_DATA` the kernel also drops it when a fresh `getattr` shows a new mtime
//!   or size while the file is open.
//! - Reads and writes go up to 1 MiB per request (`max_pages`, `max_write`).
//!
//! # Why fuser
//!
//! fuser 0.18 takes an already opened and mounted `/dev/fuse` descriptor
//! (`Session::from_fd`), which is what a mount made in another mount namespace needs; its
//! methods take `&self` and its reply objects can be moved into tasks and answered later,
//! which gives concurrency without an async trait. It is the most used Rust FUSE crate,
//! pure Rust (no libfuse), and maintained. fuse3 is natively async but mounts itself and
//! does not take a descriptor mounted elsewhere.
//!
//! # Lifetime
//!
//! The mount exists only in the session's mount namespace and goes with it. If the client
//! dies (SIGKILL included) its descriptor closes, the kernel aborts the connection, and any
//! process in the middle of a file request gets `ENOTCONN` instead of hanging.

mod fs;
pub mod ledger;
pub mod listings;
pub mod mount;
pub mod ops;
pub mod transport;

use std::os::fd::OwnedFd;
use std::time::Duration;

pub use fs::{file_attr, RemoteFs};
pub use mount::mount_device;
pub use transport::{QuicTransport, Transport};

/// How long the kernel trusts entries and attributes.
pub const DEFAULT_TTL: Duration = Duration::from_millis(mirrord_net_protocol::fs::DEFAULT_TTL_MS);

/// Serves the mounted FUSE device `device` from tasks on `runtime`, until the mount goes.
///
/// Blocks until the kernel's `INIT` has been read and answered (it is already queued: the
/// device was mounted before it was passed here), then serves from a background thread.
pub fn serve<T: Transport>(
    device: OwnedFd,
    transport: T,
    runtime: tokio::runtime::Handle,
    ttl: Duration,
) -> std::io::Result<fuser::BackgroundSession> {
    let filesystem = RemoteFs::new(transport, runtime, ttl);
    let mut config = fuser::Config::default();
    config.acl = fuser::SessionACL::All;
    // The reading thread only hands requests to tasks; two keep it off the critical path.
    config.n_threads = Some(2);
    config.clone_fd = true;
    fuser::Session::from_fd(filesystem, device, fuser::SessionACL::All, config)?.spawn()
}
