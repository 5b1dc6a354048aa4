//! httpd.py, the web service (see its docstring for the routes).

use anyhow::Result;
use nix::sys::signal::Signal;

use super::addresses::both_families;
use crate::netns::Netns;
use crate::probe;
use crate::process::Supervised;
use crate::testdir::TestDir;
use crate::tools::tool;
use crate::topology::HTTP_PORT;

pub fn spawn(ns: &Netns, dir: &TestDir) -> Result<Supervised> {
    let mut command = ns.command(&tool("python3"))?;
    command
        .arg(dir.join("httpd.py"))
        .arg(dir.path())
        .arg(HTTP_PORT.to_string())
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Supervised::spawn("httpd", command, &dir.join("httpd.log"), Signal::SIGTERM)
}

pub fn wait_ready(ns: &Netns) -> Result<()> {
    for addr in both_families(HTTP_PORT) {
        probe::until_ready(ns, "httpd", probe::READY_TIMEOUT, || probe::http_ok(addr))?;
    }
    Ok(())
}
