//! hold_echo.py: the far end of the many-connections test.

use anyhow::Result;
use nix::sys::signal::Signal;

use super::addresses::both_families;
use crate::netns::Netns;
use crate::probe;
use crate::process::Supervised;
use crate::testdir::TestDir;
use crate::tools::tool;
use crate::topology::HOLD_ECHO_PORT;

pub fn spawn(ns: &Netns, dir: &TestDir) -> Result<Supervised> {
    let mut command = ns.command(&tool("python3"))?;
    command
        .arg(dir.join("hold_echo.py"))
        .arg(HOLD_ECHO_PORT.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Supervised::spawn(
        "hold-echo",
        command,
        &dir.join("hold-echo.log"),
        Signal::SIGTERM,
    )
}

pub fn wait_ready(ns: &Netns) -> Result<()> {
    for addr in both_families(HOLD_ECHO_PORT) {
        probe::until_ready(ns, "hold-echo", probe::READY_TIMEOUT, || {
            probe::tcp_answers(addr, b"ready?\n", b"ready?\n")
        })?;
    }
    Ok(())
}
