//! Many sessions on one target: the sessions stealing the same port share it, each getting
//! the requests its filter matches, coordinated through the target's network namespace
//! itself, so that it works whatever kind of agent each session has (a local agent, a
//! Kubernetes Job agent in its own pod joined to the target's namespace, an ephemeral
//! container) and survives any one of them dying.
//!
//! ```text
//!                          target's network namespace
//!   agent A (began first)                           agent B                agent C
//!   binds @mirrord-net/steal/8080  ◄── Claim ────── connect, register      (same)
//!   = the port's ROUTER                ── Reply ──► Accepted / Refused(line)
//!   nft: tcp dport 8080 redirect                    (socket kept open: its closing
//!   (in A's own table)                               removes B's routes at once)
//!        │
//!   client ─► A's listener ─► HTTP proxy: routes of A, B, C in the order they began
//!        ├─ A's filter ─► A's stack ─► A's session
//!        ├─ B's filter ─► connect @mirrord-net/ingress/<B> ── Ingress{peer, original,
//!        │                session port} ──► B: into B's stack like its own connection;
//!        │                answers TAKEN (1) or NOT_TAKEN (0: nothing listens, → target)
//!        └─ none ───────► the target's own listener
//! ```
//!
//! Abstract unix socket names belong to a network namespace and vanish with their socket
//! (SIGKILL included), so:
//!
//! * per target port, the first agent to bind [`messages::router_name`] is the port's
//!   router: only it installs the port's redirect, and it serves every connection with the
//!   HTTP proxy over the routes of every registered session ([`PortRoutes`]), its own
//!   included, a request matching none going to the target;
//! * every other agent that wants the port connects and registers a [`messages::Claim`]
//!   (who the session is, when it began stealing, its filter, its session port). The router
//!   admits it or refuses it ([`messages::admit`]: an unfiltered steal needs the port alone)
//!   with the line the refused session's client prints;
//! * a registration lasts as long as its socket: an agent registers only while its session
//!   listens on the port and its client is heard from (the same plan decides as for the
//!   router's own redirect), so the 3 s silence rule and "listener not up → target" hold for
//!   registrants too, and a registrant that dies is out of the routes at once;
//! * when the router goes (its session ended or went silent, or it was SIGKILLed) the
//!   registrants see their socket end and race to bind the name; the kernel lets exactly one
//!   win, which installs the redirect, and the others register with it. Each keeps the time
//!   it began stealing, so precedence survives the change. Between the old redirect going
//!   and the new one coming, connections reach the target, which is the fallback rule.
//!
//! A request for a registrant travels on its own unix connection to the registrant's ingress
//! socket ([`messages::ingress_name`], bound by every agent that steals); the registrant
//! opens it into its session through its stack exactly as it does its own filtered
//! connections (a loopback pair, `super::filtered`) and relays the bytes. The router keeps
//! one such connection per client connection and registrant, like any upstream.
//!
//! What each claim task does is reported to the incoming loop as a [`RoleChange`]: the loop
//! redirects exactly the ports this agent routes, and tells its client which ports it takes
//! and which were refused.

pub mod messages;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mirrord_net_protocol::framing::{self, FrameDecoder};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::messages::{Claim, Ingress, Reply, NOT_TAKEN, TAKEN};
use super::filtered::{Pairs, SessionConnector};
use super::http::{BoxedStream, Connector, HttpFilter, Route, Routes};
use super::session_addrs::SessionAddrs;
use crate::stack::inbound::InboundSender;

/// How long a registration or a delivery's header and answer may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);
/// A delivery to a registrant fails this fast when the registrant is stuck, so its request
/// goes to the target.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(1);
/// Between attempts while the router's name is bound but its listener not answering (the
/// instant between another agent's bind and listen, or a router that just died).
const RACE_RETRY: Duration = Duration::from_millis(20);
/// Between attempts of a refused session (the holder may go away).
const REFUSED_RETRY: Duration = Duration::from_secs(1);

/// This agent's means to open a connection into its own session.
#[derive(Clone)]
pub struct Own {
    pub pairs: Arc<Pairs>,
    pub stack: InboundSender,
    pub addrs: SessionAddrs,
}

impl Own {
    /// A connector into this session for a connection from `peer` to the target's
    /// `original`, to the session's `session_port`; `None` when the session carries no
    /// address of `original`'s family.
    pub fn connector(
        &self,
        peer: SocketAddr,
        original: SocketAddr,
        session_port: u16,
    ) -> Option<SessionConnector> {
        let ip = self.addrs.session_ip(original.ip())?;
        Some(SessionConnector {
            pairs: self.pairs.clone(),
            stack: self.stack.clone(),
            peer,
            session: SocketAddr::new(ip, session_port),
        })
    }
}

/// Where a route's requests go.
enum Upstream {
    /// The router's own session.
    Own(Own),
    /// A registrant's ingress socket.
    Ingress(String),
}

struct Entry {
    id: u64,
    claim: Claim,
    /// `None`: unfiltered (then it is the router's own and the only entry).
    filter: Option<Arc<HttpFilter>>,
    upstream: Upstream,
}

/// The sessions sharing one port as its router knows them now, in precedence order.
pub struct PortRoutes {
    port: u16,
    entries: RefCell<Vec<Entry>>,
    next_id: Cell<u64>,
}

impl PortRoutes {
    fn new(port: u16, claim: Claim, filter: Option<Arc<HttpFilter>>, own: Own) -> Rc<Self> {
        Rc::new(Self {
            port,
            entries: RefCell::new(vec![Entry {
                id: 0,
                claim,
                filter,
                upstream: Upstream::Own(own),
            }]),
            next_id: Cell::new(1),
        })
    }

    /// Adds a registrant's claim, or refuses it with a line for its user.
    fn admit(&self, claim: Claim) -> Result<u64, String> {
        {
            let entries = self.entries.borrow();
            let holders: Vec<&Claim> = entries.iter().map(|entry| &entry.claim).collect();
            messages::admit(self.port, &holders, &claim)?;
        }
        let filter = match &claim.filter {
            None => None,
            Some(config) => Some(Arc::new(
                HttpFilter::new(
                    config.header.as_deref(),
                    config.path.as_deref(),
                    config.key.as_deref(),
                )
                .map_err(|err| format!("cannot use the HTTP filter: {err}").replace('\n', " "))?,
            )),
        };
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let name = claim.ingress.clone();
        let mut entries = self.entries.borrow_mut();
        entries.push(Entry {
            id,
            claim,
            filter,
            upstream: Upstream::Ingress(name),
        });
        messages::order(&mut entries, |entry| &entry.claim);
        Ok(id)
    }

    fn remove(&self, id: u64) {
        self.entries.borrow_mut().retain(|entry| entry.id != id);
    }

    /// The sessions on the port now, for logs.
    fn sessions(&self) -> Vec<String> {
        let entries = self.entries.borrow();
        entries.iter().map(|e| e.claim.session.clone()).collect()
    }

    /// The routes one client connection (from `peer` to `original`) is served over.
    pub fn for_connection(
        self: &Rc<Self>,
        peer: SocketAddr,
        original: SocketAddr,
    ) -> ConnectionRoutes {
        ConnectionRoutes {
            port: self.clone(),
            peer,
            original,
            connectors: RefCell::new(Vec::new()),
        }
    }
}

/// A port's routes for one client connection: each session's connector is made once per
/// connection (the proxy reuses an upstream connection per connector).
pub struct ConnectionRoutes {
    port: Rc<PortRoutes>,
    peer: SocketAddr,
    original: SocketAddr,
    connectors: RefCell<Vec<(u64, Rc<dyn Connector>)>>,
}

impl Routes for ConnectionRoutes {
    fn current(&self) -> Vec<Route> {
        let entries = self.port.entries.borrow();
        let mut connectors = self.connectors.borrow_mut();
        let mut routes = Vec::with_capacity(entries.len());
        for entry in entries.iter() {
            let Some(filter) = &entry.filter else {
                continue;
            };
            let known = connectors.iter().find(|(id, _)| *id == entry.id);
            let upstream = match known {
                Some((_, connector)) => connector.clone(),
                None => {
                    let connector: Rc<dyn Connector> = match &entry.upstream {
                        Upstream::Own(own) => {
                            match own.connector(self.peer, self.original, entry.claim.session_port)
                            {
                                Some(connector) => Rc::new(connector),
                                None => continue,
                            }
                        }
                        Upstream::Ingress(name) => Rc::new(IngressConnector {
                            name: name.clone(),
                            header: Ingress {
                                peer: self.peer,
                                original: self.original,
                                session_port: entry.claim.session_port,
                            },
                        }),
                    };
                    connectors.push((entry.id, connector.clone()));
                    connector
                }
            };
            routes.push(Route {
                filter: filter.clone(),
                upstream,
            });
        }
        routes
    }
}

/// Opens a connection into a registrant's session through its ingress socket.
struct IngressConnector {
    name: String,
    header: Ingress,
}

impl Connector for IngressConnector {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + '_>> {
        Box::pin(async move {
            let mut stream = connect_abstract(&self.name)?;
            let frame = framing::encode(&self.header).map_err(io::Error::other)?;
            let answer = tokio::time::timeout(DELIVERY_TIMEOUT, async {
                stream.write_all(&frame).await?;
                stream.read_u8().await
            })
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the registrant is stuck"))??;
            if answer == TAKEN {
                Ok(Box::new(stream) as BoxedStream)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "the registrant's session did not take the connection",
                ))
            }
        })
    }
}

fn abstract_addr(name: &str) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(name.as_bytes())
}

fn connect_abstract(name: &str) -> io::Result<UnixStream> {
    // A unix connect completes at once (or fails: nothing listens under that name).
    let stream = std::os::unix::net::UnixStream::connect_addr(&abstract_addr(name)?)?;
    stream.set_nonblocking(true)?;
    UnixStream::from_std(stream)
}

fn bind_abstract(name: &str) -> io::Result<UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(&abstract_addr(name)?)?;
    listener.set_nonblocking(true)?;
    UnixListener::from_std(listener)
}

/// Binds this agent's ingress socket; returns it and its name.
pub fn bind_ingress() -> io::Result<(UnixListener, String)> {
    let mut last = None;
    for _ in 0..8 {
        let name = messages::ingress_name(std::process::id(), nonce());
        match bind_abstract(&name) {
            Ok(listener) => return Ok((listener, name)),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no ingress name")))
}

fn nonce() -> u64 {
    let mut bytes = [0u8; 8];
    if getrandom(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32);
    }
    u64::from_ne_bytes(bytes)
}

fn getrandom(bytes: &mut [u8]) -> io::Result<()> {
    // SAFETY: the buffer is valid for its length.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n as usize == bytes.len() {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Serves the connections routers deliver to this agent: each into the session, until
/// dropped.
pub async fn serve_ingress(listener: UnixListener, own: Own) {
    let mut deliveries = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    deliveries.spawn_local(deliver(stream, own.clone()));
                }
                Err(err) => {
                    tracing::warn!("ingress socket: {err}");
                    tokio::time::sleep(REFUSED_RETRY).await;
                }
            },
            Some(_) = deliveries.join_next() => {}
        }
    }
}

async fn deliver(mut stream: UnixStream, own: Own) {
    let header =
        match tokio::time::timeout(EXCHANGE_TIMEOUT, read_frame::<Ingress, _>(&mut stream)).await {
            Ok(Ok(Some(header))) => header,
            _ => return,
        };
    let connector = own.connector(header.peer, header.original, header.session_port);
    let session = match connector {
        Some(connector) => connector.connect().await,
        None => Err(io::Error::other("no session address of that family")),
    };
    match session {
        Ok(mut session) => {
            if stream.write_u8(TAKEN).await.is_ok() {
                tracing::debug!(peer = %header.peer, "a delivered connection in the session");
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut session).await;
            }
        }
        Err(err) => {
            tracing::debug!(peer = %header.peer, "a delivered connection not taken: {err}");
            let _ = stream.write_u8(NOT_TAKEN).await;
        }
    }
}

/// Reads one frame, never past it.
async fn read_frame<T: DeserializeOwned, S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<Option<T>> {
    let mut decoder = FrameDecoder::new();
    loop {
        if let Some(message) = decoder
            .next_message()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?
        {
            return Ok(Some(message));
        }
        let wanted = decoder
            .bytes_wanted()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        let mut buf = vec![0u8; wanted.clamp(1, 64 * 1024)];
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(None);
        }
        decoder.push(&buf[..n]);
    }
}

async fn write_frame<T: Serialize, S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &T,
) -> io::Result<()> {
    let frame = framing::encode(message).map_err(io::Error::other)?;
    stream.write_all(&frame).await
}

/// Waits until the peer closes (or the connection breaks); anything it sends is ignored.
async fn closed<S: AsyncRead + Unpin>(stream: &mut S) {
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// What this agent is for a port it wants.
#[derive(Clone)]
pub enum Role {
    /// Between routers: neither routing nor registered.
    Racing,
    /// The port's router, with its routes.
    Router(Rc<PortRoutes>),
    /// Registered with another agent's router.
    Registered,
    /// Refused; the line says why.
    Refused(String),
}

/// A claim task's news for the incoming loop.
pub struct RoleChange {
    pub port: u16,
    /// The claim the news is about (a claim replaced meanwhile sends stale news).
    pub generation: u64,
    pub role: Role,
}

/// What a claim task needs.
pub struct ClaimTask {
    pub port: u16,
    pub generation: u64,
    pub claim: Claim,
    /// This session's own compiled filter on the port (`None`: unfiltered).
    pub filter: Option<Arc<HttpFilter>>,
    pub own: Own,
    pub roles: mpsc::UnboundedSender<RoleChange>,
}

impl ClaimTask {
    fn tell(&self, role: Role) {
        let _ = self.roles.send(RoleChange {
            port: self.port,
            generation: self.generation,
            role,
        });
    }

    /// Holds the claim on the port until dropped: routes it, or registers with its router,
    /// again whenever the router goes.
    pub async fn run(self) {
        let port = self.port;
        let name = messages::router_name(port);
        loop {
            match bind_abstract(&name) {
                Ok(listener) => {
                    let routes = PortRoutes::new(
                        port,
                        self.claim.clone(),
                        self.filter.clone(),
                        self.own.clone(),
                    );
                    tracing::info!(port, "routing the port for the sessions that share it");
                    self.tell(Role::Router(routes.clone()));
                    let err = route(listener, routes).await;
                    tracing::warn!(port, "router socket: {err}");
                    self.tell(Role::Racing);
                    tokio::time::sleep(REFUSED_RETRY).await;
                }
                Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
                    match register(&name, &self.claim).await {
                        Ok(Ok(mut stream)) => {
                            tracing::info!(port, "registered with the port's router");
                            self.tell(Role::Registered);
                            closed(&mut stream).await;
                            tracing::info!(port, "the port's router is gone");
                            self.tell(Role::Racing);
                        }
                        Ok(Err(line)) => {
                            self.tell(Role::Refused(line));
                            tokio::time::sleep(REFUSED_RETRY).await;
                        }
                        Err(err) => {
                            tracing::debug!(port, "registration: {err}");
                            tokio::time::sleep(RACE_RETRY).await;
                        }
                    }
                }
                Err(err) => {
                    self.tell(Role::Refused(format!(
                        "cannot steal port {port}: cannot bind the abstract socket @{name}: {err}"
                    )));
                    tokio::time::sleep(REFUSED_RETRY).await;
                }
            }
        }
    }
}

/// Registers `claim` with the router at `name`: the open registration, or the refusal line.
async fn register(name: &str, claim: &Claim) -> io::Result<Result<UnixStream, String>> {
    let mut stream = connect_abstract(name)?;
    let reply = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        write_frame(&mut stream, claim).await?;
        read_frame::<Reply, _>(&mut stream).await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the router did not answer"))??;
    match reply {
        Some(Reply::Accepted) => Ok(Ok(stream)),
        Some(Reply::Refused(line)) => Ok(Err(line)),
        None => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the router closed without answering",
        )),
    }
}

/// Serves registrations at the router's socket until it fails; dropping it drops every
/// registration (their agents race for the name).
async fn route(listener: UnixListener, routes: Rc<PortRoutes>) -> io::Error {
    let mut registrations = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    registrations.spawn_local(registration(stream, routes.clone()));
                }
                Err(err) => return err,
            },
            Some(_) = registrations.join_next() => {}
        }
    }
}

/// Removes a registrant's routes however its registration ends (the task aborted too).
struct Registered {
    routes: Rc<PortRoutes>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.routes.remove(self.id);
        tracing::info!(port = self.routes.port, sessions = ?self.routes.sessions(), "a session left the port");
    }
}

async fn registration(mut stream: UnixStream, routes: Rc<PortRoutes>) {
    let claim =
        match tokio::time::timeout(EXCHANGE_TIMEOUT, read_frame::<Claim, _>(&mut stream)).await {
            Ok(Ok(Some(claim))) => claim,
            _ => return,
        };
    let session = claim.session.clone();
    match routes.admit(claim) {
        Ok(id) => {
            let _registered = Registered {
                routes: routes.clone(),
                id,
            };
            tracing::info!(port = routes.port, sessions = ?routes.sessions(), "{session} shares the port");
            if write_frame(&mut stream, &Reply::Accepted).await.is_ok() {
                closed(&mut stream).await;
            }
        }
        Err(line) => {
            tracing::info!(port = routes.port, "refused {session}: {line}");
            let _ = write_frame(&mut stream, &Reply::Refused(line)).await;
        }
    }
}
