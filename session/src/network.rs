//! The session's network: loopback, the TUN device, its addresses and default routes.
//!
//! Runs in the child, after `unshare(CLONE_NEWNET)`, so every interface, address and route
//! made here exists only in the session's namespace. The order is deliberate:
//!
//! 1. `lo` up: a fresh namespace has it down, and many programs talk to 127.0.0.1.
//! 2. The TUN is created with `IFF_NO_PI` (bare IP packets, which is what the tunnel carries).
//!    Its descriptor goes to the client; the device lives as long as that descriptor. A TUN
//!    that the local agent's stack will serve (`tun_offload`) also gets `IFF_VNET_HDR` and
//!    `TUNSETOFFLOAD(TUN_F_CSUM)`: the session's kernel then leaves TCP/UDP checksums partial
//!    on what it sends and trusts what it receives (see the agent's `tun_link`). Only the
//!    checksum offload: no TSO, so every read is still one IP packet. A TUN the client's
//!    tunnel pump serves on an MTU-limited path (`tun_segmentation`) gets TSO too: the pump
//!    segments and coalesces (`tunnel::offload`).
//! 3. MTU, a transmit queue long enough for bursts of thousands of packets
//!    ([`TUN_TX_QUEUE`]), and — only when IPv6 is wanted — `addrgenmode none`, in one `RTM_SETLINK` before
//!    the link goes up: with it the kernel gives the TUN no link-local address, so it sends no
//!    duplicate-address probes or router solicitations down the tunnel.
//! 4. Link up, then the addresses: IPv4 as /32, IPv6 as /128 with `IFA_F_NODAD`, so they are
//!    usable at once instead of "tentative" for a second (a connect() from a tentative address
//!    fails with EADDRNOTAVAIL). No prefix is implied: the target's subnet is reached through
//!    the default route like everything else.
//! 5. A default route per family that has an address, `dev mnet0` without a gateway (a TUN is
//!    point-to-point and has no neighbours to resolve). IPv4's is link-scoped, as `ip route add
//!    default dev X` makes it; the kernel picks the TUN's address as the source. On the routed
//!    path ([`routed`]) IPv4's default route is the veth to the target's namespace instead,
//!    and the TUN keeps 240.0.0.0/8 (the pod's localhost) and what is sent from the pod's
//!    addresses.
//!
//! 6. With the loopback redirect (`target_localhost`): `route_localnet` on the TUN, a
//!    `local ::1` route on it, and the session's nftables table ([`loopback`] says why each).
//!    With the outgoing filter (`--local`/`--remote`): the relay's sockets on the session's
//!    loopback and the filter's rules in the same table ([`outgoing`](super::outgoing)).
//!    With the DNS filter (`--local-dns`/`--remote-dns`): the DNS relay's sockets and the
//!    redirect of the resolvers' port 53, first in that table ([`dns_filter`](super::dns_filter)).
//!
//! IPv6 is skipped, with a warning for the client's log, when it cannot work: the kernel has
//! no IPv6 (`ipv6.disable=1`: no `/proc/sys/net/ipv6`) or the MTU is below IPv6's minimum of
//! 1280 (the kernel would silently turn IPv6 off on the device). Otherwise `disable_ipv6` of
//! the device is set to 0 in case the namespace inherited a host default of 1.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;

use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InetDevConf, LinkAttribute,
};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{AddressMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::child_messages::{ChildSpec, IpFamily, SetupFailure, SetupStep};
use super::dns_relay::DnsSockets;
use super::loopback::{self, NatPlan};
use super::netlink::Netlink;
use super::outgoing_relay::RelaySockets;
use super::routed;

/// IPv6's minimum link MTU (RFC 8200).
const IPV6_MIN_MTU: u16 = 1280;

/// Packets the TUN holds for its reader (the client's pump or the local agent's stack) before
/// it drops what the session sends. The kernel's default is 500. A session whose program
/// writes to thousands of sockets at once (a pool warming up, a load generator, 10,000 idle
/// flows each sent a byte) overflows that in one burst: measured, 20,000 of 46,000 packets
/// dropped, the session's TCP timers then back off in step and some flows stall for more than
/// 25 s. Each slot is a pointer; the packets' memory is bounded by the senders' windows.
const TUN_TX_QUEUE: u32 = 16_384;

/// The session's network as built: the TUN descriptor; with the loopback redirect or the
/// outgoing filter, the netlink socket that made their table and whether it covers IPv6;
/// with the outgoing filter, its relay's sockets.
pub struct Built {
    pub tun: OwnedFd,
    pub loopback: Option<(OwnedFd, bool)>,
    pub relay: Option<RelaySockets>,
    /// With the DNS filter, its relay's sockets.
    pub dns: Option<DnsSockets>,
    /// On the routed path, what holds the target's side of it.
    pub routed: Option<routed::Joined>,
}

/// Builds the whole network of the session.
pub fn build(spec: &ChildSpec, warnings: &mut Vec<String>) -> Result<Built, SetupFailure> {
    let mut netlink =
        Netlink::open().map_err(|err| SetupFailure::os(SetupStep::NetlinkSocket, err))?;
    loopback_up(&mut netlink).map_err(|err| SetupFailure::os(SetupStep::Loopback, err))?;

    let tun = tun_rs::DeviceBuilder::new()
        .name(&spec.tun_name)
        .packet_information(false)
        // Up only once addrgenmode is set, or the kernel has already made a link-local.
        .enable(false)
        .offload(spec.tun_offload)
        .build_sync()
        .map_err(|err| SetupFailure::os(SetupStep::TunDevice, err))?;
    if spec.tun_offload {
        // The builder turns on USO (and TSO) too: keep the checksum offload, and TSO only
        // for a reader that segments.
        set_offloads(&tun, spec.tun_segmentation)
            .map_err(|err| SetupFailure::os(SetupStep::TunDevice, err))?;
    }
    let index = nix::net::if_::if_nametoindex(spec.tun_name.as_str())
        .map_err(|err| SetupFailure::os(SetupStep::TunDevice, err))?;

    let ipv6 = usable_ipv6(spec, warnings);
    let mut link = LinkUnspec::new_with_index(index)
        .mtu(u32::from(spec.mtu))
        .txqueuelen(TUN_TX_QUEUE);
    if !ipv6.is_empty() {
        enable_ipv6(&spec.tun_name).map_err(|err| SetupFailure::os(SetupStep::Ipv6Sysctl, err))?;
        link = link.append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(
            vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)],
        )]));
    }
    netlink
        .change(RouteNetlinkMessage::SetLink(link.build()))
        .map_err(|err| SetupFailure::os(SetupStep::TunLink, err))?;
    netlink
        .set_up(index)
        .map_err(|err| SetupFailure::os(SetupStep::TunLink, err))?;

    for &addr in &spec.ipv4 {
        netlink
            .add_ipv4(index, addr, 32)
            .map_err(|err| SetupFailure::os(SetupStep::Address(IpAddr::V4(addr)), err))?;
    }
    for &addr in ipv6 {
        add_ipv6(&mut netlink, index, addr)
            .map_err(|err| SetupFailure::os(SetupStep::Address(IpAddr::V6(addr)), err))?;
    }
    let routed = match (spec.routed_target, spec.ipv4.first()) {
        (Some(target), Some(&pod)) => routed::join(target, pod, &mut netlink, warnings)?,
        _ => None,
    };
    if routed.is_some() {
        routed::keep_on_tun(&mut netlink, index, &spec.ipv4)
            .map_err(|err| SetupFailure::os(SetupStep::RoutedLink, err))?;
    } else if !spec.ipv4.is_empty() {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .output_interface(index)
            .scope(RouteScope::Link)
            .build();
        netlink
            .create(RouteNetlinkMessage::NewRoute(route))
            .map_err(|err| SetupFailure::os(SetupStep::DefaultRoute(IpFamily::V4), err))?;
    }
    if !ipv6.is_empty() {
        let route = RouteMessageBuilder::<Ipv6Addr>::new()
            .output_interface(index)
            .build();
        netlink
            .create(RouteNetlinkMessage::NewRoute(route))
            .map_err(|err| SetupFailure::os(SetupStep::DefaultRoute(IpFamily::V6), err))?;
    }
    let redirect = |err| SetupFailure::os(SetupStep::LoopbackRedirect, err);
    if spec.target_localhost {
        if !spec.ipv4.is_empty() {
            route_localnet(&mut netlink, index).map_err(redirect)?;
        }
        if !ipv6.is_empty() {
            local_ipv6_loopback(&mut netlink, index).map_err(redirect)?;
        }
    }
    let relay = match &spec.outgoing {
        Some(rules) => {
            let failed = |err| SetupFailure::os(SetupStep::OutgoingFilter, err);
            let sockets = RelaySockets::open(!ipv6.is_empty()).map_err(failed)?;
            let ports = sockets.ports().map_err(failed)?;
            Some((sockets, rules.clone(), ports))
        }
        None => None,
    };
    let dns = match &spec.dns_resolvers {
        Some(resolvers) => {
            let failed = |err| SetupFailure::os(SetupStep::DnsFilter, err);
            let sockets = DnsSockets::open(!ipv6.is_empty()).map_err(failed)?;
            let ports = sockets.ports().map_err(failed)?;
            Some((sockets, resolvers.clone(), ports))
        }
        None => None,
    };
    let loopback = if spec.target_localhost || relay.is_some() || dns.is_some() {
        let plan = NatPlan {
            target_localhost: spec.target_localhost,
            ipv6: !ipv6.is_empty(),
            outgoing: relay
                .as_ref()
                .map(|(_, rules, ports)| (rules.clone(), *ports)),
            dns: dns
                .as_ref()
                .map(|(_, resolvers, ports)| (resolvers.clone(), *ports)),
        };
        let socket = loopback::install(&plan).map_err(|err| {
            if spec.target_localhost {
                redirect(err)
            } else if relay.is_some() {
                SetupFailure::os(SetupStep::OutgoingFilter, err)
            } else {
                SetupFailure::os(SetupStep::DnsFilter, err)
            }
        })?;
        Some((socket, !ipv6.is_empty()))
    } else {
        None
    };
    // SAFETY: into_raw_fd hands over the device's only descriptor.
    let tun = unsafe { OwnedFd::from_raw_fd(tun.into_raw_fd()) };
    Ok(Built {
        tun,
        loopback,
        relay: relay.map(|(sockets, _, _)| sockets),
        dns: dns.map(|(sockets, _, _)| sockets),
        routed,
    })
}

/// Lets loopback addresses be routed through the TUN (`net.ipv4.conf.<tun>.route_localnet`),
/// which the loopback redirect needs (see [`loopback`]).
///
/// Set over netlink ([`Netlink::set_inet_conf`], only the one entry), not through
/// `/proc/sys`: in a container /proc/sys is mounted read-only, and the session cannot mount a
/// /proc of its own before its init does (nor at all where the container's has masked paths).
fn route_localnet(netlink: &mut Netlink, index: u32) -> std::io::Result<()> {
    let mut conf = InetDevConf::default();
    conf.route_localnet = 1;
    netlink.set_inet_conf(index, conf)
}

/// `ip -6 route add local ::1 dev <tun> table local`: the route that lets replies conntrack
/// turned back into `::1` be delivered (see [`loopback`]).
fn local_ipv6_loopback(netlink: &mut Netlink, index: u32) -> std::io::Result<()> {
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(Ipv6Addr::LOCALHOST, 128)
        .output_interface(index)
        .kind(RouteType::Local)
        .scope(RouteScope::Host)
        .table_id(LOCAL_TABLE)
        .priority(1024)
        .build();
    netlink.create(RouteNetlinkMessage::NewRoute(route))
}

/// The kernel's `local` routing table (`RT_TABLE_LOCAL`).
const LOCAL_TABLE: u32 = 255;

/// Sets the device's offloads to `TUN_F_CSUM`, with `TUN_F_TSO4 | TUN_F_TSO6` when
/// `segmentation`.
fn set_offloads(tun: &impl std::os::fd::AsRawFd, segmentation: bool) -> std::io::Result<()> {
    let mut offloads = libc::TUN_F_CSUM;
    if segmentation {
        offloads |= libc::TUN_F_TSO4 | libc::TUN_F_TSO6;
    }
    // SAFETY: an ioctl taking an unsigned int argument by value on the device's descriptor.
    let done = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETOFFLOAD,
            offloads as libc::c_ulong,
        )
    };
    if done != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn loopback_up(netlink: &mut Netlink) -> std::io::Result<()> {
    netlink.set_up(nix::net::if_::if_nametoindex("lo")?)
}

/// The IPv6 addresses that can be configured, with a warning when some cannot.
fn usable_ipv6<'a>(spec: &'a ChildSpec, warnings: &mut Vec<String>) -> &'a [Ipv6Addr] {
    if spec.ipv6.is_empty() {
        return &[];
    }
    if !Path::new("/proc/sys/net/ipv6").exists() {
        warnings.push(format!(
            "IPv6 is disabled in this kernel; the session has no IPv6 address (the target has {})",
            list(&spec.ipv6)
        ));
        return &[];
    }
    if spec.mtu < IPV6_MIN_MTU {
        warnings.push(format!(
            "the tunnel's MTU {} is below IPv6's minimum of {IPV6_MIN_MTU}; the session has no \
             IPv6 address (the target has {})",
            spec.mtu,
            list(&spec.ipv6)
        ));
        return &[];
    }
    &spec.ipv6
}

fn list(addrs: &[Ipv6Addr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Makes sure IPv6 is on for the device (a namespace may inherit `disable_ipv6=1`).
fn enable_ipv6(device: &str) -> std::io::Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{device}/disable_ipv6");
    if std::fs::read_to_string(&path)?.trim() == "0" {
        return Ok(());
    }
    std::fs::write(&path, "0")
}

fn add_ipv6(netlink: &mut Netlink, index: u32, addr: Ipv6Addr) -> std::io::Result<()> {
    let mut message = AddressMessageBuilder::<Ipv6Addr>::new()
        .index(index)
        .address(addr, 128)
        .build();
    message.header.flags |= AddressHeaderFlags::Nodad;
    message
        .attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    netlink.create(RouteNetlinkMessage::NewAddress(message))
}
