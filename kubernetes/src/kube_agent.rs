//! A running Kubernetes agent, owned by the session.
//!
//! [`KubeAgent::finish`] is the cleanup: it stops the port-forward and deletes the agent's Job
//! (propagation Background, so its pod goes too). Every exit path of a session calls it. Drop
//! is only a fallback for a path that forgot: it starts the deletion on the current runtime,
//! which completes only if the runtime keeps running; the Job's TTL covers the rest.

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, DeleteParams};
use mirrord_net_protocol::ready::AgentReady;

use super::agent_pod::{self, AgentContainer, LogTail};
use super::error::is_not_found;

/// What has to be removed when the session ends.
#[derive(Debug, Clone)]
pub enum Cleanup {
    /// The agent's Job (and through it its pod).
    Job { namespace: String, name: String },
    /// Nothing can be removed: an ephemeral container stays in its pod's spec; the agent in
    /// it exits when the session's connection closes.
    Nothing,
}

pub struct KubeAgent {
    client: kube::Client,
    cleanup: Cleanup,
    /// Set once the agent is ready.
    pub container: Option<AgentContainer>,
    /// The target's pod, once resolved (for `ps`).
    pub target_pod: Option<String>,
    pub pod_ip: Option<IpAddr>,
    pub ready: Option<AgentReady>,
    log_tail: Option<LogTail>,
    log_task: Option<tokio::task::JoinHandle<()>>,
    /// Keeps a port-forward's background task; stopped on finish.
    port_forward: Option<kube::api::Portforwarder>,
}

impl KubeAgent {
    pub fn new(client: kube::Client, cleanup: Cleanup) -> Self {
        Self {
            client,
            cleanup,
            container: None,
            target_pod: None,
            pod_ip: None,
            ready: None,
            log_tail: None,
            log_task: None,
            port_forward: None,
        }
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    pub fn set_ready(
        &mut self,
        container: AgentContainer,
        pod_ip: Option<IpAddr>,
        ready: AgentReady,
        log_tail: LogTail,
        log_task: tokio::task::JoinHandle<()>,
    ) {
        self.container = Some(container);
        self.pod_ip = pod_ip;
        self.ready = Some(ready);
        self.log_tail = Some(log_tail);
        self.log_task = Some(log_task);
    }

    pub fn keep_port_forward(&mut self, forwarder: kube::api::Portforwarder) {
        self.port_forward = Some(forwarder);
    }

    /// The agent's last log line, for error messages.
    pub fn last_error(&self) -> Option<String> {
        self.log_tail.as_ref().and_then(agent_pod::last_line)
    }

    /// Ends the agent's life: removes what the session created. The agent needs no grace
    /// period: the session's connection is closed already, and deleting its Job stops it
    /// (the deletion's round trip also gives the close time to leave). `grace` bounds how long
    /// a local agent is waited for; here it bounds nothing.
    pub async fn finish(mut self, _grace: Duration) {
        let cleanup = std::mem::replace(&mut self.cleanup, Cleanup::Nothing);
        delete(self.client.clone(), cleanup).await;
        if let Some(forwarder) = self.port_forward.take() {
            forwarder.abort();
        }
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
    }
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        if let Some(task) = self.log_task.take() {
            task.abort();
        }
        if let Some(forwarder) = self.port_forward.take() {
            forwarder.abort();
        }
        let cleanup = std::mem::replace(&mut self.cleanup, Cleanup::Nothing);
        if let Cleanup::Job { name, .. } = &cleanup {
            tracing::warn!(
                "agent job {name} dropped without finish(); deleting it in the background"
            );
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(delete(self.client.clone(), cleanup));
            }
        }
    }
}

async fn delete(client: kube::Client, cleanup: Cleanup) {
    let Cleanup::Job { namespace, name } = cleanup else {
        return;
    };
    let jobs: Api<Job> = Api::namespaced(client, &namespace);
    match jobs.delete(&name, &DeleteParams::background()).await {
        Ok(_) => tracing::info!(job = %name, "agent job deleted"),
        Err(err) if is_not_found(&err) => {}
        Err(err) => eprintln!(
            "mirrord-net: cannot delete the agent job {name} in namespace {namespace} \
             ({err}); its TTL removes it once the agent exits"
        ),
    }
}
