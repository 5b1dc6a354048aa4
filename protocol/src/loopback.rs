//! The target's loopback, as the session reaches it: the reserved addresses that stand for
//! `127.0.0.0/8` and `::1` on the way through the TUN, and their translation back.
//!
//! The kernel keeps loopback destinations on `lo`: a packet to 127.0.0.1 never reaches a
//! route toward the TUN, and the kernel drops loopback addresses that arrive on any other
//! device. So the session rewrites them (destination NAT in its `output` hook, see the
//! client's `session::loopback`) to addresses that *are* routed through the TUN, and the
//! agent, re-originating the flow in the target's namespace, maps them back:
//!
//! ```text
//!  session connect(127.0.0.5:8080)  ──dnat──►  240.0.0.5:8080  ──TUN──►  agent connects 127.0.0.5:8080
//!  session connect([::1]:8080)      ──dnat──►  [fd7f:6d6e:6c6f::1]:8080 ──►  agent connects [::1]:8080
//! ```
//!
//! - IPv4: `127.0.0.0/8` maps onto `240.0.0.0/8` keeping the low 24 bits (nftables' `dnat ip
//!   prefix to`, the kernel's `NF_NAT_RANGE_NETMAP`), so every loopback address keeps its
//!   identity. `240.0.0.0/4` is reserved ("future use", RFC 1112) and unrouted on the
//!   Internet; some clusters use it for pod addresses (GKE's class E ranges): such a
//!   target's own `240.0.0.0/8` addresses would be taken for loopback ones.
//! - IPv6: the one loopback address maps to one address of a unique local prefix
//!   (`fd7f:6d6e:6c6f::/48`, RFC 4193, chosen for this purpose), unlikely to be any
//!   target's.
//!
//! Only these two functions and constants; no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The network that stands for `127.0.0.0/8` between the session and the agent.
pub const LOOPBACK_V4_NET: Ipv4Addr = Ipv4Addr::new(240, 0, 0, 0);
/// Its prefix length: as long as `127.0.0.0/8`'s.
pub const LOOPBACK_V4_PREFIX: u8 = 8;
/// The address that stands for `::1`.
pub const LOOPBACK_V6: Ipv6Addr = Ipv6Addr::new(0xfd7f, 0x6d6e, 0x6c6f, 0, 0, 0, 0, 1);

/// The reserved address for a loopback address of the session (`None` for any other).
pub fn to_reserved(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(v4) if v4.is_loopback() => {
            let [_, b, c, d] = v4.octets();
            Some(IpAddr::V4(Ipv4Addr::new(
                LOOPBACK_V4_NET.octets()[0],
                b,
                c,
                d,
            )))
        }
        IpAddr::V6(v6) if v6.is_loopback() => Some(IpAddr::V6(LOOPBACK_V6)),
        _ => None,
    }
}

/// The target's loopback address a reserved address stands for (`None` for any other).
pub fn from_reserved(addr: IpAddr) -> Option<IpAddr> {
    match addr {
        IpAddr::V4(v4) if v4.octets()[0] == LOOPBACK_V4_NET.octets()[0] => {
            let [_, b, c, d] = v4.octets();
            Some(IpAddr::V4(Ipv4Addr::new(127, b, c, d)))
        }
        IpAddr::V6(v6) if v6 == LOOPBACK_V6 => Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        _ => None,
    }
}

/// Where the agent connects for a destination the session sent: the loopback address a
/// reserved one stands for, any other unchanged.
pub fn upstream(dst: SocketAddr) -> SocketAddr {
    match from_reserved(dst.ip()) {
        Some(ip) => SocketAddr::new(ip, dst.port()),
        None => dst,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_loopback_address_round_trips() {
        for a in ["127.0.0.1", "127.1.2.3", "127.255.255.254", "::1"] {
            let a: IpAddr = a.parse().unwrap();
            let reserved = to_reserved(a).unwrap();
            assert_ne!(reserved, a);
            assert_eq!(from_reserved(reserved), Some(a));
        }
        assert_eq!(
            to_reserved("127.0.0.1".parse().unwrap()),
            Some("240.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn other_addresses_pass_unchanged() {
        for a in [
            "10.0.0.1",
            "241.0.0.1",
            "128.0.0.1",
            "fd7f:6d6e:6c6f::2",
            "::2",
        ] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(to_reserved(a), None);
            assert_eq!(from_reserved(a), None);
            let sa = SocketAddr::new(a, 80);
            assert_eq!(upstream(sa), sa);
        }
        assert_eq!(
            upstream("[fd7f:6d6e:6c6f::1]:53".parse().unwrap()),
            "[::1]:53".parse().unwrap()
        );
    }
}
