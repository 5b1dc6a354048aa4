//! Targets: `pod/` and `deploy/`, a multi-container pod, a missing target, `ls`; the default
//! agent (a Job on the target's node that finds the container by its cgroup), the default
//! transport (`auto`: direct from the host), files and environment of the target container.

use mirrord_net_tests::kube::Namespace;

use crate::{agent_objects, app_and_web, manifests};

#[test]
fn pod_target_reaches_a_service_and_a_pod_from_the_pods_own_address() {
    let (ns, service_ip, web_pod_ip) = app_and_web("pod-target");
    let app_ip = ns.field("pod/app", "{.status.podIP}");
    let script = format!(
        "curl -sS --max-time 10 http://{service_ip}/ && \
         curl -sS --max-time 10 http://{web_pod_ip}:8080/ && \
         hostname && ip -o -4 addr show"
    );
    let out = ns.session("pod/app", &[], &["sh", "-c", &script]).run();
    let stdout = out.assert_success();
    let web_pod = ns.names("pods", "app=web").remove(0);
    let web_pod = web_pod.trim_start_matches("pod/");
    assert_eq!(
        stdout.matches(&format!("web {web_pod}")).count(),
        2,
        "both requests answered by the web pod:\n{out}"
    );
    // The session is the pod: its hostname, and the pod's IP on its interface (the agent
    // entered the target container's network namespace, not its own pod's).
    assert!(stdout.lines().any(|line| line == "app"), "hostname:\n{out}");
    assert!(
        stdout.contains(&format!("inet {app_ip}/")),
        "pod IP:\n{out}"
    );
}

#[test]
fn deploy_target_runs_a_static_busybox_against_the_service() {
    let (ns, service_ip, _) = app_and_web("deploy-target");
    let out = ns
        .session(
            "deploy/web",
            &[],
            &[
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                &format!("http://{service_ip}/"),
            ],
        )
        .run();
    let web_pod = ns.names("pods", "app=web").remove(0);
    assert_eq!(
        out.assert_success().trim(),
        format!("web {}", web_pod.trim_start_matches("pod/"))
    );
    // `deployment/` is the same target.
    let out = ns.session("deployment/web", &[], &["hostname"]).run();
    assert_eq!(
        out.assert_success().trim(),
        web_pod.trim_start_matches("pod/")
    );
}

#[test]
fn psql_reaches_postgres_in_the_cluster() {
    let ns = Namespace::create("psql");
    ns.apply(manifests::APP);
    ns.apply(manifests::DB);
    ns.wait_ready("app=app");
    ns.wait_ready("app=db");
    let db_ip = ns.field("service/db", "{.spec.clusterIP}");
    let query = "select current_user || ' ' || (40 + 2)";
    let out = ns
        .session(
            "pod/app",
            &[],
            &["psql", "-h", &db_ip, "-U", "postgres", "-Atc", query],
        )
        .run();
    assert_eq!(out.assert_success().trim(), "postgres 42");
}

#[test]
fn the_target_containers_files_and_environment() {
    let ns = Namespace::create("files-env");
    ns.apply(manifests::APP);
    ns.wait_ready("app=app");
    let script = "printenv GREETING; cat /etc/app/config.txt; \
                  cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; \
                  cat \"$MIRRORD_NET_REMOTE_ROOT/etc/app/config.txt\"; \
                  test -x \"$MIRRORD_NET_REMOTE_ROOT/bin/busybox\" && echo image-root";
    let out = ns.session("pod/app", &[], &["sh", "-c", script]).run();
    let lines: Vec<&str> = out.assert_success().lines().collect();
    assert_eq!(
        lines,
        [
            "hello-from-app",
            "mode=cluster",
            ns.name(),
            "mode=cluster",
            "image-root"
        ],
        "{out}"
    );
}

#[test]
fn a_multi_container_pod_needs_a_container_and_gives_its_environment() {
    let ns = Namespace::create("multi-container");
    ns.apply(manifests::DUO);
    ns.wait_ready("app=duo");
    let out = ns.session("pod/duo", &[], &["true"]).run();
    assert_ne!(out.code(), Some(0), "{out}");
    assert!(
        out.stderr.contains("main")
            && out.stderr.contains("sidecar")
            && out.stderr.contains("--container"),
        "the error lists the containers and names the flag:\n{out}"
    );
    assert!(agent_objects(&ns).is_empty(), "no agent was started");

    for role in ["main", "sidecar"] {
        let out = ns
            .session("pod/duo", &["--container", role], &["printenv", "ROLE"])
            .run();
        assert_eq!(out.assert_success().trim(), role);
    }
}

#[test]
fn a_missing_target_is_one_clear_error_and_starts_nothing() {
    let ns = Namespace::create("missing");
    for target in ["pod/nope", "deploy/nope"] {
        let out = ns.session(target, &[], &["true"]).run();
        assert_ne!(out.code(), Some(0), "{out}");
        let stderr = out.stderr.trim();
        assert!(
            stderr.contains("nope") && stderr.contains(ns.name()) && stderr.contains("not found"),
            "names the target, its namespace and what is wrong:\n{out}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line:\n{out}");
    }
    assert!(agent_objects(&ns).is_empty(), "no agent was started");
}

#[test]
fn ls_lists_pods_and_workloads() {
    let (ns, _, _) = app_and_web("ls");
    let out = ns.cluster.client(&["ls", "-n", ns.name()]).run();
    let stdout = out.assert_success();
    for target in ["pod/app", "deploy/web"] {
        assert!(
            stdout
                .lines()
                .any(|line| line.trim() == target || line.starts_with(&format!("{target} "))),
            "{target} listed:\n{out}"
        );
    }
    let out = ns.cluster.client(&["ls", "-n", ns.name(), "--json"]).run();
    let json = out.assert_success().trim();
    assert!(
        json.starts_with('[') || json.starts_with('{'),
        "JSON:\n{out}"
    );
    assert!(
        json.contains("\"pod/app\"") && json.contains("\"deploy/web\""),
        "{out}"
    );
}
