//! The packet path a local session takes is the one asked for: by default the agent serves
//! the session's TUN itself and the client relays no packet; with
//! `MIRRORD_NET_LOCAL_PACKETS=quic` every packet crosses the client as a QUIC datagram. (The
//! network tests run on every path; this shows these two really are different paths. The
//! routed path has tests of its own in `routed`.)

use mirrord_net_tests::{tool, Invocation, Packets, Pod};

/// The client's log without colour escapes (ESC [ … m).
fn plain(stderr: &str) -> String {
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
    plain
}

/// Runs curl in a session on `packets` at -v and returns the log.
fn curl_logged(pod: &Pod, packets: Packets) -> String {
    let out = Invocation::session(pod, &[&tool("curl"), "-sS", "http://web/"])
        .packets(packets)
        .client_flag("-v")
        .run();
    assert_eq!(out.assert_success(), pod.index_body(), "{out}");
    plain(&out.stderr)
}

#[test]
fn by_default_the_agent_serves_the_tun_and_the_client_relays_nothing() {
    let pod = Pod::start();
    let log = curl_logged(&pod, Packets::Tun);
    assert!(
        log.contains("packets on the session's TUN device"),
        "the agent did not take the TUN:\n{log}"
    );
    assert!(
        log.contains("packets: up 0 packets / 0 bytes, down 0 packets / 0 bytes"),
        "the client relayed packets on the direct path:\n{log}"
    );
}

#[test]
fn with_quic_packets_the_client_relays_every_packet() {
    let pod = Pod::start();
    let log = curl_logged(&pod, Packets::Quic);
    assert!(
        !log.contains("packets on the session's TUN device"),
        "the agent took the TUN on the QUIC path:\n{log}"
    );
    let summary = log
        .lines()
        .find(|line| line.contains("packets: up "))
        .unwrap_or_else(|| panic!("no packet summary in the log:\n{log}"));
    assert!(
        !summary.contains("up 0 packets") && !summary.contains("down 0 packets"),
        "the client relayed nothing on the QUIC path:\n{log}"
    );
}
