//! What sessions sharing a stolen port say to each other, and the decisions on it, without
//! I/O.
//!
//! A registrant sends one [`Claim`] to the port's router and gets one [`Reply`]; the router
//! decides with [`admit`] and orders the routes with [`order`]. A request for a registrant
//! travels on a new connection to the registrant's ingress socket that starts with one
//! [`Ingress`] frame, answered by one byte ([`TAKEN`] or [`NOT_TAKEN`]). Frames are the
//! tool's own (`mirrord_net_protocol::framing`: a length, then postcard).

use std::net::SocketAddr;

use mirrord_net_protocol::messages::HttpFilterConfig;
use serde::{Deserialize, Serialize};

/// The abstract unix socket the router of target port `port` listens on. Abstract names
/// belong to the network namespace and vanish with the socket, so the first agent to bind it
/// is the router and its death (SIGKILL included) frees the name at once.
pub fn router_name(port: u16) -> String {
    format!("mirrord-net/steal/{port}")
}

/// An agent's ingress socket, where routers deliver its requests. Pids are not unique
/// across agents that joined the namespace from other pid namespaces (Kubernetes Job
/// agents are often pid 1), hence the nonce.
pub fn ingress_name(pid: u32, nonce: u64) -> String {
    format!("mirrord-net/ingress/{pid}-{nonce:016x}")
}

/// One session's claim on one target port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// Who the session is (`user@host pid N`), for refusal lines.
    pub session: String,
    /// When the session began stealing the port (Unix time, ns); kept across router
    /// changes, it decides which session a request matching several goes to.
    pub since: u64,
    /// The session agent's ingress socket name: unique, so also the tie-break.
    pub ingress: String,
    /// The session's HTTP filter on this port; `None`: the whole port (unfiltered).
    pub filter: Option<HttpFilterConfig>,
    /// The session's own port for the target's port (`--port-map`).
    pub session_port: u16,
}

impl Claim {
    fn precedence(&self) -> (u64, &str) {
        (self.since, &self.ingress)
    }

    fn describe(&self) -> &'static str {
        match self.filter {
            None => "unfiltered",
            Some(_) => "with an HTTP filter",
        }
    }
}

/// The router's answer to a [`Claim`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Accepted,
    /// One line for the refused session's user.
    Refused(String),
}

/// The start of a connection delivered to a registrant: a request (and what follows on the
/// client connection for it) from `peer` to `original`, for the session's `session_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingress {
    pub peer: SocketAddr,
    pub original: SocketAddr,
    pub session_port: u16,
}

/// The registrant's answer to an [`Ingress`]: its session took the connection.
pub const TAKEN: u8 = 1;
/// Its session did not (nothing listens there now): the request goes to the target.
pub const NOT_TAKEN: u8 = 0;

/// Most sessions that steal one port at once (the router's own included): each is an entry
/// every request's routing walks, and a registrant is anyone who reaches the router's
/// socket, so the list is bounded.
pub const MAX_SESSIONS_PER_PORT: usize = 64;

/// Whether `newcomer` may steal `port` beside `holders` (every session holding it now,
/// the router's own included). An unfiltered steal needs the port alone; a filtered one
/// shares it only with other filtered ones. A refusal is one line naming the port and the
/// session holding it (the earliest, when several do).
pub fn admit(port: u16, holders: &[&Claim], newcomer: &Claim) -> Result<(), String> {
    if holders.len() >= MAX_SESSIONS_PER_PORT {
        return Err(format!(
            "cannot steal port {port}: {} sessions steal it already, the most one port is shared by",
            holders.len()
        ));
    }
    let mut holders: Vec<&Claim> = holders.to_vec();
    holders.sort_by(|a, b| a.precedence().cmp(&b.precedence()));
    let blocking = if newcomer.filter.is_none() {
        holders.first()
    } else {
        holders.iter().find(|holder| holder.filter.is_none())
    };
    match blocking {
        None => Ok(()),
        Some(holder) => Err(format!(
            "cannot steal port {port}{}: session {} already steals it {}",
            match newcomer.filter {
                None => " unfiltered",
                Some(_) => " with an HTTP filter",
            },
            holder.session,
            holder.describe(),
        )),
    }
}

/// Puts `items` in the order their filters are tried: the session that began stealing
/// first comes first.
pub fn order<T>(items: &mut [T], claim_of: impl Fn(&T) -> &Claim) {
    items.sort_by(|a, b| claim_of(a).precedence().cmp(&claim_of(b).precedence()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_net_protocol::framing::{self, FrameDecoder};

    fn claim(session: &str, since: u64, filtered: bool) -> Claim {
        Claim {
            session: session.to_owned(),
            since,
            ingress: ingress_name(7, since),
            filter: filtered.then(|| HttpFilterConfig {
                header: Some(format!("^X-Run: {session}$")),
                ..HttpFilterConfig::default()
            }),
            session_port: 8080,
        }
    }

    #[test]
    fn a_port_is_shared_by_at_most_so_many_sessions() {
        let holders: Vec<Claim> = (0..MAX_SESSIONS_PER_PORT as u64)
            .map(|i| claim(&format!("s{i}"), i, true))
            .collect();
        let refs: Vec<&Claim> = holders.iter().collect();
        let line = admit(8080, &refs, &claim("one more", 99, true)).unwrap_err();
        assert_eq!(
            line,
            "cannot steal port 8080: 64 sessions steal it already, the most one port is shared by"
        );
        assert_eq!(
            admit(8080, &refs[1..], &claim("one more", 99, true)),
            Ok(())
        );
    }

    #[test]
    fn filtered_sessions_share_a_port() {
        let a = claim("a@h pid 1", 10, true);
        let b = claim("b@h pid 2", 20, true);
        let c = claim("c@h pid 3", 5, true);
        assert_eq!(admit(8080, &[&a, &b], &c), Ok(()));
        assert_eq!(admit(8080, &[], &claim("d", 1, false)), Ok(()));
    }

    #[test]
    fn an_unfiltered_steal_of_a_held_port_is_refused_naming_the_earliest_holder() {
        let a = claim("a@h pid 1", 10, true);
        let b = claim("b@h pid 2", 20, true);
        let line = admit(8080, &[&b, &a], &claim("u@h pid 9", 1, false)).unwrap_err();
        assert_eq!(
            line,
            "cannot steal port 8080 unfiltered: session a@h pid 1 already steals it with an HTTP filter"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn a_filtered_steal_of_a_port_stolen_unfiltered_is_refused() {
        let u = claim("u@h pid 1", 10, false);
        assert_eq!(
            admit(8080, &[&u], &claim("f@h pid 2", 20, true)).unwrap_err(),
            "cannot steal port 8080 with an HTTP filter: session u@h pid 1 already steals it unfiltered"
        );
        assert!(admit(8080, &[&u], &claim("g@h pid 3", 20, false)).is_err());
    }

    #[test]
    fn the_session_that_began_first_comes_first_whatever_the_order_of_registration() {
        let mut claims = vec![
            (claim("late", 30, true), 'c'),
            (claim("early", 10, true), 'a'),
            (claim("mid", 20, true), 'b'),
        ];
        order(&mut claims, |(claim, _)| claim);
        let tags: String = claims.iter().map(|(_, tag)| *tag).collect();
        assert_eq!(tags, "abc");
        // The same instant: the ingress name decides, the same way in every router.
        let mut x = claim("x", 10, true);
        x.ingress = "mirrord-net/ingress/2-0".into();
        let mut y = claim("y", 10, true);
        y.ingress = "mirrord-net/ingress/1-0".into();
        let mut claims = vec![(x, 'x'), (y, 'y')];
        order(&mut claims, |(claim, _)| claim);
        assert_eq!(claims[0].1, 'y');
    }

    #[test]
    fn messages_survive_framing() {
        let c = claim("a@h pid 1", 10, true);
        let ingress = Ingress {
            peer: "10.0.0.7:51234".parse().unwrap(),
            original: "[fd00::9]:8080".parse().unwrap(),
            session_port: 9090,
        };
        let mut decoder = FrameDecoder::new();
        decoder.push(&framing::encode(&c).unwrap());
        decoder.push(&framing::encode(&Reply::Refused("no".into())).unwrap());
        decoder.push(&framing::encode(&ingress).unwrap());
        assert_eq!(decoder.next_message::<Claim>().unwrap(), Some(c));
        assert_eq!(
            decoder.next_message::<Reply>().unwrap(),
            Some(Reply::Refused("no".into()))
        );
        assert_eq!(decoder.next_message::<Ingress>().unwrap(), Some(ingress));
    }
}
