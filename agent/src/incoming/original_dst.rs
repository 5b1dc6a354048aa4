//! Where a redirected connection was going: `SO_ORIGINAL_DST` (IPv4) or
//! `IP6T_SO_ORIGINAL_DST` (IPv6), which conntrack answers from the NAT it applied.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use nix::sys::socket::{getsockopt, sockopt};
use tokio::net::TcpStream;

/// The destination `stream`'s client connected to, before the redirect.
pub fn of(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    match local.ip() {
        IpAddr::V4(_) => {
            let addr = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
            Ok(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr))),
                u16::from_be(addr.sin_port),
            ))
        }
        IpAddr::V6(_) => {
            let addr = getsockopt(stream, sockopt::Ip6tOriginalDst).map_err(io::Error::from)?;
            Ok(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(addr.sin6_addr.s6_addr)),
                u16::from_be(addr.sin6_port),
            ))
        }
    }
}
