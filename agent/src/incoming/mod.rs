//! Incoming traffic: the target's inbound TCP connections taken into the session (steal).
//!
//! ```text
//!  client in another pod            target's network namespace
//!  10.0.0.7:51234 ──SYN──► eth0 ─► prerouting: table inet mirrord-net-<agent pid> (owner)
//!                                   tcp dport 8080 redirect to :L
//!                                        │
//!                                        ▼
//!                     agent listener :L  accept(); SO_ORIGINAL_DST = 10.0.0.9:8080
//!                                        │ InboundConnection { peer 10.0.0.7:51234,
//!                                        │                     session 10.0.0.9:8080 }
//!                                        ▼
//!                     stack: smoltcp socket 10.0.0.7:51234 → 10.0.0.9:8080, SYN through
//!                     the tunnel to the session's TUN; the program's accept() sees
//!                     10.0.0.7:51234; bytes relayed both ways like any flow
//! ```
//!
//! What the session takes is decided by [`plan::redirects`] from the client's request
//! ([`IncomingConfig`]), the ports the session's programs listen on (the client reports
//! them at least every second, which doubles as its heartbeat) and whether the client was
//! heard within [`SILENCE_LIMIT`]. The rules follow that set (`nft::Nft::set_ports`), so:
//!
//! * while the session's program does not listen, the port has no redirect and the target
//!   answers as always; a connection that was redirected just before the program went away
//!   is refused by the session's kernel and then taken to the target by the agent itself
//!   (its connect leaves through `output`, which the redirect does not see);
//! * a client silent for three seconds gives its ports back; the agent's exit (however it
//!   exits) deletes its table, since the table is owned by the agent's netlink socket.
//!
//! Connections already handed to the session stay there until they end.
//!
//! With an HTTP filter ([`IncomingConfig::http_filter`]), a stolen connection on a filtered
//! port is not handed to the stack whole: [`filtered`] serves it request by request, the
//! matching ones into the session, the others to the target.

mod filtered;
pub mod http;
pub mod mirror;
mod nft;
mod original_dst;
pub mod plan;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use mirrord_net_protocol::listening::parse_listening;
use mirrord_net_protocol::messages::{AgentMessage, IncomingConfig, SILENCE_LIMIT};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use self::http::HttpFilter;
use crate::stack::inbound::{InboundConnection, InboundSender};

/// How often the redirect set is re-evaluated without news (the silence limit, the
/// target's ports for `--steal-all`).
const TICK: Duration = Duration::from_millis(250);

/// What the control stream tells the incoming side.
#[derive(Debug)]
pub enum ControlEvent {
    Config(IncomingConfig),
    /// The session's listening ports; also the client's heartbeat.
    Listening(Vec<u16>),
}

/// The target's addresses, which the session's TUN carries.
#[derive(Debug, Clone, Default)]
pub struct SessionAddrs {
    pub ipv4: Vec<Ipv4Addr>,
    pub ipv6: Vec<Ipv6Addr>,
}

impl SessionAddrs {
    /// Where in the session a connection to `original` goes: the same address when the
    /// session carries it, else the session's first address of the same family.
    fn session_ip(&self, original: IpAddr) -> Option<IpAddr> {
        match original {
            IpAddr::V4(ip) if self.ipv4.contains(&ip) => Some(original),
            IpAddr::V6(ip) if self.ipv6.contains(&ip) => Some(original),
            IpAddr::V4(_) => self.ipv4.first().copied().map(IpAddr::V4),
            IpAddr::V6(_) => self.ipv6.first().copied().map(IpAddr::V6),
        }
    }
}

/// The listeners the redirect points at: one port, IPv4 and IPv6.
struct Listeners {
    v4: TcpListener,
    v6: Option<TcpListener>,
    port: u16,
}

impl Listeners {
    fn bind() -> io::Result<Self> {
        let mut last = None;
        for _ in 0..20 {
            let v4 = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))?;
            let port = v4.local_addr()?.port();
            v4.set_nonblocking(true)?;
            let v4 = TcpListener::from_std(v4)?;
            match bind_v6(port) {
                Ok(v6) => return Ok(Self { v4, v6, port }),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free port")))
    }

    /// Accepts from either listener.
    async fn accept(&self) -> io::Result<(TcpStream, SocketAddr)> {
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = self.v4.poll_accept(cx) {
                return Poll::Ready(result);
            }
            match &self.v6 {
                Some(v6) => v6.poll_accept(cx),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// An IPv6-only listener on `port`; `None` where the namespace has no IPv6.
fn bind_v6(port: u16) -> io::Result<Option<TcpListener>> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    let addr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        Err(err) if err.raw_os_error() == Some(libc::EAFNOSUPPORT) => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::EADDRNOTAVAIL) => return Ok(None),
        Err(err) => return Err(err),
    }
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(Some(TcpListener::from_std(socket.into())?))
}

/// What is stolen now, and the means.
struct Stealing {
    nft: nft::Nft,
    listeners: Listeners,
    /// Loopback pairs for filtered connections.
    pairs: Arc<filtered::Pairs>,
}

struct State {
    config: Option<IncomingConfig>,
    /// The config's HTTP filter, compiled.
    filter: Option<Arc<HttpFilter>>,
    listening: Vec<u16>,
    last_heard: Instant,
    /// Target port → session port, as the rules are now.
    current: BTreeMap<u16, u16>,
    stealing: Option<Stealing>,
    /// The last failure reported, so a persistent one is said once.
    reported: Option<String>,
}

/// Runs the incoming side until the control stream ends (`events` closes). Dropping the
/// table's socket on return deletes the table.
pub async fn run(
    mut events: mpsc::UnboundedReceiver<ControlEvent>,
    stack: InboundSender,
    report: mpsc::UnboundedSender<AgentMessage>,
    addrs: SessionAddrs,
) {
    let mut state = State {
        config: None,
        filter: None,
        listening: Vec::new(),
        last_heard: Instant::now(),
        current: BTreeMap::new(),
        stealing: None,
        reported: None,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.recv() => {
                match event {
                    None => return,
                    Some(ControlEvent::Config(config)) => {
                        state.last_heard = Instant::now();
                        match compile(&config) {
                            Ok(filter) => {
                                state.filter = filter;
                                state.config = Some(config);
                            }
                            Err(line) => {
                                // Nothing is stolen rather than everything.
                                state.config = None;
                                state.filter = None;
                                say(&mut state, &report, line);
                            }
                        }
                        if state.stealing.is_none() {
                            match start() {
                                Ok(stealing) => state.stealing = Some(stealing),
                                Err(err) => say(&mut state, &report, format!("cannot steal incoming traffic: {err}")),
                            }
                        }
                    }
                    Some(ControlEvent::Listening(ports)) => {
                        state.last_heard = Instant::now();
                        state.listening = ports;
                    }
                }
                update(&mut state, &report);
            }
            _ = tick.tick() => update(&mut state, &report),
            accepted = accept(&state.stealing) => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "accepted");
                    dispatch(&state, &addrs, &stack, stream, peer)
                }
                Err(err) => tracing::debug!("accept: {err}"),
            },
        }
    }
}

async fn accept(stealing: &Option<Stealing>) -> io::Result<(TcpStream, SocketAddr)> {
    match stealing {
        Some(stealing) => stealing.listeners.accept().await,
        None => std::future::pending().await,
    }
}

/// The config's HTTP filter, compiled; an error is one line for the user.
fn compile(config: &IncomingConfig) -> Result<Option<Arc<HttpFilter>>, String> {
    let Some(filter) = &config.http_filter else {
        return Ok(None);
    };
    HttpFilter::new(
        filter.header.as_deref(),
        filter.path.as_deref(),
        filter.key.as_deref(),
    )
    .map(|filter| Some(Arc::new(filter)))
    .map_err(|err| format!("cannot use the HTTP filter: {err}").replace('\n', " "))
}

fn start() -> io::Result<Stealing> {
    let table = format!("mirrord-net-{}", std::process::id());
    let nft = nft::Nft::create(&table).map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot create nftables table inet {table}: {err}"),
        )
    })?;
    let listeners = Listeners::bind()?;
    let pairs = Arc::new(filtered::Pairs::bind()?);
    tracing::info!(table = nft.table(), port = listeners.port, "ready to steal");
    Ok(Stealing {
        nft,
        listeners,
        pairs,
    })
}

fn say(state: &mut State, report: &mpsc::UnboundedSender<AgentMessage>, line: String) {
    if state.reported.as_deref() != Some(line.as_str()) {
        tracing::warn!("{line}");
        let _ = report.send(AgentMessage::IncomingFailed(line.clone()));
        state.reported = Some(line);
    }
}

/// Brings the rules in line with what should be stolen now.
fn update(state: &mut State, report: &mpsc::UnboundedSender<AgentMessage>) {
    let Some(config) = &state.config else {
        return;
    };
    let alive = state.last_heard.elapsed() < SILENCE_LIMIT;
    let target_listening = if config.steal_all {
        target_listening()
    } else {
        Vec::new()
    };
    let wanted = plan::redirects(config, &state.listening, &target_listening, alive);
    if wanted == state.current {
        return;
    }
    let Some(stealing) = state.stealing.as_mut() else {
        return;
    };
    let to = stealing.listeners.port;
    let ports: Vec<(u16, u16)> = wanted.keys().map(|&port| (port, to)).collect();
    match stealing.nft.set_ports(&ports) {
        Ok(()) => {
            if !alive && !state.current.is_empty() {
                tracing::warn!("no word from the client: stolen ports go back to the target");
            }
            tracing::info!(ports = ?wanted, "stealing");
            state.current = wanted;
            let _ = report.send(AgentMessage::Stealing(
                state.current.keys().copied().collect(),
            ));
        }
        Err(err) => {
            let table = stealing.nft.table().to_owned();
            say(
                state,
                report,
                format!("cannot change the redirects of nftables table inet {table}: {err}"),
            );
        }
    }
}

/// The TCP ports the target listens on (the agent lives in its network namespace).
fn target_listening() -> Vec<u16> {
    let mut ports = Vec::new();
    for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            ports.extend(parse_listening(&text));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Sends an accepted connection where it belongs: into the session when its port is stolen
/// (or back to the target if the session does not take it), to the target when the port was
/// given back meanwhile.
fn dispatch(
    state: &State,
    addrs: &SessionAddrs,
    stack: &InboundSender,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let original = match original_dst::of(&stream) {
        Ok(original) => original,
        Err(err) => {
            tracing::debug!(%peer, "no original destination: {err}");
            return;
        }
    };
    tracing::debug!(%peer, %original, "inbound connection");
    let own_port = state.stealing.as_ref().map(|s| s.listeners.port);
    if Some(original.port()) == own_port {
        // Someone connected to the listener itself, not to a stolen port.
        tracing::debug!(%peer, "a connection to the listener itself; closed");
        return;
    }
    let _ = stream.set_nodelay(true);
    let session = state
        .current
        .get(&original.port())
        .and_then(|&local| Some(SocketAddr::new(addrs.session_ip(original.ip())?, local)));
    let Some(session) = session else {
        tokio::spawn(to_target(stream, original));
        return;
    };
    let peer = canonical(peer);
    let filter_applies = state
        .config
        .as_ref()
        .and_then(|config| config.http_filter.as_ref())
        .is_some_and(|filter| filter.applies_to(original.port()));
    if let (true, Some(filter), Some(stealing)) = (filter_applies, &state.filter, &state.stealing) {
        let to = filtered::Filtered {
            filter: filter.clone(),
            pairs: stealing.pairs.clone(),
            stack: stack.clone(),
            peer,
            session,
            original,
        };
        filtered::spawn(stream, to);
        return;
    }
    let (done, outcome) = oneshot::channel();
    let conn = InboundConnection {
        peer,
        session,
        stream,
        done,
    };
    if stack.send(conn).is_err() {
        tracing::debug!(%peer, "the stack is gone");
        return;
    }
    tokio::spawn(async move {
        match outcome.await {
            Ok(Ok(())) => tracing::debug!(%peer, %session, "stolen connection in the session"),
            Ok(Err(stream)) => {
                tracing::debug!(%peer, %session, "the session did not take it; to the target");
                to_target(stream, original).await;
            }
            Err(_) => tracing::debug!(%peer, %session, "the stack dropped the connection"),
        }
    });
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// Relays a connection to the target's own listener at `original`.
async fn to_target(mut stream: TcpStream, original: SocketAddr) {
    match TcpStream::connect(original).await {
        Ok(mut upstream) => {
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        }
        Err(err) => {
            tracing::debug!(%original, "the target refused too: {err}");
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        }
    }
}
