//! Incoming traffic stolen into a session.
//!
//! The pod's namespace runs the "deployed" service on port 8080 (`tagged_httpd.py`,
//! answering `v1`); a session on the pod's target runs the "patched" copy on the same port
//! (`v2`); curl in the services namespace plays the pod's clients, connecting to the pod's
//! address. Each answer names the client address the server saw. After every test the pod's
//! nftables rule set is what it was before.

use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_net_tests::exec::Running;
use mirrord_net_tests::netfilter_state;
use mirrord_net_tests::topology::POD_V4;
use mirrord_net_tests::{tool, Invocation, Pod};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

pub(super) const PORT: u16 = 8080;
/// How soon a change (listener up or down, session gone) must show in where requests go.
pub(super) const SWITCH: Duration = Duration::from_secs(5);

/// A process group killed when the test ends, however it ends.
pub(super) struct Group(Option<Running>);

impl Group {
    pub(super) fn start(command: Command) -> Group {
        Group(Some(Running::start(command).expect("spawn")))
    }

    pub(super) fn running(&mut self) -> &mut Running {
        self.0.as_mut().expect("running")
    }

    /// What it said on stderr so far.
    pub(super) fn stderr(&self) -> String {
        self.0
            .as_ref()
            .map(|running| running.stderr_so_far())
            .unwrap_or_default()
    }

    pub(super) fn wait_for(&mut self, needle: &str) {
        let running = self.running();
        assert!(
            running.wait_for_stdout(needle, Duration::from_secs(30)),
            "no {needle:?}:\nstdout: {}\nstderr: {}",
            running.stdout_so_far(),
            running.stderr_so_far()
        );
    }

    pub(super) fn kill(&mut self) {
        if let Some(running) = self.0.take() {
            let _ = killpg(Pid::from_raw(running.pid()), Signal::SIGKILL);
            let _ = running.finish(Duration::from_secs(10));
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The deployed service, in the pod's network namespace.
pub(super) fn deployed(pod: &Pod) -> Group {
    let mut command = pod.pod_netns().command(&tool("python3")).unwrap();
    command.args([&pod.script("tagged_httpd.py"), &PORT.to_string(), "v1"]);
    let mut group = Group::start(command);
    group.wait_for("listening");
    group
}

/// The session, running `script` (sh) with `flags` for the client.
pub(super) fn session(pod: &Pod, flags: &[&str], script: &str) -> Group {
    let mut invocation = Invocation::session(pod, &["/bin/sh", "-c", script]).client_flag("-v");
    for flag in flags {
        invocation = invocation.client_flag(flag);
    }
    Group::start(invocation.command())
}

pub(super) fn patched(pod: &Pod) -> String {
    format!("exec python3 {} {PORT} v2", pod.script("tagged_httpd.py"))
}

/// One request from the services namespace: (the answer's tag, the client address the server
/// saw, curl's own address).
pub(super) fn get(pod: &Pod) -> Result<(String, String, String), String> {
    let mut command = pod.services_netns().command(&tool("curl")).unwrap();
    command.args([
        "-sS",
        "--max-time",
        "3",
        "-w",
        " %{local_ip}:%{local_port}",
        &format!("http://{POD_V4}:{PORT}/"),
    ]);
    let out = command.output().map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let words: Vec<&str> = text.split_whitespace().collect();
    match words[..] {
        [tag, seen, own] => Ok((tag.to_owned(), seen.to_owned(), own.to_owned())),
        _ => Err(format!("unexpected answer {text:?}")),
    }
}

fn tag(pod: &Pod) -> String {
    get(pod).unwrap_or_else(|err| panic!("{err}")).0
}

/// Waits until requests get `want`; every request meanwhile must get an answer (none
/// refused or lost). Returns how long it took.
pub(super) fn switches_to(pod: &Pod, want: &str, within: Duration, session: &Group) -> Duration {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let got = match get(pod) {
            Ok((tag, _, _)) => tag,
            Err(err) => {
                std::thread::sleep(Duration::from_millis(500));
                let stderr = session.0.as_ref().map(|r| r.stderr_so_far());
                let sockets = pod
                    .pod_netns()
                    .command(&tool("ss"))
                    .unwrap()
                    .args(["-tanp"])
                    .output()
                    .unwrap();
                panic!(
                    "{err}\nafter {seen:?}\nthe pod's sockets:\n{}\nthe session's stderr: {}",
                    String::from_utf8_lossy(&sockets.stdout),
                    stderr.unwrap_or_default()
                );
            }
        };
        if got == want {
            return start.elapsed();
        }
        seen.push(got);
        assert!(
            start.elapsed() < within,
            "requests did not switch to {want} within {within:?}: got {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn ruleset(pod: &Pod) -> String {
    netfilter_state::pod_nft_ruleset(pod)
}

pub(super) fn assert_ruleset_restored(pod: &Pod, before: &str) {
    let start = Instant::now();
    while ruleset(pod) != before {
        assert!(
            start.elapsed() < SWITCH,
            "the pod's rule set is not as before:\nbefore:\n{before}\nnow:\n{}",
            ruleset(pod)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn unfiltered_steal_takes_every_request_with_the_real_client_address_until_sigkill() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    assert_eq!(tag(&pod), "v1");

    let mut session = session(&pod, &["--steal", "8080"], &patched(&pod));
    session.wait_for("listening");
    switches_to(&pod, "v2", SWITCH, &session);
    assert!(
        ruleset(&pod).contains("mirrord-net-"),
        "the agent's table is in the pod's rule set:\n{}",
        ruleset(&pod)
    );
    for _ in 0..20 {
        let (tag, seen, own) = get(&pod).unwrap();
        assert_eq!(tag, "v2", "every request goes to the session");
        assert_eq!(seen, own, "the session's server sees the real client");
    }

    // SIGKILL the session's client: its agent dies, and with it its table.
    let killed = Instant::now();
    session.kill();
    let back = switches_to(&pod, "v1", SWITCH, &session);
    assert_ruleset_restored(&pod, &before);
    eprintln!(
        "requests back on the target {back:?} after SIGKILL (killed at +0, reaped after {:?})",
        killed.elapsed()
    );
}

#[test]
fn a_stolen_port_is_the_targets_while_the_session_does_not_listen() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let go = pod.dir().join("go");
    let stop = pod.dir().join("stop");
    let script = format!(
        "echo started; while [ ! -e {go} ]; do sleep 0.05; done; \
         python3 {server} {PORT} v2 {stop}; echo exited; sleep 600",
        go = go.display(),
        stop = stop.display(),
        server = pod.script("tagged_httpd.py"),
    );
    let mut session = session(&pod, &["--steal", "8080"], &script);
    session.wait_for("started");
    // The session is up but nothing listens in it: the target answers, nothing is refused.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        assert_eq!(tag(&pod), "v1");
    }
    assert_eq!(
        ruleset(&pod).matches("redirect").count(),
        0,
        "{}",
        ruleset(&pod)
    );

    // A listener that starts later takes the port.
    std::fs::write(&go, "").unwrap();
    session.wait_for("listening");
    let took = switches_to(&pod, "v2", SWITCH, &session);
    eprintln!("the session's new listener got the port after {took:?}");

    // And when it goes away, the target has it again.
    std::fs::write(&stop, "").unwrap();
    session.wait_for("exited");
    let back = switches_to(&pod, "v1", SWITCH, &session);
    eprintln!("the target got the port back {back:?} after the listener closed");
    for _ in 0..10 {
        assert_eq!(tag(&pod), "v1");
    }
    session.kill();
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn port_map_steals_the_targets_port_into_another_local_port() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let script = format!("exec python3 {} 9090 v2", pod.script("tagged_httpd.py"));
    let mut session = session(
        &pod,
        &["--steal", "8080", "--port-map", "9090:8080"],
        &script,
    );
    session.wait_for("listening");
    switches_to(&pod, "v2", SWITCH, &session);
    let (_, seen, own) = get(&pod).unwrap();
    assert_eq!(seen, own);
    session.kill();
    switches_to(&pod, "v1", SWITCH, &session);
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn steal_all_takes_the_ports_both_sides_serve() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let mut session = session(&pod, &["--steal-all"], &patched(&pod));
    session.wait_for("listening");
    switches_to(&pod, "v2", SWITCH, &session);
    session.kill();
    switches_to(&pod, "v1", SWITCH, &session);
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn a_port_both_stolen_and_mirrored_is_one_line() {
    let pod = Pod::start();
    let out = Invocation::session(&pod, &["true"])
        .client_flag("--mirror")
        .client_flag("8080")
        .client_flag("--steal")
        .client_flag("8080")
        .run();
    assert_eq!(out.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert!(lines[0].contains("both --steal and --mirror"), "{out}");
}

/// The flags of a session that steals [`PORT`] for the requests tagged
/// `X-Verifier-Run: KEY` (the verifier recipe).
pub(super) fn keyed_steal(key: &str) -> [&str; 6] {
    [
        "--steal",
        "8080",
        "--http-header-filter",
        "^X-Verifier-Run: {{ key }}$",
        "--key",
        key,
    ]
}

/// One request with `header` (`Name: value`, or none) to `path`: the answer's tag.
pub(super) fn tag_with(pod: &Pod, header: Option<&str>, path: &str) -> Option<String> {
    let mut command = pod.services_netns().command(&tool("curl")).unwrap();
    command.args(["-sS", "--max-time", "3"]);
    if let Some(header) = header {
        command.args(["-H", header]);
    }
    command.arg(format!("http://{POD_V4}:{PORT}{path}"));
    let out = command.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    out.status.success().then(|| {
        text.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    })
}

/// Waits until a request with `header` to `path` gets `want`; every request meanwhile must
/// be answered.
pub(super) fn matching_switches_to(pod: &Pod, header: Option<&str>, path: &str, want: &str) {
    let start = Instant::now();
    loop {
        let tag = tag_with(pod, header, path).expect("a request during the switch was lost");
        if tag == want {
            eprintln!("matching requests got {want} after {:?}", start.elapsed());
            return;
        }
        assert!(
            start.elapsed() < SWITCH,
            "matching requests did not switch to {want} within {SWITCH:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 100 matching and 100 other requests interleaved on one keep-alive connection: every
/// matching one answered by the session (which sees the real client), every other one by the
/// target, none lost.
pub(super) fn interleaved_on_one_connection(pod: &Pod, mode: &str, key: &str) {
    let mut command = pod.services_netns().command(&tool("python3")).unwrap();
    command.args([
        &pod.script("keepalive_requests.py"),
        &POD_V4.to_string(),
        &PORT.to_string(),
        mode,
        key,
        "100",
    ]);
    let started = Instant::now();
    let out = command.output().expect("python3");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    check_interleaved(&lines, "HTTP/1.1");
    eprintln!("200 interleaved requests on one connection in {took:?}");
}

/// The lines of 100 interleaved pairs ("match|other TAG SEEN OWN"): every matching request
/// answered by the session (`v2`, which sees the real client), every other by the target.
fn check_interleaved(lines: &[impl AsRef<str>], how: &str) {
    assert_eq!(lines.len(), 200, "{how}: {}", lines.len());
    for line in lines {
        let line = line.as_ref();
        match line.split(' ').collect::<Vec<_>>()[..] {
            ["match", tag, seen, own] => {
                assert_eq!(tag, "v2", "{how}: a matching request went to the target");
                assert_eq!(seen, own, "{how}: the session sees the real client");
            }
            ["other", tag, _, _] => {
                assert_eq!(tag, "v1", "{how}: another request went to the session")
            }
            _ => panic!("{how}: unexpected line {line:?}"),
        }
    }
}

#[test]
fn header_filter_steals_only_tagged_requests_on_one_keep_alive_connection() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let key = "run-7.a";
    let mut session = session(&pod, &keyed_steal(key), &patched(&pod));
    session.wait_for("listening");
    let header = format!("X-Verifier-Run: {key}");
    matching_switches_to(&pod, Some(&header), "/", "v2");
    // The key is regex-escaped: a value the unescaped `.` would match is not the session's.
    assert_eq!(
        tag_with(&pod, Some("X-Verifier-Run: run-7xa"), "/").as_deref(),
        Some("v1")
    );
    assert_eq!(
        tag_with(&pod, Some("x-verifier-run: run-7.a"), "/").as_deref(),
        Some("v2"),
        "header names are compared case-insensitively"
    );
    interleaved_on_one_connection(&pod, "header", key);

    session.kill();
    matching_switches_to(&pod, Some(&header), "/", "v1");
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn path_filter_steals_only_matching_paths_on_one_keep_alive_connection() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let mut session = session(
        &pod,
        &["--steal", "8080", "--http-path-filter", "^/api/"],
        &patched(&pod),
    );
    session.wait_for("listening");
    matching_switches_to(&pod, None, "/api/x", "v2");
    interleaved_on_one_connection(&pod, "path", "-");

    session.kill();
    matching_switches_to(&pod, None, "/api/x", "v1");
    assert_ruleset_restored(&pod, &before);
}

/// `pairs` tagged and untagged requests on one HTTP/2 connection (`prior` knowledge, or an
/// `upgrade` from HTTP/1.1), run by `h2_requests.py`: its lines, or why it failed.
fn h2_requests(pod: &Pod, key: &str, pairs: usize, mode: &str) -> Result<Vec<String>, String> {
    let mut command = pod.services_netns().command(&tool("python3")).unwrap();
    command.args([
        &pod.script("h2_requests.py"),
        &POD_V4.to_string(),
        &PORT.to_string(),
        key,
        &pairs.to_string(),
        mode,
    ]);
    let out = command.output().map_err(|err| err.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{}: {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(stdout.lines().map(str::to_owned).collect())
}

/// Waits until a tagged HTTP/2 request (prior knowledge: the deployed server alone takes no
/// upgrade) gets `want`; every request meanwhile must be answered.
fn h2_matching_switches_to(pod: &Pod, key: &str, want: &str) {
    let start = Instant::now();
    loop {
        let lines = h2_requests(pod, key, 1, "prior").expect("a request during the switch");
        if lines
            .first()
            .is_some_and(|l| l.starts_with(&format!("match {want} ")))
        {
            return;
        }
        assert!(
            start.elapsed() < SWITCH,
            "tagged requests did not switch to {want} within {SWITCH:?}: {lines:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The HTTP/2 services: the deployed `tagged_h2d.py` answering `v1` in the pod, and a
/// session running the patched one (`v2`) that steals the requests tagged with `key`, once
/// they reach it: `(deployed, session)`.
pub(super) fn h2_deployed_and_stolen(pod: &Pod, key: &str) -> (Group, Group) {
    let mut command = pod.pod_netns().command(&tool("python3")).unwrap();
    command.args([&pod.script("tagged_h2d.py"), &PORT.to_string(), "v1"]);
    let mut deployed = Group::start(command);
    deployed.wait_for("listening");
    let mut session = session(
        pod,
        &keyed_steal(key),
        &format!("exec python3 {} {PORT} v2", pod.script("tagged_h2d.py")),
    );
    session.wait_for("listening");
    h2_matching_switches_to(pod, key, "v2");
    (deployed, session)
}

/// The same as [`interleaved_on_one_connection`] with the HTTP/2 services: the deployed
/// `tagged_h2d.py` answering `v1` in the pod, the patched one answering `v2` in the session,
/// over prior knowledge and over `Upgrade: h2c`.
#[test]
fn header_filter_steals_only_tagged_requests_on_one_http2_connection_prior_knowledge_or_upgraded() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let key = "run-h2";
    let (mut deployed, mut session) = h2_deployed_and_stolen(&pod, key);
    for mode in ["prior", "upgrade"] {
        let lines = h2_requests(&pod, key, 100, mode).unwrap_or_else(|err| panic!("{mode}: {err}"));
        check_interleaved(&lines, mode);
    }

    session.kill();
    h2_matching_switches_to(&pod, key, "v1");
    deployed.kill();
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn a_bad_http_filter_is_one_line_before_anything_starts() {
    let pod = Pod::start();
    for (flags, needle) in [
        (
            &["--steal", "8080", "--http-path-filter", "^/api/("][..],
            "not a valid regular expression",
        ),
        (
            &["--steal", "8080", "--http-header-filter", "^X: {{ key }}$"][..],
            "no --key",
        ),
    ] {
        let mut invocation = Invocation::session(&pod, &["true"]);
        for flag in flags {
            invocation = invocation.client_flag(flag);
        }
        let out = invocation.run();
        assert_ne!(out.code(), Some(0), "{out}");
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].contains(needle), "{out}");
    }
}
