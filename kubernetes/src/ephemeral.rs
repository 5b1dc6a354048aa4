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
//!
//! Kubernetes 1.16 to 1.21 served an alpha form of the subresource (behind the
//! `EphemeralContainers` feature gate): its object is an `EphemeralContainers` list, not the
//! Pod, so the patch there is `{"ephemeralContainers": [...]}` ([`alpha_patch`]). The client
//! asks the API server's version first ([`Form::for_version`]) and sends the form it serves; a
//! cluster with the gate off answers 400, which is reported as such.
//!
//! Capabilities: the container runs with the runtime's default set (it enters no namespace,
//! so it needs no `SYS_ADMIN`) plus exactly what the session's inbound traffic needs
//! ([`capabilities`]): `NET_ADMIN` for the steal's nftables table when the session steals,
//! `NET_RAW` for the mirror's packet socket when it mirrors (some runtimes, CRI-O among them,
//! leave it out of their default set). A session that takes no inbound traffic gets no
//! `securityContext` at all. The agent then drops what its features do not use (its
//! `privileges` module), as a Job agent does. Kubernetes 1.20 and older refuse any
//! `securityContext` on an ephemeral container: there a session that steals is refused with
//! one line naming `--agent job` (the runtime's default set has no `NET_ADMIN`), and one
//! that only mirrors is added again without it (containerd's and Docker's default sets hold
//! `NET_RAW`; where a runtime leaves it out, the mirror's packet socket is refused).

use std::time::Duration;

use k8s_openapi::api::core::v1::{Capabilities, EphemeralContainer, Pod, SecurityContext};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};

use super::agent_job::{agent_env, common_args};
use super::agent_pod::{self, AgentContainer};
use super::error::{is_not_found, KubeError};
use super::kube_agent::{Cleanup, KubeAgent};
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

/// The capabilities the ephemeral agent asks for beyond the runtime's default set, for the
/// agent's `--incoming` (see the module comment).
pub fn capabilities(incoming: &str) -> Vec<String> {
    let steal = matches!(incoming, "steal" | "all");
    let mirror = matches!(incoming, "mirror" | "all");
    let mut caps = Vec::new();
    if steal {
        caps.push("NET_ADMIN".to_owned());
    }
    if mirror {
        caps.push("NET_RAW".to_owned());
    }
    caps
}

/// The container's `securityContext`: the added [`capabilities`], or none when there are none.
fn security_context(settings: &AgentSettings) -> Option<SecurityContext> {
    let add = capabilities(settings.incoming);
    (!add.is_empty()).then(|| SecurityContext {
        capabilities: Some(Capabilities {
            add: Some(add),
            drop: None,
        }),
        ..SecurityContext::default()
    })
}

/// The agent container; with `ask` its `securityContext` asks for [`capabilities`].
fn container(target: &ResolvedTarget, settings: &AgentSettings, ask: bool) -> EphemeralContainer {
    EphemeralContainer {
        name: container_name(settings),
        image: Some(settings.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(agent_args(settings)),
        env: agent_env(settings),
        target_container_name: Some(target.container.clone()),
        security_context: security_context(settings).filter(|_| ask),
        ..EphemeralContainer::default()
    }
}

/// The strategic merge patch of the Pod that adds the agent container (Kubernetes 1.22 and
/// later): pure, tested without a cluster.
pub fn ephemeral_patch(target: &ResolvedTarget, settings: &AgentSettings) -> serde_json::Value {
    patch_for(Form::Pod, target, settings, true)
}

/// The strategic merge patch of the alpha `EphemeralContainers` object (Kubernetes 1.16 to
/// 1.21) that adds the agent container.
pub fn alpha_patch(target: &ResolvedTarget, settings: &AgentSettings) -> serde_json::Value {
    patch_for(Form::Alpha, target, settings, true)
}

/// The patch of `form`; `ask`: whether the container asks for [`capabilities`].
pub fn patch_for(
    form: Form,
    target: &ResolvedTarget,
    settings: &AgentSettings,
    ask: bool,
) -> serde_json::Value {
    let container = container(target, settings, ask);
    match form {
        Form::Pod => serde_json::json!({ "spec": { "ephemeralContainers": [container] } }),
        Form::Alpha => serde_json::json!({ "ephemeralContainers": [container] }),
    }
}

/// Which object the `ephemeralcontainers` subresource of a cluster takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The Pod (Kubernetes 1.22 and later).
    Pod,
    /// The alpha `EphemeralContainers` object (before 1.22).
    Alpha,
}

impl Form {
    /// From the API server's version (`minor` may carry a suffix, as in `"20+"`); the
    /// current form when it is not a number.
    pub fn for_version(major: &str, minor: &str) -> Form {
        let number = |text: &str| -> Option<u32> {
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        };
        match (number(major), number(minor)) {
            (Some(1), Some(minor)) if minor < 22 => Form::Alpha,
            _ => Form::Pod,
        }
    }
}

/// The form this cluster serves, from `GET /version` (readable by anyone); the current one
/// when the answer is missing or unreadable.
async fn form(client: &kube::Client) -> Form {
    match client.apiserver_version().await {
        Ok(info) => Form::for_version(&info.major, &info.minor),
        Err(err) => {
            tracing::debug!(%err, "no server version: the current ephemeral containers API");
            Form::Pod
        }
    }
}

/// Adds the agent container to the target pod.
pub async fn create(
    client: &kube::Client,
    target: &ResolvedTarget,
    settings: &AgentSettings,
) -> Result<KubeAgent, KubeError> {
    let operation = Operation::new("patch", "pods/ephemeralcontainers", &target.namespace);
    let form = form(client).await;
    let mut patched = send(client, form, target, settings, true).await;
    if matches!(&patched, Err(err) if is_security_context_refused(err)) {
        if matches!(settings.incoming, "steal" | "all") {
            return Err(KubeError::Config(
                "this cluster refuses a securityContext on ephemeral containers (Kubernetes \
                 1.20 and older do), so an ephemeral agent cannot get the NET_ADMIN that \
                 stealing needs: use --agent job"
                    .into(),
            ));
        }
        tracing::info!(
            "this cluster refuses a securityContext on ephemeral containers: the agent gets \
             the runtime's default capabilities"
        );
        patched = send(client, form, target, settings, false).await;
    }
    patched.map_err(|err| {
        if is_not_found(&err) {
            KubeError::Config(
                "this cluster does not serve pods/ephemeralcontainers (Kubernetes 1.23 or \
                 later does): use --agent job"
                    .into(),
            )
        } else if is_gate_off(&err) {
            KubeError::Config(
                "this cluster has ephemeral containers turned off (its feature gate \
                 EphemeralContainers): use --agent job"
                    .into(),
            )
        } else {
            KubeError::api(operation, err)
        }
    })?;
    tracing::info!(pod = %target.pod, container = %container_name(settings), "ephemeral agent added");
    Ok(KubeAgent::new(client.clone(), Cleanup::Nothing))
}

/// Sends the patch of `form` (see [`patch_for`]).
async fn send(
    client: &kube::Client,
    form: Form,
    target: &ResolvedTarget,
    settings: &AgentSettings,
    ask: bool,
) -> Result<(), kube::Error> {
    let patch = Patch::Strategic(patch_for(form, target, settings, ask));
    match form {
        Form::Pod => {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
            pods.patch_ephemeral_containers(&target.pod, &PatchParams::default(), &patch)
                .await
                .map(drop)
        }
        Form::Alpha => patch_alpha(client, target, &patch).await,
    }
}

/// The alpha form's patch: its answer is an `EphemeralContainers` object, read as a dynamic
/// one.
async fn patch_alpha(
    client: &kube::Client,
    target: &ResolvedTarget,
    patch: &Patch<serde_json::Value>,
) -> Result<(), kube::Error> {
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("", "v1", "EphemeralContainers"),
        "pods",
    );
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &target.namespace, &resource);
    api.patch_subresource(
        "ephemeralcontainers",
        &target.pod,
        &PatchParams::default(),
        patch,
    )
    .await
    .map(drop)
}

/// Kubernetes 1.20 and older refuse a `securityContext` on an ephemeral container (422,
/// `spec.ephemeralContainers[0].securityContext: Forbidden: cannot be set for an Ephemeral
/// Container`).
fn is_security_context_refused(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status)
        if status.code == 422 && status.message.contains("securityContext: Forbidden"))
}

/// A cluster of the alpha form with the feature gate off answers 400 `feature
/// EphemeralContainers disabled`.
fn is_gate_off(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status)
        if status.code == 400 && status.message.contains("EphemeralContainers disabled"))
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

    /// The agent added and ready, as a session starts it.
    async fn start(
        client: &kube::Client,
        target: &ResolvedTarget,
        settings: &AgentSettings,
    ) -> Result<KubeAgent, KubeError> {
        let mut agent = create(client, target, settings).await?;
        wait_ready(client, target, settings, &mut agent).await?;
        Ok(agent)
    }
    use crate::agent_job::tests::{settings, target};
    use crate::testing::{Replay, Reply};

    /// `GET /version` of a current API server and of Kubernetes 1.20.
    const VERSION_1_33: &str = r#"{"major": "1", "minor": "33", "gitVersion": "v1.33.1",
        "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828", "gitTreeState": "clean",
        "buildDate": "2025-05-15T08:19:08Z", "goVersion": "go1.24.2", "compiler": "gc",
        "platform": "linux/amd64"}"#;
    const VERSION_1_20: &str = r#"{"major": "1", "minor": "20", "gitVersion": "v1.20.2",
        "gitCommit": "faecb196815e248d3ecfb03c680a4507229c2a56", "gitTreeState": "clean",
        "buildDate": "2021-01-13T13:20:00Z", "goVersion": "go1.19.8", "compiler": "gc",
        "platform": "linux/amd64"}"#;

    fn version(body: &'static str) -> Reply {
        Reply::json("GET", "/version", body)
    }

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
        assert!(
            container.get("securityContext").is_none(),
            "nothing beyond the runtime's defaults without inbound traffic"
        );
    }

    #[test]
    fn the_container_asks_for_network_administration_only_to_steal_and_raw_sockets_only_to_mirror()
    {
        let context = |incoming: &'static str| {
            let mut settings = settings();
            settings.incoming = incoming;
            let patch = ephemeral_patch(&target(), &settings);
            let container = patch["spec"]["ephemeralContainers"][0].clone();
            let args = container["args"].as_array().unwrap().clone();
            let at = args.iter().position(|arg| arg == "--incoming").unwrap();
            assert_eq!(args[at + 1], incoming, "the agent is told the same");
            container.get("securityContext").cloned()
        };
        assert_eq!(context("none"), None);
        let only =
            |caps: serde_json::Value| Some(serde_json::json!({ "capabilities": { "add": caps } }));
        assert_eq!(context("steal"), only(serde_json::json!(["NET_ADMIN"])));
        assert_eq!(context("mirror"), only(serde_json::json!(["NET_RAW"])));
        assert_eq!(
            context("all"),
            only(serde_json::json!(["NET_ADMIN", "NET_RAW"]))
        );
    }

    /// The whole ephemeral path against responses a Kubernetes 1.33 API server gives.
    #[tokio::test]
    async fn the_ephemeral_agent_starts_against_a_current_api_server() {
        let replay = Replay::new(vec![
            version(VERSION_1_33),
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
        assert_eq!(sent[1].0, "PATCH");
        assert_eq!(
            sent[1].2.as_deref(),
            Some("application/strategic-merge-patch+json")
        );
        let body: serde_json::Value = serde_json::from_slice(&sent[1].3).unwrap();
        assert_eq!(body, ephemeral_patch(&target, &settings));
        agent.finish(Duration::from_millis(100)).await;
        assert_eq!(replay.unused(), 0);
    }

    #[tokio::test]
    async fn a_missing_agent_image_in_an_ephemeral_container_is_reported() {
        let replay = Replay::new(vec![
            version(VERSION_1_33),
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
        let replay = Replay::new(vec![
            version(VERSION_1_33),
            Reply::status(
                403,
                "PATCH",
                "/api/v1/namespaces/team/pods/web-7d9f/ephemeralcontainers",
                include_str!("fixtures/ephemeral/forbidden.json"),
            ),
        ]);
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

    #[test]
    fn the_subresource_form_follows_the_servers_version() {
        assert_eq!(Form::for_version("1", "33"), Form::Pod);
        assert_eq!(Form::for_version("1", "20"), Form::Alpha);
        assert_eq!(Form::for_version("1", "21+"), Form::Alpha);
        assert_eq!(Form::for_version("1", "22"), Form::Pod);
        assert_eq!(Form::for_version("2", "0"), Form::Pod);
        assert_eq!(Form::for_version("", ""), Form::Pod, "unknown: current");
        let target = target();
        let settings = settings();
        assert_eq!(
            alpha_patch(&target, &settings)["ephemeralContainers"],
            ephemeral_patch(&target, &settings)["spec"]["ephemeralContainers"],
            "the same container in both forms"
        );
    }

    /// Kubernetes 1.20 with the EphemeralContainers gate on: the alpha object is patched.
    #[tokio::test]
    async fn an_alpha_api_server_gets_the_ephemeral_containers_object() {
        let replay = Replay::new(vec![
            version(VERSION_1_20),
            Reply::json(
                "PATCH",
                "/api/v1/namespaces/team/pods/web-7d9f/ephemeralcontainers",
                r#"{"kind": "EphemeralContainers", "apiVersion": "v1",
                    "metadata": {"name": "web-7d9f", "namespace": "team"},
                    "ephemeralContainers": []}"#,
            ),
        ]);
        let client = kube::Client::new(replay.clone(), "team");
        let mut target = target();
        target.namespace = "team".into();
        let mut settings = settings();
        settings.incoming = "steal";
        create(&client, &target, &settings).await.unwrap();
        let sent = replay.requests();
        assert_eq!(sent[1].0, "PATCH");
        assert_eq!(
            sent[1].2.as_deref(),
            Some("application/strategic-merge-patch+json")
        );
        let body: serde_json::Value = serde_json::from_slice(&sent[1].3).unwrap();
        assert_eq!(body, alpha_patch(&target, &settings));
        assert_eq!(
            body["ephemeralContainers"][0]["securityContext"]["capabilities"]["add"],
            serde_json::json!(["NET_ADMIN"])
        );
        assert_eq!(replay.unused(), 0);
    }

    #[tokio::test]
    async fn an_alpha_api_server_with_the_gate_off_is_one_clear_error() {
        let replay = Replay::new(vec![
            version(VERSION_1_20),
            Reply::status(
                400,
                "PATCH",
                "/api/v1/namespaces/team/pods/web-7d9f/ephemeralcontainers",
                r#"{"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "feature EphemeralContainers disabled", "reason": "BadRequest",
                    "code": 400}"#,
            ),
        ]);
        let client = kube::Client::new(replay, "team");
        let mut target = target();
        target.namespace = "team".into();
        let err = create(&client, &target, &settings()).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "this cluster has ephemeral containers turned off (its feature gate \
             EphemeralContainers): use --agent job"
        );
    }

    const SECURITY_CONTEXT_REFUSED: &str = r#"{"kind": "Status", "apiVersion": "v1",
        "metadata": {}, "status": "Failure", "message": "Pod \"web-7d9f\" is invalid:
        spec.ephemeralContainers[0].securityContext: Forbidden: cannot be set for an Ephemeral
        Container", "reason": "Invalid", "code": 422}"#;
    const ALPHA_ANSWER: &str = r#"{"kind": "EphemeralContainers", "apiVersion": "v1",
        "metadata": {"name": "web-7d9f", "namespace": "team"}, "ephemeralContainers": []}"#;
    const ALPHA_URI: &str = "/api/v1/namespaces/team/pods/web-7d9f/ephemeralcontainers";

    /// Kubernetes 1.20 refuses the capabilities: a steal cannot run there.
    #[tokio::test]
    async fn a_steal_where_ephemeral_containers_get_no_capabilities_is_one_clear_error() {
        let replay = Replay::new(vec![
            version(VERSION_1_20),
            Reply::status(422, "PATCH", ALPHA_URI, SECURITY_CONTEXT_REFUSED),
        ]);
        let client = kube::Client::new(replay.clone(), "team");
        let mut target = target();
        target.namespace = "team".into();
        let mut settings = settings();
        settings.incoming = "steal";
        let err = create(&client, &target, &settings).await.err().unwrap();
        assert_eq!(
            err.to_string(),
            "this cluster refuses a securityContext on ephemeral containers (Kubernetes 1.20 \
             and older do), so an ephemeral agent cannot get the NET_ADMIN that stealing \
             needs: use --agent job"
        );
        assert_eq!(replay.requests().len(), 2, "nothing else was tried");
    }

    /// A mirror there runs on the runtime's default capabilities.
    #[tokio::test]
    async fn a_mirror_where_ephemeral_containers_get_no_capabilities_asks_for_none() {
        let replay = Replay::new(vec![
            version(VERSION_1_20),
            Reply::status(422, "PATCH", ALPHA_URI, SECURITY_CONTEXT_REFUSED),
            Reply::json("PATCH", ALPHA_URI, ALPHA_ANSWER),
        ]);
        let client = kube::Client::new(replay.clone(), "team");
        let mut target = target();
        target.namespace = "team".into();
        let mut settings = settings();
        settings.incoming = "mirror";
        create(&client, &target, &settings).await.unwrap();
        let sent = replay.requests();
        let body = |n: usize| serde_json::from_slice::<serde_json::Value>(&sent[n].3).unwrap();
        assert_eq!(
            body(1)["ephemeralContainers"][0]["securityContext"]["capabilities"]["add"],
            serde_json::json!(["NET_RAW"])
        );
        assert_eq!(body(2), patch_for(Form::Alpha, &target, &settings, false));
        assert!(body(2)["ephemeralContainers"][0]
            .get("securityContext")
            .is_none());
        assert_eq!(replay.unused(), 0);
    }
}
