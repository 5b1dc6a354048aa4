//! The demo pod's names and addresses, which the pod, its DNS and HTTP servers, the probe and
//! the narration all use: below them all (the parent module re-exports them).

use std::net::{Ipv4Addr, Ipv6Addr};

/// The pod's hostname (its UTS namespace).
pub(crate) const POD_HOSTNAME: &str = "demo-pod";
/// The pod's own addresses, on its `eth0`: what a session on the pod takes as its addresses.
pub(crate) const POD_IPV4: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 2);
pub(crate) const POD_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 2);
/// The service `hello`: reachable from the pod, not an address of the pod.
pub(crate) const SERVICE_IPV4: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 10);
pub(crate) const SERVICE_IPV6: Ipv6Addr = Ipv6Addr::new(0xfd89, 0, 0, 0, 0, 0, 0, 0x10);
pub(crate) const SERVICE_PORT: u16 = 80;
/// The pod's DNS server, as in its resolv.conf.
pub(crate) const DNS_IPV4: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 53);
/// The service's short name and the pod's Kubernetes-style search list: namespace `demo`.
pub(crate) const SERVICE_NAME: &str = "hello";
pub(crate) const SEARCH: [&str; 3] = [
    "demo.svc.cluster.local",
    "svc.cluster.local",
    "cluster.local",
];
/// The hidden first arguments under which this binary is the pod and the probe.
pub const POD_ARG: &str = "__demo-pod";
pub const PROBE_ARG: &str = "__demo-probe";
