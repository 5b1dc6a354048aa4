//! The session's view of files: the target's resolv.conf and hosts in place of the host's.
//!
//! Runs in the child, in its new mount namespace. First every mount is made private
//! (`MS_REC | MS_PRIVATE` on `/`): a new mount namespace copies the host's propagation, and on
//! a systemd machine `/` is shared, so without this a mount made here would appear on the
//! host.
//!
//! A file can only be bind-mounted from a mount in the same namespace, so the contents are
//! written to a small tmpfs mounted on a scratch directory (the first of `/tmp`, `/run`,
//! `/mnt`, `/var/tmp`, `/dev` that exists — it only has to exist: the tmpfs hides it for a
//! few system calls and is then lazily unmounted). Each file is bound over its target; the
//! binds keep the tmpfs alive after the detach, and nothing remains mounted on the scratch
//! directory. Nothing is written to any host file system.
//!
//! Targets are opened (`O_PATH | O_NOFOLLOW`) before the scratch tmpfs is mounted, since it may
//! hide some of them (a target under /tmp or /run), and mounted on through those descriptors,
//! as they are, without following a final symlink: `/etc/resolv.conf`
//! is often a symlink to systemd-resolved's file, possibly dangling (resolved not running).
//! `open_tree(OPEN_TREE_CLONE)` + `move_mount` without `MOVE_MOUNT_T_SYMLINKS` puts the file
//! on top of the symlink itself, so reads of `/etc/resolv.conf` see the target's contents and
//! the symlink's own target is left alone, whether it exists or not. Kernels without the new
//! mount API (before 5.2) get a classic `MS_BIND` through `/proc/self/fd/N`. A target that does not exist at all is skipped with a warning:
//! creating it would change the host.

use std::ffi::{CString, OsStr};
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::child_messages::{FileOverlay, SetupFailure, SetupStep};

/// `open_tree` and `move_mount` flags (linux/mount.h), which the libc crate has for Android
/// only.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// Directories that may host a scratch tmpfs, in order of preference (also used by
/// [`super::shadow`]).
pub(super) const SCRATCH_CANDIDATES: &[&str] = &["/tmp", "/run", "/mnt", "/var/tmp", "/dev"];

/// Stops mounts made in this namespace from reaching the host (and the host's from reaching
/// the session).
pub fn make_private() -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

/// Shows each overlay's contents at its target.
pub fn overlay_files(
    files: &[FileOverlay],
    warnings: &mut Vec<String>,
) -> Result<(), SetupFailure> {
    // Every target is opened (O_PATH, not following a final symlink) before the scratch tmpfs
    // goes up: the tmpfs may hide a target, e.g. one under /tmp or /run.
    let mut targets = Vec::new();
    for file in files {
        let target = Path::new(OsStr::from_bytes(&file.target));
        match open_target(target) {
            Ok(fd) => targets.push((file, target, fd)),
            Err(Errno::ENOENT) => warnings.push(format!(
                "{} does not exist on this machine; the session cannot show the target's",
                target.display()
            )),
            Err(err) => return Err(SetupFailure::os(step(target), err)),
        }
    }
    if targets.is_empty() {
        return Ok(());
    }

    let scratch = scratch_dir()?;
    mount(
        Some("mirrord-net"),
        scratch,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755"),
    )
    .map_err(|err| SetupFailure::os(SetupStep::ScratchMount, err))?;
    let scratch = Scratch(scratch);

    for (index, (file, target, fd)) in targets.iter().enumerate() {
        let source = scratch.0.join(format!("file-{index}"));
        write_new(&source, &file.contents).map_err(|err| SetupFailure::os(step(target), err))?;
        bind_over(&source, fd).map_err(|err| SetupFailure::os(step(target), err))?;
    }
    scratch
        .detach()
        .map_err(|err| SetupFailure::os(SetupStep::ScratchMount, err))
}

/// A directory to mount a scratch file system on for a few system calls.
pub(super) fn scratch_dir() -> Result<&'static Path, SetupFailure> {
    SCRATCH_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|dir| dir.is_dir())
        .ok_or_else(|| {
            SetupFailure::other(
                SetupStep::ScratchMount,
                format!("none of {} is a directory", SCRATCH_CANDIDATES.join(", ")),
            )
        })
}

fn step(target: &Path) -> SetupStep {
    SetupStep::File(target.display().to_string())
}

/// A handle on the target path itself (the symlink, if it is one).
fn open_target(target: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        target,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// A scratch mount; detached however the work on it ends.
pub(super) struct Scratch<'a>(pub(super) &'a Path);

impl Scratch<'_> {
    pub(super) fn detach(self) -> nix::Result<()> {
        let result = umount2(self.0, MntFlags::MNT_DETACH);
        std::mem::forget(self);
        result
    }
}

impl Drop for Scratch<'_> {
    fn drop(&mut self) {
        let _ = umount2(self.0, MntFlags::MNT_DETACH);
    }
}

fn write_new(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)?;
    file.write_all(contents)
}

/// Mounts the file or directory `source` on `target` (an `O_PATH` descriptor), on top of
/// whatever `target` is, a symlink included.
pub(super) fn bind_over(source: &Path, target: &OwnedFd) -> io::Result<()> {
    match clone_and_move(source, target) {
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => mount(
            Some(source),
            format!("/proc/self/fd/{}", target.as_raw_fd()).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(io::Error::from),
        other => other,
    }
}

fn clone_and_move(source: &Path, target: &OwnedFd) -> io::Result<()> {
    let source = c_path(source)?;
    // SAFETY: plain system call on a valid NUL-terminated path; the result is checked.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC,
        )
    };
    if tree < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as libc::c_int) };
    // SAFETY: as above; the empty paths with the EMPTY_PATH flags name the descriptors
    // themselves.
    let moved = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    Errno::result(moved).map(drop).map_err(io::Error::from)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}
