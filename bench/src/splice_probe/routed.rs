//! The session's namespace routed into the pod's: a veth pair between the two, and the
//! session's connections source-NATed to the pod's address inside the pod's namespace. This is
//! the kernel's own path, with no user-space hop and no socket map; a connection from the
//! session looks to the server as one from the pod itself.
//!
//! What it changes in the pod's namespace: one veth end with a link-local address, and one
//! nftables table. Destinations beyond the pod also need the pod's namespace to forward, and
//! a masquerade on the way out ([`link_service`]). The table turns connection tracking on
//! for all of the pod's traffic, its own included: the probe measures the routed path in a
//! pod of its own, so that the direct rows stay without it, and shows that cost apart.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use mirrord_net_tests::netns::Netns;

/// The pod's own address, on its loopback (the probe's pod has no other link).
pub const POD: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The session's end of the veth (link-local, so it collides with no pod network).
const SESSION_END: &str = "169.254.77.2";
const POD_END: &str = "169.254.77.1";

/// Joins `session` to `pod` (names carry `id`, so parallel probes never share one). The veth
/// goes with the namespaces; nothing else is made outside them.
pub fn join(session: &Netns, pod: &Netns, id: u32) -> Result<()> {
    let (session_link, pod_link) = (format!("mnrs{id}"), format!("mnrp{id}"));
    veth(session, &session_link, pod, &pod_link)?;
    session.ip_batch(&format!(
        "addr add {SESSION_END}/30 dev {session_link}\n\
         link set {session_link} mtu 65535 up\n\
         route add default via {POD_END}\n"
    ))?;
    pod.ip_batch(&format!(
        "addr add {POD_END}/30 dev {pod_link}\n\
         link set {pod_link} mtu 65535 up\n\
         addr add {POD}/32 dev lo\n"
    ))?;
    let mut nft = pod.command("nft")?;
    nft.args([
        "add table ip mnet_probe; \
         add chain ip mnet_probe incoming { type nat hook input priority 100; policy accept; }; \
         add rule ip mnet_probe incoming ip saddr",
        SESSION_END,
        "snat to",
        &POD.to_string(),
    ]);
    let status = nft.status().context("running nft")?;
    ensure!(status.success(), "nft in the pod's namespace: {status}");
    Ok(())
}

/// How a pod reaches the host beyond it (a service, another pod) in the probe.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ServiceLink {
    /// The plain pod's link, which the direct rows use: no NAT in that pod.
    Plain,
    /// The routed pod's link, over which the session's connections are forwarded and
    /// masqueraded.
    Routed,
}

impl ServiceLink {
    /// (the pod's address on the link, the service's)
    pub fn addresses(self) -> (Ipv4Addr, Ipv4Addr) {
        match self {
            ServiceLink::Plain => (Ipv4Addr::new(10, 251, 0, 1), Ipv4Addr::new(10, 251, 0, 2)),
            ServiceLink::Routed => (Ipv4Addr::new(10, 252, 0, 1), Ipv4Addr::new(10, 252, 0, 2)),
        }
    }
}

/// Gives `pod` a link to `service`, as a pod has to the rest of its cluster. Over the routed
/// link the session's connections go beyond the pod: forwarding on in the pod's namespace,
/// and a masquerade to the pod's address on the way out.
pub fn link_service(pod: &Netns, service: &Netns, id: u32, link: ServiceLink) -> Result<()> {
    let tag = if link == ServiceLink::Plain { 'p' } else { 'r' };
    let (pod_link, service_link) = (format!("mnv{tag}{id}"), format!("mnw{tag}{id}"));
    let (pod_address, service_address) = link.addresses();
    veth(pod, &pod_link, service, &service_link)?;
    pod.ip_batch(&format!(
        "addr add {pod_address}/30 dev {pod_link}\n\
         link set {pod_link} mtu 65535 up\n"
    ))?;
    service.ip_batch(&format!(
        "addr add {service_address}/30 dev {service_link}\n\
         link set {service_link} mtu 65535 up\n"
    ))?;
    if link == ServiceLink::Plain {
        return Ok(());
    }
    let mut sysctl = pod.command("sysctl")?;
    sysctl.args(["-qw", "net.ipv4.ip_forward=1"]);
    let status = sysctl.status().context("running sysctl")?;
    ensure!(
        status.success(),
        "forwarding in the pod's namespace: {status}"
    );
    let mut nft = pod.command("nft")?;
    nft.args([
        "add chain ip mnet_probe outgoing { type nat hook postrouting priority 100; policy accept; }; \
         add rule ip mnet_probe outgoing ip saddr",
        SESSION_END,
        "masquerade",
    ]);
    let status = nft.status().context("running nft")?;
    ensure!(status.success(), "nft in the pod's namespace: {status}");
    Ok(())
}

/// A veth pair: `one` named `one_name` in the namespace `one`, its peer `other_name` in
/// `other`. Made from the root namespace, so the names carry the probe's id.
fn veth(one: &Netns, one_name: &str, other: &Netns, other_name: &str) -> Result<()> {
    let made = Command::new("ip")
        .args(["link", "add", one_name, "netns", one.name(), "type", "veth"])
        .args(["peer", "name", other_name, "netns", other.name()])
        .status()
        .context("running ip")?;
    ensure!(made.success(), "ip link add {one_name}: {made}");
    Ok(())
}

/// Where a program in the session reaches the server listening on `port` in the pod.
pub fn server_from_the_session(port: u16) -> SocketAddr {
    SocketAddr::from((POD, port))
}
