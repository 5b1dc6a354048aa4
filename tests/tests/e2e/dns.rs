//! Name resolution in a session is the target's: its resolv.conf, its search domain, its
//! DNS server, its /etc/hosts.

use mirrord_net_tests::topology::*;
use mirrord_net_tests::{run_in_session, run_in_session_via, tool, Packets, Pod};

on_every_packet_path! {
    fn curl_resolves_a_short_name_through_the_pods_search_domain(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(&pod, packets, &[&tool("curl"), "-sS", "http://web/"]);
        assert_eq!(out.assert_success(), pod.index_body(), "{out}");
    }

    fn curl_resolves_a_fully_qualified_pod_only_name(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(
            &pod,
            packets,
            &[&tool("curl"), "-sS", &format!("http://{WEB_FQDN}/")],
        );
        assert_eq!(out.assert_success(), pod.index_body(), "{out}");
    }

    fn getent_hosts_resolves_a_pod_only_name_through_glibc_nss(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(&pod, packets, &[&tool("getent"), "hosts", WEB]);
        let address = out
            .assert_success()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert!(
            address == SERVICES_V4.to_string() || address == SERVICES_V6.to_string(),
            "getent hosts web should give a services address:\n{out}"
        );
        let all = run_in_session_via(&pod, packets, &[&tool("getent"), "ahosts", WEB]);
        assert!(
            all.assert_success().contains(&SERVICES_V4.to_string()),
            "{all}"
        );
        assert!(all.stdout.contains(&SERVICES_V6.to_string()), "{all}");
    }

    fn dig_queries_the_pods_dns_server_from_resolv_conf(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(
            &pod,
            packets,
            &[&tool("dig"), "+short", "+time=2", "+tries=2", WEB_FQDN],
        );
        assert_eq!(
            out.assert_success().trim(),
            SERVICES_V4.to_string(),
            "{out}"
        );
        let aaaa = run_in_session_via(
            &pod,
            packets,
            &[
                &tool("dig"),
                "+short",
                "+time=2",
                "+tries=2",
                "AAAA",
                WEB_FQDN,
            ],
        );
        assert_eq!(
            aaaa.assert_success().trim(),
            SERVICES_V6.to_string(),
            "{aaaa}"
        );
    }
}

#[test]
fn a_name_only_the_targets_hosts_file_knows_resolves() {
    let pod = Pod::start();
    let out = run_in_session(&pod, &[&tool("getent"), "hosts", HOSTS_ONLY_NAME]);
    assert!(
        out.assert_success().starts_with(&SERVICES_V4.to_string()),
        "{out}"
    );
}
