//! The session child's namespaces and its tie to the client.
//!
//! The child leaves the host's network, mount and UTS namespaces with one `unshare`, and the
//! PID namespace with a second one at the end of the setup ([`enter_pid_namespace`]), after
//! the DNS filter's [`socket_maker`](super::socket_maker) was forked (a process forked
//! after that `unshare` would be the session's PID 1). It stays in the host's IPC and cgroup
//! namespaces, and a root session in the host's user
//! namespace too, so the user's command sees the same files and runs under the same uids as
//! anything else on the machine. A rootless session first makes a user namespace that maps
//! the user's own ids ([`userns`](super::userns)) and unshares the others from inside it, so
//! that they belong to it. The namespaces have no
//! name anywhere (no `ip netns add`, no bind mount under /run): they live exactly as long as a
//! process or descriptor uses them — the session's processes and the client's TUN descriptor
//! — so no exit path, SIGKILL included, leaves one behind.
//!
//! `unshare(CLONE_NEWPID)` does not move the caller: it makes the caller's next child PID 1 of
//! the new namespace, the session's init ([`init`](super::init)), and every process of the
//! session descends from it. When init exits, the kernel kills what is left, so no process the
//! command started in the background outlives the session.
//!
//! `unshare(CLONE_NEWNS)` implies `CLONE_FS`, which fails in a process whose threads share a
//! `fs_struct`: this runs in the freshly executed child, which is single-threaded by
//! construction (the client never forks itself to do this work).
//!
//! The child dies with the client (`PR_SET_PDEATHSIG` = SIGKILL): the client holds the TUN,
//! and a session whose packets go nowhere is worse than no session. The child keeps root, so
//! the setting stays; init ties itself to the child the same way, and the rest of the session
//! dies with init.

use nix::sched::CloneFlags;
use nix::sys::signal::Signal;

use super::child_messages::{SessionPrivileges, SetupFailure, SetupStep};
use super::userns;

/// Namespaces every session gets at the start of its setup (a rootless one inside its user
/// namespace, made before); the PID namespace comes last ([`enter_pid_namespace`]).
pub const SESSION_NAMESPACES: CloneFlags = CloneFlags::CLONE_NEWNET
    .union(CloneFlags::CLONE_NEWNS)
    .union(CloneFlags::CLONE_NEWUTS);

/// Moves the calling (single-threaded) process into new namespaces; `parent` is the pid of
/// the client, which a rootless child checks it still has after entering its user namespace.
pub fn enter_new_namespaces(
    privileges: SessionPrivileges,
    parent: nix::unistd::Pid,
) -> Result<(), SetupFailure> {
    if let SessionPrivileges::Rootless(maps) = privileges {
        userns::enter(&maps)?;
        // See the module documentation of `userns`: the tie survives, but need not hang on
        // that. A parent gone meanwhile is a client gone.
        if die_with_parent().is_err() || nix::unistd::getppid() != parent {
            return Err(SetupFailure::other(
                SetupStep::UserNamespace,
                "the client exited during the setup",
            ));
        }
    }
    nix::sched::unshare(SESSION_NAMESPACES)
        .map_err(|err| SetupFailure::os(SetupStep::Namespaces, err))
}

/// Makes the next child of this process PID 1 of a new PID namespace: the session's init.
pub fn enter_pid_namespace() -> Result<(), SetupFailure> {
    nix::sched::unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|err| SetupFailure::os(SetupStep::Namespaces, err))
}

/// Asks the kernel to SIGKILL this process when its parent dies.
pub fn die_with_parent() -> nix::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
}

/// Sets the hostname of the session's UTS namespace; an empty name keeps the host's.
pub fn set_hostname(name: &str) -> nix::Result<()> {
    if name.is_empty() {
        return Ok(());
    }
    nix::unistd::sethostname(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_and_pid_namespaces_are_separate_steps() {
        let flags = SESSION_NAMESPACES;
        assert!(flags.contains(CloneFlags::CLONE_NEWNET));
        assert!(flags.contains(CloneFlags::CLONE_NEWNS));
        assert!(flags.contains(CloneFlags::CLONE_NEWUTS));
        assert!(!flags.contains(CloneFlags::CLONE_NEWPID));
        assert!(!flags.contains(CloneFlags::CLONE_NEWUSER));
    }
}
