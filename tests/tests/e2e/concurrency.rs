//! Many flows and many sessions at once.

use std::time::Duration;

use mirrord_net_tests::topology::*;
use mirrord_net_tests::{sh, tool, Invocation, Pod};

#[test]
fn five_hundred_concurrent_connections_all_succeed() {
    let pod = Pod::builder().hold_echo().build();
    let out = Invocation::session(
        &pod,
        &[
            &tool("python3"),
            &pod.script("many_connections.py"),
            WEB,
            &HOLD_ECHO_PORT.to_string(),
            "500",
        ],
    )
    .timeout(Duration::from_secs(90))
    .run();
    assert!(out.assert_success().starts_with("ok 500 of 500"), "{out}");
}

#[test]
fn ten_sessions_on_one_target_run_traffic_at_once() {
    const SESSIONS: usize = 10;
    const REQUESTS: usize = 20;
    let pod = Pod::start();
    let script = format!(
        "i=0; while [ $i -lt {REQUESTS} ]; do \
           {curl} -sS --fail http://web/ | grep -qx 'hello from web in pod {id}' || exit 1; \
           i=$((i + 1)); \
         done; echo ok",
        curl = tool("curl"),
        id = pod.id(),
    );
    let outcomes: Vec<_> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..SESSIONS)
            .map(|_| {
                scope.spawn(|| {
                    Invocation::session(&pod, &sh(&script))
                        .timeout(Duration::from_secs(90))
                        .run()
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (index, out) in outcomes.iter().enumerate() {
        assert_eq!(
            out.assert_success(),
            "ok\n",
            "session {index} of {SESSIONS}:\n{out}"
        );
    }
}
