//! Agent-pool workers: the worker pod of docs/kubernetes/agent-pool-worker.yaml, as written
//! (only its image and the node's device path are this cluster's), runs sessions on another
//! pod of its namespace without root or privileges: network, the pod's localhost, its
//! environment and its files over FUSE, three workers at once.
//!
//! The cluster offers `/dev/fuse` as the extended resource `mirrord-net/fuse` through
//! tests/k8s/fuse-device-plugin.go, and the node's `/dev/net/tun` and `/dev/fuse` with mode
//! 0666 under `K8S_DEVICE_DIR` (made by `cluster.sh up`; this machine's own nodes are 0600).

use mirrord_net_tests::kube::{Cluster, Namespace};

use crate::access::DOCUMENTED_RBAC;
use crate::manifests;
use crate::wait_for_service;

const EXAMPLE: &str = include_str!("../../../docs/kubernetes/agent-pool-worker.yaml");

/// The example with its pod named `name` (labelled `app=worker`), this cluster's worker image
/// and the cluster's TUN node. Panics if the example no longer has what is replaced, so the
/// test follows the example rather than silently testing something else.
fn worker_manifest(name: &str, tun_node: &str) -> String {
    let replacements = [
        (
            "metadata:\n  name: worker\n".to_string(),
            format!("metadata:\n  name: {name}\n  labels: {{app: worker}}\n"),
        ),
        (
            "image: registry.example/agent-worker:latest\n".to_string(),
            "image: localhost/mirrord-net-worker:local\n      imagePullPolicy: Never\n".to_string(),
        ),
        (
            "path: /dev/net/tun\n".to_string(),
            format!("path: {tun_node}\n"),
        ),
    ];
    let mut manifest = EXAMPLE.to_string();
    for (from, to) in replacements {
        assert_eq!(
            manifest.matches(&from).count(),
            1,
            "the example no longer holds {from:?} once"
        );
        manifest = manifest.replace(&from, &to);
    }
    manifest
}

#[test]
fn three_agent_pool_workers_run_sessions_on_one_pod_with_its_files_at_once() {
    let ns = Namespace::create("workers");
    let device_dir = Cluster::get().var("K8S_DEVICE_DIR").to_string();
    ns.apply(manifests::WEB);
    ns.apply(manifests::API);
    ns.apply(DOCUMENTED_RBAC);
    let workers = ["worker-0", "worker-1", "worker-2"];
    for worker in workers {
        ns.apply(&worker_manifest(worker, &format!("{device_dir}/net/tun")));
    }
    ns.wait_ready("app=web");
    ns.wait_ready("app=api");
    ns.wait_ready("app=worker");
    let service_ip = ns.field("service/web", "{.spec.clusterIP}");
    wait_for_service(&ns, &service_ip);

    let script = format!(
        "timeout 10 wget -qO- http://{service_ip}/; \
         timeout 10 wget -qO- http://127.0.0.1:8085/; \
         echo \"$GREETING\"; hostname; \
         cat \"$MIRRORD_NET_REMOTE_ROOT/etc/api/config.txt\"; \
         cat /etc/api/config.txt; \
         ip link show eth0 | grep -c POINTOPOINT"
    );
    let outcomes = std::thread::scope(|scope| {
        let running: Vec<_> = workers
            .iter()
            .map(|worker| {
                let (ns, script) = (&ns, &script);
                scope.spawn(move || {
                    ns.kubectl(&[
                        "exec",
                        worker,
                        "--",
                        "mirrord-net",
                        "exec",
                        "--target",
                        "pod/api",
                        "--container",
                        "main",
                        "--quiet",
                        "--",
                        "sh",
                        "-c",
                        script,
                    ])
                })
            })
            .collect();
        running
            .into_iter()
            .map(|thread| thread.join().expect("the worker's thread"))
            .collect::<Vec<_>>()
    });
    for (worker, out) in workers.iter().zip(&outcomes) {
        let lines: Vec<&str> = out.assert_success().lines().collect();
        assert_eq!(lines.len(), 7, "{worker}:\n{out}");
        assert!(
            lines[0].starts_with("web web-"),
            "{worker}: the Service:\n{out}"
        );
        assert_eq!(
            lines[1], "sidecar",
            "{worker}: the sidecar's loopback port:\n{out}"
        );
        assert_eq!(
            lines[2], "hello-from-api",
            "{worker}: the environment:\n{out}"
        );
        assert_eq!(lines[3], "api", "{worker}: the pod's hostname:\n{out}");
        assert_eq!(lines[4], "mode=api", "{worker}: the remote root:\n{out}");
        assert_eq!(
            lines[5], "mode=api",
            "{worker}: the volume at its path:\n{out}"
        );
        // The container's /sys has masked paths, so the kernel refuses the session a sysfs of
        // its own (a warning): netlink shows the TUN under the pod's interface name.
        assert_eq!(lines[6], "1", "{worker}: eth0 is the session's TUN:\n{out}");
    }
}
