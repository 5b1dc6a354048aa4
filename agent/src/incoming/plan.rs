//! Which target ports to redirect to the session, decided without I/O.
//!
//! The inputs change independently: what the client asked for ([`IncomingConfig`]), which
//! ports the session's programs listen on (the client reports them), which ports the
//! target serves (for `--steal-all`), and whether the client is still heard from. A port is
//! stolen only while the session listens on its local counterpart, so a stolen port's
//! clients reach the target while the session's program is not up (not refused, not held),
//! and only while the client is alive, so a vanished client gives its traffic back.

use std::collections::BTreeMap;

use mirrord_net_protocol::messages::IncomingConfig;

/// The session's port for a target port.
pub fn local_port(config: &IncomingConfig, remote: u16) -> u16 {
    config
        .port_map
        .iter()
        .find(|(_, r)| *r == remote)
        .map_or(remote, |(l, _)| *l)
}

/// The target's port for a session port.
pub fn remote_port(config: &IncomingConfig, local: u16) -> u16 {
    config
        .port_map
        .iter()
        .find(|(l, _)| *l == local)
        .map_or(local, |(_, r)| *r)
}

/// Target port → session port, for every port to redirect now.
pub fn redirects(
    config: &IncomingConfig,
    session_listening: &[u16],
    target_listening: &[u16],
    client_alive: bool,
) -> BTreeMap<u16, u16> {
    let mut out = BTreeMap::new();
    if !client_alive {
        return out;
    }
    for &remote in &config.steal {
        let local = local_port(config, remote);
        if session_listening.contains(&local) {
            out.insert(remote, local);
        }
    }
    if config.steal_all {
        for &local in session_listening {
            let remote = remote_port(config, local);
            if target_listening.contains(&remote) {
                out.entry(remote).or_insert(local);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(steal: &[u16], all: bool, map: &[(u16, u16)]) -> IncomingConfig {
        IncomingConfig {
            steal: steal.to_vec(),
            steal_all: all,
            port_map: map.to_vec(),
            http_filter: None,
            session: String::new(),
        }
    }

    #[test]
    fn a_port_is_stolen_only_while_the_session_listens_and_the_client_lives() {
        let c = config(&[80, 443], false, &[]);
        assert!(redirects(&c, &[], &[80], true).is_empty());
        assert_eq!(
            redirects(&c, &[80, 22], &[], true),
            BTreeMap::from([(80, 80)])
        );
        assert!(redirects(&c, &[80], &[80], false).is_empty());
    }

    #[test]
    fn port_map_names_the_session_port() {
        let c = config(&[80], false, &[(8080, 80)]);
        assert!(redirects(&c, &[80], &[], true).is_empty());
        assert_eq!(
            redirects(&c, &[8080], &[], true),
            BTreeMap::from([(80, 8080)])
        );
    }

    #[test]
    fn steal_all_takes_what_both_sides_serve() {
        let c = config(&[], true, &[(9000, 90)]);
        assert_eq!(
            redirects(&c, &[22, 80, 9000], &[80, 90, 5432], true),
            BTreeMap::from([(80, 80), (90, 9000)])
        );
    }
}
