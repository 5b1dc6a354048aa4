//! Real sockets in the target's network namespace: how each flow's upstream end is opened.
//!
//! Every socket is created by the stack's task after the agent entered the target's network
//! namespace, so it routes, resolves and is firewalled exactly like the target's own.
//!
//! * TCP: a non-blocking `connect()` registered with tokio; the flow learns the outcome when
//!   the socket turns writable and reads `SO_ERROR`, as any async connect does. Errors the
//!   kernel reports at once (no route) come back from [`connect_tcp`] directly.
//! * UDP: a socket bound to an ephemeral port and connected to the destination, so the
//!   kernel filters replies from other peers and reports ICMP errors as ECONNREFUSED.
//! * The reserved addresses that stand for the session's loopback destinations
//!   (`mirrord_net_protocol::loopback`) are connected as the target's loopback addresses they
//!   stand for; the flow keeps the reserved address toward the session, whose conntrack maps
//!   the replies back.
//! * ICMP echo: an unprivileged ping socket (`SOCK_DGRAM`, `IPPROTO_ICMP[V6]`) where
//!   `net.ipv4.ping_group_range` allows it; otherwise a raw socket (the agent usually runs as
//!   root, and the default range admits no group at all).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mirrord_net_protocol::loopback;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpStream, UdpSocket};

use super::packet::Unreachable;

/// The ICMP error the session should get for a routing or filtering failure, if `err` is
/// one.
pub(crate) fn unreachable_reason(err: &io::Error) -> Option<Unreachable> {
    match err.raw_os_error()? {
        libc::ENETUNREACH | libc::ENETDOWN => Some(Unreachable::Net),
        libc::EHOSTUNREACH | libc::EHOSTDOWN => Some(Unreachable::Host),
        libc::EACCES | libc::EPERM => Some(Unreachable::Prohibited),
        _ => None,
    }
}

/// Starts a non-blocking connect to `dst` (a reserved loopback address stands for the
/// target's loopback: see `mirrord_net_protocol::loopback`).
pub(crate) fn connect_tcp(dst: SocketAddr) -> io::Result<TcpStream> {
    let dst = loopback::upstream(dst);
    let socket = Socket::new(
        Domain::for_address(dst),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    // The session's kernel already coalesced what the program wrote; holding it back again
    // would only add latency.
    socket.set_nodelay(true)?;
    match socket.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(std::net::TcpStream::from(socket))
}

/// Makes the upstream peer see a RST when `stream` is dropped.
pub(crate) fn set_reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Sends FIN upstream (no more data from the session).
pub(crate) fn shutdown_write(stream: &TcpStream) -> io::Result<()> {
    SockRef::from(stream).shutdown(std::net::Shutdown::Write)
}

/// A UDP socket connected to `dst` (or to the target's loopback address it stands for).
pub(crate) fn connect_udp(dst: SocketAddr) -> io::Result<UdpSocket> {
    let dst = loopback::upstream(dst);
    let socket = Socket::new(
        Domain::for_address(dst),
        Type::DGRAM.nonblocking(),
        Some(Protocol::UDP),
    )?;
    socket.connect(&dst.into())?;
    UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

/// How an ICMP echo socket was opened, which decides what its reads and writes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EchoSocketKind {
    /// A ping socket: the kernel owns the identifier and the checksum, reads return the ICMP
    /// message alone.
    Ping,
    /// A raw socket: we send the identifier we want; IPv4 reads include the IP header, and
    /// every ICMP message from the peer arrives, not only our replies.
    Raw,
}

/// An ICMP socket for echoes to `dst`. `prefer_raw` skips the ping-socket attempt once it is
/// known to be refused.
pub(crate) fn open_echo(dst: IpAddr, prefer_raw: bool) -> io::Result<(Socket, EchoSocketKind)> {
    let (domain, proto) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let mut last_err = None;
    let kinds: &[EchoSocketKind] = if prefer_raw {
        &[EchoSocketKind::Raw]
    } else {
        &[EchoSocketKind::Ping, EchoSocketKind::Raw]
    };
    for &kind in kinds {
        let ty = match kind {
            EchoSocketKind::Ping => Type::DGRAM,
            EchoSocketKind::Raw => Type::RAW,
        };
        match Socket::new(domain, ty.nonblocking(), Some(proto)) {
            Ok(socket) => {
                socket.connect(&SocketAddr::new(dst, 0).into())?;
                return Ok((socket, kind));
            }
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("no ICMP socket kind")))
}

/// Raises the soft open-file limit to the hard limit: each flow holds one descriptor, and
/// the common default soft limit (1024) is far below the flows a session may open.
pub(crate) fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
