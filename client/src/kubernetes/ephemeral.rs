//! `--agent ephemeral`: the agent as an ephemeral container in the target pod.
//!
//! For clusters that forbid privileged pods. The container is added through the
//! `pods/NAME/ephemeralcontainers` subresource (a strategic merge patch of the Pod, the API of
//! Kubernetes 1.23 and later) with `targetContainerName` = the target container, so it shares
//! that container's PID namespace: the target's main process is its PID 1. It is in the pod's
//! network namespace from the start, binds its QUIC socket there (reachable at the pod's IP,
//! or through port-forward to the pod) and reads files and environment through /proc/1.
//!
//! An ephemeral container cannot be removed: it stays in the pod's spec, terminated, until the
//! pod is deleted. The agent in it exits when the session ends.

use std::time::Duration;

use k8s_openapi::api::core::v1::{EphemeralContainer, Pod};
use kube::api::{Api, Patch, PatchParams};

use super::agent_job::{agent_env, common_args};
use super::agent_pod::{self, AgentContainer};
use super::error::{is_not_found, KubeError};
use super::handle::{Cleanup, KubeAgent};
use super::rbac::Operation;
use super::target::ResolvedTarget;
use super::AgentSettings;

/// The ephemeral container's name: unique per session, as names in a pod must be.
pub fn container_name(settings: &AgentSettings) -> String {
    format!("mirrord-net-agent-{}", settings.session)
}

/// The agent's arguments inside the target container's PID namespace.
pub fn agent_args(settings: &AgentSettings) -> Vec<String> {
    let mut args = vec!["--target-pid".to_owned(), "1".to_owned()];
    args.extend(common_args(settings));
    args
}

/// The strategic merge patch that adds the agent container: pure, tested without a cluster.
pub fn ephemeral_patch(target: &ResolvedTarget, settings: &AgentSettings) -> serde_json::Value {
    let container = EphemeralContainer {
        name: container_name(settings),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(agent_args(settings)),
        env: agent_env(settings),
        target_container_name: Some(target.container.clone()),
        ..EphemeralContainer::default()
    };
    serde_json::json!({ "spec": { "ephemeralContainers": [container] } })
}

/// Adds the agent to the target pod and waits for its ready line.
pub async fn start(
    client: &kube::Client,
    target: &ResolvedTarget,
    settings: &AgentSettings,
) -> Result<KubeAgent, KubeError> {
    let mut agent = create(client, target, settings).await?;
    wait_ready(client, target, settings, &mut agent).await?;
    Ok(agent)
}

/// Adds the agent container to the target pod.
pub async fn create(
    client: &kube::Client,
    target: &ResolvedTarget,
    settings: &AgentSettings,
) -> Result<KubeAgent, KubeError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let operation = Operation::new("patch", "pods/ephemeralcontainers", &target.namespace);
    pods.patch_ephemeral_containers(
        &target.pod,
        &PatchParams::default(),
        &Patch::Strategic(ephemeral_patch(target, settings)),
    )
    .await
    .map_err(|err| {
        if is_not_found(&err) {
            KubeError::Config(
                "this cluster does not serve pods/ephemeralcontainers (Kubernetes 1.23 or \
                 later does): use --agent job"
                    .into(),
            )
        } else {
            KubeError::api(operation, err)
        }
    })?;
    tracing::info!(pod = %target.pod, container = %container_name(settings), "ephemeral agent added");
    Ok(KubeAgent::new(client.clone(), Cleanup::Nothing))
}

/// Waits until the ephemeral agent is ready and records where it is in `agent`.
pub async fn wait_ready(
    client: &kube::Client,
    target: &ResolvedTarget,
    settings: &AgentSettings,
    agent: &mut KubeAgent,
) -> Result<(), KubeError> {
    let started = tokio::time::Instant::now();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let container = AgentContainer {
        namespace: target.namespace.clone(),
        pod: target.pod.clone(),
        container: container_name(settings),
        ephemeral: true,
        image: settings.image.clone(),
        node: target.node.clone(),
    };
    agent_pod::wait_running(&pods, &container, settings.timeout).await?;
    let left = settings
        .timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_secs(1));
    let (ready, tail, log_task) =
        agent_pod::read_ready(&pods, &container, left, settings.log_filter.is_some()).await?;
    agent.set_ready(container, target.pod_ip, ready, tail, log_task);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::agent_job::tests::{settings, target};
    use crate::kubernetes::testing::{Replay, Reply};

    #[test]
    fn the_patch_adds_one_container_targeting_the_target_container() {
        let patch = ephemeral_patch(&target(), &settings());
        let containers = patch["spec"]["ephemeralContainers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        let container = &containers[0];
        assert_eq!(container["name"], "mirrord-net-agent-0a1b2c3d4e");
        assert_eq!(container["targetContainerName"], "web");
        assert_eq!(container["imagePullPolicy"], "IfNotPresent");
        assert_eq!(container["args"][0], "--target-pid");
        assert_eq!(container["args"][1], "1");
        assert!(container.get("securityContext").is_none(), "not privileged");
    }

    /// The whole ephemeral path against responses a Kubernetes 1.33 API server gives.
    #[tokio::test]
    async fn the_ephemeral_agent_starts_against_a_current_api_server() {
        let replay = Replay::new(vec![
            Reply::json(
                "PATCH",
                "/api/v1/namespaces/team/pods/web-7d9f/ephemeralcontainers",
                include_str!("fixtures/ephemeral/patch.json"),
            ),
            Reply::json(
                "GET",
                "/api/v1/namespaces/team/pods/web-7d9f",
                include_str!("fixtures/ephemeral/pod-waiting.json"),
            ),
            Reply::json(
                "GET",
                "/api/v1/namespaces/team/pods/web-7d9f",
                include_str!("fixtures/ephemeral/pod-running.json"),
            ),
            Reply::text(
                "GET",
                "/api/v1/namespaces/team/pods/web-7d9f/log?&container=mirrord-net-agent-0a1b2c3d4e&follow=true",
                include_str!("fixtures/ephemeral/agent.log"),
            ),
        ]);
        let client = kube::Client::new(replay.clone(), "team");
        let mut settings = settings();
        settings.namespace = "team".into();
        let mut target = target();
        target.namespace = "team".into();
        let agent = start(&client, &target, &settings).await.unwrap();
        let ready = agent.ready.clone().unwrap();
        assert_eq!(ready.addr, "0.0.0.0:41641".parse().unwrap());
        assert_eq!(agent.pod_ip, target.pod_ip);
        // The patch sent is a strategic merge patch of exactly the agent container.
        let sent = replay.requests();
        assert_eq!(sent[0].0, "PATCH");
        assert_eq!(
            sent[0].2.as_deref(),
            Some("application/strategic-merge-patch+json")
        );
        let body: serde_json::Value = serde_json::from_slice(&sent[0].3).unwrap();
        assert_eq!(body, ephemeral_patch(&target, &settings));
        agent.finish(Duration::from_millis(100)).await;
        assert_eq!(replay.unused(), 0);
    }

    #[tokio::test]
    async fn a_missing_agent_image_in_an_ephemeral_container_is_reported() {
        let replay = Replay::new(vec![
            Reply::json(
                "PATCH",
                "/api/v1/namespaces/team/pods/web-7d9f/ephemeralcontainers",
                include_str!("fixtures/ephemeral/patch.json"),
            ),
            Reply::json(
                "GET",
                "/api/v1/namespaces/team/pods/web-7d9f",
                include_str!("fixtures/ephemeral/pod-image-missing.json"),
            ),
        ]);
        let client = kube::Client::new(replay, "team");
        let mut target = target();
        target.namespace = "team".into();
        let err = start(&client, &target, &settings()).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "agent image localhost/mirrord-net-agent:0.1.0 is not present on node node1 \
             (ErrImageNeverPull): import it into the node's container runtime \
             (scripts/build-agent-image.sh builds it) or name another with --agent-image"
        );
    }

    #[tokio::test]
    async fn a_forbidden_patch_names_the_subresource() {
        let replay = Replay::new(vec![Reply::status(
            403,
            "PATCH",
            "/api/v1/namespaces/team/pods/web-7d9f/ephemeralcontainers",
            include_str!("fixtures/ephemeral/forbidden.json"),
        )]);
        let client = kube::Client::new(replay, "team");
        let mut target = target();
        target.namespace = "team".into();
        let err = start(&client, &target, &settings()).await.err().unwrap();
        assert!(
            err.to_string().starts_with(
                "not allowed: needs `patch` on `pods/ephemeralcontainers` in namespace team \
                 (Kubernetes said: pods \"web-7d9f\" is forbidden"
            ),
            "{err}"
        );
    }
}
