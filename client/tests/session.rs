//! Behaviour of real sessions, started with the built `mirrord-net` binary as the session
//! child. Needs root and /dev/net/tun (as in CI); fails without them. No agent runs here, so
//! nobody reads the TUN: the tests look at the session's configuration, not at traffic.
//!
//! Commands write what they see to a file in a per-test directory (stdout stays the test's
//! own, as it would stay the user's terminal).

use std::ffi::OsString;
use std::net::Ipv6Addr;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mirrord_net_session::{RunAs, Session, SessionError, SessionOptions, SessionSpec, SetupStep};
use nix::sys::signal::Signal;

mod support;

use support::{
    host_links, host_mount_points as host_mounts, script_spec as spec, Scratch, POD_V4, POD_V6,
};

/// Asserts what every test here needs; returns true so call sites read as a precondition.
fn can_run() -> bool {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (run them with sudo)"
    );
    assert!(
        Path::new("/dev/net/tun").exists(),
        "these tests need /dev/net/tun (modprobe tun)"
    );
    true
}

fn options() -> SessionOptions {
    SessionOptions {
        program: Some(PathBuf::from(env!("CARGO_BIN_EXE_mirrord-net"))),
        ..SessionOptions::default()
    }
}

async fn run(spec: SessionSpec, options: SessionOptions) -> i32 {
    let mut session = Session::start_with(spec, options)
        .await
        .expect("session starts");
    session.wait().await
}

/// Runs `script` in a session made from `spec` and returns its exit code and output.
async fn run_script(
    scratch: &Scratch,
    script: &str,
    adjust: impl FnOnce(&mut SessionSpec),
) -> (i32, String) {
    let out = scratch.path("out");
    let mut spec = spec(script, &out);
    adjust(&mut spec);
    let code = run(spec, options()).await;
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    (code, output)
}

#[tokio::test]
async fn tun_carries_the_target_addresses_and_default_routes() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "tun");
    let (code, output) = run_script(
        &scratch,
        "ip -o link show; ip -o addr show; echo ROUTES4; ip route; echo ROUTES6; ip -6 route; \
         echo SYS; ls /sys/class/net; cat /sys/class/net/mnet0/type /sys/class/net/mnet0/mtu",
        |_| {},
    )
    .await;
    assert_eq!(code, 0, "{output}");
    let routes4 = &output[output.find("ROUTES4").unwrap()..output.find("ROUTES6").unwrap()];
    let routes6 = &output[output.find("ROUTES6").unwrap()..output.find("SYS").unwrap()];
    // sysfs agrees with netlink: the session's interfaces, the TUN's type (ARPHRD_NONE) and
    // MTU, not the host's.
    assert!(
        output.ends_with("SYS\nlo\nmnet0\n65534\n1400\n"),
        "{output}"
    );

    assert!(
        output.contains("mnet0: <POINTOPOINT,MULTICAST,NOARP,UP,LOWER_UP> mtu 1400"),
        "{output}"
    );
    assert!(output.contains("mnet0    inet 10.244.1.7/32"), "{output}");
    assert!(output.contains("mnet0    inet6 fd00::1:7/128"), "{output}");
    assert!(
        !output.contains("tentative"),
        "IPv6 address usable at once: {output}"
    );
    assert!(
        !output.contains("fe80"),
        "no link-local address on the TUN: {output}"
    );
    assert!(
        output.contains("lo    inet 127.0.0.1/8"),
        "loopback is up: {output}"
    );
    assert!(routes4.contains("default dev mnet0"), "{routes4}");
    assert!(routes6.contains("default dev mnet0"), "{routes6}");
    assert!(
        !output.contains("eth0") && !output.contains("veth"),
        "host links are not visible: {output}"
    );
}

#[tokio::test]
async fn ipv4_only_target_gets_no_ipv6_default_route() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "v4only");
    let (code, output) = run_script(
        &scratch,
        "ip -o addr show mnet0; echo ROUTES6; ip -6 route",
        |spec| {
            spec.ipv6.clear();
        },
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("inet 10.244.1.7/32"), "{output}");
    let routes6 = &output[output.find("ROUTES6").unwrap()..];
    assert!(!routes6.contains("default"), "{routes6}");
}

#[tokio::test]
async fn mtu_below_ipv6_minimum_leaves_the_session_ipv4_only() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "smallmtu");
    let (code, output) = run_script(
        &scratch,
        "ip -o addr show mnet0; ip -o link show mnet0",
        |spec| {
            spec.mtu = 1200;
        },
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("mtu 1200"), "{output}");
    assert!(output.contains("inet 10.244.1.7/32"), "{output}");
    assert!(!output.contains("inet6"), "{output}");
}

#[tokio::test]
async fn resolv_conf_and_hosts_are_the_targets_while_the_host_keeps_its_own() {
    if !can_run() {
        return;
    }
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap();
    let host_hosts = std::fs::read("/etc/hosts").unwrap();
    let mounts_before = host_mounts();
    let scratch = Scratch::new("session", "files");
    let (code, output) = run_script(
        &scratch,
        "cat /etc/resolv.conf; echo HOSTS; cat /etc/hosts",
        |spec| {
            spec.resolv_conf =
                Some(b"nameserver 10.96.0.10\nsearch default.svc.cluster.local\n".to_vec());
            spec.hosts = Some(b"10.244.1.7 pod-under-test\n".to_vec());
        },
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(
        output,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local\nHOSTS\n10.244.1.7 pod-under-test\n"
    );
    assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), host_resolv);
    assert_eq!(std::fs::read("/etc/hosts").unwrap(), host_hosts);
    let mounts_after = host_mounts();
    for target in ["/etc/resolv.conf", "/etc/hosts"] {
        assert_eq!(
            mounts_before.iter().filter(|m| *m == target).count(),
            mounts_after.iter().filter(|m| *m == target).count(),
            "no mount on {target} reached the host"
        );
    }
}

#[tokio::test]
async fn host_files_are_kept_when_the_target_gives_none() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "keep");
    let (code, output) = run_script(&scratch, "cat /etc/resolv.conf", |_| {}).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(output, std::fs::read_to_string("/etc/resolv.conf").unwrap());
}

#[tokio::test]
async fn files_are_shown_over_symlinks_even_dangling_ones_and_the_links_survive() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "symlinks");
    let real = scratch.path("real.conf");
    std::fs::write(&real, "host contents\n").unwrap();
    let linked = scratch.path("linked.conf");
    symlink(&real, &linked).unwrap();
    let dangling = scratch.path("dangling.conf");
    symlink("/nonexistent/mirrord-net/stub-resolv.conf", &dangling).unwrap();

    let out = scratch.path("out");
    let script = format!("cat {} {}", linked.display(), dangling.display());
    let options = SessionOptions {
        extra_files: vec![
            (linked.clone(), b"linked: target's\n".to_vec()),
            (dangling.clone(), b"dangling: target's\n".to_vec()),
        ],
        ..options()
    };
    let code = run(spec(&script, &out), options).await;
    let output = std::fs::read_to_string(&out).unwrap();
    assert_eq!(code, 0, "{output}");
    assert_eq!(output, "linked: target's\ndangling: target's\n");
    assert_eq!(std::fs::read_to_string(&real).unwrap(), "host contents\n");
    assert_eq!(std::fs::read_link(&linked).unwrap(), real);
    assert_eq!(
        std::fs::read_link(&dangling).unwrap(),
        PathBuf::from("/nonexistent/mirrord-net/stub-resolv.conf")
    );
}

#[tokio::test]
async fn hostname_is_the_targets_and_the_hosts_is_unchanged() {
    if !can_run() {
        return;
    }
    let host = nix::unistd::gethostname().unwrap();
    let scratch = Scratch::new("session", "hostname");
    let (code, output) = run_script(&scratch, "hostname", |_| {}).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(output, "pod-under-test\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), host);
}

#[tokio::test]
async fn command_runs_as_the_requested_user_with_its_home() {
    if !can_run() {
        return;
    }
    let nobody = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("Debian has a user nobody");
    let scratch = Scratch::new("session", "runas");
    let out = scratch.path("out");
    std::fs::write(&out, "").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (code, output) = run_script(
        &scratch,
        "id -u; id -g; id -G; echo \"$HOME $USER $LOGNAME\"",
        |spec| {
            spec.run_as = Some(RunAs {
                uid: nobody.uid.as_raw(),
                gid: nobody.gid.as_raw(),
            })
        },
    )
    .await;
    assert_eq!(code, 0, "{output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], nobody.uid.to_string());
    assert_eq!(lines[1], nobody.gid.to_string());
    assert!(
        !lines[2].split(' ').any(|g| g == "0"),
        "root's groups are dropped: {output}"
    );
    assert_eq!(lines[3], format!("{} nobody nobody", nobody.dir.display()));
}

#[tokio::test]
async fn command_without_run_as_stays_root() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "root");
    let (code, output) = run_script(&scratch, "id -u", |_| {}).await;
    assert_eq!((code, output.as_str()), (0, "0\n"));
}

#[tokio::test]
async fn given_environment_replaces_the_clients() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "env");
    let (code, output) = run_script(&scratch, "env | sort", |spec| {
        spec.env = Some(vec![
            (OsString::from("PATH"), OsString::from("/usr/bin:/bin")),
            (OsString::from("POD_ONLY"), OsString::from("from the pod")),
        ]);
    })
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("POD_ONLY=from the pod"), "{output}");
    assert!(
        !output.contains("CARGO"),
        "client environment not inherited: {output}"
    );
}

#[tokio::test]
async fn exit_code_of_the_command_is_the_sessions() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "exit");
    assert_eq!(run_script(&scratch, "exit 3", |_| {}).await.0, 3);
}

#[tokio::test]
async fn command_killed_by_a_signal_gives_128_plus_the_signal() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "kill9");
    assert_eq!(run_script(&scratch, "kill -9 $$", |_| {}).await.0, 137);
}

#[tokio::test]
async fn missing_command_gives_127() {
    if !can_run() {
        return;
    }
    let mut spec = spec("true", Path::new("/dev/null"));
    spec.command = vec!["mirrord-net-test-no-such-command".into()];
    assert_eq!(run(spec, options()).await, 127);
}

#[tokio::test]
async fn command_that_is_not_executable_gives_126() {
    if !can_run() {
        return;
    }
    let mut spec = spec("true", Path::new("/dev/null"));
    spec.command = vec!["/etc/passwd".into()];
    assert_eq!(run(spec, options()).await, 126);
}

#[tokio::test]
async fn sigpipe_is_not_ignored_in_the_command() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "sigpipe");
    let (code, output) = run_script(&scratch, "grep SigIgn /proc/self/status", |_| {}).await;
    assert_eq!(code, 0, "{output}");
    let mask = u64::from_str_radix(output.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert_eq!(mask & (1 << (libc::SIGPIPE - 1)), 0, "{output}");
}

#[tokio::test]
async fn signal_reaches_the_command_and_wait_reports_it() {
    if !can_run() {
        return;
    }
    let mut spec = spec("sleep 30", Path::new("/dev/null"));
    spec.command = vec!["sleep".into(), "30".into()];
    let mut session = Session::start_with(spec, options()).await.unwrap();
    session.signal(Signal::SIGTERM).unwrap();
    assert_eq!(session.wait().await, 128 + libc::SIGTERM);
    // Waiting again gives the same answer; signalling a reaped command fails cleanly.
    assert_eq!(session.wait().await, 128 + libc::SIGTERM);
    assert_eq!(
        session.signal(Signal::SIGTERM),
        Err(nix::errno::Errno::ESRCH)
    );
}

#[tokio::test]
async fn wait_is_cancel_safe() {
    if !can_run() {
        return;
    }
    let mut spec = spec("", Path::new("/dev/null"));
    spec.command = vec!["sleep".into(), "0.5".into()];
    let mut session = Session::start_with(spec, options()).await.unwrap();
    let mut timeouts = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_millis(50), session.wait()).await {
            Ok(code) => break code,
            Err(_) => timeouts += 1,
        }
    };
    assert_eq!(code, 0);
    assert!(timeouts > 2);
}

#[tokio::test]
async fn session_leaves_nothing_on_the_host() {
    if !can_run() {
        return;
    }
    let links_before = host_links();
    let mounts_before = host_mounts();
    let mut spec = spec("", Path::new("/dev/null"));
    spec.command = vec!["sleep".into(), "1".into()];
    spec.resolv_conf = Some(b"nameserver 10.96.0.10\n".to_vec());
    spec.hosts = Some(b"10.244.1.7 pod\n".to_vec());
    let mut session = Session::start_with(spec, options()).await.unwrap();

    // While it runs: its TUN and mounts are in its own namespaces only.
    assert!(!host_links().contains("mnet0"));
    assert!(
        !host_mounts()
            .iter()
            .any(|m| m == "/etc/resolv.conf" || m == "/etc/hosts")
            || mounts_before
                .iter()
                .any(|m| m == "/etc/resolv.conf" || m == "/etc/hosts")
    );
    let pid = session.child_pid();
    let host_net = std::fs::read_link("/proc/self/ns/net").unwrap();
    let session_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(host_net, session_net);

    assert_eq!(session.wait().await, 0);
    drop(session);
    assert_eq!(host_links(), links_before);
    let mounts_after = host_mounts();
    assert_eq!(
        mounts_after
            .iter()
            .filter(|m| m.starts_with("/etc"))
            .count(),
        mounts_before
            .iter()
            .filter(|m| m.starts_with("/etc"))
            .count()
    );
}

#[tokio::test]
async fn dropping_the_session_kills_the_command() {
    if !can_run() {
        return;
    }
    let mut spec = spec("", Path::new("/dev/null"));
    spec.command = vec!["sleep".into(), "30".into()];
    let session = Session::start_with(spec, options()).await.unwrap();
    let pid = session.child_pid();
    drop(session);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "command {pid} still exists");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn setup_failure_names_the_step_and_the_os_error() {
    if !can_run() {
        return;
    }
    let options = SessionOptions {
        // A file cannot be mounted over a directory.
        extra_files: vec![(PathBuf::from("/etc"), b"x".to_vec())],
        ..options()
    };
    let spec = spec("true", Path::new("/dev/null"));
    let err = Session::start_with(spec, options)
        .await
        .err()
        .expect("setup fails");
    match &err {
        SessionError::Setup(failure) => {
            assert_eq!(failure.step, SetupStep::File("/etc".into()));
            assert!(failure.errno.is_some());
        }
        other => panic!("unexpected error: {other}"),
    }
    assert!(
        err.to_string()
            .starts_with("cannot show the target's /etc in the session: "),
        "{err}"
    );
}

#[tokio::test]
async fn a_binary_that_does_not_speak_the_protocol_is_reported() {
    if !can_run() {
        return;
    }
    let options = SessionOptions {
        program: Some(PathBuf::from("/bin/true")),
        ..SessionOptions::default()
    };
    let err = Session::start_with(spec("true", Path::new("/dev/null")), options)
        .await
        .err()
        .expect("start fails");
    assert!(
        matches!(&err, SessionError::ChildExited(how) if how == "exit code 0"),
        "{err}"
    );
}

#[tokio::test]
async fn empty_command_is_refused_before_anything_starts() {
    let mut spec = spec("true", Path::new("/dev/null"));
    spec.command.clear();
    let err = Session::start_with(spec, options()).await.err().unwrap();
    assert!(matches!(err, SessionError::InvalidSpec(_)), "{err}");
}

/// Reads packets from the session's TUN until one of each kind is seen, for up to five
/// seconds.
async fn read_packets(session: &Session, kinds: &[fn(&[u8]) -> bool]) -> Vec<Vec<u8>> {
    let mut found: Vec<Option<Vec<u8>>> = vec![None; kinds.len()];
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while found.iter().any(Option::is_none) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let len = tokio::time::timeout(remaining, session.tun().recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("packets within 5 s, got {found:?}"))
            .unwrap();
        let packet = &buf[..len];
        for (kind, slot) in kinds.iter().zip(found.iter_mut()) {
            if slot.is_none() && kind(packet) {
                *slot = Some(packet.to_vec());
            }
        }
    }
    found.into_iter().flatten().collect()
}

#[tokio::test]
async fn packets_of_the_command_come_out_of_the_clients_tun_with_the_target_address() {
    if !can_run() {
        return;
    }
    let mut spec = spec("", Path::new("/dev/null"));
    spec.command = vec![
        "sh".into(),
        "-c".into(),
        "ping -c 1 -W 2 192.0.2.1 >/dev/null 2>&1 & ping -6 -c 1 -W 2 2001:db8::1 >/dev/null 2>&1 & wait".into(),
    ];
    let mut session = Session::start_with(spec, options()).await.unwrap();

    let packets = read_packets(
        &session,
        &[
            |p| p[0] >> 4 == 4 && p[9] == 1,
            // ICMPv6 echo request (next header 58, type 128).
            |p| p[0] >> 4 == 6 && p[6] == 58 && p[40] == 128,
        ],
    )
    .await;
    let (v4, v6) = (&packets[0], &packets[1]);
    assert_eq!(
        &v4[12..16],
        &POD_V4.octets(),
        "source is the target's address"
    );
    assert_eq!(&v4[16..20], &[192, 0, 2, 1]);
    // Sent from the /128 at once: the address is not tentative.
    assert_eq!(
        &v6[8..24],
        &POD_V6.octets(),
        "source is the target's address"
    );
    assert_eq!(
        &v6[24..40],
        &"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets()
    );

    session.signal(Signal::SIGKILL).unwrap();
    assert_eq!(session.wait().await, 137);
}

#[tokio::test]
async fn child_that_never_answers_is_killed_after_the_timeout() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "timeout");
    let program = scratch.path("silent");
    let pid_file = scratch.path("pid");
    std::fs::write(
        &program,
        format!(
            "#!/bin/sh\necho $$ > {}\nexec sleep 30\n",
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let options = SessionOptions {
        program: Some(program),
        setup_timeout: Duration::from_millis(500),
        ..SessionOptions::default()
    };
    let err = Session::start_with(spec("true", Path::new("/dev/null")), options)
        .await
        .err()
        .expect("start times out");
    assert!(matches!(err, SessionError::Timeout(_)), "{err}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert!(
        !Path::new(&format!("/proc/{}", pid.trim())).exists(),
        "the silent child was killed and reaped"
    );
}

/// Env var naming the file where a helper client writes its command's pid. Set only in a copy
/// of this test binary that a test started to play its client (see [`start_helper_client`]).
const HELPER_PID_FILE: &str = "MIRRORD_NET_TEST_SESSION_PID_FILE";
/// Env var with a shell script for the helper's command to run instead of `sleep 60`.
const HELPER_SCRIPT: &str = "MIRRORD_NET_TEST_SESSION_SCRIPT";
/// Env var set in the copy of this test binary that plays an unprivileged client.
const HELPER_UNPRIVILEGED: &str = "MIRRORD_NET_TEST_SESSION_UNPRIVILEGED";

/// In a copy started by [`start_helper_client`]: holds a session for 60 s and returns true.
/// In the test itself: returns false.
fn played_helper_client() -> bool {
    let Some(pid_file) = std::env::var_os(HELPER_PID_FILE) else {
        return false;
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut spec = spec("", Path::new("/dev/null"));
        spec.command = match std::env::var_os(HELPER_SCRIPT) {
            Some(script) => vec!["sh".into(), "-c".into(), script],
            None => vec!["sleep".into(), "60".into()],
        };
        let session = Session::start_with(spec, options()).await.unwrap();
        std::fs::write(pid_file, session.child_pid().to_string()).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    true
}

fn is_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // A zombie waiting for a reaper has already let go of everything.
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

/// Starts a copy of this test binary running only `test`, which plays the client there
/// ([`played_helper_client`]) with `script` (or `sleep 60`) as its command; returns it and the
/// pid of its session process once the session runs.
fn start_helper_client(
    scratch: &Scratch,
    test: &str,
    script: Option<&str>,
) -> (std::process::Child, String) {
    let pid_file = scratch.path("pid");
    let mut helper = std::process::Command::new(std::env::current_exe().unwrap());
    helper
        .args(["--exact", test, "--nocapture"])
        .env(HELPER_PID_FILE, &pid_file)
        .stdout(std::process::Stdio::null());
    if let Some(script) = script {
        helper.env(HELPER_SCRIPT, script);
    }
    let helper = helper.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let pid = loop {
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            if !pid.is_empty() {
                break pid;
            }
        }
        assert!(Instant::now() < deadline, "helper did not start a session");
        std::thread::sleep(Duration::from_millis(20));
    };
    (helper, pid)
}

#[test]
fn client_killed_by_sigkill_takes_the_command_with_it() {
    if played_helper_client() || !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "sigkill");
    let (mut helper, pid) = start_helper_client(
        &scratch,
        "client_killed_by_sigkill_takes_the_command_with_it",
        None,
    );
    assert!(!is_gone(&pid));
    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !is_gone(&pid) {
        assert!(
            Instant::now() < deadline,
            "command {pid} outlived its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn without_root_the_error_names_the_step_and_says_to_use_sudo() {
    // The copy started below, as nobody: tries a session and says what happened.
    if std::env::var_os(HELPER_UNPRIVILEGED).is_some() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let spec = spec("true", Path::new("/dev/null"));
        match runtime.block_on(Session::start_with(spec, options())) {
            Ok(_) => println!("UNPRIVILEGED-RESULT: started"),
            Err(err) => println!("UNPRIVILEGED-RESULT: {err}"),
        }
        return;
    }
    if !can_run() {
        return;
    }
    assert!(
        Path::new("/usr/bin/setpriv").exists(),
        "needs setpriv (Debian package util-linux)"
    );
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    let out = std::process::Command::new("/usr/bin/setpriv")
        .arg(format!("--reuid={}", nobody.uid))
        .arg(format!("--regid={}", nobody.gid))
        .arg("--clear-groups")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "without_root_the_error_names_the_step_and_says_to_use_sudo",
            "--nocapture",
        ])
        .env(HELPER_UNPRIVILEGED, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("UNPRIVILEGED-RESULT: "))
        .unwrap_or_else(|| panic!("helper said nothing: {stdout}"));
    assert_eq!(
        line,
        "cannot create the session's network, mount, UTS and PID namespaces: Operation not \
         permitted (os error 1) — mirrord-net needs root (run it with sudo)"
    );
}

/// Host pids of the live processes whose command line is exactly `argv`.
fn processes_running(argv: &[&str]) -> Vec<String> {
    let wanted: Vec<u8> = argv
        .iter()
        .flat_map(|arg| [arg.as_bytes(), b"\0"])
        .flatten()
        .copied()
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline == wanted)
        })
        .filter(|pid| !is_gone(pid))
        .collect()
}

#[tokio::test]
async fn background_processes_die_when_the_command_exits() {
    if !can_run() {
        return;
    }
    // A duration no other test uses, so that only this session's sleep can match.
    let sleeper = ["sleep", "987651"];
    let scratch = Scratch::new("session", "background");
    let (code, output) = run_script(
        &scratch,
        &format!("{} & echo $!; sleep 0.2", sleeper.join(" ")),
        |_| {},
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.trim().parse::<u32>().is_ok(),
        "the sleeper started: {output}"
    );
    assert_eq!(
        processes_running(&sleeper),
        Vec::<String>::new(),
        "the background sleep outlived the session"
    );
}

#[test]
fn background_processes_die_when_the_client_is_killed() {
    if played_helper_client() || !can_run() {
        return;
    }
    let sleeper = ["sleep", "987652"];
    let scratch = Scratch::new("session", "background-sigkill");
    let (mut helper, _) = start_helper_client(
        &scratch,
        "background_processes_die_when_the_client_is_killed",
        Some(&format!("{} & sleep 60", sleeper.join(" "))),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let sleepers = loop {
        let found = processes_running(&sleeper);
        if !found.is_empty() {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "the background sleep did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    helper.kill().unwrap();
    helper.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sleepers.iter().all(|pid| is_gone(pid)) {
        assert!(
            Instant::now() < deadline,
            "background sleep {sleepers:?} outlived its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn the_command_sees_only_the_sessions_processes() {
    if !can_run() {
        return;
    }
    let scratch = Scratch::new("session", "pidns");
    let (code, output) = run_script(
        &scratch,
        "echo $$; ls /proc | grep -c '^[0-9][0-9]*$'; cat /proc/1/cmdline | tr '\\0' ' '",
        |_| {},
    )
    .await;
    assert_eq!(code, 0, "{output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines[0], "2", "the command is PID 2, after init: {output}");
    let count: u32 = lines[1].parse().unwrap();
    // init, the shell, and the pipeline's processes.
    assert!(count <= 6, "{count} processes visible: {output}");
    assert!(
        lines[2].contains("__session"),
        "PID 1 is the session's init: {output}"
    );
}
