//! The agent's life: nothing left in the cluster after a session ends, nor after the client
//! is SIGKILLed (the agent exits when its client goes quiet, the Job's TTL removes it); an
//! agent pod deleted mid-session ends the session with a clear error.
//!
//! Kubernetes 1.20's Job controller does not count a deleted pod as failed: it starts a
//! replacement agent pod, which no client ever connects to. The client's deletion of the Job
//! takes that pod with it (garbage collection, then the kubelet stopping it); if either is
//! slow on a loaded node, the replacement still exits by itself after the agent's wait for a
//! client (30 s) and the Job's TTL (5 s) removes what is left. The bound below covers both.

use std::time::Duration;

use mirrord_net_tests::leftovers::Baseline;
use nix::sys::signal::Signal;

use crate::{agent_objects, app_and_web, assert_agent_objects_gone};

/// The agent's wait for a client, the Job's TTL, and room for a loaded node.
const ORPHANED_AGENT_GONE: Duration = Duration::from_secs(60);

#[test]
fn nothing_is_left_in_the_cluster_after_a_session() {
    let (ns, service_ip, _) = app_and_web("after-exit");
    let out = ns
        .session(
            "pod/app",
            &[],
            &[
                "curl",
                "-sS",
                "--max-time",
                "10",
                &format!("http://{service_ip}/"),
            ],
        )
        .run();
    out.assert_success();
    // The client deletes its Job on the way out; the pod follows within moments.
    assert_agent_objects_gone(&ns, "agent Job and pod removed", Duration::from_secs(30));
}

#[test]
fn a_sigkilled_client_leaves_nothing_behind() {
    let (ns, _, _) = app_and_web("sigkill");
    let baseline = Baseline::capture(None);
    let mut running = ns
        .session("pod/app", &[], &["sh", "-c", "echo started; sleep 600"])
        .start();
    assert!(
        running.wait_for_stdout("started", Duration::from_secs(60)),
        "session did not start:\n{}",
        running.stderr_so_far()
    );
    assert!(!agent_objects(&ns).is_empty(), "the agent runs as a Job");
    running.signal(Signal::SIGKILL);
    let _ = running.finish(Duration::from_secs(10));
    // Local side: no session namespaces, mounts or processes.
    baseline.assert_clean_within(None, None, Duration::from_secs(10));
    // Cluster side: the agent notices its client is gone (QUIC idle timeout), exits, and the
    // Job's ttlSecondsAfterFinished deletes it with its pod.
    assert_agent_objects_gone(
        &ns,
        "agent Job and pod removed after the client's SIGKILL",
        Duration::from_secs(90),
    );
}

#[test]
fn a_deleted_agent_pod_ends_the_session_with_a_clear_error() {
    let (ns, _, _) = app_and_web("agent-deleted");
    let mut running = ns
        .session("pod/app", &[], &["sh", "-c", "echo started; sleep 600"])
        .start();
    assert!(
        running.wait_for_stdout("started", Duration::from_secs(60)),
        "session did not start:\n{}",
        running.stderr_so_far()
    );
    ns.kubectl(&[
        "delete",
        "pods",
        "-l",
        "job-name",
        "--grace-period=0",
        "--force",
    ])
    .assert_success();
    let out = running
        .finish(Duration::from_secs(30))
        .unwrap_or_else(|timed_out| panic!("the session went on without its agent: {timed_out}"));
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(
        out.stderr.contains("agent"),
        "says the agent is gone:\n{out}"
    );
    assert_agent_objects_gone(
        &ns,
        "agent Job and its replacement pod removed",
        ORPHANED_AGENT_GONE,
    );
}
