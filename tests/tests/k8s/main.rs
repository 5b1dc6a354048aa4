//! End-to-end tests of Kubernetes targets against a real single-node cluster (Kubernetes
//! 1.20, built from Debian's packages by tests/k8s/cluster.sh and started by scripts/test.sh).
//!
//! The client runs in the host's network namespace, like a developer's laptop next to a
//! cluster: it reads the admin kubeconfig, resolves the target through the API, starts its
//! agent as a Job on the target's node (privileged, hostPID: it finds the target container's
//! process by its cgroup and enters its namespaces) and connects to it directly at the agent
//! pod's IP or through the API's port-forward. Real programs then run in the session: curl,
//! a static busybox, psql, reaching a Service and pods of the cluster.
//!
//! Which paths each test covers is said at the top of each module.

mod manifests;

mod access;
mod hardening;
mod incoming;
mod lifecycle;
mod rootless;
mod targets;
mod transports;
mod workers;

use std::time::Duration;

use mirrord_net_tests::kube::{eventually_or_show, Namespace};

/// A namespace with the `web` Deployment and Service and the `app` pod, all Ready; returns
/// it with the Service's ClusterIP and the web pod's IP.
fn app_and_web(label: &str) -> (Namespace, String, String) {
    let ns = Namespace::create(label);
    ns.apply(manifests::WEB);
    ns.apply(manifests::APP);
    ns.wait_ready("app=web");
    ns.wait_ready("app=app");
    let service_ip = ns.field("service/web", "{.spec.clusterIP}");
    let web_pod = ns.names("pods", "app=web").remove(0);
    let web_pod_ip = ns.field(&web_pod, "{.status.podIP}");
    wait_for_service(&ns, &service_ip);
    (ns, service_ip, web_pod_ip)
}

/// A new Service is rejected until kube-proxy has synced its rules (well under a second):
/// wait for it from the host before a test relies on it.
fn wait_for_service(ns: &Namespace, ip: &str) {
    mirrord_net_tests::kube::eventually(
        &format!("service {ip} in {} answering", ns.name()),
        Duration::from_secs(30),
        || {
            std::process::Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "--max-time",
                    "2",
                    &format!("http://{ip}/"),
                ])
                .status()
                .is_ok_and(|status| status.success())
        },
    );
}

/// The agent's Jobs and their pods in `ns` (Kubernetes labels a Job's pods `job-name`).
fn agent_objects(ns: &Namespace) -> Vec<String> {
    let mut left = ns
        .kubectl(&["get", "jobs", "-o", "name"])
        .assert_success()
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    left.extend(ns.names("pods", "job-name"));
    left
}

/// Waits until `ns` holds no agent Job or pod, or panics with `what` and what is still there
/// (the Jobs and pods with their states, and the namespace's recent events), so a failure
/// says which object stayed and why.
#[track_caller]
fn assert_agent_objects_gone(ns: &Namespace, what: &str, within: Duration) {
    eventually_or_show(
        what,
        within,
        || agent_objects(ns).is_empty(),
        || {
            let objects = ns.kubectl(&["get", "jobs,pods", "-o", "wide"]);
            let events = ns.kubectl(&["get", "events", "--sort-by=.lastTimestamp"]);
            format!("left:\n{}\nevents:\n{}", objects.stdout, events.stdout)
        },
    );
}
