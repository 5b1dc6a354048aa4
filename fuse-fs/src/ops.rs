//! Kernel operations as agent requests, and the answers as what the kernel needs — without
//! the kernel: every method here is plain async code over a [`Transport`], unit-tested
//! against the agent's file server in the same process.
//!
//! Errors are errnos (`i32`); a request that got no answer at all is `EIO`.
//!
//! Every answer that names a node goes through the [`Ledger`], which owns the agent's
//! references; directory listings are answered from [`Listings`] while they are fresh. Both
//! sit behind one mutex, so that a listing can never be dropped between serving an entry
//! from it and counting the kernel's reference on that entry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrord_net_protocol::fs::{
    Attr, Caller, DirEntry, FsRequest, FsResponse, SetAttr, StatFs, Timestamp,
};

use crate::ledger::Ledger;
use crate::listings::{Inserted, Listings};
use crate::transport::{Reply, Transport, TransportError};

/// Entries asked of the agent per `readdirplus` page that no cached listing holds: a kernel
/// buffer (one page) holds about 25 records; the few that do not fit are given back.
const DIR_BATCH: u32 = 32;

/// Entries asked of the agent per request when fetching a whole listing (the agent's most).
const LISTING_BATCH: u32 = 4096;

/// The references the daemon holds and the listings it serves, under one lock.
struct Cache {
    ledger: Ledger,
    listings: Listings,
}

impl Cache {
    /// Tells the ledger that the listings' holds on `nodes` went.
    fn released(&mut self, nodes: Vec<u64>) -> Vec<(u64, u64)> {
        nodes
            .into_iter()
            .filter_map(|node| self.ledger.listing_released(node))
            .collect()
    }
}

/// An open file as the kernel should treat it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub handle: u64,
    pub attr: Attr,
    /// The kernel may keep the pages it cached: the file's size and mtime are what they were
    /// when it was last opened (`FOPEN_KEEP_CACHE`).
    pub keep_cache: bool,
}

/// The client's view of the agent's files.
pub struct Remote<T> {
    transport: T,
    /// Size and mtime of each node at its last open.
    opened_versions: Mutex<HashMap<u64, (u64, Timestamp)>>,
    cache: Mutex<Cache>,
}

impl<T: Transport> Remote<T> {
    /// Listings are served for `ttl`, the time the kernel trusts attributes.
    pub fn new(transport: T, ttl: Duration) -> Self {
        Remote {
            transport,
            opened_versions: Mutex::new(HashMap::new()),
            cache: Mutex::new(Cache {
                ledger: Ledger::default(),
                listings: Listings::new(ttl),
            }),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().expect("file cache")
    }

    /// Gives references back to the agent, in one request.
    async fn give_back(&self, nodes: Vec<(u64, u64)>) {
        match nodes.as_slice() {
            [] => {}
            &[(node, count)] => {
                let _ = self.call(FsRequest::Forget { node, count }).await;
            }
            _ => {
                let _ = self.call(FsRequest::ForgetMany { nodes }).await;
            }
        }
    }

    /// An answer naming `attr.node` that the kernel is about to take.
    fn for_kernel(&self, attr: Attr) -> Attr {
        self.cache().ledger.took_for_kernel(attr.node);
        attr
    }

    /// The session changed the names in `dirs`: their listings go.
    async fn dirs_changed(&self, dirs: &[u64]) {
        let releases = {
            let mut cache = self.cache();
            let nodes = dirs
                .iter()
                .flat_map(|&dir| cache.listings.dir_changed(dir))
                .collect();
            cache.released(nodes)
        };
        self.give_back(releases).await;
    }

    /// The session changed the file `node`: listings holding its old attributes go.
    async fn node_changed(&self, node: u64) {
        let releases = {
            let mut cache = self.cache();
            let nodes = cache.listings.node_changed(node);
            cache.released(nodes)
        };
        self.give_back(releases).await;
    }

    /// Drops the listings older than the TTL and gives back what only they held.
    pub async fn expire_listings(&self) {
        let releases = {
            let mut cache = self.cache();
            let nodes = cache.listings.expire(Instant::now());
            cache.released(nodes)
        };
        self.give_back(releases).await;
    }

    /// References held at the agent and listings cached, for tests and logs.
    pub fn held(&self) -> (u64, usize) {
        let cache = self.cache();
        (cache.ledger.agent_refs(), cache.listings.len())
    }

    async fn call(&self, request: FsRequest) -> Result<Reply, i32> {
        match self.transport.call(request).await {
            Ok(Reply {
                response: FsResponse::Error(errno),
                ..
            }) => Err(errno),
            Ok(reply) => Ok(reply),
            // The connection ends with the session, while the kernel may still be sending
            // releases and forgets; an agent lost mid-session is reported by the client.
            Err(err @ TransportError::Connection(_)) => {
                tracing::debug!("file request failed: {err}");
                Err(libc::EIO)
            }
            Err(err) => {
                tracing::warn!("file request failed: {err}");
                Err(libc::EIO)
            }
        }
    }

    async fn expect_attr(&self, request: FsRequest) -> Result<Attr, i32> {
        match self.call(request).await?.response {
            FsResponse::Entry(attr) | FsResponse::Attr(attr) => Ok(attr),
            other => Err(unexpected(other)),
        }
    }

    async fn expect_ok(&self, request: FsRequest) -> Result<(), i32> {
        match self.call(request).await?.response {
            FsResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Looks `name` up for the kernel, which takes a reference on it.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, i32> {
        self.expect_attr(FsRequest::Lookup {
            parent,
            name: name.to_vec(),
        })
        .await
        .map(|attr| self.for_kernel(attr))
    }

    /// The kernel gave back `count` references of each node.
    pub async fn forget(&self, nodes: &[(u64, u64)]) {
        let releases: Vec<(u64, u64)> = {
            let mut cache = self.cache();
            nodes
                .iter()
                .filter_map(|&(node, count)| cache.ledger.kernel_forgot(node, count))
                .collect()
        };
        self.give_back(releases).await;
    }

    pub async fn getattr(&self, node: u64) -> Result<Attr, i32> {
        self.expect_attr(FsRequest::GetAttr { node }).await
    }

    pub async fn readlink(&self, node: u64) -> Result<Vec<u8>, i32> {
        match self.call(FsRequest::ReadLink { node }).await?.response {
            FsResponse::Link(target) => Ok(target),
            other => Err(unexpected(other)),
        }
    }

    pub async fn open(&self, node: u64, flags: i32) -> Result<Opened, i32> {
        let answer = self.call(FsRequest::Open { node, flags }).await;
        if flags & libc::O_TRUNC != 0 {
            // After the answer, so that no listing fetched before the truncation is kept.
            self.node_changed(node).await;
        }
        match answer?.response {
            FsResponse::Opened { handle, attr } => Ok(Opened {
                handle,
                attr,
                keep_cache: self.same_version_as_last_open(node, &attr, flags),
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Records the version seen now and says whether it equals the last one. A file opened
    /// for writing never keeps the cache: its writes go through the kernel, and what it
    /// wrote must not be mixed with older pages.
    fn same_version_as_last_open(&self, node: u64, attr: &Attr, flags: i32) -> bool {
        let version = (attr.size, attr.mtime);
        let previous = self
            .opened_versions
            .lock()
            .expect("versions")
            .insert(node, version);
        previous == Some(version) && flags & libc::O_ACCMODE == libc::O_RDONLY
    }

    /// Up to `size` bytes at `offset`; fewer at end of file.
    pub async fn read(&self, handle: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let reply = self
            .call(FsRequest::Read {
                handle,
                offset,
                size,
            })
            .await?;
        match reply.response {
            FsResponse::Data { .. } => Ok(reply.data),
            other => Err(unexpected(other)),
        }
    }

    pub async fn release(&self, handle: u64) {
        let _ = self.call(FsRequest::Release { handle }).await;
    }

    /// One request's worth of a listing from `offset` (0 = start).
    pub async fn readdir(
        &self,
        node: u64,
        offset: u64,
        plus: bool,
        max_entries: u32,
    ) -> Result<Vec<DirEntry>, i32> {
        match self
            .call(FsRequest::ReadDir {
                node,
                offset,
                plus,
                max_entries,
            })
            .await?
            .response
        {
            FsResponse::Dir(entries) => Ok(entries),
            other => Err(unexpected(other)),
        }
    }

    /// Fills a kernel `readdirplus` buffer with the entries of `dir` from `offset`; `add`
    /// returns true when the buffer is full (the entry was not added). The kernel takes a
    /// reference on every entry added, but `.` and `..`.
    ///
    /// Served from the cached listing when a fresh one has `offset`; a listing read from its
    /// start is fetched whole and cached; any other offset asks the agent for one page.
    pub async fn readdirplus(
        &self,
        dir: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<(), i32> {
        {
            let mut cache = self.cache();
            if let Some((entries, start)) = cache.listings.page(dir, offset, Instant::now()) {
                let seen = fill_dir(&entries[start..], &mut add);
                for entry in &entries[start..start + seen] {
                    if let Some(attr) = entry.attr {
                        cache.ledger.kernel_saw(attr.node);
                    }
                }
                return Ok(());
            }
        }
        if offset == 0 {
            return self.fetch_listing(dir, add).await;
        }
        let entries = self.readdir(dir, offset, true, DIR_BATCH).await?;
        let seen = fill_dir(&entries, &mut add);
        {
            let mut cache = self.cache();
            for attr in entries[..seen].iter().filter_map(|entry| entry.attr) {
                cache.ledger.took_for_kernel(attr.node);
            }
        }
        self.give_back(references(&entries[seen..])).await;
        Ok(())
    }

    /// Fetches the whole listing of `dir` with attributes, caches it unless the session
    /// changed something meanwhile, and fills the kernel's buffer from its start.
    async fn fetch_listing(
        &self,
        dir: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<(), i32> {
        let (token, started) = (self.cache().listings.begin_fetch(), Instant::now());
        let entries: Arc<[DirEntry]> = self.fetch_all(dir).await?.into();
        let seen = fill_dir(&entries, &mut add);
        let releases = {
            let mut cache = self.cache();
            match cache.listings.insert(dir, entries.clone(), token, started) {
                Inserted::Cached { released } => {
                    for entry in entries.iter() {
                        if let Some(attr) = entry.attr {
                            cache.ledger.took_for_listing(attr.node);
                        }
                    }
                    for attr in entries[..seen].iter().filter_map(|entry| entry.attr) {
                        cache.ledger.kernel_saw(attr.node);
                    }
                    cache.released(released)
                }
                Inserted::Stale => {
                    for attr in entries[..seen].iter().filter_map(|entry| entry.attr) {
                        cache.ledger.took_for_kernel(attr.node);
                    }
                    references(&entries[seen..])
                }
            }
        };
        self.give_back(releases).await;
        Ok(())
    }

    /// Every entry of `dir`, with attributes (a reference each), in as few requests as the
    /// agent allows. On failure, what was fetched is given back.
    async fn fetch_all(&self, dir: u64) -> Result<Vec<DirEntry>, i32> {
        let mut entries: Vec<DirEntry> = Vec::new();
        loop {
            let offset = entries.last().map_or(0, |entry| entry.next_offset);
            match self.readdir(dir, offset, true, LISTING_BATCH).await {
                Ok(more) if more.is_empty() => return Ok(entries),
                Ok(more) => entries.extend(more),
                Err(errno) => {
                    self.give_back(references(&entries)).await;
                    return Err(errno);
                }
            }
        }
    }

    /// Fills a kernel `readdir` buffer (names only, no references) like
    /// [`Remote::readdirplus`]: from the cached listing when it has `offset`, else from the
    /// agent.
    pub async fn readdir_names(
        &self,
        dir: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry) -> bool,
    ) -> Result<(), i32> {
        let cached = self.cache().listings.page(dir, offset, Instant::now());
        match cached {
            Some((entries, start)) => {
                fill_dir(&entries[start..], &mut add);
            }
            None => {
                let entries = self.readdir(dir, offset, false, DIR_BATCH * 4).await?;
                fill_dir(&entries, &mut add);
            }
        }
        Ok(())
    }

    pub async fn statfs(&self, node: u64) -> Result<StatFs, i32> {
        match self.call(FsRequest::StatFs { node }).await?.response {
            FsResponse::StatFs(stat) => Ok(stat),
            other => Err(unexpected(other)),
        }
    }

    pub async fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<Opened, i32> {
        let request = FsRequest::Create {
            parent,
            name: name.to_vec(),
            mode,
            flags,
            caller,
        };
        let answer = self.call(request).await;
        self.dirs_changed(&[parent]).await;
        match answer?.response {
            FsResponse::Created { handle, attr } => Ok(Opened {
                handle,
                attr: self.for_kernel(attr),
                keep_cache: false,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// Writes to the open file `handle` of `node`.
    pub async fn write(
        &self,
        node: u64,
        handle: u64,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<u32, i32> {
        let answer = self
            .call(FsRequest::Write {
                handle,
                offset,
                data,
            })
            .await;
        self.node_changed(node).await;
        match answer?.response {
            FsResponse::Written(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub async fn setattr(
        &self,
        node: u64,
        handle: Option<u64>,
        set: SetAttr,
        caller: Caller,
    ) -> Result<Attr, i32> {
        let answer = self
            .expect_attr(FsRequest::SetAttr {
                node,
                handle,
                set,
                caller,
            })
            .await;
        self.node_changed(node).await;
        answer
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), i32> {
        let answer = self
            .expect_ok(FsRequest::Rename {
                parent,
                name: name.to_vec(),
                new_parent,
                new_name: new_name.to_vec(),
                flags,
            })
            .await;
        self.dirs_changed(&[parent, new_parent]).await;
        answer
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), i32> {
        let answer = self
            .expect_ok(FsRequest::Unlink {
                parent,
                name: name.to_vec(),
            })
            .await;
        self.dirs_changed(&[parent]).await;
        answer
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), i32> {
        let answer = self
            .expect_ok(FsRequest::Rmdir {
                parent,
                name: name.to_vec(),
            })
            .await;
        self.dirs_changed(&[parent]).await;
        answer
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        caller: Caller,
    ) -> Result<Attr, i32> {
        let answer = self
            .expect_attr(FsRequest::Mkdir {
                parent,
                name: name.to_vec(),
                mode,
                caller,
            })
            .await;
        self.dirs_changed(&[parent]).await;
        answer.map(|attr| self.for_kernel(attr))
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr, i32> {
        let answer = self
            .expect_attr(FsRequest::Symlink {
                parent,
                name: name.to_vec(),
                target: target.to_vec(),
                caller,
            })
            .await;
        self.dirs_changed(&[parent]).await;
        answer.map(|attr| self.for_kernel(attr))
    }

    pub async fn fsync(&self, handle: u64, datasync: bool) -> Result<(), i32> {
        self.expect_ok(FsRequest::Fsync { handle, datasync }).await
    }
}

/// Offers `entries` to a kernel directory buffer until `add` says it is full (returns true:
/// the entry was not added). Returns how many were added.
pub fn fill_dir(entries: &[DirEntry], add: impl FnMut(&DirEntry) -> bool) -> usize {
    entries.iter().position(add).unwrap_or(entries.len())
}

/// The agent references `entries` carry (one per entry with attributes), to give back.
fn references(entries: &[DirEntry]) -> Vec<(u64, u64)> {
    let mut counts: HashMap<u64, u64> = HashMap::new();
    for attr in entries.iter().filter_map(|entry| entry.attr) {
        *counts.entry(attr.node).or_default() += 1;
    }
    counts.into_iter().collect()
}

fn unexpected(response: FsResponse) -> i32 {
    tracing::warn!(?response, "unexpected answer to a file request");
    libc::EIO
}

#[cfg(test)]
mod tests;
