//! The whole session over the stream transport: QUIC framed on a TCP connection to the
//! agent's listener, the path a Kubernetes port-forward takes, chosen for a local target with
//! `MIRRORD_NET_LOCAL_TRANSPORT=stream`. The handshake, an HTTP request, the target's files
//! and a bulk transfer must all work as over UDP.

use std::time::Duration;

use mirrord_net_tests::target_files::{TargetFiles, CONFIG};
use mirrord_net_tests::{bash, sh, tool, Invocation, Pod};

const SIXTY_FOUR_MIB: u64 = 64 << 20;

/// A session on `pod` whose client reaches the agent over the stream, logging (at -v) how it
/// connected.
fn over_stream(pod: &Pod, args: &[&str]) -> Invocation {
    Invocation::session(pod, args)
        .env("MIRRORD_NET_LOCAL_TRANSPORT", "stream")
        .client_flag("-v")
}

#[track_caller]
fn assert_used_the_stream(stderr: &str) {
    // The log may be coloured: drop the escape sequences (ESC [ … m).
    let mut plain = String::new();
    let mut escape = false;
    for c in stderr.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let stderr = plain;
    assert!(
        stderr.contains("connected to the agent") && stderr.contains("transport=Stream"),
        "the session did not say it connected over the stream:\n{stderr}"
    );
}

#[test]
fn http_and_the_targets_files_work_over_the_stream() {
    let pod = Pod::start();
    let files = TargetFiles::install(&pod, false).expect("target files");
    let config = files.path("config.yaml");
    let script = format!(
        "set -e; {curl} -sS --fail -o /dev/null -w '%{{http_code}}\\n' http://web/; cat '{config}'",
        curl = tool("curl"),
    );
    let out = over_stream(&pod, &sh(&script)).run();
    assert_eq!(out.assert_success(), format!("200\n{CONFIG}"), "{out}");
    assert_used_the_stream(&out.stderr);
}

#[test]
fn sixty_four_mib_download_arrives_intact_over_the_stream() {
    let pod = Pod::start();
    let mut hash = std::process::Command::new(tool("python3"));
    hash.arg(pod.script("blob.py"))
        .args(["sha", &SIXTY_FOUR_MIB.to_string()]);
    let expected = mirrord_net_tests::exec::run(hash, Duration::from_secs(60))
        .expect("hashing the stream")
        .assert_success()
        .trim()
        .to_string();
    let script = format!(
        "set -o pipefail; {} -sS --fail http://web/blob/{SIXTY_FOUR_MIB} | sha256sum",
        tool("curl")
    );
    let out = over_stream(&pod, &bash(&script))
        .timeout(Duration::from_secs(120))
        .run();
    let got = out
        .assert_success()
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert_eq!(got, expected, "the downloaded data differs:\n{out}");
    assert_used_the_stream(&out.stderr);
    eprintln!(
        "64 MiB over the stream took {:?} (session included)",
        out.elapsed
    );
}

#[test]
fn sixty_four_mib_upload_arrives_intact_over_the_stream() {
    let pod = Pod::start();
    let script = format!(
        "set -o pipefail; {python} {blob} gen {SIXTY_FOUR_MIB} | {curl} -sS --fail -T - http://web/upload",
        python = tool("python3"),
        blob = pod.script("blob.py"),
        curl = tool("curl"),
    );
    let mut hash = std::process::Command::new(tool("python3"));
    hash.arg(pod.script("blob.py"))
        .args(["sha", &SIXTY_FOUR_MIB.to_string()]);
    let expected = mirrord_net_tests::exec::run(hash, Duration::from_secs(60))
        .expect("hashing the stream")
        .assert_success()
        .trim()
        .to_string();
    let out = over_stream(&pod, &bash(&script))
        .timeout(Duration::from_secs(120))
        .run();
    assert_eq!(
        out.assert_success().trim(),
        format!("{expected} {SIXTY_FOUR_MIB}"),
        "the server received something else:\n{out}"
    );
    assert_used_the_stream(&out.stderr);
}
