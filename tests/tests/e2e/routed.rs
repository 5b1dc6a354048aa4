//! The routed path (`MIRRORD_NET_LOCAL_PACKETS=routed`, a root session on a local target whose
//! namespace forwards IPv4): the session's IPv4 flows to other hosts leave through a veth into
//! the pod's namespace, which forwards and masquerades them; IPv6, the pod's localhost and
//! whatever is sent from the pod's own address stay on the TUN. The network tests run on this
//! path too (`on_every_packet_path!`); these pin what is particular to it.

use std::time::{Duration, Instant};

use mirrord_net_tests::topology::*;
use mirrord_net_tests::{sh, tool, Invocation, Outcome, Packets, Pod};

use super::incoming::Group;

/// The port of the services namespace's tagged server, which answers with the address it saw.
const TAGGED_PORT: u16 = 8181;

/// A server in the services namespace that answers "beyond CLIENT_IP:PORT".
fn tagged_service(pod: &Pod) -> Group {
    let mut command = pod.services_netns().command(&tool("python3")).unwrap();
    command.args([
        &pod.script("tagged_httpd.py"),
        &TAGGED_PORT.to_string(),
        "beyond",
    ]);
    let mut group = Group::start(command);
    group.wait_for("listening");
    group
}

/// Runs `script` in a routed session on `pod`: its output lines, and the run for messages.
fn routed_lines(pod: &Pod, script: &str) -> (Vec<String>, Outcome) {
    let out = Invocation::session(pod, &sh(script))
        .packets(Packets::Routed)
        .run();
    let lines = out.assert_success().lines().map(String::from).collect();
    (lines, out)
}

#[test]
fn a_routed_connection_takes_the_veth_and_reaches_the_service_from_the_pods_address() {
    let pod = Pod::start();
    let _service = tagged_service(&pod);
    let script = format!(
        "{ip} -o route get {SERVICES_V4}; \
         {curl} -sS --max-time 5 http://{SERVICES_V4}:{TAGGED_PORT}/; \
         cat /sys/class/net/mnet-pod/statistics/tx_packets",
        ip = tool("ip"),
        curl = tool("curl"),
    );
    let (lines, out) = routed_lines(&pod, &script);
    assert!(lines[0].contains("dev mnet-pod"), "not routed:\n{out}");
    assert!(
        lines[1].starts_with(&format!("beyond {POD_V4}:")),
        "the service did not see the pod's address:\n{out}"
    );
    // The veth carried the connection: at least its handshake, request and close.
    let sent: u64 = lines[2].trim().parse().unwrap_or_else(|_| panic!("{out}"));
    assert!(sent >= 4, "{sent} packets on the veth:\n{out}");
}

#[test]
fn the_session_lists_its_veth_beside_the_tun() {
    let pod = Pod::start();
    let out = Invocation::session(&pod, &sh("ls /sys/class/net | tr '\\n' ' '"))
        .packets(Packets::Routed)
        .run();
    assert_eq!(out.assert_success(), "eth0 lo mnet-pod ", "{out}");
}

#[test]
fn what_is_sent_from_the_pods_address_and_ipv6_stay_on_the_tun() {
    let pod = Pod::start();
    let _service = tagged_service(&pod);
    let script = format!(
        "{ip} -o route get {SERVICES_V4} from {POD_V4}; \
         {ip} -o route get {SERVICES_V6}; \
         {curl} -sS --max-time 5 --interface {POD_V4} http://{SERVICES_V4}:{TAGGED_PORT}/",
        ip = tool("ip"),
        curl = tool("curl"),
    );
    let (lines, out) = routed_lines(&pod, &script);
    // The session's TUN is named after the pod's interface.
    assert!(lines[0].contains("dev eth0"), "{out}");
    assert!(lines[1].contains("dev eth0"), "{out}");
    // Bound to the pod's address, the connection took the agent's stack, which opened it
    // from the pod: the service sees the pod's address either way.
    assert!(lines[2].starts_with(&format!("beyond {POD_V4}:")), "{out}");
}

#[test]
fn a_target_that_does_not_forward_takes_the_tun_with_a_warning() {
    let pod = Pod::builder().without_forwarding().build();
    let script = format!(
        "{curl} -sS --max-time 5 http://{WEB}/; {ip} -o link show | grep -c mnet-pod",
        curl = tool("curl"),
        ip = tool("ip"),
    );
    let out = Invocation::session(&pod, &sh(&script))
        .packets(Packets::Routed)
        .run();
    // grep -c exits 1 when it counts nothing.
    assert_eq!(out.code(), Some(1), "{out}");
    assert_eq!(out.stdout, format!("{}0\n", pod.index_body()), "{out}");
    assert!(
        out.stderr
            .contains("does not forward IPv4 (net.ipv4.ip_forward=0)"),
        "{out}"
    );
}

#[test]
fn two_sessions_on_one_target_get_links_of_their_own_and_leave_neither() {
    let pod = Pod::start();
    let _service = tagged_service(&pod);
    let rules_before = pod_ruleset(&pod);
    let script = |then: &str| {
        format!(
            "{ip} -o -4 addr show mnet-pod | {awk} '{{print $4}}'; \
             {curl} -sS --max-time 5 http://{SERVICES_V4}:{TAGGED_PORT}/ && {then}",
            ip = tool("ip"),
            awk = tool("awk"),
            curl = tool("curl"),
        )
    };
    let mut first = Group::start(
        Invocation::session(&pod, &sh(&script("echo ready && exec sleep 30")))
            .packets(Packets::Routed)
            .command(),
    );
    first.wait_for("ready");
    assert_eq!(routed_links(&pod).len(), 1, "{:?}", routed_links(&pod));
    let (second_lines, _) = routed_lines(&pod, &script("true"));
    let first_lines: Vec<String> = first
        .running()
        .stdout_so_far()
        .lines()
        .map(String::from)
        .collect();
    for lines in [&first_lines, &second_lines] {
        assert!(lines[0].starts_with("169.254."), "{lines:?}");
        assert!(
            lines[1].starts_with(&format!("beyond {POD_V4}:")),
            "{lines:?}"
        );
    }
    assert_ne!(
        first_lines[0], second_lines[0],
        "one link address for two sessions"
    );

    first.kill();
    // The links go with the sessions' namespaces, the tables with their last processes; the
    // kernel removes a namespace in the background, so give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(routed_links(&pod).is_empty() && pod_ruleset(&pod) == rules_before) {
        assert!(
            Instant::now() < deadline,
            "left in the pod's namespace: {:?}\n{}",
            routed_links(&pod),
            pod_ruleset(&pod)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The routed links in the pod's namespace.
fn routed_links(pod: &Pod) -> Vec<String> {
    pod.pod_netns()
        .links()
        .expect("pod links")
        .into_iter()
        .filter(|link| link.starts_with("mnet-r"))
        .collect()
}

fn pod_ruleset(pod: &Pod) -> String {
    mirrord_net_tests::netfilter_state::pod_nft_ruleset(pod)
}
