//! dnsmasq as the pod's DNS server.
//!
//! It knows only the records in [`DNS_RECORDS`] and
//! [`MANY_ADDRESSES_FQDN`](crate::topology::MANY_ADDRESSES_FQDN)'s (from a hosts
//! file of the pod's directory), and is authoritative for `cluster.local`
//! (unknown names there are NXDOMAIN, so a search-list walk moves on at once), reads no
//! /etc/resolv.conf, /etc/hosts or /etc/dnsmasq.conf of the host, and listens only on the
//! services addresses.

use anyhow::Result;
use nix::sys::signal::Signal;

use super::addresses::both_families;
use crate::netns::Netns;
use crate::probe;
use crate::process::Supervised;
use crate::testdir::TestDir;
use crate::tools::tool;
use crate::topology::{
    many_addresses_hosts, DNS_PORT, DNS_RECORDS, SERVICES_V4, SERVICES_V6, WEB_FQDN,
};

/// dnsmasq's arguments for a server that knows only the records it is given: no host
/// configuration read, in the foreground, queries logged to stderr, bound to the addresses
/// given with `--listen-address` alone.
pub const DNSMASQ_ALONE: &[&str] = &[
    "--keep-in-foreground",
    "--conf-file=/dev/null",
    "--no-resolv",
    "--no-hosts",
    "--bind-interfaces",
    "--log-facility=-",
    "--log-queries",
    "--user=nobody",
    "--group=nogroup",
];

pub fn spawn(ns: &Netns, dir: &TestDir) -> Result<Supervised> {
    let mut command = ns.command(&tool("dnsmasq"))?;
    command.args(DNSMASQ_ALONE).arg("--local=/cluster.local/");
    command.arg(format!("--port={DNS_PORT}"));
    command.arg(format!("--listen-address={SERVICES_V4}"));
    command.arg(format!("--listen-address={SERVICES_V6}"));
    command.arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()));
    command.arg(format!(
        "--dhcp-leasefile={}",
        dir.join("dnsmasq.leases").display()
    ));
    let many = dir.write(
        "many-addresses.hosts",
        many_addresses_hosts().as_bytes(),
        0o644,
    )?;
    command.arg(format!("--addn-hosts={}", many.display()));
    for (name, a, aaaa) in DNS_RECORDS {
        let mut record = format!("--host-record={name}");
        if *a {
            record.push_str(&format!(",{SERVICES_V4}"));
        }
        if *aaaa {
            record.push_str(&format!(",{SERVICES_V6}"));
        }
        command.arg(record);
    }
    Supervised::spawn(
        "dnsmasq",
        command,
        &dir.join("dnsmasq.log"),
        Signal::SIGTERM,
    )
}

pub fn wait_ready(ns: &Netns) -> Result<()> {
    for addr in both_families(DNS_PORT) {
        probe::until_ready(ns, "dnsmasq", probe::READY_TIMEOUT, || {
            probe::dns_answers(addr, WEB_FQDN)
        })?;
    }
    Ok(())
}
