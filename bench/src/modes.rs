//! The ways a client runs, and running one.
//!
//! - **direct**: `nsenter` into the target's network, mount and UTS namespaces — the client
//!   sits where the target sits, so this is the physical limit of the path;
//! - **mirrord-net**: `mirrord-net exec -q --as-root --target pid/<target> -- …`, the local
//!   agent serving the session's TUN itself (the default packet path of local targets);
//! - **mirrord-net-routed**: the same with `MIRRORD_NET_LOCAL_PACKETS=routed`: the session's
//!   namespace joined to the pod's by a veth, its IPv4 flows to other hosts routed and
//!   masqueraded by the pod's namespace, no user-space hop;
//! - **mirrord-net-quic**: the same with `MIRRORD_NET_LOCAL_PACKETS=quic`: every packet
//!   relayed by the client as a QUIC datagram, the path a remote agent's packets take;
//! - **mirrord-net-1500**: the QUIC path across a veth of MTU 1500 between the client's and
//!   the agent's own namespaces, what a cluster agent's direct transport sees
//!   ([`mirrord_net_tests::cluster_path`]);
//! - **mirrord-net-stream**: the QUIC path framed on a TCP connection to the agent
//!   (`MIRRORD_NET_LOCAL_TRANSPORT=stream`), the framing a Kubernetes port-forward carries;
//! - **wrapper**: any command line the user gives (e.g. a preload tool), run by `sh -c` with
//!   the client's arguments appended; `{target_pid}`, `{pod_netns}`, `{services_netns}` and
//!   `{pod_dir}` in it are replaced first (see `bench/wrappers/`).
//!
//! Direct and mirrord-net commands come from the tests crate's [`Invocation`], so the bench
//! starts them exactly as the end-to-end tests do (clean environment, system PATH). Every run
//! leads its own process group, which a watchdog kills when the run overruns its deadline and
//! the Ctrl-C handler kills on interruption.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mirrord_net_tests::procfs;
use mirrord_net_tests::{Invocation, Packets};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::cleanup;
use crate::job::{Answer, Job};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Direct,
    MirrordNet,
    MirrordNetRouted,
    MirrordNetQuic,
    MirrordNet1500,
    MirrordNetStream,
    Wrapper,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::MirrordNet => "mirrord-net",
            Mode::MirrordNetRouted => "mirrord-net-routed",
            Mode::MirrordNetQuic => "mirrord-net-quic",
            Mode::MirrordNet1500 => "mirrord-net-1500",
            Mode::MirrordNetStream => "mirrord-net-stream",
            Mode::Wrapper => "wrapper",
        }
    }

    /// The packet path of a mirrord-net mode.
    fn packets(self) -> Packets {
        match self {
            Mode::MirrordNet => Packets::Tun,
            Mode::MirrordNetRouted => Packets::Routed,
            _ => Packets::Quic,
        }
    }

    /// Whether this is a mirrord-net session (whatever its packet path).
    pub fn is_mirrord_net(self) -> bool {
        matches!(
            self,
            Mode::MirrordNet
                | Mode::MirrordNetRouted
                | Mode::MirrordNetQuic
                | Mode::MirrordNet1500
                | Mode::MirrordNetStream
        )
    }

    /// Whether the mode differs from [`Mode::MirrordNet`] only in the packets' path (so
    /// workloads that move no packets, such as file reads, are not run in it again).
    pub fn is_packet_path_variant(self) -> bool {
        matches!(
            self,
            Mode::MirrordNetRouted
                | Mode::MirrordNetQuic
                | Mode::MirrordNet1500
                | Mode::MirrordNetStream
        )
    }
}

/// What every run needs to know about the fixture and the options.
#[derive(Debug, Clone)]
pub struct Launcher {
    pub target_pid: u32,
    pub pod_netns: String,
    pub services_netns: String,
    pub pod_dir: PathBuf,
    pub exe: PathBuf,
    pub wrapper: Option<String>,
    pub verbose: bool,
}

/// What one run produced.
#[derive(Debug, Default)]
pub struct Run {
    pub answer: Answer,
    pub wall: Duration,
    pub stderr: String,
    /// Resident memory while idle flows were open, KiB: (client, agent).
    pub rss_kib: Option<(u64, Option<u64>)>,
    /// CPU time of the mirrord-net client and its agent together when the job answered.
    pub cpu_s: Option<f64>,
}

impl Launcher {
    /// `program args…` in `mode`, ready to spawn.
    fn command(&self, mode: Mode, args: &[&str]) -> Result<Command> {
        Ok(match mode {
            Mode::Direct => {
                cleanup::with_fixture(|fixture| Invocation::in_pod(fixture.pod(), args).command())?
            }
            Mode::MirrordNet
            | Mode::MirrordNetRouted
            | Mode::MirrordNetQuic
            | Mode::MirrordNet1500
            | Mode::MirrordNetStream => {
                let packets = mode.packets();
                let mut invocation = Invocation::session_on(self.target_pid, args)
                    .client_flag("--as-root")
                    .packets(packets);
                if mode == Mode::MirrordNetStream {
                    invocation = invocation.env("MIRRORD_NET_LOCAL_TRANSPORT", "stream");
                }
                if self.verbose {
                    invocation = invocation.client_flag("-v");
                }
                let command = invocation.command();
                if mode == Mode::MirrordNet1500 {
                    cleanup::with_fixture(|fixture| fixture.cluster_link().wrap(&command))??
                } else {
                    command
                }
            }
            Mode::Wrapper => {
                let wrapper = self
                    .wrapper
                    .as_deref()
                    .context("no --wrapper given")?
                    .replace("{target_pid}", &self.target_pid.to_string())
                    .replace("{pod_netns}", &self.pod_netns)
                    .replace("{services_netns}", &self.services_netns)
                    .replace("{pod_dir}", &self.pod_dir.to_string_lossy());
                let mut command = Command::new("/bin/sh");
                command
                    .arg("-c")
                    .arg(format!("{wrapper} \"$@\""))
                    .arg("mirrord-net-bench")
                    .args(args);
                command
            }
        })
    }

    /// Runs the client with `job` in `mode`, within `timeout`.
    pub fn client(&self, mode: Mode, job: &Job, timeout: Duration) -> Result<Run> {
        let exe = self.exe.to_string_lossy().into_owned();
        let job_text = serde_json::to_string(job)?;
        let command = self.command(mode, &[&exe, "__client", &job_text])?;
        let holds_flows = matches!(job, Job::IdleFlows { .. });
        let cpu = std::cell::RefCell::new(None);
        let mut done = run(command, timeout, |child_pid, stdout, stdin| {
            let answer = read_answer(stdout)?;
            if mode.is_mirrord_net() {
                *cpu.borrow_mut() = self.cpu_s(child_pid);
            }
            let mut rss = None;
            if holds_flows {
                // Let the stacks settle (buffers shrink, timers fire) before reading memory.
                std::thread::sleep(Duration::from_secs(1));
                rss = Some(self.rss(mode, child_pid));
                writeln!(stdin, "done")?;
            }
            Ok((answer, rss))
        })?;
        done.cpu_s = cpu.into_inner();
        Ok(done)
    }

    /// Runs `job` (an incoming one) in the services namespace: a client of the target's own
    /// service from outside the pod, whatever the mode.
    pub fn incoming_client(&self, job: &Job, timeout: Duration) -> Result<Run> {
        let exe = self.exe.to_string_lossy().into_owned();
        let job_text = serde_json::to_string(job)?;
        let mut command =
            cleanup::with_fixture(|fixture| fixture.pod().services_netns().command(&exe))??;
        command.args(["__client", &job_text]);
        run(command, timeout, |_, stdout, _| {
            Ok((read_answer(stdout)?, None))
        })
    }

    /// Starts a session that steals the target's incoming service by the bench's header,
    /// serving it with its own copy (answers say `session`). Returns once started; the
    /// incoming job waits until the steal is in place.
    pub fn stealing_session(&self, timeout: Duration) -> Result<StealingSession> {
        let port = crate::ports::INCOMING.to_string();
        let filter = format!(
            "^{}: {}$",
            crate::ports::STEAL_HEADER,
            crate::ports::STEAL_VALUE
        );
        let flags = ["--steal", &port, "--http-header-filter", &filter];
        self.incoming_session(&flags, "stealing-session.log", timeout)
    }

    /// Starts a session that mirrors the target's incoming service into its own copy;
    /// returns once the agent reports the port mirrored (its client's `-v` log line), so
    /// the run's connection is one the session gets a copy of.
    pub fn mirroring_session(&self, timeout: Duration) -> Result<StealingSession> {
        let port = crate::ports::INCOMING.to_string();
        let session =
            self.incoming_session(&["-v", "--mirror", &port], "mirroring-session.log", timeout)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let log = std::fs::read_to_string(&session.log_path).unwrap_or_default();
            if log.contains("mirrored into the session") {
                return Ok(session);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the session did not mirror in 20 s; its log:\n{}",
                    session.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn incoming_session(
        &self,
        flags: &[&str],
        log_name: &str,
        timeout: Duration,
    ) -> Result<StealingSession> {
        let exe = self.exe.to_string_lossy().into_owned();
        let mut invocation =
            Invocation::session_on(self.target_pid, &[&exe, "__serve-incoming", "session"])
                .client_flag("--as-root");
        for flag in flags {
            invocation = invocation.client_flag(flag);
        }
        let mut command = invocation.command();
        let log_path = self.pod_dir.join(log_name);
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        cleanup::set_background(child.id() as i32);
        Ok(StealingSession {
            child,
            log_path,
            stop_within: timeout,
        })
    }

    /// CPU seconds (user + system) of the `mirrord-net` process `pid` and its agent so far.
    fn cpu_s(&self, pid: i32) -> Option<f64> {
        let agent = procfs::all()
            .into_iter()
            .filter(|proc| proc.comm.starts_with("mirrord-net-age"))
            .find(|proc| descends_from(proc.pid, pid))?;
        Some(cpu_seconds(pid)? + cpu_seconds(agent.pid)?)
    }

    /// Wall time of `true` started in `mode`, from spawn to exit.
    pub fn start_true(&self, mode: Mode, timeout: Duration) -> Result<Duration> {
        let command = self.command(mode, &["true"])?;
        Ok(run(command, timeout, |_, _, _| Ok((Answer::default(), None)))?.wall)
    }

    /// The wall times of `count` runs of `true` in a background session: one `mirrord-net up`
    /// on the target, then `exec --session NAME -- true` each time, then `down`. Direct mode
    /// runs `true` in the pod, as session start does.
    pub fn background_exec(
        &self,
        mode: Mode,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Duration>> {
        if !mode.is_mirrord_net() {
            return (0..count).map(|_| self.start_true(mode, timeout)).collect();
        }
        let dir = std::env::temp_dir().join(format!("mnet-bench-bg-{}", std::process::id()));
        let dir_text = dir.to_string_lossy().into_owned();
        let name = "bench";
        let packets = mode.packets();
        let target = format!("pid/{}", self.target_pid);
        let up = Invocation::client(&[
            "up",
            "--name",
            name,
            "--target",
            &target,
            "--quiet",
            "--as-root",
        ])
        .env("MIRRORD_NET_RUNTIME_DIR", &dir_text)
        .packets(packets)
        .command();
        let down = || {
            let command = Invocation::client(&["down", name])
                .env("MIRRORD_NET_RUNTIME_DIR", &dir_text)
                .command();
            let _ = run(command, timeout, |_, _, _| Ok((Answer::default(), None)));
            let _ = std::fs::remove_dir(&dir);
        };
        if let Err(err) = run(up, timeout, |_, _, _| Ok((Answer::default(), None))) {
            down();
            return Err(err.context("mirrord-net up"));
        }
        let walls = (0..count)
            .map(|_| {
                let command = Invocation::client(&["exec", "--session", name, "--", "true"])
                    .env("MIRRORD_NET_RUNTIME_DIR", &dir_text)
                    .command();
                Ok(run(command, timeout, |_, _, _| Ok((Answer::default(), None)))?.wall)
            })
            .collect();
        down();
        walls
    }

    /// (client, agent) resident memory in KiB. For mirrord-net the client is the
    /// `mirrord-net` process and the agent its `mirrord-net-agent` child; otherwise the
    /// client is the process started, and there is no agent.
    fn rss(&self, mode: Mode, pid: i32) -> (u64, Option<u64>) {
        let client = rss_kib(pid).unwrap_or(0);
        let agent = mode
            .is_mirrord_net()
            .then(|| {
                procfs::all()
                    .into_iter()
                    .filter(|proc| proc.comm.starts_with("mirrord-net-age"))
                    .find(|proc| descends_from(proc.pid, pid))
                    .and_then(|proc| rss_kib(proc.pid))
            })
            .flatten();
        (client, agent)
    }
}

/// The client's one line of output: its [`Answer`].
fn read_answer(stdout: &mut BufReader<std::process::ChildStdout>) -> Result<Answer> {
    let mut line = String::new();
    stdout.read_line(&mut line)?;
    serde_json::from_str(line.trim()).with_context(|| format!("the client printed {line:?}"))
}

/// A session stealing (or mirroring) the target's incoming service, for the incoming rows.
pub struct StealingSession {
    child: std::process::Child,
    log_path: PathBuf,
    stop_within: Duration,
}

impl StealingSession {
    /// Ends the session as `kill` would (SIGTERM to the client, passed on to its command) and
    /// waits for it; fails (with its log) if it had died before.
    pub fn end(mut self) -> Result<()> {
        let pid = Pid::from_raw(self.child.id() as i32);
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the stealing session ended early ({status}); its log:\n{}",
                self.log_tail()
            );
        }
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + self.stop_within;
        while self.child.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = self.child.wait();
                cleanup::set_background(0);
                bail!(
                    "the stealing session did not end in {:?}; its log:\n{}",
                    self.stop_within,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = killpg(pid, Signal::SIGKILL);
        cleanup::set_background(0);
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for StealingSession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
            cleanup::set_background(0);
        }
    }
}

fn descends_from(mut pid: i32, ancestor: i32) -> bool {
    for _ in 0..64 {
        if pid == ancestor {
            return true;
        }
        match procfs::stat(pid) {
            Some(proc) if proc.ppid > 1 => pid = proc.ppid,
            _ => return false,
        }
    }
    false
}

/// User + system CPU time of process `pid` (all its threads), seconds.
fn cpu_seconds(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command's closing parenthesis start at field 3 (state); utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

type Talk<'a> = dyn FnOnce(
        i32,
        &mut BufReader<std::process::ChildStdout>,
        &mut std::process::ChildStdin,
    ) -> Result<(Answer, Option<(u64, Option<u64>)>)>
    + 'a;

/// Spawns `command` as its own process group, lets `talk` read its stdout and write its stdin
/// while it runs, and waits for it; a watchdog kills the group at `timeout`.
fn run(
    mut command: Command,
    timeout: Duration,
    talk: impl FnOnce(
        i32,
        &mut BufReader<std::process::ChildStdout>,
        &mut std::process::ChildStdin,
    ) -> Result<(Answer, Option<(u64, Option<u64>)>)>,
) -> Result<Run> {
    let talk: Box<Talk> = Box::new(talk);
    let start = Instant::now();
    let mut child = command
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let pid = child.id() as i32;
    cleanup::set_running(pid);
    let (cancel, cancelled) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if cancelled.recv_timeout(timeout) == Err(mpsc::RecvTimeoutError::Timeout) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            return true;
        }
        false
    });
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let talked = talk(pid, &mut stdout, &mut stdin);
    drop(stdin);
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let status = child.wait()?;
    let wall = start.elapsed();
    let _ = cancel.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    // Whatever the run left in its group (nothing, normally) goes with it.
    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    cleanup::set_running(0);
    let stderr = stderr_reader.join().unwrap_or_default();
    if timed_out {
        bail!("timed out after {timeout:?}; stderr:\n{}", tail(&stderr));
    }
    if !status.success() {
        let last = stderr.lines().last().unwrap_or_default();
        bail!("{status}: {last}\nstderr:\n{}", tail(&stderr));
    }
    let (answer, rss_kib) = talked.with_context(|| format!("stderr:\n{}", tail(&stderr)))?;
    Ok(Run {
        answer,
        wall,
        stderr,
        rss_kib,
        cpu_s: None,
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
