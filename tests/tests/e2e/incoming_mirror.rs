//! Incoming traffic mirrored into a session.
//!
//! The pod's namespace runs the "deployed" service on port 8080 (`tagged_httpd.py`,
//! answering `v1` and the client address it saw); a session mirrors the port into its own
//! `logging_httpd.py`, which writes one line per request it gets (method, path, client
//! address, body length and digest); `mirror_requests.py` in the services namespace plays the
//! pod's clients, checks every answer is the target's own, and prints each request in the
//! logging server's words. So "the session got every request, from the real client, bytes
//! intact" is the two lists being equal. Mirroring adds nothing to the pod's rule set: it
//! is compared to the one before throughout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_net_tests::exec::Running;
use mirrord_net_tests::topology::POD_V4;
use mirrord_net_tests::{tool, Invocation, Pod};

use super::incoming::{assert_ruleset_restored, deployed, ruleset, Group, PORT, SWITCH};

/// How long the session may take to log what the target already answered.
const CATCH_UP: Duration = Duration::from_secs(20);
/// A POST body large enough to span many segments.
const BIG: &str = "307200";

/// A session with `flags`, running `script` (sh).
fn session(pod: &Pod, flags: &[&str], script: &str) -> Group {
    let mut invocation = Invocation::session(pod, &["/bin/sh", "-c", script]).client_flag("-v");
    for flag in flags {
        invocation = invocation.client_flag(flag);
    }
    Group::start(invocation.command())
}

/// The script of a session logging the requests it gets on `port` into `log`.
fn logging(pod: &Pod, port: u16, log: &Path) -> String {
    format!(
        "exec python3 {} {port} {}",
        pod.script("logging_httpd.py"),
        log.display()
    )
}

/// A session mirroring with `flags` into a logging server on `port`, once it listens and
/// the mirror is on.
fn mirroring(pod: &Pod, flags: &[&str], port: u16, name: &str) -> (Group, PathBuf) {
    let log = pod.dir().join(format!("{name}.log"));
    let mut group = session(pod, flags, &logging(pod, port, &log));
    group.wait_for("listening");
    wait_mirroring(pod, &log, name, &group);
    (group, log)
}

/// One GET from the services namespace on a new connection; the target must answer it.
fn probe(pod: &Pod, path: &str) {
    let out = pod
        .services_netns()
        .command(&tool("curl"))
        .unwrap()
        .args([
            "-sS",
            "--max-time",
            "3",
            &format!("http://{POD_V4}:{PORT}{path}"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("v1 "),
        "the target did not answer {path}: {out:?}"
    );
}

/// Probes on new connections until one shows in the session's log: from then on every new
/// connection is mirrored.
fn wait_mirroring(pod: &Pod, log: &Path, name: &str, session: &Group) {
    let start = Instant::now();
    for n in 0.. {
        let path = format!("/probe/{name}/{n}");
        probe(pod, &path);
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.contains(&format!(" {path} ")) {
                eprintln!("{name}: mirroring after {:?}", start.elapsed());
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{name}: nothing mirrored within 30 s; the session's stderr:\n{}",
            session.stderr()
        );
    }
}

fn requests_command(pod: &Pod, prefix: &str, counts: [usize; 3], tag: &str) -> Command {
    let mut command = pod.services_netns().command(&tool("python3")).unwrap();
    command.args([
        pod.script("mirror_requests.py"),
        POD_V4.to_string(),
        PORT.to_string(),
        prefix.to_owned(),
        counts[0].to_string(),
        counts[1].to_string(),
        counts[2].to_string(),
        BIG.to_owned(),
        tag.to_owned(),
    ]);
    command
}

/// Runs the clients: `counts` = keep-alive connections, requests on each, new connections.
/// Every answer must carry `tag`; returns the requests made, sorted.
fn requests(pod: &Pod, prefix: &str, counts: [usize; 3], tag: &str) -> Vec<String> {
    let started = Instant::now();
    let out = requests_command(pod, prefix, counts, tag)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "a request went wrong: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines: Vec<String> = stdout.lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), counts[0] * counts[1] + counts[2], "{stdout}");
    eprintln!("{} requests in {:?}", lines.len(), started.elapsed());
    lines.sort();
    lines
}

/// The session's log lines of `prefix`'s requests, sorted.
fn logged(log: &Path, prefix: &str) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let needle = format!(" /{prefix}/");
    let mut lines: Vec<String> = text
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Waits until the session logged exactly `made`.
fn assert_mirrored(log: &Path, prefix: &str, made: &[String]) {
    let start = Instant::now();
    loop {
        let got = logged(log, prefix);
        if got == made {
            eprintln!(
                "{} requests mirrored, the last {:?} after the clients were done",
                got.len(),
                start.elapsed()
            );
            return;
        }
        if start.elapsed() > CATCH_UP || got.len() > made.len() {
            let missing: Vec<&String> = made.iter().filter(|l| !got.contains(l)).collect();
            let extra: Vec<&String> = got.iter().filter(|l| !made.contains(l)).collect();
            panic!(
                "the session's log is not the requests made ({} made, {} logged)\nmissing: {:#?}\nunexpected: {:#?}",
                made.len(),
                got.len(),
                &missing[..missing.len().min(10)],
                &extra[..extra.len().min(10)],
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The pod namespace's packet sockets (`ss -0`), one line each.
fn packet_sockets(pod: &Pod) -> Vec<String> {
    let out = pod
        .pod_netns()
        .command(&tool("ss"))
        .unwrap()
        .args(["-0", "-a", "-n", "-H"])
        .output()
        .expect("ss");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// The pod namespace's TCP sockets of mirrord-net processes.
fn agent_tcp_sockets(pod: &Pod) -> Vec<String> {
    let out = pod
        .pod_netns()
        .command(&tool("ss"))
        .unwrap()
        .args(["-t", "-a", "-n", "-p", "-H"])
        .output()
        .expect("ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("mirrord-net"))
        .map(str::to_owned)
        .collect()
}

/// Waits until no packet socket and no mirrord-net TCP socket is left in the pod.
fn assert_nothing_left(pod: &Pod) {
    let start = Instant::now();
    loop {
        let (packets, tcp) = (packet_sockets(pod), agent_tcp_sockets(pod));
        if packets.is_empty() && tcp.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < SWITCH,
            "left in the pod:\npacket sockets: {packets:#?}\nTCP: {tcp:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mirror_copies_every_request_while_clients_get_the_target_unchanged() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    assert!(
        packet_sockets(&pod).is_empty(),
        "{:?}",
        packet_sockets(&pod)
    );
    let (mut session, log) = mirroring(&pod, &["--mirror", "8080"], PORT, "one");
    assert_eq!(ruleset(&pod), before, "mirroring changes no rule");
    assert_eq!(packet_sockets(&pod).len(), 1, "the agent's capture");

    // 4 keep-alive connections of 50 requests, each opening with a 300 KiB POST, and 50
    // requests on connections of their own.
    let made = requests(&pod, "all", [4, 50, 50], "v1");
    assert_mirrored(&log, "all", &made);

    session.kill();
    assert_nothing_left(&pod);
    assert_ruleset_restored(&pod, &before);
    probe(&pod, "/after");
}

#[test]
fn a_mirrored_port_is_left_alone_while_the_session_does_not_listen() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let go = pod.dir().join("go");
    let log = pod.dir().join("late.log");
    let script = format!(
        "echo started; while [ ! -e {go} ]; do sleep 0.05; done; {}",
        logging(&pod, PORT, &log),
        go = go.display(),
    );
    let mut session = session(&pod, &["--mirror", "8080"], &script);
    session.wait_for("started");
    // The session is up but nothing listens in it: no capture, nothing mirrored.
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        requests(&pod, "early", [1, 5, 5], "v1");
    }
    assert!(
        packet_sockets(&pod).is_empty(),
        "{:?}",
        packet_sockets(&pod)
    );
    assert_eq!(ruleset(&pod), before);

    // A listener that starts later gets the connections begun after it.
    std::fs::write(&go, "").unwrap();
    session.wait_for("listening");
    wait_mirroring(&pod, &log, "late", &session);
    let made = requests(&pod, "late", [1, 10, 10], "v1");
    assert_mirrored(&log, "late", &made);
    assert!(logged(&log, "early").is_empty(), "nothing from before");
    session.kill();
    assert_nothing_left(&pod);
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn two_sessions_mirroring_one_port_both_get_every_request() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let (mut a, log_a) = mirroring(&pod, &["--mirror", "8080"], PORT, "a");
    let (mut b, log_b) = mirroring(&pod, &["--mirror", "8080"], PORT, "b");
    assert_eq!(
        packet_sockets(&pod).len(),
        2,
        "each agent captures on its own"
    );
    let made = requests(&pod, "both", [2, 25, 20], "v1");
    assert_mirrored(&log_a, "both", &made);
    assert_mirrored(&log_b, "both", &made);
    a.kill();
    // The other session goes on alone.
    let made = requests(&pod, "after", [1, 10, 10], "v1");
    assert_mirrored(&log_b, "after", &made);
    b.kill();
    assert_nothing_left(&pod);
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn a_session_sigkilled_mid_run_leaves_the_target_untouched() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let (mut session, log) = mirroring(&pod, &["--mirror", "8080"], PORT, "killed");
    // Clients keep going through the kill; every one of their requests must get the target's
    // answer.
    let clients = Running::start(requests_command(&pod, "through", [3, 60, 150], "v1")).unwrap();
    let start = Instant::now();
    while logged(&log, "through").len() < 20 {
        assert!(start.elapsed() < CATCH_UP, "nothing mirrored");
        std::thread::sleep(Duration::from_millis(20));
    }
    session.kill();
    let outcome = clients
        .finish(Duration::from_secs(120))
        .expect("the clients");
    assert_eq!(
        outcome.code(),
        Some(0),
        "a client request failed across the SIGKILL: {outcome}"
    );
    assert_eq!(outcome.stdout.lines().count(), 3 * 60 + 150);
    assert_nothing_left(&pod);
    assert_ruleset_restored(&pod, &before);
    probe(&pod, "/after");
}

#[test]
fn mirror_all_mirrors_the_ports_both_sides_serve() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let (mut session, log) = mirroring(&pod, &["--mirror-all"], PORT, "all");
    let made = requests(&pod, "every", [1, 20, 10], "v1");
    assert_mirrored(&log, "every", &made);
    session.kill();
    assert_nothing_left(&pod);
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn the_config_files_mirror_mode_with_a_port_mapping() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let config = pod.dir().join("mirrord.json");
    std::fs::write(
        &config,
        r#"{"feature": {"network": {"incoming": {
            "mode": "mirror", "ports": [8080], "port_mapping": [[9090, 8080]]
        }}}}"#,
    )
    .unwrap();
    let (mut session, log) = mirroring(&pod, &["-f", config.to_str().unwrap()], 9090, "file");
    let made = requests(&pod, "mapped", [1, 20, 10], "v1");
    assert_mirrored(&log, "mapped", &made);
    session.kill();
    assert_nothing_left(&pod);
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn a_port_another_session_steals_is_mirrored_too() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let (mut mirror, log) = mirroring(&pod, &["--mirror", "8080"], PORT, "copy");
    let mut thief = session(
        &pod,
        &["--steal", "8080"],
        &format!("exec python3 {} {PORT} v2", pod.script("tagged_httpd.py")),
    );
    thief.wait_for("listening");
    let start = Instant::now();
    while !requests_command(&pod, "probe", [0, 0, 1], "v2")
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(start.elapsed() < SWITCH, "the steal did not take the port");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The capture sees the clients' segments as they arrive, before the redirect: the
    // mirroring session gets the requests the stealing one answers.
    let made = requests(&pod, "stolen", [2, 20, 20], "v2");
    assert_mirrored(&log, "stolen", &made);
    thief.kill();
    mirror.kill();
    assert_nothing_left(&pod);
    assert_ruleset_restored(&pod, &before);
}
