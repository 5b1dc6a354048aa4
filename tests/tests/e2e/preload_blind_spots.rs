//! Programs an LD_PRELOAD design cannot see into, each on its own: a Go binary with its own
//! resolver and raw syscalls, a program started with an empty environment, and a setuid
//! program (the dynamic loader ignores LD_PRELOAD for it). glibc NSS (`getent`), ICMP
//! (`ping`) and unconnected UDP sockets have their own tests in `dns` and `network`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use mirrord_net_tests::topology::*;
use mirrord_net_tests::{run_in_session, sh, tool, Invocation, Pod};

#[test]
fn go_binary_with_its_own_resolver_fetches_a_pod_only_name() {
    let pod = Pod::start();
    // GODEBUG makes Go use, and say it uses, its own resolver (not glibc through cgo).
    let out = run_in_session(
        &pod,
        &[
            "env",
            "GODEBUG=netdns=go+1",
            &tool("gron"),
            "http://web/data.json",
        ],
    );
    assert!(
        out.assert_success()
            .contains(&format!("json.pod = \"{}\";", pod.id())),
        "{out}"
    );
    assert!(
        out.stderr.contains("Go's resolver"),
        "gron did not use Go's own resolver:\n{out}"
    );
}

#[test]
fn program_under_env_i_reaches_a_pod_only_name() {
    let pod = Pod::start();
    let out = run_in_session(
        &pod,
        &[
            "env",
            "-i",
            &tool("curl"),
            "-sS",
            &format!("http://{WEB_FQDN}/"),
        ],
    );
    assert_eq!(out.assert_success(), pod.index_body(), "{out}");
}

#[test]
fn setuid_program_run_by_an_unprivileged_user_reaches_the_pod() {
    let pod = Pod::start();
    let curl = setuid_root_copy(&pod, &tool("curl"), "suid-curl");
    let id = setuid_root_copy(&pod, &tool("id"), "suid-id");
    // As the user: the session dropped to nobody, the setuid bit still raises the
    // effective uid (as it would outside a session), and the program reaches the pod.
    let script = format!("{id}; {curl} -sS http://web/");
    let out = Invocation::session(&pod, &sh(&script))
        .as_user(65534, 65534)
        .run();
    let mut lines = out.assert_success().splitn(2, '\n');
    let identity = lines.next().unwrap_or_default();
    assert!(
        identity.contains("uid=65534") && identity.contains("euid=0"),
        "{out}"
    );
    assert_eq!(lines.next().unwrap_or_default(), pod.index_body(), "{out}");
}

/// A root-owned, mode 4755 copy of `program` in the pod's directory.
fn setuid_root_copy(pod: &Pod, program: &str, name: &str) -> String {
    let copy = pod.dir().join(name);
    fs::copy(program, &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o4755)).unwrap();
    copy.to_string_lossy().into_owned()
}
