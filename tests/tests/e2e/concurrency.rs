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

/// A program that writes to thousands of open connections at once (a pool warming up, a load
/// generator) hands the session's TUN thousands of packets in one burst. The device must queue
/// them for its reader, not drop them: dropped, the session's TCP timers back off in step and
/// some flows stall for tens of seconds (measured with the kernel's default queue of 500:
/// 7,455 packets dropped in this test, and with 10,000 flows 1,000–2,000 of them without
/// their close after 25 s).
#[test]
fn a_burst_of_writes_on_four_thousand_connections_is_queued_not_dropped_by_the_tun() {
    let pod = Pod::builder().hold_echo().build();
    let script = format!(
        "{python} {burst} {WEB} {HOLD_ECHO_PORT} 4000 || exit 1; \
         set -- $({ip} -o route show default); \
         {ip} -j -s link show dev \"$3\"",
        python = tool("python3"),
        burst = pod.script("burst_echo.py"),
        ip = tool("ip"),
    );
    let out = Invocation::session(&pod, &sh(&script))
        .timeout(Duration::from_secs(90))
        .run();
    let stdout = out.assert_success();
    let (burst, link) = stdout.split_once('\n').expect("two outputs");
    assert!(burst.starts_with("echoed 4000 of 4000"), "{out}");
    let link: serde_json::Value = serde_json::from_str(link).expect("ip's JSON");
    let dropped = &link[0]["stats64"]["tx"]["dropped"];
    assert_eq!(
        dropped, 0,
        "the TUN dropped packets of the burst: {link}\n{out}"
    );
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
