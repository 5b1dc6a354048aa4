//! The outgoing filter: `--local` destinations leave from this machine, `--remote` ones go to
//! the target and everything else leaves from this machine, TCP and UDP, on both packet
//! paths.
//!
//! The host's side is `host_servers.py`, run in the host's own namespaces (HTTP and a UDP
//! echo on one free port, answering "host ..."). The pod runs `loopback_servers.py` on the
//! same port number on its own loopback (answering "target ..."), so a wrong path shows in
//! the answer, never as a timeout alone.

use std::process::Command;
use std::time::Duration;

use mirrord_net_tests::exec::{Background, Running};
use mirrord_net_tests::topology::{
    HOSTS_ONLY_NAME, MANY_ADDRESSES, MANY_ADDRESSES_FQDN, SERVICES_V4, WEB, WEB6_ONLY_FQDN,
};
use mirrord_net_tests::{sh, tool, Invocation, Packets, Pod};

use super::localhost::sidecars;

/// `host_servers.py ADDR host` in the host's namespaces, killed when the test ends, and the
/// free port it took.
fn host_servers(pod: &Pod, addr: &str) -> (Background, u16) {
    let mut command = Command::new(tool("python3"));
    command.args([&pod.script("host_servers.py"), addr, "host"]);
    let mut running = Running::start(command).expect("spawn");
    let started = running.wait_for_stdout("listening", Duration::from_secs(30));
    let servers = Background::new(running);
    assert!(
        started,
        "the host's servers did not start:\n{}",
        servers.running().stderr_so_far()
    );
    let port = servers
        .running()
        .stdout_so_far()
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("listening PORT");
    (servers, port)
}

fn lines(out: &str) -> Vec<&str> {
    out.lines().collect()
}

/// This machine's first global IPv4 address: reachable from the host, not from the pod.
fn host_address() -> String {
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .expect("ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.contains(" mnet-") && !line.contains(" k8s-"))
        .find_map(|line| {
            let cidr = line.split_whitespace().nth(3)?;
            Some(cidr.split('/').next()?.to_owned())
        })
        .expect("this machine has a global IPv4 address")
}

on_every_packet_path! {
    fn local_entries_leave_from_the_host_and_the_rest_reach_the_target(packets: Packets) {
        let pod = Pod::builder().udp_echo().build();
        let (_host, port) = host_servers(&pod, "127.0.0.1");
        let _pods = sidecars(&pod, port);
        let script = format!(
            "{curl} -sS -m 5 http://127.0.0.1:{port}/ && \
             echo dgram | {socat} -t 2 - UDP4:127.0.0.1:{port} && \
             {curl} -sS -m 5 http://127.0.0.1:{next}/ && \
             echo six | {socat} -t 2 - UDP6:[::1]:{port} && \
             {curl} -sS -m 5 -o /dev/null -w '%{{http_code}}\\n' http://{WEB}/",
            curl = tool("curl"),
            socat = tool("socat"),
            next = port + 1,
        );
        let local = format!("127.0.0.1:{port}");
        let out = Invocation::session(&pod, &sh(&script))
            .packets(packets)
            .client_flag("--local")
            .client_flag(&local)
            .run();
        assert_eq!(
            lines(out.assert_success()),
            [
                format!("host 127.0.0.1 {port}"),
                "host 127.0.0.1 dgram".to_string(),
                // Not listed: the pod's localhost, as without a filter.
                format!("target 127.0.0.1 {}", port + 1),
                "target ::1 six".to_string(),
                // The pod's DNS and services still answer through the target.
                "200".to_string(),
            ],
            "{out}"
        );
        out.assert_agent_exited_cleanly();
    }

    fn remote_entries_reach_the_target_and_the_rest_leave_from_the_host(packets: Packets) {
        let pod = Pod::builder().udp_echo().build();
        let addr = host_address();
        let (_host, port) = host_servers(&pod, &addr);
        let script = format!(
            "{curl} -sS -m 5 http://{addr}:{port}/ && \
             echo dgram | {socat} -t 2 - UDP4:{addr}:{port} && \
             {curl} -sS -m 5 -o /dev/null -w '%{{http_code}}\\n' http://{WEB}/",
            curl = tool("curl"),
            socat = tool("socat"),
        );
        let out = Invocation::session(&pod, &sh(&script))
            .packets(packets)
            .client_flag("--remote")
            .client_flag("10.213.0.0/16")
            .client_flag("--remote")
            .client_flag("[fd6d:6e65:7400::]/48")
            .run();
        assert_eq!(
            lines(out.assert_success()),
            [
                format!("host {addr} {port}"),
                format!("host {addr} dgram"),
                "200".to_string(),
            ],
            "{out}"
        );
        out.assert_agent_exited_cleanly();
    }
}

#[test]
fn remote_names_are_resolved_by_the_targets_resolver() {
    // The pod's names point at the services end, which this machine cannot reach: an answer
    // from them means the name was resolved by the target and its addresses listed; this
    // machine's address answering means everything else still leaves from here.
    let pod = Pod::start();
    let addr = host_address();
    let (_host, port) = host_servers(&pod, &addr);
    let status = |url: &str| {
        format!(
            "{curl} -sS -m 5 -o /dev/null -w '%{{http_code}}\\n' {url}",
            curl = tool("curl")
        )
    };
    let script = format!(
        "{web} && {web6} && {curl} -sS -m 5 http://{addr}:{port}/",
        web = status(&format!("http://{WEB}/")),
        web6 = status(&format!("http://{WEB6_ONLY_FQDN}/")),
        curl = tool("curl"),
    );
    let out = Invocation::session(&pod, &sh(&script))
        // A short name: the target's search list makes it web.svc.cluster.local.
        .client_flag("--remote")
        .client_flag(WEB)
        // A name with an AAAA record only, for one port.
        .client_flag("--remote")
        .client_flag(&format!("tcp://{WEB6_ONLY_FQDN}:80"))
        .run();
    assert_eq!(
        lines(out.assert_success()),
        ["200", "200", &format!("host {addr} {port}")],
        "{out}"
    );
    out.assert_agent_exited_cleanly();

    // A name only the target's hosts file knows.
    let out = Invocation::session(&pod, &sh(&status(&format!("http://{HOSTS_ONLY_NAME}/"))))
        .client_flag("--remote")
        .client_flag(HOSTS_ONLY_NAME)
        .run();
    assert_eq!(lines(out.assert_success()), ["200"], "{out}");
}

#[test]
fn a_remote_name_whose_udp_answer_is_truncated_is_asked_again_over_tcp() {
    // The pod's DNS server gives many.svc.cluster.local's 40 addresses only over TCP (its UDP
    // answer holds 29 and is truncated); the last is the services end, the rest unreachable.
    let pod = Pod::start();
    let out = Invocation::session(
        &pod,
        &sh(&format!(
            "{curl} -sS -m 5 -o /dev/null -w '%{{http_code}}\\n' http://{SERVICES_V4}/",
            curl = tool("curl")
        )),
    )
    .client_flag("-v")
    .client_flag("--remote")
    .client_flag(MANY_ADDRESSES_FQDN)
    .run();
    assert_eq!(lines(out.assert_success()), ["200"], "{out}");
    // `-v` logs the addresses the target gave: every one, from the answer over TCP.
    let listed = out
        .stderr
        .lines()
        .find(|line| line.contains("a --remote name"))
        .unwrap_or_default();
    assert_eq!(
        listed.matches("10.213.1.").count() + listed.matches(&format!("{SERVICES_V4}]")).count(),
        MANY_ADDRESSES,
        "every address, from the answer over TCP:\n{out}"
    );
}

#[test]
fn without_a_filter_the_hosts_address_is_not_reached() {
    // The control for the tests above: the pod's network cannot reach this machine's
    // address, so an answer from it can only have come through the filter.
    let pod = Pod::start();
    let addr = host_address();
    let (_host, port) = host_servers(&pod, &addr);
    let script = format!(
        "{curl} -s -m 2 http://{addr}:{port}/; echo \"curl exit $?\"",
        curl = tool("curl"),
    );
    let out = Invocation::session(&pod, &sh(&script)).run();
    let text = out.assert_success();
    assert!(!text.contains("host "), "{out}");
    assert!(text.contains("curl exit"), "{out}");
}

#[test]
fn a_refused_local_destination_is_a_reset_and_a_bad_entry_one_line() {
    let pod = Pod::start();
    // A port nothing listens on, on this machine's loopback.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let script = format!(
        "{curl} -sS -m 5 http://127.0.0.1:{port}/; echo \"curl exit $?\"",
        curl = tool("curl"),
    );
    let out = Invocation::session(&pod, &sh(&script))
        .client_flag("--local")
        .client_flag(&format!("tcp://127.0.0.1:{port}"))
        .run();
    // Connected to the relay, then reset at once: curl sees it while connecting ("could not
    // connect", 7) or on its first read ("recv failure", 56), never after its timeout.
    let text = out.assert_success();
    assert!(
        text.contains("curl exit 7") || text.contains("curl exit 56"),
        "{out}"
    );
    assert!(out.elapsed < Duration::from_secs(4), "{out}");

    let out = Invocation::session(&pod, &["true"])
        .client_flag("--local")
        .client_flag("http://x")
        .run();
    out.assert_code(2);
    assert!(out.stderr.contains("tcp:// or udp://"), "{out}");
    let out = Invocation::session(&pod, &["true"])
        .client_flag("--remote")
        .client_flag("api.internal")
        .run();
    out.assert_code(1);
    // Asked of the target's resolver, whose server refuses names outside its own zone (it
    // has no upstream servers): one line naming the name and the server's answer.
    let unresolved = "--remote api.internal: the target cannot resolve it: 10.213.0.1:53 answered";
    assert!(out.stderr.lines().any(|l| l.contains(unresolved)), "{out}");
}
