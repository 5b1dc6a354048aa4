//! The pod's localhost: the session's connections to `127.0.0.0/8` and `::1` reach the
//! target's loopback, unless a program of the session itself serves that port.
//!
//! The kernel keeps loopback destinations on `lo`, so they never reach the TUN's default
//! route. The session's own nftables table (`inet mirrord-net`, in the session's network
//! namespace) rewrites them toward addresses that are routed through the TUN, and the agent
//! maps those back when it re-originates the flow (`mirrord_net_protocol::loopback` holds the
//! addresses and the mapping):
//!
//! ```text
//! table inet mirrord-net {
//!     chain loopback {                           # the program's first packet of a flow
//!         type nat hook output priority dstnat;
//!         meta l4proto tcp th dport 8080 return  # one per port a session program listens on
//!         meta l4proto udp th dport 5353 return  # one per UDP port a session program waits on
//!         meta l4proto tcp ip daddr 127.0.0.0/8 dnat ip prefix to 240.0.0.0/8
//!         meta l4proto udp ip daddr 127.0.0.0/8 dnat ip prefix to 240.0.0.0/8
//!         meta l4proto tcp ip6 daddr ::1 dnat ip6 to fd7f:6d6e:6c6f::1
//!         meta l4proto udp ip6 daddr ::1 dnat ip6 to fd7f:6d6e:6c6f::1
//!     }
//!     chain loopback-source {
//!         type nat hook postrouting priority srcnat;
//!         ip daddr 240.0.0.0/8 masquerade
//!         ip6 daddr fd7f:6d6e:6c6f::1 masquerade
//!     }
//! }
//! ```
//!
//! What the kernel needs besides the rules (each checked on this kernel; without it the flow
//! fails):
//!
//! - IPv4: `route_localnet=1` on the TUN. A DNAT in `output` makes the kernel route the packet
//!   again, with its source still 127.0.0.1 (the source was chosen when the program
//!   connected to a loopback address); routing a loopback source out of a device without
//!   `route_localnet` fails (`EINVAL`, the SYN is dropped). The replies, whose destination
//!   conntrack turns back into 127.0.0.1 in `prerouting`, are accepted on the TUN for the
//!   same setting.
//! - The masquerade gives the flow the TUN's address as its source before it leaves, so no
//!   loopback address ever travels on the TUN and the agent sees an ordinary flow.
//! - IPv6 has no `route_localnet`: the kernel looks `::1` up strictly by device, so a reply
//!   turned back into `::1` on the TUN finds no route and is dropped (`Ip6InAddrErrors`). A
//!   `local ::1 dev <TUN>` route in the `local` table (made by `network`) gives that lookup
//!   its answer; the session's own `::1` traffic keeps using `lo`'s route (metric 0).
//!
//! TCP and UDP only: ICMP (`ping localhost`) stays in the session.
//!
//! Which ports stay in the session: those of the session's listening TCP sockets and
//! unconnected UDP sockets, as the watcher in `served` sees them four times a second (the same
//! answer the incoming side reports); when the set changes, the follower replaces the `loopback` chain in
//! one batch the kernel applies atomically. A port counts whatever address its socket is bound
//! to. The decision is conntrack's, made on a flow's first packet: a flow already under way
//! keeps its path when the rules change, and a local server started less than a quarter of a
//! second ago may still see its first connections go to the target.
//!
//! The session child creates the table and hands its netlink socket to the client with the
//! TUN's descriptor; the client changes the table through it, and the table goes when the
//! session's namespace does. The table is not owned by the socket (`NFT_TABLE_F_OWNER`): the
//! kernel deletes an owned table when its socket closes, synchronously, unregistering the NAT
//! and conntrack hooks with RCU grace periods in the `close` — 8 to 19 ms measured at the end
//! of every session (the client's exit), for nothing, since the namespace goes right after.
//! Unowned, the table goes with the namespace in the kernel's cleanup work, after the client
//! has returned. What ownership would add, that no root program *of the session* can change
//! the table, guards nothing: such a program can only break its own session's redirect.

use std::io;
use std::os::fd::OwnedFd;

use mirrord_net_netfilter::sock_diag::Served;
use mirrord_net_netfilter::{
    self as nf, Message, Socket, NFPROTO_IPV4, NFPROTO_IPV6, NFTA_NAT_FAMILY, NFTA_NAT_FLAGS,
    NFTA_NAT_REG_ADDR_MAX, NFTA_NAT_REG_ADDR_MIN, NFTA_NAT_TYPE, NFT_META_L4PROTO,
    NFT_META_NFPROTO, NFT_NAT_DNAT, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER,
    NFT_REG_1, NFT_REG_2, NFT_RETURN, NF_INET_LOCAL_OUT, NF_INET_POST_ROUTING, NF_IP_PRI_NAT_DST,
    NF_IP_PRI_NAT_SRC, NF_NAT_RANGE_NETMAP,
};
use mirrord_net_protocol::loopback::{LOOPBACK_V4_NET, LOOPBACK_V6};

use super::dns_filter::{self, DnsPorts};
use tokio::sync::watch;

use super::outgoing::{self, OutgoingRules, RelayPorts};

/// The session's table.
pub const TABLE: &str = "mirrord-net";
/// The chain that sends loopback destinations to the target.
const CHAIN: &str = "loopback";
/// The chain that gives them the TUN's address as their source.
const SOURCE_CHAIN: &str = "loopback-source";

const PROTOS: [u8; 2] = [libc::IPPROTO_TCP as u8, libc::IPPROTO_UDP as u8];

/// `meta l4proto PROTO th dport PORT return`
fn keep_rule(seq: u32, proto: u8, port: u16) -> Vec<u8> {
    nf::new_rule(seq, TABLE, CHAIN, |m| {
        m.meta(NFT_META_L4PROTO)
            .cmp_eq(&[proto])
            .payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
            .cmp_eq(&port.to_be_bytes())
            .verdict(NFT_RETURN);
    })
}

/// `meta nfproto ipv4 ip daddr 127.0.0.0/8` (the first byte of the destination) or
/// `meta nfproto ipv6 ip6 daddr ADDR`.
fn match_v4_first_byte(m: &mut Message, byte: u8) {
    m.meta(NFT_META_NFPROTO)
        .cmp_eq(&[NFPROTO_IPV4])
        .payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 1)
        .cmp_eq(&[byte]);
}

fn match_v6(m: &mut Message, addr: std::net::Ipv6Addr) {
    m.meta(NFT_META_NFPROTO)
        .cmp_eq(&[NFPROTO_IPV6])
        .payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16)
        .cmp_eq(&addr.octets());
}

/// `meta l4proto PROTO ip daddr 127.0.0.0/8 dnat ip prefix to 240.0.0.0/8`
fn dnat_v4_rule(seq: u32, proto: u8) -> Vec<u8> {
    let low = LOOPBACK_V4_NET.octets();
    let high = [low[0], 255, 255, 255];
    nf::new_rule(seq, TABLE, CHAIN, |m| {
        m.meta(NFT_META_L4PROTO).cmp_eq(&[proto]);
        match_v4_first_byte(m, 127);
        m.immediate(NFT_REG_1, &low)
            .immediate(NFT_REG_2, &high)
            .expr("nat", |m| {
                m.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
                    .be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4))
                    .be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1)
                    .be32(NFTA_NAT_REG_ADDR_MAX, NFT_REG_2)
                    .be32(NFTA_NAT_FLAGS, NF_NAT_RANGE_NETMAP);
            });
    })
}

/// `meta l4proto PROTO ip6 daddr ::1 dnat ip6 to fd7f:6d6e:6c6f::1`
fn dnat_v6_rule(seq: u32, proto: u8) -> Vec<u8> {
    nf::new_rule(seq, TABLE, CHAIN, |m| {
        m.meta(NFT_META_L4PROTO).cmp_eq(&[proto]);
        match_v6(m, std::net::Ipv6Addr::LOCALHOST);
        m.immediate(NFT_REG_1, &LOOPBACK_V6.octets())
            .expr("nat", |m| {
                m.be32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
                    .be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV6))
                    .be32(NFTA_NAT_REG_ADDR_MIN, NFT_REG_1);
            });
    })
}

/// `ip daddr 240.0.0.0/8 masquerade`, `ip6 daddr fd7f:6d6e:6c6f::1 masquerade`
fn masquerade_rules(seq: u32, v6: bool) -> Vec<u8> {
    nf::new_rule(seq, TABLE, SOURCE_CHAIN, |m| {
        if v6 {
            match_v6(m, LOOPBACK_V6);
        } else {
            match_v4_first_byte(m, LOOPBACK_V4_NET.octets()[0]);
        }
        m.expr("masq", |_| {});
    })
}

/// What the session's table holds besides the kept ports: the loopback redirect, the
/// outgoing filter, or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPlan {
    /// Loopback destinations go to the target (`--no-target-localhost` turns it off).
    pub target_localhost: bool,
    /// The session has IPv6.
    pub ipv6: bool,
    /// The outgoing filter and the ports of its relay's sockets.
    pub outgoing: Option<(OutgoingRules, RelayPorts)>,
    /// The DNS filter: the session's resolvers and the ports of its relay's sockets.
    pub dns: Option<(Vec<std::net::IpAddr>, DnsPorts)>,
}

/// The messages that set the `loopback` chain: flush, the kept ports, the outgoing filter's
/// rules around the loopback rewrites (see [`outgoing`](super::outgoing) for the order).
fn chain_messages(push: &mut nf::Push<'_>, kept: &Served, plan: &NatPlan) {
    push(&|seq| nf::flush_chain(seq, TABLE, CHAIN));
    if let Some((resolvers, ports)) = &plan.dns {
        // First: a session program serving port 53 does not take the resolvers' queries.
        dns_filter::redirect_rules(push, TABLE, CHAIN, resolvers, ports);
    }
    for (protos, ports) in [(PROTOS[0], &kept.tcp), (PROTOS[1], &kept.udp)] {
        for &port in ports {
            if plan.outgoing.is_some() {
                // Rules for other destinations follow: keep only loopback ones.
                push(&|seq| keep_loopback_rule(seq, protos, port, false));
                if plan.ipv6 {
                    push(&|seq| keep_loopback_rule(seq, protos, port, true));
                }
            } else {
                push(&|seq| keep_rule(seq, protos, port));
            }
        }
    }
    if let Some((rules, relay)) = &plan.outgoing {
        outgoing::before_loopback(push, TABLE, CHAIN, rules, relay);
    }
    if plan.target_localhost {
        for proto in PROTOS {
            push(&|seq| dnat_v4_rule(seq, proto));
        }
        if plan.ipv6 {
            for proto in PROTOS {
                push(&|seq| dnat_v6_rule(seq, proto));
            }
        }
    }
    if let Some((rules, relay)) = &plan.outgoing {
        if !plan.target_localhost {
            outgoing::loopback_stays(push, TABLE, CHAIN, plan.ipv6, relay);
        }
        outgoing::after_loopback(push, TABLE, CHAIN, rules, relay);
    }
}

/// `meta l4proto PROTO ip daddr 127.0.0.0/8 th dport PORT return` (or `ip6 daddr ::1`)
fn keep_loopback_rule(seq: u32, proto: u8, port: u16, v6: bool) -> Vec<u8> {
    nf::new_rule(seq, TABLE, CHAIN, |m| {
        m.meta(NFT_META_L4PROTO).cmp_eq(&[proto]);
        if v6 {
            match_v6(m, std::net::Ipv6Addr::LOCALHOST);
        } else {
            match_v4_first_byte(m, 127);
        }
        m.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
            .cmp_eq(&port.to_be_bytes())
            .verdict(NFT_RETURN);
    })
}

/// Creates the table in the calling thread's network namespace (the session child's),
/// with nothing kept yet, and returns the socket that made it (unowned: see the module
/// comment).
pub fn install(plan: &NatPlan) -> io::Result<OwnedFd> {
    let mut socket = Socket::open()?;
    socket.apply(|push| install_messages(push, plan))?;
    Ok(socket.into_fd())
}

/// The messages that make the table: the table, its chains, the masquerades (for the
/// loopback redirect), the rules.
fn install_messages(push: &mut nf::Push<'_>, plan: &NatPlan) {
    push(&|seq| nf::new_table_with_flags(seq, TABLE, 0));
    push(&|seq| nf::new_nat_chain(seq, TABLE, CHAIN, NF_INET_LOCAL_OUT, NF_IP_PRI_NAT_DST));
    if plan.target_localhost {
        push(&|seq| {
            nf::new_nat_chain(
                seq,
                TABLE,
                SOURCE_CHAIN,
                NF_INET_POST_ROUTING,
                NF_IP_PRI_NAT_SRC,
            )
        });
        push(&|seq| masquerade_rules(seq, false));
        if plan.ipv6 {
            push(&|seq| masquerade_rules(seq, true));
        }
    }
    chain_messages(push, &Served::default(), plan);
}

/// The task of [`follow`], aborted when the session ends.
pub struct Follower(tokio::task::JoinHandle<()>);

impl Follower {
    pub fn start(socket: OwnedFd, served: watch::Receiver<Served>, plan: NatPlan) -> Self {
        Follower(tokio::spawn(follow(socket, served, plan)))
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follows the session's served ports for as long as it runs, keeping them in the session.
async fn follow(socket: OwnedFd, mut served: watch::Receiver<Served>, plan: NatPlan) {
    let mut socket = Socket::from_fd(socket);
    // The chain was made with nothing kept.
    let mut current = Served::default();
    loop {
        let kept = served.borrow_and_update().clone();
        if kept != current {
            match socket.apply(|push| chain_messages(push, &kept, &plan)) {
                Ok(()) => {
                    tracing::debug!(?kept, "loopback ports kept in the session");
                    current = kept;
                }
                Err(err) => {
                    tracing::warn!("cannot update the session's loopback redirect: {err}");
                    return;
                }
            }
        }
        if served.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nf::inspect::{attrs, expr_names};
    use nf::Batch;

    fn plan(ipv6: bool) -> NatPlan {
        NatPlan {
            target_localhost: true,
            ipv6,
            outgoing: None,
            dns: None,
        }
    }

    fn rules(kept: &Served, ipv6: bool) -> Vec<Vec<String>> {
        rules_of(kept, &plan(ipv6))
    }

    fn rules_of(kept: &Served, plan: &NatPlan) -> Vec<Vec<String>> {
        let batch = Batch::new(1, |push| chain_messages(push, kept, plan));
        let mut out = Vec::new();
        let mut rest = &batch.bytes[..];
        while !rest.is_empty() {
            let len = nf::inspect::u32_at(rest, 0) as usize;
            let kind = nf::inspect::u16_at(rest, 4) & 0xff;
            if kind == nf::NFT_MSG_NEWRULE {
                out.push(expr_names(&rest[..len]));
            }
            rest = &rest[len..];
        }
        out
    }

    #[test]
    fn the_table_is_not_owned_by_its_socket() {
        let batch = Batch::new(1, |push| install_messages(push, &plan(true)));
        let mut rest = &batch.bytes[..];
        let mut tables = Vec::new();
        while !rest.is_empty() {
            let len = nf::inspect::u32_at(rest, 0) as usize;
            if nf::inspect::u16_at(rest, 4) & 0xff == nf::NFT_MSG_NEWTABLE {
                tables.push(
                    attrs(&rest[20..len])
                        .iter()
                        .map(|(k, v)| (*k, v.to_vec()))
                        .collect::<Vec<_>>(),
                );
            }
            rest = &rest[len..];
        }
        assert_eq!(tables.len(), 1);
        assert!(tables[0].contains(&(nf::NFTA_TABLE_NAME, b"mirrord-net\0".to_vec())));
        assert!(tables[0].contains(&(nf::NFTA_TABLE_FLAGS, vec![0, 0, 0, 0])));
    }

    #[test]
    fn kept_ports_come_before_the_rewrites() {
        let kept = Served {
            tcp: vec![8080],
            udp: vec![53, 5353],
        };
        let r = rules(&kept, true);
        assert_eq!(r.len(), 3 + 4);
        for keep in &r[..3] {
            assert_eq!(keep, &["meta", "cmp", "payload", "cmp", "immediate"]);
        }
        for dnat in &r[3..] {
            assert_eq!(dnat.last().unwrap(), "nat");
        }
        assert_eq!(rules(&Served::default(), false).len(), 2);
    }

    #[test]
    fn with_an_outgoing_filter_kept_ports_are_loopback_only_and_the_catch_all_comes_last() {
        use super::super::outgoing::{Destination, FilterMode};
        let relay = RelayPorts {
            tcp4: 40001,
            udp4: 40002,
            tcp6: Some(40003),
            udp6: Some(40004),
        };
        let rules = OutgoingRules {
            mode: FilterMode::Remote,
            listed: vec![Destination::new(
                "10.0.0.0".parse().unwrap(),
                8,
                None,
                true,
                false,
            )],
            exempt: vec![],
        };
        let kept = Served {
            tcp: vec![8080],
            udp: vec![],
        };
        let mut plan = NatPlan {
            target_localhost: true,
            ipv6: true,
            outgoing: Some((rules, relay)),
            dns: None,
        };
        let r = rules_of(&kept, &plan);
        // 2 keeps (v4, v6), 1 listed return (TCP only), 4 loopback rewrites, 4 catch-alls.
        assert_eq!(r.len(), 2 + 1 + 4 + 4, "{r:?}");
        for keep in &r[..2] {
            assert_eq!(keep.last().unwrap(), "immediate");
            assert_eq!(keep.iter().filter(|e| *e == "payload").count(), 2);
        }
        assert_eq!(r[2].last().unwrap(), "immediate");
        for dnat in &r[3..7] {
            assert_eq!(dnat.last().unwrap(), "nat");
        }
        for relay in &r[7..] {
            assert_eq!(relay.last().unwrap(), "redir");
        }
        // Without the loopback redirect, loopback destinations are returned before the
        // catch-all instead.
        plan.target_localhost = false;
        let r = rules_of(&kept, &plan);
        assert_eq!(r.len(), 2 + 1 + 4 + 4, "{r:?}");
        for stays in &r[3..7] {
            assert_eq!(stays.last().unwrap(), "immediate");
        }
    }

    #[test]
    fn the_ipv4_rewrite_keeps_the_host_part() {
        let m = dnat_v4_rule(1, PROTOS[0]);
        let a = attrs(&m[20..]);
        let exprs = attrs(a[2].1);
        let data = |i: usize| attrs(attrs(exprs[i].1)[1].1);
        // The first byte of the destination is compared with 127.
        assert_eq!(data(4)[2], (nf::NFTA_PAYLOAD_OFFSET, &[0, 0, 0, 16][..]));
        assert_eq!(attrs(data(5)[2].1)[0], (nf::NFTA_DATA_VALUE, &[127][..]));
        // 240.0.0.0 – 240.255.255.255, mapped as a prefix.
        assert_eq!(attrs(data(6)[1].1)[0].1, &[240, 0, 0, 0]);
        assert_eq!(attrs(data(7)[1].1)[0].1, &[240, 255, 255, 255]);
        let nat = data(8);
        assert_eq!(nat[0], (NFTA_NAT_TYPE, &[0, 0, 0, 1][..]));
        assert_eq!(nat[4], (NFTA_NAT_FLAGS, &[0, 0, 0, 0x40][..]));
    }

    #[test]
    fn the_ipv6_rewrite_names_the_reserved_address() {
        let m = dnat_v6_rule(1, PROTOS[1]);
        let a = attrs(&m[20..]);
        let exprs = attrs(a[2].1);
        let data = |i: usize| attrs(attrs(exprs[i].1)[1].1);
        assert_eq!(data(1)[2].0, nf::NFTA_CMP_DATA | nf::NLA_F_NESTED);
        assert_eq!(attrs(data(1)[2].1)[0].1, &[17]);
        assert_eq!(
            attrs(data(5)[2].1)[0].1,
            &std::net::Ipv6Addr::LOCALHOST.octets()
        );
        assert_eq!(attrs(data(6)[1].1)[0].1, &LOOPBACK_V6.octets());
    }
}
