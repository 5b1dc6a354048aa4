//! `--agent job`: the agent as a short-lived pod on the target's node.
//!
//! A `batch/v1` Job (so that `ttlSecondsAfterFinished` can remove it if the client vanishes)
//! with one pod: `nodeName` = the target's node, `hostPID` so it sees the target container's
//! processes, the capabilities it needs to enter their namespaces (not privileged; see
//! [`agent_resources`](super::agent_resources), which also sets its resource requests and
//! limits), tolerating every taint, never restarted. The agent finds the target container's process by the container ID in the pod
//! status (matched against cgroups), binds its QUIC socket in its own pod's network (reachable
//! at the agent pod's IP, or through port-forward), enters the target's network namespace and
//! prints its ready line.
//!
//! Lifetime: the client deletes the Job (propagation Background, so its pod goes too) when the
//! session ends. If the client is killed, the agent exits by itself (30 s without a client,
//! or 3 s plus the reconnect window after the connection goes quiet, 18 s by default), the
//! Job finishes and its TTL removes it. A Job whose pod never starts (an image that cannot
//! be pulled) would never finish: it is created with `activeDeadlineSeconds` = the client's
//! agent timeout, so Kubernetes fails it (and its TTL removes it) by then whether the client
//! is still there or not; once the agent is ready the client removes the deadline (a `patch`
//! of the Job). The Job carries its client's identity for `mirrord-net clean` (see
//! [`client_process`](crate::client_process)).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod, PodSpec, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use super::agent_resources;
use crate::client_process::{CLIENT_ANNOTATION, TIMEOUT_ANNOTATION};

use super::agent_pod::{self, AgentContainer};
use super::error::{api_error, KubeError};
use super::kube_agent::{Cleanup, KubeAgent};
use super::rbac::Operation;
use super::target::ResolvedTarget;
use super::AgentSettings;

/// Seconds a finished agent Job is kept before Kubernetes removes it.
pub const TTL_AFTER_FINISHED: i32 = 5;
/// The agent container's name in its pod.
pub const CONTAINER: &str = "agent";
/// Labels every agent object carries.
pub const APP_LABEL: (&str, &str) = ("app.kubernetes.io/name", "mirrord-net-agent");
pub const SESSION_LABEL: &str = "mirrord-net/session";
pub const TARGET_POD_LABEL: &str = "mirrord-net/target-pod";

/// The agent's arguments for a target container found by its ID.
pub fn agent_args(target: &ResolvedTarget, settings: &AgentSettings) -> Vec<String> {
    let mut args = vec![
        "--target-container-id".to_owned(),
        target.container_id.clone(),
    ];
    args.extend(common_args(settings));
    args
}

/// Arguments every Kubernetes agent gets: who may connect, where to listen, the file mode,
/// the inbound traffic and, when asked for, how stolen ports are redirected.
pub fn common_args(settings: &AgentSettings) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--client-cert-sha256".into(),
        settings.client.to_string(),
        "--listen".into(),
        "0.0.0.0:0".into(),
        "--path".into(),
        "network".into(),
        "--fs-mode".into(),
        settings.fs_mode.into(),
        "--incoming".into(),
        settings.incoming.into(),
    ];
    if let Some(means) = settings.redirect_with {
        args.extend(["--redirect-with".into(), means.into()]);
    }
    args
}

/// The labels of a session's agent objects.
pub fn labels(settings: &AgentSettings, target: &ResolvedTarget) -> BTreeMap<String, String> {
    BTreeMap::from([
        (APP_LABEL.0.to_owned(), APP_LABEL.1.to_owned()),
        (SESSION_LABEL.to_owned(), settings.session.clone()),
        (TARGET_POD_LABEL.to_owned(), truncate_label(&target.pod)),
    ])
}

/// The agent's environment: its log filter, when the client is verbose.
pub fn agent_env(settings: &AgentSettings) -> Option<Vec<EnvVar>> {
    settings.log_filter.map(|filter| {
        vec![EnvVar {
            name: "MIRRORD_NET_AGENT_LOG".into(),
            value: Some(filter.into()),
            ..EnvVar::default()
        }]
    })
}

/// The Job for `target`'s agent: pure, so the spec is tested without a cluster.
pub fn job_spec(target: &ResolvedTarget, settings: &AgentSettings) -> Job {
    let labels = labels(settings, target);
    let container = Container {
        name: CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(agent_args(target, settings)),
        env: agent_env(settings),
        security_context: Some(agent_resources::security_context(settings.privileged)),
        resources: Some(settings.resources.requirements()),
        ..Container::default()
    };
    let mut annotations = BTreeMap::from([(
        TIMEOUT_ANNOTATION.to_owned(),
        settings.timeout.as_secs().to_string(),
    )]);
    if let Some(client) = &settings.client_process {
        annotations.insert(CLIENT_ANNOTATION.to_owned(), client.clone());
    }
    let pod = PodSpec {
        node_name: Some(target.node.clone()),
        host_pid: Some(true),
        restart_policy: Some("Never".into()),
        tolerations: Some(vec![Toleration {
            operator: Some("Exists".into()),
            ..Toleration::default()
        }]),
        automount_service_account_token: Some(false),
        termination_grace_period_seconds: Some(1),
        containers: vec![container],
        ..PodSpec::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(format!("mirrord-net-agent-{}", settings.session)),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            // Until the agent is ready (then lifted, see `lift_deadline`): a Job whose pod
            // never starts (an image that cannot be pulled) fails at the client's timeout,
            // and its TTL removes it, even when the client is gone.
            active_deadline_seconds: Some(deadline(settings)),
            ttl_seconds_after_finished: Some(TTL_AFTER_FINISHED),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// Creates the agent Job; the returned handle deletes it when finished.
pub async fn create(
    client: &kube::Client,
    target: &ResolvedTarget,
    settings: &AgentSettings,
) -> Result<KubeAgent, KubeError> {
    let namespace = settings.namespace.clone();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &namespace);
    let job = job_spec(target, settings);
    let name = job.metadata.name.clone().expect("job has a name");
    jobs.create(&PostParams::default(), &job)
        .await
        .map_err(api_error(Operation::new(
            "create",
            "jobs.batch",
            &namespace,
        )))?;
    tracing::info!(job = %name, namespace = %namespace, node = %target.node, "agent job created");
    Ok(KubeAgent::new(
        client.clone(),
        Cleanup::Job { namespace, name },
    ))
}

/// Waits until the Job's agent is ready and records where it is in `agent`.
pub async fn wait_ready(
    client: &kube::Client,
    target: &ResolvedTarget,
    settings: &AgentSettings,
    agent: &mut KubeAgent,
) -> Result<(), KubeError> {
    let started = tokio::time::Instant::now();
    let namespace = &settings.namespace;
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let job_name = format!("mirrord-net-agent-{}", settings.session);
    let pod = find_job_pod(&pods, namespace, &job_name, settings.timeout).await?;
    let container = AgentContainer {
        namespace: namespace.clone(),
        pod: pod.metadata.name.clone().unwrap_or_default(),
        container: CONTAINER.into(),
        ephemeral: false,
        image: settings.image.clone(),
        node: target.node.clone(),
    };
    let left = settings.timeout.saturating_sub(started.elapsed());
    agent_pod::wait_running(&pods, &container, left).await?;
    let left = settings.timeout.saturating_sub(started.elapsed());
    let (ready, tail, log_task) =
        agent_pod::read_ready(&pods, &container, left, settings.log_filter.is_some()).await?;
    let pod = pods
        .get(&container.pod)
        .await
        .map_err(api_error(Operation::new("get", "pods", namespace)))?;
    let ip = pod
        .status
        .and_then(|status| status.pod_ip)
        .and_then(|ip| ip.parse().ok());
    agent.set_ready(container, ip, ready, tail, log_task);
    lift_deadline(client, namespace, &job_name).await
}

/// The Job's `activeDeadlineSeconds` while its agent starts: the client's timeout.
fn deadline(settings: &AgentSettings) -> i64 {
    i64::try_from(settings.timeout.as_secs().max(1)).unwrap_or(i64::MAX)
}

/// Removes the Job's start deadline once its agent is ready: the session may last.
async fn lift_deadline(client: &kube::Client, namespace: &str, job: &str) -> Result<(), KubeError> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "spec": { "activeDeadlineSeconds": null } });
    jobs.patch(job, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_error(Operation::new("patch", "jobs.batch", namespace)))?;
    Ok(())
}

/// The Job controller names its pods itself; they carry the `job-name` label.
async fn find_job_pod(
    pods: &Api<Pod>,
    namespace: &str,
    job: &str,
    timeout: Duration,
) -> Result<Pod, KubeError> {
    let params = ListParams::default().labels(&format!("job-name={job}"));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let list = pods
            .list(&params)
            .await
            .map_err(api_error(Operation::new("list", "pods", namespace)))?;
        if let Some(pod) = list.items.into_iter().next() {
            return Ok(pod);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(KubeError::AgentTimeout {
                what: format!("job {job}"),
                timeout,
                detail: format!(
                    " (no pod was created: `kubectl -n {namespace} describe job {job}` says why, \
                     e.g. a policy that forbids privileged hostPID pods; try --agent ephemeral)"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Label values are at most 63 characters.
fn truncate_label(value: &str) -> String {
    value.chars().take(63).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::AgentResources;
    use mirrord_net_protocol::trust::Fingerprint;

    pub(crate) fn target() -> ResolvedTarget {
        ResolvedTarget {
            namespace: "team".into(),
            pod: "web-7d9f".into(),
            pod_uid: "uid".into(),
            node: "node1".into(),
            pod_ip: Some("10.245.0.9".parse().unwrap()),
            container: "web".into(),
            container_id: "containerd://abc123".into(),
        }
    }

    pub(crate) fn settings() -> AgentSettings {
        AgentSettings {
            session: "0a1b2c3d4e".into(),
            namespace: "agents".into(),
            image: "localhost/mirrord-net-agent:0.1.0".into(),
            client: Fingerprint::of(b"client"),
            fs_mode: "read",
            incoming: "none",
            redirect_with: None,
            log_filter: None,
            timeout: Duration::from_secs(60),
            resources: AgentResources::default(),
            privileged: false,
            client_process: Some("host=h boot=b pidns=1 pid=2 start=3".into()),
        }
    }

    #[test]
    fn the_job_runs_one_hostpid_pod_with_capabilities_resources_and_a_start_deadline() {
        let job = job_spec(&target(), &settings());
        let value = serde_json::to_value(&job).unwrap();
        assert_eq!(value["metadata"]["name"], "mirrord-net-agent-0a1b2c3d4e");
        assert_eq!(value["metadata"]["namespace"], "agents");
        assert_eq!(value["spec"]["backoffLimit"], 0);
        assert_eq!(value["spec"]["ttlSecondsAfterFinished"], TTL_AFTER_FINISHED);
        let pod = &value["spec"]["template"]["spec"];
        assert_eq!(pod["nodeName"], "node1");
        assert_eq!(pod["hostPID"], true);
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(
            pod["tolerations"],
            serde_json::json!([{"operator": "Exists"}])
        );
        let container = &pod["containers"][0];
        assert_eq!(container["image"], "localhost/mirrord-net-agent:0.1.0");
        assert_eq!(container["imagePullPolicy"], "IfNotPresent");
        assert_eq!(container["securityContext"]["privileged"], false);
        assert_eq!(
            container["securityContext"]["capabilities"]["add"][0],
            "SYS_ADMIN"
        );
        assert_eq!(container["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(container["resources"]["requests"]["cpu"], "100m");
        assert_eq!(value["spec"]["activeDeadlineSeconds"], 60);
        let annotations = &value["metadata"]["annotations"];
        assert_eq!(annotations[TIMEOUT_ANNOTATION], "60");
        assert_eq!(
            annotations[CLIENT_ANNOTATION],
            "host=h boot=b pidns=1 pid=2 start=3"
        );
        assert!(
            container.get("command").is_none(),
            "the image's entrypoint runs"
        );
        let labels = &value["spec"]["template"]["metadata"]["labels"];
        assert_eq!(labels[SESSION_LABEL], "0a1b2c3d4e");
        assert_eq!(labels[TARGET_POD_LABEL], "web-7d9f");
    }

    #[test]
    fn the_agent_is_told_the_container_id_client_and_mode() {
        let mut settings = settings();
        settings.fs_mode = "off";
        settings.log_filter = Some("debug");
        let job = job_spec(&target(), &settings);
        let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
        let fingerprint = Fingerprint::of(b"client").to_string();
        assert_eq!(
            container.args.clone().unwrap(),
            [
                "--target-container-id",
                "containerd://abc123",
                "--client-cert-sha256",
                &fingerprint,
                "--listen",
                "0.0.0.0:0",
                "--path",
                "network",
                "--fs-mode",
                "off",
                "--incoming",
                "none"
            ]
        );
        let env = container.env.clone().unwrap();
        assert_eq!(env[0].name, "MIRRORD_NET_AGENT_LOG");
        assert_eq!(env[0].value.as_deref(), Some("debug"));
    }
}
