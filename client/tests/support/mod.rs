//! What the session tests (`session.rs`, and `rootless.rs` for sessions without root) share:
//! a scratch directory, the session that runs a shell script, and the host's state a
//! session must leave as it was.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use mirrord_net_session::SessionSpec;

/// The target's addresses in every test session.
pub const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0x1, 0x7);

/// A directory anyone can write to (the session's command may run as another user), removed
/// when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `suite` and `name` make it unique among the tests running at the same time.
    pub fn new(suite: &str, name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "mirrord-net-{suite}-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A session on the test target that runs `script` with `sh -c`, its stdout and stderr going
/// to `out`.
pub fn script_spec(script: &str, out: &Path) -> SessionSpec {
    SessionSpec {
        ipv4: vec![POD_V4],
        ipv6: vec![POD_V6],
        mtu: 1400,
        hostname: "pod-under-test".into(),
        resolv_conf: None,
        hosts: None,
        command: vec![
            "sh".into(),
            "-c".into(),
            format!(
                "PATH=$PATH:/usr/sbin:/sbin; exec >{} 2>&1; {script}",
                out.display()
            )
            .into(),
        ],
        run_as: None,
        env: None,
        env_overrides: Vec::new(),
    }
}

/// The host's mount points, less the network namespaces that tests running at the same time
/// pin under /run/netns (a session never names its namespaces there).
pub fn host_mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|line| line.split(' ').nth(4).unwrap_or_default().to_owned())
        .filter(|point| !point.starts_with("/run/netns/"))
        .collect()
}

/// The host's interfaces, less the end-to-end fixtures' (named `mnet-…`), which tests running
/// at the same time create and remove.
pub fn host_links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip runs on the host");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.contains("mnet-"))
        .map(|line| format!("{line}\n"))
        .collect()
}
