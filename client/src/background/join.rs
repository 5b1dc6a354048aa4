//! `exec --session NAME` and `shell --session NAME`: a command in a background session.
//!
//! No agent starts and no namespace is made: the holder sends a pidfd of the session's init,
//! and this process joins its namespaces with one `setns(pidfd, …)` — the user namespace
//! first when the session has one (a session without root), then mount, network, UTS and
//! PID — and forks the command, which is then born in the session's PID namespace (its
//! parent stays outside, as with `nsenter`; its orphans go to the session's init). From there
//! the command is made exactly as a session's own command is ([`session`](mirrord_net_session)):
//! the user it runs as (`$SUDO_UID` unless `--as-root` was given to `up`), its environment
//! composed from this process's environment and the target's by the same layers and flags
//! (`up`'s `--env-*` flags, which the holder hands over), `$MIRRORD_NET_REMOTE_ROOT`, the
//! working directory by path, `execvp` and its shell-style failures. The target's hostname,
//! resolv.conf, hosts and files are the session's namespaces' own.
//!
//! Everything runs on the main thread before any other exists (`setns` into a user or mount
//! namespace refuses a multi-threaded caller). This process then waits for the command like
//! a session's init does: its exit code (or 128+N after signal N) is ours; SIGTERM, SIGHUP,
//! SIGUSR1/2 are passed on; signals the terminal sends reach the command itself (it stays in
//! our process group, for job control), so they are not passed on twice. The control
//! connection stays open meanwhile: it counts as a command in `ps`, and if the session ends
//! (its agent lost, `down`), the holder says why on it — the session's init is killed and
//! the command with it — and that reason is our one line on stderr.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mirrord_net_env_injector::Pattern;
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::control;
use mirrord_net_protocol::framing::FrameDecoder;

use super::control_messages::{JoinInfo, Op, Reply};
use crate::environment::{CommandEnv, EnvArgs};
use crate::report::{Failure, Kind};
use mirrord_net_session::{self as session, RunAs};

/// `si_code` of a signal the kernel generated (the terminal's, among others).
const SI_KERNEL: i32 = 0x80;

/// Runs `command` in session `name`; returns its exit code. Must run before any other thread
/// exists.
pub fn run(name: &str, command: Vec<OsString>) -> Result<i32, Failure> {
    let stream = control::connect(name, Op::Join)?;
    let mut decoder = FrameDecoder::local();
    let mut fds = Vec::new();
    let info = match control::recv(&stream, &mut decoder, &mut fds) {
        Ok(Some(Reply::Joined(info))) => info,
        Ok(Some(Reply::Ended { reason })) => return Err(ended(name, &reason)),
        Ok(Some(Reply::Refused { reason })) => return Err(Failure::new(Kind::Permission, reason)),
        Ok(_) | Err(_) => {
            return Err(Failure::new(
                Kind::SessionNotFound,
                format!("session {name} went away while joining it"),
            ))
        }
    };
    let Some(init) = fds.pop() else {
        return Err(Failure::new(
            Kind::Internal,
            format!("session {name} did not send its namespaces"),
        ));
    };
    let prepared = prepare(&info, command)?;

    let mut forwarded = SigSet::empty();
    for signal in session::FORWARDED {
        forwarded.add(signal);
    }
    forwarded.add(Signal::SIGCHLD);
    let mut old_mask = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&forwarded), Some(&mut old_mask))
        .map_err(|err| Failure::new(Kind::Internal, format!("cannot block signals: {err}")))?;

    enter(name, &init, info.user_namespace)?;
    drop(init);

    // SAFETY: this process is single-threaded (see the module documentation).
    let child = match unsafe { fork() } {
        Ok(ForkResult::Child) => command_main(&prepared, &old_mask),
        Ok(ForkResult::Parent { child }) => child,
        Err(err) => {
            return Err(Failure::new(
                Kind::Internal,
                format!("cannot start the command: {err}"),
            ))
        }
    };
    supervise(name, child, &forwarded, &stream, decoder)
}

/// What the command needs, worked out in the host's namespaces (NSS lookups may need the
/// host's network).
struct Prepared {
    argv: Vec<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
    user: Option<session::ResolvedUser>,
    cwd: Option<std::path::PathBuf>,
}

fn prepare(info: &JoinInfo, command: Vec<OsString>) -> Result<Prepared, Failure> {
    let patterns = |texts: &[String]| -> Result<Vec<Pattern>, Failure> {
        texts
            .iter()
            .map(|text| {
                Pattern::parse(text.as_bytes())
                    .map_err(|err| Failure::new(Kind::Internal, format!("{text:?}: {err}")))
            })
            .collect()
    };
    let args = EnvArgs {
        include: patterns(&info.include)?,
        exclude: patterns(&info.exclude)?,
        set: info.overrides.clone(),
        files: Vec::new(),
    };
    let composed = CommandEnv::for_target(&args, &info.environ);
    let user = info
        .run_as
        .map(|(uid, gid)| {
            session::resolve_user(RunAs { uid, gid }).map_err(|err| {
                Failure::new(
                    Kind::Internal,
                    format!("cannot look up uid {uid} to run the command as: {err}"),
                )
            })
        })
        .transpose()?;
    let mut session_env = user.as_ref().map(session::identity_env).unwrap_or_default();
    if let Some(root) = &info.remote_root {
        session_env.push((session::REMOTE_ROOT_ENV, root.as_slice()));
    }
    let env = session::compose_env(
        std::env::vars_os(),
        Some(&composed.base),
        &session_env,
        &composed.overrides,
    );
    Ok(Prepared {
        argv: command.into_iter().map(OsString::into_vec).collect(),
        env,
        user,
        cwd: std::env::current_dir().ok(),
    })
}

/// Joins the namespaces of the session's init.
fn enter(name: &str, init: &OwnedFd, user_namespace: bool) -> Result<(), Failure> {
    let mut flags =
        libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWUTS | libc::CLONE_NEWPID;
    if user_namespace {
        flags |= libc::CLONE_NEWUSER;
    }
    // SAFETY: plain system call on a descriptor we own; the result is checked.
    if unsafe { libc::setns(init.as_raw_fd(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::EPERM) => Failure::new(
            Kind::Permission,
            format!("cannot enter session {name}: it was started with root, run this with sudo"),
        ),
        Some(libc::ESRCH) => Failure::new(
            Kind::SessionEnded,
            format!("session {name} has ended (mirrord-net ps says why)"),
        ),
        _ => Failure::new(
            Kind::Internal,
            format!("cannot enter session {name}'s namespaces: {err}"),
        ),
    })
}

/// The forked command: its directory, its user, its signal state, exec. Never returns.
fn command_main(prepared: &Prepared, old_mask: &SigSet) -> ! {
    if let Some(cwd) = &prepared.cwd {
        if std::env::set_current_dir(cwd).is_err() {
            let _ = std::env::set_current_dir("/");
        }
    }
    if let Some(user) = &prepared.user {
        if let Err(err) = session::become_user(user) {
            eprintln!(
                "mirrord-net: cannot run the command as uid {} gid {}: {err}",
                user.uid, user.gid
            );
            std::process::exit(session::CANNOT_EXECUTE);
        }
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(old_mask), None);
    session::exec_command(&prepared.argv, &prepared.env)
}

/// Waits for the command, passing signals on and listening to the holder.
fn supervise(
    name: &str,
    child: Pid,
    forwarded: &SigSet,
    stream: &UnixStream,
    mut decoder: FrameDecoder,
) -> Result<i32, Failure> {
    let signals =
        SignalFd::with_flags(forwarded, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
            .map_err(|err| Failure::new(Kind::Internal, format!("cannot watch signals: {err}")))?;
    let mut reason: Option<String> = None;
    let mut holder_open = true;
    loop {
        let mut polls = [
            libc::pollfd {
                fd: signals.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if holder_open { stream.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        if unsafe { libc::poll(polls.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if polls[1].revents != 0 {
            holder_open = listen(stream, &mut decoder, &mut reason);
        }
        if polls[0].revents == 0 {
            continue;
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let signo = info.ssi_signo as i32;
            if signo == libc::SIGCHLD {
                continue;
            }
            if info.ssi_code != SI_KERNEL {
                if let Ok(signal) = Signal::try_from(signo) {
                    let _ = kill(child, signal);
                }
            }
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                let Some(code) = session::exit_code(status) else {
                    continue;
                };
                // A command killed with its session: the holder's word on why may still be
                // on its way.
                if reason.is_none() && holder_open && matches!(status, WaitStatus::Signaled(..)) {
                    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
                    listen(stream, &mut decoder, &mut reason);
                }
                return match reason {
                    Some(reason) => Err(ended(name, &reason)),
                    None => Ok(code),
                };
            }
            Err(err) => {
                return Err(Failure::new(
                    Kind::Internal,
                    format!("cannot wait for the command: {err}"),
                ))
            }
        }
    }
}

/// Reads what the holder says; returns whether its connection is still open.
fn listen(stream: &UnixStream, decoder: &mut FrameDecoder, reason: &mut Option<String>) -> bool {
    let mut fds = Vec::new();
    match control::recv(stream, decoder, &mut fds) {
        Ok(Some(Reply::Ended { reason: why })) => {
            *reason = Some(why);
            true
        }
        Ok(Some(_)) => true,
        Ok(None) | Err(_) => false,
    }
}

fn ended(name: &str, reason: &str) -> Failure {
    Failure::new(
        Kind::SessionEnded,
        format!("session {name} has ended: {reason}"),
    )
}
