//! The target's addresses as the session carries them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The target's addresses, which the session's TUN carries.
#[derive(Debug, Clone, Default)]
pub struct SessionAddrs {
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl SessionAddrs {
    /// Where in the session a connection to `original` goes: the same address when the
    /// session carries it, else the session's first address of the same family.
    pub fn session_ip(&self, original: IpAddr) -> Option<IpAddr> {
        match original {
            IpAddr::V4(ip) if self.ipv4.contains(&ip) => Some(original),
            IpAddr::V6(ip) if self.ipv6.contains(&ip) => Some(original),
            IpAddr::V4(_) => self.ipv4.first().copied().map(IpAddr::V4),
            IpAddr::V6(_) => self.ipv6.first().copied().map(IpAddr::V6),
        }
    }
}
