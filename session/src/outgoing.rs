//! The outgoing filter's rules: which of the session's flows leave from the host instead of
//! the target (`--local` / `--remote`), and how the session's namespace sends them there.
//!
//! The session has one way out, its TUN. A flow the filter keeps local is taken off that
//! path in the session's own nftables table (the one [`loopback`](super::loopback) keeps),
//! before routing sends it to the TUN: a `redirect` in the `output` NAT hook hands it to a
//! socket the session child opened on the session's loopback and passed to the client, which
//! lives in the host's namespaces and opens the same flow there ([`outgoing_relay`]
//! (super::outgoing_relay)). Whatever transport carries the session's packets (QUIC, a local
//! agent serving the TUN itself) never sees a local flow.
//!
//! The chain, in order (the first NAT rule that matches decides, conntrack keeps it for the
//! flow's life):
//!
//! ```text
//! meta l4proto tcp ip daddr 127.0.0.0/8 th dport 8080 return   # a port the session serves
//! ip daddr 10.96.0.10 th dport 53 return      # exempt: the session's resolvers, its own
//!                                             # addresses
//! # --local: each listed destination to the relay
//! meta l4proto tcp ip daddr 192.0.2.0/24 th dport 5432 redirect to :<relay tcp port>
//! meta l4proto udp ip daddr 192.0.2.0/24 th dport 5432 redirect to :<relay udp port>
//! # --remote: each listed destination stays on the TUN ...
//! meta l4proto tcp ip daddr 10.0.0.0/8 return
//! ... the loopback redirect's rules (the pod's localhost; or `return` without it) ...
//! # ... and every other TCP and UDP flow to the relay
//! meta nfproto ipv4 meta l4proto tcp redirect to :<relay tcp port>
//! ```
//!
//! DNS is not an outgoing flow to be filtered: queries to the session's resolvers (the
//! target's) stay on the TUN whatever the lists say (the DNS filter, whose redirect comes
//! before all of these rules, decides them by name: [`dns_filter`](super::dns_filter)), and
//! loopback destinations keep the localhost rule unless `--local` names them. ICMP always
//! goes to the target.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use mirrord_net_netfilter::{
    self as nf, Message, NFPROTO_IPV4, NFPROTO_IPV6, NFTA_REDIR_REG_PROTO_MIN, NFT_META_L4PROTO,
    NFT_META_NFPROTO, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER, NFT_REG_1,
    NFT_RETURN,
};
use mirrord_net_protocol::resolv_conf::ResolvConf;
use serde::{Deserialize, Serialize};

const TCP: u8 = libc::IPPROTO_TCP as u8;
const UDP: u8 = libc::IPPROTO_UDP as u8;

/// Which way the listed destinations go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterMode {
    /// `--local`: the listed destinations leave from the host, the rest from the target.
    Local,
    /// `--remote`: the listed destinations go to the target, the rest leave from the host.
    Remote,
}

/// Destinations by network, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destination {
    /// The network's address, its host bits zero.
    pub addr: IpAddr,
    pub prefix: u8,
    /// `None`: every port.
    pub port: Option<u16>,
    pub tcp: bool,
    pub udp: bool,
}

impl Destination {
    /// `addr/prefix` with the host bits cleared (a prefix beyond the family's length is
    /// clamped to it).
    pub fn new(addr: IpAddr, prefix: u8, port: Option<u16>, tcp: bool, udp: bool) -> Self {
        let (addr, prefix) = match addr {
            IpAddr::V4(v4) => {
                let prefix = prefix.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                (IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)), prefix)
            }
            IpAddr::V6(v6) => {
                let prefix = prefix.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                (IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), prefix)
            }
        };
        Destination {
            addr,
            prefix,
            port,
            tcp,
            udp,
        }
    }

    /// One host, every port, TCP and UDP.
    pub fn host(addr: IpAddr) -> Self {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        Destination::new(addr, prefix, None, true, true)
    }

    /// Whether a flow of `protocol` to `addr:port` is one of these (what the kernel's rules
    /// decide; here for tests and logs).
    pub fn matches(&self, protocol: u8, addr: IpAddr, port: u16) -> bool {
        let protocol_ok = (protocol == TCP && self.tcp) || (protocol == UDP && self.udp);
        protocol_ok
            && self.port.is_none_or(|p| p == port)
            && Destination::new(addr, self.prefix, None, true, true).addr == self.addr
    }

    fn protocols(&self) -> impl Iterator<Item = u8> {
        [(TCP, self.tcp), (UDP, self.udp)]
            .into_iter()
            .filter_map(|(p, on)| on.then_some(p))
    }
}

/// The filter as the session child applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingRules {
    pub mode: FilterMode,
    pub listed: Vec<Destination>,
    /// Never local: the session's resolvers on port 53 and its own addresses (filled in by
    /// the session from its resolv.conf and addresses).
    #[serde(default)]
    pub exempt: Vec<Destination>,
}

impl OutgoingRules {
    /// Where a flow of `protocol` to `addr:port` goes, `true` for the host, as the rules
    /// say (loopback destinations aside, which the localhost rule decides unless listed
    /// `--local`).
    pub fn is_local(&self, protocol: u8, addr: IpAddr, port: u16) -> bool {
        if self.exempt.iter().any(|d| d.matches(protocol, addr, port)) {
            return false;
        }
        let listed = self.listed.iter().any(|d| d.matches(protocol, addr, port));
        match self.mode {
            FilterMode::Local => listed,
            FilterMode::Remote => !listed && !addr.is_loopback(),
        }
    }
}

/// The nameservers of a resolv.conf, each as an exempt destination on port 53.
pub fn resolver_destinations(resolv_conf: &[u8]) -> Vec<Destination> {
    ResolvConf::parse_bytes(resolv_conf)
        .nameservers
        .into_iter()
        .map(|addr| {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            Destination::new(addr, prefix, Some(53), true, true)
        })
        .collect()
}

/// The local ports of the relay's sockets, by protocol and family (`None`: that family has
/// no socket, the session has no IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayPorts {
    pub tcp4: u16,
    pub udp4: u16,
    pub tcp6: Option<u16>,
    pub udp6: Option<u16>,
}

impl RelayPorts {
    fn port(&self, protocol: u8, v6: bool) -> Option<u16> {
        match (protocol, v6) {
            (TCP, false) => Some(self.tcp4),
            (UDP, false) => Some(self.udp4),
            (TCP, true) => self.tcp6,
            (_, true) => self.udp6,
            _ => None,
        }
    }
}

/// `meta l4proto P` and the destination network of `d` (its family's `meta nfproto` first).
fn match_destination(m: &mut Message, protocol: u8, d: &Destination) {
    m.meta(NFT_META_L4PROTO).cmp_eq(&[protocol]);
    match d.addr {
        IpAddr::V4(v4) => {
            m.meta(NFT_META_NFPROTO).cmp_eq(&[NFPROTO_IPV4]);
            if d.prefix > 0 {
                m.payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4);
                if d.prefix < 32 {
                    let mask = u32::MAX << (32 - u32::from(d.prefix));
                    m.and_mask(&mask.to_be_bytes());
                }
                m.cmp_eq(&v4.octets());
            }
        }
        IpAddr::V6(v6) => {
            m.meta(NFT_META_NFPROTO).cmp_eq(&[NFPROTO_IPV6]);
            if d.prefix > 0 {
                m.payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16);
                if d.prefix < 128 {
                    let mask = u128::MAX << (128 - u32::from(d.prefix));
                    m.and_mask(&mask.to_be_bytes());
                }
                m.cmp_eq(&v6.octets());
            }
        }
    }
    if let Some(port) = d.port {
        m.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
            .cmp_eq(&port.to_be_bytes());
    }
}

/// `redirect to :PORT`
fn redirect(m: &mut Message, port: u16) {
    m.immediate(NFT_REG_1, &port.to_be_bytes())
        .expr("redir", |m| {
            m.be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
        });
}

/// What the rules of `d` do.
#[derive(Clone, Copy)]
enum Action {
    Return,
    Relay,
}

fn push_rules(
    push: &mut nf::Push<'_>,
    table: &str,
    chain: &str,
    d: &Destination,
    action: Action,
    relay: &RelayPorts,
) {
    for protocol in d.protocols() {
        let to = match action {
            Action::Return => None,
            Action::Relay => match relay.port(protocol, d.addr.is_ipv6()) {
                Some(port) => Some(port),
                // No socket of that family: the session has no such addresses either.
                None => continue,
            },
        };
        let d = *d;
        push(&|seq| {
            nf::new_rule(seq, table, chain, |m| {
                match_destination(m, protocol, &d);
                match to {
                    Some(port) => redirect(m, port),
                    None => {
                        m.verdict(NFT_RETURN);
                    }
                }
            })
        });
    }
}

/// The rules that come before the loopback redirect's: the exempt destinations, and the
/// listed ones (relayed for `--local`, kept on the TUN for `--remote`).
pub fn before_loopback(
    push: &mut nf::Push<'_>,
    table: &str,
    chain: &str,
    rules: &OutgoingRules,
    relay: &RelayPorts,
) {
    for d in &rules.exempt {
        push_rules(push, table, chain, d, Action::Return, relay);
    }
    let action = match rules.mode {
        FilterMode::Local => Action::Relay,
        FilterMode::Remote => Action::Return,
    };
    for d in &rules.listed {
        push_rules(push, table, chain, d, action, relay);
    }
}

/// The rules that come after the loopback redirect's: for `--remote`, every other flow to
/// the relay (loopback destinations never reach them: the loopback rules, or `return`s in
/// their place, come first).
pub fn after_loopback(
    push: &mut nf::Push<'_>,
    table: &str,
    chain: &str,
    rules: &OutgoingRules,
    relay: &RelayPorts,
) {
    if rules.mode != FilterMode::Remote {
        return;
    }
    let all_v4 = Destination::new(Ipv4Addr::UNSPECIFIED.into(), 0, None, true, true);
    push_rules(push, table, chain, &all_v4, Action::Relay, relay);
    if relay.tcp6.is_some() {
        let all_v6 = Destination::new(Ipv6Addr::UNSPECIFIED.into(), 0, None, true, true);
        push_rules(push, table, chain, &all_v6, Action::Relay, relay);
    }
}

/// `return` for loopback destinations: where a `--remote` filter's catch-all must not see
/// them and the loopback redirect is off (`--no-target-localhost`).
pub fn loopback_stays(
    push: &mut nf::Push<'_>,
    table: &str,
    chain: &str,
    ipv6: bool,
    relay: &RelayPorts,
) {
    let v4 = Destination::new(Ipv4Addr::new(127, 0, 0, 0).into(), 8, None, true, true);
    push_rules(push, table, chain, &v4, Action::Return, relay);
    if ipv6 {
        push_rules(
            push,
            table,
            chain,
            &Destination::host(Ipv6Addr::LOCALHOST.into()),
            Action::Return,
            relay,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nf::inspect::{attrs, expr_names};
    use nf::Batch;

    fn d(s: &str, prefix: u8, port: Option<u16>) -> Destination {
        Destination::new(s.parse().unwrap(), prefix, port, true, true)
    }

    #[test]
    fn a_destination_clears_its_host_bits_and_matches_by_network_port_and_protocol() {
        let net = Destination::new("10.1.2.3".parse().unwrap(), 8, Some(5432), true, false);
        assert_eq!(net.addr, "10.0.0.0".parse::<IpAddr>().unwrap());
        assert!(net.matches(TCP, "10.200.0.1".parse().unwrap(), 5432));
        assert!(!net.matches(UDP, "10.200.0.1".parse().unwrap(), 5432));
        assert!(!net.matches(TCP, "10.200.0.1".parse().unwrap(), 5433));
        assert!(!net.matches(TCP, "11.0.0.1".parse().unwrap(), 5432));
        let v6 = d("2001:db8::1", 32, None);
        assert!(v6.matches(UDP, "2001:db8:ffff::9".parse().unwrap(), 1));
        assert!(!v6.matches(UDP, "10.0.0.1".parse().unwrap(), 1));
        let everything = d("0.0.0.0", 0, None);
        assert!(everything.matches(TCP, "192.0.2.1".parse().unwrap(), 80));
    }

    #[test]
    fn local_lists_send_only_what_they_name_and_remote_lists_everything_else() {
        let mut rules = OutgoingRules {
            mode: FilterMode::Local,
            listed: vec![d("127.0.0.1", 32, Some(5432)), d("192.0.2.0", 24, None)],
            exempt: resolver_destinations(b"search x\nnameserver 192.0.2.53\n"),
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(rules.is_local(TCP, ip("127.0.0.1"), 5432));
        assert!(!rules.is_local(TCP, ip("127.0.0.1"), 5433));
        assert!(rules.is_local(UDP, ip("192.0.2.9"), 9));
        assert!(
            !rules.is_local(UDP, ip("192.0.2.53"), 53),
            "the resolver stays"
        );
        assert!(rules.is_local(UDP, ip("192.0.2.53"), 54));
        assert!(!rules.is_local(TCP, ip("198.51.100.1"), 80));
        rules.mode = FilterMode::Remote;
        assert!(!rules.is_local(UDP, ip("192.0.2.9"), 9));
        assert!(rules.is_local(TCP, ip("198.51.100.1"), 80));
        assert!(
            !rules.is_local(TCP, ip("127.0.0.1"), 80),
            "localhost keeps its rule"
        );
        assert!(!rules.is_local(UDP, ip("192.0.2.53"), 53));
    }

    #[test]
    fn resolvers_are_read_from_resolv_conf() {
        let text = b"# c\nnameserver 10.96.0.10\nnameserver fe80::1%eth0\nnameserver bogus\n";
        let got = resolver_destinations(text);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], d("10.96.0.10", 32, Some(53)));
        assert_eq!(got[1].addr, "fe80::1".parse::<IpAddr>().unwrap());
    }

    fn rules_of(build: impl FnOnce(&mut nf::Push<'_>)) -> Vec<Vec<String>> {
        let batch = Batch::new(1, |push| build(push));
        let mut out = Vec::new();
        let mut rest = &batch.bytes[..];
        while !rest.is_empty() {
            let len = nf::inspect::u32_at(rest, 0) as usize;
            if nf::inspect::u16_at(rest, 4) & 0xff == nf::NFT_MSG_NEWRULE {
                out.push(expr_names(&rest[..len]));
            }
            rest = &rest[len..];
        }
        out
    }

    const RELAY: RelayPorts = RelayPorts {
        tcp4: 40001,
        udp4: 40002,
        tcp6: None,
        udp6: None,
    };

    #[test]
    fn a_local_entry_becomes_one_redirect_per_protocol() {
        let rules = OutgoingRules {
            mode: FilterMode::Local,
            listed: vec![d("192.0.2.0", 24, Some(5432))],
            exempt: vec![],
        };
        let got = rules_of(|push| before_loopback(push, "t", "c", &rules, &RELAY));
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[0],
            [
                "meta",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "bitwise",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "redir"
            ]
        );
        assert!(rules_of(|push| after_loopback(push, "t", "c", &rules, &RELAY)).is_empty());
    }

    #[test]
    fn the_redirect_names_the_relay_port_of_its_protocol() {
        let rules = OutgoingRules {
            mode: FilterMode::Remote,
            listed: vec![],
            exempt: vec![],
        };
        let batch = Batch::new(1, |push| after_loopback(push, "t", "c", &rules, &RELAY));
        let mut ports = Vec::new();
        let mut rest = &batch.bytes[..];
        while !rest.is_empty() {
            let len = nf::inspect::u32_at(rest, 0) as usize;
            if nf::inspect::u16_at(rest, 4) & 0xff == nf::NFT_MSG_NEWRULE {
                let a = attrs(&rest[20..len]);
                let exprs = attrs(a[2].1);
                // [meta, cmp, meta, cmp, immediate, redir]: no address, no port.
                assert_eq!(exprs.len(), 6);
                let immediate = attrs(attrs(exprs[4].1)[1].1);
                ports.push(attrs(immediate[1].1)[0].1.to_vec());
            }
            rest = &rest[len..];
        }
        assert_eq!(
            ports,
            [
                40001u16.to_be_bytes().to_vec(),
                40002u16.to_be_bytes().to_vec()
            ]
        );
    }

    #[test]
    fn without_an_ipv6_socket_ipv6_entries_are_not_redirected() {
        let rules = OutgoingRules {
            mode: FilterMode::Local,
            listed: vec![d("2001:db8::", 32, None), d("::1", 128, Some(53))],
            exempt: vec![d("fd00::1", 128, Some(53))],
        };
        // The exempt `return`s stay (harmless), the redirects go.
        let got = rules_of(|push| before_loopback(push, "t", "c", &rules, &RELAY));
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|r| r.last().unwrap() == "immediate"));
    }
}
