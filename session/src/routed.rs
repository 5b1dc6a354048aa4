//! The routed packet path: the session's namespace joined to the target's by a veth pair, so
//! the session's IPv4 connections to other hosts take the kernel's own path through the
//! target's namespace, with no user-space hop.
//!
//! For a local target, in a root session, when the target's namespace forwards IPv4
//! (`net.ipv4.ip_forward=1`, as the namespaces of pods on a Kubernetes node and of containers
//! on a Docker host do: they inherit the host's setting). The session child builds it in
//! [`join`], before the user's command starts:
//!
//! ```text
//!  session namespace                          target namespace
//!  ┌──────────────────────────────┐           ┌─────────────────────────────────────────┐
//!  │ mnet-pod 169.254.64.N+2/30 ──┼── veth ───┼─ mnet-r<N> 169.254.64.N+1/30            │
//!  │ default via 169.254.64.N+1   │           │   forwarding on (this device only)      │
//!  │ TUN (the pod's addresses)    │           │ table inet mirrord-net-route-<N> {      │
//!  │   240.0.0.0/8 (its localhost)│           │   flags owner                           │
//!  │   from <pod address>: TUN    │           │   input:       saddr session → snat to  │
//!  └──────────────────────────────┘           │                the pod's first address  │
//!                                             │   postrouting: saddr session → masquerade│
//!                                             └─────────────────────────────────────────┘
//! ```
//!
//! - **What takes the veth:** every IPv4 flow whose source the kernel picks itself, which is
//!   the veth's address. The target's namespace forwards it and masquerades it, so the server
//!   sees the pod's address, exactly as for the pod's own connections; a flow to an address
//!   of the target's namespace itself (other than the pod's addresses, which are the
//!   session's own) is delivered there with its source rewritten to the pod's address.
//! - **What stays on the TUN** (and the agent's stack): IPv6; the pod's localhost (the
//!   loopback redirect rewrites it to 240.0.0.0/8, routed to the TUN); and everything sent
//!   *from* the pod's address — the answers to incoming (stolen, mirrored) connections, which
//!   the agent injects into the TUN to that address, and a program that binds the pod's
//!   address before it connects. One policy rule (`from <pod address> lookup 52`) sends those
//!   to a table whose default route is the TUN.
//! - **What a program sees:** its outgoing IPv4 connections' local address is the veth's,
//!   a link-local one, not the pod's (the server still sees the pod's); the target's
//!   namespace is one routing hop, so TTLs are one lower beyond it.
//! - **What it changes in the target's namespace:** one veth end, with forwarding turned on
//!   for that device alone, and one nftables table, which turns connection tracking on for
//!   the target's traffic while it exists. The table is owned by a netlink socket
//!   (`NFT_TABLE_F_OWNER`) that the session child and its init hold for the session's life:
//!   the kernel deletes the table when they are gone, however they went. The veth goes with
//!   the session's namespace. Nothing needs undoing by hand, after a crash either.
//!
//! The target's namespace is entered with `setns` for the few requests that must be made
//! there (the veth's creation and its pod end, the table), on this single-threaded process,
//! and left again before anything else happens.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use mirrord_net_netfilter::{
    self as nf, Message, Socket, NFPROTO_IPV4, NFTA_NAT_FAMILY, NFTA_NAT_REG_ADDR_MIN,
    NFTA_NAT_TYPE, NFT_META_NFPROTO, NFT_NAT_SNAT, NFT_PAYLOAD_NETWORK_HEADER, NFT_REG_1,
    NF_INET_LOCAL_IN, NF_INET_POST_ROUTING, NF_IP_PRI_NAT_SRC,
};
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::link::{InetDevConf, InfoData, InfoKind, InfoVeth};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use super::child_messages::{SetupFailure, SetupStep};
use super::netlink::Netlink;

/// The session's end of the veth.
pub const SESSION_LINK: &str = "mnet-pod";
/// The routing table whose default route is the TUN, for what the session sends from the
/// pod's own addresses.
pub const TUN_TABLE: u32 = 52;
/// The policy rule's priority: after the `local` table's (0), before `main`'s (32766).
const RULE_PRIORITY: u32 = 1000;
/// The veths' link-local network: 4,096 /30s. Chosen clear of the link-local addresses pods
/// are known to use (169.254.1.1, Calico's gateway; 169.254.20.10 and 169.254.25.10, node-local
/// DNS; 169.254.169.254 and 169.254.170.2, cloud metadata), so that no route of the target's
/// namespace is shadowed by a session's /30.
const LINK_NETWORK: Ipv4Addr = Ipv4Addr::new(169, 254, 64, 0);
const LINKS: u32 = 4096;
/// How many link numbers are tried before giving up (another session on the same target may
/// hold one: its pod end's name is taken).
const ATTEMPTS: u32 = 64;
/// The veth's MTU: as large as loopback's, so that a flow to the target's namespace is not cut
/// into smaller packets than the pod's own; beyond it, the peer's MSS and path MTU discovery
/// size the packets as they do for the pod.
const LINK_MTU: u32 = 65_535;

/// A session joined to its target's namespace: the socket that owns the table there, which
/// must stay open for the session's life.
pub struct Joined {
    _table_owner: OwnedFd,
}

/// The two addresses of link number `n`: (the pod's end, the session's end).
pub fn link_addresses(n: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(LINK_NETWORK) + 4 * (n % LINKS);
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

/// The name of link number `n`'s end in the target's namespace.
pub fn pod_link_name(n: u32) -> String {
    format!("mnet-r{n}")
}

/// The table's name in the target's namespace.
pub fn table_name(n: u32) -> String {
    format!("mirrord-net-route-{n}")
}

/// Joins the session's namespace (this thread's) to the network namespace of `target_pid`.
/// `Ok(None)`, with a warning, when the target's namespace does not forward: the session's
/// packets then all take the TUN.
pub fn join(
    target_pid: u32,
    pod_ipv4: Ipv4Addr,
    netlink: &mut Netlink,
    warnings: &mut Vec<String>,
) -> Result<Option<Joined>, SetupFailure> {
    let failed = |err| SetupFailure::os(SetupStep::RoutedLink, err);
    let target = File::open(format!("/proc/{target_pid}/ns/net")).map_err(failed)?;
    let own = File::open("/proc/thread-self/ns/net").map_err(failed)?;
    let first = first_link_number();

    let pod_side = in_namespace(&target, &own, || -> io::Result<Option<PodSide>> {
        if !forwards_ipv4()? {
            return Ok(None);
        }
        let mut pod_netlink = Netlink::open()?;
        let mut table = Socket::open()?;
        let n = create_veth(&mut pod_netlink, own.as_fd(), first)?;
        let (pod_end, session_end) = link_addresses(n);
        let index = nix::net::if_::if_nametoindex(pod_link_name(n).as_str())?;
        set_up_pod_end(&mut pod_netlink, index, pod_end)?;
        table.apply(|push| table_messages(push, n, session_end, pod_ipv4))?;
        Ok(Some(PodSide {
            n,
            table: table.into_fd(),
        }))
    })
    .map_err(failed)?;
    let Some(PodSide { n, table }) = pod_side else {
        warnings.push(
            "the target's network namespace does not forward IPv4 (net.ipv4.ip_forward=0): \
             the session's packets take the TUN instead of the routed path"
                .to_owned(),
        );
        return Ok(None);
    };
    let (pod_end, session_end) = link_addresses(n);
    set_up_session_end(netlink, session_end, pod_end).map_err(failed)?;
    Ok(Some(Joined {
        _table_owner: table,
    }))
}

/// Adds the routes and rule that keep the pod's localhost and the pod's own source addresses
/// on the TUN (device `tun_index`), once the veth holds the main default route.
pub fn keep_on_tun(netlink: &mut Netlink, tun_index: u32, pod_ipv4: &[Ipv4Addr]) -> io::Result<()> {
    let localhost = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(mirrord_net_protocol::loopback::LOOPBACK_V4_NET, 8)
        .output_interface(tun_index)
        .scope(RouteScope::Link)
        .build();
    netlink.create(RouteNetlinkMessage::NewRoute(localhost))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .output_interface(tun_index)
        .scope(RouteScope::Link)
        .table_id(TUN_TABLE)
        .build();
    netlink.create(RouteNetlinkMessage::NewRoute(default))?;
    for &addr in pod_ipv4 {
        netlink.create(RouteNetlinkMessage::NewRule(from_rule(addr)))?;
    }
    Ok(())
}

/// `ip rule add from ADDR lookup 52 priority 1000`
fn from_rule(addr: Ipv4Addr) -> RuleMessage {
    let mut rule = RuleMessage::default();
    rule.header.family = AddressFamily::Inet;
    rule.header.src_len = 32;
    rule.header.action = RuleAction::ToTable;
    rule.attributes = vec![
        RuleAttribute::Source(addr.into()),
        RuleAttribute::Table(TUN_TABLE),
        RuleAttribute::Priority(RULE_PRIORITY),
    ];
    rule
}

struct PodSide {
    n: u32,
    table: OwnedFd,
}

/// Runs `work` with this thread in `target`'s network namespace, and returns to `own`
/// whatever happened.
fn in_namespace<T>(
    target: &File,
    own: &File,
    work: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    setns(target.as_fd(), CloneFlags::CLONE_NEWNET)?;
    let result = work();
    if let Err(err) = setns(own.as_fd(), CloneFlags::CLONE_NEWNET) {
        // Building the rest of the session in the target's namespace would change the
        // target: this session ends here.
        return Err(io::Error::other(format!(
            "cannot return to the session's network namespace: {err}"
        )));
    }
    result
}

/// Whether the current network namespace forwards IPv4 (`/proc/sys/net` answers for the
/// namespace of the thread that opens it).
fn forwards_ipv4() -> io::Result<bool> {
    Ok(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim() == "1")
}

/// A number to start looking for a free link at: different for each session, so that
/// sessions on one target rarely try the same names.
fn first_link_number() -> u32 {
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom(2) writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got == 4 {
        u32::from_ne_bytes(bytes) % LINKS
    } else {
        std::process::id() % LINKS
    }
}

/// Makes the veth from inside the target's namespace: `mnet-r<N>` there, its peer
/// [`SESSION_LINK`] in the namespace of `session`. Returns the N whose name was free.
fn create_veth(
    netlink: &mut Netlink,
    session: std::os::fd::BorrowedFd<'_>,
    first: u32,
) -> io::Result<u32> {
    let mut last = io::Error::other("no link number tried");
    for attempt in 0..ATTEMPTS {
        let n = (first + attempt) % LINKS;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(SESSION_LINK)
            .mtu(LINK_MTU)
            .setns_by_fd(session.as_raw_fd())
            .build();
        let veth = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(pod_link_name(n))
            .mtu(LINK_MTU)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        match netlink.create(RouteNetlinkMessage::NewLink(veth)) {
            Ok(()) => return Ok(n),
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => last = err,
            Err(err) => return Err(err),
        }
    }
    Err(io::Error::new(
        last.kind(),
        format!("no free link name in the target's namespace after {ATTEMPTS} tries: {last}"),
    ))
}

/// The pod's end: forwarding on for this device (what it receives from the session may be
/// routed on), its address, up.
fn set_up_pod_end(netlink: &mut Netlink, index: u32, addr: Ipv4Addr) -> io::Result<()> {
    let mut conf = InetDevConf::default();
    conf.forwarding = 1;
    netlink.set_inet_conf(index, conf)?;
    netlink.add_ipv4(index, addr, 30)?;
    netlink.set_up(index)
}

/// The session's end: its address, up, and the session's IPv4 default route through the pod's
/// end.
fn set_up_session_end(netlink: &mut Netlink, addr: Ipv4Addr, pod_end: Ipv4Addr) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex(SESSION_LINK)?;
    netlink.add_ipv4(index, addr, 30)?;
    netlink.set_up(index)?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(pod_end)
        .output_interface(index)
        .build();
    netlink.create(RouteNetlinkMessage::NewRoute(route))
}

/// The table in the target's namespace:
///
/// ```text
/// table inet mirrord-net-route-N {     # flags owner
///     chain to-pod { type nat hook input priority srcnat;
///         meta nfproto ipv4 ip saddr SESSION snat ip to POD }
///     chain beyond-pod { type nat hook postrouting priority srcnat;
///         meta nfproto ipv4 ip saddr SESSION masquerade }
/// }
/// ```
fn table_messages(push: &mut nf::Push<'_>, n: u32, session_end: Ipv4Addr, pod: Ipv4Addr) {
    let table = table_name(n);
    push(&|seq| nf::new_table(seq, &table));
    push(&|seq| nf::new_nat_chain(seq, &table, "to-pod", NF_INET_LOCAL_IN, NF_IP_PRI_NAT_SRC));
    push(&|seq| {
        nf::new_nat_chain(
            seq,
            &table,
            "beyond-pod",
            NF_INET_POST_ROUTING,
            NF_IP_PRI_NAT_SRC,
        )
    });
    push(&|seq| {
        nf::new_rule(seq, &table, "to-pod", |m| {
            match_source(m, session_end);
            m.immediate(NFT_REG_1, &pod.octets()).expr("nat", |m| {
                m.be32(NFTA_NAT_TYPE, NFT_NAT_SNAT)
                    .be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4))
                    .be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
            });
        })
    });
    push(&|seq| {
        nf::new_rule(seq, &table, "beyond-pod", |m| {
            match_source(m, session_end);
            m.expr("masq", |_| {});
        })
    });
}

/// `meta nfproto ipv4 ip saddr ADDR`
fn match_source(m: &mut Message, addr: Ipv4Addr) {
    m.meta(NFT_META_NFPROTO)
        .cmp_eq(&[NFPROTO_IPV4])
        .payload(NFT_PAYLOAD_NETWORK_HEADER, 12, 4)
        .cmp_eq(&addr.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_numbers_give_disjoint_slash_30s_inside_the_network() {
        let (pod, session) = link_addresses(0);
        assert_eq!(pod, Ipv4Addr::new(169, 254, 64, 1));
        assert_eq!(session, Ipv4Addr::new(169, 254, 64, 2));
        let (pod, session) = link_addresses(LINKS - 1);
        assert_eq!(pod, Ipv4Addr::new(169, 254, 127, 253));
        assert_eq!(session, Ipv4Addr::new(169, 254, 127, 254));
        // Wraps instead of leaving the network.
        assert_eq!(link_addresses(LINKS), link_addresses(0));
    }

    #[test]
    fn the_network_avoids_the_link_local_addresses_pods_use() {
        let network = u32::from(LINK_NETWORK);
        for used in [
            Ipv4Addr::new(169, 254, 1, 1),
            Ipv4Addr::new(169, 254, 20, 10),
            Ipv4Addr::new(169, 254, 25, 10),
            Ipv4Addr::new(169, 254, 169, 254),
            Ipv4Addr::new(169, 254, 170, 2),
        ] {
            let offset = u32::from(used).wrapping_sub(network);
            assert!(offset >= 4 * LINKS, "{used} is inside the links' network");
        }
    }

    #[test]
    fn names_fit_an_interface_name() {
        assert!(pod_link_name(LINKS - 1).len() < libc::IFNAMSIZ);
        assert!(SESSION_LINK.len() < libc::IFNAMSIZ);
    }

    #[test]
    fn the_rule_sends_the_pods_address_to_the_tun_table() {
        let rule = from_rule(Ipv4Addr::new(10, 0, 0, 9));
        assert_eq!(rule.header.src_len, 32);
        assert!(rule
            .attributes
            .contains(&RuleAttribute::Source(Ipv4Addr::new(10, 0, 0, 9).into())));
        assert!(rule.attributes.contains(&RuleAttribute::Table(TUN_TABLE)));
    }
}
