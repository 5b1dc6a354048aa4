//! Where a user's background sessions are found: one directory per user, mode 0700, holding
//! each session's control socket (`NAME.sock`) and its holder's log (`NAME.log`).
//!
//! The directory is `$XDG_RUNTIME_DIR`-like: `/run/user/UID/mirrord-net` where systemd made
//! `/run/user/UID` for the user, else `/tmp/mirrord-net-UID`; `MIRRORD_NET_RUNTIME_DIR`
//! names another. Under sudo the user is `$SUDO_UID`: a root session belongs to the person
//! who typed the command, and the directory and socket are theirs. A directory that exists
//! but is not the user's own, or is open to others, is refused rather than used: the socket
//! in it is the session's door.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Names another directory for the sessions (tests, unusual machines).
pub const DIR_ENV: &str = "MIRRORD_NET_RUNTIME_DIR";

/// The user sessions started now belong to, and their primary group: `$SUDO_UID`/`$SUDO_GID`
/// under sudo, else the real ids.
pub fn owner() -> (u32, u32) {
    match mirrord_net_session::invoking_user() {
        Some(user) => (user.uid, user.gid),
        None => (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        ),
    }
}

/// The sessions directory of `uid` (which may not exist).
pub fn path(uid: u32) -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV).filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir);
    }
    let run_user = PathBuf::from(format!("/run/user/{uid}"));
    match std::fs::metadata(&run_user) {
        Ok(meta) if meta.is_dir() && meta.uid() == uid => run_user.join("mirrord-net"),
        _ => PathBuf::from(format!("/tmp/mirrord-net-{uid}")),
    }
}

/// The control socket of session `name`.
pub fn socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// The holder's log of session `name`.
pub fn log(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Makes (or checks) the sessions directory of `uid`/`gid`: a directory, the user's, 0700.
pub fn ensure(uid: u32, gid: u32) -> io::Result<PathBuf> {
    let dir = path(uid);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {
            if nix::unistd::geteuid().as_raw() != uid {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
            }
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => {
            return Err(io::Error::new(
                err.kind(),
                format!("cannot create {}: {err}", dir.display()),
            ))
        }
    }
    check(&dir, uid)?;
    Ok(dir)
}

/// A sessions directory is used only if it is a real directory of `uid` closed to others.
fn check(dir: &Path, uid: u32) -> io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of uid {uid} closed to others (mode 0700): remove it, or name another with {DIR_ENV}",
                dir.display()
            ),
        ));
    }
    Ok(())
}
