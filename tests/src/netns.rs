//! Named network namespaces (`ip netns`), and running code or programs inside one.
//!
//! A [`Netns`] owns its name under /run/netns: dropping it kills whatever still runs inside
//! (a server that ignored its stop signal, an agent a broken session left behind) and deletes
//! the name, so the namespace itself dies with its last process.
//!
//! Programs enter a namespace with `setns` between fork and exec ([`Netns::command`]), not
//! through `ip netns exec`: the spawned PID is then the program itself, and it can drop to
//! another user after entering (`ip netns exec` must run as root to the end).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;

use anyhow::{bail, Context, Result};

use crate::procfs::{self, NsId};
use crate::tools::{tool, SYSTEM_PATH};
use crate::topology::{GUARD_V4, GUARD_V6};

#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        run_ip(&["netns", "add", name], None).with_context(|| format!("creating netns {name}"))?;
        Ok(Netns {
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// The namespace's identity, as processes inside it show it in /proc/PID/ns/net.
    pub fn id(&self) -> Result<NsId> {
        let meta = self
            .path()
            .metadata()
            .with_context(|| format!("netns {} is gone", self.name))?;
        Ok(format!("net:[{}]", meta.ino()))
    }

    /// Runs `ip` commands (one per line, `ip -batch` syntax) inside the namespace.
    pub fn ip_batch(&self, commands: &str) -> Result<()> {
        run_ip(&["-n", &self.name, "-batch", "-"], Some(commands))
            .with_context(|| format!("configuring netns {}:\n{commands}", self.name))
    }

    /// A command that runs `program` inside this namespace (and nothing else changed).
    pub fn command(&self, program: &str) -> Result<Command> {
        self.command_as(program, None)
    }

    /// A command that runs `program` inside this namespace as `uid:gid` (with no
    /// supplementary groups) when `user` is given.
    pub fn command_as(&self, program: &str, user: Option<(u32, u32)>) -> Result<Command> {
        let ns = File::open(self.path()).with_context(|| format!("opening netns {}", self.name))?;
        let mut command = Command::new(program);
        command
            .env_clear()
            .env("PATH", SYSTEM_PATH)
            .env("LANG", "C.UTF-8");
        // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
        // system calls on values prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((uid, gid)) = user {
                    drop_to(uid, gid)?;
                }
                Ok(())
            });
        }
        Ok(command)
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets `f` opens live in it.
    /// The calling thread is left where it was.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let ns = File::open(self.path()).with_context(|| format!("opening netns {}", self.name))?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("setns into the netns")?;
                    Ok(f())
                })
                .join()
                .map_err(|_| anyhow::anyhow!("thread in netns panicked"))?
        })
    }

    /// Interface names in the namespace.
    pub fn links(&self) -> Result<Vec<String>> {
        let output = Command::new(tool("ip"))
            .args(["-n", &self.name, "-o", "link", "show"])
            .output()?;
        if !output.status.success() {
            bail!(
                "ip link show in {}: {}",
                self.name,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split(": ").nth(1))
            .map(|name| name.split('@').next().unwrap_or(name).to_string())
            .collect())
    }
}

/// Joins `a` and `b` with a veth pair, `a_if` in `a` and `b_if` in `b`. Both ends are
/// created directly in their namespaces: the host namespace never sees them, so parallel pods
/// can reuse the same interface names.
pub fn veth_pair(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    run_ip(
        &[
            "link", "add", "name", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if,
            "netns", &b.name,
        ],
        None,
    )
    .with_context(|| format!("creating veth {}:{a_if} <-> {}:{b_if}", a.name, b.name))
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

pub fn path_of(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

/// Kills every process inside the named namespace, then deletes the name. Used for our own
/// namespaces and for stale ones found by [`crate::sweep`].
pub fn remove(name: &str) {
    let path = path_of(name);
    if let Ok(meta) = path.metadata() {
        let id = format!("net:[{}]", meta.ino());
        for pid in procfs::processes_in("net", &id) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    if path.exists() {
        let _ = run_ip(&["netns", "delete", name], None);
    }
}

/// Switches the calling (forked, single-threaded) process to `uid:gid` with no
/// supplementary groups.
pub(crate) fn drop_to(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: plain system calls on integers.
    unsafe {
        let groups = [gid];
        if libc::setgroups(1, groups.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Blackholes the test ranges in the host namespace, once per test process. Pods never need
/// these routes (they use their own namespaces); the routes only make sure that a session
/// which did not leave the host cannot send test traffic to whatever the host's default
/// route leads to. `replace` is idempotent, so parallel test processes do not race.
pub fn guard_host_routes() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for (family, prefix) in [("-4", GUARD_V4), ("-6", GUARD_V6)] {
            if let Err(err) = run_ip(&[family, "route", "replace", "blackhole", prefix], None) {
                panic!("could not blackhole {prefix} in the host namespace: {err:#}");
            }
        }
    });
}

fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<()> {
    let mut child = Command::new(tool("ip"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning ip")?;
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
