//! The `fuser::Filesystem`: each kernel request is answered from a tokio task.
//!
//! fuser reads a request from `/dev/fuse` and calls a method here on its own thread; the
//! method moves the reply object into a task on the session's runtime and returns at once,
//! so the reading thread is free for the next request and any number are in flight (a slow
//! read of one file never holds up a `stat` of another). The task asks the agent
//! ([`Remote`]) and answers the kernel.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use mirrord_net_protocol::fs::{Attr, Caller, SetAttr, SetTime, StatFs, Timestamp, MAX_IO};
use tokio::runtime::Handle;

use crate::ops::{self, Remote};
use crate::transport::Transport;

/// The session's file system.
pub struct RemoteFs<T> {
    remote: Arc<Remote<T>>,
    runtime: Handle,
    ttl: Duration,
}

impl<T: Transport> RemoteFs<T> {
    /// Answers from tasks on `runtime`; attributes and entries stay valid in the kernel for
    /// `ttl`, so a change on the target is seen within that long.
    pub fn new(transport: T, runtime: Handle, ttl: Duration) -> Self {
        let remote = Arc::new(Remote::new(transport, ttl));
        runtime.spawn(expire_listings(Arc::downgrade(&remote), ttl));
        RemoteFs {
            remote,
            runtime,
            ttl,
        }
    }

    /// Runs `work` against the agent on the runtime.
    fn spawn<F, Fut>(&self, work: F)
    where
        F: FnOnce(Arc<Remote<T>>, Duration) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.runtime.spawn(work(self.remote.clone(), self.ttl));
    }

    /// Answers `reply` on the runtime with what `call` gets from the agent: its value, or
    /// the errno the agent answered.
    fn answer<V, R, F, Fut>(&self, reply: R, call: F)
    where
        R: Answer<V>,
        F: FnOnce(Arc<Remote<T>>) -> Fut,
        Fut: std::future::Future<Output = Result<V, i32>> + Send + 'static,
    {
        let ttl = self.ttl;
        let result = call(self.remote.clone());
        self.runtime.spawn(async move {
            match result.await {
                Ok(value) => reply.value(value, &ttl),
                Err(errno) => reply.errno(Errno::from_i32(errno)),
            }
        });
    }
}

/// A kernel reply that takes the result of one call to the agent. fuser has a reply type
/// per kind of answer; each says here how a value becomes its answer (`ttl`: how long the
/// kernel may keep attributes and entries).
trait Answer<V>: Send + 'static {
    fn value(self, value: V, ttl: &Duration);
    fn errno(self, errno: Errno);
}

macro_rules! answer_errno {
    () => {
        fn errno(self, errno: Errno) {
            self.error(errno);
        }
    };
}

impl Answer<Attr> for ReplyEntry {
    fn value(self, attr: Attr, ttl: &Duration) {
        self.entry(ttl, &file_attr(&attr), Generation(0));
    }
    answer_errno!();
}

impl Answer<Attr> for ReplyAttr {
    fn value(self, attr: Attr, ttl: &Duration) {
        self.attr(ttl, &file_attr(&attr));
    }
    answer_errno!();
}

impl Answer<Vec<u8>> for ReplyData {
    fn value(self, data: Vec<u8>, _ttl: &Duration) {
        self.data(&data);
    }
    answer_errno!();
}

impl Answer<()> for ReplyEmpty {
    fn value(self, (): (), _ttl: &Duration) {
        self.ok();
    }
    answer_errno!();
}

impl Answer<ops::Opened> for ReplyOpen {
    fn value(self, opened: ops::Opened, _ttl: &Duration) {
        self.opened(FileHandle(opened.handle), open_flags(&opened));
    }
    answer_errno!();
}

impl Answer<ops::Opened> for ReplyCreate {
    fn value(self, opened: ops::Opened, ttl: &Duration) {
        self.created(
            ttl,
            &file_attr(&opened.attr),
            Generation(0),
            FileHandle(opened.handle),
            FopenFlags::empty(),
        );
    }
    answer_errno!();
}

impl Answer<u32> for ReplyWrite {
    fn value(self, written: u32, _ttl: &Duration) {
        self.written(written);
    }
    answer_errno!();
}

impl Answer<StatFs> for ReplyStatfs {
    fn value(self, s: StatFs, _ttl: &Duration) {
        self.statfs(
            s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, s.namelen, s.frsize,
        );
    }
    answer_errno!();
}

/// Drops cached listings as they pass the TTL, so that the nodes only they hold go back to
/// the agent even when no one lists a directory again; ends with the file system.
async fn expire_listings<T: Transport>(remote: Weak<Remote<T>>, ttl: Duration) {
    let mut ticks = tokio::time::interval(ttl.max(Duration::from_millis(100)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(remote) = remote.upgrade() else {
            return;
        };
        remote.expire_listings().await;
    }
}

/// The kernel's attributes of the agent's.
pub fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.node),
        size: attr.size,
        blocks: attr.blocks,
        atime: system_time(attr.atime),
        mtime: system_time(attr.mtime),
        ctime: system_time(attr.ctime),
        crtime: system_time(attr.ctime),
        kind: file_type(attr.mode),
        perm: (attr.mode & 0o7777) as u16,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: attr.blksize,
        flags: 0,
    }
}

pub fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn system_time(at: Timestamp) -> SystemTime {
    if at.secs >= 0 {
        UNIX_EPOCH + Duration::new(at.secs as u64, at.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(at.secs.unsigned_abs())
            + Duration::from_nanos(at.nanos.into())
    }
}

fn timestamp(time: SystemTime) -> Timestamp {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => Timestamp {
            secs: after.as_secs() as i64,
            nanos: after.subsec_nanos(),
        },
        Err(before) => {
            let before = before.duration();
            Timestamp {
                secs: -(before.as_secs() as i64) - i64::from(before.subsec_nanos() > 0),
                nanos: (1_000_000_000 - before.subsec_nanos()) % 1_000_000_000,
            }
        }
    }
}

fn set_time(time: Option<TimeOrNow>) -> Option<SetTime> {
    time.map(|time| match time {
        TimeOrNow::Now => SetTime::Now,
        TimeOrNow::SpecificTime(at) => SetTime::At(timestamp(at)),
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

fn open_flags(opened: &ops::Opened) -> FopenFlags {
    if opened.keep_cache {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    }
}

fn name_bytes(name: &OsStr) -> Vec<u8> {
    name.as_bytes().to_vec()
}

impl<T: Transport> Filesystem for RemoteFs<T> {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability only if the kernel has it; none is needed for correctness.
        for wanted in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_MAX_PAGES,
        ] {
            let _ = config.add_capabilities(wanted);
        }
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = name_bytes(name);
        self.answer(reply, move |remote| async move {
            remote.lookup(parent.0, &name).await
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.spawn(|remote, _| async move { remote.forget(&[(ino.0, nlookup)]).await });
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.answer(
            reply,
            move |remote| async move { remote.getattr(ino.0).await },
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: set_time(atime),
            mtime: set_time(mtime),
        };
        let caller = caller(req);
        self.answer(reply, move |remote| async move {
            remote.setattr(ino.0, fh.map(|fh| fh.0), set, caller).await
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.answer(
            reply,
            move |remote| async move { remote.readlink(ino.0).await },
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let (name, caller) = (name_bytes(name), caller(req));
        self.answer(reply, move |remote| async move {
            remote.mkdir(parent.0, &name, mode, caller).await
        });
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.answer(reply, move |remote| async move {
            remote.unlink(parent.0, &name).await
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = name_bytes(name);
        self.answer(reply, move |remote| async move {
            remote.rmdir(parent.0, &name).await
        });
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, caller) = (name_bytes(link_name), caller(req));
        let target = target.as_os_str().as_bytes().to_vec();
        self.answer(reply, move |remote| async move {
            remote.symlink(parent.0, &name, &target, caller).await
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let (name, newname) = (name_bytes(name), name_bytes(newname));
        self.answer(reply, move |remote| async move {
            remote
                .rename(parent.0, &name, newparent.0, &newname, flags.bits())
                .await
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.answer(reply, move |remote| async move {
            remote.open(ino.0, flags.0).await
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.answer(reply, move |remote| async move {
            remote.read(fh.0, offset, size).await
        });
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = data.to_vec();
        self.answer(reply, move |remote| async move {
            remote.write(ino.0, fh.0, offset, data).await
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes are sent as they happen; nothing is buffered here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
        self.spawn(|remote, _| async move { remote.release(fh.0).await });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.answer(reply, move |remote| async move {
            remote.fsync(fh.0, datasync).await
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        self.spawn(|remote, _| async move {
            let filled = remote
                .readdir_names(ino.0, offset, |entry| {
                    reply.add(
                        INodeNo(entry.attr.map_or(ino.0, |attr| attr.node)),
                        entry.next_offset,
                        file_type(entry.kind),
                        OsStr::from_bytes(&entry.name),
                    )
                })
                .await;
            match filled {
                Ok(()) => reply.ok(),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        self.spawn(|remote, ttl| async move {
            let filled = remote
                .readdirplus(ino.0, offset, |entry| {
                    // `.` and `..` carry no attributes; the kernel ignores them for those.
                    let attr = entry.attr.unwrap_or(Attr {
                        node: ino.0,
                        mode: entry.kind,
                        ..Attr::default()
                    });
                    reply.add(
                        INodeNo(attr.node),
                        entry.next_offset,
                        OsStr::from_bytes(&entry.name),
                        &ttl,
                        &file_attr(&attr),
                        Generation(0),
                    )
                })
                .await;
            match filled {
                Ok(()) => reply.ok(),
                Err(errno) => reply.error(Errno::from_i32(errno)),
            }
        });
    }

    // Extended attributes are not carried: ENOSYS tells the kernel once, and it answers
    // EOPNOTSUPP itself from then on, without a round trip.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn statfs(&self, _req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        self.answer(
            reply,
            move |remote| async move { remote.statfs(ino.0).await },
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (name, caller) = (name_bytes(name), caller(req));
        self.answer(reply, move |remote| async move {
            remote.create(parent.0, &name, mode, flags, caller).await
        });
    }
}
