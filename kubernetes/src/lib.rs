//! Kubernetes targets: find the target container, start its agent beside it, reach it.
//!
//! A session on `pod/NAME` (or a workload) goes:
//! 1. [`config`]: the cluster and namespace, from kubeconfig as kubectl reads it (or the pod's
//!    service account);
//! 2. [`target`]: the target resolved to one running container — pod, UID, node, IP,
//!    container ID;
//! 3. the agent: [`agent_job`] (default; a privileged hostPID pod on the target's node) or
//!    [`ephemeral`] (a container added to the target pod); [`agent_pod`] waits for it and
//!    reads its ready line from its log;
//! 4. [`transport`]: QUIC to the agent pod's IP, or over port-forward.
//!
//! [`kube_agent::KubeAgent`] owns what the session created in the cluster and removes it on every
//! exit path. [`rbac`] turns a 403 into the permission the user lacks; [`ls`] lists targets;
//! [`clean`] removes the agents of sessions that are over.

pub mod agent_job;
pub mod agent_pod;
pub mod agent_resources;
mod agent_settings;
pub mod clean;
pub mod client_process;
pub mod config;
pub mod ephemeral;
pub mod error;
pub mod kube_agent;
pub mod ls;
pub mod rbac;
pub mod target;
pub mod transport;

#[cfg(test)]
mod testing;

use std::time::Duration;

use mirrord_net_protocol::trust::SessionIdentity;
use tokio::signal::unix::{signal, SignalKind};

pub use agent_resources::AgentResources;
pub use agent_settings::AgentSettings;
pub use config::ClusterArgs;
pub use error::KubeError;
pub use kube_agent::KubeAgent;
pub use target::{KubeTarget, ResolvedTarget};
pub use transport::TransportMode;

use mirrord_net_tunnel::Tunnel;

/// The agent image this build runs, as `scripts/build-agent-image.sh` tags it.
pub fn default_agent_image() -> String {
    format!("localhost/mirrord-net-agent:{}", env!("CARGO_PKG_VERSION"))
}

/// How the agent is started next to a Kubernetes target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AgentMode {
    /// A short-lived privileged hostPID pod (a Job) on the target's node.
    Job,
    /// An ephemeral container in the target pod (stays in its spec after it exits).
    Ephemeral,
}

/// The flags of Kubernetes targets.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The container of a multi-container target pod.
    #[arg(long, short = 'c', value_name = "NAME")]
    pub container: Option<String>,
    /// How to start the agent: `job` (a privileged pod on the target's node) or `ephemeral`
    /// (an ephemeral container in the target pod).
    #[arg(long, value_enum, default_value_t = AgentMode::Job, value_name = "MODE")]
    pub agent: AgentMode,
    /// The agent's image (default: localhost/mirrord-net-agent:VERSION).
    #[arg(long, value_name = "IMAGE")]
    pub agent_image: Option<String>,
    /// Where the agent Job runs (default: the target's namespace).
    #[arg(long, value_name = "NAMESPACE")]
    pub agent_namespace: Option<String>,
    /// How to reach the agent: `direct` (its pod IP), `port-forward` (through the API
    /// server), or `auto` (direct if it answers within about a second).
    #[arg(long, value_enum, default_value_t = TransportMode::Auto, value_name = "HOW")]
    pub transport: TransportMode,
    /// Seconds the agent may take to start and print its ready line. A Job agent that is
    /// not ready by then is removed by Kubernetes even if this client is gone.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    pub agent_timeout: u64,
    /// The agent Job's CPU limit (e.g. 500m, 2; it asks for 100m at most).
    #[arg(long, default_value = agent_resources::DEFAULT_CPU_LIMIT, value_name = "CPU")]
    pub agent_cpu: agent_resources::CpuQuantity,
    /// The agent Job's memory limit (e.g. 256Mi, 2Gi; it asks for 64Mi at most).
    #[arg(long, default_value = agent_resources::DEFAULT_MEMORY_LIMIT, value_name = "MEMORY")]
    pub agent_memory: agent_resources::MemoryQuantity,
    /// Run the agent Job's container privileged instead of with the capabilities it needs
    /// (for a runtime whose default profile refuses it `setns`).
    #[arg(long)]
    pub agent_privileged: bool,
}

impl Default for KubeArgs {
    /// The flags' defaults, for sessions built in code (the demo, tests).
    fn default() -> Self {
        Self {
            cluster: ClusterArgs::default(),
            container: None,
            agent: AgentMode::Job,
            agent_image: None,
            agent_namespace: None,
            transport: TransportMode::Auto,
            agent_timeout: 60,
            agent_cpu: AgentResources::default().cpu,
            agent_memory: AgentResources::default().memory,
            agent_privileged: false,
        }
    }
}

/// What the session asks of its agent beyond the Kubernetes flags.
#[derive(Debug, Clone, Copy)]
pub struct SessionWants {
    /// The agent's `--fs-mode` (see [`AgentSettings::fs_mode`]).
    pub fs_mode: &'static str,
    /// The agent's `--incoming` (see `IncomingArgs::agent_arg`).
    pub incoming: &'static str,
    /// The agent's `--redirect-with`, when not its default.
    pub redirect_with: Option<&'static str>,
    pub log_filter: Option<&'static str>,
    /// How long the connection waits for a lost agent (see `tunnel::liveness`).
    pub reconnect_window: Duration,
}

/// Resolves `target`, starts its agent and connects to it. On failure nothing is left in the
/// cluster; on success the returned [`KubeAgent`] owns what was created.
pub async fn start_agent_and_connect(
    args: &KubeArgs,
    target: &KubeTarget,
    identity: &SessionIdentity,
    wants: SessionWants,
    on_step: &mut dyn FnMut(&str),
) -> Result<(KubeAgent, Tunnel), KubeError> {
    let SessionWants {
        fs_mode,
        incoming,
        redirect_with,
        log_filter,
        reconnect_window,
    } = wants;
    let cluster = config::connect(&args.cluster).await?;
    on_step(&format!("looking up {target}"));
    let resolved = target::resolve(
        &cluster,
        &cluster.namespace,
        target,
        args.container.as_deref(),
    )
    .await?;
    tracing::info!(?resolved, "target");
    let session = identity.fingerprint().to_string()[..10].to_owned();
    let settings = AgentSettings {
        session,
        namespace: match args.agent {
            AgentMode::Job => args
                .agent_namespace
                .clone()
                .unwrap_or_else(|| resolved.namespace.clone()),
            AgentMode::Ephemeral => resolved.namespace.clone(),
        },
        image: args.agent_image.clone().unwrap_or_else(default_agent_image),
        client: identity.fingerprint(),
        fs_mode,
        incoming,
        redirect_with,
        log_filter,
        timeout: Duration::from_secs(args.agent_timeout),
        resources: AgentResources {
            cpu: args.agent_cpu.clone(),
            memory: args.agent_memory.clone(),
        },
        privileged: args.agent_privileged,
        client_process: client_process::ClientProcess::current().map(|client| client.to_text()),
    };
    on_step(&format!(
        "starting the agent for {}/{} on node {}",
        resolved.pod, resolved.container, resolved.node
    ));
    let started = std::time::Instant::now();
    let mut agent = match args.agent {
        AgentMode::Job => agent_job::create(&cluster.client, &resolved, &settings).await?,
        AgentMode::Ephemeral => ephemeral::create(&cluster.client, &resolved, &settings).await?,
    };
    let wait = async {
        match args.agent {
            AgentMode::Job => {
                agent_job::wait_ready(&cluster.client, &resolved, &settings, &mut agent).await
            }
            AgentMode::Ephemeral => {
                ephemeral::wait_ready(&cluster.client, &resolved, &settings, &mut agent).await
            }
        }
    };
    if let Err(err) = until_interrupted(wait).await {
        agent.finish(Duration::ZERO).await;
        return Err(err);
    }
    tracing::info!("agent ready in {:?}", started.elapsed());
    on_step("connecting to the agent");
    match until_interrupted(transport::connect(
        &mut agent,
        identity,
        args.transport,
        reconnect_window,
    ))
    .await
    {
        Ok(tunnel) => {
            agent.target_pod = Some(resolved.pod.clone());
            Ok((agent, tunnel))
        }
        Err(err) => {
            let reason = agent.last_error();
            agent.finish(Duration::ZERO).await;
            Err(match (err, reason) {
                (KubeError::Transport(what), Some(reason)) => {
                    KubeError::Transport(format!("{what} (the agent said: {reason})"))
                }
                (err, _) => err,
            })
        }
    }
}

/// Runs `work` unless SIGINT or SIGTERM comes first; the caller then removes the agent.
async fn until_interrupted<T>(
    work: impl std::future::Future<Output = Result<T, KubeError>>,
) -> Result<T, KubeError> {
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        result = work => result,
        _ = interrupt.recv() => Err(KubeError::Interrupted),
        _ = terminate.recv() => Err(KubeError::Interrupted),
    }
}
