//! Packets other than a TCP connection to a name: ICMP, UDP, IPv6, refusals.

use std::time::Duration;

use mirrord_net_tests::topology::*;
use mirrord_net_tests::{run_in_session_via, sh, tool, Packets, Pod};

on_every_packet_path! {
    fn ping_reaches_the_services_ipv4_address(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(
            &pod,
            packets,
            &[
                &tool("ping"),
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &SERVICES_V4.to_string(),
            ],
        );
        assert!(out.assert_success().contains("3 received"), "{out}");
    }

    fn ping_reaches_the_services_ipv6_address(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(
            &pod,
            packets,
            &[
                &tool("ping"),
                "-c",
                "3",
                "-i",
                "0.2",
                "-W",
                "2",
                &SERVICES_V6.to_string(),
            ],
        );
        assert!(out.assert_success().contains("3 received"), "{out}");
    }

    fn socat_udp_round_trip_reaches_the_echo_by_name(packets: Packets) {
        let pod = Pod::builder().udp_echo().build();
        // socat waits -t seconds for the reply after its input ends, then exits.
        let script = format!(
            "echo udp-{} | {} -t 1 - UDP:{ECHO}:{UDP_ECHO_PORT}",
            pod.id(),
            tool("socat")
        );
        let out = run_in_session_via(&pod, packets, &sh(&script));
        assert_eq!(out.assert_success(), format!("udp-{}\n", pod.id()), "{out}");
    }

    fn unconnected_udp_socket_gets_the_reply_from_the_address_it_sent_to(packets: Packets) {
        let pod = Pod::builder().udp_echo().build();
        let out = run_in_session_via(
            &pod,
            packets,
            &[
                &tool("python3"),
                &pod.script("udp_sendto.py"),
                ECHO,
                &UDP_ECHO_PORT.to_string(),
                "unconnected",
            ],
        );
        let words: Vec<&str> = out.assert_success().split_whitespace().collect();
        let services = [SERVICES_V4.to_string(), SERVICES_V6.to_string()];
        assert_eq!(words.len(), 3, "{out}");
        assert_eq!(words[0], "unconnected", "{out}");
        assert!(
            services.contains(&words[1].to_string()),
            "sent to a non-services address:\n{out}"
        );
        assert_eq!(
            words[1], words[2],
            "recvfrom must report the address the datagram went to:\n{out}"
        );
    }

    fn curl_reaches_the_services_ipv6_literal(packets: Packets) {
        let pod = Pod::start();
        let url = format!("http://{}:{HTTP_PORT}/", services_v6_url_host());
        let out = run_in_session_via(&pod, packets, &[&tool("curl"), "-sS", "-g", &url]);
        assert_eq!(out.assert_success(), pod.index_body(), "{out}");
    }

    fn curl_reaches_a_name_with_only_an_aaaa_record(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(
            &pod,
            packets,
            &[&tool("curl"), "-sS", &format!("http://{WEB6_ONLY_FQDN}/")],
        );
        assert_eq!(out.assert_success(), pod.index_body(), "{out}");
    }

    fn refused_port_fails_with_curl_exit_7_in_under_a_second(packets: Packets) {
        let pod = Pod::start();
        // Timed inside the session, so session start-up does not count.
        let script = format!(
            "start=$(date +%s%N); {} -sS http://web:{CLOSED_PORT}/; rc=$?; end=$(date +%s%N); \
             echo \"rc=$rc ms=$(( (end - start) / 1000000 ))\"",
            tool("curl")
        );
        let out = run_in_session_via(&pod, packets, &sh(&script));
        let last = out
            .assert_success()
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        let (rc, ms) = last
            .strip_prefix("rc=")
            .and_then(|rest| rest.split_once(" ms="))
            .unwrap_or_else(|| panic!("unexpected output:\n{out}"));
        assert_eq!(
            rc, "7",
            "curl should report a refused connection (exit 7):\n{out}"
        );
        let ms: u64 = ms.parse().unwrap();
        assert!(
            Duration::from_millis(ms) < Duration::from_secs(1),
            "refusal took {ms} ms; a refused port must fail at once:\n{out}"
        );
        assert!(
            out.stderr.contains("Couldn't connect") || out.stderr.contains("refused"),
            "{out}"
        );
    }
}
