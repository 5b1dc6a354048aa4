//! PostgreSQL: a fresh cluster per pod, run as the `postgres` user (it refuses root).
//!
//! initdb makes the cluster in the pod's directory with durability off (nothing here must
//! survive a crash); the server listens on the services addresses only and trusts the test
//! subnets, and keeps its Unix socket in the data directory so it never touches
//! /var/run/postgresql. SIGINT is its fast shutdown: connections are cut, shared memory is
//! released.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};
use nix::sys::signal::Signal;
use nix::unistd::{chown, User};

use super::addresses::both_families;
use crate::netns::{drop_to, Netns};
use crate::probe;
use crate::process::Supervised;
use crate::testdir::TestDir;
use crate::tools::{postgres_bin_dir, SYSTEM_PATH};
use crate::topology::{GUARD_V4, GUARD_V6, POSTGRES_PORT, SERVICES_V4, SERVICES_V6};

pub fn spawn(ns: &Netns, dir: &TestDir) -> Result<Supervised> {
    let bin = postgres_bin_dir();
    let user = User::from_name("postgres")?
        .context("no `postgres` user: run scripts/install-test-deps.sh")?;
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    let data = dir.join("postgres");
    fs::create_dir(&data)?;
    chown(&data, Some(user.uid), Some(user.gid))?;

    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .env_clear()
        .env("PATH", SYSTEM_PATH)
        .env("LANG", "C.UTF-8")
        .args([
            "--auth=trust",
            "--no-sync",
            "--no-instructions",
            "--encoding=UTF8",
            "--locale=C",
        ])
        .args(["--username=postgres", "--pgdata"])
        .arg(&data);
    // SAFETY: drop_to makes only async-signal-safe system calls.
    unsafe {
        initdb.pre_exec(move || drop_to(uid, gid));
    }
    let output = initdb.output().context("running initdb")?;
    if !output.status.success() {
        bail!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut hba = OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))?;
    writeln!(hba, "host all all {GUARD_V4} trust")?;
    writeln!(hba, "host all all {GUARD_V6} trust")?;

    let mut command = ns.command_as(&bin.join("postgres").to_string_lossy(), Some((uid, gid)))?;
    command
        .arg("-D")
        .arg(&data)
        .args([
            "-c",
            &format!("listen_addresses={SERVICES_V4},{SERVICES_V6}"),
        ])
        .args(["-c", &format!("port={POSTGRES_PORT}")])
        .args(["-c", &format!("unix_socket_directories={}", data.display())])
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .args(["-c", "shared_buffers=16MB", "-c", "max_connections=20"]);
    Supervised::spawn(
        "postgres",
        command,
        &dir.join("postgres.log"),
        Signal::SIGINT,
    )
}

pub fn wait_ready(ns: &Netns, dir: &TestDir) -> Result<()> {
    // The server listens before it accepts queries; postmaster.pid says "ready" when it does.
    let pid_file = dir.join("postgres").join("postmaster.pid");
    probe::until_ready(ns, "postgres", probe::READY_TIMEOUT, || {
        let text = fs::read_to_string(&pid_file).unwrap_or_default();
        if text.lines().nth(7).map(str::trim) != Some("ready") {
            bail!("postmaster.pid does not say ready yet");
        }
        Ok(())
    })?;
    for addr in both_families(POSTGRES_PORT) {
        probe::until_ready(ns, "postgres", probe::READY_TIMEOUT, || {
            probe::tcp_accepts(addr)
        })?;
    }
    Ok(())
}
