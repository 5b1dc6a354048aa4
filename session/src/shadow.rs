//! Mount points for target paths this machine lacks, without touching the host.
//!
//! A Kubernetes target's volumes sit at paths the client's machine usually does not have
//! (`/etc/app`, `/var/run/secrets/kubernetes.io/serviceaccount`). Creating them would change
//! the host, so the session *shadows* the deepest directory that does exist (`/etc`, `/run`):
//! a fresh tmpfs that holds every entry of the original — each directory and file bound
//! recursively from it (its submounts included), each symlink copied — plus the missing
//! directories, is moved over it in the session's private mount namespace. Programs see the
//! same directory with the new mount points in it; the host sees nothing.
//!
//! What differs inside the shadowed directory: an entry created directly in it lives in the
//! session's tmpfs (entries inside its subdirectories are the host's, as before), and a
//! rename between two of its entries crosses mounts (EXDEV). `/` itself is never shadowed: a
//! mount over the root directory is invisible to processes whose root is the old one; a path
//! whose nearest existing ancestor is `/` stays reachable under the remote root only.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// What to create in the shadow of one existing directory.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shadow {
    /// Relative paths of the missing mount points, and whether each is a directory.
    pub missing: Vec<(PathBuf, bool)>,
}

/// Splits `path` into its deepest existing ancestor (symlinks resolved) and the missing rest.
/// `None` when nothing is missing, or when the ancestor cannot be shadowed (it is `/`, or a
/// dangling symlink is in the way).
pub fn existing_ancestor(path: &Path) -> Option<(PathBuf, PathBuf)> {
    if fs::symlink_metadata(path).is_ok() {
        return None;
    }
    let mut ancestor = path.parent()?;
    loop {
        if fs::symlink_metadata(ancestor).is_ok() {
            let real = fs::canonicalize(ancestor).ok()?;
            if real == Path::new("/") || !real.is_dir() {
                return None;
            }
            let rest = path.strip_prefix(ancestor).ok()?.to_path_buf();
            return Some((real, rest));
        }
        ancestor = ancestor.parent()?;
    }
}

/// Groups the missing mount points by the directory to shadow.
pub fn plan(paths: &[(PathBuf, bool)]) -> BTreeMap<PathBuf, Shadow> {
    let mut shadows: BTreeMap<PathBuf, Shadow> = BTreeMap::new();
    for (path, is_dir) in paths {
        if let Some((ancestor, rest)) = existing_ancestor(path) {
            shadows
                .entry(ancestor)
                .or_default()
                .missing
                .push((rest, *is_dir));
        }
    }
    shadows
}

/// Moves a shadow of `dir` with the `shadow.missing` entries over `dir`.
pub fn shadow(dir: &Path, shadow: &Shadow) -> io::Result<()> {
    // The tmpfs is filled on a scratch directory, one that neither contains nor lies inside
    // the shadowed directory.
    let scratch = super::mounts::SCRATCH_CANDIDATES
        .iter()
        .map(Path::new)
        .find(|candidate| {
            candidate.is_dir() && !dir.starts_with(candidate) && !candidate.starts_with(dir)
        })
        .ok_or_else(|| io::Error::other("no scratch directory for the shadow mount"))?;
    let meta = fs::metadata(dir)?;
    let mode = format!("mode={:o}", meta.permissions().mode() & 0o7777);
    let mount_tmpfs = |options: &str| {
        mount(
            Some("mirrord-net-shadow"),
            scratch,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(options),
        )
    };
    // The tmpfs takes the directory's mode and owner. In a user namespace, ids that are not
    // mapped cannot be given: then the tmpfs keeps the caller's.
    mount_tmpfs(&format!("{mode},uid={},gid={}", meta.uid(), meta.gid()))
        .or_else(|_| mount_tmpfs(&mode))?;
    let filled = fill(dir, scratch, shadow);
    let moved = filled.and_then(|()| {
        mount(
            Some(scratch),
            dir,
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(io::Error::from)
    });
    if moved.is_err() {
        let _ = nix::mount::umount2(scratch, nix::mount::MntFlags::MNT_DETACH);
    }
    moved
}

/// Puts every entry of `dir` into `scratch` (binds and symlink copies), then the missing ones.
fn fill(dir: &Path, scratch: &Path, shadow: &Shadow) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let from = entry.path();
        let to = scratch.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
            continue;
        }
        if kind.is_dir() {
            fs::create_dir(&to)?;
        } else {
            fs::File::create(&to)?;
        }
        mount(
            Some(&from),
            &to,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )?;
    }
    for (rest, is_dir) in &shadow.missing {
        let path = scratch.join(rest);
        let parent = if *is_dir {
            Some(path.as_path())
        } else {
            path.parent()
        };
        if let Some(parent) = parent {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        if !is_dir {
            fs::File::create(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deepest_existing_directory_is_shadowed() {
        let base = std::env::temp_dir().join(format!("shadow-test-{}", std::process::id()));
        fs::create_dir_all(base.join("a")).unwrap();
        std::os::unix::fs::symlink("a", base.join("link")).unwrap();
        let real = fs::canonicalize(&base).unwrap();

        assert_eq!(existing_ancestor(&base.join("a")), None, "exists");
        assert_eq!(
            existing_ancestor(&base.join("a/b/c")),
            Some((real.join("a"), PathBuf::from("b/c")))
        );
        // Through a symlink, the real directory is shadowed.
        assert_eq!(
            existing_ancestor(&base.join("link/x")),
            Some((real.join("a"), PathBuf::from("x")))
        );
        assert_eq!(
            existing_ancestor(Path::new("/no-such-top-level-dir/x")),
            None
        );

        let plan = plan(&[
            (base.join("a/b"), true),
            (base.join("a/f"), false),
            (base.join("new/d"), true),
        ]);
        assert_eq!(
            plan[&real.join("a")].missing,
            [(PathBuf::from("b"), true), (PathBuf::from("f"), false)]
        );
        assert_eq!(plan[&real].missing, [(PathBuf::from("new/d"), true)]);
        fs::remove_dir_all(&base).unwrap();
    }
}
