//! socat as a UDP echo: one dual-stack socket; each datagram is answered, to its sender, by
//! a child that echoes it.

use anyhow::Result;
use nix::sys::signal::Signal;

use super::addresses::both_families;
use crate::netns::Netns;
use crate::probe;
use crate::process::Supervised;
use crate::testdir::TestDir;
use crate::tools::tool;
use crate::topology::UDP_ECHO_PORT;

pub fn spawn(ns: &Netns, dir: &TestDir) -> Result<Supervised> {
    let mut command = ns.command(&tool("socat"))?;
    command.args([
        "-T",
        "5",
        &format!("UDP6-RECVFROM:{UDP_ECHO_PORT},ipv6only=0,reuseaddr,fork"),
        "PIPE",
    ]);
    Supervised::spawn(
        "udp-echo",
        command,
        &dir.join("udp-echo.log"),
        Signal::SIGTERM,
    )
}

pub fn wait_ready(ns: &Netns) -> Result<()> {
    for addr in both_families(UDP_ECHO_PORT) {
        probe::until_ready(ns, "udp-echo", probe::READY_TIMEOUT, || {
            probe::udp_echoes(addr)
        })?;
    }
    Ok(())
}
