//! Incoming traffic: the target's inbound TCP connections taken into the session (steal)
//! or copied into it (mirror).
//!
//! ```text
//!  client in another pod            target's network namespace
//!  10.0.0.7:51234 ──SYN──► eth0 ─► prerouting: table inet mirrord-net-<pid>-<nonce> (owner)
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
//! heard within [`SILENCE_LIMIT`]. The rules follow that set ([`redirect`]: an nftables
//! table, or an iptables chain where the namespace has no nftables), so:
//!
//! * while the session's program does not listen, the port has no redirect and the target
//!   answers as always; a connection that was redirected just before the program went away
//!   is refused by the session's kernel and then taken to the target by the agent itself
//!   (its connect leaves through `output`, which the redirect does not see);
//! * a client silent for three seconds gives its ports back; the agent's exit (however it
//!   exits) deletes its table, since the table is owned by the agent's netlink socket (an
//!   iptables chain goes with the agent's keeper process, see [`iptables`]).
//!
//! Connections already handed to the session stay there until they end.
//!
//! With an HTTP filter ([`IncomingConfig::http_filter`]), a stolen connection on a filtered
//! port is not handed to the stack whole: [`filtered`] serves it request by request, the
//! matching ones into the session, the others to the target.
//!
//! Several sessions may steal the same port at once ([`share`]): per port, the first agent
//! whose session wants it routes it for all of them and alone redirects it; the others
//! register with that router, which delivers their requests to them. So `current` is what
//! this session wants, its claims (one task per wanted port) say what this agent is for
//! each port (router, registered, refused), and the rules follow the ports it routes.
//!
//! Mirroring ([`mirror`]) changes nothing in the target's namespace: no rule, no listener.
//! The ports to mirror follow the same plan as stolen ones ([`plan::mirrors`]: the session
//! listens, the client is heard from); while there are any, a packet socket reads copies of
//! the segments arriving for them, and each connection begun meanwhile is replayed into
//! the session through the stack exactly as a stolen one is opened (a loopback pair,
//! `filtered::SessionConnector`, the original client as the source), its answers dropped.
//! Each agent captures on its own, so any number of sessions mirror a port at once, and a
//! port another session steals is mirrored too: the capture sees the client's segments as
//! they arrive, before the redirect.

mod filtered;
pub mod http;
pub mod iptables;
pub mod mirror;
mod nft;
mod original_dst;
pub mod plan;
mod redirect;
mod session_addrs;
pub mod share;

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mirrord_net_protocol::listening::parse_listening;
use mirrord_net_protocol::messages::{AgentMessage, IncomingConfig, SILENCE_LIMIT};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use self::http::HttpFilter;
use self::mirror::{Mirror, MirrorPort};
use self::redirect::Redirect;
pub use self::redirect::{RedirectChoice, RedirectWith};
pub use self::session_addrs::SessionAddrs;
use self::share::messages::Claim;
use self::share::{ClaimTask, Own, Role, RoleChange};
use crate::stack::inbound::{InboundConnection, InboundSender};

/// How often the redirect set is re-evaluated without news (the silence limit, the
/// target's ports for `--steal-all`).
const TICK: Duration = Duration::from_millis(250);
/// Most accepted connections the agent holds at once: relayed to the target, served request
/// by request, or waiting for the session to accept them. Each costs two sockets and their
/// buffers; a flood of clients on a stolen port beyond this waits in the kernel's accept
/// queue (as it would at a busy target) instead of growing the agent. Checked again within
/// a [`TICK`] of a connection ending.
const MAX_IN_HAND: usize = 4096;

/// What the control stream tells the incoming side.
#[derive(Debug)]
pub enum ControlEvent {
    Config(IncomingConfig),
    /// The session's listening ports; also the client's heartbeat.
    Listening(Vec<u16>),
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

    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        std::iter::once(self.v4.as_raw_fd())
            .chain(self.v6.as_ref().map(|v6| v6.as_raw_fd()))
            .collect()
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

/// A task aborted when dropped.
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What is stolen now, and the means.
struct Stealing {
    redirect: Redirect,
    listeners: Listeners,
    /// Into the session: loopback pairs to the stack.
    own: Own,
    /// This agent's ingress socket name (routers of shared ports deliver there).
    ingress: String,
    _ingress: Task,
}

/// This session's claim on a port it wants, held by a task ([`share`]).
struct Held {
    generation: u64,
    claim: Claim,
    role: Role,
    _task: Task,
}

struct State {
    config: Option<IncomingConfig>,
    /// The config's HTTP filter, compiled.
    filter: Option<Arc<HttpFilter>>,
    listening: Vec<u16>,
    last_heard: Instant,
    /// Target port → session port: what the session wants now.
    current: BTreeMap<u16, u16>,
    stealing: Option<Stealing>,
    /// The last failure reported, so a persistent one is said once.
    reported: Option<String>,
    /// When the session began stealing each port (Unix time, ns): its precedence.
    since: BTreeMap<u16, u64>,
    /// The claims on the ports in `current`.
    claims: BTreeMap<u16, Held>,
    generation: u64,
    roles: mpsc::UnboundedSender<RoleChange>,
    /// The ports redirected to this agent now (those it routes).
    redirected: Vec<u16>,
    /// The ports last reported as taken (routed or registered).
    taken: Vec<u16>,
    stack: InboundSender,
    addrs: SessionAddrs,
    /// The mirror at work, while ports are mirrored.
    mirror: Option<Mirror>,
    /// The ports last reported as mirrored.
    mirrored: Vec<u16>,
    /// Permits for the accepted connections the agent holds ([`MAX_IN_HAND`]).
    in_hand: Arc<Semaphore>,
    /// How the redirect is to be made, until stealing starts and makes it.
    redirect_with: Option<RedirectWith>,
}

/// Runs the incoming side until the control stream ends (`events` closes). Dropping the
/// table's socket on return deletes the table.
pub async fn run(
    mut events: mpsc::UnboundedReceiver<ControlEvent>,
    stack: InboundSender,
    report: mpsc::UnboundedSender<AgentMessage>,
    addrs: SessionAddrs,
    redirect_with: RedirectWith,
) {
    let (roles, mut role_changes) = mpsc::unbounded_channel();
    let mut state = State {
        config: None,
        filter: None,
        listening: Vec::new(),
        last_heard: Instant::now(),
        current: BTreeMap::new(),
        stealing: None,
        reported: None,
        since: BTreeMap::new(),
        claims: BTreeMap::new(),
        generation: 0,
        roles,
        redirected: Vec::new(),
        taken: Vec::new(),
        stack,
        addrs,
        mirror: None,
        mirrored: Vec::new(),
        in_hand: Arc::new(Semaphore::new(MAX_IN_HAND)),
        redirect_with: Some(redirect_with),
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
                        let steals = state
                            .config
                            .as_ref()
                            .is_some_and(|config| !config.steal.is_empty() || config.steal_all);
                        if state.stealing.is_none() && steals {
                            match start(&mut state) {
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
            Some(change) = role_changes.recv() => {
                if let Some(held) = state.claims.get_mut(&change.port) {
                    if held.generation == change.generation {
                        held.role = change.role;
                        reconcile(&mut state, &report);
                    }
                }
            }
            accepted = accept(&state.stealing), if state.in_hand.available_permits() > 0 => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "accepted");
                    let permit = state.in_hand.clone().try_acquire_owned().expect("a permit was free");
                    dispatch(&state, stream, peer, permit)
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

fn start(state: &mut State) -> io::Result<Stealing> {
    let listeners = Listeners::bind()?;
    let own = Own {
        pairs: Arc::new(filtered::Pairs::bind()?),
        stack: state.stack.clone(),
        addrs: state.addrs.clone(),
    };
    let (ingress_listener, ingress) = share::bind_ingress().map_err(|err| {
        io::Error::new(
            err.kind(),
            format!("cannot bind an abstract unix socket for other sessions' routers: {err}"),
        )
    })?;
    let ingress_task = Task(tokio::task::spawn_local(share::serve_ingress(
        ingress_listener,
        own.clone(),
    )));
    // The table's socket last: a dying process's descriptors are released highest first
    // (the kernel runs the deferred closes in reverse), so on SIGKILL the redirects go
    // before the listener they point at, and no connection meets a closed port. (An
    // iptables chain's redirects go a few milliseconds after the agent, when its keeper
    // sees the agent's end of their socket close; a connection redirected in between waits
    // in the listeners, of which the keeper holds copies, and the keeper relays it to the
    // target.)
    // Named like the ingress socket, whose name is unique in the namespace: pids repeat
    // across agents from other pid namespaces (Kubernetes Job agents are often pid 1).
    let table = format!(
        "mirrord-net-{}",
        ingress.rsplit('/').next().unwrap_or_default()
    );
    let with = match state.redirect_with.take() {
        Some(RedirectWith::Unavailable(why)) => {
            // Kept: every later attempt fails for the same reason.
            state.redirect_with = Some(RedirectWith::Unavailable(why.clone()));
            return Err(io::Error::other(why));
        }
        Some(with) => with,
        None => RedirectWith::Nftables,
    };
    let redirect = Redirect::make(with, &table, &listeners.fds())?;
    tracing::info!(redirect = %redirect, port = listeners.port, %ingress, "ready to steal");
    Ok(Stealing {
        redirect,
        listeners,
        own,
        ingress,
        _ingress: ingress_task,
    })
}

fn say(state: &mut State, report: &mpsc::UnboundedSender<AgentMessage>, line: String) {
    if state.reported.as_deref() != Some(line.as_str()) {
        tracing::warn!("{line}");
        let _ = report.send(AgentMessage::IncomingFailed(line.clone()));
        state.reported = Some(line);
    }
}

/// Brings the claims and rules in line with what should be stolen now.
fn update(state: &mut State, report: &mpsc::UnboundedSender<AgentMessage>) {
    let Some(config) = &state.config else {
        return;
    };
    let alive = state.last_heard.elapsed() < SILENCE_LIMIT;
    let target_listening = if config.steal_all || config.mirror_all {
        target_listening()
    } else {
        Vec::new()
    };
    let wanted = plan::redirects(config, &state.listening, &target_listening, alive);
    let mirrors = plan::mirrors(config, &state.listening, &target_listening, alive);
    mirror(state, report, mirrors, alive);
    if wanted != state.current {
        if !alive && !state.current.is_empty() {
            tracing::warn!("no word from the client: stolen ports go back to the target");
        }
        tracing::info!(ports = ?wanted, "the session wants");
        state.current = wanted;
    }
    reconcile(state, report);
}

/// Mirrors exactly `ports` (target port → session port), with the session's HTTP filter on
/// the ports it applies to.
fn mirror(
    state: &mut State,
    report: &mpsc::UnboundedSender<AgentMessage>,
    ports: BTreeMap<u16, u16>,
    alive: bool,
) {
    let filter = state.config.as_ref().and_then(|c| c.http_filter.as_ref());
    let ports: BTreeMap<u16, MirrorPort> = ports
        .into_iter()
        .map(|(port, session_port)| {
            let filtered = filter.is_some_and(|filter| filter.applies_to(port));
            let port_filter = state.filter.clone().filter(|_| filtered);
            (
                port,
                MirrorPort {
                    session_port,
                    filter: port_filter,
                },
            )
        })
        .collect();
    if ports.is_empty() {
        if state.mirror.take().is_some() && !alive {
            tracing::warn!("no word from the client: mirroring stopped");
        }
    } else if let Some(mirror) = &mut state.mirror {
        if let Err(err) = mirror.set_ports(&ports) {
            say(
                state,
                report,
                format!("cannot change the mirrored ports: {err}"),
            );
        }
    } else {
        let started = filtered::Pairs::bind().and_then(|pairs| {
            let own = Own {
                pairs: Arc::new(pairs),
                stack: state.stack.clone(),
                addrs: state.addrs.clone(),
            };
            Mirror::start(&ports, own)
        });
        match started {
            Ok(mirror) => state.mirror = Some(mirror),
            Err(err) => say(
                state,
                report,
                format!("cannot mirror incoming traffic: {err}"),
            ),
        }
    }
    let mirrored = state.mirror.as_ref().map(Mirror::ports).unwrap_or_default();
    if mirrored != state.mirrored {
        tracing::info!(ports = ?mirrored, "mirroring");
        let _ = report.send(AgentMessage::Mirroring(mirrored.clone()));
        state.mirrored = mirrored;
    }
}

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// Brings the claims in line with the ports the session wants, and the redirects in line
/// with the ports this agent routes.
fn reconcile(state: &mut State, report: &mpsc::UnboundedSender<AgentMessage>) {
    let (Some(config), Some(stealing)) = (&state.config, &state.stealing) else {
        return;
    };
    let label = if config.session.is_empty() {
        format!("agent pid {}", std::process::id())
    } else {
        config.session.clone()
    };
    let now = unix_ns();
    let mut desired = BTreeMap::new();
    for (&port, &session_port) in &state.current {
        let since = *state.since.entry(port).or_insert(now);
        let filter = config
            .http_filter
            .as_ref()
            .filter(|filter| filter.applies_to(port))
            .cloned();
        desired.insert(
            port,
            Claim {
                session: label.clone(),
                since,
                ingress: stealing.ingress.clone(),
                filter,
                session_port,
            },
        );
    }
    let stale: Vec<u16> = state
        .claims
        .iter()
        .filter(|(port, held)| desired.get(port) != Some(&held.claim))
        .map(|(port, _)| *port)
        .collect();
    if !stale.is_empty() {
        // The redirects go before the claims, so no connection is redirected to a port
        // this agent no longer routes while another agent takes over.
        let keep: Vec<u16> = routed(state)
            .into_iter()
            .filter(|port| !stale.contains(port))
            .collect();
        set_redirects(state, report, keep);
        for port in stale {
            state.claims.remove(&port);
        }
    }
    let Some(stealing) = &state.stealing else {
        return;
    };
    for (port, claim) in desired {
        if state.claims.contains_key(&port) {
            continue;
        }
        state.generation += 1;
        let filter = claim.filter.as_ref().and(state.filter.clone());
        let task = ClaimTask {
            port,
            generation: state.generation,
            claim: claim.clone(),
            filter,
            own: stealing.own.clone(),
            roles: state.roles.clone(),
        };
        state.claims.insert(
            port,
            Held {
                generation: state.generation,
                claim,
                role: Role::Racing,
                _task: Task(tokio::task::spawn_local(task.run())),
            },
        );
    }
    set_redirects(state, report, routed(state));
    let taken: Vec<u16> = state
        .claims
        .iter()
        .filter(|(_, held)| matches!(held.role, Role::Router(_) | Role::Registered))
        .map(|(port, _)| *port)
        .collect();
    if taken != state.taken {
        tracing::info!(ports = ?taken, "stealing");
        let _ = report.send(AgentMessage::Stealing(taken.clone()));
        state.taken = taken;
    }
    let refused: Vec<String> = state
        .claims
        .values()
        .filter_map(|held| match &held.role {
            Role::Refused(line) => Some(line.clone()),
            _ => None,
        })
        .collect();
    for line in refused {
        say(state, report, line);
    }
}

/// The ports this agent routes.
fn routed(state: &State) -> Vec<u16> {
    state
        .claims
        .iter()
        .filter(|(_, held)| matches!(held.role, Role::Router(_)))
        .map(|(port, _)| *port)
        .collect()
}

/// Redirects exactly `ports` to this agent's listener.
fn set_redirects(state: &mut State, report: &mpsc::UnboundedSender<AgentMessage>, ports: Vec<u16>) {
    if ports == state.redirected {
        return;
    }
    let Some(stealing) = state.stealing.as_mut() else {
        return;
    };
    let to = stealing.listeners.port;
    let rules: Vec<(u16, u16)> = ports.iter().map(|&port| (port, to)).collect();
    match stealing.redirect.set_ports(&rules) {
        Ok(()) => {
            tracing::info!(?ports, "redirected to this agent");
            state.redirected = ports;
        }
        Err(err) => {
            let redirect = stealing.redirect.to_string();
            say(
                state,
                report,
                format!("cannot change the redirects of {redirect}: {err}"),
            );
        }
    }
}

/// The TCP ports the target listens on (the agent lives in its network namespace). Asked
/// with sock_diag, which walks only the listening sockets; `/proc/net/tcp` walks every
/// established connection of the machine, and stays the fallback.
fn target_listening() -> Vec<u16> {
    use mirrord_net_netfilter::sock_diag::{Diag, TCP_LISTEN};
    let asked = Diag::open().and_then(|mut diag| {
        let v4 = diag.ports(libc::AF_INET as u8, libc::IPPROTO_TCP as u8, TCP_LISTEN)?;
        let v6 = diag.ports(libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8, TCP_LISTEN)?;
        Ok([v4, v6].concat())
    });
    let mut ports = match asked {
        Ok(ports) => ports,
        Err(_) => ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .flat_map(|text| parse_listening(&text))
            .collect(),
    };
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// Sends an accepted connection where it belongs: when this agent routes its port, into the
/// session (unfiltered) or through the port's routes (filtered: this session's and those
/// sharing the port); to the target when the port was given back meanwhile, or the session
/// does not take it.
///
/// `permit` counts the connection against [`MAX_IN_HAND`] for as long as the agent holds it
/// (given back once the session's stack took it: its flow cap counts it from then on).
fn dispatch(state: &State, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
    let original = match original_dst::of(&stream) {
        Ok(original) => original,
        Err(err) => {
            tracing::debug!(%peer, "no original destination: {err}");
            return;
        }
    };
    tracing::debug!(%peer, %original, "inbound connection");
    let Some(stealing) = &state.stealing else {
        return;
    };
    if original.port() == stealing.listeners.port {
        // Someone connected to the listener itself, not to a stolen port.
        tracing::debug!(%peer, "a connection to the listener itself; closed");
        return;
    }
    let _ = stream.set_nodelay(true);
    let held = state.claims.get(&original.port());
    let (Some(held), Some(session)) = (
        held,
        state.current.get(&original.port()).and_then(|&local| {
            Some(SocketAddr::new(
                state.addrs.session_ip(original.ip())?,
                local,
            ))
        }),
    ) else {
        tokio::spawn(to_target(stream, original, permit));
        return;
    };
    let Role::Router(routes) = &held.role else {
        tokio::spawn(to_target(stream, original, permit));
        return;
    };
    let peer = canonical(peer);
    if held.claim.filter.is_some() {
        filtered::spawn(
            stream,
            routes.for_connection(peer, original),
            peer,
            original,
            permit,
        );
        return;
    }
    let (done, outcome) = oneshot::channel();
    let conn = InboundConnection {
        peer,
        session,
        stream,
        done,
    };
    if state.stack.send(conn).is_err() {
        tracing::debug!(%peer, "the stack is gone");
        return;
    }
    tokio::spawn(async move {
        match outcome.await {
            Ok(Ok(())) => tracing::debug!(%peer, %session, "stolen connection in the session"),
            Ok(Err(stream)) => {
                tracing::debug!(%peer, %session, "the session did not take it; to the target");
                to_target(stream, original, permit).await;
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

/// Relays `stream` to the target's own listener at `original`, holding `_permit` until done.
async fn to_target(mut stream: TcpStream, original: SocketAddr, _permit: OwnedSemaphorePermit) {
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
