//! The servers a pod can run in its services namespace, each a real process.
//!
//! Starting is split in two so a pod can launch all of its servers at once and only then wait
//! for each to answer: [`Server::spawn`] starts the process, [`Server::wait_ready`] probes it
//! from inside the namespace.

use anyhow::Result;

use crate::netns::Netns;
use crate::process::Supervised;
use crate::testdir::TestDir;

mod addresses;
mod dns;
mod hold_echo;
mod http;
mod postgres;
mod redis;
mod udp_echo;

pub use dns::DNSMASQ_ALONE;

/// Python helpers the servers and the tests' clients run, written into each pod's directory.
pub const SCRIPTS: &[(&str, &str)] = &[
    ("blob.py", include_str!("../../scripts/blob.py")),
    ("httpd.py", include_str!("../../scripts/httpd.py")),
    ("hold_echo.py", include_str!("../../scripts/hold_echo.py")),
    (
        "many_connections.py",
        include_str!("../../scripts/many_connections.py"),
    ),
    ("udp_sendto.py", include_str!("../../scripts/udp_sendto.py")),
    (
        "tagged_httpd.py",
        include_str!("../../scripts/tagged_httpd.py"),
    ),
    (
        "keepalive_requests.py",
        include_str!("../../scripts/keepalive_requests.py"),
    ),
    ("burst_echo.py", include_str!("../../scripts/burst_echo.py")),
    (
        "held_beyond_cap.py",
        include_str!("../../scripts/held_beyond_cap.py"),
    ),
    ("tagged_h2d.py", include_str!("../../scripts/tagged_h2d.py")),
    (
        "h2_requests.py",
        include_str!("../../scripts/h2_requests.py"),
    ),
    (
        "h2_stream_flood.py",
        include_str!("../../scripts/h2_stream_flood.py"),
    ),
    (
        "logging_httpd.py",
        include_str!("../../scripts/logging_httpd.py"),
    ),
    (
        "mirror_requests.py",
        include_str!("../../scripts/mirror_requests.py"),
    ),
    (
        "loopback_servers.py",
        include_str!("../../scripts/loopback_servers.py"),
    ),
    (
        "host_servers.py",
        include_str!("../../scripts/host_servers.py"),
    ),
    (
        "interactive_shell.py",
        include_str!("../../scripts/interactive_shell.py"),
    ),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// dnsmasq: the pod's resolver, answering the names in [`crate::topology::DNS_RECORDS`].
    Dns,
    /// httpd.py: pages, a bulk stream and an upload sink on port 80.
    Http,
    /// socat: echoes every UDP datagram to its sender.
    UdpEcho,
    /// hold_echo.py: TCP line echo that keeps every connection open.
    HoldEcho,
    /// PostgreSQL, trusting the test network.
    Postgres,
    /// Redis, without persistence.
    Redis,
}

impl Server {
    pub fn name(self) -> &'static str {
        match self {
            Server::Dns => "dnsmasq",
            Server::Http => "httpd",
            Server::UdpEcho => "udp-echo",
            Server::HoldEcho => "hold-echo",
            Server::Postgres => "postgres",
            Server::Redis => "redis",
        }
    }

    /// Starts the server's process in `ns`; its files and log go in `dir`.
    pub fn spawn(self, ns: &Netns, dir: &TestDir) -> Result<Supervised> {
        match self {
            Server::Dns => dns::spawn(ns, dir),
            Server::Http => http::spawn(ns, dir),
            Server::UdpEcho => udp_echo::spawn(ns, dir),
            Server::HoldEcho => hold_echo::spawn(ns, dir),
            Server::Postgres => postgres::spawn(ns, dir),
            Server::Redis => redis::spawn(ns, dir),
        }
    }

    /// Waits until the server answers on every address it serves.
    pub fn wait_ready(self, ns: &Netns, dir: &TestDir) -> Result<()> {
        match self {
            Server::Dns => dns::wait_ready(ns),
            Server::Http => http::wait_ready(ns),
            Server::UdpEcho => udp_echo::wait_ready(ns),
            Server::HoldEcho => hold_echo::wait_ready(ns),
            Server::Postgres => postgres::wait_ready(ns, dir),
            Server::Redis => redis::wait_ready(ns),
        }
    }
}
