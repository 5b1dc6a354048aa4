//! Kubernetes targets: `KIND/NAME` to one running container.
//!
//! A `pod/` target is that pod. A workload target (`deploy/`, `statefulset/`, `daemonset/`,
//! `job/`, `replicaset/`) is one of its pods: listed by the workload's selector, kept only when
//! owned by it (a Deployment owns its pods through its ReplicaSets), and chosen among those
//! that are Running and Ready. The container is `--container`, else the only one, else the
//! `kubectl.kubernetes.io/default-container` annotation's, as for kubectl.
//!
//! The pure parts ([`select_pod`], [`pick_container`], [`running_container`]) take API
//! objects and decide; [`resolve`] fetches those objects.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerState, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, ListParams};
use kube::Resource;

use super::config::Cluster;
use super::error::{api_error, is_not_found, KubeError};
use super::rbac::Operation;

const DEFAULT_CONTAINER_ANNOTATION: &str = "kubectl.kubernetes.io/default-container";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    ReplicaSet,
}

impl Kind {
    /// The kind named by a target prefix, aliases included.
    pub fn from_prefix(prefix: &str) -> Option<Self> {
        Some(match prefix {
            "pod" | "po" => Kind::Pod,
            "deploy" | "deployment" => Kind::Deployment,
            "statefulset" | "sts" => Kind::StatefulSet,
            "daemonset" | "ds" => Kind::DaemonSet,
            "job" => Kind::Job,
            "replicaset" | "rs" => Kind::ReplicaSet,
            _ => return None,
        })
    }

    /// The canonical prefix, as `mirrord-net ls` prints it.
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Pod => "pod",
            Kind::Deployment => "deploy",
            Kind::StatefulSet => "statefulset",
            Kind::DaemonSet => "daemonset",
            Kind::Job => "job",
            Kind::ReplicaSet => "replicaset",
        }
    }

    /// The resource for RBAC messages.
    /// The resource as RBAC rules name it.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Pod => "pods",
            Kind::Deployment => "deployments.apps",
            Kind::StatefulSet => "statefulsets.apps",
            Kind::DaemonSet => "daemonsets.apps",
            Kind::Job => "jobs.batch",
            Kind::ReplicaSet => "replicasets.apps",
        }
    }
}

/// `KIND/NAME` of a Kubernetes target, before it is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeTarget {
    pub kind: Kind,
    pub name: String,
}

impl fmt::Display for KubeTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.prefix(), self.name)
    }
}

/// The container a session impersonates, and where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub node: String,
    pub pod_ip: Option<IpAddr>,
    pub container: String,
    /// As in the pod's status, with the runtime's scheme: `containerd://0123…`.
    pub container_id: String,
}

/// Looks `target` up in `namespace` and resolves it to one running container.
pub async fn resolve(
    cluster: &Cluster,
    namespace: &str,
    target: &KubeTarget,
    container: Option<&str>,
) -> Result<ResolvedTarget, KubeError> {
    let pod = match target.kind {
        Kind::Pod => get(cluster, namespace, target).await?,
        _ => workload_pod(cluster, namespace, target).await?,
    };
    running_container(&pod, container)
}

async fn get<K>(cluster: &Cluster, namespace: &str, target: &KubeTarget) -> Result<K, KubeError>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(cluster.client.clone(), namespace);
    api.get(&target.name).await.map_err(|err| {
        if is_not_found(&err) {
            KubeError::NotFound {
                target: target.to_string(),
                namespace: namespace.to_owned(),
            }
        } else {
            KubeError::api(
                Operation::new("get", target.kind.resource(), namespace),
                err,
            )
        }
    })
}

/// The workload's selector and UID.
async fn workload(
    cluster: &Cluster,
    namespace: &str,
    target: &KubeTarget,
) -> Result<(Option<LabelSelector>, String), KubeError> {
    fn parts<K: Resource>(
        object: &K,
        selector: Option<LabelSelector>,
    ) -> (Option<LabelSelector>, String) {
        (selector, object.meta().uid.clone().unwrap_or_default())
    }
    Ok(match target.kind {
        Kind::Pod => unreachable!("pods are not workloads"),
        Kind::Deployment => {
            let object: Deployment = get(cluster, namespace, target).await?;
            let selector = object.spec.as_ref().map(|spec| spec.selector.clone());
            parts(&object, selector)
        }
        Kind::StatefulSet => {
            let object: StatefulSet = get(cluster, namespace, target).await?;
            let selector = object.spec.as_ref().map(|spec| spec.selector.clone());
            parts(&object, selector)
        }
        Kind::DaemonSet => {
            let object: DaemonSet = get(cluster, namespace, target).await?;
            let selector = object.spec.as_ref().map(|spec| spec.selector.clone());
            parts(&object, selector)
        }
        Kind::ReplicaSet => {
            let object: ReplicaSet = get(cluster, namespace, target).await?;
            let selector = object.spec.as_ref().map(|spec| spec.selector.clone());
            parts(&object, selector)
        }
        Kind::Job => {
            let object: Job = get(cluster, namespace, target).await?;
            let selector = object.spec.as_ref().and_then(|spec| spec.selector.clone());
            parts(&object, selector)
        }
    })
}

async fn workload_pod(
    cluster: &Cluster,
    namespace: &str,
    target: &KubeTarget,
) -> Result<Pod, KubeError> {
    let (selector, uid) = workload(cluster, namespace, target).await?;
    let selector = selector
        .as_ref()
        .map(selector_string)
        .filter(|selector| !selector.is_empty())
        .ok_or_else(|| KubeError::NoReadyPod {
            target: target.to_string(),
            namespace: namespace.to_owned(),
            detail: "it has no pod selector".into(),
        })?;
    let params = ListParams::default().labels(&selector);
    // A Deployment owns its pods through its ReplicaSets.
    let owners: BTreeSet<String> = if target.kind == Kind::Deployment {
        let sets: Api<ReplicaSet> = Api::namespaced(cluster.client.clone(), namespace);
        sets.list(&params)
            .await
            .map_err(api_error(Operation::new(
                "list",
                "replicasets.apps",
                namespace,
            )))?
            .items
            .iter()
            .filter(|set| owned_by(set.meta(), &uid))
            .filter_map(|set| set.meta().uid.clone())
            .collect()
    } else {
        BTreeSet::from([uid])
    };
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), namespace);
    let pods = pods
        .list(&params)
        .await
        .map_err(api_error(Operation::new("list", "pods", namespace)))?
        .items;
    select_pod(&pods, &owners)
        .cloned()
        .map_err(|detail| KubeError::NoReadyPod {
            target: target.to_string(),
            namespace: namespace.to_owned(),
            detail,
        })
}

fn owned_by(meta: &kube::core::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|owner| owner.uid == uid)
}

/// A label selector in the API's query syntax (`a=b,c in (d,e),!f`).
pub fn selector_string(selector: &LabelSelector) -> String {
    let mut terms: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    for expression in selector.match_expressions.iter().flatten() {
        let values = expression.values.clone().unwrap_or_default().join(",");
        terms.push(match expression.operator.as_str() {
            "In" => format!("{} in ({values})", expression.key),
            "NotIn" => format!("{} notin ({values})", expression.key),
            "Exists" => expression.key.clone(),
            "DoesNotExist" => format!("!{}", expression.key),
            other => format!("{} {other} ({values})", expression.key),
        });
    }
    terms.join(",")
}

/// Whether `pod` is Running and its Ready condition is true.
pub fn is_running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|condition| condition.type_ == "Ready" && condition.status == "True")
}

/// Chooses a Running and Ready pod among `pods` owned by one of `owners` (by UID), the first
/// by name so that repeated sessions land on the same pod. The error says why none fits.
pub fn select_pod<'a>(pods: &'a [Pod], owners: &BTreeSet<String>) -> Result<&'a Pod, String> {
    let owned: Vec<&Pod> = pods
        .iter()
        .filter(|pod| owners.iter().any(|uid| owned_by(pod.meta(), uid)))
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .collect();
    if owned.is_empty() {
        return Err("it has no pods".into());
    }
    owned
        .iter()
        .filter(|pod| is_running_and_ready(pod))
        .min_by(|a, b| a.metadata.name.cmp(&b.metadata.name))
        .copied()
        .ok_or_else(|| {
            let states: Vec<String> = owned
                .iter()
                .map(|pod| {
                    let phase = pod
                        .status
                        .as_ref()
                        .and_then(|status| status.phase.clone())
                        .unwrap_or_else(|| "Unknown".into());
                    let ready = if phase == "Running" {
                        ", not ready"
                    } else {
                        ""
                    };
                    format!(
                        "{} {phase}{ready}",
                        pod.metadata.name.as_deref().unwrap_or("?")
                    )
                })
                .collect();
            format!("its pods: {}", states.join("; "))
        })
}

/// The container of `pod` a session should use, by the rules in the module docs.
pub fn pick_container(pod: &Pod, requested: Option<&str>) -> Result<String, KubeError> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let names: Vec<&str> = pod
        .spec
        .iter()
        .flat_map(|spec| spec.containers.iter())
        .map(|container| container.name.as_str())
        .collect();
    let list = || names.join(", ");
    if let Some(requested) = requested {
        return if names.contains(&requested) {
            Ok(requested.to_owned())
        } else {
            Err(KubeError::NoSuchContainer {
                pod: pod_name,
                container: requested.to_owned(),
                containers: list(),
            })
        };
    }
    if let [only] = names.as_slice() {
        return Ok((*only).to_owned());
    }
    let annotated = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(DEFAULT_CONTAINER_ANNOTATION))
        .filter(|name| names.contains(&name.as_str()));
    match annotated {
        Some(name) => {
            tracing::info!(
                "container {name}, named by the pod's {DEFAULT_CONTAINER_ANNOTATION} annotation"
            );
            Ok(name.clone())
        }
        None => Err(KubeError::ContainerNeeded {
            pod: pod_name,
            containers: list(),
        }),
    }
}

/// Resolves `pod` to its running container `requested` (see [`pick_container`]), or says why
/// it cannot be used: the pod or the container is not running.
pub fn running_container(pod: &Pod, requested: Option<&str>) -> Result<ResolvedTarget, KubeError> {
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let container = pick_container(pod, requested)?;
    let status = pod.status.clone().unwrap_or_default();
    let container_status = status
        .container_statuses
        .iter()
        .flatten()
        .find(|status| status.name == container);
    let phase = status.phase.clone().unwrap_or_else(|| "Unknown".into());
    if phase != "Running" {
        let reason = container_status
            .and_then(|status| state_reason(status.state.as_ref()))
            .map(|reason| format!("; container {container}: {reason}"))
            .unwrap_or_default();
        return Err(KubeError::PodNotRunning {
            pod: pod_name,
            phase,
            reason,
        });
    }
    let running = container_status.filter(|status| {
        status
            .state
            .as_ref()
            .is_some_and(|state| state.running.is_some())
    });
    let Some(container_id) = running.and_then(|status| status.container_id.clone()) else {
        let reason = container_status
            .and_then(|status| state_reason(status.state.as_ref()))
            .map(|reason| format!(" ({reason})"))
            .unwrap_or_default();
        return Err(KubeError::ContainerNotRunning {
            pod: pod_name,
            container,
            reason,
        });
    };
    Ok(ResolvedTarget {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        pod: pod_name,
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        node: pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.clone())
            .unwrap_or_default(),
        pod_ip: status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()),
        container,
        container_id,
    })
}

/// Why a container is not running, in the runtime's words (`waiting: ImagePullBackOff`).
pub fn state_reason(state: Option<&ContainerState>) -> Option<String> {
    let state = state?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.clone().unwrap_or_else(|| "waiting".into());
        return Some(match &waiting.message {
            Some(message) if !message.is_empty() => format!("waiting: {reason}: {message}"),
            _ => format!("waiting: {reason}"),
        });
    }
    if let Some(terminated) = &state.terminated {
        let reason = terminated
            .reason
            .clone()
            .unwrap_or_else(|| "terminated".into());
        return Some(format!(
            "terminated: {reason}, exit code {}",
            terminated.exit_code
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod from the JSON the API server returns, trimmed to what matters here.
    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    fn running_pod(name: &str, owner: &str, ready: bool) -> Pod {
        pod(serde_json::json!({
            "metadata": {
                "name": name, "namespace": "ns", "uid": format!("uid-{name}"),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "rs", "uid": owner, "controller": true}]
            },
            "spec": {"nodeName": "node1", "containers": [{"name": "web", "image": "i"}]},
            "status": {
                "phase": "Running", "podIP": "10.245.0.7",
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{
                    "name": "web", "image": "i", "imageID": "", "ready": ready,
                    "restartCount": 0, "containerID": format!("containerd://{name}-id"),
                    "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}
                }]
            }
        }))
    }

    #[test]
    fn target_kinds_and_aliases_parse() {
        assert_eq!(Kind::from_prefix("deployment"), Some(Kind::Deployment));
        assert_eq!(Kind::from_prefix("deploy"), Some(Kind::Deployment));
        assert_eq!(Kind::from_prefix("sts"), Some(Kind::StatefulSet));
        assert_eq!(Kind::from_prefix("ds"), Some(Kind::DaemonSet));
        assert_eq!(Kind::from_prefix("rs"), Some(Kind::ReplicaSet));
        assert_eq!(Kind::from_prefix("job"), Some(Kind::Job));
        assert_eq!(Kind::from_prefix("cronjob"), None);
        let target = KubeTarget {
            kind: Kind::from_prefix("deployment").unwrap(),
            name: "web".into(),
        };
        assert_eq!(target.to_string(), "deploy/web");
    }

    #[test]
    fn a_workload_picks_a_ready_pod_it_owns_first_by_name() {
        let pods = vec![
            running_pod("web-c", "rs-1", true),
            running_pod("web-a", "rs-1", false),
            running_pod("web-b", "rs-1", true),
            running_pod("other-a", "rs-2", true),
        ];
        let owners = BTreeSet::from(["rs-1".to_owned()]);
        let chosen = select_pod(&pods, &owners).unwrap();
        assert_eq!(chosen.metadata.name.as_deref(), Some("web-b"));
    }

    #[test]
    fn no_ready_pod_says_what_the_pods_are_doing() {
        let mut pending = running_pod("web-b", "rs-1", false);
        pending.status.as_mut().unwrap().phase = Some("Pending".into());
        let pods = vec![running_pod("web-a", "rs-1", false), pending];
        let owners = BTreeSet::from(["rs-1".to_owned()]);
        assert_eq!(
            select_pod(&pods, &owners).unwrap_err(),
            "its pods: web-a Running, not ready; web-b Pending"
        );
        let none = BTreeSet::from(["rs-9".to_owned()]);
        assert_eq!(select_pod(&pods, &none).unwrap_err(), "it has no pods");
    }

    #[test]
    fn a_running_pod_resolves_to_its_container() {
        let resolved = running_container(&running_pod("web", "o", true), None).unwrap();
        assert_eq!(
            resolved,
            ResolvedTarget {
                namespace: "ns".into(),
                pod: "web".into(),
                pod_uid: "uid-web".into(),
                node: "node1".into(),
                pod_ip: Some("10.245.0.7".parse().unwrap()),
                container: "web".into(),
                container_id: "containerd://web-id".into(),
            }
        );
    }

    fn two_container_pod(annotation: Option<&str>) -> Pod {
        let mut pod = running_pod("multi", "o", true);
        pod.spec.as_mut().unwrap().containers.push(
            serde_json::from_value(serde_json::json!({"name": "sidecar", "image": "i"})).unwrap(),
        );
        if let Some(name) = annotation {
            pod.metadata.annotations = Some(
                [(DEFAULT_CONTAINER_ANNOTATION.to_owned(), name.to_owned())]
                    .into_iter()
                    .collect(),
            );
        }
        pod
    }

    #[test]
    fn several_containers_need_a_choice_unless_annotated() {
        let err = pick_container(&two_container_pod(None), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod multi has several containers (web, sidecar): choose one with --container NAME"
        );
        assert_eq!(
            pick_container(&two_container_pod(Some("sidecar")), None).unwrap(),
            "sidecar"
        );
        assert_eq!(
            pick_container(&two_container_pod(None), Some("sidecar")).unwrap(),
            "sidecar"
        );
        let err = pick_container(&two_container_pod(None), Some("db")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "pod multi has no container db (it has: web, sidecar)"
        );
    }

    #[test]
    fn a_pod_that_is_not_running_gives_its_phase_and_the_waiting_reason() {
        let mut pod = running_pod("web", "o", false);
        let status = pod.status.as_mut().unwrap();
        status.phase = Some("Pending".into());
        status.container_statuses.as_mut().unwrap()[0].state = Some(
            serde_json::from_value(serde_json::json!({"waiting": {"reason": "ErrImageNeverPull"}}))
                .unwrap(),
        );
        assert_eq!(
            running_container(&pod, None).unwrap_err().to_string(),
            "pod web is not running (phase Pending; container web: waiting: ErrImageNeverPull)"
        );
    }

    #[test]
    fn a_container_that_is_not_running_is_reported() {
        let mut pod = two_container_pod(None);
        pod.status.as_mut().unwrap().container_statuses.as_mut().unwrap().push(
            serde_json::from_value(serde_json::json!({
                "name": "sidecar", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"terminated": {"reason": "Error", "exitCode": 2}}
            }))
            .unwrap(),
        );
        assert_eq!(
            running_container(&pod, Some("sidecar"))
                .unwrap_err()
                .to_string(),
            "container sidecar of pod multi is not running (terminated: Error, exit code 2)"
        );
    }

    #[test]
    fn selectors_use_the_query_syntax() {
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web", "tier": "front"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["a", "b"]},
                {"key": "legacy", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap();
        assert_eq!(
            selector_string(&selector),
            "app=web,tier=front,env in (a,b),!legacy"
        );
    }
}
