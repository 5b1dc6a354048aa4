//! Waiting for an agent container and reading its ready line, whichever way it was started.
//!
//! The agent prints its ready line (`MIRRORD_NET_AGENT_READY {...}`, see
//! `mirrord_net_protocol::ready`) on stdout, which the container runtime keeps as the
//! container's log; the client reads it through the API (`pods/log`, followed). Only the
//! agent's public certificate fingerprint travels that way. The rest of the log is kept, like
//! a local agent's stderr, to explain a failure later.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::io::AsyncBufReadExt;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::api::{Api, LogParams};
use mirrord_net_protocol::ready::AgentReady;

use super::error::{api_error, KubeError};
use super::rbac::Operation;
use super::target::state_reason;

/// Waiting reasons that mean the image is not on the node (there is no registry to pull from).
const IMAGE_MISSING: &[&str] = &[
    "ErrImageNeverPull",
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
];
/// Lines of agent log kept to explain a failure.
const LOG_TAIL: usize = 20;
/// How often the pod's status is polled while the agent starts.
const POLL: Duration = Duration::from_millis(200);

/// The last lines of an agent's log.
pub type LogTail = Arc<Mutex<VecDeque<String>>>;

/// Which container of which pod the agent is.
#[derive(Debug, Clone)]
pub struct AgentContainer {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    /// An ephemeral container's status is in `ephemeralContainerStatuses`.
    pub ephemeral: bool,
    pub image: String,
    pub node: String,
}

impl AgentContainer {
    pub fn describe(&self) -> String {
        if self.ephemeral {
            format!("container {} in pod {}", self.container, self.pod)
        } else {
            format!("pod {}", self.pod)
        }
    }
}

/// What waiting on the agent container found, from one look at its pod: a pure decision.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentState {
    Running,
    Starting(Option<String>),
    ImageMissing(String),
    Failed(String),
}

pub fn agent_state(pod: &Pod, container: &str, ephemeral: bool) -> AgentState {
    let status = pod.status.clone().unwrap_or_default();
    let statuses: Vec<ContainerStatus> = if ephemeral {
        status.ephemeral_container_statuses.unwrap_or_default()
    } else {
        status.container_statuses.unwrap_or_default()
    };
    let Some(container_status) = statuses.iter().find(|status| status.name == container) else {
        if !ephemeral && status.phase.as_deref() == Some("Failed") {
            return AgentState::Failed(status.message.unwrap_or_else(|| "pod failed".into()));
        }
        return AgentState::Starting(status.reason.or(status.phase));
    };
    let state = container_status.state.clone().unwrap_or_default();
    if state.running.is_some() {
        return AgentState::Running;
    }
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.clone().unwrap_or_default();
        if IMAGE_MISSING.contains(&reason.as_str()) {
            return AgentState::ImageMissing(reason);
        }
    }
    if let Some(terminated) = &state.terminated {
        let mut reason = format!(
            "it exited with code {} ({})",
            terminated.exit_code,
            terminated.reason.as_deref().unwrap_or("no reason")
        );
        if let Some(message) = terminated.message.as_deref().filter(|m| !m.is_empty()) {
            reason = format!("{reason}: {}", message.trim());
        }
        return AgentState::Failed(reason);
    }
    AgentState::Starting(state_reason(Some(&state)))
}

/// Polls the agent's pod until its container runs. `find_pod` names the pod when it is not
/// known yet (a Job's pod); `deadline` bounds the whole wait.
pub async fn wait_running(
    pods: &Api<Pod>,
    agent: &AgentContainer,
    timeout: Duration,
) -> Result<(), KubeError> {
    let get = Operation::new("get", "pods", &agent.namespace);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last: Option<String>;
    loop {
        let pod = pods.get(&agent.pod).await.map_err(api_error(get.clone()))?;
        match agent_state(&pod, &agent.container, agent.ephemeral) {
            AgentState::Running => return Ok(()),
            AgentState::ImageMissing(reason) => {
                return Err(KubeError::ImageMissing {
                    image: agent.image.clone(),
                    node: agent.node.clone(),
                    reason,
                })
            }
            AgentState::Failed(reason) => {
                let log = last_log_line(pods, agent).await;
                return Err(KubeError::AgentFailed {
                    what: agent.describe(),
                    reason: match log {
                        Some(line) => format!("{line} ({reason})"),
                        None => reason,
                    },
                });
            }
            AgentState::Starting(reason) => last = reason,
        }
        if tokio::time::Instant::now() + POLL > deadline {
            return Err(KubeError::AgentTimeout {
                what: agent.describe(),
                timeout,
                detail: last
                    .map(|reason| format!(" ({reason})"))
                    .unwrap_or_default(),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Follows the agent's log until its ready line; the rest of the log keeps flowing into the
/// returned tail (and to stderr when `echo`) in a background task.
pub async fn read_ready(
    pods: &Api<Pod>,
    agent: &AgentContainer,
    timeout: Duration,
    echo: bool,
) -> Result<(AgentReady, LogTail, tokio::task::JoinHandle<()>), KubeError> {
    let params = LogParams {
        container: Some(agent.container.clone()),
        follow: true,
        ..LogParams::default()
    };
    let stream = pods
        .log_stream(&agent.pod, &params)
        .await
        .map_err(api_error(Operation::new(
            "get",
            "pods/log",
            &agent.namespace,
        )))?;
    let mut lines = stream.lines();
    let tail: LogTail = Arc::new(Mutex::new(VecDeque::new()));
    let found = tokio::time::timeout(timeout, async {
        while let Some(Ok(line)) = lines.next().await {
            if let Some(ready) = AgentReady::parse_line(&line) {
                return Some(ready);
            }
            if echo {
                eprintln!("{line}");
            }
            push(&tail, line);
        }
        None
    })
    .await;
    match found {
        Ok(Some(ready)) => {
            let task_tail = tail.clone();
            let task = tokio::spawn(async move {
                while let Some(Ok(line)) = lines.next().await {
                    if echo {
                        eprintln!("{line}");
                    }
                    push(&task_tail, line);
                }
            });
            Ok((ready, tail, task))
        }
        Ok(None) => Err(KubeError::AgentFailed {
            what: agent.describe(),
            reason: last_line(&tail).unwrap_or_else(|| "it exited without saying why".into()),
        }),
        Err(_) => Err(KubeError::AgentTimeout {
            what: agent.describe(),
            timeout,
            detail: last_line(&tail)
                .map(|line| format!(" (its log: {line})"))
                .unwrap_or_else(|| " (no ready line in its log)".into()),
        }),
    }
}

async fn last_log_line(pods: &Api<Pod>, agent: &AgentContainer) -> Option<String> {
    let params = LogParams {
        container: Some(agent.container.clone()),
        tail_lines: Some(1),
        ..LogParams::default()
    };
    let log = pods.logs(&agent.pod, &params).await.ok()?;
    log.lines()
        .last()
        .map(|line| clean(line).to_owned())
        .filter(|line| !line.is_empty())
}

fn push(tail: &LogTail, line: String) {
    let mut tail = tail.lock().expect("log tail lock");
    if tail.len() == LOG_TAIL {
        tail.pop_front();
    }
    tail.push_back(line);
}

/// The agent's last log line, for error messages.
pub fn last_line(tail: &LogTail) -> Option<String> {
    let tail = tail.lock().expect("log tail lock");
    tail.back().map(|line| clean(line).to_owned())
}

fn clean(line: &str) -> &str {
    line.strip_prefix("mirrord-net-agent: ").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_with(statuses_key: &str, state: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "status": {"phase": "Pending", statuses_key: [{
                "name": "agent", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": state
            }]}
        }))
        .unwrap()
    }

    #[test]
    fn a_missing_image_is_recognised_in_both_status_lists() {
        let waiting = serde_json::json!({"waiting": {"reason": "ErrImageNeverPull"}});
        let pod = pod_with("containerStatuses", waiting.clone());
        assert_eq!(
            agent_state(&pod, "agent", false),
            AgentState::ImageMissing("ErrImageNeverPull".into())
        );
        let pod = pod_with("ephemeralContainerStatuses", waiting);
        assert_eq!(
            agent_state(&pod, "agent", true),
            AgentState::ImageMissing("ErrImageNeverPull".into())
        );
    }

    #[test]
    fn an_exited_agent_is_a_failure_with_its_exit_code() {
        let pod = pod_with(
            "containerStatuses",
            serde_json::json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        );
        assert_eq!(
            agent_state(&pod, "agent", false),
            AgentState::Failed("it exited with code 1 (Error)".into())
        );
    }

    #[test]
    fn creating_and_running_states() {
        let pod = pod_with(
            "containerStatuses",
            serde_json::json!({"waiting": {"reason": "ContainerCreating"}}),
        );
        assert_eq!(
            agent_state(&pod, "agent", false),
            AgentState::Starting(Some("waiting: ContainerCreating".into()))
        );
        let pod = pod_with(
            "containerStatuses",
            serde_json::json!({"running": {"startedAt": "2025-01-01T00:00:00Z"}}),
        );
        assert_eq!(agent_state(&pod, "agent", false), AgentState::Running);
    }
}
