//! A long-running fixture process (a server, the target) and its whole process group.
//!
//! Each one is spawned as the leader of a new process group, with stdout and stderr going to
//! a log file in the pod's directory. Stopping sends the process's own stop signal to the
//! whole group (so a server's workers go too), waits for a grace period, then SIGKILLs the
//! group. Children are reaped with `waitpid(-pgid)`, which also reaps group members that
//! were re-parented to the test process.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How long a process gets to exit on its stop signal before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct Supervised {
    name: String,
    pid: i32,
    stop_signal: Signal,
    log: PathBuf,
    exit: Option<WaitStatus>,
    stopped: bool,
}

impl Supervised {
    /// Spawns `command` as a new process group, logging to `log`. `stop_signal` is what asks
    /// it to shut down cleanly (PostgreSQL wants SIGINT for a fast shutdown).
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        stop_signal: Signal,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {command:?}"))?;
        Ok(Supervised {
            name: name.to_string(),
            pid: child.id() as i32,
            stop_signal,
            log: log.to_path_buf(),
            exit: None,
            stopped: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The process group every process this one started belongs to (unless it left it).
    pub fn pgid(&self) -> i32 {
        self.pid
    }

    /// Fails, with the end of its log, if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.reap();
        if let Some(status) = self.exit {
            bail!(
                "{} exited early ({status:?}); its log ends:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// The last `lines` lines of the process's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Stops the whole process group: the stop signal, [`STOP_GRACE`], then SIGKILL.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let group = Pid::from_raw(self.pgid());
        let _ = killpg(group, self.stop_signal);
        if !self.wait_group_gone(STOP_GRACE) {
            let _ = killpg(group, Signal::SIGKILL);
            self.wait_group_gone(Duration::from_secs(5));
        }
    }

    fn wait_group_gone(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            self.reap();
            if killpg(Pid::from_raw(self.pgid()), None) == Err(Errno::ESRCH) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Reaps every exited child of ours in the group, remembering the leader's status.
    fn reap(&mut self) {
        loop {
            match waitpid(Pid::from_raw(-self.pgid()), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    if status.pid() == Some(Pid::from_raw(self.pid)) {
                        self.exit = Some(status);
                    }
                }
            }
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop();
    }
}
