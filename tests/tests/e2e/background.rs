//! Background sessions: `up` starts one and returns, `exec --session` runs commands in it at
//! once (many in parallel), `ps` lists it, `down` ends it and every command in it; it is its
//! owner's only; a SIGKILLed holder leaves nothing; a dead agent ends it with one line; and
//! with `--json` every error class is one object with its `kind`.
//!
//! Each test has its own sessions directory (`MIRRORD_NET_RUNTIME_DIR`), so tests running in
//! parallel never see each other's sessions.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_net_tests::exec::{self, Outcome};
use mirrord_net_tests::leftovers::{Baseline, SessionNamespaces, PRINT_NAMESPACES};
use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::testdir::TestDir;
use mirrord_net_tests::{procfs, tool, Pod};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);
/// How soon after a session ends everything of it must be gone.
const GONE: Duration = Duration::from_secs(10);
const NOBODY: u32 = 65534;

/// A test's own sessions directory.
struct Sessions {
    _scratch: TestDir,
    dir: PathBuf,
}

impl Sessions {
    fn new(tag: &str) -> Sessions {
        let scratch = TestDir::create(&format!("mnet-bg-{}-{tag}", std::process::id()))
            .expect("scratch directory");
        let dir = scratch.join("sessions");
        Sessions {
            _scratch: scratch,
            dir,
        }
    }

    /// `mirrord-net ARGS` with this directory, as root.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(client_binary());
        command.args(args);
        command.env_clear();
        command
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .env("MIRRORD_NET_RUNTIME_DIR", &self.dir);
        for key in ["RUST_LOG", "RUST_BACKTRACE", "MIRRORD_NET_AGENT"] {
            if let Some(value) = std::env::var_os(key) {
                command.env(key, value);
            }
        }
        command
    }

    /// `mirrord-net ARGS` as the user `nobody`.
    fn as_nobody(&self, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut command = self.command(args);
        command.uid(NOBODY).gid(NOBODY).env("HOME", "/");
        command
    }

    #[track_caller]
    fn run(&self, args: &[&str]) -> Outcome {
        run(self.command(args))
    }

    /// `up --name NAME` on the pod's target; the session is downed when the guard drops.
    #[track_caller]
    fn up(&self, pod: &Pod, name: &str) -> (Up<'_>, Value) {
        let target = format!("pid/{}", pod.target_pid());
        let out = self.run(&[
            "up", "--name", name, "--target", &target, "--quiet", "--json",
        ]);
        let guard = Up {
            sessions: self,
            name: name.to_owned(),
        };
        let info: Value = serde_json::from_str(out.assert_success().trim())
            .unwrap_or_else(|err| panic!("up --json printed no JSON ({err}):\n{out}"));
        (guard, info)
    }

    #[track_caller]
    fn ps(&self) -> Vec<Value> {
        let out = self.run(&["ps", "--json"]);
        let value: Value = serde_json::from_str(out.assert_success().trim())
            .unwrap_or_else(|err| panic!("ps --json printed no JSON ({err}):\n{out}"));
        value["sessions"].as_array().expect("sessions").clone()
    }

    fn files(&self) -> Vec<String> {
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Ends its session when dropped (also when the test fails).
struct Up<'a> {
    sessions: &'a Sessions,
    name: String,
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        let _ = exec::run(
            self.sessions.command(&["down", &self.name]),
            Duration::from_secs(30),
        );
    }
}

#[track_caller]
fn run(command: Command) -> Outcome {
    match exec::run(command, TIMEOUT) {
        Ok(outcome) => outcome,
        Err(timed_out) => panic!("{timed_out}"),
    }
}

/// The one JSON error object on stderr.
#[track_caller]
fn json_error(out: &Outcome) -> Value {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr:\n{out}");
    let value: Value = serde_json::from_str(lines[0])
        .unwrap_or_else(|err| panic!("stderr is not JSON ({err}):\n{out}"));
    assert!(
        value["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "no message:\n{out}"
    );
    value["error"].clone()
}

#[track_caller]
fn assert_kind(out: &Outcome, kind: &str, code: i32) {
    let error = json_error(out);
    assert_eq!(error["kind"], kind, "{out}");
    assert_eq!(out.code(), Some(code), "{out}");
}

fn wait_until(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn up_exec_and_down_with_twenty_commands_in_parallel() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    let sessions = Sessions::new("twenty");
    let (guard, info) = sessions.up(&pod, "bg");
    assert_eq!(info["name"], "bg");
    assert_eq!(info["target"], format!("pid/{}", pod.target_pid()));
    assert_eq!(info["state"], "running");
    assert!(
        info["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == "10.213.0.2"),
        "{info}"
    );
    assert!(
        info["agent"].as_str().unwrap().starts_with("local pid "),
        "{info}"
    );

    // The session's namespaces, hostname and network, as the pod's.
    let out = sessions.run(&[
        "exec",
        "--session",
        "bg",
        "--",
        "/bin/sh",
        "-c",
        &format!("hostname; {PRINT_NAMESPACES}"),
    ]);
    let stdout = out.assert_success();
    assert_eq!(stdout.lines().next(), Some(pod.hostname()), "{out}");
    let namespaces = SessionNamespaces::parse(stdout).expect("namespaces printed");
    // Every command joins the same namespaces (no new session per command).
    let again = sessions.run(&[
        "exec",
        "--session",
        "bg",
        "--",
        "/bin/sh",
        "-c",
        PRINT_NAMESPACES,
    ]);
    assert_eq!(
        SessionNamespaces::parse(again.assert_success()),
        Some(namespaces.clone())
    );

    let curl = tool("curl");
    let running: Vec<_> = (0..20)
        .map(|i| {
            let script = format!("{curl} -sS http://web/ && exit {i}");
            exec::Running::start(sessions.command(&[
                "exec",
                "--session",
                "bg",
                "--",
                "/bin/sh",
                "-c",
                &script,
            ]))
            .expect("exec starts")
        })
        .collect();
    for (i, running) in running.into_iter().enumerate() {
        let out = running.finish(TIMEOUT).expect("exec finished");
        assert_eq!(
            out.code(),
            Some(i as i32),
            "the command's exit code is exec's:\n{out}"
        );
        assert_eq!(out.stdout, pod.index_body(), "{out}");
    }

    // A running command is counted by ps; `down` ends it with the session.
    let mut sleeper = exec::Running::start(sessions.command(&[
        "exec",
        "--session",
        "bg",
        "--",
        "/bin/sh",
        "-c",
        "echo started; exec sleep 60",
    ]))
    .expect("exec starts");
    assert!(
        sleeper.wait_for_stdout("started", TIMEOUT),
        "{}",
        sleeper.stderr_so_far()
    );
    let listed = sessions.ps();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["name"], "bg");
    assert_eq!(listed[0]["commands"], 1, "{listed:?}");
    let table = sessions.run(&["ps"]);
    let line = table
        .assert_success()
        .lines()
        .find(|line| line.starts_with("bg "))
        .unwrap_or_else(|| panic!("no line for bg:\n{table}"))
        .to_owned();
    assert!(
        line.contains("running") && line.contains("10.213.0.2"),
        "{line}"
    );

    // A second `up` of the same name is refused while it runs.
    let target = format!("pid/{}", pod.target_pid());
    let twice = sessions.run(&["up", "--name", "bg", "--target", &target, "--json"]);
    assert_kind(&twice, "session-exists", 1);

    let down = sessions.run(&["down", "bg"]);
    down.assert_success();
    let ended = sleeper
        .finish(GONE)
        .expect("the command ended with its session");
    assert_ne!(ended.code(), Some(0), "{ended}");
    assert!(
        ended.stderr.contains("session bg has ended") && ended.stderr.contains("down"),
        "the command is told why:\n{ended}"
    );
    drop(guard);
    assert!(sessions.ps().is_empty());
    baseline.assert_clean_within(Some(&pod), Some(&namespaces), GONE);
    assert!(
        wait_until(GONE, || sessions.files().is_empty()),
        "files left: {:?}",
        sessions.files()
    );
}

#[test]
fn another_user_can_neither_join_list_nor_end_a_session() {
    let pod = Pod::start();
    let sessions = Sessions::new("owner");
    let (_guard, _) = sessions.up(&pod, "mine");

    // The directory is the owner's alone.
    let out = run(sessions.as_nobody(&["exec", "--session", "mine", "--", "true"]));
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("not yours"), "{out}");
    assert_kind(&run(sessions.as_nobody(&["ps", "--json"])), "permission", 1);
    assert_kind(
        &run(sessions.as_nobody(&["down", "mine", "--json"])),
        "permission",
        1,
    );

    // Opened up by mistake, the holder still answers only its owner (SO_PEERCRED).
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sessions.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = sessions.dir.join("mine.sock");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = run(sessions.as_nobody(&["exec", "--session", "mine", "--", "true"]));
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(out.stderr.contains("belongs to uid 0"), "{out}");
    let out = run(sessions.as_nobody(&["down", "mine", "--json"]));
    assert_kind(&out, "permission", 1);
    std::fs::set_permissions(&sessions.dir, std::fs::Permissions::from_mode(0o700)).unwrap();

    let listed = sessions.ps();
    assert_eq!(
        listed.len(),
        1,
        "the session survived the attempts: {listed:?}"
    );
    assert_eq!(listed[0]["state"], "running");
}

#[test]
fn sigkill_of_the_holder_leaves_nothing() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    let sessions = Sessions::new("sigkill");
    let (_guard, info) = sessions.up(&pod, "doomed");
    let out = sessions.run(&[
        "exec",
        "--session",
        "doomed",
        "--",
        "/bin/sh",
        "-c",
        PRINT_NAMESPACES,
    ]);
    let namespaces = SessionNamespaces::parse(out.assert_success()).expect("namespaces");
    let live = baseline.leftovers(Some(&pod), Some(&namespaces));
    assert!(
        live.iter().any(|line| line.contains("agent process")),
        "no agent while the session runs; the check below would prove nothing: {live:?}"
    );
    assert!(sessions.files().contains(&"doomed.sock".to_owned()));

    let holder = info["holder_pid"].as_i64().expect("holder pid") as i32;
    kill(Pid::from_raw(holder), Signal::SIGKILL).expect("kill the holder");
    baseline.assert_clean_within(Some(&pod), Some(&namespaces), GONE);
    assert!(
        wait_until(GONE, || sessions.files().is_empty()),
        "runtime files left: {:?}",
        sessions.files()
    );
    assert!(sessions.ps().is_empty());
}

#[test]
fn a_killed_agent_ends_the_session_with_one_line_in_ps_and_to_its_commands() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    let sessions = Sessions::new("agent");
    let (guard, info) = sessions.up(&pod, "fragile");
    let mut sleeper = exec::Running::start(sessions.command(&[
        "exec",
        "--session",
        "fragile",
        "--",
        "/bin/sh",
        "-c",
        "echo started; exec sleep 60",
    ]))
    .expect("exec starts");
    assert!(
        sleeper.wait_for_stdout("started", TIMEOUT),
        "{}",
        sleeper.stderr_so_far()
    );

    let agent: i32 = info["agent"]
        .as_str()
        .and_then(|agent| agent.strip_prefix("local pid "))
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no agent pid in {info}"));
    kill(Pid::from_raw(agent), Signal::SIGKILL).expect("kill the agent");

    let out = sleeper
        .finish(Duration::from_secs(20))
        .expect("the command ended");
    assert_eq!(out.code(), Some(1), "{out}");
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line to the command:\n{out}");
    assert!(
        lines[0].contains("session fragile has ended") && lines[0].contains("agent"),
        "{out}"
    );

    let listed = sessions.ps();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["state"], "ended", "{listed:?}");
    assert!(
        listed[0]["reason"].as_str().unwrap().contains("agent"),
        "{listed:?}"
    );
    let table = sessions.run(&["ps"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.starts_with("fragile ") && l.contains("ended: ")),
        "{table}"
    );
    let late = sessions.run(&["exec", "--session", "fragile", "--", "true"]);
    assert_eq!(late.code(), Some(1), "{late}");
    assert!(late.stderr.contains("has ended"), "{late}");

    drop(guard);
    assert!(sessions.ps().is_empty());
    baseline.assert_clean_within(Some(&pod), None, GONE);
    assert!(
        wait_until(GONE, || sessions.files().is_empty()),
        "{:?}",
        sessions.files()
    );
}

#[test]
fn every_error_class_has_its_json_kind() {
    let sessions = Sessions::new("kinds");
    let gone = procfs::unused_pid();
    let target = format!("pid/{gone}");

    assert_kind(
        &sessions.run(&["up", "--json", "--name", "x", "--target", &target]),
        "target-not-found",
        1,
    );
    assert_kind(
        &sessions.run(&["env", "--json", "--target", &target]),
        "target-not-found",
        1,
    );
    assert_kind(
        &sessions.run(&["up", "--json", "--name", "a/b", "--target", "pid/1"]),
        "usage",
        2,
    );
    assert_kind(
        &sessions.run(&["ps", "--json", "--no-such-flag"]),
        "usage",
        2,
    );
    assert_kind(
        &sessions.run(&["down", "nothing", "--json"]),
        "session-not-found",
        1,
    );
    let missing = sessions.dir.with_file_name("missing.json");
    assert_kind(
        &sessions.run(&[
            "env",
            "--json",
            "-f",
            missing.to_str().unwrap(),
            "--target",
            "pid/1",
        ]),
        "bad-config",
        2,
    );
    assert_kind(
        &run(sessions.as_nobody(&["env", "--json", "--target", "pid/1"])),
        "permission",
        1,
    );
    // A target that exists here (pid 1 may not, in the test's PID namespace): this process.
    let me = format!("pid/{}", std::process::id());
    let mut command = sessions.command(&["env", "--json", "--target", &me]);
    command.env("MIRRORD_NET_AGENT", "/bin/false");
    assert_kind(&run(command), "agent-failed", 1);
    let mut command = sessions.command(&["env", "--json", "--target", &me]);
    command.env("MIRRORD_NET_AGENT", sessions.dir.join("no-agent"));
    assert_kind(&run(command), "environment", 1);
}
