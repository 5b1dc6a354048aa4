//! Incoming traffic on a Kubernetes target: a Deployment's pod (`echo`, answering `v1`)
//! reached through its Service, a session on the host running the patched copy (`v2`) on the
//! same port. Covered: a header-filtered steal (direct transport) and an unfiltered one
//! (through the API server's port-forward) with a Job agent; a header-filtered steal through
//! the iptables fallback with a Job agent; a mirror with a Job agent and
//! with an ephemeral one. The test cluster turns on Kubernetes 1.20's alpha ephemeral
//! containers, which take no securityContext: a steal with an ephemeral agent is refused
//! there with one clear line (tested), since the runtime's default set has no NET_ADMIN.
//!
//! The pod's server is `tests/scripts/tagged_httpd.py` (from a ConfigMap, on the
//! `localhost/python:local` test image); a stealing session runs the same script answering
//! `v2`, a mirroring one `logging_httpd.py`. Each answer names the client address its server
//! saw. The clients are the host, through the Service's ClusterIP (kube-proxy's DNAT, then the
//! redirect in the pod's namespace), and the `app` pod, through the Service and at the pod's
//! IP, for the real client address (the session's server must see what the pod's sees). After
//! each session: every request reaches the pod again within 5 s, the pod's nftables rule set
//! is the one from before (read from the host in the pod's network namespace, found through
//! containerd: the cluster runs on this machine), and the agent container ended with exit
//! code 0, reason Completed (a finalizer holds a Job agent's Job, and so its pod, in the API
//! until the test has read its status; an ephemeral container stays in the pod's status).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_net_tests::exec::{Outcome, Running};
use mirrord_net_tests::kube::{eventually_or_show, Namespace};
use mirrord_net_tests::netfilter_state;
use mirrord_net_tests::tool;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{manifests, wait_for_service};

/// The pod's (and the session's) HTTP port.
const PORT: &str = "8080";
/// How soon requests must follow a change: the session's listener seen, the session gone.
const SWITCH: Duration = Duration::from_secs(5);
/// The run key of the filtered sessions (regex-escaped by the client: the `.` is literal).
const KEY: &str = "run-7.k8s";
/// The flags of a session that steals the requests tagged with [`KEY`].
const FILTERED_STEAL: [&str; 6] = [
    "--steal",
    PORT,
    "--http-header-filter",
    "^X-Verifier-Run: {{ key }}$",
    "--key",
    KEY,
];
/// A finalizer the tests put on agent Jobs, so that their pod's final status can be read.
const HOLD: &str = "mirrord-net.test/hold";

/// A test's helper scripts, from the repository.
fn script(name: &str) -> String {
    format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A namespace with the `echo` Deployment and Service (and the `app` pod as a client), all
/// Ready; returns it with the Service's ClusterIP and the echo pod's name.
fn echo_service(label: &str) -> (Namespace, String, String) {
    let ns = Namespace::create(label);
    ns.kubectl(&[
        "create",
        "configmap",
        "echo-scripts",
        &format!("--from-file={}", script("tagged_httpd.py")),
    ])
    .assert_success();
    ns.apply(manifests::ECHO);
    ns.apply(manifests::APP);
    ns.wait_ready("app=echo");
    ns.wait_ready("app=app");
    let service_ip = ns.field("service/echo", "{.spec.clusterIP}");
    let pod = ns.names("pods", "app=echo").remove(0);
    wait_for_service(&ns, &service_ip);
    (ns, service_ip, pod)
}

/// One request from the host through the Service, tagged with `header` if given: (the
/// answer's tag, the client address its server saw).
fn get(service_ip: &str, header: Option<&str>) -> Result<(String, String), String> {
    get_path(service_ip, "/", header)
}

/// [`get`] of `path`.
fn get_path(
    service_ip: &str,
    path: &str,
    header: Option<&str>,
) -> Result<(String, String), String> {
    let mut command = Command::new(tool("curl"));
    command.args([
        "-sS",
        "--max-time",
        "3",
        &format!("http://{service_ip}{path}"),
    ]);
    if let Some(header) = header {
        command.args(["-H", header]);
    }
    let out = command.output().map_err(|err| err.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "curl failed ({}): {text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    match text.split_whitespace().collect::<Vec<_>>()[..] {
        [tag, seen] => Ok((tag.to_owned(), seen.to_owned())),
        _ => Err(format!("unexpected answer {text:?}")),
    }
}

/// Waits until requests (tagged with `header` if given) get `want`; every request meanwhile
/// must be answered. Returns how long it took.
#[track_caller]
fn switches_to(service_ip: &str, header: Option<&str>, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let tag = get(service_ip, header)
            .unwrap_or_else(|err| panic!("a request was lost after {seen:?}: {err}"))
            .0;
        if tag == want {
            return start.elapsed();
        }
        seen.push(tag);
        assert!(
            start.elapsed() < within,
            "requests ({header:?}) did not switch to {want} within {within:?}: got {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host PID of a pod's (first) container, from containerd's task list.
fn container_pid(ns: &Namespace, pod: &str) -> u32 {
    let id = ns.field(pod, "{.status.containerStatuses[0].containerID}");
    let id = id.trim_start_matches("containerd://");
    let out = Command::new(tool("ctr"))
        .args([
            "-a",
            ns.cluster.var("K8S_CONTAINERD_SOCK"),
            "-n",
            "k8s.io",
            "tasks",
            "ls",
        ])
        .output()
        .expect("ctr");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(id)).then(|| words.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no task {id} in containerd:\n{text}"))
}

/// The nftables rule set of the pod's network namespace.
fn ruleset(pid: u32) -> String {
    netfilter_state::nft_ruleset(in_container_netns(pid))
}

/// A command maker for `netfilter_state`: `nsenter` into the network namespace of process
/// `pid` (a container's, seen from the node).
fn in_container_netns(pid: u32) -> impl Fn(&str) -> Command {
    move |program| {
        let mut command = Command::new(tool("nsenter"));
        command.args(["-t", &pid.to_string(), "-n", program]);
        command
    }
}

/// Waits (at most [`SWITCH`]) until the pod's rule set is `before` again.
#[track_caller]
fn assert_ruleset_restored(pid: u32, before: &str) {
    eventually_or_show(
        "the pod's nftables rule set as before the session",
        SWITCH,
        || ruleset(pid) == before,
        || format!("before:\n{before}\nnow:\n{}", ruleset(pid)),
    );
}

/// A session running in the background; its process group is killed if the test ends first.
struct Session(Option<Running>);

impl Session {
    /// `mirrord-net exec --target deploy/echo FLAGS -- python3 tagged_httpd.py 8080 v2 STOP`,
    /// waited for until its server listens.
    fn start(ns: &Namespace, flags: &[&str], stop: &std::path::Path) -> Session {
        let script = script("tagged_httpd.py");
        let stop = stop.to_string_lossy();
        Session::run(ns, flags, &["python3", &script, PORT, "v2", &stop])
    }

    /// `mirrord-net exec --target deploy/echo FLAGS -- ARGS`, waited for until it prints
    /// `listening`.
    fn run(ns: &Namespace, flags: &[&str], args: &[&str]) -> Session {
        let mut running = ns.session("deploy/echo", flags, args).start();
        assert!(
            running.wait_for_stdout("listening", Duration::from_secs(90)),
            "the session's server did not start:\n{}\n{}",
            running.stdout_so_far(),
            running.stderr_so_far()
        );
        Session(Some(running))
    }

    fn stderr(&self) -> String {
        self.0
            .as_ref()
            .map(Running::stderr_so_far)
            .unwrap_or_default()
    }

    /// Waits for the session to end by itself.
    fn finish(mut self) -> Outcome {
        let running = self.0.take().expect("running");
        running
            .finish(Duration::from_secs(30))
            .unwrap_or_else(|timed_out| panic!("the session did not end: {timed_out}"))
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(running) = self.0.take() {
            let _ = killpg(Pid::from_raw(running.pid()), Signal::SIGKILL);
            let _ = running.finish(Duration::from_secs(10));
        }
    }
}

/// A scratch directory for a test's stop file, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("k8s-incoming-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn stop_file(&self) -> PathBuf {
        self.0.join("stop")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The agent's Job held in the API by a finalizer (released on drop), so that its pod, which
/// the garbage collector only deletes once the Job is gone, keeps its container's final
/// state after the session has deleted the Job. (A finalizer on the pod itself is not
/// enough: a 1.20 kubelet that stops a deleted pod's container before it has seen it exit
/// reports `ContainerStatusUnknown` instead of the real exit.)
struct HeldAgentJob<'a> {
    ns: &'a Namespace,
    job: String,
}

impl<'a> HeldAgentJob<'a> {
    fn hold(ns: &'a Namespace) -> HeldAgentJob<'a> {
        let jobs = ns.names("jobs", "app.kubernetes.io/name=mirrord-net-agent");
        assert_eq!(jobs.len(), 1, "one agent Job: {jobs:?}");
        let job = jobs[0].clone();
        let patch = format!(r#"{{"metadata":{{"finalizers":["{HOLD}"]}}}}"#);
        ns.kubectl(&["patch", &job, "--type=merge", "-p", &patch])
            .assert_success();
        HeldAgentJob { ns, job }
    }

    /// Waits until the agent container has terminated and returns its exit code and reason.
    fn terminated(&self) -> (String, String) {
        let job_name = self.job.trim_start_matches("job.batch/");
        let pods = self.ns.names("pods", &format!("job-name={job_name}"));
        assert_eq!(pods.len(), 1, "one agent pod: {pods:?}");
        let pod = &pods[0];
        let state = || {
            self.ns.field(
                pod,
                "{.status.containerStatuses[0].state.terminated.exitCode} \
                 {.status.containerStatuses[0].state.terminated.reason}",
            )
        };
        eventually_or_show(
            "the agent container terminated",
            Duration::from_secs(30),
            || !state().trim().is_empty(),
            || self.ns.kubectl(&["get", pod, "-o", "yaml"]).stdout.clone(),
        );
        let state = state();
        let (code, reason) = state.split_once(' ').unwrap_or((&state, ""));
        (code.to_owned(), reason.to_owned())
    }
}

impl Drop for HeldAgentJob<'_> {
    fn drop(&mut self) {
        let _ = self.ns.kubectl(&[
            "patch",
            &self.job,
            "--type=merge",
            "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
    }
}

/// 100 tagged and 100 untagged requests interleaved on one keep-alive connection from the
/// host through the Service: every tagged one answered by the session, every other one by
/// the pod, none lost.
fn interleaved_on_one_connection(service_ip: &str) {
    let started = Instant::now();
    let out = Command::new(tool("python3"))
        .args([
            &script("keepalive_requests.py"),
            service_ip,
            "80",
            "header",
            KEY,
            "100",
        ])
        .output()
        .expect("python3");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{out:?}\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<&str>> = stdout.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 200, "{stdout}");
    for line in &lines {
        match line[..] {
            ["match", tag, _, _] => assert_eq!(tag, "v2", "a tagged request went to the pod"),
            ["other", tag, _, _] => {
                assert_eq!(tag, "v1", "an untagged request went to the session")
            }
            _ => panic!("unexpected line {line:?}"),
        }
    }
    eprintln!("200 interleaved requests through the Service on one connection in {took:?}");
}

/// After the session has ended: requests back on the pod within [`SWITCH`], the rule set as
/// before.
fn assert_session_left_nothing(service_ip: &str, header: Option<&str>, pid: u32, before: &str) {
    let back = switches_to(service_ip, header, "v1", SWITCH);
    eprintln!("requests back on the pod {back:?} after the session ended");
    for _ in 0..5 {
        assert_eq!(get(service_ip, header).unwrap().0, "v1");
    }
    assert_ruleset_restored(pid, before);
}

/// The final state (exit code, reason) of the pod's ephemeral agent container, once it has
/// terminated.
fn ephemeral_agent_terminated(ns: &Namespace, pod: &str) -> (String, String) {
    let state = || {
        ns.field(
            pod,
            "{.status.ephemeralContainerStatuses[0].state.terminated.exitCode} \
             {.status.ephemeralContainerStatuses[0].state.terminated.reason}",
        )
    };
    eventually_or_show(
        "the ephemeral agent container terminated",
        Duration::from_secs(30),
        || !state().trim().is_empty(),
        || ns.kubectl(&["get", pod, "-o", "yaml"]).stdout.clone(),
    );
    let state = state();
    let (code, reason) = state.split_once(' ').unwrap_or((&state, ""));
    (code.to_owned(), reason.to_owned())
}

#[test]
fn incoming_filtered_steal_through_a_service_with_a_job_agent() {
    let (ns, service_ip, pod) = echo_service("steal-job");
    let pid = container_pid(&ns, &pod);
    let before = ruleset(pid);
    let header = format!("X-Verifier-Run: {KEY}");
    assert_eq!(get(&service_ip, Some(&header)).unwrap().0, "v1");

    let scratch = Scratch::new("filtered-job");
    let started = Instant::now();
    let session = Session::start(
        &ns,
        &[
            &["--agent", "job", "--transport", "direct"][..],
            &FILTERED_STEAL,
        ]
        .concat(),
        &scratch.stop_file(),
    );
    let agent = HeldAgentJob::hold(&ns);
    let took = switches_to(&service_ip, Some(&header), "v2", SWITCH);
    eprintln!(
        "tagged requests reach the session {:?} after its start (the switch: {took:?})",
        started.elapsed()
    );
    assert!(
        ruleset(pid).contains("mirrord-net-"),
        "the agent's table is in the pod's rule set:\n{}",
        ruleset(pid)
    );
    // The key is regex-escaped; other values and untagged requests stay the pod's.
    assert_eq!(
        get(&service_ip, Some("X-Verifier-Run: run-7xk8s"))
            .unwrap()
            .0,
        "v1"
    );
    assert_eq!(get(&service_ip, None).unwrap().0, "v1");
    interleaved_on_one_connection(&service_ip);

    // The session's program exits: the session ends normally.
    std::fs::write(scratch.stop_file(), "").unwrap();
    let stderr = session.stderr();
    let out = session.finish();
    assert_eq!(out.code(), Some(0), "{out}\n{stderr}");
    assert_session_left_nothing(&service_ip, Some(&header), pid, &before);
    assert_eq!(
        agent.terminated(),
        ("0".to_owned(), "Completed".to_owned()),
        "the agent's exit"
    );
}

/// Kubernetes 1.20 (the test cluster) refuses any securityContext on an ephemeral container,
/// so its ephemeral agent cannot get NET_ADMIN: one clear line, nothing added to the pod.
#[test]
fn incoming_steal_with_an_ephemeral_agent_needs_capabilities_kubernetes_1_20_refuses() {
    let ns = Namespace::create("steal-ephemeral-refused");
    ns.apply(manifests::WEB);
    ns.wait_ready("app=web");
    let out = ns
        .session(
            "deploy/web",
            &["--agent", "ephemeral", "--steal", PORT],
            &["true"],
        )
        .run();
    assert_ne!(out.code(), Some(0), "{out}");
    let stderr = out.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "one line:\n{out}");
    assert!(
        stderr.contains("NET_ADMIN") && stderr.contains("--agent job"),
        "says what is missing and what works:\n{out}"
    );
    let pod = ns.names("pods", "app=web").remove(0);
    assert_eq!(
        ns.field(&pod, "{.spec.ephemeralContainers}"),
        "",
        "nothing added"
    );
}

#[test]
fn incoming_mirror_through_a_service_with_a_job_agent() {
    mirror_through_the_service("job");
}

/// With Kubernetes 1.20's alpha API: the agent runs with the runtime's default capabilities,
/// which hold the NET_RAW of its packet socket.
#[test]
fn incoming_mirror_through_a_service_with_an_ephemeral_agent() {
    mirror_through_the_service("ephemeral");
}

/// A mirror of the `echo` pod's port into the session with an `agent` (`job` or
/// `ephemeral`): the Service's clients keep getting the pod's answers, the session's server
/// logs every request, the pod's rule set never changes, the agent exits 0.
fn mirror_through_the_service(agent: &str) {
    let (ns, service_ip, pod) = echo_service(&format!("mirror-{agent}"));
    let pid = container_pid(&ns, &pod);
    let before = ruleset(pid);
    let scratch = Scratch::new(&format!("mirror-{agent}"));
    let log = scratch.0.join("requests.log");
    let server = format!(
        "python3 {} {PORT} {} & while [ ! -e {} ]; do sleep 0.1; done; kill $!",
        script("logging_httpd.py"),
        log.display(),
        scratch.stop_file().display()
    );
    let session = Session::run(
        &ns,
        &["--agent", agent, "--transport", "direct", "--mirror", PORT],
        &["sh", "-c", &server],
    );
    let held = (agent == "job").then(|| HeldAgentJob::hold(&ns));
    let logged = |path: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(&format!(" {path} "))
    };
    // Probes on new connections until one is mirrored: from then on every one is.
    let start = Instant::now();
    for n in 0.. {
        let path = format!("/probe/{n}");
        let (tag, _) = get_path(&service_ip, &path, None).unwrap();
        assert_eq!(tag, "v1", "the pod answers");
        let deadline = Instant::now() + Duration::from_millis(300);
        while !logged(&path) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if logged(&path) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing mirrored within 30 s:\n{}",
            session.stderr()
        );
    }
    eprintln!("mirroring after {:?}", start.elapsed());
    assert_eq!(ruleset(pid), before, "mirroring adds no rule");

    // 50 requests on one keep-alive connection through the Service, all answered by the pod
    // (`keepalive_requests.py` in path mode: /api/N and /web/N), all in the session's log.
    let out = Command::new(tool("python3"))
        .args([
            &script("keepalive_requests.py"),
            &service_ip,
            "80",
            "path",
            "-",
            "25",
        ])
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stdout.lines().count(), 50, "{stdout}");
    assert!(
        stdout
            .lines()
            .all(|line| line.split(' ').nth(1) == Some("v1")),
        "every answer is the pod's:\n{stdout}"
    );
    let paths: Vec<String> = (0..25)
        .flat_map(|n| [format!("/api/{n}"), format!("/web/{n}")])
        .collect();
    eventually_or_show(
        "every request in the session's log",
        Duration::from_secs(20),
        || paths.iter().all(|path| logged(path)),
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );

    std::fs::write(scratch.stop_file(), "").unwrap();
    let stderr = session.stderr();
    let out = session.finish();
    assert_eq!(out.code(), Some(0), "{out}\n{stderr}");
    assert_eq!(ruleset(pid), before);
    assert_eq!(get(&service_ip, None).unwrap().0, "v1");
    let exit = match &held {
        Some(held) => held.terminated(),
        None => ephemeral_agent_terminated(&ns, &pod),
    };
    assert_eq!(
        exit,
        ("0".to_owned(), "Completed".to_owned()),
        "the agent's exit"
    );
}

#[test]
fn incoming_unfiltered_steal_sees_the_real_client_with_a_job_agent() {
    let (ns, service_ip, pod) = echo_service("steal-all-job");
    let pid = container_pid(&ns, &pod);
    let before = ruleset(pid);
    let app_ip = ns.field("pod/app", "{.status.podIP}");
    let pod_ip = ns.field(&pod, "{.status.podIP}");
    // A request from the app pod (busybox wget; its `-T` crashes in this build, kubectl exec
    // has a deadline of its own): the answer's tag and the client address its server saw
    // (without the port).
    let from_app = |url: &str| {
        let answer = ns
            .kubectl(&["exec", "app", "--", "wget", "-q", "-O", "-", url])
            .assert_success()
            .trim()
            .to_owned();
        match answer.split_whitespace().collect::<Vec<_>>()[..] {
            [tag, seen] => (
                tag.to_owned(),
                seen.rsplit_once(':').map_or(seen, |(ip, _)| ip).to_owned(),
            ),
            _ => panic!("unexpected answer {answer:?}"),
        }
    };
    let through_service = format!("http://{service_ip}/");
    let to_pod = format!("http://{pod_ip}:{PORT}/");
    // The cluster's kube-proxy masquerades Service traffic (--masquerade-all): the pod sees
    // the node's bridge address there, and the app pod's own address when it is called
    // directly. The session must see exactly what the pod sees.
    let (tag, via_service) = from_app(&through_service);
    assert_eq!(tag, "v1");
    assert_eq!(from_app(&to_pod), ("v1".to_owned(), app_ip.clone()));

    let scratch = Scratch::new("unfiltered-job");
    let session = Session::start(
        &ns,
        &[
            "--agent",
            "job",
            "--transport",
            "port-forward",
            "--steal",
            PORT,
        ],
        &scratch.stop_file(),
    );
    let agent = HeldAgentJob::hold(&ns);
    switches_to(&service_ip, None, "v2", SWITCH);
    // Every request is the session's, and its server sees the real client.
    for _ in 0..3 {
        assert_eq!(
            from_app(&through_service),
            ("v2".to_owned(), via_service.clone())
        );
        assert_eq!(from_app(&to_pod), ("v2".to_owned(), app_ip.clone()));
    }

    std::fs::write(scratch.stop_file(), "").unwrap();
    let stderr = session.stderr();
    let out = session.finish();
    assert_eq!(out.code(), Some(0), "{out}\n{stderr}");
    assert_session_left_nothing(&service_ip, None, pid, &before);
    assert_eq!(from_app(&to_pod), ("v1".to_owned(), app_ip));
    assert_eq!(agent.terminated(), ("0".to_owned(), "Completed".to_owned()));
}

/// The pod's legacy iptables state (see `netfilter_state::iptables_state`).
fn iptables_state(pid: u32) -> String {
    netfilter_state::iptables_state(in_container_netns(pid))
}

/// The steal's iptables fallback in a real pod (`--redirect-with iptables`, what the agent
/// picks by itself where the node's kernel has no nftables; this node's has): the agent
/// image's iptables-legacy tools, run by the agent's keeper in the pod's namespace, redirect
/// the tagged requests; the pod's nftables rule set is untouched; after the session the
/// pod's iptables state is exactly as before.
#[test]
fn incoming_filtered_steal_through_iptables_with_a_job_agent() {
    let (ns, service_ip, pod) = echo_service("steal-iptables");
    let pid = container_pid(&ns, &pod);
    let nft_before = ruleset(pid);
    let iptables_before = iptables_state(pid);
    let header = format!("X-Verifier-Run: {KEY}");

    let scratch = Scratch::new("iptables-job");
    let session = Session::start(
        &ns,
        &[
            &[
                "--agent",
                "job",
                "--transport",
                "direct",
                "--redirect-with",
                "iptables",
            ][..],
            &FILTERED_STEAL,
        ]
        .concat(),
        &scratch.stop_file(),
    );
    let agent = HeldAgentJob::hold(&ns);
    switches_to(&service_ip, Some(&header), "v2", SWITCH);
    let stealing = iptables_state(pid);
    assert!(
        stealing.contains("-A PREROUTING -j MNET-") && stealing.contains("--dport 8080"),
        "the keeper's chain redirects the port:\n{stealing}"
    );
    assert_eq!(ruleset(pid), nft_before, "no nftables table");
    assert_eq!(get(&service_ip, None).unwrap().0, "v1");
    interleaved_on_one_connection(&service_ip);

    std::fs::write(scratch.stop_file(), "").unwrap();
    let stderr = session.stderr();
    let out = session.finish();
    assert_eq!(out.code(), Some(0), "{out}\n{stderr}");
    assert_session_left_nothing(&service_ip, Some(&header), pid, &nft_before);
    eventually_or_show(
        "the pod's iptables state as before the session",
        SWITCH,
        || iptables_state(pid) == iptables_before,
        || format!("before:\n{iptables_before}\nnow:\n{}", iptables_state(pid)),
    );
    assert_eq!(
        agent.terminated(),
        ("0".to_owned(), "Completed".to_owned()),
        "the agent's exit"
    );
}
