//! A session owns everything it makes: when it ends, or its client is SIGKILLed, nothing of
//! it remains (agent, processes, namespaces, mounts, interfaces); and a session that cannot
//! start says why in one line and leaves nothing either.

use std::time::Duration;

use mirrord_net_tests::leftovers::{Baseline, SessionNamespaces, PRINT_NAMESPACES};
use mirrord_net_tests::{procfs, sh, Invocation, Pod};
use nix::sys::signal::Signal;

/// How soon after its session ends the agent must be gone.
const AGENT_EXIT: Duration = Duration::from_secs(5);

/// A PID no process has.
fn unused_pid() -> u32 {
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (1000..max)
        .rev()
        .find(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        .expect("some PID is free")
}

#[test]
fn nonexistent_target_pid_fails_with_one_clear_line_and_leaves_nothing() {
    let baseline = Baseline::capture(None);
    let pid = unused_pid();
    let out = Invocation::session_on(pid, &["true"]).run();
    assert!(
        matches!(out.code(), Some(code) if code != 0),
        "must fail with an exit code:\n{out}"
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr:\n{out}"
    );
    assert!(
        lines[0].contains(&pid.to_string()),
        "the error should name pid {pid}:\n{out}"
    );
    baseline.assert_clean_within(None, None, AGENT_EXIT);
}

#[test]
fn a_finished_session_leaves_no_agent_process_mount_or_interface() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    let out = Invocation::session(&pod, &sh(PRINT_NAMESPACES)).run();
    let session = SessionNamespaces::parse(out.assert_success())
        .unwrap_or_else(|| panic!("no namespaces printed:\n{out}"));
    assert_distinct_from_host_and_pod(&pod, &session);
    baseline.assert_clean_within(Some(&pod), Some(&session), AGENT_EXIT);
}

#[test]
fn sigkill_of_the_client_leaves_no_agent_process_mount_or_interface() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    let script = format!("{PRINT_NAMESPACES}; echo ready; exec sleep 60");
    let mut running = Invocation::session(&pod, &sh(&script)).start();
    assert!(
        running.wait_for_stdout("ready", Duration::from_secs(30)),
        "the session did not start:\nstdout: {}\nstderr: {}",
        running.stdout_so_far(),
        running.stderr_so_far()
    );
    let session = SessionNamespaces::parse(&running.stdout_so_far()).expect("namespaces printed");
    assert_distinct_from_host_and_pod(&pod, &session);
    // The check below must be able to see what it says is gone.
    let live = baseline.leftovers(Some(&pod), Some(&session));
    assert!(
        live.iter().any(|line| line.contains("agent process")),
        "no agent found while the session runs; the leftover check would prove nothing: {live:?}"
    );

    running.signal(Signal::SIGKILL);
    let out = running
        .finish(Duration::from_secs(10))
        .expect("the client died");
    assert_eq!(
        out.code(),
        None,
        "the client should have died of SIGKILL:\n{out}"
    );
    baseline.assert_clean_within(Some(&pod), Some(&session), AGENT_EXIT);
}

fn assert_distinct_from_host_and_pod(pod: &Pod, session: &SessionNamespaces) {
    let me = std::process::id() as i32;
    let target = pod.target_pid() as i32;
    for (kind, ns) in [
        ("net", &session.net),
        ("mnt", &session.mnt),
        ("uts", &session.uts),
    ] {
        assert_ne!(
            procfs::ns_of(me, kind).as_ref(),
            Some(ns),
            "the session shares the host's {kind} namespace"
        );
        assert_ne!(
            procfs::ns_of(target, kind).as_ref(),
            Some(ns),
            "the session shares the target's {kind} namespace"
        );
    }
}
