//! The fixed addresses, names and ports of every pod.
//!
//! Each pod lives in its own pair of network namespaces, so all pods can use the same
//! addresses at once. The ranges are reserved for the tests and blackholed in the host
//! namespace (see [`crate::netns::guard_host_routes`]), so a session that fails to leave the
//! host never sends test traffic off this machine.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The services end of the veth: every server listens here.
pub const SERVICES_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
pub const SERVICES_V6: Ipv6Addr = Ipv6Addr::new(0xfd6d, 0x6e65, 0x7400, 0, 0, 0, 0, 1);
/// The pod end of the veth: the target's own addresses.
pub const POD_V4: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);
pub const POD_V6: Ipv6Addr = Ipv6Addr::new(0xfd6d, 0x6e65, 0x7400, 0, 0, 0, 0, 2);
pub const PREFIX_V4: u8 = 24;
pub const PREFIX_V6: u8 = 64;
/// Wider than the veth's subnets: blackholed in the host namespace.
pub const GUARD_V4: &str = "10.213.0.0/16";
pub const GUARD_V6: &str = "fd6d:6e65:7400::/48";

/// The pod's DNS search domain, as Kubernetes sets it for a namespace's services.
pub const SEARCH_DOMAIN: &str = "svc.cluster.local";
/// Names only the pod's DNS server knows. Short forms resolve through [`SEARCH_DOMAIN`].
pub const WEB: &str = "web";
pub const WEB_FQDN: &str = "web.svc.cluster.local";
/// Has an AAAA record and no A record.
pub const WEB6_ONLY_FQDN: &str = "web6.svc.cluster.local";
pub const POSTGRES: &str = "postgres";
pub const REDIS: &str = "redis";
pub const ECHO: &str = "echo";
/// A name only the target's /etc/hosts knows (resolves to [`SERVICES_V4`]).
pub const HOSTS_ONLY_NAME: &str = "web-from-hosts";

/// A name with more addresses than a UDP answer without EDNS holds (512 bytes): the pod's
/// DNS server truncates its UDP answer and gives them all over TCP. All but the last are in
/// the guarded range no one reaches; the last is [`SERVICES_V4`].
pub const MANY_ADDRESSES_FQDN: &str = "many.svc.cluster.local";
pub const MANY_ADDRESSES: usize = 40;

/// [`MANY_ADDRESSES_FQDN`]'s addresses, as a hosts file for the pod's DNS server.
pub fn many_addresses_hosts() -> String {
    let mut hosts: String = (1..MANY_ADDRESSES)
        .map(|i| format!("10.213.1.{i} {MANY_ADDRESSES_FQDN}\n"))
        .collect();
    hosts.push_str(&format!("{SERVICES_V4} {MANY_ADDRESSES_FQDN}\n"));
    hosts
}

/// Records the pod's DNS server answers (name, has A, has AAAA); all point at the services end.
pub const DNS_RECORDS: &[(&str, bool, bool)] = &[
    (WEB_FQDN, true, true),
    (WEB6_ONLY_FQDN, false, true),
    ("postgres.svc.cluster.local", true, true),
    ("redis.svc.cluster.local", true, true),
    ("echo.svc.cluster.local", true, true),
];

pub const HTTP_PORT: u16 = 80;
pub const DNS_PORT: u16 = 53;
pub const UDP_ECHO_PORT: u16 = 7777;
pub const HOLD_ECHO_PORT: u16 = 7000;
pub const POSTGRES_PORT: u16 = 5432;
pub const REDIS_PORT: u16 = 6379;
/// Nothing listens here: connections are refused.
pub const CLOSED_PORT: u16 = 1;

/// The IPv6 services address in URL form, `[fd6d:...::1]`.
pub fn services_v6_url_host() -> String {
    format!("[{SERVICES_V6}]")
}
