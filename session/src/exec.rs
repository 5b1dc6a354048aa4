//! Running the user's command, and turning how it ended into an exit code, the way a shell
//! does.
//!
//! The command is PID 2 of the session's PID namespace, forked by its init
//! ([`init`](super::init)) and replaced by the user's program (`execvp`): it keeps the
//! session's namespaces, the client's process group and the user's stdin/stdout/stderr.
//! `argv[0]` is searched in the `PATH` of the command's own environment, as
//! `env -i PATH=... cmd` would do.
//!
//! The session child is a Rust program, and Rust ignores SIGPIPE at startup; an ignored
//! signal stays ignored across `execve`, so it is set back to its default first — otherwise
//! `yes | head` inside the session would spin on EPIPE instead of dying. Other dispositions
//! are left as the client inherited them (a `nohup mirrord-net ...` keeps SIGHUP ignored, as a
//! shell would).
//!
//! When `execvp` fails the command's process does what a shell does: prints `mirrord-net:
//! CMD: command not found` and exits 127 when there is no such command, or prints the reason
//! and exits 126 when it exists but cannot run. Exit statuses follow the shell convention
//! too: a normal exit gives its code, death by signal N gives 128+N. Init exits with the
//! command's code and the session child with init's, so the client sees the command's.

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::WaitStatus;

/// Exit code when the command does not exist.
pub const NOT_FOUND: i32 = 127;
/// Exit code when the command exists but cannot be run.
pub const CANNOT_EXECUTE: i32 = 126;

/// The command's environment, in layers, later ones winning: `spec_env` if given, else
/// `inherited`; then the identity variables of the user the command runs as; then the
/// caller's explicit `overrides` (`--env-file`, `-e`), in order.
pub fn compose_env(
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
    spec_env: Option<&[(Vec<u8>, Vec<u8>)]>,
    identity: &[(&str, &[u8])],
    overrides: &[(Vec<u8>, Vec<u8>)],
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = match spec_env {
        Some(vars) => vars
            .iter()
            .map(|(key, value)| os_pair(key, value))
            .collect(),
        None => inherited.into_iter().collect(),
    };
    let identity = identity
        .iter()
        .map(|(key, value)| os_pair(key.as_bytes(), value));
    let overrides = overrides.iter().map(|(key, value)| os_pair(key, value));
    for (key, value) in identity.chain(overrides) {
        env.retain(|(existing, _)| *existing != key);
        env.push((key, value));
    }
    env
}

fn os_pair(key: &[u8], value: &[u8]) -> (OsString, OsString) {
    (
        OsStr::from_bytes(key).to_owned(),
        OsStr::from_bytes(value).to_owned(),
    )
}

/// The environment a session's command would get, composed exactly as the session does it
/// (for `mirrord-net env`, which shows it without starting a session). Blocking: looks the
/// user up (NSS).
pub fn command_env(
    spec_env: Option<&[(Vec<u8>, Vec<u8>)]>,
    overrides: &[(Vec<u8>, Vec<u8>)],
    run_as: Option<super::RunAs>,
    remote_root: Option<&[u8]>,
) -> std::io::Result<Vec<(OsString, OsString)>> {
    let user = run_as.map(super::identity::resolve).transpose()?;
    let mut session_env = user
        .as_ref()
        .map(super::identity::identity_env)
        .unwrap_or_default();
    if let Some(root) = remote_root {
        session_env.push((crate::REMOTE_ROOT_ENV, root));
    }
    Ok(compose_env(
        std::env::vars_os(),
        spec_env,
        &session_env,
        overrides,
    ))
}

/// Executes `argv` with exactly the environment `env`; if that fails, reports it like a shell
/// and exits.
///
/// The environment goes to `execve` as one array, not through `setenv`: glibc's `setenv`
/// scans and reallocates the whole environment on every call, which costs tens of
/// milliseconds for a target with a thousand variables. Only PATH is set in this process,
/// because `execvpe` searches the caller's PATH; that makes the search use the command's own
/// PATH (or the default search path when it has none), as a shell would.
pub fn exec(argv: &[Vec<u8>], env: &[(OsString, OsString)]) -> ! {
    // SAFETY: restoring the default disposition of a signal has no preconditions.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    let name = OsStr::from_bytes(&argv[0]).to_string_lossy().into_owned();
    match env.iter().rev().find(|(key, _)| key == "PATH") {
        Some((_, path)) => std::env::set_var("PATH", path),
        None => std::env::remove_var("PATH"),
    }
    let args: Result<Vec<CString>, _> = argv.iter().map(|arg| CString::new(arg.clone())).collect();
    let envp: Result<Vec<CString>, _> = env
        .iter()
        .map(|(key, value)| {
            let mut entry = Vec::with_capacity(key.len() + value.len() + 1);
            entry.extend_from_slice(key.as_bytes());
            entry.push(b'=');
            entry.extend_from_slice(value.as_bytes());
            CString::new(entry)
        })
        .collect();
    let errno = match (args, envp) {
        (Ok(args), Ok(envp)) => match nix::unistd::execvpe(&args[0], &args, &envp) {
            Ok(never) => match never {},
            Err(errno) => errno,
        },
        _ => Errno::EINVAL,
    };
    let (code, message) = exec_failure(&name, errno);
    eprintln!("mirrord-net: {message}");
    std::process::exit(code)
}

/// The exit code and message for a failed `execvp` of `name`.
pub fn exec_failure(name: &str, errno: Errno) -> (i32, String) {
    match errno {
        Errno::ENOENT if !name.contains('/') => (NOT_FOUND, format!("{name}: command not found")),
        Errno::ENOENT => (NOT_FOUND, format!("{name}: No such file or directory")),
        // strerror text without io::Error's "(os error N)", as shells print it.
        errno => (CANNOT_EXECUTE, format!("{name}: {}", errno.desc())),
    }
}

/// The shell-style exit code of a finished process; `None` if `status` is not an exit.
pub fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, signal, _) => Some(128 + signal as i32),
        _ => None,
    }
}

/// A finished process's status in words, for error messages.
pub fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exit code {code}"),
        WaitStatus::Signaled(_, signal, _) => format!("killed by {signal}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn normal_exit_gives_its_code() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 255)), Some(255));
    }

    #[test]
    fn death_by_signal_gives_128_plus_signal() {
        let pid = Pid::from_raw(42);
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGINT, false)),
            Some(130)
        );
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGSEGV, true)),
            Some(139)
        );
        assert_eq!(exit_code(WaitStatus::StillAlive), None);
    }

    #[test]
    fn missing_command_is_127_like_a_shell() {
        assert_eq!(
            exec_failure("nosuchcmd", Errno::ENOENT),
            (127, "nosuchcmd: command not found".to_owned())
        );
        assert_eq!(
            exec_failure("./nosuch", Errno::ENOENT),
            (127, "./nosuch: No such file or directory".to_owned())
        );
    }

    #[test]
    fn command_that_cannot_run_is_126() {
        assert_eq!(
            exec_failure("/etc/passwd", Errno::EACCES),
            (126, "/etc/passwd: Permission denied".to_owned())
        );
        assert_eq!(exec_failure("/bin/x", Errno::ENOEXEC).0, 126);
    }

    #[test]
    fn spec_environment_replaces_the_inherited_one() {
        let inherited = vec![
            ("SECRET".into(), "host".into()),
            ("PATH".into(), "/host".into()),
        ];
        let spec = vec![(b"PATH".to_vec(), b"/pod".to_vec())];
        let env = compose_env(inherited, Some(&spec), &[], &[]);
        assert_eq!(env, [(OsString::from("PATH"), OsString::from("/pod"))]);
    }

    #[test]
    fn identity_overrides_whatever_the_environment_says() {
        let inherited = vec![
            ("HOME".into(), "/root".into()),
            ("TERM".into(), "xterm".into()),
        ];
        let env = compose_env(
            inherited,
            None,
            &[("HOME", b"/home/dev"), ("USER", b"dev")],
            &[],
        );
        assert_eq!(
            env,
            [
                (OsString::from("TERM"), OsString::from("xterm")),
                (OsString::from("HOME"), OsString::from("/home/dev")),
                (OsString::from("USER"), OsString::from("dev")),
            ]
        );
    }

    #[test]
    fn overrides_win_over_identity_and_environment() {
        let spec = vec![
            (b"HOME".to_vec(), b"/root".to_vec()),
            (b"APP".to_vec(), b"pod".to_vec()),
        ];
        let overrides = vec![
            (b"HOME".to_vec(), b"/srv/override".to_vec()),
            (b"APP".to_vec(), b"first".to_vec()),
            (b"APP".to_vec(), b"last".to_vec()),
        ];
        let env = compose_env(
            Vec::new(),
            Some(&spec),
            &[("HOME", b"/home/dev"), ("USER", b"dev")],
            &overrides,
        );
        assert_eq!(
            env,
            [
                (OsString::from("USER"), OsString::from("dev")),
                (OsString::from("HOME"), OsString::from("/srv/override")),
                (OsString::from("APP"), OsString::from("last")),
            ]
        );
    }
}
