//! The file server's logic: one [`FsRequest`] in, one [`FsResponse`] (and read data) out.
//!
//! Blocking: every call is a few system calls on descriptors, made on a pool thread by the
//! stream layer. The tables are behind short mutexes that are never held across a system
//! call, so parallel requests only wait for each other inside the kernel.
//!
//! The agent is root and the session's user is not, so the server holds the line the kernel
//! would hold for that user, whatever a request claims:
//!
//! - Only regular files, directories and symlinks are opened. A FIFO would block a pool thread
//!   until a writer came, a device or socket has side effects on the target; they answer
//!   `ENXIO` (their attributes and listings are still served). On procfs and sysfs only files
//!   that any user may read are opened, and only for reading (`/proc/kmsg` and the like are
//!   root's, and reading them changes the target): `EACCES`.
//! - Files are opened `O_NONBLOCK` (nothing waits in the kernel on a pool thread) and
//!   `O_NOATIME` where the file system allows it (a session's reads leave no trace).
//! - In write mode, no setuid or setgid bit on a file (`EPERM`; stripped from a new file's
//!   mode), and an owner only changes to the caller's own uid and gid (`EPERM`), as chown
//!   by an unprivileged user would.

use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mirrord_net_protocol::fs::{
    Attr, Caller, DirEntry, FsRequest, FsResponse, SetAttr, SetTime, MAX_IO,
};

use super::nodes::NodeTable;
use super::sys;

/// Whether the session may change the target's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// An answer: the response frame and, for reads, the bytes that follow it.
#[derive(Debug)]
pub struct Answer {
    pub response: FsResponse,
    pub data: Option<Vec<u8>>,
}

impl From<FsResponse> for Answer {
    fn from(response: FsResponse) -> Self {
        Answer {
            response,
            data: None,
        }
    }
}

/// Files a client may hold open at once (each is a descriptor of the agent's, which also
/// holds the session's sockets: a client must not be able to take them all).
pub const MAX_HANDLES: usize = 16_384;
/// Nodes (files the client's kernel has looked up and not forgotten; one `O_PATH` descriptor
/// each) per session. The kernel forgets nodes as it evicts inodes, so a walk of a large
/// tree stays well below; a new node past the cap fails with `ENFILE`.
pub const MAX_NODES: usize = 262_144;

/// Serves one session's file requests from a root directory.
pub struct FileServer {
    access: Access,
    nodes: Mutex<NodeTable>,
    handles: Mutex<HashMap<u64, Arc<OwnedFd>>>,
    next_handle: AtomicU64,
    max_handles: usize,
    max_nodes: usize,
}

impl FileServer {
    /// Serves the tree under `root` (a directory; for a target, its `/proc/PID/root`).
    pub fn open(root: &Path, access: Access) -> io::Result<Self> {
        let root: OwnedFd = std::fs::File::open(root)?.into();
        let st = sys::stat(root.as_fd())?;
        Ok(FileServer {
            access,
            nodes: Mutex::new(NodeTable::new(root, (st.st_dev, st.st_ino))),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            max_handles: MAX_HANDLES,
            max_nodes: MAX_NODES,
        })
    }

    /// Other caps than [`MAX_HANDLES`] and [`MAX_NODES`].
    pub fn with_limits(mut self, max_handles: usize, max_nodes: usize) -> Self {
        self.max_handles = max_handles;
        self.max_nodes = max_nodes;
        self
    }

    /// Answers one request. Never fails: errors are errno answers.
    pub fn handle(&self, request: FsRequest) -> Answer {
        if request.writes() && self.access == Access::ReadOnly {
            return FsResponse::Error(libc::EROFS).into();
        }
        match self.dispatch(request) {
            Ok(answer) => answer,
            Err(err) => FsResponse::Error(err.raw_os_error().unwrap_or(libc::EIO)).into(),
        }
    }

    /// Nodes currently held (the root included), for tests and logs.
    pub fn node_count(&self) -> usize {
        self.nodes.lock().expect("node table").len()
    }

    fn dispatch(&self, request: FsRequest) -> io::Result<Answer> {
        Ok(match request {
            FsRequest::Lookup { parent, name } => {
                let name = sys::component(&name)?;
                FsResponse::Entry(self.lookup(parent, &name)?).into()
            }
            FsRequest::Forget { node, count } => {
                self.nodes.lock().expect("node table").forget(node, count);
                FsResponse::Ok.into()
            }
            FsRequest::ForgetMany { nodes } => {
                let mut table = self.nodes.lock().expect("node table");
                for (node, count) in nodes {
                    table.forget(node, count);
                }
                FsResponse::Ok.into()
            }
            FsRequest::GetAttr { node } => FsResponse::Attr(self.attr(node)?).into(),
            FsRequest::ReadLink { node } => {
                FsResponse::Link(sys::readlink(self.node(node)?.as_fd())?).into()
            }
            FsRequest::Open { node, flags } => {
                self.check_open_flags(flags)?;
                let fd = self.node(node)?;
                check_openable(fd.as_fd(), flags)?;
                let file = reopen(fd.as_fd(), flags)?;
                let attr = sys::attr_of(node, &sys::stat(file.as_fd())?);
                let handle = self.add_handle(file)?;
                FsResponse::Opened { handle, attr }.into()
            }
            FsRequest::Read {
                handle,
                offset,
                size,
            } => {
                let file = self.handle_fd(handle)?;
                let data = sys::pread_full(file.as_fd(), offset, size.min(MAX_IO))?;
                Answer {
                    response: FsResponse::Data {
                        len: data.len() as u32,
                    },
                    data: Some(data),
                }
            }
            FsRequest::Release { handle } => {
                self.handles.lock().expect("handles").remove(&handle);
                FsResponse::Ok.into()
            }
            FsRequest::ReadDir {
                node,
                offset,
                plus,
                max_entries,
            } => FsResponse::Dir(self.read_dir(node, offset, plus, max_entries)?).into(),
            FsRequest::StatFs { node } => {
                FsResponse::StatFs(sys::statfs(self.node(node)?.as_fd())?).into()
            }
            FsRequest::Create {
                parent,
                name,
                mode,
                flags,
                caller,
            } => {
                let name = sys::component(&name)?;
                let dir = self.node(parent)?;
                // O_EXCL stays: `open(O_CREAT | O_EXCL)` must fail on an existing file.
                let flags =
                    flags & !(libc::O_NOCTTY | libc::O_CLOEXEC) | libc::O_CREAT | libc::O_NOFOLLOW;
                // openat2 refuses file type bits in the mode, which the kernel sends; no
                // setuid or setgid bit on a new file (see the module comment).
                let file = sys::open_beneath(dir.as_fd(), &name, flags, mode & 0o1777)?;
                give_to(&caller, file.as_raw_fd(), c"", libc::AT_EMPTY_PATH)?;
                let attr = self.lookup(parent, &name)?;
                let handle = self.add_handle(file)?;
                FsResponse::Created { handle, attr }.into()
            }
            FsRequest::Write {
                handle,
                offset,
                data,
            } => {
                let file = self.handle_fd(handle)?;
                sys::pwrite_all(file.as_fd(), offset, &data)?;
                FsResponse::Written(data.len() as u32).into()
            }
            FsRequest::SetAttr {
                node,
                handle,
                set,
                caller,
            } => FsResponse::Attr(self.set_attr(node, handle, &set, &caller)?).into(),
            FsRequest::Rename {
                parent,
                name,
                new_parent,
                new_name,
                flags,
            } => {
                let (name, new_name) = (sys::component(&name)?, sys::component(&new_name)?);
                let (from, to) = (self.node(parent)?, self.node(new_parent)?);
                // SAFETY: valid directory descriptors and NUL-terminated single components.
                sys::check(unsafe {
                    libc::renameat2(
                        from.as_raw_fd(),
                        name.as_ptr(),
                        to.as_raw_fd(),
                        new_name.as_ptr(),
                        flags,
                    )
                })?;
                FsResponse::Ok.into()
            }
            FsRequest::Unlink { parent, name } => {
                self.unlink(parent, &name, 0)?;
                FsResponse::Ok.into()
            }
            FsRequest::Rmdir { parent, name } => {
                self.unlink(parent, &name, libc::AT_REMOVEDIR)?;
                FsResponse::Ok.into()
            }
            FsRequest::Mkdir {
                parent,
                name,
                mode,
                caller,
            } => {
                let name = sys::component(&name)?;
                let dir = self.node(parent)?;
                // SAFETY: valid directory descriptor and a NUL-terminated component.
                sys::check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) })?;
                give_to(&caller, dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)?;
                FsResponse::Entry(self.lookup(parent, &name)?).into()
            }
            FsRequest::Symlink {
                parent,
                name,
                target,
                caller,
            } => {
                let name = sys::component(&name)?;
                let target =
                    CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                let dir = self.node(parent)?;
                // SAFETY: NUL-terminated strings and a valid directory descriptor.
                sys::check(unsafe {
                    libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr())
                })?;
                give_to(&caller, dir.as_raw_fd(), &name, libc::AT_SYMLINK_NOFOLLOW)?;
                FsResponse::Entry(self.lookup(parent, &name)?).into()
            }
            FsRequest::Fsync { handle, datasync } => {
                let file = self.handle_fd(handle)?;
                // SAFETY: plain calls on a valid descriptor.
                sys::check(unsafe {
                    if datasync {
                        libc::fdatasync(file.as_raw_fd())
                    } else {
                        libc::fsync(file.as_raw_fd())
                    }
                })?;
                FsResponse::Ok.into()
            }
        })
    }

    /// Looks `name` up in `parent` and takes a reference on the result.
    fn lookup(&self, parent: u64, name: &CString) -> io::Result<Attr> {
        let dir = self.node(parent)?;
        let fd = sys::open_node(dir.as_fd(), name)?;
        let st = sys::stat(fd.as_fd())?;
        let key = (st.st_dev, st.st_ino);
        let mut nodes = self.nodes.lock().expect("node table");
        if nodes.len() >= self.max_nodes && !nodes.contains(key) {
            return Err(io::Error::from_raw_os_error(libc::ENFILE));
        }
        let id = nodes.insert(key, fd);
        Ok(sys::attr_of(id, &st))
    }

    fn attr(&self, node: u64) -> io::Result<Attr> {
        Ok(sys::attr_of(node, &sys::stat(self.node(node)?.as_fd())?))
    }

    fn node(&self, id: u64) -> io::Result<Arc<OwnedFd>> {
        self.nodes
            .lock()
            .expect("node table")
            .fd(id)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))
    }

    fn handle_fd(&self, handle: u64) -> io::Result<Arc<OwnedFd>> {
        self.handles
            .lock()
            .expect("handles")
            .get(&handle)
            .cloned()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    /// Keeps `file` open for the client. Past the cap ([`MAX_HANDLES`]) the open fails with `EMFILE`,
    /// what a program gets when it holds too many open files.
    fn add_handle(&self, file: OwnedFd) -> io::Result<u64> {
        let mut handles = self.handles.lock().expect("handles");
        if handles.len() >= self.max_handles {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        handles.insert(handle, Arc::new(file));
        Ok(handle)
    }

    /// A read-only session opens for reading only, whatever the flags ask.
    fn check_open_flags(&self, flags: i32) -> io::Result<()> {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY
            || flags & (libc::O_TRUNC | libc::O_CREAT) != 0;
        if writes && self.access == Access::ReadOnly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        Ok(())
    }

    fn read_dir(
        &self,
        node: u64,
        offset: u64,
        plus: bool,
        max_entries: u32,
    ) -> io::Result<Vec<DirEntry>> {
        let dir = self.node(node)?;
        let raw = sys::list_dir(dir.as_fd(), offset, max_entries.clamp(1, 4096) as usize)?;
        let mut entries = Vec::with_capacity(raw.len());
        for entry in raw {
            let dots = entry.name == b"." || entry.name == b"..";
            let attr = if plus && !dots {
                let name = sys::component(&entry.name)?;
                match self.lookup(node, &name) {
                    Ok(attr) => Some(attr),
                    // Gone since the listing: leave it out, as a later listing would.
                    Err(err) if err.raw_os_error() == Some(libc::ENOENT) => continue,
                    Err(err) => return Err(err),
                }
            } else {
                None
            };
            entries.push(DirEntry {
                kind: attr
                    .map(|attr| attr.mode & libc::S_IFMT)
                    .unwrap_or_else(|| sys::kind_of_dtype(entry.d_type)),
                name: entry.name,
                next_offset: entry.next_offset,
                attr,
            });
        }
        Ok(entries)
    }

    fn set_attr(
        &self,
        node: u64,
        handle: Option<u64>,
        set: &SetAttr,
        caller: &Caller,
    ) -> io::Result<Attr> {
        let fd = self.node(node)?;
        check_set_attr(&sys::stat(fd.as_fd())?, set, caller)?;
        let path = sys::proc_path(fd.as_fd());
        if let Some(mode) = set.mode {
            // SAFETY: NUL-terminated path through /proc/self/fd, which names the file itself.
            sys::check(unsafe { libc::chmod(path.as_ptr(), mode & 0o7777) })?;
        }
        if set.uid.is_some() || set.gid.is_some() {
            let uid = set.uid.unwrap_or(u32::MAX);
            let gid = set.gid.unwrap_or(u32::MAX);
            // SAFETY: valid descriptor with an empty path; -1 leaves an id unchanged.
            sys::check(unsafe {
                libc::fchownat(
                    fd.as_raw_fd(),
                    c"".as_ptr(),
                    uid,
                    gid,
                    libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
                )
            })?;
        }
        if let Some(size) = set.size {
            match handle.map(|handle| self.handle_fd(handle)).transpose()? {
                // SAFETY: plain call on a valid descriptor open for writing.
                Some(file) => {
                    sys::check(unsafe { libc::ftruncate(file.as_raw_fd(), size as libc::off_t) })?
                }
                // SAFETY: NUL-terminated path naming the file itself.
                None => sys::check(unsafe { libc::truncate(path.as_ptr(), size as libc::off_t) })?,
            }
        }
        if set.atime.is_some() || set.mtime.is_some() {
            let times = [timespec(set.atime), timespec(set.mtime)];
            // SAFETY: NUL-terminated path and two timespecs.
            sys::check(unsafe {
                libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0)
            })?;
        }
        self.attr(node)
    }

    fn unlink(&self, parent: u64, name: &[u8], flags: i32) -> io::Result<()> {
        let name = sys::component(name)?;
        let dir = self.node(parent)?;
        // SAFETY: valid directory descriptor and a NUL-terminated component.
        sys::check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) })
    }
}

/// The flags a file is opened with on the target: the caller's, less those that would make
/// the agent's descriptor behave differently from the caller's view, plus `O_NONBLOCK` and
/// `O_NOATIME` (see the module comment).
fn open_flags(flags: i32) -> i32 {
    flags & !(libc::O_NOCTTY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        | libc::O_NONBLOCK
        | libc::O_NOATIME
}

/// Opens the node for I/O; without `O_NOATIME` where the file system or ownership refuses it
/// (`EPERM`).
fn reopen(node: std::os::fd::BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    match sys::reopen(node, open_flags(flags)) {
        Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
            sys::reopen(node, open_flags(flags) & !libc::O_NOATIME)
        }
        result => result,
    }
}

/// `PROC_SUPER_MAGIC` and `SYSFS_MAGIC` (linux/magic.h).
const PROCFS_MAGIC: i64 = 0x9fa0;
const SYSFS_MAGIC: i64 = 0x6265_6572;

/// Whether a node may be opened at all (see the module comment).
fn check_openable(node: std::os::fd::BorrowedFd<'_>, flags: i32) -> io::Result<()> {
    let st = sys::stat(node)?;
    openable(st.st_mode, flags, || sys::fs_type(node))
}

/// [`check_openable`]'s rule on a mode, the open flags and the file system's type (asked only
/// for regular files).
fn openable(mode: u32, flags: i32, fs_type: impl FnOnce() -> io::Result<i64>) -> io::Result<()> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => {
            let kernel_fs = matches!(fs_type()?, PROCFS_MAGIC | SYSFS_MAGIC);
            let for_anyone = mode & libc::S_IROTH != 0;
            if kernel_fs && (!for_anyone || flags & libc::O_ACCMODE != libc::O_RDONLY) {
                return Err(io::Error::from_raw_os_error(libc::EACCES));
            }
            Ok(())
        }
        libc::S_IFDIR | libc::S_IFLNK => Ok(()),
        _ => Err(io::Error::from_raw_os_error(libc::ENXIO)),
    }
}

/// Refuses what an unprivileged caller could not do to a file (see the module comment).
fn check_set_attr(st: &libc::stat, set: &SetAttr, caller: &Caller) -> io::Result<()> {
    let refused = || Err(io::Error::from_raw_os_error(libc::EPERM));
    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    if let Some(mode) = set.mode {
        // A directory's setgid bit only passes its group on to new entries: allowed.
        let privileged = libc::S_ISUID | if is_dir { 0 } else { libc::S_ISGID };
        if mode & privileged != 0 {
            return refused();
        }
    }
    if set
        .uid
        .is_some_and(|uid| uid != st.st_uid && uid != caller.uid)
    {
        return refused();
    }
    if set
        .gid
        .is_some_and(|gid| gid != st.st_gid && gid != caller.gid)
    {
        return refused();
    }
    Ok(())
}

/// Makes a new file the caller's: the agent is root, the caller is not.
fn give_to(caller: &Caller, dir: i32, name: &std::ffi::CStr, flags: i32) -> io::Result<()> {
    // SAFETY: valid descriptor and NUL-terminated name.
    sys::check(unsafe { libc::fchownat(dir, name.as_ptr(), caller.uid, caller.gid, flags) })
}

fn timespec(time: Option<SetTime>) -> libc::timespec {
    match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(SetTime::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(SetTime::At(at)) => libc::timespec {
            tv_sec: at.secs,
            tv_nsec: at.nanos as i64,
        },
    }
}

#[cfg(test)]
mod tests;
