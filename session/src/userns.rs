//! Sessions without root: the session's namespaces inside a user namespace of the user's own.
//!
//! A client that is not root cannot create network, mount, UTS or PID namespaces, a TUN
//! device or a FUSE mount in the host's user namespace. It can create a *user namespace*, in
//! which its session child holds every capability, and then create the others inside it: they
//! are owned by that user namespace, so the capabilities count for them, as in rootless
//! containers. What the child then does is the root session's setup step for step
//! ([`child`](super::child)); this module holds what differs:
//!
//! - **Id maps.** The child unshares `CLONE_NEWUSER` on its own first, then maps exactly one
//!   uid and one gid — the user's own — and only then unshares the other namespaces. The
//!   kernel lets an unprivileged process write a one-line map of its own effective id, and only
//!   after `deny` is written to `setgroups` for the gid map; so the child writes its maps
//!   itself: no round trip with the client and no setuid helper (`newuidmap`), whose
//!   subordinate id ranges a session does not need. By default the user stays who they are
//!   inside (`U → U`): the command runs as that uid with no capabilities, exactly as outside.
//!   `--as-root` maps root instead (`0 → U`): the command is root inside, still `U` to the
//!   host. The user's supplementary groups still grant what they grant on the host; inside
//!   they show as the overflow group (65534), as every unmapped id does.
//! - **What the kernel allows.** In the user namespace the mounts copied from the host are
//!   locked together with their flags (read-only, nosuid, nodev, noexec cannot be cleared, and
//!   nothing can be unmounted to reveal what is under it); the session only adds mounts on
//!   top, which is allowed. Every new mount is nodev whatever its flags. `/dev/net/tun` and
//!   `/dev/fuse` are opened with the user's own file permissions — capabilities in a user
//!   namespace never override the mode of a file whose owner is not mapped in it — so both
//!   must be mode 0666 (Debian's udev rules make them so). FUSE takes `allow_other` from a
//!   user namespace (only `fusermount` refuses it to users): it opens the mount to the
//!   processes of that namespace and of none outside it.
//! - **File capabilities.** Those of the host's binaries (ping's `cap_net_raw`) belong to the
//!   host's root, which the kernel counts as an ancestor of every user namespace: they still
//!   apply inside, so `ping` works as it does in a root session.
//! - **Where the target's root goes.** `/run/mirrord-net/root` cannot be created by a user;
//!   see [`crate::remote_root`].
//! - **Parent-death signals.** A credential change clears `PR_SET_PDEATHSIG`; entering a user
//!   namespace the process itself owns is not one (the kernel counts the new capabilities as a
//!   subset of the old), but the child arms the signal again after it anyway and checks that
//!   its parent is still the client, so the tie does not hang on that detail.
//! - **Errors.** The machine may forbid user namespaces (`user.max_user_namespaces` = 0,
//!   Debian's older `kernel.unprivileged_userns_clone` = 0, Ubuntu's
//!   `kernel.apparmor_restrict_unprivileged_userns` = 1, a container's seccomp profile) or the
//!   devices. [`Sysctls`] reads what it can, [`explain`] turns a failed step into one line that
//!   says what to change, in place of the root session's "run it with sudo".

use std::io::{self, Write};
use std::path::Path;

use super::child_messages::{IdMap, IdMaps, SessionPrivileges, SetupFailure, SetupStep};
use super::error::SessionError;

/// A line of `uid_map`/`gid_map`: inside id, outside id, count.
pub fn map_line(map: IdMap) -> String {
    format!("{} {} 1\n", map.inside, map.outside)
}

/// In the child: creates the user namespace and maps the user into it. The caller then
/// unshares the other namespaces, which the new user namespace owns.
pub fn enter(maps: &IdMaps) -> Result<(), SetupFailure> {
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    if (uid, gid) != (maps.uid.outside, maps.gid.outside) {
        return Err(SetupFailure::other(
            SetupStep::IdMaps,
            format!(
                "the session process runs as uid {uid} gid {gid}, but the maps are for uid {} gid {}",
                maps.uid.outside, maps.gid.outside
            ),
        ));
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|err| SetupFailure::os(SetupStep::UserNamespace, err))?;
    write_map("/proc/self/setgroups", "deny")
        .and_then(|()| write_map("/proc/self/uid_map", &map_line(maps.uid)))
        .and_then(|()| write_map("/proc/self/gid_map", &map_line(maps.gid)))
        .map_err(|err| SetupFailure::os(SetupStep::IdMaps, err))
}

/// The kernel takes a map in one `write` at offset 0.
fn write_map(path: &str, contents: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    let written = file.write(contents.as_bytes())?;
    if written != contents.len() {
        return Err(io::Error::other(format!("short write to {path}")));
    }
    Ok(())
}

/// The machine's switches for unprivileged user namespaces; `None` where the kernel has no
/// such file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sysctls {
    /// `user.max_user_namespaces` (of the caller's user namespace).
    pub max_user_namespaces: Option<u64>,
    /// `kernel.unprivileged_userns_clone` (Debian kernels before 6.1 default to 0 in some
    /// releases).
    pub unprivileged_userns_clone: Option<u64>,
    /// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10 and later default to 1).
    pub apparmor_restrict: Option<u64>,
}

impl Sysctls {
    pub fn read() -> Self {
        let read = |path: &str| {
            std::fs::read_to_string(Path::new("/proc/sys").join(path))
                .ok()
                .and_then(|text| text.trim().parse().ok())
        };
        Sysctls {
            max_user_namespaces: read("user/max_user_namespaces"),
            unprivileged_userns_clone: read("kernel/unprivileged_userns_clone"),
            apparmor_restrict: read("kernel/apparmor_restrict_unprivileged_userns"),
        }
    }

    /// Why user namespaces certainly cannot be created by a user here, if a switch says so.
    /// (AppArmor's restriction is not certain: a profile may allow `userns` for mirrord-net.)
    pub fn forbids(&self) -> Option<&'static str> {
        if self.max_user_namespaces == Some(0) {
            return Some(
                "user namespaces are disabled on this machine (user.max_user_namespaces = 0): \
                 allow them with `sysctl -w user.max_user_namespaces=15000`, or run mirrord-net \
                 with sudo",
            );
        }
        if self.unprivileged_userns_clone == Some(0) {
            return Some(
                "unprivileged user namespaces are disabled on this machine \
                 (kernel.unprivileged_userns_clone = 0): enable them with \
                 `sysctl -w kernel.unprivileged_userns_clone=1`, or run mirrord-net with sudo",
            );
        }
        None
    }
}

const APPARMOR: &str = "AppArmor restricts unprivileged user namespaces here \
     (kernel.apparmor_restrict_unprivileged_userns = 1): give mirrord-net an AppArmor profile \
     that allows `userns,`, or run mirrord-net with sudo";
const NO_PRIVILEGE: &str = "the session's user namespace was refused this privilege (a seccomp \
     profile or security module of this machine or container may forbid it): run mirrord-net \
     with sudo, or allow user namespaces (in a pod: see docs/kubernetes.md)";
const TUN_ACCESS: &str = "a session without root opens /dev/net/tun as you: it must be mode \
     0666 (Debian's udev sets that; `chmod 0666 /dev/net/tun`), or run mirrord-net with sudo";
const FUSE_ACCESS: &str = "a session without root opens /dev/fuse as you: it must be mode 0666 \
     (`chmod 0666 /dev/fuse`), or run with --fs-mode off";

/// What the user can do about a rootless session's failed step, given the machine's switches.
pub fn hint(step: &SetupStep, errno: Option<i32>, sysctls: &Sysctls) -> Option<&'static str> {
    let denied = matches!(errno, Some(libc::EPERM | libc::EACCES));
    match step {
        SetupStep::UserNamespace | SetupStep::IdMaps | SetupStep::Namespaces => Some(
            sysctls
                .forbids()
                .or((sysctls.apparmor_restrict == Some(1)).then_some(APPARMOR))
                .unwrap_or(match errno {
                    Some(libc::ENOSPC) => {
                        "the limit of user namespaces is reached (user.max_user_namespaces); \
                         run mirrord-net with sudo or raise the limit"
                    }
                    _ => NO_PRIVILEGE,
                }),
        ),
        SetupStep::TunDevice if denied => Some(TUN_ACCESS),
        SetupStep::TunDevice if matches!(errno, Some(libc::ENOENT | libc::ENODEV)) => {
            Some("load the tun module (modprobe tun)")
        }
        SetupStep::FuseDevice if denied => Some(FUSE_ACCESS),
        SetupStep::FuseDevice => {
            Some("load the fuse module (modprobe fuse), or run with --fs-mode off")
        }
        _ if denied => Some(if sysctls.apparmor_restrict == Some(1) {
            APPARMOR
        } else {
            NO_PRIVILEGE
        }),
        _ => None,
    }
}

/// Gives a rootless session's setup failure the hint that fits it; other errors, and every
/// error of a root session, pass unchanged.
pub fn explain(err: SessionError, privileges: SessionPrivileges) -> SessionError {
    match (err, privileges) {
        (SessionError::Setup(failure), SessionPrivileges::Rootless(_)) => {
            let hint = hint(&failure.step, failure.errno, &Sysctls::read()).or_else(|| {
                match failure.step {
                    // The root session's hints for these say nothing about root.
                    SetupStep::Address(_)
                    | SetupStep::Ipv6Sysctl
                    | SetupStep::RemotePath(_)
                    | SetupStep::Protocol => failure.hint(),
                    _ => None,
                }
            });
            let message = match hint {
                Some(hint) => format!("{}: {} — {hint}", failure.step, failure.message),
                None => format!("{}: {}", failure.step, failure.message),
            };
            SessionError::RootlessSetup { failure, message }
        }
        (err, _) => err,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_stays_themselves_unless_root_is_asked_for() {
        let own = IdMaps::new(1000, 1001, false);
        assert_eq!(map_line(own.uid), "1000 1000 1\n");
        assert_eq!(map_line(own.gid), "1001 1001 1\n");
        let root = IdMaps::new(1000, 1001, true);
        assert_eq!(map_line(root.uid), "0 1000 1\n");
        assert_eq!(map_line(root.gid), "0 1001 1\n");
    }

    #[test]
    fn disabled_user_namespaces_are_named_with_the_switch_to_change() {
        let off = Sysctls {
            max_user_namespaces: Some(0),
            ..Sysctls::default()
        };
        let said = hint(&SetupStep::UserNamespace, Some(libc::ENOSPC), &off).unwrap();
        assert!(said.contains("user.max_user_namespaces = 0"), "{said}");

        let debian = Sysctls {
            max_user_namespaces: Some(100),
            unprivileged_userns_clone: Some(0),
            apparmor_restrict: None,
        };
        assert!(debian
            .forbids()
            .unwrap()
            .contains("unprivileged_userns_clone"));
        let ubuntu = Sysctls {
            apparmor_restrict: Some(1),
            ..Sysctls::default()
        };
        assert_eq!(ubuntu.forbids(), None, "a profile may allow it");
        assert_eq!(
            hint(&SetupStep::MountPropagation, Some(libc::EPERM), &ubuntu),
            Some(APPARMOR)
        );
        assert_eq!(
            hint(
                &SetupStep::UserNamespace,
                Some(libc::EPERM),
                &Sysctls::default()
            ),
            Some(NO_PRIVILEGE)
        );
    }

    #[test]
    fn device_permissions_say_what_mode_is_needed() {
        let none = Sysctls::default();
        assert_eq!(
            hint(&SetupStep::TunDevice, Some(libc::EACCES), &none),
            Some(TUN_ACCESS)
        );
        assert_eq!(
            hint(&SetupStep::FuseDevice, Some(libc::EACCES), &none),
            Some(FUSE_ACCESS)
        );
        assert!(hint(&SetupStep::FuseDevice, Some(libc::ENOENT), &none)
            .unwrap()
            .contains("--fs-mode off"));
        assert_eq!(
            hint(
                &SetupStep::DefaultRoute(super::super::IpFamily::V4),
                Some(libc::EEXIST),
                &none
            ),
            None
        );
    }

    #[test]
    fn a_root_session_keeps_its_error() {
        let failure = SetupFailure::os(
            SetupStep::TunDevice,
            io::Error::from_raw_os_error(libc::EACCES),
        );
        let err = explain(SessionError::Setup(failure), SessionPrivileges::Root);
        assert!(matches!(err, SessionError::Setup(_)));
    }

    #[test]
    fn a_rootless_session_never_says_sudo_is_needed_for_a_device_mode() {
        let failure = SetupFailure::os(
            SetupStep::FuseDevice,
            io::Error::from_raw_os_error(libc::EACCES),
        );
        let err = explain(
            SessionError::Setup(failure),
            SessionPrivileges::Rootless(IdMaps::new(1000, 1000, false)),
        );
        assert_eq!(
            err.to_string(),
            format!(
                "cannot mount the target's files (FUSE device /dev/fuse): Permission denied (os \
                 error 13) — {FUSE_ACCESS}"
            )
        );
    }
}
