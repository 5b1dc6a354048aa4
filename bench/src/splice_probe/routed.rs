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

use anyhow::{ensure, Context, Result};
use mirrord_net_tests::netns::{self, Netns};

/// The pod's own address, on its loopback (the probe's pod has no other link).
pub const POD: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The session's end of the veth (link-local, so it collides with no pod network).
const SESSION_END: &str = "169.254.77.2";
const POD_END: &str = "169.254.77.1";

/// Joins `session` to `pod`. The veth is made in the two namespaces and goes with them;
/// nothing is made outside them.
pub fn join(session: &Netns, pod: &Netns) -> Result<()> {
    let (session_link, pod_link) = ("to-pod", "to-session");
    netns::veth_pair(session, session_link, pod, pod_link)?;
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
pub fn link_service(pod: &Netns, service: &Netns, link: ServiceLink) -> Result<()> {
    let (pod_link, service_link) = match link {
        ServiceLink::Plain => ("to-service", "to-plain-pod"),
        ServiceLink::Routed => ("to-service", "to-routed-pod"),
    };
    let (pod_address, service_address) = link.addresses();
    netns::veth_pair(pod, pod_link, service, service_link)?;
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

/// Where a program in the session reaches the server listening on `port` in the pod.
pub fn server_from_the_session(port: u16) -> SocketAddr {
    SocketAddr::from((POD, port))
}
