//! The outgoing filter's relay: the session's local flows opened again from the host.
//!
//! The session child opens the relay's sockets in the session's namespace, where the
//! [`outgoing`](super::outgoing) rules redirect local flows to them — a TCP listener and a UDP
//! socket on `127.0.0.1` (and `::1` when the session has IPv6), and a `NETLINK_NETFILTER`
//! socket for conntrack — and passes them to the client with the TUN. The client, in the
//! host's namespaces, serves them ([`Relay`]): each connection accepted or datagram received
//! is opened again to its original destination from the host, as the user's own programs
//! would open it, and the bytes are copied both ways.
//!
//! - TCP: the accepted socket names its original destination (`SO_ORIGINAL_DST`). The
//!   program's `connect` has already succeeded when the relay's own begins, so a refused or
//!   unreachable destination reaches the program as a reset (`ECONNRESET` on its first read)
//!   rather than `ECONNREFUSED`: what a SOCKS proxy gives too. Half-closes pass through.
//! - UDP: a flow is its source address; its destination comes from conntrack
//!   ([`mirrord_net_netfilter::conntrack`]) on its first datagram. Each flow gets a host
//!   socket connected to that destination; answers go back from the relay's socket, and
//!   conntrack turns their source into the destination the program sent to. A flow idle for
//!   [`UDP_IDLE`] is forgotten. One socket of the program sending to two local destinations
//!   at once is one conntrack clash: the kernel drops the second flow's datagrams.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mirrord_net_netfilter::Socket as NetfilterSocket;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

use super::outgoing::RelayPorts;

/// How long a UDP flow may be silent both ways before it is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(60);
/// How long the relay's own connect may take before the program's connection is reset.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest datagram.
const DATAGRAM_MAX: usize = 65_536;

/// The relay's sockets, as the child opens them and the client receives them.
pub struct RelaySockets {
    pub tcp4: OwnedFd,
    pub udp4: OwnedFd,
    pub conntrack: OwnedFd,
    /// Both or neither.
    pub v6: Option<(OwnedFd, OwnedFd)>,
}

impl RelaySockets {
    /// How many descriptors [`into_fds`](Self::into_fds) gives.
    pub fn fd_count(ipv6: bool) -> usize {
        if ipv6 {
            5
        } else {
            3
        }
    }

    /// Opens them in the calling thread's network namespace (the session child's, `lo` up).
    pub fn open(ipv6: bool) -> io::Result<Self> {
        let tcp4 = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let udp4 = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let v6 = if ipv6 {
            let tcp6 = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0))?;
            let udp6 = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))?;
            Some((tcp6.into(), udp6.into()))
        } else {
            None
        };
        Ok(RelaySockets {
            tcp4: tcp4.into(),
            udp4: udp4.into(),
            conntrack: NetfilterSocket::open()?.into_fd(),
            v6,
        })
    }

    /// Their local ports, which the redirects name.
    pub fn ports(&self) -> io::Result<RelayPorts> {
        let port = |fd: &OwnedFd| -> io::Result<u16> {
            socket2::SockRef::from(fd)
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("a relay socket without an IP address"))
        };
        Ok(RelayPorts {
            tcp4: port(&self.tcp4)?,
            udp4: port(&self.udp4)?,
            tcp6: self.v6.as_ref().map(|(tcp, _)| port(tcp)).transpose()?,
            udp6: self.v6.as_ref().map(|(_, udp)| port(udp)).transpose()?,
        })
    }

    /// In the order they travel: TCP, UDP, conntrack, then IPv6's TCP and UDP.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        let mut fds = vec![self.tcp4, self.udp4, self.conntrack];
        if let Some((tcp6, udp6)) = self.v6 {
            fds.push(tcp6);
            fds.push(udp6);
        }
        fds
    }

    /// From [`into_fds`](Self::into_fds)'s order; `None` when the count is not 3 or 5.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Option<Self> {
        let mut fds = fds.into_iter();
        let (tcp4, udp4, conntrack) = (fds.next()?, fds.next()?, fds.next()?);
        let v6 = match (fds.next(), fds.next()) {
            (Some(tcp6), Some(udp6)) => Some((tcp6, udp6)),
            (None, None) => None,
            _ => return None,
        };
        fds.next().is_none().then_some(RelaySockets {
            tcp4,
            udp4,
            conntrack,
            v6,
        })
    }
}

/// The relay's tasks, aborted when the session ends.
pub struct Relay {
    _tasks: JoinSet<()>,
}

impl Relay {
    /// Serves the sockets on the current tokio runtime.
    pub fn start(sockets: RelaySockets) -> io::Result<Relay> {
        let mut tasks = JoinSet::new();
        let conntrack = Arc::new(Mutex::new(NetfilterSocket::from_fd(sockets.conntrack)));
        let mut pairs = vec![(sockets.tcp4, sockets.udp4)];
        pairs.extend(sockets.v6);
        for (tcp, udp) in pairs {
            let tcp = TcpListener::from_std(nonblocking(tcp)?.into())?;
            let udp = UdpSocket::from_std(nonblocking(udp)?.into())?;
            tasks.spawn(serve_tcp(tcp));
            tasks.spawn(serve_udp(udp, conntrack.clone()));
        }
        Ok(Relay { _tasks: tasks })
    }
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    let socket = socket2::Socket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

async fn serve_tcp(listener: TcpListener) {
    let v6 = listener.local_addr().is_ok_and(|a| a.is_ipv6());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!("the outgoing relay cannot accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            if let Err(err) = relay_tcp(stream, v6).await {
                tracing::debug!(%peer, "local flow ended: {err}");
            }
        });
    }
}

async fn relay_tcp(mut stream: TcpStream, v6: bool) -> io::Result<()> {
    let destination = mirrord_net_netfilter::conntrack::original_destination_of(&stream, v6)?;
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination)).await;
    let mut upstream = match upstream {
        Ok(Ok(upstream)) => upstream,
        failed => {
            // Reset, so that the program sees the failure at once.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            let err = match failed {
                Ok(Err(err)) => err,
                _ => io::Error::from(io::ErrorKind::TimedOut),
            };
            tracing::debug!(%destination, "local connection failed: {err}");
            return Ok(());
        }
    };
    tracing::debug!(%destination, "local connection");
    let _ = upstream.set_nodelay(true);
    let _ = stream.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
    Ok(())
}

/// One UDP flow: the host socket connected to its destination.
struct UdpFlow {
    upstream: Arc<UdpSocket>,
}

async fn serve_udp(socket: UdpSocket, conntrack: Arc<Mutex<NetfilterSocket>>) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let flows: Arc<Mutex<HashMap<SocketAddr, UdpFlow>>> = Arc::default();
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (len, source) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!("the outgoing relay's UDP socket: {err}");
                continue;
            }
        };
        let existing = flows
            .lock()
            .expect("flows")
            .get(&source)
            .map(|f| f.upstream.clone());
        let upstream = match existing {
            Some(upstream) => upstream,
            None => match open_udp_flow(&conntrack, local, source).await {
                Ok(upstream) => {
                    let upstream = Arc::new(upstream);
                    flows.lock().expect("flows").insert(
                        source,
                        UdpFlow {
                            upstream: upstream.clone(),
                        },
                    );
                    tokio::spawn(answers(
                        upstream.clone(),
                        socket.clone(),
                        source,
                        flows.clone(),
                    ));
                    upstream
                }
                Err(err) => {
                    tracing::debug!(%source, "local datagram dropped: {err}");
                    continue;
                }
            },
        };
        // A refused destination shows on the flow's next receive. (Not `try_send`: tokio's
        // needs readiness seen before, which a new socket has not.)
        if let Err(err) = upstream.send(&buf[..len]).await {
            tracing::debug!(%source, "local datagram dropped: {err}");
        }
    }
}

async fn open_udp_flow(
    conntrack: &Mutex<NetfilterSocket>,
    local: SocketAddr,
    source: SocketAddr,
) -> io::Result<UdpSocket> {
    let destination = conntrack.lock().expect("conntrack").original_destination(
        libc::IPPROTO_UDP as u8,
        local,
        source,
    )?;
    let bind: SocketAddr = if destination.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let upstream = UdpSocket::bind(bind).await?;
    upstream.connect(destination).await?;
    tracing::debug!(%source, %destination, "local UDP flow");
    Ok(upstream)
}

/// Copies a flow's answers back to the program until it has been idle for [`UDP_IDLE`].
async fn answers(
    upstream: Arc<UdpSocket>,
    relay: Arc<UdpSocket>,
    source: SocketAddr,
    flows: Arc<Mutex<HashMap<SocketAddr, UdpFlow>>>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        match tokio::time::timeout(UDP_IDLE, upstream.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                let _ = relay.send_to(&buf[..len], source).await;
            }
            // ECONNREFUSED from an ICMP error: the program gets nothing, as from a
            // destination that drops. Keep the flow; its next datagram may be answered.
            Ok(Err(_)) => continue,
            Err(_idle) => break,
        }
    }
    flows.lock().expect("flows").remove(&source);
}
