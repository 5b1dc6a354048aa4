//! Reaching the agent: straight to its pod's IP, or through the API server's port-forward.
//!
//! - `direct`: QUIC over UDP to `podIP:PORT`, for clients inside the cluster's network (agent
//!   pools, nodes).
//! - `port-forward`: the same QUIC connection carried over the port-forward byte stream
//!   (`pods/NAME/portforward` to the agent's port, where the agent relays TCP to its QUIC
//!   socket); `tunnel::connect_over_stream` frames the datagrams on the stream.
//! - `auto` (default): direct for [`DIRECT_ATTEMPT`], then port-forward. A pod IP that is not
//!   routable from here just never answers, so a short attempt is the cheapest probe.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use mirrord_net_protocol::transport::PathProfile;
use mirrord_net_protocol::trust::{Fingerprint, SessionIdentity};

use super::error::{api_error, KubeError};
use super::kube_agent::KubeAgent;
use super::rbac::Operation;
use mirrord_net_tunnel::{self as tunnel, Tunnel, TunnelError};

/// How long `auto` tries the pod IP before it falls back to port-forward.
pub const DIRECT_ATTEMPT: Duration = Duration::from_millis(1200);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TransportMode {
    /// Direct when the agent pod's IP answers quickly, else port-forward.
    Auto,
    /// QUIC straight to the agent pod's IP.
    Direct,
    /// QUIC over the Kubernetes port-forward stream.
    PortForward,
}

/// Connects to the ready `agent` as `mode` says.
pub async fn connect(
    agent: &mut KubeAgent,
    identity: &SessionIdentity,
    mode: TransportMode,
    reconnect_window: Duration,
) -> Result<Tunnel, KubeError> {
    let ready = agent.ready.clone().expect("the agent is ready");
    let direct_addr = agent
        .pod_ip
        .map(|ip| SocketAddr::new(ip, ready.addr.port()));
    let started = Instant::now();
    if mode == TransportMode::Direct {
        let addr = direct_addr
            .ok_or_else(|| KubeError::Transport("directly: its pod has no IP yet".into()))?;
        let tunnel = direct(addr, identity, ready.cert_sha256, reconnect_window).await?;
        tracing::info!(
            "connected to the agent directly at {addr} in {:?}",
            started.elapsed()
        );
        return Ok(tunnel);
    }
    if let (TransportMode::Auto, Some(addr)) = (mode, direct_addr) {
        let attempt = direct(addr, identity, ready.cert_sha256, reconnect_window);
        match tokio::time::timeout(DIRECT_ATTEMPT, attempt).await {
            Ok(Ok(tunnel)) => {
                tracing::info!(
                    "transport: direct to {addr} (connected in {:?})",
                    started.elapsed()
                );
                return Ok(tunnel);
            }
            Ok(Err(err)) => tracing::info!("{err}; trying port-forward"),
            Err(_) => tracing::info!(
                "no answer from {addr} within {DIRECT_ATTEMPT:?}; trying port-forward"
            ),
        }
    }
    let tunnel = port_forward(
        agent,
        ready.addr.port(),
        identity,
        ready.cert_sha256,
        reconnect_window,
    )
    .await?;
    tracing::info!(
        "transport: port-forward (connected in {:?})",
        started.elapsed()
    );
    Ok(tunnel)
}

async fn direct(
    addr: SocketAddr,
    identity: &SessionIdentity,
    agent: Fingerprint,
    reconnect_window: Duration,
) -> Result<Tunnel, KubeError> {
    tunnel::connect(
        addr,
        identity,
        agent,
        PathProfile::Network,
        reconnect_window,
    )
    .await
    .map_err(|err| KubeError::Transport(format!("directly at {addr}: {err}")))
}

async fn port_forward(
    agent: &mut KubeAgent,
    port: u16,
    identity: &SessionIdentity,
    fingerprint: Fingerprint,
    reconnect_window: Duration,
) -> Result<Tunnel, KubeError> {
    let container = agent.container.clone().expect("the agent is ready");
    let pods: Api<Pod> = Api::namespaced(agent.client().clone(), &container.namespace);
    let mut forwarder = pods
        .portforward(&container.pod, &[port])
        .await
        .map_err(api_error(Operation::new(
            "create",
            "pods/portforward",
            &container.namespace,
        )))?;
    let stream = forwarder
        .take_stream(port)
        .ok_or_else(|| KubeError::Transport("through port-forward: no stream".into()))?;
    agent.keep_port_forward(forwarder);
    over_stream(stream, identity, fingerprint, reconnect_window)
        .await
        .map_err(|err| {
            KubeError::Transport(format!(
                "through port-forward to pod {} port {port}: {err}",
                container.pod
            ))
        })
}

/// QUIC over the port-forward's byte stream, datagrams framed on it.
async fn over_stream(
    stream: tokio::io::DuplexStream,
    identity: &SessionIdentity,
    fingerprint: Fingerprint,
    reconnect_window: Duration,
) -> Result<Tunnel, TunnelError> {
    tunnel::connect_over_stream(
        stream,
        identity,
        fingerprint,
        PathProfile::Stream,
        reconnect_window,
        None,
    )
    .await
}
