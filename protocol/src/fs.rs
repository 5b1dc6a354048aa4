//! File requests: how the session's FUSE file system asks the agent about the target's files.
//!
//! # Streams
//!
//! The session's first bidirectional stream is the control stream (hello). Every later
//! bidirectional stream opened by the client starts with one [`StreamKind`] byte saying what it
//! carries, so later kinds (incoming traffic, say) fit beside files without a new handshake.
//!
//! # One stream per request
//!
//! A [`StreamKind::Files`] stream carries exactly one request and its answer:
//!
//! ```text
//!   client                                        agent
//!     │ ── kind byte, frame(FsRequest), FIN ───────► │  blocking syscall on a pool thread
//!     │ ◄─ frame(FsResponse) [+ raw bytes], FIN ──── │
//! ```
//!
//! Opening a QUIC stream costs no round trip (it is implicit in the first frame), so a stream
//! per request gives many requests in flight with no request ids, no reordering logic and no
//! head-of-line blocking between a slow read and a quick lookup: each stream has its own flow
//! control and a lost packet delays only its own request. The connection allows 1,024
//! concurrent bidirectional streams, far more than the kernel keeps in flight.
//!
//! Read data is not framed: [`FsResponse::Data`] announces the length and the bytes follow on
//! the stream as they are, so the agent hands its `pread` buffer to QUIC without copying and
//! the client reads them straight into the buffer it gives the kernel.
//!
//! Errors travel as the errno the user's process must see ([`FsResponse::Error`]).
//!
//! Node ids are the agent's: [`ROOT_NODE`] is the target's root directory, every other id
//! comes from a [`FsRequest::Lookup`] (or a create, or a `readdirplus` entry) and holds one
//! reference per such answer until [`FsRequest::Forget`] gives them back — the same counting
//! FUSE itself does, so the client passes the kernel's node ids through unchanged.

use serde::{Deserialize, Serialize};

/// What a bidirectional stream after the control stream carries; its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamKind {
    /// One file request and its answer.
    Files = 1,
}

impl StreamKind {
    pub fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(StreamKind::Files),
            _ => None,
        }
    }
}

/// The node id of the target's root directory (FUSE's `FUSE_ROOT_ID`).
pub const ROOT_NODE: u64 = 1;

/// The largest read or write one request carries (the FUSE mount's `max_read`/`max_write`).
pub const MAX_IO: u32 = 1024 * 1024;

/// A moment, as `stat` has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// What `stat` says about a file, as the target sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Attr {
    /// The node id (also the inode number the session sees).
    pub node: u64,
    pub size: u64,
    /// 512-byte blocks allocated (less than `size / 512` for a sparse file).
    pub blocks: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    /// File type and permission bits (`st_mode`).
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// A new time for [`FsRequest::SetAttr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(Timestamp),
}

/// What [`FsRequest::SetAttr`] changes; `None` leaves a field alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SetAttr {
    /// Permission bits (`chmod`).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// New length (`truncate`).
    pub size: Option<u64>,
    pub atime: Option<SetTime>,
    pub mtime: Option<SetTime>,
}

/// Who asks for a new file, so that it is theirs on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    /// Where the next listing continues after this entry.
    pub next_offset: u64,
    /// File type bits (`S_IFMT` part of the mode).
    pub kind: u32,
    /// With `plus`: the looked-up node (one reference taken), except for `.` and `..`.
    pub attr: Option<Attr>,
}

/// `statvfs` of the file system a node is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

/// A request of the client's file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsRequest {
    /// `name` in directory `parent`: [`FsResponse::Entry`], one reference taken.
    Lookup {
        parent: u64,
        name: Vec<u8>,
    },
    /// Gives back `count` references of `node`; no answer is needed (the agent sends `Ok`).
    Forget {
        node: u64,
        count: u64,
    },
    GetAttr {
        node: u64,
    },
    ReadLink {
        node: u64,
    },
    /// Opens a file with `open(2)` flags: [`FsResponse::Opened`].
    Open {
        node: u64,
        flags: i32,
    },
    /// Up to `size` bytes at `offset`: [`FsResponse::Data`] and the bytes.
    Read {
        handle: u64,
        offset: u64,
        size: u32,
    },
    Release {
        handle: u64,
    },
    /// Lists a directory from `offset` (0 = start): [`FsResponse::Dir`]. With `plus`, every
    /// entry but `.` and `..` is looked up (a reference each) and carries its attributes.
    ReadDir {
        node: u64,
        offset: u64,
        plus: bool,
        max_entries: u32,
    },
    StatFs {
        node: u64,
    },
    // Write mode only; in read mode the agent answers EROFS.
    Create {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        flags: i32,
        caller: Caller,
    },
    Write {
        handle: u64,
        offset: u64,
        data: Vec<u8>,
    },
    SetAttr {
        node: u64,
        handle: Option<u64>,
        set: SetAttr,
        /// Who asks: an owner may only be changed to the caller's own ids.
        caller: Caller,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
    },
    Mkdir {
        parent: u64,
        name: Vec<u8>,
        mode: u32,
        caller: Caller,
    },
    Rmdir {
        parent: u64,
        name: Vec<u8>,
    },
    Symlink {
        parent: u64,
        name: Vec<u8>,
        target: Vec<u8>,
        caller: Caller,
    },
    Fsync {
        handle: u64,
        datasync: bool,
    },
    /// Many [`FsRequest::Forget`]s in one: `(node, count)` each (cached listings let go of
    /// thousands of nodes at once).
    ForgetMany {
        nodes: Vec<(u64, u64)>,
    },
}

impl FsRequest {
    /// True for requests that change the target's files.
    pub fn writes(&self) -> bool {
        matches!(
            self,
            FsRequest::Create { .. }
                | FsRequest::Write { .. }
                | FsRequest::SetAttr { .. }
                | FsRequest::Rename { .. }
                | FsRequest::Unlink { .. }
                | FsRequest::Mkdir { .. }
                | FsRequest::Rmdir { .. }
                | FsRequest::Symlink { .. }
        )
    }
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FsResponse {
    Ok,
    Entry(Attr),
    Attr(Attr),
    Link(Vec<u8>),
    /// An open file: its handle and its attributes at open time (the client keeps the
    /// kernel's page cache when they are unchanged since the last open).
    Opened {
        handle: u64,
        attr: Attr,
    },
    /// A created and opened file.
    Created {
        handle: u64,
        attr: Attr,
    },
    /// `len` raw bytes follow the frame on the stream; fewer than asked means end of file.
    Data {
        len: u32,
    },
    Dir(Vec<DirEntry>),
    StatFs(StatFs),
    Written(u32),
    /// The errno the caller sees.
    Error(i32),
}

/// Attribute and entry timeouts the client gives the kernel: a change on the target is seen
/// within this long.
pub const DEFAULT_TTL_MS: u64 = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::{encode, FrameDecoder};

    #[test]
    fn requests_and_responses_round_trip_through_frames() {
        let requests = [
            FsRequest::Lookup {
                parent: ROOT_NODE,
                name: b"etc".to_vec(),
            },
            FsRequest::Read {
                handle: 7,
                offset: 1 << 40,
                size: MAX_IO,
            },
            FsRequest::SetAttr {
                node: 9,
                handle: None,
                set: SetAttr {
                    mode: Some(0o600),
                    mtime: Some(SetTime::Now),
                    ..SetAttr::default()
                },
                caller: Caller {
                    uid: 1000,
                    gid: 100,
                },
            },
        ];
        let mut decoder = FrameDecoder::new();
        for request in &requests {
            decoder.push(&encode(request).unwrap());
        }
        for request in &requests {
            assert_eq!(
                &decoder.next_message::<FsRequest>().unwrap().unwrap(),
                request
            );
        }
        let response = FsResponse::Dir(vec![DirEntry {
            name: vec![0xff, b'x'],
            next_offset: 3,
            kind: 0o100000,
            attr: Some(Attr::default()),
        }]);
        decoder.push(&encode(&response).unwrap());
        assert_eq!(
            decoder.next_message::<FsResponse>().unwrap().unwrap(),
            response
        );
    }

    #[test]
    fn only_the_files_kind_byte_is_known() {
        assert_eq!(StreamKind::from_byte(1), Some(StreamKind::Files));
        assert_eq!(
            StreamKind::from_byte(StreamKind::Files as u8),
            Some(StreamKind::Files)
        );
        assert_eq!(StreamKind::from_byte(0), None);
        assert_eq!(StreamKind::from_byte(2), None);
    }

    #[test]
    fn writes_are_told_apart_from_reads() {
        assert!(!FsRequest::GetAttr { node: 1 }.writes());
        assert!(!FsRequest::Open { node: 1, flags: 0 }.writes());
        assert!(FsRequest::Unlink {
            parent: 1,
            name: b"x".to_vec()
        }
        .writes());
    }
}
