//! Ordinary clients of the pod's services, by name.

use mirrord_net_tests::topology::*;
use mirrord_net_tests::{run_in_session_via, tool, Packets, Pod};

on_every_packet_path! {
    fn static_busybox_wget_fetches_a_pod_only_name(packets: Packets) {
        let pod = Pod::start();
        let out = run_in_session_via(
            &pod,
            packets,
            &[&tool("busybox"), "wget", "-q", "-O", "-", "http://web/"],
        );
        assert_eq!(out.assert_success(), pod.index_body(), "{out}");
    }

    fn psql_runs_a_query_on_the_pods_postgres_by_name(packets: Packets) {
        let pod = Pod::builder().postgres().build();
        let out = run_in_session_via(
            &pod,
            packets,
            &[
                &tool("psql"),
                "-h",
                POSTGRES,
                "-U",
                "postgres",
                "-tAc",
                "select 40+2",
            ],
        );
        assert_eq!(out.assert_success().trim(), "42", "{out}");
    }

    fn redis_cli_sets_and_gets_a_key_on_the_pods_redis(packets: Packets) {
        let pod = Pod::builder().redis().build();
        let redis = tool("redis-cli");
        let set = run_in_session_via(&pod, packets, &[&redis, "-h", REDIS, "SET", "greeting", pod.id()]);
        assert_eq!(set.assert_success().trim(), "OK", "{set}");
        let get = run_in_session_via(&pod, packets, &[&redis, "-h", REDIS, "GET", "greeting"]);
        assert_eq!(get.assert_success().trim(), pod.id(), "{get}");
    }
}
