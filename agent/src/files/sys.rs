//! The system calls of the file server, each wrapped once: descriptors in, `io::Result` out.
//!
//! Nodes are `O_PATH` descriptors. A name is only ever resolved one component at a time,
//! relative to its parent's descriptor, with `openat2(RESOLVE_BENEATH)` and without following
//! a final symlink: `..`, absolute names and symlinks can never lead outside the target's
//! root. Symlinks are given to the kernel as symlinks (`readlink`), and the kernel resolves
//! them inside the mount, so absolute ones stay inside the remote root too.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use mirrord_net_protocol::fs::{Attr, StatFs, Timestamp};

/// A single path component: not empty, no `/`, not `.` or `..`, no NUL.
pub fn component(name: &[u8]) -> io::Result<CString> {
    if name.is_empty() || name.len() > 255 {
        return Err(io::Error::from_raw_os_error(if name.is_empty() {
            libc::ENOENT
        } else {
            libc::ENAMETOOLONG
        }));
    }
    if name == b"." || name == b".." || name.contains(&b'/') {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(result: libc::c_long) -> io::Result<libc::c_long> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

/// `openat2(dir, name, flags, RESOLVE_BENEATH)`.
pub fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &CString,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH;
    // SAFETY: a valid dirfd, a NUL-terminated name and an open_how of the size passed.
    let fd = cvt(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The node's `O_PATH` descriptor for `name` in `dir`, not following a final symlink.
pub fn open_node(dir: BorrowedFd<'_>, name: &CString) -> io::Result<OwnedFd> {
    open_beneath(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
}

/// Opens the file behind an `O_PATH` descriptor for I/O (through its `/proc/self/fd` link).
pub fn reopen(node: BorrowedFd<'_>, flags: i32) -> io::Result<OwnedFd> {
    let path = proc_path(node);
    // SAFETY: NUL-terminated path; the result is checked.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) } as libc::c_long)?;
    // SAFETY: the kernel just returned this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `/proc/self/fd/N`, which names the file itself, for calls that have no `f*` form taking
/// an `O_PATH` descriptor.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// `fstat` of any descriptor, `O_PATH` included, as the protocol's [`Attr`].
pub fn stat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, empty path with AT_EMPTY_PATH, and a stat buffer to fill.
    cvt(unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    } as libc::c_long)?;
    Ok(st)
}

/// The protocol's attributes of a `stat`, under node id `node`.
pub fn attr_of(node: u64, st: &libc::stat) -> Attr {
    Attr {
        node,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: Timestamp {
            secs: st.st_atime,
            nanos: st.st_atime_nsec as u32,
        },
        mtime: Timestamp {
            secs: st.st_mtime,
            nanos: st.st_mtime_nsec as u32,
        },
        ctime: Timestamp {
            secs: st.st_ctime,
            nanos: st.st_ctime_nsec as u32,
        },
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
    }
}

pub fn readlink(node: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: valid descriptor, empty path (the link itself), a buffer of the length passed.
    let n = cvt(unsafe {
        libc::readlinkat(
            node.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    } as libc::c_long)?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// Reads up to `size` bytes at `offset`; fewer only at end of file.
pub fn pread_full(fd: BorrowedFd<'_>, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size as usize);
    while buf.len() < size as usize {
        let spare = buf.spare_capacity_mut();
        // SAFETY: reads into the uninitialised spare capacity, whose length is passed.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                (offset + buf.len() as u64) as libc::off_t,
            )
        };
        match n {
            0 => break,
            n if n > 0 => unsafe { buf.set_len(buf.len() + n as usize) },
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(buf)
}

pub fn pwrite_all(fd: BorrowedFd<'_>, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut done = 0;
    while done < data.len() {
        // SAFETY: writes from a valid slice of the length passed.
        let n = unsafe {
            libc::pwrite(
                fd.as_raw_fd(),
                data[done..].as_ptr().cast(),
                data.len() - done,
                (offset + done as u64) as libc::off_t,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        } else {
            done += n as usize;
        }
    }
    Ok(())
}

/// One raw directory entry.
pub struct RawEntry {
    pub name: Vec<u8>,
    /// `d_off`: where a listing continues after this entry.
    pub next_offset: u64,
    pub d_type: u8,
}

/// Up to `max` entries of the directory behind `node`, from cookie `offset`.
///
/// Stateless: the directory is opened, positioned at the cookie (`d_off` of the previous
/// entry) and read, so the agent keeps nothing between listings.
pub fn list_dir(node: BorrowedFd<'_>, offset: u64, max: usize) -> io::Result<Vec<RawEntry>> {
    use std::os::fd::AsFd;
    let dir = open_beneath(
        node,
        &CString::new(".").expect("no NUL"),
        libc::O_RDONLY | libc::O_DIRECTORY,
        0,
    )?;
    if offset != 0 {
        // SAFETY: valid descriptor; a d_off cookie is a valid position for lseek on a dir.
        cvt(unsafe {
            libc::lseek(
                dir.as_fd().as_raw_fd(),
                offset as libc::off_t,
                libc::SEEK_SET,
            )
        } as libc::c_long)?;
    }
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    'outer: while entries.len() < max {
        // SAFETY: fills the buffer of the length passed with linux_dirent64 records.
        let n = cvt(unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        })? as usize;
        if n == 0 {
            break;
        }
        let mut at = 0;
        while at < n {
            // linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name NUL-terminated.
            let rec = &buf[at..n];
            let d_off = i64::from_ne_bytes(rec[8..16].try_into().expect("8 bytes")) as u64;
            let reclen = u16::from_ne_bytes(rec[16..18].try_into().expect("2 bytes")) as usize;
            let d_type = rec[18];
            let name_field = &rec[19..reclen];
            let name_len = name_field
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(name_field.len());
            entries.push(RawEntry {
                name: name_field[..name_len].to_vec(),
                next_offset: d_off,
                d_type,
            });
            at += reclen;
            if entries.len() >= max {
                break 'outer;
            }
        }
    }
    Ok(entries)
}

/// `S_IFMT` bits of a `d_type`.
pub fn kind_of_dtype(d_type: u8) -> u32 {
    match d_type {
        libc::DT_DIR => libc::S_IFDIR,
        libc::DT_LNK => libc::S_IFLNK,
        libc::DT_CHR => libc::S_IFCHR,
        libc::DT_BLK => libc::S_IFBLK,
        libc::DT_FIFO => libc::S_IFIFO,
        libc::DT_SOCK => libc::S_IFSOCK,
        _ => libc::S_IFREG,
    }
}

pub fn statfs(node: BorrowedFd<'_>) -> io::Result<StatFs> {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a buffer to fill.
    cvt(unsafe { libc::fstatvfs(node.as_raw_fd(), &mut st) } as libc::c_long)?;
    Ok(StatFs {
        blocks: st.f_blocks,
        bfree: st.f_bfree,
        bavail: st.f_bavail,
        files: st.f_files,
        ffree: st.f_ffree,
        bsize: st.f_bsize as u32,
        namelen: st.f_namemax as u32,
        frsize: st.f_frsize as u32,
    })
}

/// The type of the file system a node is on (`f_type` of `fstatfs`, e.g. procfs's magic).
pub fn fs_type(node: BorrowedFd<'_>) -> io::Result<i64> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor (O_PATH works) and a buffer to fill.
    cvt(unsafe { libc::fstatfs(node.as_raw_fd(), &mut st) } as libc::c_long)?;
    Ok(st.f_type as i64)
}

/// Runs a `*at` call that returns 0 or -1.
pub fn check(result: libc::c_int) -> io::Result<()> {
    cvt(result as libc::c_long).map(drop)
}
