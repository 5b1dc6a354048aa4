//! Which target ports to redirect (steal) or copy (mirror) to the session, decided without
//! I/O.
//!
//! The inputs change independently: what the client asked for ([`IncomingConfig`]), which
//! ports the session's programs listen on (the client reports them), which ports the
//! target serves (for `--steal-all` and `--mirror-all`), and whether the client is still
//! heard from. A port is stolen or mirrored only while the session listens on its local
//! counterpart, so a stolen port's clients reach the target while the session's program is
//! not up (not refused, not held), and only while the client is alive, so a vanished client
//! gives its traffic back (and stops receiving copies). Steal and mirror follow the same
//! rule, each over its own ports.

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
    let asked = Asked {
        ports: &config.steal,
        all: config.steal_all,
    };
    wanted(
        config,
        asked,
        session_listening,
        target_listening,
        client_alive,
    )
}

/// Target port → session port, for every port to mirror now. A port the session also
/// steals is stolen, not mirrored (the client refuses naming one port for both).
pub fn mirrors(
    config: &IncomingConfig,
    session_listening: &[u16],
    target_listening: &[u16],
    client_alive: bool,
) -> BTreeMap<u16, u16> {
    let asked = Asked {
        ports: &config.mirror,
        all: config.mirror_all,
    };
    let mut out = wanted(
        config,
        asked,
        session_listening,
        target_listening,
        client_alive,
    );
    let stolen = redirects(config, session_listening, target_listening, client_alive);
    out.retain(|remote, _| !stolen.contains_key(remote));
    out
}

/// The ports named and whether every common port is meant.
struct Asked<'a> {
    ports: &'a [u16],
    all: bool,
}

fn wanted(
    config: &IncomingConfig,
    asked: Asked<'_>,
    session_listening: &[u16],
    target_listening: &[u16],
    client_alive: bool,
) -> BTreeMap<u16, u16> {
    let mut out = BTreeMap::new();
    if !client_alive {
        return out;
    }
    for &remote in asked.ports {
        let local = local_port(config, remote);
        if session_listening.contains(&local) {
            out.insert(remote, local);
        }
    }
    if asked.all {
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
            ..IncomingConfig::default()
        }
    }

    fn mirror(ports: &[u16], all: bool, map: &[(u16, u16)]) -> IncomingConfig {
        IncomingConfig {
            mirror: ports.to_vec(),
            mirror_all: all,
            port_map: map.to_vec(),
            ..IncomingConfig::default()
        }
    }

    #[test]
    fn mirror_follows_the_steal_rule_over_its_own_ports() {
        let c = mirror(&[80, 443], false, &[(8443, 443)]);
        assert!(mirrors(&c, &[], &[80, 443], true).is_empty());
        assert_eq!(
            mirrors(&c, &[80, 443, 8443], &[], true),
            BTreeMap::from([(80, 80), (443, 8443)])
        );
        assert!(mirrors(&c, &[80], &[80], false).is_empty());
        assert!(
            redirects(&c, &[80], &[80], true).is_empty(),
            "nothing stolen"
        );
        let all = mirror(&[], true, &[]);
        assert_eq!(
            mirrors(&all, &[22, 80, 9000], &[80, 5432], true),
            BTreeMap::from([(80, 80)])
        );
    }

    #[test]
    fn a_port_both_stolen_and_mirrored_is_stolen() {
        let c = IncomingConfig {
            steal: vec![80],
            mirror_all: true,
            ..IncomingConfig::default()
        };
        assert_eq!(
            redirects(&c, &[80, 90], &[80, 90], true),
            BTreeMap::from([(80, 80)])
        );
        assert_eq!(
            mirrors(&c, &[80, 90], &[80, 90], true),
            BTreeMap::from([(90, 90)])
        );
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
