//! A session owns everything it makes: when it ends, or its client is SIGKILLed, nothing of
//! it remains (agent, processes, namespaces, mounts, interfaces); and a session that cannot
//! start says why in one line and leaves nothing either.

use std::time::Duration;

use mirrord_net_tests::leftovers::{Baseline, SessionNamespaces, PRINT_NAMESPACES};
use mirrord_net_tests::{procfs, sh, Invocation, Pod};
use nix::sys::signal::Signal;

/// How soon after its session ends the agent must be gone.
const AGENT_EXIT: Duration = Duration::from_secs(5);

#[test]
fn nonexistent_target_pid_fails_with_one_clear_line_and_leaves_nothing() {
    let baseline = Baseline::capture(None);
    let pid = procfs::unused_pid();
    let out = Invocation::session_on(pid, &["true"]).run();
    assert!(
        matches!(out.code(), Some(code) if code != 0),
        "must fail with an exit code:\n{out}"
    );
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr:\n{out}"
    );
    assert!(
        lines[0].contains(&pid.to_string()),
        "the error should name pid {pid}:\n{out}"
    );
    baseline.assert_clean_within(None, None, AGENT_EXIT);
}

#[test]
fn a_finished_session_leaves_no_agent_process_mount_or_interface() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    let out = Invocation::session(&pod, &sh(PRINT_NAMESPACES)).run();
    let session = SessionNamespaces::parse(out.assert_success())
        .unwrap_or_else(|| panic!("no namespaces printed:\n{out}"));
    assert_distinct_from_host_and_pod(&pod, &session);
    baseline.assert_clean_within(Some(&pod), Some(&session), AGENT_EXIT);
}

#[test]
fn sigkill_of_the_client_leaves_no_agent_process_mount_or_interface() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    let script = format!("{PRINT_NAMESPACES}; echo ready; exec sleep 60");
    let mut running = Invocation::session(&pod, &sh(&script)).start();
    assert!(
        running.wait_for_stdout("ready", Duration::from_secs(30)),
        "the session did not start:\nstdout: {}\nstderr: {}",
        running.stdout_so_far(),
        running.stderr_so_far()
    );
    let session = SessionNamespaces::parse(&running.stdout_so_far()).expect("namespaces printed");
    assert_distinct_from_host_and_pod(&pod, &session);
    // The check below must be able to see what it says is gone.
    let live = baseline.leftovers(Some(&pod), Some(&session));
    assert!(
        live.iter().any(|line| line.contains("agent process")),
        "no agent found while the session runs; the leftover check would prove nothing: {live:?}"
    );

    running.signal(Signal::SIGKILL);
    let out = running
        .finish(Duration::from_secs(10))
        .expect("the client died");
    assert_eq!(
        out.code(),
        None,
        "the client should have died of SIGKILL:\n{out}"
    );
    baseline.assert_clean_within(Some(&pod), Some(&session), AGENT_EXIT);
}

fn assert_distinct_from_host_and_pod(pod: &Pod, session: &SessionNamespaces) {
    let me = std::process::id() as i32;
    let target = pod.target_pid() as i32;
    for (kind, ns) in [
        ("net", &session.net),
        ("mnt", &session.mnt),
        ("uts", &session.uts),
    ] {
        assert_ne!(
            procfs::ns_of(me, kind).as_ref(),
            Some(ns),
            "the session shares the host's {kind} namespace"
        );
        assert_ne!(
            procfs::ns_of(target, kind).as_ref(),
            Some(ns),
            "the session shares the target's {kind} namespace"
        );
    }
}

const CHOWN: u64 = 1 << 0;
const NET_ADMIN: u64 = 1 << 12;
const NET_RAW: u64 = 1 << 13;
const SYS_ADMIN: u64 = 1 << 21;

/// The session's agent's `/proc/PID/status`, read while a session with `flags` runs.
fn agent_status(pod: &Pod, flags: &[&str]) -> String {
    let mut invocation = Invocation::session(pod, &sh("echo started; sleep 3"));
    for flag in flags {
        invocation = invocation.client_flag(flag);
    }
    let mut running = invocation.start();
    assert!(
        running.wait_for_stdout("started", Duration::from_secs(20)),
        "the session did not start:\n{}",
        running.stderr_so_far()
    );
    let agent = procfs::descendants_of(running.pid())
        .into_iter()
        .find(|proc| {
            procfs::cmdline(proc.pid)
                .first()
                .is_some_and(|program| program.ends_with("mirrord-net-agent"))
        })
        .expect("the session's agent");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid)).expect("status");
    let out = running
        .finish(invocation.timeout_value())
        .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    out.assert_success();
    status
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(|value| value.trim().to_owned())
        .unwrap_or_else(|| panic!("no {name} in\n{status}"))
}

fn status_mask(status: &str, name: &str) -> u64 {
    u64::from_str_radix(&status_field(status, name), 16).expect("a hex mask")
}

/// After entering the target, the agent keeps only the capabilities its features use, sets
/// `no_new_privs` and runs under its seccomp filter (`agent/src/privileges.rs`,
/// `agent/src/seccomp.rs`), read from its `/proc/PID/status` while the session runs. A
/// session that steals nothing has no CAP_NET_ADMIN; this pod's namespace refuses ping
/// sockets to root's group (the kernel's default range), so raw sockets stay for pings.
#[test]
fn the_agent_runs_with_reduced_capabilities_no_new_privs_and_seccomp() {
    let pod = Pod::start();
    let status = agent_status(&pod, &[]);
    let (eff, bnd) = (
        status_mask(&status, "CapEff:"),
        status_mask(&status, "CapBnd:"),
    );
    assert_eq!(status_field(&status, "NoNewPrivs:"), "1", "{status}");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    assert_eq!(eff & SYS_ADMIN, 0, "CAP_SYS_ADMIN kept:\n{status}");
    assert_eq!(
        bnd & SYS_ADMIN,
        0,
        "CAP_SYS_ADMIN left in the bounding set:\n{status}"
    );
    assert_eq!(
        eff & NET_ADMIN,
        0,
        "CAP_NET_ADMIN kept without a steal:\n{status}"
    );
    assert_ne!(
        eff & NET_RAW,
        0,
        "CAP_NET_RAW dropped where pings need raw sockets:\n{status}"
    );
    assert_eq!(eff & CHOWN, 0, "CAP_CHOWN kept in read mode:\n{status}");
}

/// A stealing session's agent keeps CAP_NET_ADMIN (its nftables table); where the target's
/// namespace gives root ping sockets, it has no use for CAP_NET_RAW and drops it.
#[test]
fn a_stealing_agent_keeps_network_administration_and_drops_raw_sockets_it_does_not_need() {
    let pod = Pod::start();
    let widened = pod
        .pod_netns()
        .command("sysctl")
        .unwrap()
        .args(["-q", "-w", "net.ipv4.ping_group_range=0 2147483647"])
        .status()
        .expect("sysctl");
    assert!(widened.success(), "sysctl failed");
    let status = agent_status(&pod, &["--steal", "8080"]);
    let eff = status_mask(&status, "CapEff:");
    assert_eq!(status_field(&status, "Seccomp:"), "2", "{status}");
    assert_ne!(
        eff & NET_ADMIN,
        0,
        "CAP_NET_ADMIN dropped while stealing:\n{status}"
    );
    assert_eq!(
        eff & NET_RAW,
        0,
        "CAP_NET_RAW kept without a mirror or a need for raw pings:\n{status}"
    );
}

/// How the client names itself to its local agent (`kubernetes/src/client_process.rs`), for
/// process `pid` of this machine with start time `start`.
fn client_identity(pid: u32, start: u64) -> String {
    use std::os::unix::fs::MetadataExt;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").expect("boot_id");
    let pid_ns = std::fs::metadata("/proc/self/ns/pid")
        .expect("pid ns")
        .ino();
    let host = nix::unistd::gethostname().expect("hostname");
    format!(
        "host={} boot={} pidns={pid_ns} pid={pid} start={start}",
        host.to_string_lossy(),
        boot.trim()
    )
}

/// Field 22 of `/proc/PID/stat`: the process's start time.
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    rest.split_whitespace()
        .nth(19)
        .expect("starttime")
        .parse()
        .expect("a number")
}

/// A local agent started by hand with `identity` as its client, waited for until ready;
/// killed when dropped.
struct HandStartedAgent(mirrord_net_tests::exec::KilledOnDrop);

impl HandStartedAgent {
    fn start(pod: &Pod, identity: &str) -> HandStartedAgent {
        use std::io::BufRead;
        let mut child = std::process::Command::new(
            mirrord_net_tests::session::bin_dir().join("mirrord-net-agent"),
        )
        .args(["--target-pid", &pod.target_pid().to_string()])
        .args(["--client-cert-sha256", &"ab".repeat(32)])
        .args(["--accept-timeout-secs", "120", "--fs-mode", "off"])
        .env("MIRRORD_NET_CLIENT", identity)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the agent");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the agent's ready line");
        assert!(!line.is_empty(), "the agent exited before its ready line");
        HandStartedAgent(mirrord_net_tests::exec::KilledOnDrop(child))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// `mirrord-net clean --local` kills a local agent whose client process is gone (named by
/// PID and start time, so a reused PID does not count) and keeps one whose client runs.
#[test]
fn clean_kills_a_local_agent_whose_client_is_gone_and_keeps_a_live_ones() {
    let pod = Pod::start();
    let my_pid = std::process::id();
    let me = client_identity(my_pid, start_time(my_pid));
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let gone_pid = gone.id();
    let gone_start = start_time(gone_pid);
    gone.wait().expect("true ends");
    let dead = client_identity(gone_pid, gone_start);
    let mut orphan = HandStartedAgent::start(&pod, &dead);
    let mut kept = HandStartedAgent::start(&pod, &me);
    let out = Invocation::client(&["clean", "--local"]).run();
    out.assert_success();
    let killed_line = format!(
        "killed local agent {}: its client, process {gone_pid}, is gone",
        orphan.pid()
    );
    let kept_line = format!(
        "kept local agent {}: its client, process {my_pid}, runs",
        kept.pid()
    );
    assert!(
        out.stdout.contains(&killed_line),
        "no `{killed_line}`:\n{out}"
    );
    assert!(out.stdout.contains(&kept_line), "no `{kept_line}`:\n{out}");
    let status = orphan.0.wait().expect("the orphan agent's status");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "{status}"
    );
    assert!(
        kept.0.try_wait().expect("try_wait").is_none(),
        "the live client's agent was ended"
    );
}
