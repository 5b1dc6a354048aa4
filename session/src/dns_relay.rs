//! The DNS filter's relay: the session's queries to its resolvers, answered by this machine's
//! resolver or the target's as [`dns_filter`](super::dns_filter) decides.
//!
//! The session child opens the sockets in the session's namespace and passes them to the
//! client with the TUN ([`DnsSockets`]): a UDP socket on `127.0.0.1` (and `::1` when the
//! session has IPv6) where the session's table redirects the queries, a UDP socket per family
//! marked with [`FORWARD_MARK`] for the queries that go on to the target's resolvers, and a
//! `NETLINK_NETFILTER` socket for conntrack (which resolver the asker sent to). The client
//! serves them from its own namespaces ([`DnsRelay`]):
//!
//! - a query for this machine goes from a new host socket to each nameserver of the host's
//!   `/etc/resolv.conf` in turn (127.0.0.1 without one), [`HOST_TRY`] each, and the first
//!   answer goes back to the asker from the relay's socket;
//! - a query for the target goes out of the marked socket, with an ID of its own, to the
//!   resolver the asker chose; its answer, ID restored, goes back the same way.
//!
//! The relay never answers by itself: a query that cannot be sent is dropped and the asker's
//! resolver retries or fails over as it would against a silent server.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrord_net_netfilter::Socket as NetfilterSocket;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::dns_filter::{
    message_id, query_name, set_message_id, DnsPorts, DnsRules, Forwards, FORWARD_MARK,
};
use super::outgoing::resolver_destinations;

/// How long one nameserver of this machine gets to answer.
const HOST_TRY: Duration = Duration::from_secs(2);
/// The largest datagram.
const DATAGRAM_MAX: usize = 65_536;
/// This machine's resolver configuration.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

/// The relay's sockets, as the child opens them and the client receives them.
pub struct DnsSockets {
    pub udp4: OwnedFd,
    pub forward4: OwnedFd,
    pub conntrack: OwnedFd,
    /// `(udp6, forward6)`: both or neither.
    pub v6: Option<(OwnedFd, OwnedFd)>,
}

impl DnsSockets {
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
        let udp4 = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
        let forward4 = marked(socket2::Domain::IPV4)?;
        let v6 = if ipv6 {
            let udp6 = std::net::UdpSocket::bind((Ipv6Addr::LOCALHOST, 0))?;
            Some((udp6.into(), marked(socket2::Domain::IPV6)?))
        } else {
            None
        };
        Ok(DnsSockets {
            udp4: udp4.into(),
            forward4,
            conntrack: NetfilterSocket::open()?.into_fd(),
            v6,
        })
    }

    /// Their local ports.
    pub fn ports(&self) -> io::Result<DnsPorts> {
        Ok(DnsPorts {
            udp4: port(&self.udp4)?,
            udp6: self.v6.as_ref().map(|(udp, _)| port(udp)).transpose()?,
            forward4: port(&self.forward4)?,
            forward6: self.v6.as_ref().map(|(_, fwd)| port(fwd)).transpose()?,
        })
    }

    /// In the order they travel: UDP, forward, conntrack, then IPv6's UDP and forward.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        let mut fds = vec![self.udp4, self.forward4, self.conntrack];
        if let Some((udp6, forward6)) = self.v6 {
            fds.push(udp6);
            fds.push(forward6);
        }
        fds
    }

    /// From [`into_fds`](Self::into_fds)'s order; `None` when the count is not 3 or 5.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Option<Self> {
        let mut fds = fds.into_iter();
        let (udp4, forward4, conntrack) = (fds.next()?, fds.next()?, fds.next()?);
        let v6 = match (fds.next(), fds.next()) {
            (Some(udp6), Some(forward6)) => Some((udp6, forward6)),
            (None, None) => None,
            _ => return None,
        };
        fds.next().is_none().then_some(DnsSockets {
            udp4,
            forward4,
            conntrack,
            v6,
        })
    }
}

/// An unconnected UDP socket on the family's unspecified address, marked so that the
/// session's redirect lets its queries pass.
fn marked(domain: socket2::Domain) -> io::Result<OwnedFd> {
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
    socket.set_mark(FORWARD_MARK)?;
    let any: SocketAddr = if domain == socket2::Domain::IPV6 {
        socket.set_only_v6(true)?;
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    socket.bind(&any.into())?;
    Ok(socket.into())
}

fn port(fd: &OwnedFd) -> io::Result<u16> {
    socket2::SockRef::from(fd)
        .local_addr()?
        .as_socket()
        .map(|a| a.port())
        .ok_or_else(|| io::Error::other("a DNS relay socket without an IP address"))
}

/// The relay's tasks, aborted when the session ends.
pub struct DnsRelay {
    _tasks: JoinSet<()>,
}

impl DnsRelay {
    /// Serves the sockets on the current tokio runtime, with the nameservers of this
    /// machine's resolv.conf.
    pub fn start(sockets: DnsSockets, rules: DnsRules) -> io::Result<DnsRelay> {
        let host = host_nameservers(&std::fs::read(HOST_RESOLV_CONF).unwrap_or_default());
        tracing::debug!(?host, "DNS filter: this machine's nameservers");
        let shared = Arc::new(Shared {
            rules,
            host,
            conntrack: Mutex::new(NetfilterSocket::from_fd(sockets.conntrack)),
        });
        let mut tasks = JoinSet::new();
        let mut pairs = vec![(sockets.udp4, sockets.forward4)];
        pairs.extend(sockets.v6);
        for (udp, forward) in pairs {
            let udp = Arc::new(UdpSocket::from_std(nonblocking(udp)?.into())?);
            let forward = Arc::new(UdpSocket::from_std(nonblocking(forward)?.into())?);
            let forwards = Arc::new(Mutex::new(Forwards::default()));
            tasks.spawn(serve(
                udp.clone(),
                forward.clone(),
                forwards.clone(),
                shared.clone(),
            ));
            tasks.spawn(target_answers(forward, udp, forwards));
        }
        Ok(DnsRelay { _tasks: tasks })
    }
}

/// The nameservers of this machine's resolv.conf, on port 53; 127.0.0.1 without any (what
/// the C library does).
fn host_nameservers(resolv_conf: &[u8]) -> Vec<SocketAddr> {
    let mut servers: Vec<SocketAddr> = resolver_destinations(resolv_conf)
        .into_iter()
        .map(|d| SocketAddr::new(d.addr, 53))
        .collect();
    if servers.is_empty() {
        servers.push((Ipv4Addr::LOCALHOST, 53).into());
    }
    servers
}

struct Shared {
    rules: DnsRules,
    host: Vec<SocketAddr>,
    conntrack: Mutex<NetfilterSocket>,
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    let socket = socket2::Socket::from(fd);
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Reads the session's queries and sends each on its way.
async fn serve(
    relay: Arc<UdpSocket>,
    forward: Arc<UdpSocket>,
    forwards: Arc<Mutex<Forwards>>,
    shared: Arc<Shared>,
) {
    let Ok(local) = relay.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (len, asker) = match relay.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(err) => {
                tracing::debug!("the DNS relay's socket: {err}");
                continue;
            }
        };
        let mut query = buf[..len].to_vec();
        let name = query_name(&query);
        if shared.rules.to_host(name.as_deref()) {
            tracing::debug!(?name, %asker, "DNS query for this machine's resolver");
            tokio::spawn(ask_host(query, asker, relay.clone(), shared.clone()));
            continue;
        }
        let Some(id) = message_id(&query) else {
            continue;
        };
        let resolver = shared
            .conntrack
            .lock()
            .expect("conntrack")
            .original_destination(libc::IPPROTO_UDP as u8, local, asker);
        let resolver = match resolver {
            Ok(resolver) => resolver,
            Err(err) => {
                tracing::debug!(%asker, "DNS query dropped, no original destination: {err}");
                continue;
            }
        };
        let wire = forwards
            .lock()
            .expect("forwards")
            .insert(asker, id, resolver, Instant::now());
        let Some(wire) = wire else {
            tracing::debug!(%asker, "DNS query dropped: every forwarded ID is taken");
            continue;
        };
        set_message_id(&mut query, wire);
        tracing::debug!(?name, %asker, %resolver, "DNS query for the target's resolver");
        if let Err(err) = forward.send_to(&query, resolver).await {
            tracing::debug!(%resolver, "DNS query to the target's resolver: {err}");
        }
    }
}

/// Returns the target's answers to their askers.
async fn target_answers(
    forward: Arc<UdpSocket>,
    relay: Arc<UdpSocket>,
    forwards: Arc<Mutex<Forwards>>,
) {
    let mut buf = vec![0u8; DATAGRAM_MAX];
    loop {
        let (len, from) = match forward.recv_from(&mut buf).await {
            Ok(received) => received,
            // ECONNREFUSED from an ICMP error and the like: the asker hears nothing.
            Err(_) => continue,
        };
        let answer = &mut buf[..len];
        let Some(wire) = message_id(answer) else {
            continue;
        };
        let Some((asker, id)) = forwards.lock().expect("forwards").answer(from, wire) else {
            continue;
        };
        set_message_id(answer, id);
        let _ = relay.send_to(answer, asker).await;
    }
}

/// Asks this machine's nameservers in turn and passes the first answer on.
async fn ask_host(query: Vec<u8>, asker: SocketAddr, relay: Arc<UdpSocket>, shared: Arc<Shared>) {
    let Some(id) = message_id(&query) else {
        return;
    };
    for &server in &shared.host {
        match ask_one(&query, id, server).await {
            Ok(answer) => {
                let _ = relay.send_to(&answer, asker).await;
                return;
            }
            Err(err) => tracing::debug!(%server, "this machine's nameserver: {err}"),
        }
    }
}

async fn ask_one(query: &[u8], id: u16, server: SocketAddr) -> io::Result<Vec<u8>> {
    let bind: SocketAddr = match server.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; DATAGRAM_MAX];
    tokio::time::timeout(HOST_TRY, async {
        loop {
            let len = socket.recv(&mut buf).await?;
            if message_id(&buf[..len]) == Some(id) {
                return Ok(buf[..len].to_vec());
            }
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_machines_nameservers_come_from_its_resolv_conf() {
        assert_eq!(
            host_nameservers(b"search x\nnameserver 192.0.2.53\nnameserver ::1\n"),
            [
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert_eq!(
            host_nameservers(b"# none\n"),
            ["127.0.0.1:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
