//! The target's files: unmodified programs read the target's own mounts through a session,
//! at the paths the target sees them, with the target's stat fields and errnos; write mode
//! changes the target, read mode refuses; nothing is left mounted after the session.

use std::time::{Duration, Instant};

use mirrord_net_tests::target_files::{TargetFiles, CONFIG, TOKEN, TREE_FILES, TREE_LINKS};
use mirrord_net_tests::{bash, procfs, sh, Invocation, Pod};
use nix::sys::signal::Signal;

fn pod_with_files(big_file: bool) -> (Pod, TargetFiles) {
    let pod = Pod::start();
    let files = TargetFiles::install(&pod, big_file).expect("target files");
    (pod, files)
}

#[test]
fn unmodified_programs_read_the_targets_own_mounts_at_the_targets_paths() {
    let (pod, files) = pod_with_files(false);
    let config = files.path("config.yaml");
    let token = files.secrets.join("token").display().to_string();
    let script = format!(
        "set -e\n\
         cat '{config}'\n\
         busybox cat '{token}'\n\
         python3 -c 'import sys; print(open(sys.argv[1]).read(), end=\"\")' '{config}'\n\
         cat \"$MIRRORD_NET_REMOTE_ROOT{config}\"\n"
    );
    let out = Invocation::session(&pod, &sh(&script)).run();
    assert_eq!(
        out.assert_success(),
        format!("{CONFIG}{TOKEN}{CONFIG}{CONFIG}"),
        "{out}"
    );
}

#[test]
fn find_counts_and_symlinks_match_the_target() {
    let (pod, files) = pod_with_files(false);
    let tree = files.path("tree");
    let script = format!(
        "find '{tree}' -type f | wc -l; find '{tree}' -type l | wc -l; \
         cat '{tree}/links/rel3' '{tree}/links/abs3'; \
         cat \"$MIRRORD_NET_REMOTE_ROOT{tree}/links/abs4\" 2>&1 || true"
    );
    let direct = Invocation::in_pod(&pod, &sh(&script)).run();
    let session = Invocation::session(&pod, &sh(&script)).run();
    let direct_out = direct.assert_success();
    // Direct, $MIRRORD_NET_REMOTE_ROOT does not exist: compare the common part.
    let expected_counts = format!("{TREE_FILES}\n{}\n", TREE_LINKS);
    assert!(direct_out.starts_with(&expected_counts), "{direct}");
    let session_out = session.assert_success();
    assert!(session_out.starts_with(&expected_counts), "{session}");
    assert!(
        session_out.contains("file 3/0\nfile 3/1\nfile 4/1\n"),
        "relative and absolute links resolve inside the remote root:\n{session}"
    );
}

#[test]
fn stat_fields_are_the_targets() {
    let (pod, files) = pod_with_files(false);
    let paths = [
        files.path("config.yaml"),
        files.path("tree/d7"),
        files.path("tree/links/abs1"),
        files.secrets.join("token").display().to_string(),
    ];
    // Everything but the inode and device numbers, which are the session's own.
    let script = format!(
        "stat -c '%n %F %s %b %a %u %g %h %X %Y %Z' {}",
        paths.map(|p| format!("'{p}'")).join(" ")
    );
    let direct = Invocation::in_pod(&pod, &sh(&script)).run();
    let session = Invocation::session(&pod, &sh(&script)).run();
    assert_eq!(
        session.assert_success(),
        direct.assert_success(),
        "{session}"
    );
}

#[test]
fn errors_reach_programs_as_errnos() {
    let (pod, files) = pod_with_files(false);
    let config = files.path("config.yaml");
    let tree = files.path("tree");
    let script = format!(
        "import errno, sys\n\
         for path in ['{tree}/missing', '{tree}/d1', '{config}/x']:\n\
         \x20   try:\n\
         \x20       open(path).read()\n\
         \x20   except OSError as e:\n\
         \x20       print(errno.errorcode[e.errno])\n"
    );
    let out = Invocation::session(&pod, &["python3", "-c", &script]).run();
    assert_eq!(out.assert_success(), "ENOENT\nEISDIR\nENOTDIR\n", "{out}");
    let out = Invocation::session(&pod, &sh(&format!("cat '{tree}/d1' 2>&1; true"))).run();
    assert!(out.assert_success().contains("Is a directory"), "{out}");
    // The secret is the target's 0400 root file: another user is refused by the kernel.
    let token = files.secrets.join("token").display().to_string();
    let out = Invocation::session(&pod, &["cat", &token])
        .as_user(65534, 65534)
        .run();
    assert!(out.stderr.contains("Permission denied"), "{out}");
}

#[test]
fn read_mode_refuses_writes_with_erofs_and_leaves_the_target_unchanged() {
    let (pod, files) = pod_with_files(false);
    let config = files.path("config.yaml");
    let script = format!(
        "import errno\n\
         for action in [lambda: open('{config}', 'w'), lambda: open('{config}.new', 'w')]:\n\
         \x20   try:\n\
         \x20       action()\n\
         \x20   except OSError as e:\n\
         \x20       print(errno.errorcode[e.errno])\n"
    );
    let out = Invocation::session(&pod, &["python3", "-c", &script]).run();
    assert_eq!(out.assert_success(), "EROFS\nEROFS\n", "{out}");
    let direct = Invocation::in_pod(
        &pod,
        &sh(&format!("cat '{config}'; ls '{config}.new' 2>&1")),
    )
    .run();
    assert_eq!(
        direct.stdout,
        format!("{CONFIG}ls: cannot access '{config}.new': No such file or directory\n"),
        "{direct}"
    );
}

#[test]
fn write_mode_creates_and_renames_a_file_that_the_target_sees() {
    let (pod, files) = pod_with_files(false);
    let dir = files.path("");
    let script = format!(
        "set -e; cd '{dir}'; echo written-in-session > draft; mv draft final; \
         chmod 600 final; cat final"
    );
    let out = Invocation::session(&pod, &sh(&script))
        .client_flag("--fs-mode")
        .client_flag("write")
        .run();
    assert_eq!(out.assert_success(), "written-in-session\n", "{out}");
    let direct = Invocation::in_pod(
        &pod,
        &sh(&format!("cat '{dir}/final'; stat -c %a '{dir}/final'; ls '{dir}/draft' 2>/dev/null || echo gone")),
    )
    .run();
    assert_eq!(
        direct.assert_success(),
        "written-in-session\n600\ngone\n",
        "{direct}"
    );
}

#[test]
fn fs_mode_off_gives_no_remote_root() {
    let (pod, files) = pod_with_files(false);
    let script = format!(
        "echo \"root=${{MIRRORD_NET_REMOTE_ROOT:-none}}\"; grep -c fuse.mirrord-net /proc/self/mountinfo; \
         ls -A '{}' | wc -l",
        files.data.display()
    );
    let out = Invocation::session(&pod, &sh(&script))
        .client_flag("--fs-mode")
        .client_flag("off")
        .run();
    // grep -c prints 0 and exits 1; the local, empty mount point shows nothing.
    assert_eq!(out.stdout, "root=none\n0\n0\n", "{out}");
}

#[test]
fn fs_local_keeps_a_target_mount_local() {
    let (pod, files) = pod_with_files(false);
    let data = files.data.display().to_string();
    let out = Invocation::session(
        &pod,
        &sh(&format!(
            "ls -A '{data}' | wc -l; cat '{}'",
            files.secrets.join("token").display()
        )),
    )
    .client_flag("--fs-local")
    .client_flag(&data)
    .run();
    assert_eq!(out.assert_success(), format!("0\n{TOKEN}"), "{out}");
}

#[test]
fn the_big_file_reads_back_with_the_targets_digest() {
    let (pod, files) = pod_with_files(true);
    let big = files.path("big.bin");
    let digest = |out: &str| {
        out.split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let direct = Invocation::in_pod(&pod, &["sha256sum", &big])
        .timeout(Duration::from_secs(120))
        .run();
    let session = Invocation::session(&pod, &["sha256sum", &big])
        .timeout(Duration::from_secs(120))
        .run();
    assert_eq!(
        digest(session.assert_success()),
        digest(direct.assert_success()),
        "{session}"
    );
    // Partial reads at an offset, as `dd` does them.
    let script = format!("dd if='{big}' bs=4096 skip=100000 count=3 2>/dev/null | sha256sum");
    let direct = Invocation::in_pod(&pod, &bash(&script)).run();
    let session = Invocation::session(&pod, &bash(&script)).run();
    assert_eq!(session.assert_success(), direct.assert_success());
}

#[test]
fn sigkill_of_the_client_leaves_no_mount_and_no_stuck_reader() {
    let (pod, files) = pod_with_files(false);
    let config = files.path("config.yaml");
    let script = format!(
        "readlink /proc/self/ns/mnt; echo ready; \
         while :; do cat '{config}' > /dev/null; done"
    );
    let mut running = Invocation::session(&pod, &sh(&script)).start();
    assert!(
        running.wait_for_stdout("ready", Duration::from_secs(30)),
        "the session did not start:\n{}\n{}",
        running.stdout_so_far(),
        running.stderr_so_far()
    );
    let mnt = running.stdout_so_far().lines().next().unwrap().to_string();
    assert!(
        processes_in_mount_namespace(&mnt) > 0,
        "the check must see the session"
    );
    running.signal(Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_in_mount_namespace(&mnt) > 0 {
        assert!(
            Instant::now() < deadline,
            "processes of the session's mount namespace {mnt} are left (stuck on FUSE?)"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // With the namespace gone, no process anywhere has this session's mount.
    let leftover = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read_to_string(entry.path().join("mountinfo")).ok())
        .any(|info| {
            info.contains(&files.data.display().to_string()) && info.contains("fuse.mirrord-net")
        });
    assert!(
        !leftover,
        "a session FUSE mount over the pod's paths is still mounted"
    );
}

#[test]
fn a_finished_session_leaves_no_fuse_mount() {
    let (pod, files) = pod_with_files(false);
    let out = Invocation::session(&pod, &sh("readlink /proc/self/ns/mnt")).run();
    let mnt = out.assert_success().trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_in_mount_namespace(&mnt) > 0 {
        assert!(
            Instant::now() < deadline,
            "the session's mount namespace {mnt} outlived it"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = files;
}

/// Processes whose mount namespace is `mnt` (as `readlink /proc/self/ns/mnt` printed it).
fn processes_in_mount_namespace(mnt: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            std::fs::read_link(entry.path().join("ns/mnt"))
                .is_ok_and(|link| link.to_string_lossy() == mnt)
        })
        .count()
}

#[test]
fn a_file_changed_on_the_target_is_seen_within_the_ttl() {
    let (pod, files) = pod_with_files(false);
    let config = files.path("config.yaml");
    let script = format!("cat '{config}'; echo read-once; sleep 2; cat '{config}'");
    let mut running = Invocation::session(&pod, &sh(&script)).start();
    assert!(
        running.wait_for_stdout("read-once", Duration::from_secs(30)),
        "the session did not start:\n{}",
        running.stderr_so_far()
    );
    // Same size, so only the mtime tells the kernel its cached pages are stale.
    let changed = CONFIG.replace("8080", "9090");
    Invocation::in_pod(
        &pod,
        &sh(&format!(
            "printf '{}' > '{config}'",
            changed.replace('\n', "\\n")
        )),
    )
    .run()
    .assert_success();
    let out = running
        .finish(Duration::from_secs(30))
        .expect("session ends");
    assert_eq!(out.stdout, format!("{CONFIG}read-once\n{changed}"), "{out}");
}

/// Names in a directory listing, as `ls -a` prints them, one line.
const LS: &str = "ls -a | tr '\\n' ' '; echo";

#[test]
fn a_listing_shows_the_sessions_own_changes_at_once() {
    let (pod, files) = pod_with_files(false);
    let dir = files.path("tree/d1");
    // Every listing here falls within one TTL of the first, which is cached.
    let script = format!(
        "set -e; cd '{dir}'; mkdir -p fresh; cd fresh; {LS}; touch new; {LS}; \
         mv new renamed; {LS}; mkdir sub; rm renamed; {LS}; rmdir sub; {LS}"
    );
    let out = Invocation::session(&pod, &sh(&script))
        .client_flag("--fs-mode")
        .client_flag("write")
        .run();
    assert_eq!(
        out.assert_success(),
        ". .. \n. .. new \n. .. renamed \n. .. sub \n. .. \n",
        "{out}"
    );
}

#[test]
fn files_created_and_removed_on_the_target_show_in_listings_within_the_ttl() {
    let (pod, files) = pod_with_files(false);
    let dir = files.path("tree/d2");
    let script = format!("cd '{dir}'; ls | wc -l; echo listed; sleep 2; ls | wc -l; ls");
    let mut running = Invocation::session(&pod, &sh(&script)).start();
    assert!(
        running.wait_for_stdout("listed", Duration::from_secs(30)),
        "the session did not start:\n{}",
        running.stderr_so_far()
    );
    let listed = Invocation::in_pod(&pod, &sh(&format!("cd '{dir}'; ls | head -1"))).run();
    let first = listed.assert_success().trim().to_string();
    Invocation::in_pod(
        &pod,
        &sh(&format!(
            "cd '{dir}'; rm '{first}'; echo x > made-by-target"
        )),
    )
    .run()
    .assert_success();
    let out = running
        .finish(Duration::from_secs(30))
        .expect("session ends");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], lines[2], "one created, one removed: {out}");
    assert!(lines.contains(&"made-by-target"), "{out}");
    assert!(
        !lines[3..].contains(&first.as_str()),
        "{first} was removed: {out}"
    );
}

/// Descriptors the pod's agent holds (one per node the session may still name).
fn agent_descriptors(pod: &Pod) -> usize {
    procfs::open_fds(pod.local_agent().expect("the pod's agent runs"))
}

#[test]
fn nodes_of_a_walked_tree_go_back_to_the_agent_once_the_kernel_forgets_them() {
    let (pod, files) = pod_with_files(false);
    let tree = files.path("tree");
    // The session stays (40 s at most, should the test fail) while the test looks.
    let script = format!(
        "echo started; sleep 2; find '{tree}' -printf '%s %m\\n' | wc -l; echo walked; sleep 40"
    );
    let mut running = Invocation::session(&pod, &sh(&script)).start();
    assert!(
        running.wait_for_stdout("started", Duration::from_secs(30)),
        "the session did not start:\n{}",
        running.stderr_so_far()
    );
    let before = agent_descriptors(&pod);
    assert!(
        running.wait_for_stdout("walked", Duration::from_secs(60)),
        "{}",
        running.stderr_so_far()
    );
    let walked = agent_descriptors(&pod);
    assert!(
        walked > before + TREE_FILES / 2,
        "the walk holds the tree's nodes: {before} then {walked}"
    );
    // The kernel forgets the walk's unused dentries and inodes; the cached listings expire.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut now_held = walked;
    while Instant::now() < deadline {
        std::fs::write("/proc/sys/vm/drop_caches", "2").expect("drop caches");
        std::thread::sleep(Duration::from_millis(500));
        now_held = agent_descriptors(&pod);
        if now_held <= before + 20 {
            break;
        }
    }
    assert!(
        now_held <= before + 20,
        "the agent still holds {now_held} descriptors (before the walk: {before}, after: {walked})"
    );
    // Ends the session (its whole process group) now.
    let _ = running.finish(Duration::ZERO);
}
