//! The DNS filter's relay: the session's queries to its resolvers, answered by this machine's
//! resolver or the target's as [`dns_filter`](super::dns_filter) decides.
//!
//! The session child opens the sockets in the session's namespace and passes them to the
//! client with the TUN ([`DnsSockets`]): a UDP socket and a TCP listener on `127.0.0.1` (and
//! `::1` when the session has IPv6) where the session's table redirects the queries, a UDP
//! socket per family marked with
//! [`FORWARD_MARK`](super::dns_filter::FORWARD_MARK) for the queries that go on to the
//! target's resolvers, a `NETLINK_NETFILTER` socket for conntrack (which resolver the asker
//! sent to), and the [`socket_maker`](super::socket_maker)'s end, for marked TCP sockets of
//! the session. The client serves them from its own namespaces ([`DnsRelay`]):
//!
//! - a query for this machine goes from a new host socket to each nameserver of the host's
//!   `/etc/resolv.conf` in turn (127.0.0.1 without one), [`HOST_TRY`] each, and the first
//!   answer goes back to the asker from the relay's socket;
//! - a query for the target goes out of the marked socket, with an ID of its own, to the
//!   resolver the asker chose; its answer, ID restored, goes back the same way.
//!
//! DNS over TCP (a resolver's retry after a truncated answer, or a resolver configured with
//! `use-vc`) is decided per connection, by its first query: the relay accepts the connection,
//! reads that query, and joins the connection to one to this machine's nameservers (in turn,
//! [`HOST_TRY`] each to connect) or to the resolver the asker connected to (`SO_ORIGINAL_DST`),
//! from a marked socket the maker made in the session. Later queries on the same connection go
//! the same way: resolvers send one name's retries there, and a pipelining one can be given
//! patterns that keep its names together.
//!
//! The relay never answers by itself: a query that cannot be sent is dropped (a TCP
//! connection closed) and the asker's resolver retries or fails over as it would against a
//! silent server.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mirrord_net_netfilter::Socket as NetfilterSocket;
use mirrord_net_protocol::resolv_conf::ResolvConf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::dns_filter::{message_id, query_name, set_message_id, DnsPorts, DnsRules, Forwards};
use super::socket_maker::{self, SocketMaker};

/// How long one nameserver of this machine gets to answer.
const HOST_TRY: Duration = Duration::from_secs(2);
/// The largest datagram.
const DATAGRAM_MAX: usize = 65_536;
/// This machine's resolver configuration.
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";
/// How long a TCP asker may take to send its first query.
const TCP_FIRST_QUERY: Duration = Duration::from_secs(10);
/// How long connecting to the target's resolver may take.
const TCP_CONNECT: Duration = Duration::from_secs(5);
/// DNS-over-TCP connections relayed at once; more wait for a turn.
const TCP_CONNECTIONS: usize = 256;

/// One family's sockets: the relay's UDP socket and TCP listener on the session's loopback,
/// and the marked UDP socket toward the target.
pub struct FamilySockets {
    pub udp: OwnedFd,
    pub tcp: OwnedFd,
    pub forward: OwnedFd,
}

impl FamilySockets {
    fn open(loopback: IpAddr) -> io::Result<Self> {
        let udp = std::net::UdpSocket::bind((loopback, 0))?;
        let tcp = std::net::TcpListener::bind((loopback, 0))?;
        let forward = marked_udp(loopback.is_ipv6())?;
        Ok(FamilySockets {
            udp: udp.into(),
            tcp: tcp.into(),
            forward,
        })
    }
}

/// The relay's sockets, as the child opens them and the client receives them.
pub struct DnsSockets {
    pub v4: FamilySockets,
    pub v6: Option<FamilySockets>,
    pub conntrack: OwnedFd,
    /// The [`socket_maker`](super::socket_maker)'s end.
    pub maker: OwnedFd,
}

impl DnsSockets {
    /// How many descriptors [`into_fds`](Self::into_fds) gives.
    pub fn fd_count(ipv6: bool) -> usize {
        if ipv6 {
            8
        } else {
            5
        }
    }

    /// Opens them in the calling thread's network namespace (the session child's, `lo` up),
    /// and forks the socket maker there.
    pub fn open(ipv6: bool) -> io::Result<Self> {
        let v4 = FamilySockets::open(Ipv4Addr::LOCALHOST.into())?;
        let v6 = if ipv6 {
            Some(FamilySockets::open(Ipv6Addr::LOCALHOST.into())?)
        } else {
            None
        };
        Ok(DnsSockets {
            v4,
            v6,
            conntrack: NetfilterSocket::open()?.into_fd(),
            maker: socket_maker::spawn()?,
        })
    }

    /// Their local ports.
    pub fn ports(&self) -> io::Result<DnsPorts> {
        let v6 = self.v6.as_ref();
        Ok(DnsPorts {
            udp4: port(&self.v4.udp)?,
            udp6: v6.map(|v6| port(&v6.udp)).transpose()?,
            tcp4: port(&self.v4.tcp)?,
            tcp6: v6.map(|v6| port(&v6.tcp)).transpose()?,
            forward4: port(&self.v4.forward)?,
            forward6: v6.map(|v6| port(&v6.forward)).transpose()?,
        })
    }

    /// In the order they travel: conntrack, the maker, IPv4's UDP, TCP and forward, then
    /// IPv6's.
    pub fn into_fds(self) -> Vec<OwnedFd> {
        let mut fds = vec![self.conntrack, self.maker];
        for family in std::iter::once(self.v4).chain(self.v6) {
            fds.extend([family.udp, family.tcp, family.forward]);
        }
        fds
    }

    /// From [`into_fds`](Self::into_fds)'s order; `None` when the count is not 5 or 8.
    pub fn from_fds(fds: Vec<OwnedFd>) -> Option<Self> {
        let mut fds = fds.into_iter();
        let (conntrack, maker) = (fds.next()?, fds.next()?);
        let family = |fds: &mut std::vec::IntoIter<OwnedFd>| {
            Some(FamilySockets {
                udp: fds.next()?,
                tcp: fds.next()?,
                forward: fds.next()?,
            })
        };
        let v4 = family(&mut fds)?;
        let v6 = match fds.len() {
            0 => None,
            3 => Some(family(&mut fds)?),
            _ => return None,
        };
        Some(DnsSockets {
            v4,
            v6,
            conntrack,
            maker,
        })
    }
}

/// An unconnected UDP socket on the family's unspecified address, marked so that the
/// session's redirect lets its queries pass.
fn marked_udp(ipv6: bool) -> io::Result<OwnedFd> {
    let socket = socket_maker::marked(ipv6, socket2::Type::DGRAM)?;
    let any: SocketAddr = if ipv6 {
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
            maker: Arc::new(SocketMaker::new(sockets.maker)),
            tcp_turns: Arc::new(Semaphore::new(TCP_CONNECTIONS)),
        });
        let mut tasks = JoinSet::new();
        for family in std::iter::once(sockets.v4).chain(sockets.v6) {
            let udp = Arc::new(UdpSocket::from_std(nonblocking(family.udp)?.into())?);
            let forward = Arc::new(UdpSocket::from_std(nonblocking(family.forward)?.into())?);
            let tcp = TcpListener::from_std(nonblocking(family.tcp)?.into())?;
            let forwards = Arc::new(Mutex::new(Forwards::default()));
            tasks.spawn(serve(
                udp.clone(),
                forward.clone(),
                forwards.clone(),
                shared.clone(),
            ));
            tasks.spawn(target_answers(forward, udp, forwards));
            tasks.spawn(serve_tcp(tcp, shared.clone()));
        }
        Ok(DnsRelay { _tasks: tasks })
    }
}

/// The nameservers of this machine's resolv.conf, on port 53; 127.0.0.1 without any (what
/// the C library does).
fn host_nameservers(resolv_conf: &[u8]) -> Vec<SocketAddr> {
    ResolvConf::parse_bytes(resolv_conf).servers()
}

struct Shared {
    rules: DnsRules,
    host: Vec<SocketAddr>,
    conntrack: Mutex<NetfilterSocket>,
    maker: Arc<SocketMaker>,
    tcp_turns: Arc<Semaphore>,
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

/// Accepts the session's DNS-over-TCP connections.
async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let asker = match listener.accept().await {
            Ok((asker, _)) => asker,
            Err(err) => {
                tracing::debug!("the DNS relay's TCP listener: {err}");
                // EMFILE and the like: give the table a moment rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(turn) = shared.tcp_turns.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(err) = relay_tcp(asker, &shared).await {
                tracing::debug!("DNS over TCP: {err}");
            }
            drop(turn);
        });
    }
}

/// Reads the connection's first query, joins it to this machine's nameservers or the
/// target's resolver as the query's name decides, and relays both ways until either closes.
async fn relay_tcp(mut asker: TcpStream, shared: &Shared) -> io::Result<()> {
    let first = tokio::time::timeout(TCP_FIRST_QUERY, read_tcp_message(&mut asker))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let name = query_name(&first);
    let mut upstream = if shared.rules.to_host(name.as_deref()) {
        tracing::debug!(?name, "DNS over TCP for this machine's resolver");
        connect_host(&shared.host).await?
    } else {
        let resolver = original_destination(&asker)?;
        tracing::debug!(?name, %resolver, "DNS over TCP for the target's resolver");
        let maker = shared.maker.clone();
        let socket = tokio::task::spawn_blocking(move || maker.marked_tcp(resolver.is_ipv6()))
            .await
            .map_err(io::Error::other)??;
        let socket = TcpSocket::from_std_stream(nonblocking(socket)?.into());
        tokio::time::timeout(TCP_CONNECT, socket.connect(resolver))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??
    };
    let mut framed = Vec::with_capacity(2 + first.len());
    framed.extend_from_slice(&(first.len() as u16).to_be_bytes());
    framed.extend_from_slice(&first);
    upstream.write_all(&framed).await?;
    tokio::io::copy_bidirectional(&mut asker, &mut upstream).await?;
    Ok(())
}

/// One DNS-over-TCP message: a two-byte length, then the message.
async fn read_tcp_message(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let len = stream.read_u16().await? as usize;
    let mut message = vec![0u8; len];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

/// This machine's nameservers in turn, [`HOST_TRY`] each.
async fn connect_host(servers: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::from(io::ErrorKind::NotFound);
    for &server in servers {
        match tokio::time::timeout(HOST_TRY, TcpStream::connect(server)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(err)) => last = err,
            Err(_) => last = io::ErrorKind::TimedOut.into(),
        }
        tracing::debug!(%server, "this machine's nameserver over TCP: {last}");
    }
    Err(last)
}

/// Where the asker connected before the session's redirect sent it here.
fn original_destination(asker: &TcpStream) -> io::Result<SocketAddr> {
    use nix::sys::socket::{getsockopt, sockopt};
    let local = asker.local_addr()?;
    let to_io = |err: nix::Error| io::Error::from_raw_os_error(err as i32);
    match local {
        SocketAddr::V4(_) => {
            let addr = getsockopt(asker, sockopt::OriginalDst).map_err(to_io)?;
            Ok(SocketAddr::new(
                Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)).into(),
                u16::from_be(addr.sin_port),
            ))
        }
        SocketAddr::V6(_) => {
            let addr = getsockopt(asker, sockopt::Ip6tOriginalDst).map_err(to_io)?;
            Ok(SocketAddr::new(
                Ipv6Addr::from(addr.sin6_addr.s6_addr).into(),
                u16::from_be(addr.sin6_port),
            ))
        }
    }
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
