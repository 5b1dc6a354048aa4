//! The target's files in the session: the FUSE mount of its root, and its paths over ours.
//!
//! Two steps, because the second needs the client's FUSE server and the first provides the
//! device it serves:
//!
//! 1. [`mount_root`] (during the build, before `Ready`): create the mount point on the host if
//!    it is missing (an empty directory, see [`remote_root`]; it and its parent must
//!    be real directories of this process's user, since a user's may sit in the world-writable
//!    /tmp), open `/dev/fuse` and
//!    mount it there, in the session's mount namespace only (mounts were made private
//!    before). Local paths to keep inside remote ones are cloned now (`open_tree`), before
//!    anything covers them.
//! 2. [`bind_paths`] (on `BindRemote`, once the client serves the device): bind each remote
//!    path from under the mount point over the same local path, then put the kept local
//!    paths back on top. A path missing on this machine gets a mount point in a shadow of its
//!    deepest existing directory (see [`super::shadow`]; creating it would change the host);
//!    one whose nearest existing ancestor is `/` is skipped with a warning and stays reachable
//!    under the mount point.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use super::child_messages::{RemoteFilesSpec, SetupFailure, SetupStep};

/// Where the target's whole root is mounted in every session.
pub const REMOTE_ROOT: &str = "/run/mirrord-net/root";
/// The variable that names [`REMOTE_ROOT`] to the command.
pub const REMOTE_ROOT_ENV: &str = "MIRRORD_NET_REMOTE_ROOT";

/// Where the target's root is mounted: [`REMOTE_ROOT`] for a root session; for a session
/// without root of user `uid`, `$XDG_RUNTIME_DIR/mirrord-net/root` when `runtime_dir` (that
/// variable) is an absolute path, else `/tmp/mirrord-net-UID/root`.
pub fn remote_root(rootless_uid: Option<u32>, runtime_dir: Option<&Path>) -> PathBuf {
    match (rootless_uid, runtime_dir) {
        (None, _) => PathBuf::from(REMOTE_ROOT),
        (Some(_), Some(dir)) if dir.is_absolute() => dir.join("mirrord-net/root"),
        (Some(uid), _) => PathBuf::from(format!("/tmp/mirrord-net-{uid}/root")),
    }
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Local trees to put back over remote ones, cloned in step 1 before they were covered.
pub struct KeptLocal(Vec<(PathBuf, OwnedFd)>);

fn path_of(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// Step 1: mounts `/dev/fuse` on the mount point; returns the connection for the client.
pub fn mount_root(spec: &RemoteFilesSpec) -> Result<(OwnedFd, KeptLocal), SetupFailure> {
    let mount_point = path_of(&spec.mount_point);
    let mut kept = Vec::new();
    for path in spec.keep_local.iter().map(|p| path_of(p)) {
        match clone_tree(&path) {
            Ok(tree) => kept.push((path, tree)),
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) => {
                return Err(SetupFailure::os(
                    SetupStep::RemotePath(path.display().to_string()),
                    err,
                ))
            }
        }
    }
    create_mount_point(&mount_point).map_err(|err| SetupFailure::os(SetupStep::FuseDevice, err))?;
    let device = mirrord_net_fuse_fs::mount_device(&mount_point, spec.writable).map_err(|err| {
        let errno = match &err {
            mirrord_net_fuse_fs::mount::MountError::Device(err)
            | mirrord_net_fuse_fs::mount::MountError::Mount { source: err, .. } => {
                err.raw_os_error()
            }
        };
        SetupFailure {
            step: SetupStep::FuseDevice,
            errno,
            message: err.to_string(),
        }
    })?;
    Ok((device, KeptLocal(kept)))
}

/// `mkdir -p` with mode 0755; an existing directory is fine if it and its parent are
/// directories (not symlinks) of this process's user.
fn create_mount_point(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)?;
    let uid = nix::unistd::geteuid().as_raw();
    for dir in [Some(path), path.parent()].into_iter().flatten() {
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.is_dir() || meta.uid() != uid {
            return Err(io::Error::other(format!(
                "{} is not a directory of uid {uid}; remove it",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Step 2: binds the remote paths over the local ones; returns warnings.
pub fn bind_paths(spec: &RemoteFilesSpec, kept: KeptLocal) -> Result<Vec<String>, SetupFailure> {
    let mount_point = path_of(&spec.mount_point);
    let mut warnings = Vec::new();
    make_missing_mount_points(spec, &mount_point, &mut warnings);
    for path in spec.binds.iter().map(|p| path_of(p)) {
        let relative = path.strip_prefix("/").unwrap_or(&path);
        let source = mount_point.join(relative);
        let step = || SetupStep::RemotePath(path.display().to_string());
        if std::fs::symlink_metadata(&path).is_err() {
            warnings.push(format!(
                "{} does not exist on this machine; the target's is at {}",
                path.display(),
                source.display()
            ));
            continue;
        }
        if std::fs::symlink_metadata(&source).is_err() {
            warnings.push(format!(
                "the target has no {}; the local one stays",
                path.display()
            ));
            continue;
        }
        mount(
            Some(&source),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|err| SetupFailure::os(step(), err))?;
    }
    for (path, tree) in kept.0 {
        move_tree(&tree, &path).map_err(|err| {
            SetupFailure::os(SetupStep::RemotePath(path.display().to_string()), err)
        })?;
    }
    Ok(warnings)
}

/// Gives the target's paths that this machine lacks a mount point, by shadowing their
/// deepest existing directory ([`super::shadow`]); what cannot be shadowed stays missing and
/// is reported by the binds.
fn make_missing_mount_points(
    spec: &RemoteFilesSpec,
    mount_point: &Path,
    warnings: &mut Vec<String>,
) {
    let missing: Vec<(PathBuf, bool)> = spec
        .binds
        .iter()
        .map(|p| path_of(p))
        .filter(|path| std::fs::symlink_metadata(path).is_err())
        .filter_map(|path| {
            let source = mount_point.join(path.strip_prefix("/").unwrap_or(&path));
            let is_dir = std::fs::metadata(&source).ok()?.is_dir();
            Some((path, is_dir))
        })
        .collect();
    for (dir, shadow) in super::shadow::plan(&missing) {
        if let Err(err) = super::shadow::shadow(&dir, &shadow) {
            warnings.push(format!(
                "cannot add the target's mount points to {}: {err}",
                dir.display()
            ));
        }
    }
}

/// A detached copy of the mount tree at `path` (`open_tree(OPEN_TREE_CLONE | AT_RECURSIVE)`).
fn clone_tree(path: &Path) -> io::Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain system call on a NUL-terminated path; the result is checked.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches a detached tree at `path`.
fn move_tree(tree: &OwnedFd, path: &Path) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid descriptor with an empty path (MOVE_MOUNT_F_EMPTY_PATH) and a
    // NUL-terminated target path.
    let result = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_path.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_without_root_mounts_in_a_directory_of_the_users() {
        assert_eq!(remote_root(None, None), Path::new(REMOTE_ROOT));
        assert_eq!(
            remote_root(None, Some(Path::new("/run/user/1000"))),
            Path::new(REMOTE_ROOT)
        );
        assert_eq!(
            remote_root(Some(1000), Some(Path::new("/run/user/1000"))),
            Path::new("/run/user/1000/mirrord-net/root")
        );
        assert_eq!(
            remote_root(Some(1000), Some(Path::new("relative"))),
            Path::new("/tmp/mirrord-net-1000/root")
        );
        assert_eq!(
            remote_root(Some(1000), None),
            Path::new("/tmp/mirrord-net-1000/root")
        );
    }
}
