//! Transports: `--transport direct` (QUIC straight to the agent pod's IP, as from inside the
//! cluster's network) and `--transport port-forward` (the same QUIC connection framed on the
//! API server's port-forward stream, as from outside it). Also prints the session start time
//! of each, the median of a few `exec -- true`, for the record (no timing assertion).

use std::time::Duration;

use crate::app_and_web;

#[test]
fn direct_and_port_forward_both_carry_a_session() {
    let (ns, service_ip, _) = app_and_web("transports");
    let url = format!("http://{service_ip}/");
    for transport in ["direct", "port-forward"] {
        let out = ns
            .session(
                "pod/app",
                &["--transport", transport, "-v"],
                &["curl", "-sS", "--max-time", "10", &url],
            )
            .run();
        assert!(
            out.assert_success().starts_with("web "),
            "{transport}:\n{out}"
        );

        let mut starts: Vec<Duration> = (0..3)
            .map(|_| {
                let out = ns
                    .session("pod/app", &["--transport", transport], &["true"])
                    .run();
                out.assert_success();
                out.elapsed
            })
            .collect();
        starts.sort();
        eprintln!(
            "session start against the cluster, {transport}: median {:?} (of {:?})",
            starts[1], starts
        );
    }
}

#[test]
fn a_bulk_transfer_through_port_forward_arrives_intact() {
    let (ns, _, _) = app_and_web("pf-bulk");
    // 16 MiB from the web pod's own server, hashed on both ends.
    let web_pod = ns.names("pods", "app=web").remove(0);
    let make = "dd if=/dev/urandom of=/www/blob bs=1M count=16 2>/dev/null && sha256sum /www/blob";
    let remote = ns
        .kubectl(&["exec", &web_pod, "--", "sh", "-c", make])
        .assert_success()
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_owned();
    let web_ip = ns.field(&web_pod, "{.status.podIP}");
    let script = format!("curl -sS --max-time 60 http://{web_ip}:8080/blob | sha256sum");
    let out = ns
        .session(
            "pod/app",
            &["--transport", "port-forward"],
            &["sh", "-c", &script],
        )
        .run();
    assert_eq!(
        out.assert_success().split_whitespace().next(),
        Some(remote.as_str())
    );
}
