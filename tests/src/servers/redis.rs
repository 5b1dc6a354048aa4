//! Redis, configured entirely on its command line: no persistence, no protected mode,
//! listening on the services addresses only.

use anyhow::Result;
use nix::sys::signal::Signal;

use super::addresses::both_families;
use crate::netns::Netns;
use crate::probe;
use crate::process::Supervised;
use crate::testdir::TestDir;
use crate::tools::tool;
use crate::topology::{REDIS_PORT, SERVICES_V4, SERVICES_V6};

pub fn spawn(ns: &Netns, dir: &TestDir) -> Result<Supervised> {
    let data = dir.join("redis");
    std::fs::create_dir_all(&data)?;
    let mut command = ns.command(&tool("redis-server"))?;
    command
        .args(["--port", &REDIS_PORT.to_string()])
        .args(["--bind", &SERVICES_V4.to_string(), &SERVICES_V6.to_string()])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .args(["--daemonize", "no", "--logfile", "", "--databases", "1"])
        .arg("--dir")
        .arg(&data);
    Supervised::spawn("redis", command, &dir.join("redis.log"), Signal::SIGTERM)
}

pub fn wait_ready(ns: &Netns) -> Result<()> {
    for addr in both_families(REDIS_PORT) {
        probe::until_ready(ns, "redis", probe::READY_TIMEOUT, || {
            probe::tcp_answers(addr, b"PING\r\n", b"+PONG")
        })?;
    }
    Ok(())
}
