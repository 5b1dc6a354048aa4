//! Many sessions stealing one port of one target at once, each with its own HTTP filter.
//!
//! The pod runs the "deployed" service on port 8080 (`v1`); each session runs its own
//! "patched" copy answering its own tag (`v2-a`, `v2-b`...), stealing the port with a header
//! filter on `X-Run`; curl in the services namespace plays the pod's clients. The sessions'
//! agents share the port (the first one routes for all, the others register with it); a
//! request goes to the earliest session whose filter matches it, else to the target. After
//! every test the pod's nftables rule set is what it was before.

use std::time::{Duration, Instant};

use mirrord_net_tests::topology::POD_V4;
use mirrord_net_tests::{tool, Invocation, Pod};

use super::incoming::{
    assert_ruleset_restored, deployed, interleaved_on_one_connection, keyed_steal, ruleset, Group,
    PORT, SWITCH,
};

/// A session stealing the port with `flags`, its server answering `tag`, once it listens.
fn sharing(pod: &Pod, flags: &[&str], tag: &str) -> Group {
    let script = format!(
        "exec python3 {} {PORT} {tag}",
        pod.script("tagged_httpd.py")
    );
    let mut invocation = Invocation::session(pod, &["/bin/sh", "-c", &script]);
    for flag in flags {
        invocation = invocation.client_flag(flag);
    }
    let mut group = Group::start(invocation.command());
    group.wait_for("listening");
    group
}

/// A session whose filter takes `X-Run: <key>` and `X-Run: <one of also>`.
fn filtered(pod: &Pod, key: &str, also: &str, tag: &str) -> Group {
    filtered_with(pod, key, also, tag, &[])
}

fn filtered_with(pod: &Pod, key: &str, also: &str, tag: &str, more: &[&str]) -> Group {
    let filter = format!("^X-Run: ({{{{ key }}}}|{also})$");
    let flags: Vec<&str> = more
        .iter()
        .copied()
        .chain([
            "--steal",
            "8080",
            "--http-header-filter",
            &filter,
            "--key",
            key,
        ])
        .collect();
    sharing(pod, &flags, tag)
}

/// One request with `X-Run: <run>` (or none): the answer's tag, or what went wrong.
pub(super) fn ask(pod: &Pod, run: Option<&str>) -> Result<String, String> {
    let mut command = pod.services_netns().command(&tool("curl")).unwrap();
    command.args(["-sS", "--max-time", "3"]);
    if let Some(run) = run {
        command.args(["-H", &format!("X-Run: {run}")]);
    }
    command.arg(format!("http://{POD_V4}:{PORT}/"));
    let out = command.output().map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl with X-Run {run:?} failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

type Expected<'a> = [(Option<&'a str>, &'a str)];

/// The sessions' stderr, for a failure's message.
fn said(sessions: &[&Group]) -> String {
    sessions
        .iter()
        .enumerate()
        .map(|(i, group)| format!("--- session {i}'s stderr:\n{}", group.stderr()))
        .collect()
}

/// Waits until every request of `expected` gets its tag in one round; every request
/// meanwhile must be answered. Returns how long it took.
fn settles(pod: &Pod, expected: &Expected, within: Duration, sessions: &[&Group]) -> Duration {
    let start = Instant::now();
    loop {
        let mut wrong = Vec::new();
        for &(run, want) in expected {
            let got = ask(pod, run).unwrap_or_else(|err| {
                panic!(
                    "a request was lost after {:?}: {err}\n{}",
                    start.elapsed(),
                    said(sessions)
                )
            });
            if got != want {
                wrong.push(format!("X-Run {run:?}: {got}, not {want}"));
            }
        }
        if wrong.is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "requests did not settle within {within:?}: {wrong:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Three clients at once, each sending `rounds` rounds of `expected`: every answer as
/// expected.
fn concurrently(pod: &Pod, expected: &Expected, rounds: usize) {
    std::thread::scope(|scope| {
        for client in 0..3 {
            scope.spawn(move || {
                for round in 0..rounds {
                    for &(run, want) in expected {
                        let got = ask(pod, run).unwrap_or_else(|err| panic!("{err}"));
                        assert_eq!(
                            got, want,
                            "client {client}, round {round}: X-Run {run:?} went to the wrong place"
                        );
                    }
                }
            });
        }
    });
}

#[test]
fn three_sessions_with_their_own_keys_share_a_port_and_outlive_the_routers_sigkill() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    // A begins stealing first (and routes the port), then B, then C. `all` matches every
    // session's filter, `bc` B's and C's: the session that began first gets them.
    let mut a = filtered_with(&pod, "key-a", "all", "v2-a", &["-v"]);
    settles(&pod, &[(Some("key-a"), "v2-a")], SWITCH, &[]);
    let mut b = filtered_with(&pod, "key-b", "all|bc", "v2-b", &["-v"]);
    settles(&pod, &[(Some("key-b"), "v2-b")], SWITCH, &[]);
    let mut c = filtered_with(&pod, "key-c", "all|bc", "v2-c", &["-v"]);
    settles(&pod, &[(Some("key-c"), "v2-c")], SWITCH, &[]);
    let expected = [
        (Some("key-a"), "v2-a"),
        (Some("key-b"), "v2-b"),
        (Some("key-c"), "v2-c"),
        (Some("all"), "v2-a"),
        (Some("bc"), "v2-b"),
        (Some("key-x"), "v1"),
        (None, "v1"),
    ];
    let started = Instant::now();
    concurrently(&pod, &expected, 10);
    eprintln!(
        "{} requests from three clients at once in {:?}",
        3 * 10 * expected.len(),
        started.elapsed()
    );
    let rules = ruleset(&pod);
    assert_eq!(
        rules.matches("redirect").count(),
        1,
        "one agent redirects the port for all three:\n{rules}"
    );

    // SIGKILL the router's session: B and C race for the port, one routes, the other
    // registers with it; A's key goes to the target, and B still comes before C.
    a.kill();
    let after = [
        (Some("key-a"), "v1"),
        (Some("key-b"), "v2-b"),
        (Some("key-c"), "v2-c"),
        (Some("all"), "v2-b"),
        (Some("bc"), "v2-b"),
        (None, "v1"),
    ];
    let took = settles(&pod, &after, SWITCH, &[&b, &c]);
    eprintln!("after the router's SIGKILL, requests settled in {took:?}");
    concurrently(&pod, &after, 10);

    // The last two end: nothing is left behind.
    b.kill();
    settles(
        &pod,
        &[(Some("key-b"), "v1"), (Some("key-c"), "v2-c")],
        SWITCH,
        &[&c],
    );
    c.kill();
    settles(&pod, &[(Some("key-c"), "v1")], SWITCH, &[]);
    assert_ruleset_restored(&pod, &before);
}

/// The one line of `group`'s stderr containing `needle`, once it appears.
fn stderr_line(group: &mut Group, needle: &str) -> String {
    let start = Instant::now();
    loop {
        let stderr = group.running().stderr_so_far();
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(needle)).collect();
        match lines[..] {
            [] => {}
            [line] => return line.to_owned(),
            _ => panic!("said more than once: {lines:?}"),
        }
        assert!(
            start.elapsed() < SWITCH,
            "no {needle:?} on stderr: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a session's client names itself to other sessions' users.
fn label(group: &mut Group) -> String {
    let user = nix::unistd::User::from_uid(nix::unistd::getuid())
        .unwrap()
        .unwrap()
        .name;
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    format!("{user}@{host} pid {}", group.running().pid())
}

#[test]
fn a_steal_that_conflicts_with_another_sessions_is_refused_with_one_line() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let mut f = filtered(&pod, "key-f", "also-f", "v2-f");
    settles(&pod, &[(Some("key-f"), "v2-f")], SWITCH, &[]);

    // An unfiltered steal of a port another session steals: refused, and nothing changes.
    let mut u = sharing(&pod, &["--steal", "8080"], "v2-u");
    let line = stderr_line(&mut u, "cannot steal port");
    assert_eq!(
        line,
        format!(
            "mirrord-net: cannot steal port 8080 unfiltered: session {} already steals it with an HTTP filter",
            label(&mut f)
        )
    );
    concurrently(&pod, &[(Some("key-f"), "v2-f"), (None, "v1")], 5);

    // When the holder goes, the refused session gets the port after all.
    f.kill();
    let took = settles(
        &pod,
        &[(Some("key-f"), "v2-u"), (None, "v2-u")],
        SWITCH,
        &[],
    );
    eprintln!("the unfiltered session got the port {took:?} after the holder's SIGKILL");

    // A filtered steal of a port stolen unfiltered: refused too.
    let mut g = filtered(&pod, "key-g", "also-g", "v2-g");
    let line = stderr_line(&mut g, "cannot steal port");
    assert_eq!(
        line,
        format!(
            "mirrord-net: cannot steal port 8080 with an HTTP filter: session {} already steals it unfiltered",
            label(&mut u)
        )
    );
    concurrently(&pod, &[(Some("key-g"), "v2-u"), (None, "v2-u")], 5);
    // Still said once, though the refused session keeps asking.
    std::thread::sleep(Duration::from_secs(2));
    stderr_line(&mut g, "cannot steal port");

    u.kill();
    g.kill();
    assert_ruleset_restored(&pod, &before);
}

/// One request with `header` (`Name: value`): the answer's tag.
fn ask_with(pod: &Pod, header: &str) -> String {
    let mut command = pod.services_netns().command(&tool("curl")).unwrap();
    command.args(["-sS", "--max-time", "3", "-H", header]);
    command.arg(format!("http://{POD_V4}:{PORT}/"));
    let out = command.output().expect("curl");
    assert!(out.status.success(), "a request was lost: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_registered_session_gets_its_requests_on_a_shared_keep_alive_connection_from_the_real_client() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    // A routes the port; B registers with it, so B's requests cross A's agent and B's
    // ingress socket.
    let mut a = filtered(&pod, "key-a", "also-a", "v2-a");
    settles(&pod, &[(Some("key-a"), "v2-a")], SWITCH, &[]);
    let key = "run-b";
    let mut b = sharing(&pod, &keyed_steal(key), "v2");
    let header = format!("X-Verifier-Run: {key}");
    let start = Instant::now();
    while ask_with(&pod, &header) != "v2" {
        assert!(start.elapsed() < SWITCH, "B's requests never reached B");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 100 of B's requests interleaved with 100 others on one connection: B's reach B,
    // which sees the real client; the others the target. A's key still reaches A.
    interleaved_on_one_connection(&pod, "header", key);
    assert_eq!(ask(&pod, Some("key-a")).unwrap(), "v2-a");

    b.kill();
    let start = Instant::now();
    while ask_with(&pod, &header) != "v1" {
        assert!(
            start.elapsed() < SWITCH,
            "B's requests did not go back to the target"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    a.kill();
    settles(&pod, &[(Some("key-a"), "v1")], SWITCH, &[]);
    assert_ruleset_restored(&pod, &before);
}

#[test]
fn a_registered_sessions_requests_go_to_the_target_while_its_listener_is_not_up() {
    let pod = Pod::start();
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let mut a = filtered(&pod, "key-a", "also-a", "v2-a");
    settles(&pod, &[(Some("key-a"), "v2-a")], SWITCH, &[]);

    // B's listener starts only when told, and stops when told.
    let go = pod.dir().join("go");
    let stop = pod.dir().join("stop");
    let script = format!(
        "echo started; while [ ! -e {go} ]; do sleep 0.05; done; \
         python3 {server} {PORT} v2-b {stop}; echo exited; sleep 600",
        go = go.display(),
        stop = stop.display(),
        server = pod.script("tagged_httpd.py"),
    );
    let mut invocation = Invocation::session(&pod, &["/bin/sh", "-c", &script]);
    for flag in [
        "--steal",
        "8080",
        "--http-header-filter",
        "^X-Run: {{ key }}$",
        "--key",
        "key-b",
    ] {
        invocation = invocation.client_flag(flag);
    }
    let mut b = Group::start(invocation.command());
    b.wait_for("started");
    let expected = [(Some("key-a"), "v2-a"), (Some("key-b"), "v1"), (None, "v1")];
    let quiet = Instant::now();
    while quiet.elapsed() < Duration::from_secs(2) {
        concurrently(&pod, &expected, 1);
    }

    std::fs::write(&go, "").unwrap();
    b.wait_for("listening");
    let took = settles(
        &pod,
        &[
            (Some("key-a"), "v2-a"),
            (Some("key-b"), "v2-b"),
            (None, "v1"),
        ],
        SWITCH,
        &[&a, &b],
    );
    eprintln!("the registered session's new listener got its requests after {took:?}");

    std::fs::write(&stop, "").unwrap();
    b.wait_for("exited");
    let took = settles(&pod, &expected, SWITCH, &[&a, &b]);
    eprintln!("its requests were the target's again {took:?} after its listener closed");
    concurrently(&pod, &expected, 3);

    b.kill();
    settles(&pod, &expected, SWITCH, &[&a]);
    a.kill();
    settles(&pod, &[(Some("key-a"), "v1")], SWITCH, &[]);
    assert_ruleset_restored(&pod, &before);
}
