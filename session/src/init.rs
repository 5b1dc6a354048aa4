//! The session's processes after `Go`: the session child, a minimal init, and the command.
//!
//! The child unshared a PID namespace with the others, which it does not enter itself: its
//! first child is PID 1 there. Without it, whatever the command leaves behind (`daemon &`,
//! a double fork) would outlive the session, because nothing ties it to the client:
//! `PR_SET_PDEATHSIG` is not inherited by `fork` and is cleared by a credential change. A PID
//! namespace ends as a whole: when its PID 1 exits, the kernel SIGKILLs every process left in
//! it and waits for them before PID 1 is reaped.
//!
//! ```text
//!  client ── session child (host PID ns; PDEATHSIG tied to the client)
//!               └── init, PID 1 (root; PDEATHSIG tied to the session child)
//!                     └── the command, PID 2 (the invoking user)
//! ```
//!
//! - The session child forks init and then only waits: it exits with init's code, and passes
//!   on to init the signals sent to it by anyone but the terminal (the client's SIGTERM and
//!   SIGHUP, a `kill -USR1`; see [`FORWARDED`]).
//! - Init ties itself to the session child (`PR_SET_PDEATHSIG` = SIGKILL, then a look at a
//!   pidfd of the session child taken before the fork: `getppid()` is 0 for a namespace's
//!   PID 1, so it cannot tell whether the parent is still the same), mounts a fresh `proc` on
//!   /proc so that `ps` shows the session's processes only, and forks the command. It reaps
//!   every process of the namespace and passes on to the command the signals that come from
//!   outside the namespace (`si_pid` 0), that is, from the session child. When the command
//!   exits, init exits with its shell-style code (code, or 128+N after signal N), and the
//!   namespace goes with it.
//! - The command drops privileges and execs exactly as the child did before there was an
//!   init ([`identity`], [`exec`]).
//!
//! Both forwarders take their signals synchronously: the signals are blocked before the fork
//! (so none is lost in between) and collected with `sigwaitinfo`, which gives the sender and
//! `si_code`. Signals the terminal generates (`SI_KERNEL`: ^C, ^\, a hangup) reach the whole
//! foreground process group, the command included, so they are never passed on: that would
//! deliver them twice. Stop signals need nothing: the kernel ignores SIGTSTP, SIGTTIN and
//! SIGTTOU at default disposition for a namespace's PID 1, and the session child stops and
//! continues with the client's job as it always did. Everything stays in the client's process
//! group, so job control and an interactive shell (which makes its own process group) work as
//! they did.
//!
//! The command gets back the signal mask and the SIGCHLD disposition the child started with;
//! other dispositions are never changed here (see [`exec`] for SIGPIPE).
//!
//! All three processes are single-threaded, so ordinary code runs after each `fork`.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::signal::{
    kill, sigaction, sigprocmask, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::child_messages::ChildSpec;
use super::exec;
use super::identity;

/// Signals passed on from the session child to init, and from init to the command, unless the
/// terminal generated them.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// `si_code` of a signal the kernel generated (the terminal's, among others).
const SI_KERNEL: libc::c_int = 0x80;

/// Status of an init that lost the session child before it could tie itself to it.
const ORPHANED: i32 = 1;

/// The signal state the session child started with, given back to the command.
struct Inherited {
    mask: SigSet,
    sigchld: SigAction,
}

/// Runs the session from `Go` on: forks init, waits for it and returns its exit code.
pub fn run(spec: &ChildSpec) -> i32 {
    let mut watched = SigSet::empty();
    for signal in FORWARDED {
        watched.add(signal);
    }
    watched.add(Signal::SIGCHLD);
    let mut mask = SigSet::empty();
    if let Err(err) = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&watched), Some(&mut mask)) {
        return cannot_start(err);
    }
    // Reaping needs SIGCHLD at its default: an ignored one makes the kernel reap by itself.
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: the default disposition has no handler to be unsafe about.
    let sigchld = match unsafe { sigaction(Signal::SIGCHLD, &default) } {
        Ok(old) => old,
        Err(err) => return cannot_start(err),
    };
    let inherited = Inherited { mask, sigchld };
    let session_child = match pidfd_open(nix::unistd::getpid()) {
        Ok(fd) => fd,
        Err(err) => return cannot_start(err),
    };

    // SAFETY: this process is single-threaded, so the child may run any code.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            std::process::exit(init(spec, &inherited, &watched, session_child))
        }
        Ok(ForkResult::Parent { child }) => {
            drop(session_child);
            supervise(child, &watched)
        }
        Err(err) => cannot_start(err),
    }
}

fn cannot_start(err: Errno) -> i32 {
    eprintln!("mirrord-net: cannot start the session's init process: {err}");
    exec::CANNOT_EXECUTE
}

/// The session child after the fork: waits for init, passing signals on.
fn supervise(init: Pid, watched: &SigSet) -> i32 {
    loop {
        let received = wait_signal(watched);
        if received.signal == libc::SIGCHLD {
            match waitpid(init, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    if let Some(code) = exec::exit_code(status) {
                        return code;
                    }
                }
                Err(_) => return exec::CANNOT_EXECUTE,
            }
        } else if received.code != SI_KERNEL {
            if let Ok(signal) = Signal::try_from(received.signal) {
                let _ = kill(init, signal);
            }
        }
    }
}

/// PID 1 of the session's PID namespace. Returns its exit code.
fn init(spec: &ChildSpec, inherited: &Inherited, watched: &SigSet, parent: OwnedFd) -> i32 {
    // getppid() is 0 here whoever the parent is: the pidfd tells whether it still lives.
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || has_exited(&parent) {
        return ORPHANED;
    }
    drop(parent);
    // What `ps` shows as PID 1 (the binary runs as /proc/self/exe, "exe" otherwise).
    let _ = nix::sys::prctl::set_name(c"mirrord-net");
    if let Err(err) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        eprintln!("mirrord-net: cannot mount the session's /proc, it shows the host's: {err}");
    }

    // SAFETY: this process is single-threaded, so the child may run any code.
    let command = match unsafe { fork() } {
        Ok(ForkResult::Child) => run_command(spec, inherited),
        Ok(ForkResult::Parent { child }) => child,
        Err(err) => {
            eprintln!("mirrord-net: cannot start the command: {err}");
            return exec::CANNOT_EXECUTE;
        }
    };

    loop {
        let received = wait_signal(watched);
        if received.signal != libc::SIGCHLD {
            // Only what the session child sends: its pid is 0 in here. Whatever the terminal
            // sent, the command got as well.
            if received.pid == 0 && received.code != SI_KERNEL {
                if let Ok(signal) = Signal::try_from(received.signal) {
                    let _ = kill(command, signal);
                }
            }
            continue;
        }
        // Reap everything that has exited: init is every orphan's reaper.
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) if status.pid() == Some(command) => {
                    if let Some(code) = exec::exit_code(status) {
                        // The kernel ends the rest of the namespace as init exits.
                        return code;
                    }
                }
                Ok(_) | Err(Errno::EINTR) => {}
                Err(_) => return exec::CANNOT_EXECUTE,
            }
        }
    }
}

/// PID 2: becomes the user and execs the command. Never returns.
fn run_command(spec: &ChildSpec, inherited: &Inherited) -> ! {
    let identity_env = match &spec.user {
        Some(user) => {
            if let Err(err) = identity::become_user(user) {
                eprintln!(
                    "mirrord-net: cannot run the command as uid {} gid {}: {err}",
                    user.uid, user.gid
                );
                std::process::exit(exec::CANNOT_EXECUTE);
            }
            identity::identity_env(user)
        }
        None => Vec::new(),
    };
    // The session's own variables sit with the identity: over the target's, under the user's
    // explicit overrides. `command_env` (for `mirrord-net env`) layers them the same way.
    let mut session_env = identity_env;
    if let Some(files) = &spec.remote_files {
        session_env.push((crate::REMOTE_ROOT_ENV, files.mount_point.as_slice()));
    }
    let env = exec::compose_env(
        std::env::vars_os(),
        spec.env.as_deref(),
        &session_env,
        &spec.env_overrides,
    );
    // SAFETY: restoring the disposition the process started with.
    let _ = unsafe { sigaction(Signal::SIGCHLD, &inherited.sigchld) };
    // Signals passed on before this point are delivered now, at their default dispositions.
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&inherited.mask), None);
    exec::exec(&spec.command, &env)
}

/// A signal taken with `sigwaitinfo`.
struct Received {
    signal: libc::c_int,
    code: libc::c_int,
    pid: libc::pid_t,
}

/// Waits for one of `set` (all blocked).
fn wait_signal(set: &SigSet) -> Received {
    loop {
        // SAFETY: siginfo_t is plain data, and all zeroes is a valid value of it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` and `info` are valid for the call.
        let signal = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        if signal > 0 {
            return Received {
                signal,
                code: info.si_code,
                // SAFETY: si_pid is read from a siginfo the kernel filled; for codes that carry
                // no sender it is 0.
                pid: unsafe { info.si_pid() },
            };
        }
        // EINTR (a stop and continue, for one) is the only error for a valid set.
    }
}

fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    // SAFETY: plain system call; the result is checked.
    let fd = Errno::result(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) })?;
    // SAFETY: pidfd_open returned a new descriptor (close-on-exec) owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Whether the process of `pidfd` has exited (a pidfd is readable then).
fn has_exited(pidfd: &OwnedFd) -> bool {
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no timeout.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready != 0
}
