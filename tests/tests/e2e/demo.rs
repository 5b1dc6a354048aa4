//! The README's first command: `mirrord-net demo` builds its own pod, runs its probe in a
//! session on it, and every check holds.

use std::time::Duration;

use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::tools::SYSTEM_PATH;

#[test]
fn demo_passes_every_check_and_removes_its_pod() {
    let mut command = std::process::Command::new(client_binary());
    command
        .arg("demo")
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("HOME", "/root")
        .env("LANG", "C.UTF-8");
    let out = mirrord_net_tests::exec::run(command, Duration::from_secs(60))
        .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    let stdout = out.assert_success();
    let passed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.trim_start().starts_with('✓'))
        .collect();
    assert!(!stdout.contains('✗'), "a check failed:\n{out}");
    for label in [
        "hostname",
        "/etc/resolv.conf",
        "resolve hello",
        "GET http://hello/",
        "IPv4",
        "IPv6",
        "host's loopback",
        "environment",
        "pod's file",
    ] {
        assert!(
            passed.iter().any(|line| line.contains(label)),
            "no passed check {label:?}:\n{out}"
        );
    }
    assert!(
        out.stderr.contains("The pod has been removed"),
        "the demo did not say it removed its pod:\n{out}"
    );
    assert!(
        !out.stderr.contains("WARN") && !out.stderr.contains("ERROR"),
        "the demo logged a warning or an error:\n{out}"
    );
}
