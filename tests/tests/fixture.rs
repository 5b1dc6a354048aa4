//! Self-tests of the fixture: every client the end-to-end tests drive through mirrord-net,
//! run here directly in the target's namespaces, must already work. If one of these fails,
//! the fixture is broken, not mirrord-net.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mirrord_net_tests::leftovers::Baseline;
use mirrord_net_tests::topology::*;
use mirrord_net_tests::{bash, netns, procfs, sh, sweep, tool, Invocation, Pod};

#[test]
fn pod_fixture_serves_dns_http_and_databases_directly() {
    let pod = Pod::builder().postgres().redis().build();
    eprintln!(
        "pod with postgres and redis built in {:?}",
        pod.build_time()
    );
    let curl = tool("curl");
    let body = Invocation::in_pod(&pod, &[&curl, "-sS", "http://web/"]).run();
    assert_eq!(body.assert_success(), pod.index_body());
    let body = Invocation::in_pod(&pod, &[&curl, "-sS", &format!("http://{WEB_FQDN}/")]).run();
    assert_eq!(body.assert_success(), pod.index_body());
    let wget = Invocation::in_pod(
        &pod,
        &[&tool("busybox"), "wget", "-q", "-O", "-", "http://web/"],
    )
    .run();
    assert_eq!(wget.assert_success(), pod.index_body());

    let getent = Invocation::in_pod(&pod, &[&tool("getent"), "ahosts", WEB]).run();
    assert!(
        getent.assert_success().contains(&SERVICES_V4.to_string()),
        "{getent}"
    );
    assert!(getent.stdout.contains(&SERVICES_V6.to_string()), "{getent}");
    let dig = Invocation::in_pod(&pod, &[&tool("dig"), "+short", WEB_FQDN]).run();
    assert_eq!(dig.assert_success().trim(), SERVICES_V4.to_string());

    let psql = Invocation::in_pod(
        &pod,
        &[
            &tool("psql"),
            "-h",
            POSTGRES,
            "-U",
            "postgres",
            "-tAc",
            "select 40+2",
        ],
    )
    .run();
    assert_eq!(psql.assert_success().trim(), "42");
    let redis = tool("redis-cli");
    let set = Invocation::in_pod(&pod, &[&redis, "-h", REDIS, "SET", "fixture", "works"]).run();
    assert_eq!(set.assert_success().trim(), "OK");
    let get = Invocation::in_pod(&pod, &[&redis, "-h", REDIS, "GET", "fixture"]).run();
    assert_eq!(get.assert_success().trim(), "works");
}

#[test]
fn pod_fixture_answers_udp_icmp_and_ipv6_directly() {
    let pod = Pod::builder().udp_echo().build();
    let ping = tool("ping");
    for address in [SERVICES_V4.to_string(), SERVICES_V6.to_string()] {
        let out =
            Invocation::in_pod(&pod, &[&ping, "-c", "3", "-i", "0.2", "-W", "2", &address]).run();
        assert!(out.assert_success().contains("3 received"), "{out}");
    }
    let socat = Invocation::in_pod(
        &pod,
        &sh(&format!(
            "echo fixture-udp | {} -t 1 - UDP:{ECHO}:{UDP_ECHO_PORT}",
            tool("socat")
        )),
    )
    .run();
    assert_eq!(socat.assert_success(), "fixture-udp\n");
    let script = pod.script("udp_sendto.py");
    let sendto = Invocation::in_pod(
        &pod,
        &[
            &tool("python3"),
            &script,
            ECHO,
            &UDP_ECHO_PORT.to_string(),
            "unconnected",
        ],
    )
    .run();
    let words: Vec<&str> = sendto.assert_success().split_whitespace().collect();
    let services = [SERVICES_V4.to_string(), SERVICES_V6.to_string()];
    assert!(
        words[0] == "unconnected" && services.contains(&words[1].to_string()),
        "{sendto}"
    );
    assert_eq!(
        words[1], words[2],
        "the reply must come from where the datagram went"
    );

    let curl = tool("curl");
    let v6 = Invocation::in_pod(
        &pod,
        &[
            &curl,
            "-sS",
            "-g",
            &format!("http://{}/", services_v6_url_host()),
        ],
    )
    .run();
    assert_eq!(v6.assert_success(), pod.index_body());
    let aaaa_only =
        Invocation::in_pod(&pod, &[&curl, "-sS", &format!("http://{WEB6_ONLY_FQDN}/")]).run();
    assert_eq!(aaaa_only.assert_success(), pod.index_body());
}

#[test]
fn pod_fixture_target_has_its_own_resolv_conf_hosts_and_hostname() {
    let host_resolv = fs::read_to_string("/etc/resolv.conf").unwrap();
    let pod = Pod::start();
    assert_ne!(
        host_resolv,
        pod.resolv_conf(),
        "the target's resolv.conf must differ from the host's"
    );
    let resolv = Invocation::in_pod(&pod, &["cat", "/etc/resolv.conf"]).run();
    assert_eq!(resolv.assert_success(), pod.resolv_conf());
    let hosts = Invocation::in_pod(&pod, &["cat", "/etc/hosts"]).run();
    assert_eq!(hosts.assert_success(), pod.hosts());
    let name = Invocation::in_pod(&pod, &["uname", "-n"]).run();
    assert_eq!(name.assert_success().trim(), pod.hostname());
    let from_hosts = Invocation::in_pod(&pod, &[&tool("getent"), "hosts", HOSTS_ONLY_NAME]).run();
    assert!(
        from_hosts
            .assert_success()
            .starts_with(&SERVICES_V4.to_string()),
        "{from_hosts}"
    );

    // Only the target's namespaces see any of it.
    assert_eq!(fs::read_to_string("/etc/resolv.conf").unwrap(), host_resolv);
    assert_ne!(
        nix::unistd::gethostname().unwrap().to_string_lossy(),
        pod.hostname()
    );
    let pid = pod.target_pid() as i32;
    for kind in ["net", "mnt", "uts"] {
        assert_ne!(
            procfs::ns_of(pid, kind),
            procfs::ns_of(std::process::id() as i32, kind),
            "{kind}"
        );
    }
}

#[test]
fn pod_fixture_runs_the_clients_preload_designs_miss_directly() {
    let pod = Pod::start();
    let gron = Invocation::in_pod(
        &pod,
        &[
            "env",
            "GODEBUG=netdns=go+1",
            &tool("gron"),
            "http://web/data.json",
        ],
    )
    .run();
    assert!(
        gron.assert_success()
            .contains(&format!("json.pod = \"{}\";", pod.id())),
        "{gron}"
    );
    assert!(
        gron.stderr.contains("Go's resolver"),
        "gron did not use Go's own resolver:\n{gron}"
    );

    let env_i = Invocation::in_pod(
        &pod,
        &[
            "env",
            "-i",
            &tool("curl"),
            "-sS",
            &format!("http://{WEB_FQDN}/"),
        ],
    )
    .run();
    assert_eq!(env_i.assert_success(), pod.index_body());

    // A setuid copy really runs with euid 0 for an unprivileged user here: the test
    // directory's file system honours setuid bits.
    let suid_id = setuid_copy(&pod, "/usr/bin/id", "suid-id");
    let id = Invocation::in_pod(&pod, &[&suid_id])
        .as_user(65534, 65534)
        .run();
    assert!(
        id.assert_success().contains("uid=65534") && id.stdout.contains("euid=0"),
        "{id}"
    );
    let suid_curl = setuid_copy(&pod, &tool("curl"), "suid-curl");
    let curl = Invocation::in_pod(&pod, &[&suid_curl, "-sS", "http://web/"])
        .as_user(65534, 65534)
        .run();
    assert_eq!(curl.assert_success(), pod.index_body());
}

fn setuid_copy(pod: &Pod, program: &str, name: &str) -> String {
    let path = pod.dir().join(name);
    fs::copy(program, &path).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o4755)).unwrap();
    path.to_string_lossy().into_owned()
}

#[test]
fn pod_fixture_bulk_stream_and_upload_sink_agree_with_the_generator() {
    const SIZE: u64 = 64 << 20;
    let pod = Pod::start();
    let blob = pod.script("blob.py");
    let python = tool("python3");
    let expected = Invocation::in_pod(&pod, &[&python, &blob, "sha", &SIZE.to_string()]).run();
    let expected = expected.assert_success().trim().to_string();
    let served = Invocation::in_pod(
        &pod,
        &[
            &tool("curl"),
            "-sS",
            &format!("http://web/blob/{SIZE}.sha256"),
        ],
    )
    .run();
    assert_eq!(served.assert_success().trim(), expected);

    let download = Invocation::in_pod(
        &pod,
        &bash(&format!(
            "set -o pipefail; curl -sS --fail http://web/blob/{SIZE} | sha256sum"
        )),
    )
    .run();
    assert_eq!(
        download.assert_success().split_whitespace().next(),
        Some(expected.as_str())
    );
    let upload = Invocation::in_pod(
        &pod,
        &bash(&format!(
            "set -o pipefail; {python} {blob} gen {SIZE} | curl -sS --fail -T - http://web/upload"
        )),
    )
    .run();
    assert_eq!(upload.assert_success().trim(), format!("{expected} {SIZE}"));
}

#[test]
fn pod_fixture_holds_500_connections_directly() {
    let pod = Pod::builder().hold_echo().build();
    let script = pod.script("many_connections.py");
    let out = Invocation::in_pod(
        &pod,
        &[
            &tool("python3"),
            &script,
            WEB,
            &HOLD_ECHO_PORT.to_string(),
            "500",
        ],
    )
    .run();
    assert!(out.assert_success().starts_with("ok 500 of 500"), "{out}");
}

#[test]
fn pod_fixture_refuses_a_closed_port_at_once_directly() {
    let pod = Pod::start();
    let out = Invocation::in_pod(
        &pod,
        &[&tool("curl"), "-sS", &format!("http://web:{CLOSED_PORT}/")],
    )
    .run();
    out.assert_code(7);
    assert!(out.elapsed < Duration::from_secs(1), "{out}");
}

#[test]
fn pod_fixture_removes_everything_on_drop() {
    let pod = Pod::builder()
        .postgres()
        .redis()
        .udp_echo()
        .hold_echo()
        .build();
    let (dir, target) = (pod.dir().to_path_buf(), pod.target_pid() as i32);
    let names = [
        pod.pod_netns().name().to_string(),
        pod.services_netns().name().to_string(),
    ];
    let ids = [
        pod.pod_netns().id().unwrap(),
        pod.services_netns().id().unwrap(),
    ];
    drop(pod);
    assert_gone(&dir, target, &names, &ids);
}

#[test]
fn pod_fixture_cleans_up_when_the_test_panics() {
    let mut seen = None;
    let result = catch_unwind(AssertUnwindSafe(|| {
        let pod = Pod::start();
        seen = Some((
            pod.dir().to_path_buf(),
            pod.target_pid() as i32,
            [
                pod.pod_netns().name().to_string(),
                pod.services_netns().name().to_string(),
            ],
            [
                pod.pod_netns().id().unwrap(),
                pod.services_netns().id().unwrap(),
            ],
        ));
        panic!("a failing test");
    }));
    assert!(result.is_err());
    let (dir, target, names, ids) = seen.unwrap();
    assert_gone(&dir, target, &names, &ids);
}

fn assert_gone(dir: &Path, target: i32, names: &[String], ids: &[String]) {
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(!procfs::is_alive(target), "target {target} still runs");
    for name in names {
        assert!(!netns::path_of(name).exists(), "netns {name} still exists");
    }
    for id in ids {
        assert!(
            procfs::processes_in("net", id).is_empty(),
            "processes still in {id}"
        );
    }
}

#[test]
fn sweep_removes_what_a_killed_test_process_left() {
    // Pretend a test process that no longer exists made a namespace (with a process inside)
    // and a directory.
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let name = format!("{}{dead_pid}-0", sweep::PREFIX);
    let ns = netns::Netns::create(&format!("{name}-pod")).unwrap();
    let ns_id = ns.id().unwrap();
    let mut inside = ns.command("/bin/sleep").unwrap();
    inside.arg("60");
    let mut inside = inside.spawn().unwrap();
    std::mem::forget(ns); // as if its owner had died before dropping it
    let dir = Path::new("/tmp").join(&name);
    fs::create_dir_all(&dir).unwrap();

    sweep::sweep();

    assert!(!netns::path_of(&format!("{name}-pod")).exists());
    assert!(!dir.exists());
    let status = inside.wait().unwrap();
    assert!(
        !status.success(),
        "the process in the stale netns should have been killed"
    );
    assert!(procfs::processes_in("net", &ns_id).is_empty());
}

#[test]
fn leftover_check_sees_an_orphaned_process() {
    let pod = Pod::start();
    let baseline = Baseline::capture(Some(&pod));
    assert!(
        baseline.leftovers(Some(&pod), None).is_empty(),
        "{:?}",
        baseline.leftovers(Some(&pod), None)
    );
    // The shell exits at once; its sleeping child is orphaned and re-parented to us.
    Command::new("sh")
        .args(["-c", "sleep 30 &"])
        .status()
        .unwrap();
    let left = baseline.leftovers(Some(&pod), None);
    assert!(left.iter().any(|line| line.contains("sleep")), "{left:?}");
    for proc in procfs::descendants_of(std::process::id() as i32) {
        if proc.comm == "sleep" && !pod.fixture_pgids().contains(&proc.pgid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(proc.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    baseline.assert_clean_within(Some(&pod), None, Duration::from_secs(5));
}

#[test]
fn pods_built_at_the_same_time_do_not_collide() {
    let pods: Vec<Pod> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3).map(|_| scope.spawn(Pod::start)).collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    for pod in &pods {
        let body = Invocation::in_pod(pod, &[&tool("curl"), "-sS", "http://web/"]).run();
        assert_eq!(body.assert_success(), pod.index_body());
    }
}
