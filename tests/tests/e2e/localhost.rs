//! The pod's localhost: a session's connections to 127.0.0.0/8 and ::1 reach the target's
//! loopback (where a pod's sidecars listen), unless a program of the session serves the
//! port itself.
//!
//! The pod's namespace runs `loopback_servers.py`: HTTP on 127.0.0.1, 127.0.0.2 and ::1
//! (ports [`PORT`] and [`PORT`]+1), a UDP echo on 127.0.0.1 and ::1, none of them reachable
//! from outside the pod's namespace. Every answer names the address and port that served it.

use std::process::Command;
use std::time::Duration;

use mirrord_net_tests::exec::{Background, Running};
use mirrord_net_tests::{sh, tool, Invocation, Packets, Pod};

const PORT: u16 = 8085;

/// The loopback servers in the pod's network namespace (ports `port` and `port`+1), killed
/// when the test ends.
pub(super) fn sidecars(pod: &Pod, port: u16) -> Background {
    let mut command: Command = pod.pod_netns().command(&tool("python3")).unwrap();
    command.args([&pod.script("loopback_servers.py"), &port.to_string()]);
    let mut running = Running::start(command).expect("spawn");
    let started = running.wait_for_stdout("listening", Duration::from_secs(30));
    let servers = Background::new(running);
    assert!(
        started,
        "the loopback servers did not start:\n{}",
        servers.running().stderr_so_far()
    );
    servers
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

on_every_packet_path! {
    fn curl_and_busybox_reach_the_targets_loopback(packets: Packets) {
        let pod = Pod::start();
        let _sidecars = sidecars(&pod, PORT);
        let script = format!(
            "{curl} -sS -m 5 http://127.0.0.1:{PORT}/ && \
             {curl} -sS -m 5 -g 'http://[::1]:{PORT}/' && \
             {curl} -sS -m 5 http://127.0.0.2:{next}/ && \
             {busybox} wget -q -O - http://127.0.0.1:{PORT}/ && \
             {busybox} wget -q -O - 'http://[::1]:{next}/'",
            curl = tool("curl"),
            busybox = tool("busybox"),
            next = PORT + 1,
        );
        let out = Invocation::session(&pod, &sh(&script)).packets(packets).run();
        assert_eq!(
            lines(out.assert_success()),
            [
                format!("target 127.0.0.1 {PORT}"),
                format!("target ::1 {PORT}"),
                format!("target 127.0.0.2 {}", PORT + 1),
                format!("target 127.0.0.1 {PORT}"),
                format!("target ::1 {}", PORT + 1),
            ],
            "{out}"
        );
    }

    fn udp_reaches_the_targets_loopback(packets: Packets) {
        let pod = Pod::start();
        let _sidecars = sidecars(&pod, PORT);
        let script = format!(
            "echo four | {socat} -t 2 - UDP4:127.0.0.1:{PORT} && \
             echo six | {socat} -t 2 - UDP6:[::1]:{PORT}",
            socat = tool("socat"),
        );
        let out = Invocation::session(&pod, &sh(&script)).packets(packets).run();
        assert_eq!(
            lines(out.assert_success()),
            ["target 127.0.0.1 four", "target ::1 six"],
            "{out}"
        );
    }
}

#[test]
fn a_go_client_reaches_the_targets_loopback() {
    let pod = Pod::start();
    let _sidecars = sidecars(&pod, PORT);
    for host in ["127.0.0.1", "[::1]"] {
        let url = format!("http://{host}:{PORT}/x.json");
        let out = Invocation::session(&pod, &[&tool("gron"), &url]).run();
        let want = format!(
            "json.target = \"{} {PORT}\";",
            host.trim_matches(['[', ']'])
        );
        assert!(out.assert_success().contains(&want), "{out}");
    }
}

#[test]
fn a_session_listener_on_the_port_wins_while_it_listens() {
    let pod = Pod::start();
    let _sidecars = sidecars(&pod, PORT);
    // Until the session's server is seen (four times a second), the port is the target's;
    // after it exits, the target's again. Each wait is bounded; what is printed last counts.
    let script = format!(
        "{python} {server} {PORT} session >/dev/null & \
         for i in $(seq 50); do \
             {curl} -s -m 2 http://127.0.0.1:{PORT}/ | grep -q '^session' && break; sleep 0.1; \
         done; \
         {curl} -sS -m 5 http://127.0.0.1:{PORT}/ | cut -d' ' -f1; \
         {curl} -sS -m 5 http://127.0.0.1:{next}/; \
         kill $!; wait; \
         for i in $(seq 50); do \
             {curl} -s -m 2 http://127.0.0.1:{PORT}/ | grep -q '^target' && break; sleep 0.1; \
         done; \
         {curl} -sS -m 5 http://127.0.0.1:{PORT}/",
        python = tool("python3"),
        server = pod.script("tagged_httpd.py"),
        curl = tool("curl"),
        next = PORT + 1,
    );
    let out = Invocation::session(&pod, &sh(&script)).run();
    assert_eq!(
        lines(out.assert_success()),
        [
            "session".to_string(),
            format!("target 127.0.0.1 {}", PORT + 1),
            format!("target 127.0.0.1 {PORT}"),
        ],
        "{out}"
    );
}

#[test]
fn no_target_localhost_keeps_the_sessions_own() {
    let pod = Pod::start();
    let _sidecars = sidecars(&pod, PORT);
    let url = format!("http://127.0.0.1:{PORT}/");
    let out = Invocation::session(&pod, &[&tool("curl"), "-sS", "-m", "5", &url])
        .client_flag("--no-target-localhost")
        .run();
    // Nothing listens on the session's own loopback: refused.
    assert_eq!(out.code(), Some(7), "{out}");
}
