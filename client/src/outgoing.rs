//! The outgoing filter as the user writes it: `--local` and `--remote` entries, in mirrord's
//! `feature.network.outgoing.filter` syntax, parsed and resolved into the session's rules
//! ([`session::OutgoingRules`]).
//!
//! An entry is `[tcp://|udp://]HOST[:PORT]`, where HOST is an IPv4 address, an IPv4 CIDR, a
//! bracketed IPv6 address or CIDR (`[2001:db8::/32]:443`), a host name, or nothing (`:53`:
//! every address). Without a protocol an entry is TCP and UDP; without a port, every port.
//! A bare IPv6 address or CIDR without brackets takes no port.
//!
//! Names in `--local` are resolved once, before the agent starts, by this machine's resolver
//! (every address it gives): a name it cannot resolve ends the run there, with one line.
//! Names in `--remote` are resolved once by the target's resolver: the agent asks it as the
//! target would (its resolv.conf and hosts file), after the hello and before the session is
//! made ([`OutgoingArgs::remote_names`]); a name it cannot resolve ends the run with one
//! line.
//!
//! The DNS filter's patterns (`--local-dns` / `--remote-dns`, mirrord's
//! `feature.network.dns.filter`) are parsed here too ([`NamePattern`]); the session decides
//! with them ([`session::DnsRules`]).

use std::net::{IpAddr, ToSocketAddrs};

use clap::Args;

use mirrord_net_session::{
    valid_dns_name, Destination, DnsMode, DnsRules, FilterMode, NamePattern, OutgoingRules,
};

/// `--local` / `--remote`.
#[derive(Debug, Clone, Default, Args)]
pub struct OutgoingArgs {
    /// Connections to DEST leave from this machine, as its own programs' would; everything
    /// else goes to the target (repeatable). DEST: `[tcp://|udp://]HOST[:PORT]`, HOST an
    /// address, a CIDR (`10.0.0.0/8`, `[fd00::/8]`), a name (resolved here) or empty
    /// (`:5432`). `--local 127.0.0.1` reaches this machine's loopback services.
    #[arg(long = "local", value_name = "DEST", value_parser = parse_entry, conflicts_with = "remote")]
    pub local: Vec<Entry>,
    /// Only connections to DEST go to the target; every other one leaves from this machine
    /// (repeatable; DEST as for --local, a name resolved by the target's resolver). The
    /// session's DNS servers and localhost keep their own rules.
    #[arg(long = "remote", value_name = "DEST", value_parser = parse_entry)]
    pub remote: Vec<Entry>,
    /// Names matching NAME-PATTERN are resolved by this machine's resolver, every other name
    /// by the target's (repeatable). NAME-PATTERN: a name (`db.corp.example`) or `*.SUFFIX`
    /// (every name below SUFFIX); any case, a trailing dot ignored.
    #[arg(long = "local-dns", value_name = "NAME-PATTERN", value_parser = NamePattern::parse, conflicts_with = "remote_dns")]
    pub local_dns: Vec<NamePattern>,
    /// Only names matching NAME-PATTERN are resolved by the target's resolver; every other
    /// name by this machine's (repeatable; NAME-PATTERN as for --local-dns).
    #[arg(long = "remote-dns", value_name = "NAME-PATTERN", value_parser = NamePattern::parse)]
    pub remote_dns: Vec<NamePattern>,
}

/// Which protocols an entry covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocols {
    Both,
    Tcp,
    Udp,
}

/// What an entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Every address (`:PORT`).
    Any,
    /// An address (prefix = its length) or a network.
    Net(IpAddr, u8),
    Name(String),
}

/// One `--local`/`--remote` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub protocols: Protocols,
    pub host: Host,
    pub port: Option<u16>,
}

/// Parses one entry (see the module comment for the forms).
pub fn parse_entry(text: &str) -> Result<Entry, String> {
    let bad = |why: &str| format!("{text:?}: {why}");
    let lower = text.to_ascii_lowercase();
    let (protocols, rest) = if let Some(rest) = lower.strip_prefix("tcp://") {
        (Protocols::Tcp, &text[text.len() - rest.len()..])
    } else if let Some(rest) = lower.strip_prefix("udp://") {
        (Protocols::Udp, &text[text.len() - rest.len()..])
    } else if lower.contains("://") {
        return Err(bad("the protocol must be tcp:// or udp://"));
    } else {
        (Protocols::Both, text)
    };
    let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
        // [v6], [v6/len], [v6]/len, each with an optional :PORT
        let (inside, after) = inner
            .split_once(']')
            .ok_or_else(|| bad("an unclosed '['"))?;
        let (prefix_after, port) = match after.split_once(':') {
            Some((before, port)) => (before, Some(port)),
            None => (after, None),
        };
        let net = match prefix_after.strip_prefix('/') {
            Some(len) => format!("{inside}/{len}"),
            None if prefix_after.is_empty() => inside.to_owned(),
            None => return Err(bad("unexpected text after ']'")),
        };
        let host = parse_net(&net).filter(|h| matches!(h, Host::Net(IpAddr::V6(_), _)));
        (
            host.ok_or_else(|| bad("not an IPv6 address or CIDR"))?,
            port,
        )
    } else if rest.matches(':').count() >= 2 {
        // A bare IPv6 address or CIDR: no port.
        (
            parse_net(rest).ok_or_else(|| bad("not an IPv6 address or CIDR"))?,
            None,
        )
    } else {
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        };
        let host = if host.is_empty() {
            Host::Any
        } else if let Some(net) = parse_net(host) {
            net
        } else if valid_name(host) {
            Host::Name(host.to_ascii_lowercase())
        } else {
            return Err(bad("not an address, a CIDR or a host name"));
        };
        (host, port)
    };
    let port = match port {
        None => None,
        Some(port) => Some(
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("the port must be 1-65535"))?,
        ),
    };
    if host == Host::Any && port.is_none() {
        return Err(bad("names nothing (give a host, a port or both)"));
    }
    Ok(Entry {
        protocols,
        host,
        port,
    })
}

/// `ADDR` or `ADDR/LEN`.
fn parse_net(text: &str) -> Option<Host> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(len) => len.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some(Host::Net(addr, len))
}

/// A DNS name, a trailing dot allowed; all digits and dots would be a malformed address,
/// not a name.
fn valid_name(text: &str) -> bool {
    let text = text.strip_suffix('.').unwrap_or(text);
    valid_dns_name(text) && !text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Why the filter cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OutgoingError {
    #[error("--local {name}: this machine cannot resolve it: {reason}")]
    Unresolved { name: String, reason: String },
    #[error("--remote {name}: the target cannot resolve it: {reason}")]
    UnresolvedRemote { name: String, reason: String },
}

impl OutgoingArgs {
    /// The names of the `--remote` entries, which the target resolves (in entry order, once
    /// each); empty for `--local` entries.
    pub fn remote_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for entry in &self.remote {
            if let Host::Name(name) = &entry.host {
                if !names.contains(name) {
                    names.push(name.clone());
                }
            }
        }
        names
    }

    /// The session's rules, `None` without a filter. `resolve` looks a name of the entries up:
    /// this machine's resolver for `--local`, the target's for `--remote`.
    pub fn rules_with(
        &self,
        resolve: impl Fn(&str) -> Result<Vec<IpAddr>, String>,
    ) -> Result<Option<OutgoingRules>, OutgoingError> {
        let (mode, entries) = match (self.local.is_empty(), self.remote.is_empty()) {
            (true, true) => return Ok(None),
            (false, _) => (FilterMode::Local, &self.local),
            (true, false) => (FilterMode::Remote, &self.remote),
        };
        let mut listed = Vec::new();
        for entry in entries {
            let (tcp, udp) = match entry.protocols {
                Protocols::Both => (true, true),
                Protocols::Tcp => (true, false),
                Protocols::Udp => (false, true),
            };
            let nets = match &entry.host {
                Host::Any => vec![(IpAddr::from([0u8; 4]), 0), (IpAddr::from([0u16; 8]), 0)],
                Host::Net(addr, len) => vec![(*addr, *len)],
                Host::Name(name) => resolve(name)
                    .map_err(|reason| {
                        let name = name.clone();
                        match mode {
                            FilterMode::Local => OutgoingError::Unresolved { name, reason },
                            FilterMode::Remote => OutgoingError::UnresolvedRemote { name, reason },
                        }
                    })?
                    .into_iter()
                    .map(|addr| (addr, if addr.is_ipv4() { 32 } else { 128 }))
                    .collect(),
            };
            for (addr, len) in nets {
                let destination = Destination::new(addr, len, entry.port, tcp, udp);
                if !listed.contains(&destination) {
                    listed.push(destination);
                }
            }
        }
        Ok(Some(OutgoingRules {
            mode,
            listed,
            exempt: Vec::new(),
        }))
    }

    /// The DNS filter, `None` without one.
    pub fn dns_rules(&self) -> Option<DnsRules> {
        match (self.local_dns.is_empty(), self.remote_dns.is_empty()) {
            (true, true) => None,
            (false, _) => Some(DnsRules {
                mode: DnsMode::Local,
                patterns: self.local_dns.clone(),
            }),
            (true, false) => Some(DnsRules {
                mode: DnsMode::Remote,
                patterns: self.remote_dns.clone(),
            }),
        }
    }

    /// [`rules_with`](Self::rules_with) this machine's resolver: for `--local` entries, and
    /// `--remote` ones without names (see [`remote_names`](Self::remote_names)).
    pub fn rules(&self) -> Result<Option<OutgoingRules>, OutgoingError> {
        self.rules_with(|name| {
            let addrs: Vec<IpAddr> = (name, 0)
                .to_socket_addrs()
                .map_err(|err| err.to_string())?
                .map(|a| a.ip())
                .collect();
            if addrs.is_empty() {
                return Err("no address".into());
            }
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(protocols: Protocols, host: Host, port: Option<u16>) -> Entry {
        Entry {
            protocols,
            host,
            port,
        }
    }

    fn net(s: &str, len: u8) -> Host {
        Host::Net(s.parse().unwrap(), len)
    }

    #[test]
    fn mirrords_forms_parse() {
        use Protocols::*;
        let cases = [
            ("127.0.0.1", entry(Both, net("127.0.0.1", 32), None)),
            (
                "127.0.0.1:5432",
                entry(Both, net("127.0.0.1", 32), Some(5432)),
            ),
            (
                "tcp://1.1.1.0/24:1337",
                entry(Tcp, net("1.1.1.0", 24), Some(1337)),
            ),
            ("UDP://:53", entry(Udp, Host::Any, Some(53))),
            (
                "localhost:5432",
                entry(Both, Host::Name("localhost".into()), Some(5432)),
            ),
            (
                "db.Corp.example",
                entry(Both, Host::Name("db.corp.example".into()), None),
            ),
            ("[::1]:8080", entry(Both, net("::1", 128), Some(8080))),
            (
                "[2001:db8::/32]:443",
                entry(Both, net("2001:db8::", 32), Some(443)),
            ),
            ("[2001:db8::]/32", entry(Both, net("2001:db8::", 32), None)),
            ("fd00::/8", entry(Both, net("fd00::", 8), None)),
            ("10.0.0.0/8", entry(Both, net("10.0.0.0", 8), None)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_entry(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn malformed_entries_are_refused_with_the_reason() {
        for (text, why) in [
            ("", "names nothing"),
            (":", "the port"),
            ("http://x", "tcp:// or udp://"),
            ("10.0.0.0/33", "not an address"),
            ("1.2.3.4:99999", "the port"),
            ("1.2.3.4:0", "the port"),
            ("[::1", "unclosed"),
            ("[10.0.0.1]:80", "IPv6"),
            ("bad name!", "not an address"),
            ("999.1.1.1", "not an address"),
            ("tcp://", "names nothing"),
        ] {
            let err = parse_entry(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        assert!(parse_entry(":0").is_err());
    }

    #[test]
    fn names_are_resolved_by_the_side_their_list_names() {
        let args = OutgoingArgs {
            local: vec![
                parse_entry("db.example:5432").unwrap(),
                parse_entry("udp://:53").unwrap(),
                parse_entry("127.0.0.1:5432").unwrap(),
            ],
            remote: vec![],
            ..OutgoingArgs::default()
        };
        let rules = args
            .rules_with(|name| {
                assert_eq!(name, "db.example");
                Ok(vec![
                    "192.0.2.5".parse().unwrap(),
                    "2001:db8::5".parse().unwrap(),
                ])
            })
            .unwrap()
            .unwrap();
        assert_eq!(rules.mode, FilterMode::Local);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(rules.is_local(6, ip("192.0.2.5"), 5432));
        assert!(rules.is_local(17, ip("2001:db8::5"), 5432));
        assert!(!rules.is_local(6, ip("192.0.2.5"), 5433));
        assert!(rules.is_local(17, ip("198.51.100.1"), 53));
        assert!(rules.is_local(17, ip("2001:db8::9"), 53));
        assert!(!rules.is_local(6, ip("198.51.100.1"), 53));
        assert!(rules.is_local(6, ip("127.0.0.1"), 5432));

        let failing = args.rules_with(|_| Err("no such host".into())).unwrap_err();
        assert!(failing.to_string().contains("db.example"), "{failing}");

        // `--remote` names: listed once each for the target, then looked up in its answers.
        let remote = OutgoingArgs {
            local: vec![],
            remote: vec![
                parse_entry("api.internal").unwrap(),
                parse_entry("tcp://api.internal:8080").unwrap(),
                parse_entry("10.0.0.0/8").unwrap(),
                parse_entry("db:5432").unwrap(),
            ],
            ..OutgoingArgs::default()
        };
        assert_eq!(remote.remote_names(), ["api.internal", "db"]);
        assert!(args.remote_names().is_empty());
        let rules = remote
            .rules_with(|name| match name {
                "api.internal" => Ok(vec![ip("10.96.3.4")]),
                "db" => Ok(vec![ip("fd00::5")]),
                other => panic!("asked for {other}"),
            })
            .unwrap()
            .unwrap();
        assert_eq!(rules.mode, FilterMode::Remote);
        assert!(!rules.is_local(6, ip("10.96.3.4"), 443));
        assert!(!rules.is_local(6, ip("fd00::5"), 5432));
        assert!(rules.is_local(6, ip("fd00::5"), 5433));
        assert!(rules.is_local(6, ip("192.0.2.1"), 80));
        let err = remote
            .rules_with(|_| Err("no such name".into()))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "--remote api.internal: the target cannot resolve it: no such name"
        );
        assert!(OutgoingArgs::default().rules().unwrap().is_none());
    }
}
