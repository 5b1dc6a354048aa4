//! Running a command to completion with a deadline, capturing what it printed.
//!
//! The command leads its own process group; on timeout the whole group is SIGKILLed and the
//! run fails with everything the command had printed so far, so a hung session shows where
//! it hung instead of stalling the suite. Output is read by two threads that give up shortly
//! after the command exits: a process that outlived the command and still holds its stdout
//! must not hang the test (it is reported, and the leftover checks catch it).

use std::fmt;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// How long output pipes may stay open after the command itself has exited.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command line, for messages.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    /// Set when stdout/stderr were still held open by some other process after the command
    /// exited.
    pub output_left_open: bool,
}

impl Outcome {
    /// The exit code, or `None` if the command was killed by a signal.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing everything, unless the command exited 0; returns stdout.
    #[track_caller]
    pub fn assert_success(&self) -> &str {
        assert!(self.status.success(), "command failed:\n{self}");
        self.assert_agent_exited_cleanly();
        &self.stdout
    }

    /// Panics, showing everything, unless the command exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code(), Some(code), "unexpected exit status:\n{self}");
        self.assert_agent_exited_cleanly();
        self
    }

    /// A session that ended without an error of the client's own ends its local agent with
    /// status 0 at once; the client warns when it did not (its `LocalAgent::finish`).
    #[track_caller]
    pub fn assert_agent_exited_cleanly(&self) {
        if self.stderr.contains("mirrord-net: ") {
            // The client failed: its agent may have too.
            return;
        }
        for sign in ["the agent exited with", "the agent did not exit within"] {
            assert!(
                !self.stderr.contains(sign),
                "the session's agent did not exit 0 at its end:\n{self}"
            );
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            _ => format!("{:?}", self.status),
        };
        writeln!(f, "  command: {}", self.command)?;
        writeln!(f, "  status:  {status} after {:.3?}", self.elapsed)?;
        if self.output_left_open {
            writeln!(
                f,
                "  note:    its output stayed open after it exited (a process outlived it)"
            )?;
        }
        writeln!(f, "  stdout:  {}", clip(&self.stdout))?;
        write!(f, "  stderr:  {}", clip(&self.stderr))
    }
}

fn clip(text: &str) -> String {
    const MAX: usize = 4000;
    let text = text.trim_end();
    if text.len() <= MAX {
        return text.replace('\n', "\n           ");
    }
    let mut cut = text.len() - MAX;
    while !text.is_char_boundary(cut) {
        cut += 1;
    }
    format!("...{}", &text[cut..]).replace('\n', "\n           ")
}

/// The command did not finish in time; it and its process group were killed.
#[derive(Debug)]
pub struct TimedOut {
    pub command: String,
    pub timeout: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "timed out after {:?}, killed its process group\n  command: {}",
            self.timeout, self.command
        )?;
        writeln!(f, "  stdout so far: {}", clip(&self.stdout))?;
        write!(f, "  stderr so far: {}", clip(&self.stderr))
    }
}

impl std::error::Error for TimedOut {}

/// A child process killed (SIGKILL) and reaped when dropped, also when the test panics: for a
/// process the test talks to through its own pipes or sockets, which [`Running`] (whose
/// stdout and stderr it collects) does not allow.
pub struct KilledOnDrop(pub Child);

impl std::ops::Deref for KilledOnDrop {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KilledOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server a test runs in the background: killed with its whole process group when dropped,
/// also when the test panics.
pub struct Background(Option<Running>);

impl Background {
    pub fn new(running: Running) -> Self {
        Background(Some(running))
    }

    pub fn running(&self) -> &Running {
        self.0.as_ref().expect("running until dropped")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            let _ = killpg(Pid::from_raw(running.pid()), Signal::SIGKILL);
            let _ = running.finish(Duration::from_secs(10));
        }
    }
}

/// A running command whose output is being collected.
pub struct Running {
    command: String,
    child: Child,
    started: Instant,
    stdout: Collector,
    stderr: Collector,
}

impl Running {
    /// Starts `command` as a new process group with piped stdout/stderr and no stdin.
    pub fn start(mut command: Command) -> std::io::Result<Running> {
        let text = describe(&command);
        let started = Instant::now();
        let mut child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = Collector::start(child.stdout.take().expect("piped stdout"));
        let stderr = Collector::start(child.stderr.take().expect("piped stderr"));
        Ok(Running {
            command: text,
            child,
            started,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the command has printed on stdout so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.text()
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.text()
    }

    /// Waits until stdout contains `needle`; `false` if the command exits or `within`
    /// passes first.
    pub fn wait_for_stdout(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.stdout.text().contains(needle) {
                return true;
            }
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return self.stdout.text().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Waits for the command to exit, killing its group after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Result<Outcome, TimedOut> {
        let deadline = self.started + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    let elapsed = self.started.elapsed();
                    let drain_deadline = Instant::now() + DRAIN_GRACE;
                    let out_closed = self.stdout.wait_closed(drain_deadline);
                    let err_closed = self.stderr.wait_closed(drain_deadline);
                    return Ok(Outcome {
                        command: self.command,
                        status,
                        stdout: self.stdout.text(),
                        stderr: self.stderr.text(),
                        elapsed,
                        output_left_open: !(out_closed && err_closed),
                    });
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                _ => {
                    let _ = killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
                    let _ = self.child.wait();
                    let drain_deadline = Instant::now() + DRAIN_GRACE;
                    self.stdout.wait_closed(drain_deadline);
                    self.stderr.wait_closed(drain_deadline);
                    return Err(TimedOut {
                        command: self.command,
                        timeout,
                        stdout: self.stdout.text(),
                        stderr: self.stderr.text(),
                    });
                }
            }
        }
    }

    /// Sends `signal` to the command's process only (not its group).
    pub fn signal(&self, signal: Signal) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid()), signal);
    }
}

/// Runs `command` to completion, killing it after `timeout`.
pub fn run(command: Command, timeout: Duration) -> Result<Outcome, TimedOut> {
    let text = describe(&command);
    match Running::start(command) {
        Ok(running) => running.finish(timeout),
        Err(err) => panic!("could not start {text}: {err}"),
    }
}

/// The command line as a shell would show it.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|arg| {
            let arg = arg.to_string_lossy();
            if !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+[]".contains(c))
            {
                arg.into_owned()
            } else {
                format!("'{}'", arg.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads a pipe to its end on a thread, sharing what arrived so far.
struct Collector {
    buffer: Arc<Mutex<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn start(mut pipe: impl Read + Send + 'static) -> Collector {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&buffer);
        let thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
        });
        Collector {
            buffer,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }

    /// Waits until the pipe's writers are all gone, or `deadline`; true if it closed.
    fn wait_closed(&mut self, deadline: Instant) -> bool {
        while let Some(thread) = &self.thread {
            if thread.is_finished() {
                let _ = self.thread.take().map(JoinHandle::join);
                return true;
            }
            if Instant::now() >= deadline {
                // The thread stays blocked on the pipe; it ends when the last writer does.
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_exit_code() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo out; echo err >&2; exit 3"]);
        let outcome = run(command, Duration::from_secs(10)).unwrap();
        assert_eq!(outcome.code(), Some(3));
        assert_eq!(outcome.stdout, "out\n");
        assert_eq!(outcome.stderr, "err\n");
        assert!(!outcome.output_left_open);
    }

    #[test]
    fn a_hung_command_is_killed_and_reported_with_its_output() {
        let mut command = Command::new("sh");
        command.args(["-c", "echo started; exec sleep 30"]);
        let started = Instant::now();
        let err = run(command, Duration::from_millis(500)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(err.stdout, "started\n");
        assert!(err.to_string().contains("timed out"), "{err}");
    }

    #[test]
    fn output_held_by_a_leftover_process_does_not_hang_the_run() {
        let mut command = Command::new("sh");
        // setsid puts the sleeper out of the group the timeout would kill.
        command.args(["-c", "setsid sleep 3 & echo done"]);
        let outcome = run(command, Duration::from_secs(10)).unwrap();
        assert!(outcome.output_left_open);
        assert_eq!(outcome.stdout, "done\n");
        assert!(outcome.elapsed < Duration::from_secs(4));
    }

    #[test]
    fn describe_quotes_what_a_shell_would_split() {
        let mut command = Command::new("sh");
        command.args(["-c", "exit 42"]);
        assert_eq!(describe(&command), "sh -c 'exit 42'");
    }
}
