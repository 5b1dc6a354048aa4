//! `mirrord-net doctor`: passes where a session starts, and names what is wrong where it
//! cannot — made so in a private mount namespace, the machine's devices left alone.

use std::process::Command;
use std::time::Duration;

use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::tools::{tool, SYSTEM_PATH};
use mirrord_net_tests::{exec, Invocation, Pod};

const TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn passes_for_a_local_target_as_root() {
    let pod = Pod::start();
    let target = format!("pid/{}", pod.target_pid());
    let out = Invocation::client(&["doctor", "--target", &target]).run();
    let stdout = out.assert_success();
    for line in [
        "✓ /dev/net/tun: opens read-write",
        "✓ root: pid/ targets",
        &format!("✓ target {target} exists"),
        "✓ agent binary ",
    ] {
        assert!(stdout.contains(line), "no {line:?}:\n{out}");
    }
    assert!(!stdout.contains('✗'), "{out}");
}

#[test]
fn fails_for_a_missing_local_target() {
    let out = Invocation::client(&["doctor", "--target", "pid/999999999"]).run();
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout.contains("✗ target pid/999999999 does not exist"),
        "{out}"
    );
}

/// Runs `doctor` in a private mount namespace after `setup` (shell commands) ran there, as
/// `user` when given (util-linux setpriv).
fn doctor_in_private_mounts(setup: &str, user: Option<u32>) -> exec::Outcome {
    let scratch = std::env::temp_dir().join(format!("mnet-doctor-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let as_user = match user {
        Some(uid) => format!(
            "{} --reuid={uid} --regid={uid} --clear-groups ",
            tool("setpriv")
        ),
        None => String::new(),
    };
    let script = format!(
        "set -e; cd {scratch}; {setup}; exec {as_user}{client} doctor",
        scratch = scratch.display(),
        client = client_binary().display(),
    );
    let mut command = Command::new(tool("unshare"));
    command
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("HOME", "/nonexistent");
    let out = exec::run(command, TIMEOUT).expect("doctor in time");
    let _ = std::fs::remove_dir_all(&scratch);
    out
}

#[test]
fn names_a_tun_device_that_is_not_one() {
    let out =
        doctor_in_private_mounts("touch not-a-tun; mount --bind not-a-tun /dev/net/tun", None);
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout
            .contains("✗ /dev/net/tun: a regular file, not the device 10:200"),
        "{out}"
    );
}

#[test]
fn names_a_tun_device_this_user_cannot_open() {
    // A private node of the TUN device that only root may open, over the real one.
    let out = doctor_in_private_mounts(
        "mknod -m 0600 tun c 10 200; mount --bind tun /dev/net/tun; \
         mknod -m 0666 fuse c 10 229; mount --bind fuse /dev/fuse; chmod 0755 .",
        Some(65534),
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stdout
            .contains("✗ /dev/net/tun: cannot open (Permission denied"),
        "{out}"
    );
    assert!(out.stdout.contains("chmod 0666 /dev/net/tun"), "{out}");
    assert!(
        out.stdout.contains("✓ /dev/fuse: opens read-write"),
        "{out}"
    );
}
