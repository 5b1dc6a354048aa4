//! Kernel operations as agent requests, and the answers as what the kernel needs — without
//! the kernel: every method here is plain async code over a [`Transport`], unit-tested
//! against the agent's file server in the same process.
//!
//! Errors are errnos (`i32`); a request that got no answer at all is `EIO`.

use std::collections::HashMap;
use std::sync::Mutex;

use mirrord_net_protocol::fs::{
    Attr, Caller, DirEntry, FsRequest, FsResponse, SetAttr, StatFs, Timestamp,
};

use crate::transport::{Reply, Transport, TransportError};

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
}

impl<T: Transport> Remote<T> {
    pub fn new(transport: T) -> Self {
        Remote {
            transport,
            opened_versions: Mutex::new(HashMap::new()),
        }
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

    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr, i32> {
        self.expect_attr(FsRequest::Lookup {
            parent,
            name: name.to_vec(),
        })
        .await
    }

    pub async fn forget(&self, node: u64, count: u64) {
        let _ = self.call(FsRequest::Forget { node, count }).await;
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
        match self.call(FsRequest::Open { node, flags }).await?.response {
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
        match self.call(request).await?.response {
            FsResponse::Created { handle, attr } => Ok(Opened {
                handle,
                attr,
                keep_cache: false,
            }),
            other => Err(unexpected(other)),
        }
    }

    pub async fn write(&self, handle: u64, offset: u64, data: Vec<u8>) -> Result<u32, i32> {
        match self
            .call(FsRequest::Write {
                handle,
                offset,
                data,
            })
            .await?
            .response
        {
            FsResponse::Written(n) => Ok(n),
            other => Err(unexpected(other)),
        }
    }

    pub async fn setattr(&self, node: u64, handle: Option<u64>, set: SetAttr) -> Result<Attr, i32> {
        self.expect_attr(FsRequest::SetAttr { node, handle, set })
            .await
    }

    pub async fn rename(
        &self,
        parent: u64,
        name: &[u8],
        new_parent: u64,
        new_name: &[u8],
        flags: u32,
    ) -> Result<(), i32> {
        self.expect_ok(FsRequest::Rename {
            parent,
            name: name.to_vec(),
            new_parent,
            new_name: new_name.to_vec(),
            flags,
        })
        .await
    }

    pub async fn unlink(&self, parent: u64, name: &[u8]) -> Result<(), i32> {
        self.expect_ok(FsRequest::Unlink {
            parent,
            name: name.to_vec(),
        })
        .await
    }

    pub async fn rmdir(&self, parent: u64, name: &[u8]) -> Result<(), i32> {
        self.expect_ok(FsRequest::Rmdir {
            parent,
            name: name.to_vec(),
        })
        .await
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        caller: Caller,
    ) -> Result<Attr, i32> {
        self.expect_attr(FsRequest::Mkdir {
            parent,
            name: name.to_vec(),
            mode,
            caller,
        })
        .await
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr, i32> {
        self.expect_attr(FsRequest::Symlink {
            parent,
            name: name.to_vec(),
            target: target.to_vec(),
            caller,
        })
        .await
    }

    pub async fn fsync(&self, handle: u64, datasync: bool) -> Result<(), i32> {
        self.expect_ok(FsRequest::Fsync { handle, datasync }).await
    }
}

/// Fills a kernel directory buffer: `add` returns true when the buffer is full (the entry
/// was not added). Returns the nodes of `readdirplus` entries that did not fit, whose
/// references the agent took and the kernel never saw, to be forgotten.
pub fn fill_dir(entries: Vec<DirEntry>, mut add: impl FnMut(&DirEntry) -> bool) -> Vec<u64> {
    let mut unseen = Vec::new();
    let mut full = false;
    for entry in entries {
        if !full && add(&entry) {
            full = true;
        }
        if full {
            unseen.extend(entry.attr.map(|attr| attr.node));
        }
    }
    unseen
}

fn unexpected(response: FsResponse) -> i32 {
    tracing::warn!(?response, "unexpected answer to a file request");
    libc::EIO
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
