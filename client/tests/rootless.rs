//! Sessions without root: real sessions started by an unprivileged client, as rootless
//! Kubernetes sessions are. Needs root (as in CI) to play both sides: each test runs again as
//! `nobody` in a copy of this test binary (the client), and checks from root, in the host's
//! namespaces, what the host sees — file owners, mounts, links, processes.
//!
//! The devices: a rootless session opens `/dev/net/tun` and `/dev/fuse` with the user's own
//! permissions. Debian's udev makes both 0666; on this machine they are 0600. Rather than
//! change the machine's devices (shared with everything else running on it), the copy runs in
//! a mount namespace of its own in which fresh 0666 nodes of the same two devices (made on a
//! private tmpfs, then bound over the paths) stand in for them: the kernel's devices, the
//! modes of a stock machine, and nothing changed outside the test.
//!
//! The target's files come from the agent's real file server, run in the client's process
//! over a directory tree of the test (the session's FUSE mount is the real one).

use std::ffi::CString;
use std::future::Future;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrord_net_agent::files::{Access, FileServer};
use mirrord_net_fuse_fs::transport::{Reply, Transport, TransportError};
use mirrord_net_protocol::fs::FsRequest;
use mirrord_net_session::{
    Destination, DnsMode, DnsRules, FilterMode, IdMaps, NamePattern, OutgoingRules, RemoteFiles,
    Session, SessionError, SessionOptions, SessionPrivileges, SessionSpec, SetupStep,
};

mod support;

use support::{host_links, host_mount_points, script_spec, Scratch};

const NOBODY: u32 = 65534;
/// Set in the copy of this binary that plays the unprivileged client: the scratch directory.
const COPY_SCRATCH: &str = "MIRRORD_NET_TEST_ROOTLESS_SCRATCH";

/// In the copy that plays the client: its scratch directory.
fn in_unprivileged_copy() -> Option<PathBuf> {
    std::env::var_os(COPY_SCRATCH).map(PathBuf::from)
}

/// Runs `body` on a runtime whose `block_on` thread lives as long as the sessions.
fn block_on<F: Future>(body: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(body)
}

/// What the copy changes before it runs, for itself only.
#[derive(Clone, Copy, PartialEq)]
struct Setup {
    /// Mode of its `/dev/net/tun` and `/dev/fuse`.
    device_mode: libc::mode_t,
    /// Whether it may create user namespaces.
    user_namespaces: bool,
    /// Whether the scratch directory's `resolv.conf` stands in for the machine's
    /// `/etc/resolv.conf` (bound over it in the copy's mount namespace).
    host_resolv_conf: bool,
}

/// A stock Debian machine: the devices 0666 (as udev makes them), user namespaces allowed.
const STOCK: Setup = Setup {
    device_mode: 0o666,
    user_namespaces: true,
    host_resolv_conf: false,
};

/// Starts this binary again running only `test`, as nobody (see the module documentation).
fn spawn_unprivileged(test: &str, scratch: &Scratch, setup: Setup) -> std::process::Child {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root to play both sides (run them with sudo)"
    );
    for device in ["/dev/net/tun", "/dev/fuse"] {
        assert!(
            Path::new(device).exists(),
            "these tests need {device} (modprobe tun fuse)"
        );
    }
    let devices = scratch.path("devices");
    std::fs::create_dir_all(&devices).unwrap();
    let c = |path: &Path| CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let (devices_c, tun_node, fuse_node, resolv_conf) = (
        c(&devices),
        c(&devices.join("tun")),
        c(&devices.join("fuse")),
        c(&scratch.path("resolv.conf")),
    );
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(COPY_SCRATCH, &scratch.0)
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only system calls run between fork and exec, on strings prepared before.
    unsafe {
        command.pre_exec(move || {
            let check = |result: libc::c_int| {
                if result < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            {
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    c"mirrord-net-test-devices".as_ptr(),
                    devices_c.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    c"mode=0755".as_ptr().cast(),
                ))?;
                for (node, minor, path) in [
                    (&tun_node, 200, c"/dev/net/tun"),
                    (&fuse_node, 229, c"/dev/fuse"),
                ] {
                    check(libc::mknod(
                        node.as_ptr(),
                        libc::S_IFCHR | setup.device_mode,
                        libc::makedev(10, minor),
                    ))?;
                    // mknod's mode went through the umask.
                    check(libc::chmod(node.as_ptr(), setup.device_mode))?;
                    check(libc::mount(
                        node.as_ptr(),
                        path.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
                check(libc::umount2(devices_c.as_ptr(), libc::MNT_DETACH))?;
                if setup.host_resolv_conf {
                    check(libc::mount(
                        resolv_conf.as_ptr(),
                        c"/etc/resolv.conf".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ))?;
                }
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(NOBODY))?;
            check(libc::setuid(NOBODY))?;
            if !setup.user_namespaces {
                // Dropping root made the process non-dumpable, which makes its /proc/self
                // files root's; the maps are written there.
                check(libc::prctl(libc::PR_SET_DUMPABLE, 1))?;
                // A user namespace of the copy's own whose limit for nested ones is 0: the
                // machine's own setting stays as it is.
                check(libc::unshare(libc::CLONE_NEWUSER))?;
                for (path, contents) in [
                    (c"/proc/self/setgroups", c"deny"),
                    (c"/proc/self/uid_map", c"65534 65534 1"),
                    (c"/proc/self/gid_map", c"65534 65534 1"),
                    (c"/proc/sys/user/max_user_namespaces", c"0"),
                ] {
                    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    check(fd)?;
                    let len = contents.to_bytes().len();
                    let written = libc::write(fd, contents.as_ptr().cast(), len);
                    libc::close(fd);
                    check(written as libc::c_int)?;
                }
            }
            Ok(())
        });
    }
    command.spawn().unwrap()
}

/// Runs `test` as nobody and returns its output once it passed.
fn run_unprivileged(test: &str, scratch: &Scratch, setup: Setup) -> Output {
    let output = spawn_unprivileged(test, scratch, setup)
        .wait_with_output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("test result: ok. 1 passed"),
        "the unprivileged client failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn rootless_options() -> SessionOptions {
    SessionOptions {
        program: Some(PathBuf::from(env!("CARGO_BIN_EXE_mirrord-net"))),
        privileges: SessionPrivileges::Rootless(IdMaps::current_user(false)),
        ..SessionOptions::default()
    }
}

/// A session that runs `script` with `sh -c`, its output going to `out`, on a target with a
/// resolv.conf and hosts file of its own.
fn spec(script: &str, out: &Path) -> SessionSpec {
    SessionSpec {
        hostname: "rootless-pod".into(),
        resolv_conf: Some(b"nameserver 10.96.0.10\nsearch default.svc.cluster.local\n".to_vec()),
        hosts: Some(b"10.244.1.7 rootless-pod\n".to_vec()),
        ..script_spec(script, out)
    }
}

/// Runs `script` in a rootless session; returns its exit code and output.
async fn run_script(
    scratch: &Path,
    script: &str,
    options: SessionOptions,
    files: Option<RemoteFiles>,
) -> (i32, String) {
    let out = scratch.join("out");
    let mut session = Session::start_with_files(spec(script, &out), options, files)
        .await
        .expect("the rootless session starts");
    let code = session.wait().await;
    (code, std::fs::read_to_string(&out).unwrap_or_default())
}

#[test]
fn rootless_session_has_its_own_network_hostname_and_files() {
    if let Some(scratch) = in_unprivileged_copy() {
        let (code, output) = block_on(run_script(
            &scratch,
            "ip -o link show; ip -o addr show; echo ROUTES4; ip route; echo ROUTES6; \
             ip -6 route; echo HOSTNAME; hostname; echo RESOLV; cat /etc/resolv.conf; \
             echo HOSTS; cat /etc/hosts; echo PID; echo $$; \
             echo SYS; ls /sys/class/net; cat /sys/class/net/mnet0/type /sys/class/net/mnet0/mtu",
            rootless_options(),
            None,
        ));
        assert_eq!(code, 0, "{output}");
        let routes4 = &output[output.find("ROUTES4").unwrap()..output.find("ROUTES6").unwrap()];
        let routes6 = &output[output.find("ROUTES6").unwrap()..output.find("HOSTNAME").unwrap()];
        assert!(
            output.contains("mnet0: <POINTOPOINT,MULTICAST,NOARP,UP,LOWER_UP> mtu 1400"),
            "{output}"
        );
        assert!(output.contains("mnet0    inet 10.244.1.7/32"), "{output}");
        assert!(output.contains("mnet0    inet6 fd00::1:7/128"), "{output}");
        assert!(output.contains("lo    inet 127.0.0.1/8"), "{output}");
        assert!(
            !output.contains("eth0") && !output.contains("veth"),
            "{output}"
        );
        assert!(routes4.contains("default dev mnet0"), "{output}");
        assert!(routes6.contains("default dev mnet0"), "{output}");
        // sysfs agrees with netlink: the session's interfaces, the TUN's type (ARPHRD_NONE)
        // and MTU, not the host's.
        assert!(
            output.ends_with("SYS\nlo\nmnet0\n65534\n1400\n"),
            "{output}"
        );
        assert!(output.contains("HOSTNAME\nrootless-pod\n"), "{output}");
        assert!(
            output.contains(
                "RESOLV\nnameserver 10.96.0.10\nsearch default.svc.cluster.local\nHOSTS\n\
                 10.244.1.7 rootless-pod\nPID\n2\n"
            ),
            "the target's files, and the command is PID 2 after init: {output}"
        );
        return;
    }
    let host_name = nix::unistd::gethostname().unwrap();
    let host_resolv = std::fs::read("/etc/resolv.conf").unwrap();
    let links = host_links();
    let mounts = host_mount_points();
    let scratch = Scratch::new("rootless", "network");
    run_unprivileged(
        "rootless_session_has_its_own_network_hostname_and_files",
        &scratch,
        STOCK,
    );
    assert_eq!(nix::unistd::gethostname().unwrap(), host_name);
    assert_eq!(std::fs::read("/etc/resolv.conf").unwrap(), host_resolv);
    assert_eq!(host_links(), links, "no interface left on the host");
    assert_eq!(host_mount_points(), mounts, "no mount left on the host");
}

#[test]
fn rootless_command_runs_as_the_user_seen_from_the_host() {
    if let Some(scratch) = in_unprivileged_copy() {
        let made = scratch.join("made-by-the-command");
        let (code, output) = block_on(run_script(
            &scratch,
            &format!(
                "id -u; id -g; grep CapEff /proc/self/status; touch {}",
                made.display()
            ),
            rootless_options(),
            None,
        ));
        assert_eq!(code, 0, "{output}");
        assert_eq!(
            output,
            format!("{NOBODY}\n{NOBODY}\nCapEff:\t0000000000000000\n"),
            "the user's own ids inside, and no capability"
        );
        return;
    }
    let scratch = Scratch::new("rootless", "uid");
    run_unprivileged(
        "rootless_command_runs_as_the_user_seen_from_the_host",
        &scratch,
        STOCK,
    );
    let made = std::fs::metadata(scratch.path("made-by-the-command")).unwrap();
    assert_eq!((made.uid(), made.gid()), (NOBODY, NOBODY));
}

#[test]
fn rootless_as_root_is_root_inside_and_the_user_outside() {
    if let Some(scratch) = in_unprivileged_copy() {
        let made = scratch.join("made-by-root-inside");
        let options = SessionOptions {
            privileges: SessionPrivileges::Rootless(IdMaps::current_user(true)),
            ..rootless_options()
        };
        let (code, output) = block_on(run_script(
            &scratch,
            &format!("id -u; id -g; touch {}", made.display()),
            options,
            None,
        ));
        assert_eq!(code, 0, "{output}");
        assert_eq!(output, "0\n0\n");
        return;
    }
    let scratch = Scratch::new("rootless", "asroot");
    run_unprivileged(
        "rootless_as_root_is_root_inside_and_the_user_outside",
        &scratch,
        STOCK,
    );
    let made = std::fs::metadata(scratch.path("made-by-root-inside")).unwrap();
    assert_eq!((made.uid(), made.gid()), (NOBODY, NOBODY));
}

#[test]
fn rootless_exit_codes_pass_through() {
    if let Some(scratch) = in_unprivileged_copy() {
        block_on(async {
            for (script, expected) in [("exit 3", 3), ("kill -9 $$", 137), ("true", 0)] {
                let (code, output) = run_script(&scratch, script, rootless_options(), None).await;
                assert_eq!(code, expected, "{script}: {output}");
            }
            let mut missing = spec("", Path::new("/dev/null"));
            missing.command = vec!["mirrord-net-test-no-such-command".into()];
            // The test's PATH has root's directories, which nobody may not search (EACCES, so
            // 126, as a shell would say too).
            missing.env = Some(vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())]);
            let mut session = Session::start_with(missing, rootless_options())
                .await
                .unwrap();
            assert_eq!(session.wait().await, 127);
        });
        return;
    }
    let scratch = Scratch::new("rootless", "exit");
    run_unprivileged("rootless_exit_codes_pass_through", &scratch, STOCK);
}

/// The agent's file server over a local tree, in this process.
struct InProcess(Arc<FileServer>);

impl Transport for InProcess {
    async fn call(&self, request: FsRequest) -> Result<Reply, TransportError> {
        let server = self.0.clone();
        let answer = tokio::task::spawn_blocking(move || server.handle(request))
            .await
            .map_err(|err| TransportError::Stream(err.to_string()))?;
        Ok(Reply {
            response: answer.response,
            data: answer.data.unwrap_or_default(),
        })
    }
}

#[test]
fn rootless_session_mounts_the_targets_files_where_the_user_can() {
    // The "target's" tree, and a local directory that one of its paths is shown over.
    let tree_of = |scratch: &Path| scratch.join("tree");
    let local_of = |scratch: &Path| scratch.join("local-config");
    if let Some(scratch) = in_unprivileged_copy() {
        let server = Arc::new(FileServer::open(&tree_of(&scratch), Access::ReadOnly).unwrap());
        let mount_point = mirrord_net_session::remote_root(Some(NOBODY), None);
        assert_eq!(mount_point, Path::new("/tmp/mirrord-net-65534/root"));
        let local = local_of(&scratch);
        let (code, output) = block_on(async {
            let runtime = tokio::runtime::Handle::current();
            let files = RemoteFiles {
                mount_point: mount_point.clone(),
                writable: false,
                binds: vec![local.clone()],
                keep_local: Vec::new(),
                serve: Box::new(move |device| {
                    let server = mirrord_net_fuse_fs::serve(
                        device,
                        InProcess(server),
                        runtime,
                        mirrord_net_fuse_fs::DEFAULT_TTL,
                    )?;
                    Ok(Box::new(server) as Box<dyn std::any::Any + Send>)
                }),
            };
            run_script(
                &scratch,
                &format!(
                    "echo \"$MIRRORD_NET_REMOTE_ROOT\"; cat \"$MIRRORD_NET_REMOTE_ROOT/etc/app.conf\"; \
                     cat {local}/setting; grep -c ' fuse.mirrord-net ' /proc/self/mountinfo; \
                     touch \"$MIRRORD_NET_REMOTE_ROOT/etc/new\" 2>/dev/null || echo read-only",
                    local = local.display()
                ),
                rootless_options(),
                Some(files),
            )
            .await
        });
        assert_eq!(code, 0, "{output}");
        assert_eq!(
            output, "/tmp/mirrord-net-65534/root\nfrom the target\nremote setting\n2\nread-only\n",
            "the root under the user's directory, a path bound over the local one: {output}"
        );
        return;
    }
    let scratch = Scratch::new("rootless", "files");
    let tree = tree_of(&scratch.0);
    let local = local_of(&scratch.0);
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/app.conf"), "from the target\n").unwrap();
    // The remote path with the same name as the local directory.
    let remote_local = tree.join(local.strip_prefix("/").unwrap());
    std::fs::create_dir_all(&remote_local).unwrap();
    std::fs::write(remote_local.join("setting"), "remote setting\n").unwrap();
    std::fs::create_dir_all(&local).unwrap();
    std::fs::write(local.join("setting"), "local setting\n").unwrap();
    for dir in [&scratch.0, &tree, &tree.join("etc")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mounts = host_mount_points();
    run_unprivileged(
        "rootless_session_mounts_the_targets_files_where_the_user_can",
        &scratch,
        STOCK,
    );
    assert_eq!(host_mount_points(), mounts, "no FUSE mount on the host");
    assert_eq!(
        std::fs::read_to_string(local.join("setting")).unwrap(),
        "local setting\n"
    );
    let root = std::fs::symlink_metadata("/tmp/mirrord-net-65534/root").unwrap();
    assert!(root.is_dir() && root.uid() == NOBODY);
    assert_eq!(
        std::fs::read_dir("/tmp/mirrord-net-65534/root")
            .unwrap()
            .count(),
        0,
        "the mount point stays an empty directory on the host"
    );
}

/// Whether `pid` is gone (a zombie has let go of everything too).
fn is_gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

fn wait_until_gone(pids: &[String], what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !pids.iter().all(|pid| is_gone(pid)) {
        assert!(
            Instant::now() < deadline,
            "{what} {pids:?} outlived its client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rootless_session_dies_with_its_sigkilled_client() {
    if let Some(scratch) = in_unprivileged_copy() {
        block_on(async {
            let mut spec = spec("", Path::new("/dev/null"));
            spec.command = vec![
                "sh".into(),
                "-c".into(),
                "sleep 987661 & echo $! >/dev/null; sleep 60".into(),
            ];
            let session = Session::start_with(spec, rootless_options()).await.unwrap();
            std::fs::write(scratch.join("pid"), session.child_pid().to_string()).unwrap();
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        return;
    }
    let scratch = Scratch::new("rootless", "sigkill");
    let links = host_links();
    let mut client = spawn_unprivileged(
        "rootless_session_dies_with_its_sigkilled_client",
        &scratch,
        STOCK,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let session_pid = loop {
        if let Ok(pid) = std::fs::read_to_string(scratch.path("pid")) {
            if !pid.is_empty() {
                break pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the client did not start a session: {:?}",
            client.try_wait()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // The session's processes: the child, its init, the shell and both sleeps.
    let session_user_ns = std::fs::read_link(format!("/proc/{session_pid}/ns/user")).unwrap();
    assert_ne!(
        session_user_ns,
        std::fs::read_link("/proc/self/ns/user").unwrap()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let members = loop {
        let members = processes_in_user_ns(&session_user_ns);
        if members.len() >= 5 {
            break members;
        }
        assert!(Instant::now() < deadline, "session processes: {members:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    client.kill().unwrap();
    client.wait().unwrap();
    wait_until_gone(&members, "session process");
    assert!(processes_in_user_ns(&session_user_ns).is_empty());
    assert_eq!(host_links(), links);
}

/// Live processes whose user namespace is `ns` (a `user:[N]` link).
fn processes_in_user_ns(ns: &Path) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/ns/user")).is_ok_and(|link| link == ns)
        })
        .filter(|pid| !is_gone(pid))
        .collect()
}

#[test]
fn rootless_session_leaves_nothing_after_the_command_exits() {
    if let Some(scratch) = in_unprivileged_copy() {
        block_on(async {
            let mut spec = spec("", Path::new("/dev/null"));
            spec.command = vec!["sh".into(), "-c".into(), "sleep 987662 & sleep 0.2".into()];
            let mut session = Session::start_with(spec, rootless_options()).await.unwrap();
            let pid = session.child_pid();
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap();
            std::fs::write(scratch.join("ns"), ns.as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(session.wait().await, 0);
        });
        return;
    }
    let scratch = Scratch::new("rootless", "exit-clean");
    let links = host_links();
    let mounts = host_mount_points();
    run_unprivileged(
        "rootless_session_leaves_nothing_after_the_command_exits",
        &scratch,
        STOCK,
    );
    let ns = PathBuf::from(std::fs::read_to_string(scratch.path("ns")).unwrap());
    assert!(
        processes_in_user_ns(&ns).is_empty(),
        "the background sleep outlived the session"
    );
    assert_eq!(host_links(), links);
    assert_eq!(host_mount_points(), mounts);
}

#[test]
fn disabled_user_namespaces_are_named_in_the_error() {
    if let Some(scratch) = in_unprivileged_copy() {
        let err = block_on(Session::start_with(
            spec("true", &scratch.join("out")),
            rootless_options(),
        ))
        .err()
        .expect("no session without user namespaces");
        match &err {
            SessionError::RootlessSetup { failure, .. } => {
                assert_eq!(failure.step, SetupStep::UserNamespace);
                assert_eq!(failure.errno, Some(libc::ENOSPC));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert_eq!(
            err.to_string(),
            "cannot create the session's user namespace: No space left on device (os error 28) \
             — user namespaces are disabled on this machine (user.max_user_namespaces = 0): \
             allow them with `sysctl -w user.max_user_namespaces=15000`, or run mirrord-net \
             with sudo"
        );
        return;
    }
    let scratch = Scratch::new("rootless", "no-userns");
    run_unprivileged(
        "disabled_user_namespaces_are_named_in_the_error",
        &scratch,
        Setup {
            user_namespaces: false,
            ..STOCK
        },
    );
}

#[test]
fn a_device_the_user_cannot_open_is_named_with_the_mode_it_needs() {
    if let Some(scratch) = in_unprivileged_copy() {
        let err = block_on(Session::start_with(
            spec("true", &scratch.join("out")),
            rootless_options(),
        ))
        .err()
        .expect("no session without /dev/net/tun");
        match &err {
            SessionError::RootlessSetup { failure, .. } => {
                assert_eq!(failure.step, SetupStep::TunDevice);
                assert_eq!(failure.errno, Some(libc::EACCES));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(err.to_string().contains("it must be mode 0666"), "{err}");
        return;
    }
    let scratch = Scratch::new("rootless", "no-tun");
    run_unprivileged(
        "a_device_the_user_cannot_open_is_named_with_the_mode_it_needs",
        &scratch,
        Setup {
            device_mode: 0o600,
            ..STOCK
        },
    );
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

#[test]
fn rootless_pings_of_the_user_leave_through_the_clients_tun() {
    if in_unprivileged_copy().is_some() {
        block_on(async {
            let mut spec = spec("", Path::new("/dev/null"));
            spec.command = vec![
                "sh".into(),
                "-c".into(),
                "ping -c 1 -W 2 192.0.2.1 & ping -6 -c 1 -W 2 2001:db8::1 & wait".into(),
            ];
            let mut session = Session::start_with(spec, rootless_options()).await.unwrap();
            let packets = read_packets(
                &session,
                &[
                    |p| p[0] >> 4 == 4 && p[9] == 1,
                    // ICMPv6 echo request (next header 58, type 128).
                    |p| p[0] >> 4 == 6 && p[6] == 58 && p[40] == 128,
                ],
            )
            .await;
            assert_eq!(&packets[0][12..16], &[10, 244, 1, 7]);
            assert_eq!(&packets[0][16..20], &[192, 0, 2, 1]);
            assert_eq!(
                &packets[1][8..24],
                &"fd00::1:7".parse::<std::net::Ipv6Addr>().unwrap().octets()
            );
            session.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
            assert_eq!(session.wait().await, 137);
        });
        return;
    }
    let scratch = Scratch::new("rootless", "ping");
    run_unprivileged(
        "rootless_pings_of_the_user_leave_through_the_clients_tun",
        &scratch,
        STOCK,
    );
}

#[test]
fn rootless_connections_to_localhost_leave_through_the_tun_for_the_target() {
    if in_unprivileged_copy().is_some() {
        block_on(async {
            let mut spec = spec("", Path::new("/dev/null"));
            spec.command = vec![
                "sh".into(),
                "-c".into(),
                "curl -s -m 3 http://127.0.0.5:8085/ & curl -s -g -m 3 'http://[::1]:8086/' & wait"
                    .into(),
            ];
            let options = SessionOptions {
                target_localhost: true,
                ..rootless_options()
            };
            let mut session = Session::start_with(spec, options).await.unwrap();
            let packets = read_packets(
                &session,
                &[
                    // TCP SYNs (protocol 6 / next header 6).
                    |p| p[0] >> 4 == 4 && p[9] == 6,
                    |p| p[0] >> 4 == 6 && p[6] == 6,
                ],
            )
            .await;
            // The loopback destination, rewritten to the address that stands for it; the
            // source is the session's address, never a loopback one.
            assert_eq!(&packets[0][12..16], &[10, 244, 1, 7]);
            assert_eq!(&packets[0][16..20], &[240, 0, 0, 5]);
            assert_eq!(&packets[0][22..24], &8085u16.to_be_bytes());
            assert_eq!(
                &packets[1][8..24],
                &"fd00::1:7".parse::<std::net::Ipv6Addr>().unwrap().octets()
            );
            assert_eq!(
                &packets[1][24..40],
                &mirrord_net_protocol::loopback::LOOPBACK_V6.octets()
            );
            assert_eq!(&packets[1][42..44], &8086u16.to_be_bytes());
            session.signal(nix::sys::signal::Signal::SIGKILL).unwrap();
            assert_eq!(session.wait().await, 137);
        });
        return;
    }
    let scratch = Scratch::new("rootless", "localhost");
    run_unprivileged(
        "rootless_connections_to_localhost_leave_through_the_tun_for_the_target",
        &scratch,
        STOCK,
    );
}

/// The outgoing filter without root: the session's user namespace owns its network
/// namespace, so the child writes the redirects and opens the relay's sockets itself, and
/// the client (the user) serves them from the host's namespaces. A server on this machine's
/// loopback, started by root, answers TCP and UDP from the session.
#[test]
fn rootless_local_destinations_leave_from_the_host() {
    if let Some(scratch) = in_unprivileged_copy() {
        let port: u16 = std::fs::read_to_string(scratch.join("port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let options = SessionOptions {
            outgoing: Some(OutgoingRules {
                mode: FilterMode::Local,
                listed: vec![Destination::new(
                    "127.0.0.1".parse().unwrap(),
                    32,
                    Some(port),
                    true,
                    true,
                )],
                exempt: Vec::new(),
            }),
            ..rootless_options()
        };
        let (code, output) = block_on(run_script(
            &scratch,
            &format!(
                "curl -sS -m 5 http://127.0.0.1:{port}/ && \
                 echo dgram | socat -t 2 - UDP4:127.0.0.1:{port}"
            ),
            options,
            None,
        ));
        assert_eq!(code, 0, "{output}");
        assert_eq!(
            output,
            format!("host 127.0.0.1 {port}\nhost 127.0.0.1 dgram\n"),
            "{output}"
        );
        return;
    }
    /// The server, killed however the test ends.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let scratch = Scratch::new("rootless", "outgoing");
    let mut server = Server(
        Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../tests/scripts/host_servers.py"
            ))
            .args(["127.0.0.1", "host"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs"),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port = line.split_whitespace().nth(1).expect("listening PORT");
    std::fs::write(scratch.path("port"), port).unwrap();
    let links = host_links();
    run_unprivileged(
        "rootless_local_destinations_leave_from_the_host",
        &scratch,
        STOCK,
    );
    drop(server);
    assert_eq!(host_links(), links, "no interface left on the host");
}

/// What this machine's resolver (a dnsmasq of the test's) answers for the one name the filter
/// keeps local.
const HOST_NAME: &str = "db.host.test";
const HOST_NAME_ADDR: &str = "192.0.2.91";

#[test]
fn rootless_dns_filter_sends_listed_names_to_the_hosts_resolver() {
    if let Some(scratch) = in_unprivileged_copy() {
        let options = SessionOptions {
            dns: Some(DnsRules {
                mode: DnsMode::Local,
                patterns: vec![NamePattern::parse("*.host.test").unwrap()],
            }),
            ..rootless_options()
        };
        let out = scratch.join("out");
        // The target's resolver gets no answer here (no agent reads the TUN): one try.
        let spec = SessionSpec {
            resolv_conf: Some(b"nameserver 10.96.0.10\noptions timeout:1 attempts:1\n".to_vec()),
            ..spec(
                &format!(
                    "getent ahostsv4 {HOST_NAME} | head -n 1; \
                     getent ahostsv4 api.target.test; echo rc=$?"
                ),
                &out,
            )
        };
        let code = block_on(async {
            let mut session = Session::start_with(spec, options)
                .await
                .expect("the rootless session starts");
            session.wait().await
        });
        let output = std::fs::read_to_string(&out).unwrap_or_default();
        assert_eq!(code, 0, "{output}");
        let lines: Vec<String> = output
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        assert_eq!(
            lines,
            [
                format!("{HOST_NAME_ADDR} STREAM {HOST_NAME}"),
                "rc=2".into()
            ],
            "{output}"
        );
        return;
    }
    /// dnsmasq, killed however the test ends.
    struct Dnsmasq(std::process::Child);
    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let scratch = Scratch::new("rootless", "dns");
    let pid = std::process::id();
    let addr = format!("127.53.{}.{}", (pid >> 8) & 0xff, (pid & 0xff).max(1));
    let log = std::fs::File::create(scratch.path("dnsmasq.log")).unwrap();
    let mut server = Dnsmasq(
        Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--log-facility=-",
                "--log-queries",
                "--pid-file=",
                "--port=53",
                "--local=/test/",
            ])
            .arg(format!("--listen-address={addr}"))
            .arg(format!("--host-record={HOST_NAME},{HOST_NAME_ADDR}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dnsmasq runs (Debian package dnsmasq-base)"),
    );
    // Up when it answers.
    let deadline = Instant::now() + Duration::from_secs(20);
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    probe
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // A query for HOST_NAME, type A, id 0x4242.
    let mut query = vec![0x42, 0x42, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in HOST_NAME.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    loop {
        let _ = probe.send_to(&query, format!("{addr}:53"));
        let mut answer = [0u8; 512];
        if probe.recv(&mut answer).is_ok_and(|len| len > 12) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dnsmasq on {addr} did not answer"
        );
        if let Ok(Some(status)) = server.0.try_wait() {
            panic!(
                "dnsmasq exited ({status}): {}",
                std::fs::read_to_string(scratch.path("dnsmasq.log")).unwrap_or_default()
            );
        }
    }
    std::fs::write(scratch.path("resolv.conf"), format!("nameserver {addr}\n")).unwrap();
    let links = host_links();
    run_unprivileged(
        "rootless_dns_filter_sends_listed_names_to_the_hosts_resolver",
        &scratch,
        Setup {
            host_resolv_conf: true,
            ..STOCK
        },
    );
    drop(server);
    let log = std::fs::read_to_string(scratch.path("dnsmasq.log")).unwrap_or_default();
    // The probe's query and the session's: the listed name reached this machine's resolver,
    // the other never did.
    assert!(
        log.matches(&format!("query[A] {HOST_NAME} from")).count() >= 2,
        "{log}"
    );
    assert!(!log.contains("target.test"), "{log}");
    assert_eq!(host_links(), links, "no interface left on the host");
}
