//! Access: the RBAC Role documented in docs/kubernetes/rbac-job-agent.yaml is enough for a
//! session over either transport; a user whose role lacks a permission the job agent needs
//! gets an error that names the verb, the resource and the namespace, and nothing is created.

use std::path::PathBuf;
use std::time::Duration;

use mirrord_net_tests::kube::{eventually, Namespace};

use crate::{agent_objects, assert_agent_objects_gone, manifests};

/// The Role of docs/kubernetes/rbac-job-agent.yaml (and its ClusterRole), applied in `ns`.
pub const DOCUMENTED_RBAC: &str = include_str!("../../../docs/kubernetes/rbac-job-agent.yaml");

/// A kubeconfig that authenticates as a new service account `name` of `ns`, bound to the
/// existing Role `role`. Readable by any user, for the rootless client.
pub fn service_account_kubeconfig(ns: &Namespace, name: &str, role: &str) -> PathBuf {
    ns.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: {name}}}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: {name}}}\n\
         subjects: [{{kind: ServiceAccount, name: {name}, namespace: {ns}}}]\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {role}}}\n",
        ns = ns.name()
    ));
    // Kubernetes 1.20 makes a token Secret for every service account, a moment later.
    let mut secret = String::new();
    eventually("service account token", Duration::from_secs(30), || {
        secret = ns.field(&format!("serviceaccount/{name}"), "{.secrets[0].name}");
        !secret.is_empty()
    });
    let token = ns.field(&format!("secret/{secret}"), "{.data.token}");
    let ca = ns.field(&format!("secret/{secret}"), "{.data.ca\\.crt}");
    let config = format!(
        "apiVersion: v1\nkind: Config\n\
         clusters: [{{name: test, cluster: {{server: {server}, certificate-authority-data: {ca}}}}}]\n\
         users: [{{name: {name}, user: {{token: {token}}}}}]\n\
         contexts: [{{name: {name}, context: {{cluster: test, user: {name}, namespace: {ns}}}}}]\n\
         current-context: {name}\n",
        server = ns.cluster.var("K8S_API"),
        token = decode_base64(&token),
        ns = ns.name(),
    );
    let path = std::env::temp_dir().join(format!("mirrord-net-{}-{name}.kubeconfig", ns.name()));
    std::fs::write(&path, config).expect("write the kubeconfig");
    path
}

fn decode_base64(text: &str) -> String {
    let output = std::process::Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64 -d");
    String::from_utf8(output.stdout).expect("a token is ASCII")
}

#[test]
fn an_rbac_denial_names_the_missing_permission() {
    let ns = Namespace::create("rbac");
    ns.apply(manifests::APP);
    ns.wait_ready("app=app");
    // May find the target, but not start an agent.
    ns.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader}\nrules:\n\
         - apiGroups: [\"\"]\n  resources: [pods, pods/log]\n  verbs: [get, list, watch]\n",
    );
    let kubeconfig = service_account_kubeconfig(&ns, "reader", "reader");
    let out = ns
        .session("pod/app", &[], &["true"])
        .env("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))
        .run();
    let _ = std::fs::remove_file(&kubeconfig);
    assert_ne!(out.code(), Some(0), "{out}");
    let stderr = out.stderr.trim();
    assert!(
        stderr.contains("`create`") && stderr.contains("jobs") && stderr.contains(ns.name()),
        "names verb, resource and namespace:\n{out}"
    );
    assert!(agent_objects(&ns).is_empty(), "nothing was created");
}

#[test]
fn the_documented_role_is_enough_for_both_transports() {
    let (ns, service_ip, _) = crate::app_and_web("documented-role");
    ns.apply(DOCUMENTED_RBAC);
    let kubeconfig = service_account_kubeconfig(&ns, "developer", "mirrord-net");
    let url = format!("http://{service_ip}/");
    for transport in ["direct", "port-forward"] {
        let out = ns
            .session(
                "deploy/web",
                &["--transport", transport],
                &["curl", "-sS", "--max-time", "10", &url],
            )
            .env("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))
            .run();
        assert!(
            out.assert_success().starts_with("web "),
            "{transport}:\n{out}"
        );
    }
    let out = ns
        .cluster
        .client(&["ls", "-n", ns.name()])
        .env("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))
        .run();
    assert!(out.assert_success().contains("deploy/web"), "{out}");
    let _ = std::fs::remove_file(&kubeconfig);
    assert_agent_objects_gone(&ns, "agent Jobs removed", Duration::from_secs(30));
}

#[test]
fn doctor_names_a_missing_permission_and_passes_with_the_documented_role() {
    let (ns, _, _) = crate::app_and_web("doctor");
    ns.apply(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: reader}\nrules:\n\
         - apiGroups: [\"\"]\n  resources: [pods, pods/log]\n  verbs: [get, list, watch]\n\
         - apiGroups: [apps]\n  resources: [deployments, replicasets]\n  verbs: [get, list]\n",
    );
    ns.apply(DOCUMENTED_RBAC);
    let reader = service_account_kubeconfig(&ns, "reader", "reader");
    let developer = service_account_kubeconfig(&ns, "developer", "mirrord-net");
    let doctor = |kubeconfig: &PathBuf| {
        ns.cluster
            .client(&["doctor", "--target", "deploy/web", "-n", ns.name()])
            .env("KUBECONFIG", kubeconfig.to_str().expect("utf-8 path"))
            .run()
    };
    let denied = doctor(&reader);
    let allowed = doctor(&developer);
    let _ = std::fs::remove_file(&reader);
    let _ = std::fs::remove_file(&developer);

    assert_eq!(denied.code(), Some(1), "{denied}");
    let line = format!(
        "✗ not allowed: create jobs.batch in namespace {}",
        ns.name()
    );
    assert!(denied.stdout.contains(&line), "no {line:?}:\n{denied}");
    assert!(
        denied.stdout.contains("✓ allowed: get pods"),
        "what the role grants is said too:\n{denied}"
    );

    let stdout = allowed.assert_success();
    assert!(!stdout.contains('✗'), "{allowed}");
    assert!(stdout.contains("✓ API server reachable"), "{allowed}");
    assert!(
        stdout.contains("✓ target deploy/web: pod web-"),
        "{allowed}"
    );
    // The documented role may not read nodes: the image check is a warning, never a failure.
    assert!(
        stdout.contains("agent image"),
        "the agent image is looked for:\n{allowed}"
    );
    assert!(agent_objects(&ns).is_empty(), "doctor creates nothing");
}
