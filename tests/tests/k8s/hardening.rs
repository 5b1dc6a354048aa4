//! The agent Job's footprint and its removal when its session is over: the Job's resources
//! and capabilities (not privileged) read back from the API; `mirrord-net clean` removing the
//! agent of a SIGKILLed client while the agent of a live session in the same namespace stays
//! and that session runs on past its agent timeout (the start deadline is lifted once the
//! agent is ready); a Job whose pod never starts removed by Kubernetes at its deadline after
//! its client was SIGKILLed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::{agent_objects, app_and_web, assert_agent_objects_gone};
use mirrord_net_tests::exec::KilledOnDrop;
use mirrord_net_tests::kube::{eventually, Namespace};

/// The agent Jobs of `ns` (names without the `job.batch/` prefix).
fn jobs(ns: &Namespace) -> Vec<String> {
    ns.kubectl(&["get", "jobs", "-o", "name"])
        .assert_success()
        .lines()
        .map(|line| line.trim_start_matches("job.batch/").to_owned())
        .filter(|name| !name.is_empty())
        .collect()
}

#[test]
fn the_agent_job_asks_for_capabilities_and_resources_not_privilege() {
    let (ns, _, _) = app_and_web("footprint");
    let mut running = ns
        .session(
            "pod/app",
            &["--agent-cpu", "300m", "--agent-memory", "200Mi"],
            &["sh", "-c", "echo started; sleep 5"],
        )
        .start();
    assert!(
        running.wait_for_stdout("started", Duration::from_secs(60)),
        "session did not start:\n{}",
        running.stderr_so_far()
    );
    let job = jobs(&ns).remove(0);
    let container = |path: &str| {
        ns.field(
            &format!("job/{job}"),
            &format!("{{.spec.template.spec.containers[0].{path}}}"),
        )
    };
    let privileged = container("securityContext.privileged");
    let added = container("securityContext.capabilities.add");
    let dropped = container("securityContext.capabilities.drop");
    let limits = [
        container("resources.limits.cpu"),
        container("resources.limits.memory"),
    ];
    let requests = [
        container("resources.requests.cpu"),
        container("resources.requests.memory"),
    ];
    let deadline = ns.field(&format!("job/{job}"), "{.spec.activeDeadlineSeconds}");
    let out = running
        .finish(Duration::from_secs(60))
        .unwrap_or_else(|t| panic!("{t}"));
    out.assert_success();
    assert_ne!(privileged, "true", "a privileged agent container");
    for cap in ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"] {
        assert!(added.contains(cap), "{cap} not asked for: {added}");
    }
    assert!(
        dropped.contains("ALL"),
        "capabilities not dropped: {dropped}"
    );
    assert_eq!(limits, ["300m", "200Mi"]);
    assert_eq!(requests, ["100m", "64Mi"]);
    // Read while the session ran: the deadline is gone once the agent is ready.
    assert_eq!(
        deadline, "",
        "the start deadline stayed on a ready agent's Job"
    );
}

#[test]
fn clean_removes_the_agent_of_a_sigkilled_client_and_never_a_live_ones() {
    let (ns, service_ip, _) = app_and_web("clean");
    // The live session outlives its agent timeout (20 s): its Job's deadline must be lifted.
    let live_script = format!(
        "echo started; sleep 35; curl -sS -o /dev/null --max-time 10 http://{service_ip}/ \
         && echo still-served"
    );
    let mut live = ns
        .session(
            "pod/app",
            &["--agent-timeout", "20"],
            &["sh", "-c", &live_script],
        )
        .start();
    assert!(
        live.wait_for_stdout("started", Duration::from_secs(60)),
        "live session did not start:\n{}",
        live.stderr_so_far()
    );
    let live_job = jobs(&ns);
    assert_eq!(live_job.len(), 1, "{live_job:?}");
    let mut doomed = ns
        .session("pod/app", &[], &["sh", "-c", "echo started; sleep 600"])
        .start();
    assert!(
        doomed.wait_for_stdout("started", Duration::from_secs(60)),
        "second session did not start:\n{}",
        doomed.stderr_so_far()
    );
    let doomed_job: Vec<String> = jobs(&ns)
        .into_iter()
        .filter(|job| !live_job.contains(job))
        .collect();
    assert_eq!(doomed_job.len(), 1, "{doomed_job:?}");
    doomed.signal(Signal::SIGKILL);
    let _ = doomed.finish(Duration::from_secs(10));
    // At once, before the agent could notice its client is gone by itself.
    let out = ns.cluster.client(&["clean", "-n", ns.name()]).run();
    out.assert_success();
    let removed = format!(
        "removed job {}/{}: its client, process",
        ns.name(),
        doomed_job[0]
    );
    let kept = format!(
        "kept job {}/{}: its client, process",
        ns.name(),
        live_job[0]
    );
    assert!(out.stdout.contains(&removed), "no `{removed}`:\n{out}");
    assert!(out.stdout.contains(&kept), "no `{kept}`:\n{out}");
    eventually(
        "the SIGKILLed client's Job gone",
        Duration::from_secs(30),
        || !jobs(&ns).contains(&doomed_job[0]),
    );
    assert!(
        jobs(&ns).contains(&live_job[0]),
        "the live session's Job went"
    );
    let out = live
        .finish(Duration::from_secs(90))
        .unwrap_or_else(|t| panic!("{t}"));
    out.assert_success();
    assert!(out.stdout.contains("still-served"), "{out}");
    assert_agent_objects_gone(&ns, "agents removed at the end", Duration::from_secs(30));
}

/// A registry address that refuses connections, in the cluster's network namespace (where
/// containerd pulls): an image from it never arrives, its pod stays `Pending` in
/// `ImagePullBackOff`. (A registry that accepts and never answers holds the kubelet inside the
/// pull, so even the deleted pod stays `Terminating` until the runtime gives the pull up:
/// minutes, which says nothing about the Job's deadline.) The port stays bound, never
/// listening, so no one else takes it meanwhile.
struct RefusingRegistry {
    _child: KilledOnDrop,
    port: u16,
}

impl RefusingRegistry {
    fn start(ns: &Namespace) -> RefusingRegistry {
        let netns = ns.cluster.var("K8S_NETNS_PATH").to_owned();
        let script = "import socket,sys,time\n\
                      s=socket.socket(); s.bind(('127.0.0.1',0))\n\
                      print(s.getsockname()[1], flush=True)\n\
                      while True: time.sleep(60)\n";
        let mut child = Command::new("nsenter")
            .arg(format!("--net={netns}"))
            .args(["python3", "-c", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("nsenter python3");
        let mut stdout = child.stdout.take().expect("stdout");
        let mut text = String::new();
        let mut byte = [0u8; 1];
        while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            text.push(byte[0] as char);
        }
        let port = text.trim().parse().expect("the registry's port");
        RefusingRegistry {
            _child: KilledOnDrop(child),
            port,
        }
    }
}

#[test]
fn a_job_whose_agent_never_starts_is_removed_at_its_deadline_after_a_sigkill() {
    const TIMEOUT: u64 = 20;
    let ns = Namespace::create("pending");
    ns.apply(crate::manifests::APP);
    ns.wait_ready("app=app");
    let registry = RefusingRegistry::start(&ns);
    let image = format!("localhost:{}/mirrord-net-agent:never", registry.port);
    let running = ns
        .session(
            "pod/app",
            &[
                "--agent-image",
                &image,
                "--agent-timeout",
                &TIMEOUT.to_string(),
            ],
            &["true"],
        )
        .start();
    eventually("the agent Job created", Duration::from_secs(30), || {
        !jobs(&ns).is_empty()
    });
    running.signal(Signal::SIGKILL);
    let killed = Instant::now();
    let _ = running.finish(Duration::from_secs(10));
    assert!(
        !agent_objects(&ns).is_empty(),
        "the Job went with its client: nothing tested"
    );
    let pod_phase = ns.field(&ns.names("pods", "job-name").remove(0), "{.status.phase}");
    assert_eq!(pod_phase, "Pending", "the agent's pod started after all");
    // The deadline (TIMEOUT from the Job's start) fails the Job, whether or not its client is
    // there: that is what bounds an agent that never started.
    let job = format!("job/{}", jobs(&ns).remove(0));
    eventually(
        "the never-started agent's Job failed at its deadline",
        Duration::from_secs(TIMEOUT + 15),
        || {
            let reason = ns
                .kubectl(&[
                    "get",
                    &job,
                    "--ignore-not-found",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Failed\")].reason}",
                ])
                .assert_success()
                .trim()
                .to_owned();
            reason == "DeadlineExceeded" || jobs(&ns).is_empty()
        },
    );
    // Then its pod is deleted and the TTL (5 s) removes the Job. A pod that was waiting for
    // its image may stay `Terminating` for the kubelet's own while (seen: 30 s and more on
    // the test cluster), which is the node's business, not the deadline's.
    assert_agent_objects_gone(
        &ns,
        "the never-started agent's Job removed",
        Duration::from_secs(TIMEOUT + 120),
    );
    eprintln!(
        "pending agent Job removed {:.1} s after its client's SIGKILL (agent timeout {TIMEOUT} s)",
        killed.elapsed().as_secs_f64()
    );
    drop(registry);
}
