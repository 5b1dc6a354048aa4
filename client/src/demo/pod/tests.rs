//! The demo pod, alone and as root: what a process inside its namespaces sees, what the host
//! does not see, and that nothing of it survives its parent, even a SIGKILLed one.
//!
//! The pod and the parent that gets killed are this test binary again: a constructor that runs
//! before the test harness (and so before any thread exists, as `unshare` of a mount namespace
//! needs) turns the process into one of them when the launching test asks by environment.
//! The look from inside uses a thread that joins the pod's network, UTS and mount namespaces
//! and runs the probe's own checks, so it exercises the pod through the system resolver and
//! plain sockets without the session and the agent. Without root they fail: the suite runs as root.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Instant;

use super::*;
use crate::demo::probe;

const TEST_POD_ENV: &str = "MIRRORD_NET_DEMO_TEST_POD";
const TEST_PARENT_ENV: &str = "MIRRORD_NET_DEMO_TEST_PARENT";
/// A test filter that matches nothing, should a child ever reach the test harness.
const NO_TESTS: [&str; 2] = ["--exact", "demo-pod-child-runs-no-tests"];

#[used]
#[link_section = ".init_array"]
static BECOME_TEST_CHILD: extern "C" fn() = become_test_child;

extern "C" fn become_test_child() {
    if std::env::var_os(TEST_POD_ENV).is_some() {
        run_pod(false);
    }
    if std::env::var_os(TEST_PARENT_ENV).is_some() {
        parent_main();
    }
}

/// A demo parent that starts a pod, prints its pid and waits to be killed.
fn parent_main() -> ! {
    // SAFETY: plain prctl; not to outlive the test that started it.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) };
    let runtime = runtime();
    let pod = runtime.block_on(start_test_pod());
    println!("{}", pod.pid());
    loop {
        std::thread::park();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn start_test_pod() -> Pod {
    let exe = std::env::current_exe().unwrap();
    Pod::launch(&exe, &NO_TESTS, &[(TEST_POD_ENV, "1")])
        .await
        .expect("the demo pod starts")
}

/// The demo pod needs root (namespaces, mounts); the test suite runs as root, so anything
/// else is a broken setup, not a reason to pass.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the demo pod tests need root: run them as root (scripts/test.sh does)"
    );
}

/// What the pod must not change on the host.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    hostname: String,
    resolv_conf: Vec<u8>,
    hosts: Vec<u8>,
    /// Mount points under the directories the pod mounts on, with their filesystem types.
    mounts: BTreeSet<(String, String)>,
    has_peer_link: bool,
}

impl HostState {
    fn now() -> Self {
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                let point = before.split(' ').nth(4)?.to_owned();
                let kind = after.split(' ').next()?.to_owned();
                ["/tmp", "/srv", "/etc"]
                    .iter()
                    .any(|dir| point.starts_with(dir))
                    .then_some((point, kind))
            })
            .collect();
        Self {
            hostname: nix::unistd::gethostname()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            resolv_conf: fs::read("/etc/resolv.conf").unwrap_or_default(),
            hosts: fs::read("/etc/hosts").unwrap_or_default(),
            mounts,
            has_peer_link: nix::net::if_::if_nametoindex(PEER_LINK).is_ok(),
        }
    }
}

/// Runs `f` on a thread inside the network, UTS and mount namespaces of `pid`.
fn in_namespaces_of<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // A mount namespace can only be joined by a thread with its own root and cwd.
        unshare(CloneFlags::CLONE_FS).unwrap();
        for (kind, flag) in [
            ("net", CloneFlags::CLONE_NEWNET),
            ("uts", CloneFlags::CLONE_NEWUTS),
            ("mnt", CloneFlags::CLONE_NEWNS),
        ] {
            let namespace = File::open(format!("/proc/{pid}/ns/{kind}")).unwrap();
            nix::sched::setns(namespace, flag).unwrap();
        }
        f()
    })
    .join()
    .unwrap()
}

/// Whether `pid` has exited (a zombie left to a parent that does not reap counts as exited).
fn is_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

#[test]
fn the_pod_serves_its_names_inside_its_namespaces_and_leaves_the_host_alone() {
    require_root();
    let before = HostState::now();
    let host_listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let host_port = host_listener.local_addr().unwrap().port();
    let runtime = runtime();
    let pod = runtime.block_on(start_test_pod());
    let pid = pod.pid();
    assert_eq!(HostState::now(), before, "the running pod changed the host");

    let (checks, output, config, hosts) = in_namespaces_of(pid, move || {
        let mut output = Vec::new();
        let checks = probe::run_checks(host_port, &mut output);
        (
            checks,
            String::from_utf8(output).unwrap(),
            fs::read_to_string(CONFIG_FILE).unwrap(),
            fs::read_to_string("/etc/hosts").unwrap(),
        )
    });
    println!("{output}");
    assert_eq!(checks.len(), 9, "{output}");
    // This thread entered the pod's namespaces but has the test's environment, not the pod's:
    // only a session brings the pod's variables along.
    assert!(
        checks
            .iter()
            .filter(|check| check.label != "environment")
            .all(|check| check.ok),
        "{output}"
    );
    let http = &checks[3];
    assert!(
        http.more
            .iter()
            .any(|line| line.contains("came from 10.89.0.2:")
                || line.contains("came from [fd89::2]:")),
        "connections inside the pod come from the pod's address: {output}"
    );
    assert!(
        output.contains("10.89.0.10") && output.contains("fd89::10"),
        "{output}"
    );
    assert_eq!(config, super::config());
    assert!(hosts.contains("10.89.0.2\tdemo-pod"), "{hosts}");

    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    assert!(environ.contains(&&b"DEMO_GREETING=Hello from demo-pod"[..]));
    assert!(environ.contains(&&b"HELLO_SERVICE_HOST=10.89.0.10"[..]));

    runtime.block_on(pod.stop());
    assert!(is_gone(pid));
    assert_eq!(
        HostState::now(),
        before,
        "the pod left something on the host"
    );
    drop(host_listener);
}

#[test]
fn the_pod_dies_with_its_parent_even_on_sigkill() {
    require_root();
    let before = HostState::now();
    let mut parent = std::process::Command::new(std::env::current_exe().unwrap())
        .args(NO_TESTS)
        .env(TEST_PARENT_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(parent.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pod: u32 = line
        .trim()
        .parse()
        .expect("the parent prints the pod's pid");
    assert!(!is_gone(pod));
    assert_ne!(
        fs::read_link(format!("/proc/{pod}/ns/net")).unwrap(),
        fs::read_link("/proc/self/ns/net").unwrap(),
        "the pod has a network namespace of its own"
    );

    parent.kill().unwrap();
    parent.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_gone(pod) {
        assert!(Instant::now() < deadline, "the pod outlived its parent");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        HostState::now(),
        before,
        "the pod left something on the host"
    );
}
