//! End-to-end tests: real clients, run through `mirrord-net exec --target pid/<target>`,
//! against the servers of a network-namespace pod (see the `mirrord-net-tests` crate docs for
//! the topology). Each test pins one behaviour a user relies on; the fixture self-tests in
//! `tests/fixture.rs` show the same clients working when run directly in the pod.

/// Defines each test three times, as a module holding a `tun`, a `routed` and a `quic` test:
/// the session's packets served by the local agent on the session's TUN itself (the
/// default); the session's namespace routed into the pod's, its IPv4 flows to other hosts on
/// the kernel's path (`MIRRORD_NET_LOCAL_PACKETS=routed`); and carried as QUIC datagrams
/// relayed by the client (`quic`, the path a remote agent's packets take).
macro_rules! on_every_packet_path {
    ($($(#[$meta:meta])* fn $name:ident($packets:ident: Packets) $body:block)*) => {
        $(
            $(#[$meta])*
            mod $name {
                use super::*;

                fn run($packets: Packets) $body

                #[test]
                fn routed() {
                    run(Packets::Routed)
                }

                #[test]
                fn tun() {
                    run(Packets::Tun)
                }

                #[test]
                fn quic() {
                    run(Packets::Quic)
                }
            }
        )*
    };
}

mod background;
mod clients;
mod concurrency;
mod demo;
mod dns;
mod dns_filter;
mod doctor;
mod environment;
mod exit_codes;
mod files;
mod incoming;
mod incoming_flood;
mod incoming_iptables;
mod incoming_mirror;
mod incoming_shared;
mod interfaces;
mod isolation;
mod kill_storm;
mod lifecycle;
mod limits;
mod localhost;
mod lossy_link;
mod manual;
mod network;
mod outgoing_filter;
mod packet_paths;
mod preload_blind_spots;
mod reconnect;
mod routed;
mod shell;
mod stream_transport;
mod transfer;
