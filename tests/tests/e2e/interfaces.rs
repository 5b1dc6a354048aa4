//! The pod's interfaces as programs see them: the session's TUN carries the name of the
//! target's interface (`eth0` in the fixture, as in most pods), and sysfs lists the session's
//! interfaces, as netlink and `/proc/net` do, not the host's.

use mirrord_net_tests::go::go_program;
use mirrord_net_tests::topology::*;
use mirrord_net_tests::{sh, tool, Invocation, Pod};

#[test]
fn sysfs_lists_the_sessions_interfaces_under_the_targets_names() {
    let pod = Pod::start();
    let script = format!(
        "ls /sys/class/net | tr '\\n' ' '; echo; \
         cat /sys/class/net/eth0/type /sys/class/net/eth0/mtu; \
         {ip} -o link show eth0 | sed -n 's/.* mtu \\([0-9]*\\) .*/\\1/p'; \
         cat /sys/class/net/eth0/operstate",
        ip = tool("ip"),
    );
    let out = Invocation::session(&pod, &sh(&script)).run();
    let lines: Vec<&str> = out.assert_success().lines().collect();
    // Exactly the session's two: the host's (and the pod's) other interfaces are not listed.
    assert_eq!(lines[0], "eth0 lo ", "{out}");
    // The TUN (ARPHRD_NONE), not the host's or the pod's Ethernet `eth0` (type 1).
    assert_eq!(lines[1], "65534", "{out}");
    // sysfs and netlink describe one device.
    assert_eq!(lines[2], lines[3], "{out}");
    assert_eq!(lines.len(), 5, "{out}");
}

#[test]
fn a_go_program_finds_the_targets_address_on_the_targets_interface_name() {
    let pod = Pod::start();
    let program = go_program("interface_by_name", pod.dir());
    let out = Invocation::session(&pod, &[&program, "eth0"]).run();
    let output = out.assert_success();
    let mut lines = output.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("eth0 mtu=") && first.ends_with(" up=true"),
        "{out}"
    );
    let addresses: Vec<&str> = lines.collect();
    assert!(
        addresses.contains(&format!("{POD_V4}/32").as_str()),
        "{out}"
    );
    assert!(
        addresses.contains(&format!("{POD_V6}/128").as_str()),
        "{out}"
    );

    // The same program in the pod itself finds the same addresses on its `eth0`.
    let direct = Invocation::in_pod(&pod, &[&program, "eth0"]).run();
    let direct = direct.assert_success();
    assert!(
        direct.contains(&format!("{POD_V4}/{PREFIX_V4}")),
        "{direct}"
    );
}
