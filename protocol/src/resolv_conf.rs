//! The target's resolv.conf, which arrives in the hello ([`TargetInfo`]), read as glibc reads
//! it. One reader for everyone who needs it: the session (its resolvers stay the target's
//! under an outgoing filter), the agent (it resolves `--remote` names as the target would)
//! and the demo's probe.
//!
//! [`TargetInfo`]: crate::messages::TargetInfo

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// glibc's limits: `ndots` at most 15, `timeout` at most 30 s, `attempts` at most 5.
const MAX_NDOTS: usize = 15;
const MAX_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_ATTEMPTS: usize = 5;

/// What a resolv.conf says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Every `nameserver` line's address, in order (a zone, `fe80::1%eth0`, dropped). glibc
    /// asks the first three.
    pub nameservers: Vec<IpAddr>,
    /// The last `search` or `domain` line's domains, as written.
    pub search: Vec<String>,
    /// Every option of every `options` line, as written.
    pub options: Vec<String>,
    /// The options glibc's resolver acts on, with its defaults (1, 5 s, 2).
    pub ndots: usize,
    pub timeout: Duration,
    pub attempts: usize,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            nameservers: Vec::new(),
            search: Vec::new(),
            options: Vec::new(),
            ndots: 1,
            timeout: Duration::from_secs(5),
            attempts: 2,
        }
    }
}

impl ResolvConf {
    /// Reads `text` the way glibc does: `#` and `;` start comments, the last `search` or
    /// `domain` line wins, `options` accumulate (a later value of one option wins), unknown
    /// lines and options are ignored.
    pub fn parse(text: &str) -> ResolvConf {
        let mut conf = ResolvConf::default();
        for line in text.lines() {
            let line = line.split(['#', ';']).next().unwrap_or_default();
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    let address = words
                        .next()
                        .and_then(|w| w.split('%').next()?.parse::<IpAddr>().ok());
                    conf.nameservers.extend(address);
                }
                Some("search" | "domain") => conf.search = words.map(str::to_owned).collect(),
                Some("options") => {
                    for option in words {
                        conf.apply(option);
                        conf.options.push(option.to_owned());
                    }
                }
                _ => {}
            }
        }
        conf
    }

    /// [`parse`](Self::parse) of the bytes the hello carries.
    pub fn parse_bytes(bytes: &[u8]) -> ResolvConf {
        ResolvConf::parse(&String::from_utf8_lossy(bytes))
    }

    fn apply(&mut self, option: &str) {
        let Some((key, value)) = option.split_once(':') else {
            return;
        };
        let Ok(value) = value.parse::<u64>() else {
            return;
        };
        match key {
            "ndots" => self.ndots = (value as usize).min(MAX_NDOTS),
            "timeout" => self.timeout = Duration::from_secs(value.max(1)).min(MAX_TIMEOUT),
            "attempts" => self.attempts = (value as usize).clamp(1, MAX_ATTEMPTS),
            _ => {}
        }
    }

    /// Every nameserver on port 53, or `127.0.0.1:53` without any (what the C library asks
    /// then).
    pub fn servers(&self) -> Vec<SocketAddr> {
        if self.nameservers.is_empty() {
            return vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))];
        }
        let on_53 = |ip: &IpAddr| SocketAddr::new(*ip, 53);
        self.nameservers.iter().map(on_53).collect()
    }

    /// The fully qualified names glibc asks for `name`, in order (RFC 1535's rule): a name
    /// ending in `.` as it is; one with at least `ndots` dots as given first, then with each
    /// search domain; a shorter one with each search domain first.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(absolute) = name.strip_suffix('.') {
            return vec![absolute.to_owned()];
        }
        let searched = self
            .search
            .iter()
            .map(|domain| format!("{name}.{}", domain.trim_end_matches('.')));
        if name.matches('.').count() >= self.ndots {
            std::iter::once(name.to_owned()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_owned())).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nameserver_on_port_53_or_the_local_one() {
        assert_eq!(
            ResolvConf::parse("search x\nnameserver 192.0.2.53\nnameserver ::1\n").servers(),
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            ResolvConf::parse("# none\n").servers(),
            ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn a_kubernetes_pods_resolv_conf_is_read_in_full() {
        let conf = ResolvConf::parse(
            "# generated\nsearch demo.svc.cluster.local svc.cluster.local cluster.local\n\
             nameserver 10.89.0.53\noptions ndots:5\n",
        );
        assert_eq!(conf.nameservers, ["10.89.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            conf.search,
            [
                "demo.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local"
            ]
        );
        assert_eq!(conf.options, ["ndots:5"]);
        assert_eq!(conf.ndots, 5);
        assert_eq!((conf.timeout, conf.attempts), (Duration::from_secs(5), 2));
    }

    #[test]
    fn comments_zones_repeated_keywords_and_limits_follow_glibc() {
        let conf = ResolvConf::parse(
            "; old style comment\ndomain example.org\nsearch a.example b.example # trailing\n\
             nameserver fe80::1%eth0\nnameserver not-an-address\nnameserver 192.0.2.1\n\
             options ndots:2 attempts:9\noptions edns0 timeout:0 ndots:40\n  nameserver   192.0.2.2  \n",
        );
        assert_eq!(
            conf.nameservers,
            [
                "fe80::1".parse::<IpAddr>().unwrap(),
                "192.0.2.1".parse().unwrap(),
                "192.0.2.2".parse().unwrap()
            ]
        );
        assert_eq!(conf.search, ["a.example", "b.example"]);
        assert_eq!(
            conf.options,
            ["ndots:2", "attempts:9", "edns0", "timeout:0", "ndots:40"]
        );
        assert_eq!(conf.ndots, MAX_NDOTS);
        assert_eq!(conf.timeout, Duration::from_secs(1));
        assert_eq!(conf.attempts, MAX_ATTEMPTS);
        assert_eq!(ResolvConf::parse(""), ResolvConf::default());
        assert!(ResolvConf::parse_bytes(b"nameserver 10.0.0.1\xff\n")
            .nameservers
            .is_empty());
    }

    #[test]
    fn ndots_decides_whether_the_name_as_given_comes_first() {
        let conf = ResolvConf::parse("search a.example b.example.\noptions ndots:2\n");
        assert_eq!(
            conf.candidates("web"),
            ["web.a.example", "web.b.example", "web"]
        );
        assert_eq!(
            conf.candidates("db.corp.example"),
            [
                "db.corp.example",
                "db.corp.example.a.example",
                "db.corp.example.b.example"
            ]
        );
        assert_eq!(conf.candidates("web.svc."), ["web.svc"]);
    }
}
