//! The target: the process a session impersonates.
//!
//! It stands in for a pod's container: a `sleep` in the pod's network namespace with its own
//! mount namespace, where /etc/resolv.conf and /etc/hosts are bind-mounted from the pod's
//! directory and /sys is the pod namespace's, and its own UTS namespace with the hostname
//! `pod-<id>`. None of this is visible from the host: the files differ only inside the
//! target's mount namespace (propagation is private), so a session that shows them must have
//! taken them from the target.
//!
//! The target's environment is the fixture's (PATH and LANG), plus what the test asks for; the script names every
//! program by its absolute path, so a test may give the target a PATH of its own.
//!
//! `unshare` and `sh` both exec rather than fork, so the spawned PID ends up being the
//! `sleep`: it is ready when its comm says so, which only happens if every mount succeeded.

use std::ffi::OsString;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use crate::netns::Netns;
use crate::process::Supervised;
use crate::procfs;
use crate::testdir::TestDir;
use crate::tools::tool;

#[derive(Debug)]
pub struct Target {
    process: Supervised,
}

impl Target {
    /// Starts the target in `ns` with the given files, hostname and extra environment, and
    /// waits until it is set up.
    pub fn start(
        ns: &Netns,
        dir: &TestDir,
        resolv_conf: &Path,
        hosts: &Path,
        hostname: &str,
        env: &[(OsString, OsString)],
    ) -> Result<Target> {
        let script = format!(
            "set -e\n\
             '{mount}' --bind '{resolv}' /etc/resolv.conf\n\
             '{mount}' --bind '{hosts}' /etc/hosts\n\
             '{mount}' -t sysfs sysfs /sys\n\
             echo '{hostname}' > /proc/sys/kernel/hostname\n\
             exec '{sleep}' infinity\n",
            mount = tool("mount"),
            sleep = tool("sleep"),
            resolv = resolv_conf.display(),
            hosts = hosts.display(),
        );
        let mut command = ns.command(&tool("unshare"))?;
        command
            .args(["--mount", "--uts", "--propagation", "private", "--"])
            .args([&tool("sh"), "-c", &script])
            .envs(env.iter().map(|(name, value)| (name, value)));
        let mut process =
            Supervised::spawn("target", command, &dir.join("target.log"), Signal::SIGKILL)?;
        let pid = process.pid();
        let deadline = Instant::now() + Duration::from_secs(10);
        while procfs::stat(pid).map(|proc| proc.comm).as_deref() != Some("sleep") {
            process.ensure_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "target {pid} did not finish its setup in 10 s: {}",
                    process.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let seen = fs::read_to_string(format!("/proc/{pid}/root/etc/resolv.conf"))?;
        if seen != fs::read_to_string(resolv_conf)? {
            bail!("target {pid} does not see its resolv.conf: {seen:?}");
        }
        if procfs::ns_of(pid, "mnt") == procfs::ns_of(std::process::id() as i32, "mnt") {
            bail!("target {pid} shares the host's mount namespace");
        }
        Ok(Target { process })
    }

    pub fn pid(&self) -> i32 {
        self.process.pid()
    }

    pub fn process(&self) -> &Supervised {
        &self.process
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }
}
