//! What the keeper tells `iptables-legacy-restore`, and what it reads back from
//! `iptables-legacy-save`: text in, text out, no I/O, so every case is a unit test.
//!
//! One chain per agent in the `nat` table, jumped to from the top of `PREROUTING`, with one
//! rule per stolen port, the same match as the nftables rule (`nft`): a connection's opening
//! SYN to the port is redirected to the agent's listener. The last rule changes nothing and
//! keeps conntrack on ([`conntrack_holder`]).
//!
//! ```text
//! *nat
//! :MNET-1a2b3c4d - [0:0]
//! -I PREROUTING 1 -j MNET-1a2b3c4d
//! -A MNET-1a2b3c4d -p tcp -m tcp --dport 8080 --tcp-flags SYN,ACK SYN -j REDIRECT --to-ports 40000
//! -A MNET-1a2b3c4d -m conntrack --ctstate INVALID -j RETURN
//! COMMIT
//! ```
//!
//! Every change is one `--noflush` restore, which the kernel applies as one table
//! replacement: declaring a chain that exists flushes it, so [`ports`] replaces the chain's
//! rules atomically, as the nftables batch does.

/// Every keeper's chain starts so; the rest is the keeper's nonce in hex.
pub const CHAIN_PREFIX: &str = "MNET-";

/// The chain of a keeper with this nonce (13 characters; iptables allows 28).
pub fn chain_name(nonce: u32) -> String {
    format!("{CHAIN_PREFIX}{nonce:08x}")
}

/// The abstract unix socket a keeper binds while it lives: another keeper in the same
/// network namespace (abstract names are per namespace) that cannot connect to it knows
/// the chain is stale.
pub fn liveness_name(chain: &str) -> String {
    format!("mirrord-net/iptables/{chain}")
}

/// Creates `chain` (with [`conntrack_holder`]) and jumps to it first thing in `PREROUTING`.
pub fn create(chain: &str) -> String {
    format!(
        "*nat\n:{chain} - [0:0]\n{}-I PREROUTING 1 -j {chain}\nCOMMIT\n",
        conntrack_holder(chain)
    )
}

/// Replaces `chain`'s rules by one redirect per `(port, to)`, then [`conntrack_holder`].
pub fn ports(chain: &str, ports: &[(u16, u16)]) -> String {
    let mut text = format!("*nat\n:{chain} - [0:0]\n");
    for (port, to) in ports {
        text.push_str(&format!(
            "-A {chain} -p tcp -m tcp --dport {port} --tcp-flags SYN,ACK SYN -j REDIRECT --to-ports {to}\n"
        ));
    }
    text.push_str(&conntrack_holder(chain));
    text.push_str("COMMIT\n");
    text
}

/// The rule that keeps the chain's redirected connections working once their redirect is
/// gone: a rule that uses conntrack (and changes nothing: `RETURN` at a chain's end is
/// where the packet goes anyway).
///
/// The kernel runs conntrack in a network namespace only while some rule there needs it,
/// and NAT (the redirect's rewriting of every later packet of the connection, the answers'
/// source port included) rides on conntrack. In a pod whose only NAT rules are the steal's,
/// deleting the last redirect would stop conntrack and with it the rewriting, so the
/// connections it had redirected (in the agent's hands, or in the keeper's) would answer
/// from the listener's port and be reset by their clients. The nftables chain keeps a rule
/// of the same kind (`nft::conntrack_holder_rule`).
pub fn conntrack_holder(chain: &str) -> String {
    format!("-A {chain} -m conntrack --ctstate INVALID -j RETURN\n")
}

/// Removes `chain` and every jump to it from the built-in chains, as `save` (the `nat`
/// table's `iptables-save -t nat`) shows them; `None` when the chain is not there.
pub fn remove(save: &str, chain: &str) -> Option<String> {
    if !keeper_chains(save).iter().any(|found| found == chain) {
        return None;
    }
    let mut text = String::from("*nat\n");
    for line in save.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("-A") {
            continue;
        }
        let Some(from) = words.next() else { continue };
        let rest: Vec<&str> = words.collect();
        if from != chain && rest.windows(2).any(|w| w == ["-j", chain]) {
            text.push_str(&format!("-D {from} {}\n", rest.join(" ")));
        }
    }
    text.push_str(&format!("-F {chain}\n-X {chain}\nCOMMIT\n"));
    Some(text)
}

/// The keepers' chains in `save`, alive or not.
pub fn keeper_chains(save: &str) -> Vec<String> {
    save.lines()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| {
            name.strip_prefix(CHAIN_PREFIX)
                .is_some_and(|hex| hex.len() == 8 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(str::to_owned)
        .collect()
}

/// One request from the agent: `ports 8080:40000 9090:40000` (none: `ports`).
pub fn parse_request(line: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("ports") {
        return Err(format!("unknown request {line:?}"));
    }
    words
        .map(|pair| {
            let (port, to) = pair
                .split_once(':')
                .ok_or_else(|| format!("bad port pair {pair:?}"))?;
            let parse = |text: &str| {
                text.parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(|| format!("bad port {text:?}"))
            };
            Ok((parse(port)?, parse(to)?))
        })
        .collect()
}

/// The request for `ports`, as [`parse_request`] reads it.
pub fn request(ports: &[(u16, u16)]) -> String {
    let mut line = String::from("ports");
    for (port, to) in ports {
        line.push_str(&format!(" {port}:{to}"));
    }
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `iptables-legacy-save -t nat` of a pod with a sidecar's rules, two keepers' chains
    /// and a chain that only looks like one.
    const SAVE: &str = "\
# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:POSTROUTING ACCEPT [3:180]
:MNET-0000beef - [0:0]
:MNET-1a2b3c4d - [0:0]
:MNET-notmine - [0:0]
:SIDECAR_INBOUND - [0:0]
-A PREROUTING -j MNET-1a2b3c4d
-A PREROUTING -j MNET-0000beef
-A PREROUTING -p tcp -j SIDECAR_INBOUND
-A OUTPUT -d 10.0.0.1/32 -j MNET-1a2b3c4d
-A MNET-1a2b3c4d -p tcp -m tcp --dport 8080 --tcp-flags SYN,ACK SYN -j REDIRECT --to-ports 40000
-A SIDECAR_INBOUND -p tcp -m tcp --dport 9090 -j REDIRECT --to-ports 15006
COMMIT
# Completed
";

    #[test]
    fn chain_names_fit_iptables_and_are_found_again() {
        let name = chain_name(0xbeef);
        assert_eq!(name, "MNET-0000beef");
        assert!(name.len() <= 28);
        assert_eq!(keeper_chains(SAVE), ["MNET-0000beef", "MNET-1a2b3c4d"]);
        assert_eq!(liveness_name(&name), "mirrord-net/iptables/MNET-0000beef");
    }

    #[test]
    fn creation_jumps_first_thing_in_prerouting() {
        assert_eq!(
            create("MNET-1"),
            "*nat\n:MNET-1 - [0:0]\n-A MNET-1 -m conntrack --ctstate INVALID -j RETURN\n\
             -I PREROUTING 1 -j MNET-1\nCOMMIT\n"
        );
    }

    #[test]
    fn ports_replace_the_chain_with_one_syn_redirect_each_and_keep_conntrack() {
        assert_eq!(
            ports("MNET-1", &[(8080, 40000), (9090, 40000)]),
            "*nat\n:MNET-1 - [0:0]\n\
             -A MNET-1 -p tcp -m tcp --dport 8080 --tcp-flags SYN,ACK SYN -j REDIRECT --to-ports 40000\n\
             -A MNET-1 -p tcp -m tcp --dport 9090 --tcp-flags SYN,ACK SYN -j REDIRECT --to-ports 40000\n\
             -A MNET-1 -m conntrack --ctstate INVALID -j RETURN\n\
             COMMIT\n"
        );
        // No ports: the chain is declared, so flushed, and keeps conntrack running.
        assert_eq!(
            ports("MNET-1", &[]),
            "*nat\n:MNET-1 - [0:0]\n-A MNET-1 -m conntrack --ctstate INVALID -j RETURN\nCOMMIT\n"
        );
    }

    #[test]
    fn removal_deletes_every_jump_then_the_chain_and_touches_nothing_else() {
        assert_eq!(
            remove(SAVE, "MNET-1a2b3c4d").unwrap(),
            "*nat\n\
             -D PREROUTING -j MNET-1a2b3c4d\n\
             -D OUTPUT -d 10.0.0.1/32 -j MNET-1a2b3c4d\n\
             -F MNET-1a2b3c4d\n-X MNET-1a2b3c4d\nCOMMIT\n"
        );
        assert_eq!(
            remove(SAVE, "MNET-0000beef").unwrap(),
            "*nat\n-D PREROUTING -j MNET-0000beef\n-F MNET-0000beef\n-X MNET-0000beef\nCOMMIT\n"
        );
        assert_eq!(remove(SAVE, "MNET-00000001"), None);
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        let pairs = [(8080, 40000), (1, 65535)];
        let line = request(&pairs);
        assert_eq!(line, "ports 8080:40000 1:65535\n");
        assert_eq!(parse_request(line.trim_end()).unwrap(), pairs);
        assert_eq!(parse_request("ports").unwrap(), []);
        for bad in [
            "",
            "flush",
            "ports 8080",
            "ports 0:1",
            "ports 1:70000",
            "ports a:b",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?} accepted");
        }
    }
}
