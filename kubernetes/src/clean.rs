//! `mirrord-net clean`: removes the agents of sessions that are over, never a live one's.
//!
//! An agent normally ends with its session: the client deletes its Job, a local agent dies
//! with its client (parent-death signal), and an agent whose client went silent exits by
//! itself. What can stay is an agent whose end nobody saw through: a Job whose client was
//! SIGKILLed while its pod was still pending (it never runs, so it never exits; the Job's
//! `activeDeadlineSeconds` covers that case too, see [`agent_job`](super::agent_job)), a
//! finished Job on a cluster whose TTL controller is off, an agent stuck past its session.
//!
//! Each agent Job carries its client's identity (annotation [`CLIENT_ANNOTATION`]; see
//! [`client_process`](crate::client_process)): host
//! name, boot ID, PID namespace, PID and the process's start time. `clean` decides per Job
//! ([`verdict`], pure):
//!
//! | the Job | verdict |
//! |---|---|
//! | finished (its agent exited) | removed |
//! | its client was on this machine (same boot ID and PID namespace) and that process (PID *and* start time) is gone | removed |
//! | same, and the process runs | kept |
//! | its pod never started and the Job is older than its agent timeout (the client gave up by then) | removed |
//! | anything else (a running agent of a client elsewhere) | kept: the agent's own liveness rule ends it once its client is silent |
//!
//! So a live session's agent is never removed: only proof of death (an exited agent, a
//! gone local process, a start the client stopped waiting for) removes one. Ephemeral
//! containers cannot be removed at all (the API can add them to a pod, never take them
//! out): their agent exits with its session and the container stays, terminated, in the
//! pod's status until the pod is replaced; `clean` leaves them.
//!
//! Local agents (of `pid/` targets) carry the same identity in their environment
//! ([`LOCAL_CLIENT_ENV`](crate::client_process::LOCAL_CLIENT_ENV)); `clean` kills those whose client process is gone.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};

use super::agent_job::APP_LABEL;
use super::config::{self, ClusterArgs};
use super::error::{api_error, is_not_found, KubeError};
use super::rbac::Operation;
use crate::client_process::{ClientProcess, Here, CLIENT_ANNOTATION, TIMEOUT_ANNOTATION};

/// `mirrord-net clean`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct CleanArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Every namespace the user may list Jobs in, not only one.
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Say what would be removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this machine's local agents; no cluster.
    #[arg(long, conflicts_with_all = ["all_namespaces"])]
    pub local: bool,
}

/// What `clean` knows of one agent Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentJob {
    pub namespace: String,
    pub name: String,
    /// Its agent exited (the Job completed or failed).
    pub finished: bool,
    /// Its pod got past `Pending` (the agent ran, or runs).
    pub started: bool,
    pub age: Duration,
    pub client: Option<ClientProcess>,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Remove(String),
    Keep(String),
}

/// How long after its agent timeout a never-started Job is surely given up by its client.
const GIVEN_UP_MARGIN: Duration = Duration::from_secs(10);
/// The agent timeout assumed for a Job that does not say its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `job` belongs to a session that is over (see the module comment). `alive` tells
/// whether a client process on this machine runs.
pub fn verdict(
    job: &AgentJob,
    here: Option<&Here>,
    alive: impl Fn(&ClientProcess) -> bool,
) -> Verdict {
    if job.finished {
        return Verdict::Remove("its agent has exited".into());
    }
    if let (Some(client), Some(here)) = (&job.client, here) {
        if client.is_local_to(here) {
            return if alive(client) {
                Verdict::Keep(format!("its client, process {} here, runs", client.pid))
            } else {
                Verdict::Remove(format!("its client, process {} here, is gone", client.pid))
            };
        }
    }
    let timeout = job.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if !job.started && job.age > timeout + GIVEN_UP_MARGIN {
        return Verdict::Remove(format!(
            "its agent never started, and its client stopped waiting after {}s",
            timeout.as_secs()
        ));
    }
    let whose = match &job.client {
        Some(client) => format!("a client on {}", client.host),
        None => "a client this build cannot name".into(),
    };
    Verdict::Keep(format!(
        "{whose}: the agent ends by itself once that client is silent"
    ))
}

/// Runs `mirrord-net clean`; the exit code is 0 unless something could not be removed.
pub async fn run(args: &CleanArgs) -> Result<i32, KubeError> {
    let here = Here::current();
    let mut failures = 0;
    failures += clean_local(args.dry_run);
    if args.local {
        return Ok(i32::from(failures > 0));
    }
    let cluster = match config::connect(&args.cluster).await {
        Ok(cluster) => cluster,
        // Nothing said which cluster: a machine without one has only local agents.
        Err(err) if args.cluster.namespace.is_none() && !args.all_namespaces => {
            println!("no cluster checked ({err})");
            return Ok(i32::from(failures > 0));
        }
        Err(err) => return Err(err),
    };
    let namespace = (!args.all_namespaces).then(|| cluster.namespace.clone());
    let (jobs, pods): (Api<Job>, Api<Pod>) = match &namespace {
        Some(ns) => (
            Api::namespaced(cluster.client.clone(), ns),
            Api::namespaced(cluster.client.clone(), ns),
        ),
        None => (
            Api::all(cluster.client.clone()),
            Api::all(cluster.client.clone()),
        ),
    };
    let scope = namespace.as_deref().unwrap_or("");
    let labels = ListParams::default().labels(&format!("{}={}", APP_LABEL.0, APP_LABEL.1));
    let listed_jobs =
        jobs.list(&labels)
            .await
            .map_err(api_error(operation("list", "jobs.batch", &namespace)))?;
    let listed_pods = pods
        .list(&labels)
        .await
        .map_err(api_error(operation("list", "pods", &namespace)))?;
    let now = k8s_openapi::jiff::Timestamp::now();
    for job in listed_jobs.items {
        let facts = facts_of(&job, &listed_pods.items, now);
        match verdict(&facts, here.as_ref(), ClientProcess::is_alive) {
            Verdict::Keep(why) => println!("kept job {}/{}: {why}", facts.namespace, facts.name),
            Verdict::Remove(why) if args.dry_run => {
                println!("would remove job {}/{}: {why}", facts.namespace, facts.name)
            }
            Verdict::Remove(why) => {
                let api: Api<Job> = Api::namespaced(cluster.client.clone(), &facts.namespace);
                match api.delete(&facts.name, &DeleteParams::background()).await {
                    Ok(_) => println!("removed job {}/{}: {why}", facts.namespace, facts.name),
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => {
                        failures += 1;
                        let err = KubeError::api(
                            Operation::new("delete", "jobs.batch", &facts.namespace),
                            err,
                        );
                        eprintln!("mirrord-net: {err}");
                    }
                }
            }
        }
    }
    tracing::debug!(scope, "clean done");
    Ok(i32::from(failures > 0))
}

fn operation(verb: &'static str, resource: &'static str, namespace: &Option<String>) -> Operation {
    let mut operation = Operation::new(verb, resource, namespace.as_deref().unwrap_or(""));
    if namespace.is_none() {
        operation.namespace = None;
    }
    operation
}

fn facts_of(job: &Job, pods: &[Pod], now: k8s_openapi::jiff::Timestamp) -> AgentJob {
    let meta = &job.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let namespace = meta.namespace.clone().unwrap_or_default();
    let status = job.status.as_ref();
    let finished = status.is_some_and(|status| {
        status.succeeded.unwrap_or(0) > 0
            || status.failed.unwrap_or(0) > 0
            || status.conditions.iter().flatten().any(|condition| {
                matches!(condition.type_.as_str(), "Complete" | "Failed")
                    && condition.status == "True"
            })
    });
    let started = pods.iter().any(|pod| {
        pod.metadata.namespace.as_deref() == Some(namespace.as_str())
            && pod
                .metadata
                .labels
                .as_ref()
                .and_then(|labels| labels.get("job-name"))
                == Some(&name)
            && pod
                .status
                .as_ref()
                .and_then(|status| status.phase.as_deref())
                .is_some_and(|phase| phase != "Pending")
    });
    let age = meta
        .creation_timestamp
        .as_ref()
        .and_then(|created| {
            let seconds = now.as_second() - created.0.as_second();
            u64::try_from(seconds).ok()
        })
        .map(Duration::from_secs)
        .unwrap_or_default();
    let annotation = |key: &str| {
        meta.annotations
            .as_ref()
            .and_then(|annotations| annotations.get(key))
    };
    AgentJob {
        namespace,
        name,
        finished,
        started,
        age,
        client: annotation(CLIENT_ANNOTATION).and_then(|text| ClientProcess::parse(text)),
        timeout: annotation(TIMEOUT_ANNOTATION)
            .and_then(|text| text.parse().ok())
            .map(Duration::from_secs),
    }
}

/// Kills this machine's local agents whose client is gone; returns how many could not be.
fn clean_local(dry_run: bool) -> usize {
    let mut failures = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Some(client) = local_agent_client(pid) else {
            continue;
        };
        if client.is_alive() {
            println!(
                "kept local agent {pid}: its client, process {}, runs",
                client.pid
            );
            continue;
        }
        if dry_run {
            println!(
                "would kill local agent {pid}: its client, process {}, is gone",
                client.pid
            );
            continue;
        }
        // SAFETY: kill with integer arguments.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) } == 0 {
            println!(
                "killed local agent {pid}: its client, process {}, is gone",
                client.pid
            );
        } else {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                eprintln!("mirrord-net: cannot kill local agent {pid}: {err}");
                failures += 1;
            }
        }
    }
    failures
}

/// The client of process `pid` if it is a local agent (its environment names one).
fn local_agent_client(pid: u32) -> Option<ClientProcess> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if !comm.starts_with("mirrord-net-age") {
        return None;
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{}=", crate::client_process::LOCAL_CLIENT_ENV);
    environ
        .split(|byte| *byte == 0)
        .find_map(|var| var.strip_prefix(prefix.as_bytes()))
        .and_then(|value| std::str::from_utf8(value).ok())
        .and_then(ClientProcess::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn here() -> Here {
        Here {
            boot_id: "b1".into(),
            pid_ns: 4026531836,
        }
    }

    fn client(boot_id: &str) -> ClientProcess {
        ClientProcess {
            host: "laptop".into(),
            boot_id: boot_id.into(),
            pid_ns: 4026531836,
            pid: 4242,
            start: 123456,
        }
    }

    fn job(client: Option<ClientProcess>) -> AgentJob {
        AgentJob {
            namespace: "team".into(),
            name: "mirrord-net-agent-0a1b".into(),
            finished: false,
            started: true,
            age: Duration::from_secs(3600),
            client,
            timeout: Some(Duration::from_secs(60)),
        }
    }

    fn removed(verdict: Verdict) -> bool {
        matches!(verdict, Verdict::Remove(_))
    }

    #[test]
    fn a_finished_job_goes_whoever_its_client_was() {
        let mut finished = job(Some(client("b1")));
        finished.finished = true;
        assert!(removed(verdict(&finished, Some(&here()), |_| true)));
    }

    #[test]
    fn a_local_clients_agent_goes_only_once_the_client_is_gone() {
        let local = job(Some(client("b1")));
        assert!(!removed(verdict(&local, Some(&here()), |_| true)));
        assert!(removed(verdict(&local, Some(&here()), |_| false)));
    }

    #[test]
    fn a_running_agent_of_a_client_elsewhere_is_kept() {
        let elsewhere = job(Some(client("other-boot")));
        assert!(!removed(verdict(&elsewhere, Some(&here()), |_| false)));
        let mut other_pidns = job(Some(client("b1")));
        other_pidns.client.as_mut().unwrap().pid_ns = 1;
        assert!(!removed(verdict(&other_pidns, Some(&here()), |_| false)));
        assert!(!removed(verdict(&job(None), Some(&here()), |_| false)));
    }

    #[test]
    fn a_never_started_agent_goes_once_its_client_stopped_waiting() {
        let mut pending = job(Some(client("other-boot")));
        pending.started = false;
        pending.age = Duration::from_secs(30);
        assert!(!removed(verdict(&pending, Some(&here()), |_| true)));
        pending.age = Duration::from_secs(71);
        assert!(removed(verdict(&pending, Some(&here()), |_| true)));
    }
}
