//! The session child's namespaces and its tie to the client.
//!
//! The child leaves the host's network, mount, UTS and PID namespaces with one `unshare`; it
//! stays in the host's IPC, cgroup and user namespaces, so the user's command sees the same
//! files and runs under the same uids as anything else on the machine. The namespaces have no
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

use super::spec::SessionPrivileges;

/// Namespaces every session gets.
pub fn session_namespaces(privileges: SessionPrivileges) -> CloneFlags {
    match privileges {
        // A rootless mode adds CLONE_NEWUSER here, and the child then pauses until the client
        // has written its uid/gid maps.
        SessionPrivileges::Root => {
            CloneFlags::CLONE_NEWNET
                | CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWPID
        }
    }
}

/// Moves the calling (single-threaded) process into new namespaces.
pub fn enter_new_namespaces(privileges: SessionPrivileges) -> nix::Result<()> {
    nix::sched::unshare(session_namespaces(privileges))
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
    fn root_sessions_get_a_pid_namespace_and_leave_the_user_namespace_alone() {
        let flags = session_namespaces(SessionPrivileges::Root);
        assert!(flags.contains(CloneFlags::CLONE_NEWNET));
        assert!(flags.contains(CloneFlags::CLONE_NEWNS));
        assert!(flags.contains(CloneFlags::CLONE_NEWUTS));
        assert!(flags.contains(CloneFlags::CLONE_NEWPID));
        assert!(!flags.contains(CloneFlags::CLONE_NEWUSER));
    }
}
