//! Who the user's command runs as.
//!
//! A root session (mirrord-net run via sudo) builds the session as root, but the command should
//! run as the person who typed it: `SUDO_UID`/`SUDO_GID` say who that is ([`invoking_user`]).
//! A rootless session needs none of this: the command keeps the user's own ids (see `userns`).
//!
//! The user is looked up in the client, in the host's namespaces, before the child starts:
//! NSS may consult services over the network (LDAP, sssd, systemd-userdb) that the session's
//! network namespace cannot reach, and a failed lookup is then an ordinary error of the client
//! rather than something the child has to report. The child gets the result in its spec —
//! uid, gid, supplementary groups (what `initgroups` would set), name and home — and only makes
//! the system calls, in the order that keeps them possible: `setgroups` (needs root), then
//! `setgid` (needs root), then `setuid` (gives root up). A uid without a passwd entry keeps
//! just its primary group and the environment's HOME/USER/LOGNAME.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;

use nix::unistd::{Gid, Uid, User};

use super::child_messages::ResolvedUser;
use super::spec::RunAs;

/// The user who ran `sudo mirrord-net ...`: `SUDO_UID`/`SUDO_GID` when running as root,
/// `None` otherwise.
pub fn invoking_user() -> Option<RunAs> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    parse_sudo_ids(
        std::env::var("SUDO_UID").ok().as_deref(),
        std::env::var("SUDO_GID").ok().as_deref(),
    )
}

fn parse_sudo_ids(uid: Option<&str>, gid: Option<&str>) -> Option<RunAs> {
    Some(RunAs {
        uid: uid?.trim().parse().ok()?,
        gid: gid?.trim().parse().ok()?,
    })
}

/// Looks `run_as` up: its name, home and supplementary groups. Blocking (NSS).
pub fn resolve(run_as: RunAs) -> io::Result<ResolvedUser> {
    let user = User::from_uid(Uid::from_raw(run_as.uid)).map_err(io::Error::from)?;
    let Some(user) = user else {
        return Ok(ResolvedUser {
            uid: run_as.uid,
            gid: run_as.gid,
            groups: vec![run_as.gid],
            name: None,
            home: None,
        });
    };
    let name = CString::new(user.name.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "user name contains NUL"))?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(run_as.gid))
        .map_err(io::Error::from)?
        .into_iter()
        .map(Gid::as_raw)
        .collect();
    if !groups.contains(&run_as.gid) {
        groups.insert(0, run_as.gid);
    }
    Ok(ResolvedUser {
        uid: run_as.uid,
        gid: run_as.gid,
        groups,
        name: Some(user.name.into_bytes()),
        home: Some(user.dir.as_os_str().as_bytes().to_vec()),
    })
}

/// Becomes `user`, for good: supplementary groups, then gid, then uid.
pub fn become_user(user: &ResolvedUser) -> nix::Result<()> {
    let groups: Vec<Gid> = user.groups.iter().copied().map(Gid::from_raw).collect();
    nix::unistd::setgroups(&groups)?;
    nix::unistd::setgid(Gid::from_raw(user.gid))?;
    nix::unistd::setuid(Uid::from_raw(user.uid))
}

/// The environment variables that say who the user is, from the passwd entry.
pub fn identity_env(user: &ResolvedUser) -> Vec<(&'static str, &[u8])> {
    let mut vars = Vec::new();
    if let Some(home) = &user.home {
        vars.push(("HOME", home.as_slice()));
    }
    if let Some(name) = &user.name {
        vars.push(("USER", name.as_slice()));
        vars.push(("LOGNAME", name.as_slice()));
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_ids_need_both_numbers() {
        assert_eq!(
            parse_sudo_ids(Some("1000"), Some("1001")),
            Some(RunAs {
                uid: 1000,
                gid: 1001
            })
        );
        assert_eq!(parse_sudo_ids(Some("1000"), None), None);
        assert_eq!(parse_sudo_ids(None, Some("1000")), None);
        assert_eq!(parse_sudo_ids(Some("root"), Some("0")), None);
    }

    #[test]
    fn root_resolves_with_its_passwd_entry() {
        let root = resolve(RunAs { uid: 0, gid: 0 }).unwrap();
        assert_eq!(root.name.as_deref(), Some(b"root".as_slice()));
        assert!(root.groups.contains(&0));
        assert!(root.home.is_some());
    }

    #[test]
    fn uid_without_passwd_entry_keeps_only_its_group() {
        let ghost = resolve(RunAs {
            uid: 3_999_999_999,
            gid: 3_999_999_998,
        })
        .unwrap();
        assert_eq!(ghost.groups, [3_999_999_998]);
        assert_eq!(ghost.name, None);
        assert!(identity_env(&ghost).is_empty());
    }

    #[test]
    fn identity_env_sets_home_user_and_logname() {
        let user = ResolvedUser {
            uid: 1000,
            gid: 1000,
            groups: vec![1000],
            name: Some(b"dev".to_vec()),
            home: Some(b"/home/dev".to_vec()),
        };
        assert_eq!(
            identity_env(&user),
            [
                ("HOME", b"/home/dev".as_slice()),
                ("USER", b"dev"),
                ("LOGNAME", b"dev")
            ]
        );
    }
}
