//! The DNS filter's decisions (`--local-dns` / `--remote-dns`, mirrord's
//! `feature.network.dns.filter`): which of the session's DNS queries this machine's resolver
//! answers instead of the target's. Pure: patterns, the query's name, the forwarded queries'
//! IDs, and the session table's rules; [`dns_relay`](super::dns_relay) moves the datagrams.
//!
//! Every query the session sends to one of its resolvers (the target's, from its resolv.conf)
//! on port 53, UDP and TCP, is redirected, in the session's nftables table, to a socket of the
//! DNS relay on the session's loopback, before any other rule of the chain:
//!
//! ```text
//! meta mark != 0x6d6e6453 meta l4proto udp ip daddr 10.96.0.10 udp dport 53 redirect to :<relay>
//! meta mark != 0x6d6e6453 meta l4proto tcp ip daddr 10.96.0.10 tcp dport 53 redirect to :<relay>
//! ... the kept ports, the outgoing filter, the loopback redirect (see `outgoing`) ...
//! ```
//!
//! The relay, in the client (the host's namespaces), reads the query's first question
//! ([`query_name`]) and decides ([`DnsRules::to_host`]):
//!
//! - this machine's resolver: the query goes, unchanged, from a host socket to the first
//!   nameserver of the host's `/etc/resolv.conf`, and its answer back to the asker from the
//!   relay's socket (conntrack turns the answer's source back into the resolver the asker
//!   sent to);
//! - the target's resolver: the query leaves from a socket the session child opened in the
//!   session's namespace with the mark above, so the redirect lets it pass and it takes the
//!   path every other packet of the session takes (the TUN, the agent), to the resolver the
//!   asker chose (conntrack's original destination). One socket carries every such query,
//!   so each gets an ID of its own on the way ([`Forwards`]) and its own back on the answer.
//!
//! Patterns: `NAME` is that name only; `*.SUFFIX` every name below SUFFIX (not SUFFIX
//! itself). Case does not matter and a trailing dot is ignored. Names are matched as the
//! resolver of the program sends them: a short name is first tried with the session's
//! search domains (the target's, `ndots:5` in Kubernetes), and those expanded names are
//! decided on their own, so name patterns fully qualified (`db.corp.example`,
//! `*.corp.example`). A query without a question, or one that does not decode, goes where
//! unmatched names go.
//!
//! A query over TCP (after a truncated answer, or `options use-vc`) is decided the same way,
//! by the first query of its connection (see [`dns_relay`](super::dns_relay)).

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, MessageType, OpCode, Query};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use mirrord_net_netfilter::{
    self as nf, Message, NFPROTO_IPV4, NFPROTO_IPV6, NFTA_REDIR_REG_PROTO_MIN, NFT_META_L4PROTO,
    NFT_META_MARK, NFT_META_NFPROTO, NFT_PAYLOAD_NETWORK_HEADER, NFT_PAYLOAD_TRANSPORT_HEADER,
    NFT_REG_1,
};

/// The mark of the relay's socket toward the target's resolvers, which the redirect skips
/// ("mndS").
pub const FORWARD_MARK: u32 = 0x6d6e_6453;
/// How long a forwarded query waits for its answer before its ID is given back.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

const UDP: u8 = libc::IPPROTO_UDP as u8;
const TCP: u8 = libc::IPPROTO_TCP as u8;

/// Which way the listed names go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsMode {
    /// `--local-dns`: the listed names are resolved by this machine, the rest by the target.
    Local,
    /// `--remote-dns`: the listed names are resolved by the target, the rest by this machine.
    Remote,
}

/// One name pattern, lower case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamePattern {
    /// This name only.
    Exact(String),
    /// Every name below this one.
    Below(String),
}

impl NamePattern {
    /// Parses `NAME` or `*.SUFFIX` (see the module comment).
    pub fn parse(text: &str) -> Result<NamePattern, String> {
        let bad = |why: &str| format!("{text:?}: {why}");
        let lower = text.trim().to_ascii_lowercase();
        let lower = lower.strip_suffix('.').unwrap_or(&lower);
        let (below, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower),
        };
        if name.contains('*') {
            return Err(bad(
                "a pattern is a name or *.SUFFIX (`*` only as the first label)",
            ));
        }
        if name.contains(':') || name.contains('/') {
            return Err(bad(
                "a pattern is a host name: DNS queries carry no port, and addresses are \
                 never looked up",
            ));
        }
        if !valid_name(name) {
            return Err(bad("not a host name (labels of letters, digits, - and _)"));
        }
        Ok(if below {
            NamePattern::Below(name.to_owned())
        } else {
            NamePattern::Exact(name.to_owned())
        })
    }

    /// Whether `name` (lower case, no trailing dot) is one of these.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Exact(exact) => name == exact,
            NamePattern::Below(suffix) => name
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        }
    }
}

impl std::fmt::Display for NamePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamePattern::Exact(name) => f.write_str(name),
            NamePattern::Below(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// A DNS name: labels of letters, digits, `-` and `_` (63 characters at most each),
/// dot-separated, 253 characters at most.
pub fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The filter: the mode and its patterns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRules {
    pub mode: DnsMode,
    pub patterns: Vec<NamePattern>,
}

impl DnsRules {
    /// Whether a query for `name` goes to this machine's resolver. `None` (no name: not a
    /// query, or undecodable) goes where unmatched names go.
    pub fn to_host(&self, name: Option<&str>) -> bool {
        let listed = name.is_some_and(|name| {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            self.patterns.iter().any(|p| p.matches(&name))
        });
        match self.mode {
            DnsMode::Local => listed,
            DnsMode::Remote => !listed,
        }
    }
}

/// The name of a standard query's first question, lower case, without the trailing dot;
/// `None` for anything else (an answer, another opcode, no question, bytes that do not
/// decode).
pub fn query_name(packet: &[u8]) -> Option<String> {
    let mut decoder = BinDecoder::new(packet);
    let header = Header::read(&mut decoder).ok()?;
    if header.message_type != MessageType::Query
        || header.op_code != OpCode::Query
        || header.counts.queries == 0
    {
        return None;
    }
    let query = Query::read(&mut decoder).ok()?;
    let name = query.name().to_ascii().to_ascii_lowercase();
    Some(match name.strip_suffix('.') {
        Some(stripped) => stripped.to_owned(),
        None => name,
    })
}

/// The ID of a DNS message (its first two bytes), `None` when shorter than a header.
pub fn message_id(packet: &[u8]) -> Option<u16> {
    (packet.len() >= 12).then(|| u16::from_be_bytes([packet[0], packet[1]]))
}

/// Sets the ID of a DNS message (at least two bytes long).
pub fn set_message_id(packet: &mut [u8], id: u16) {
    packet[..2].copy_from_slice(&id.to_be_bytes());
}

/// A query forwarded to the target's resolver, waiting for its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    asker: SocketAddr,
    id: u16,
    resolver: SocketAddr,
    sent: Instant,
}

/// The queries forwarded on the one socket toward the target's resolvers, by the ID each
/// got on the way (chosen at random among the free ones, so that an answer cannot be
/// guessed more easily than the asker's own).
#[derive(Debug, Default)]
pub struct Forwards {
    pending: HashMap<u16, Pending>,
    random: RandomState,
    counter: u64,
    /// When the table was last swept of expired queries.
    swept: Option<Instant>,
}

impl Forwards {
    /// Records a query of `asker` with `id` forwarded to `resolver`; returns the ID it
    /// travels with, `None` when every ID is taken (the query is dropped, as a full
    /// resolver would).
    pub fn insert(
        &mut self,
        asker: SocketAddr,
        id: u16,
        resolver: SocketAddr,
        now: Instant,
    ) -> Option<u16> {
        // A sweep walks the whole table: at most once a second.
        if self
            .swept
            .is_none_or(|swept| now.saturating_duration_since(swept) >= Duration::from_secs(1))
        {
            self.expire(now);
            self.swept = Some(now);
        }
        if self.pending.len() > usize::from(u16::MAX) {
            return None;
        }
        self.counter = self.counter.wrapping_add(1);
        let mut wire = self.random.hash_one(self.counter) as u16;
        while self.pending.contains_key(&wire) {
            wire = wire.wrapping_add(1);
        }
        self.pending.insert(
            wire,
            Pending {
                asker,
                id,
                resolver,
                sent: now,
            },
        );
        Some(wire)
    }

    /// The asker and its own ID for an answer with `wire_id` from `from`; `None` for an
    /// answer nobody waits for (late, or not from the resolver asked).
    pub fn answer(&mut self, from: SocketAddr, wire_id: u16) -> Option<(SocketAddr, u16)> {
        let pending = self.pending.get(&wire_id)?;
        if !same_endpoint(pending.resolver, from) {
            return None;
        }
        let pending = self.pending.remove(&wire_id)?;
        Some((pending.asker, pending.id))
    }

    /// Forgets the queries that waited longer than [`FORWARD_TIMEOUT`].
    pub fn expire(&mut self, now: Instant) {
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.sent) < FORWARD_TIMEOUT);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Addresses compared with IPv4-mapped IPv6 taken as IPv4.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// The local ports of the relay's sockets on the session's loopback (`None`: no IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DnsPorts {
    pub udp4: u16,
    pub udp6: Option<u16>,
    /// The TCP listeners.
    pub tcp4: u16,
    pub tcp6: Option<u16>,
    /// The sockets toward the target's resolvers (unconnected: `/proc/net/udp` lists them).
    pub forward4: u16,
    pub forward6: Option<u16>,
}

impl DnsPorts {
    /// Every UDP port of the relay's own sockets, which are no program's.
    pub fn udp(&self) -> Vec<u16> {
        [
            Some(self.udp4),
            self.udp6,
            Some(self.forward4),
            self.forward6,
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Every TCP port the relay listens on, which are no program's.
    pub fn tcp(&self) -> Vec<u16> {
        [Some(self.tcp4), self.tcp6].into_iter().flatten().collect()
    }
}

/// The redirects of the session's resolvers' port 53 to the relay, the first rules of the
/// chain. A resolver of a family the relay has no socket for is left alone.
pub fn redirect_rules(
    push: &mut nf::Push<'_>,
    table: &str,
    chain: &str,
    resolvers: &[IpAddr],
    ports: &DnsPorts,
) {
    for &resolver in resolvers {
        let family = match resolver {
            IpAddr::V4(_) => Some((ports.udp4, ports.tcp4)),
            IpAddr::V6(_) => ports.udp6.zip(ports.tcp6),
        };
        let Some((udp, tcp)) = family else {
            continue;
        };
        for (protocol, port) in [(UDP, udp), (TCP, tcp)] {
            push(&|seq| {
                nf::new_rule(seq, table, chain, |m| {
                    redirect_rule(m, resolver, protocol, port);
                })
            });
        }
    }
}

/// `meta mark != FORWARD_MARK meta l4proto PROTOCOL ip daddr R th dport 53 redirect to :PORT`
fn redirect_rule(m: &mut Message, resolver: IpAddr, protocol: u8, port: u16) {
    m.meta(NFT_META_MARK).cmp_neq(&FORWARD_MARK.to_ne_bytes());
    m.meta(NFT_META_L4PROTO).cmp_eq(&[protocol]);
    match resolver {
        IpAddr::V4(v4) => {
            m.meta(NFT_META_NFPROTO).cmp_eq(&[NFPROTO_IPV4]);
            m.payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4)
                .cmp_eq(&v4.octets());
        }
        IpAddr::V6(v6) => {
            m.meta(NFT_META_NFPROTO).cmp_eq(&[NFPROTO_IPV6]);
            m.payload(NFT_PAYLOAD_NETWORK_HEADER, 24, 16)
                .cmp_eq(&v6.octets());
        }
    }
    m.payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2)
        .cmp_eq(&53u16.to_be_bytes());
    m.immediate(NFT_REG_1, &port.to_be_bytes())
        .expr("redir", |m| {
            m.be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Message as DnsMessage;
    use hickory_proto::rr::{Name, RecordType};
    use std::str::FromStr;

    fn query(name: &str, id: u16) -> Vec<u8> {
        let mut message = DnsMessage::query();
        message.metadata.id = id;
        message.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        message.to_vec().unwrap()
    }

    #[test]
    fn patterns_parse_exact_names_and_suffixes_in_any_case() {
        assert_eq!(
            NamePattern::parse("DB.Corp.Example."),
            Ok(NamePattern::Exact("db.corp.example".into()))
        );
        assert_eq!(
            NamePattern::parse("*.corp.example"),
            Ok(NamePattern::Below("corp.example".into()))
        );
        for (bad, why) in [
            ("", "not a host name"),
            ("*", "`*` only"),
            ("a.*.example", "`*` only"),
            ("db.example:5432", "no port"),
            ("10.0.0.0/8", "no port"),
            ("bad name", "not a host name"),
            ("a..b", "not a host name"),
        ] {
            let err = NamePattern::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.starts_with(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn a_suffix_pattern_matches_names_below_it_only() {
        let below = NamePattern::parse("*.corp.example").unwrap();
        assert!(below.matches("db.corp.example"));
        assert!(below.matches("a.b.corp.example"));
        assert!(!below.matches("corp.example"));
        assert!(!below.matches("xcorp.example"));
        assert!(!below.matches("db.corp.example.svc.cluster.local"));
        let exact = NamePattern::parse("db.corp.example").unwrap();
        assert!(exact.matches("db.corp.example"));
        assert!(!exact.matches("x.db.corp.example"));
    }

    #[test]
    fn local_lists_send_only_their_names_to_the_host_and_remote_lists_the_rest() {
        let mut rules = DnsRules {
            mode: DnsMode::Local,
            patterns: vec![
                NamePattern::parse("*.corp.example").unwrap(),
                NamePattern::parse("db.home").unwrap(),
            ],
        };
        assert!(rules.to_host(Some("API.corp.example.")));
        assert!(rules.to_host(Some("db.home")));
        assert!(!rules.to_host(Some("web.team.svc.cluster.local")));
        assert!(!rules.to_host(None));
        rules.mode = DnsMode::Remote;
        assert!(!rules.to_host(Some("api.corp.example")));
        assert!(rules.to_host(Some("web.team.svc.cluster.local")));
        assert!(rules.to_host(None));
    }

    #[test]
    fn the_name_of_a_query_is_its_first_question() {
        assert_eq!(
            query_name(&query("Web.Svc.Cluster.Local.", 7)).as_deref(),
            Some("web.svc.cluster.local")
        );
        assert_eq!(query_name(&query(".", 7)).as_deref(), Some(""));
        // An answer, a header alone, garbage, a truncated question.
        let mut answer = query("a.example.", 1);
        answer[2] |= 0x80;
        assert_eq!(query_name(&answer), None);
        let mut no_question = query("a.example.", 1);
        no_question.truncate(12);
        no_question[5] = 0;
        assert_eq!(query_name(&no_question), None);
        assert_eq!(query_name(b"\x00\x01\x01"), None);
        let mut cut = query("a.example.", 1);
        cut.truncate(15);
        assert_eq!(query_name(&cut), None);
        // Another opcode (NOTIFY).
        let mut notify = query("a.example.", 1);
        notify[2] = 4 << 3;
        assert_eq!(query_name(&notify), None);
    }

    #[test]
    fn ids_are_set_and_read_in_place() {
        let mut packet = query("a.example.", 0x1234);
        assert_eq!(message_id(&packet), Some(0x1234));
        set_message_id(&mut packet, 0xbeef);
        assert_eq!(message_id(&packet), Some(0xbeef));
        assert_eq!(query_name(&packet).as_deref(), Some("a.example"));
        assert_eq!(message_id(&[0; 11]), None);
    }

    #[test]
    fn forwarded_queries_get_distinct_ids_and_their_answers_find_their_asker() {
        let mut forwards = Forwards::default();
        let now = Instant::now();
        let resolver: SocketAddr = "10.96.0.10:53".parse().unwrap();
        let a: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let b: SocketAddr = "10.0.0.9:40001".parse().unwrap();
        // Two askers with the same ID.
        let wa = forwards.insert(a, 5, resolver, now).unwrap();
        let wb = forwards.insert(b, 5, resolver, now).unwrap();
        assert_ne!(wa, wb);
        assert_eq!(forwards.len(), 2);
        // An answer from elsewhere is not one.
        let other: SocketAddr = "10.96.0.11:53".parse().unwrap();
        assert_eq!(forwards.answer(other, wb), None);
        assert_eq!(forwards.answer(resolver, wb), Some((b, 5)));
        assert_eq!(forwards.answer(resolver, wb), None, "answered once");
        // The mapped form of the resolver's address is the same resolver.
        let mapped: SocketAddr = "[::ffff:10.96.0.10]:53".parse().unwrap();
        assert_eq!(forwards.answer(mapped, wa), Some((a, 5)));
        assert!(forwards.is_empty());
        // Unanswered queries are forgotten after the timeout.
        forwards.insert(a, 6, resolver, now).unwrap();
        forwards.expire(now + FORWARD_TIMEOUT);
        assert!(forwards.is_empty());
    }

    #[test]
    fn every_free_id_can_be_taken() {
        let mut forwards = Forwards::default();
        let now = Instant::now();
        let resolver: SocketAddr = "10.96.0.10:53".parse().unwrap();
        let asker: SocketAddr = "10.0.0.9:40000".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for id in 0..=u16::MAX {
            let wire = forwards.insert(asker, id, resolver, now).unwrap();
            assert!(seen.insert(wire), "{wire} given twice");
        }
        assert_eq!(forwards.insert(asker, 0, resolver, now), None);
    }

    #[test]
    fn the_redirect_skips_marked_packets_and_names_the_resolver_and_port_53() {
        let ports = DnsPorts {
            udp4: 40001,
            udp6: None,
            tcp4: 40003,
            tcp6: None,
            forward4: 40002,
            forward6: None,
        };
        let resolvers: Vec<IpAddr> =
            vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()];
        let batch = nf::Batch::new(1, |push| redirect_rules(push, "t", "c", &resolvers, &ports));
        let mut rules = Vec::new();
        let mut rest = &batch.bytes[..];
        while !rest.is_empty() {
            let len = nf::inspect::u32_at(rest, 0) as usize;
            if nf::inspect::u16_at(rest, 4) & 0xff == nf::NFT_MSG_NEWRULE {
                rules.push(nf::inspect::expr_names(&rest[..len]));
            }
            rest = &rest[len..];
        }
        // No IPv6 socket: the IPv6 resolver is left alone. UDP and TCP for the IPv4 one.
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0], rules[1]);
        assert_eq!(
            rules[0],
            [
                "meta",
                "cmp",
                "meta",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "redir"
            ]
        );
    }
}
