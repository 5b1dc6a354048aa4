//! Where a redirected connection was going: `SO_ORIGINAL_DST` (IPv4) or
//! `IP6T_SO_ORIGINAL_DST` (IPv6), which conntrack answers from the NAT it applied.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// The destination `stream`'s client connected to, before the redirect.
pub fn of(stream: &TcpStream) -> io::Result<SocketAddr> {
    let v6 = stream.local_addr()?.is_ipv6();
    mirrord_net_netfilter::conntrack::original_destination_of(stream, v6)
}
