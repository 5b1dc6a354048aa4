//! `mirrord-net ls`: the targets of a namespace.
//!
//! Running pods with their containers (`pod/NAME`), and the workloads a session can name
//! (`deploy/`, `statefulset/`, `daemonset/`, `job/`, `replicaset/`). Kinds the user may not
//! list are skipped with a warning; pods are required.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::Resource;
use serde::Serialize;

use super::config::{self, ClusterArgs};
use super::error::{api_error, KubeError};
use super::rbac::Operation;
use super::target::Kind;

/// One line of `mirrord-net ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedTarget {
    /// `KIND/NAME`, as `--target` takes it.
    pub target: String,
    /// The containers, for pods (`--container` takes one of them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Listing {
    pub namespace: String,
    pub targets: Vec<ListedTarget>,
}

/// The `pod/` lines: running pods only, since only they can be targets.
pub fn pod_targets(pods: &[Pod]) -> Vec<ListedTarget> {
    let mut targets: Vec<ListedTarget> = pods
        .iter()
        .filter(|pod| {
            pod.status
                .as_ref()
                .and_then(|status| status.phase.as_deref())
                == Some("Running")
                && pod.metadata.deletion_timestamp.is_none()
        })
        .map(|pod| ListedTarget {
            target: format!("pod/{}", pod.metadata.name.as_deref().unwrap_or_default()),
            containers: pod
                .spec
                .iter()
                .flat_map(|spec| spec.containers.iter().map(|c| c.name.clone()))
                .collect(),
        })
        .collect();
    targets.sort_by(|a, b| a.target.cmp(&b.target));
    targets
}

/// The lines of workloads of one kind.
pub fn workload_targets<K: Resource>(kind: Kind, objects: &[K]) -> Vec<ListedTarget> {
    let mut targets: Vec<ListedTarget> = objects
        .iter()
        .filter_map(|object| object.meta().name.clone())
        .map(|name| ListedTarget {
            target: format!("{}/{name}", kind.prefix()),
            containers: Vec::new(),
        })
        .collect();
    targets.sort_by(|a, b| a.target.cmp(&b.target));
    targets
}

/// Lists the targets of the namespace `args` names.
pub async fn list(args: &ClusterArgs) -> Result<Listing, KubeError> {
    let cluster = config::connect(args).await?;
    let namespace = cluster.namespace.clone();
    let client = cluster.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pods = pods
        .list(&ListParams::default())
        .await
        .map_err(api_error(Operation::new("list", "pods", &namespace)))?;
    let mut targets = pod_targets(&pods.items);
    macro_rules! workloads {
        ($type:ty, $kind:expr, $resource:literal) => {{
            let api: Api<$type> = Api::namespaced(client.clone(), &namespace);
            match api.list(&ListParams::default()).await {
                Ok(list) => targets.extend(workload_targets($kind, &list.items)),
                Err(err) => {
                    let err = KubeError::api(Operation::new("list", $resource, &namespace), err);
                    tracing::warn!("{err}; {} targets not listed", $kind.prefix());
                }
            }
        }};
    }
    workloads!(Deployment, Kind::Deployment, "deployments.apps");
    workloads!(StatefulSet, Kind::StatefulSet, "statefulsets.apps");
    workloads!(DaemonSet, Kind::DaemonSet, "daemonsets.apps");
    workloads!(Job, Kind::Job, "jobs.batch");
    workloads!(ReplicaSet, Kind::ReplicaSet, "replicasets.apps");
    Ok(Listing { namespace, targets })
}

/// `mirrord-net ls`: prints the listing and returns the exit code.
pub async fn run(args: &ClusterArgs, json: bool) -> Result<i32, KubeError> {
    let listing = list(args).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&listing).expect("listing serializes")
        );
    } else if listing.targets.is_empty() {
        eprintln!("no targets in namespace {}", listing.namespace);
    } else {
        print!("{}", render_text(&listing));
    }
    Ok(0)
}

/// The human form: one target per line, a pod's containers after it.
pub fn render_text(listing: &Listing) -> String {
    let width = listing
        .targets
        .iter()
        .map(|target| target.target.len())
        .max()
        .unwrap_or(0);
    listing
        .targets
        .iter()
        .map(|target| {
            if target.containers.is_empty() {
                format!("{}\n", target.target)
            } else {
                format!(
                    "{:width$}  containers: {}\n",
                    target.target,
                    target.containers.join(", ")
                )
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, containers: &[&str]) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"containers": containers.iter().map(|c| serde_json::json!({"name": c})).collect::<Vec<_>>()},
            "status": {"phase": phase}
        }))
        .unwrap()
    }

    #[test]
    fn only_running_pods_are_listed_with_their_containers() {
        let pods = [
            pod("web", "Running", &["web", "sidecar"]),
            pod("batch", "Succeeded", &["job"]),
            pod("api", "Running", &["api"]),
        ];
        let listing = Listing {
            namespace: "ns".into(),
            targets: pod_targets(&pods),
        };
        assert_eq!(
            render_text(&listing),
            "pod/api  containers: api\npod/web  containers: web, sidecar\n"
        );
        let json = serde_json::to_value(&listing).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"namespace": "ns", "targets": [
                {"target": "pod/api", "containers": ["api"]},
                {"target": "pod/web", "containers": ["web", "sidecar"]}
            ]})
        );
    }

    #[test]
    fn workloads_are_listed_with_their_target_prefix() {
        let deployments: Vec<Deployment> =
            vec![serde_json::from_value(serde_json::json!({"metadata": {"name": "web"}})).unwrap()];
        assert_eq!(
            workload_targets(Kind::Deployment, &deployments),
            [ListedTarget {
                target: "deploy/web".into(),
                containers: vec![]
            }]
        );
    }
}
