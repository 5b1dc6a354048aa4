//! Which of the target's paths the session shows from the target, and where its whole root is.
//!
//! The target's whole root is mounted (FUSE, served by the agent) at
//! [`REMOTE_ROOT`](mirrord_net_session::REMOTE_ROOT) in the session's mount namespace and named
//! in `$MIRRORD_NET_REMOTE_ROOT`. On top of that, some
//! remote paths are bind-mounted over the local ones, so programs find them where their code
//! expects them:
//!
//! - every mount the target has and the host does not: a line of the target's
//!   `/proc/PID/mountinfo` with no line in the host's `/proc/self/mountinfo` of the same mount
//!   point, file system type, source and root. A target in its own mount namespace starts
//!   with copies of the host's mounts, which match and stay local; what it mounted since (its
//!   secrets, config maps, volumes) does not match, and is shown from the target;
//! - plus each `--fs-remote PATH`;
//! - minus each `--fs-local PATH` (and everything under it); a local path *inside* a remote
//!   one is put back over it.
//!
//! Never from the target: `/` itself (the user's tools, home and compilers stay local — the
//! whole remote root is under `$MIRRORD_NET_REMOTE_ROOT`), the kernel's and device file
//! systems (`/proc`, `/sys`, `/dev` and everything under them: the session has its own PID
//! namespace and devices), `/etc/resolv.conf` and `/etc/hosts` (the session already shows the
//! target's), and the remote root's own directory. A path under another chosen path is
//! dropped: the target's submounts appear through the parent's bind, since the agent crosses
//! the target's mounts.
//!
//! The mount point is a fixed directory, created once on the host (`mkdir -p`, mode 0755, left
//! empty). Every session mounts on it in its own mount namespace, so sessions never see each
//! other's mount, and nothing is mounted on it in the host's: a SIGKILL leaves only this empty
//! directory, on `/run`, a tmpfs that is gone at reboot. A session without root cannot create
//! `/run/mirrord-net`: it uses a directory of the user's own
//! ([`remote_root`](mirrord_net_session::remote_root)), in
//! `$XDG_RUNTIME_DIR` (also a tmpfs, the user's) or else in `/tmp`.

use std::path::{Component, Path, PathBuf};

/// Path prefixes never shown from the target.
const NEVER_REMOTE: &[&str] = &["/proc", "/sys", "/dev", "/run/mirrord-net"];
/// Single paths never shown from the target (the session shows the target's already).
const SHOWN_ALREADY: &[&str] = &["/etc/resolv.conf", "/etc/hosts"];

/// `--fs-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FsMode {
    /// The target's files, read only: changes fail with EROFS.
    #[default]
    Read,
    /// Changes go to the target.
    Write,
    /// No remote files at all.
    Off,
}

impl FsMode {
    /// The agent's `--fs-mode` value.
    pub fn as_arg(self) -> &'static str {
        match self {
            FsMode::Read => "read",
            FsMode::Write => "write",
            FsMode::Off => "off",
        }
    }
}

// The target's mount table arrives from the agent: its parser is the wire crate's.
pub use mirrord_net_protocol::mountinfo::{parse_mountinfo, MountLine};

/// What the session shows from the target, and what it keeps local inside that.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemotePaths {
    /// Bound from the remote root over the local path, in this order.
    pub remote: Vec<PathBuf>,
    /// Local paths inside a remote one, put back over it after the binds.
    pub keep_local: Vec<PathBuf>,
}

/// Chooses the paths: the target's own mounts, plus `extra_remote`, minus `local`, never
/// anything under `remote_root` (the mount point itself).
pub fn choose(
    target: &[MountLine],
    host: &[MountLine],
    extra_remote: &[PathBuf],
    local: &[PathBuf],
    remote_root: &Path,
) -> RemotePaths {
    // A namespace handle bound to a file (`ip netns add`, a runtime's pinned namespaces) is no
    // tree to show; and one the host removed a moment ago looks like the target's own.
    let target_only = target
        .iter()
        .filter(|line| line.fs_type != "nsfs" && !host.contains(line))
        .map(|line| line.mount_point.clone());
    let mut candidates: Vec<PathBuf> = target_only
        .chain(extra_remote.iter().map(|path| normalize(path)))
        .filter(|path| {
            path.is_absolute()
                && path != Path::new("/")
                && !NEVER_REMOTE.iter().any(|prefix| path.starts_with(prefix))
                && !path.starts_with(remote_root)
                && !SHOWN_ALREADY.iter().any(|shown| path == Path::new(shown))
                && !local.iter().any(|keep| path.starts_with(normalize(keep)))
        })
        .collect();
    candidates.sort();
    candidates.dedup();
    // Parents first after sorting; a path under a chosen one comes through its bind.
    let mut remote: Vec<PathBuf> = Vec::new();
    for path in candidates {
        if !remote.iter().any(|chosen| path.starts_with(chosen)) {
            remote.push(path);
        }
    }
    let keep_local = local
        .iter()
        .map(|path| normalize(path))
        .filter(|path| {
            remote
                .iter()
                .any(|chosen| path.starts_with(chosen) && path != chosen)
        })
        .collect();
    RemotePaths { remote, keep_local }
}

/// Removes `.` and trailing slashes; `..` is kept as the user wrote it (it is rejected later
/// by the existence check rather than guessed at here).
fn normalize(path: &Path) -> PathBuf {
    path.components()
        .filter(|component| !matches!(component, Component::CurDir))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_net_session::REMOTE_ROOT;

    const HOST: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw shared:2 - proc proc rw
24 22 0:6 / /run rw shared:3 - tmpfs tmpfs rw
25 22 0:7 / /dev rw shared:4 - devtmpfs udev rw";

    fn lines(text: &str) -> Vec<MountLine> {
        parse_mountinfo(text)
    }

    #[test]
    fn mountinfo_fields_are_read_and_unescaped() {
        let parsed = lines("36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue");
        assert_eq!(
            parsed,
            vec![MountLine {
                mount_point: PathBuf::from("/mnt/my dir"),
                root: "/mnt1".into(),
                fs_type: "ext3".into(),
                source: "/dev/root".into(),
            }]
        );
        assert!(lines("garbage line").is_empty());
    }

    #[test]
    fn only_the_targets_own_mounts_are_remote() {
        let target = format!(
            "{HOST}\n\
             40 22 0:50 / /srv/secrets rw - tmpfs tmpfs rw,size=1024k\n\
             41 22 0:51 / /proc/sys ro - proc proc ro\n\
             42 22 0:52 / /etc/resolv.conf rw - ext4 /dev/sda1 rw\n\
             43 40 0:53 / /srv/secrets/nested rw - tmpfs tmpfs rw\n\
             44 22 0:54 / / rw - overlay overlay rw\n\
             45 24 0:4 net:[4026532301] /run/netns/other-pod rw shared:3 - nsfs nsfs rw"
        );
        let chosen = choose(
            &lines(&target),
            &lines(HOST),
            &[],
            &[],
            Path::new(REMOTE_ROOT),
        );
        assert_eq!(chosen.remote, vec![PathBuf::from("/srv/secrets")]);
        assert!(chosen.keep_local.is_empty());
    }

    #[test]
    fn a_mount_at_the_same_place_but_another_source_is_the_targets() {
        let target = HOST.replace(
            "0:6 / /run rw shared:3 - tmpfs tmpfs",
            "0:60 / /run rw - tmpfs pod-run",
        );
        let chosen = choose(
            &lines(&target),
            &lines(HOST),
            &[],
            &[],
            Path::new(REMOTE_ROOT),
        );
        assert_eq!(chosen.remote, vec![PathBuf::from("/run")]);
    }

    #[test]
    fn the_mount_point_is_never_bound_from_the_target() {
        let root = Path::new("/tmp/mirrord-net-1000/root");
        let chosen = choose(
            &lines(HOST),
            &lines(HOST),
            &[
                PathBuf::from("/tmp/mirrord-net-1000/root/etc"),
                PathBuf::from("/srv"),
            ],
            &[],
            root,
        );
        assert_eq!(chosen.remote, vec![PathBuf::from("/srv")]);
    }

    #[test]
    fn flags_add_and_remove_paths() {
        let target = format!("{HOST}\n40 22 0:50 / /srv/secrets rw - tmpfs tmpfs rw");
        let chosen = choose(
            &lines(&target),
            &lines(HOST),
            &[PathBuf::from("/opt/app/"), PathBuf::from("/proc/1")],
            &[PathBuf::from("/srv/secrets")],
            Path::new(REMOTE_ROOT),
        );
        assert_eq!(chosen.remote, vec![PathBuf::from("/opt/app")]);

        let chosen = choose(
            &lines(HOST),
            &lines(HOST),
            &[PathBuf::from("/opt")],
            &[PathBuf::from("/opt/cache")],
            Path::new(REMOTE_ROOT),
        );
        assert_eq!(chosen.remote, vec![PathBuf::from("/opt")]);
        assert_eq!(chosen.keep_local, vec![PathBuf::from("/opt/cache")]);
    }
}
