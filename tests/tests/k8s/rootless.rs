//! A rootless client: an unprivileged user (nobody) with only the documented RBAC Role runs a
//! session on a pod. Its namespaces, TUN and FUSE mount are made inside a user namespace of
//! its own; its command runs with its own uid and reaches the cluster's Service. Only the
//! Service and the pod itself go through the target (`--remote SERVICE-IP --remote app`: the
//! pod's name, which the agent resolves from the pod's own hosts file; the test cluster has
//! no DNS server).
//!
//! This machine's /dev/net/tun and /dev/fuse are mode 0600 (stock Debian udev makes them
//! 0666, which a rootless client needs): the client runs in a private mount namespace where
//! 0666 nodes of the same two devices are bound over the real ones, and the machine's device
//! modes are left alone.

use std::process::Command;
use std::time::Duration;

use mirrord_net_tests::exec;
use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::tools::{tool, SYSTEM_PATH};

use crate::access::{service_account_kubeconfig, DOCUMENTED_RBAC};
use crate::app_and_web;

/// `nobody` on Debian.
const NOBODY: u32 = 65534;

#[test]
fn an_unprivileged_user_runs_a_session_on_a_pod() {
    let (ns, service_ip, _) = app_and_web("rootless");
    ns.apply(DOCUMENTED_RBAC);
    let kubeconfig = service_account_kubeconfig(&ns, "developer", "mirrord-net");
    let client = client_binary();
    let session = format!(
        "{client} exec --target pod/app -n {ns} --quiet --remote {service_ip} --remote app -- sh -c \
         'id -u; hostname; printenv GREETING; curl -sS --max-time 10 http://{service_ip}/; \
         printenv MIRRORD_NET_REMOTE_ROOT; echo $(ls /sys/class/net)'",
        client = client.display(),
        ns = ns.name(),
    );
    // `mirrord-net env` names the remote root this user's sessions mount, not root's.
    let env = format!(
        "{client} env --target pod/app -n {ns} --quiet --format dotenv",
        client = client.display(),
        ns = ns.name(),
    );
    let script = format!(
        "set -e
         dir=$(mktemp -d)
         mount -t tmpfs -o mode=0755 devices \"$dir\"
         mknod -m 0666 \"$dir/tun\" c 10 200
         mknod -m 0666 \"$dir/fuse\" c 10 229
         mount --bind \"$dir/tun\" /dev/net/tun
         mount --bind \"$dir/fuse\" /dev/fuse
         {setpriv} --reuid={NOBODY} --regid={NOBODY} --clear-groups -- {session}
         {setpriv} --reuid={NOBODY} --regid={NOBODY} --clear-groups -- {env} | grep ^MIRRORD_NET_REMOTE_ROOT=",
        setpriv = tool("setpriv"),
    );
    let mut command = Command::new(tool("unshare"));
    command
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("HOME", "/tmp")
        .env("KUBECONFIG", &kubeconfig);
    let out = exec::run(command, Duration::from_secs(90)).unwrap_or_else(|t| panic!("{t}"));
    let _ = std::fs::remove_file(&kubeconfig);
    let lines: Vec<&str> = out.assert_success().lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    assert_eq!(lines[0], NOBODY.to_string(), "the user's own uid:\n{out}");
    assert_eq!(lines[1], "app", "the pod's hostname:\n{out}");
    assert_eq!(
        lines[2], "hello-from-app",
        "the container's environment:\n{out}"
    );
    assert!(lines[3].starts_with("web "), "the Service answered:\n{out}");
    assert_eq!(
        lines[4],
        format!("/tmp/mirrord-net-{NOBODY}/root"),
        "the user's own remote root:\n{out}"
    );
    assert_eq!(
        lines[5], "eth0 lo",
        "the session's interfaces, the TUN named as the pod's:\n{out}"
    );
    let printed = lines[6]
        .trim_start_matches("MIRRORD_NET_REMOTE_ROOT=")
        .trim_matches(|c| c == '"' || c == '\'');
    assert_eq!(printed, lines[4], "`env` agrees with the session:\n{out}");
}
