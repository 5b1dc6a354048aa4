//! TCP: each connection the session opens becomes a real connection from the target's
//! network namespace, with the session's side terminated by a smoltcp socket.
//!
//! What maps to what: a flow is keyed by the session's 4-tuple (client endpoint, destination
//! endpoint). Its upstream end is a kernel socket connected to the same destination; its
//! session end is a smoltcp socket whose local endpoint *is* the destination, in an
//! interface in any-IP mode, so the session sees the destination answer.
//!
//! States and events:
//!
//! ```text
//!              SYN (no flow)                      connect() ok
//!   (none) ─────────────────────► Connecting ────────────────────► Open ──► removed
//!     ▲   start connect(), hold the SYN │ retransmitted SYN: absorbed   │
//!     │                                 │ RST from client: cancel       │
//!     └──── refused → RST+ACK ◄─────────┤                               │
//!           unreachable → ICMP error ◄──┤                               │
//!           timed out → nothing ◄───────┤                               │
//!           given up (connect timeout) → RST+ACK ◄┘                     │
//! ```
//!
//! Limits ([`Limits`]): a SYN beyond the flow cap or the caps on connects in progress (in
//! all, towards its host) is answered with RST+ACK without a connect; a connect still in
//! progress after the connect timeout is given up the same way (the session need not wait
//! for the kernel's two minutes).
//!
//! * Connecting: the SYN is held and *not* shown to smoltcp, so nothing answers it until
//!   the destination has. Holding (rather than smoltcp's `socket-tcp-pause-synack`) means
//!   a flow costs no socket or buffers until it connects, and retransmitted SYNs never
//!   reach a half-made socket. When the connect succeeds, a socket is made listening on the
//!   destination endpoint and the held SYN is replayed into it: the SYN-ACK goes out only
//!   then. ECONNREFUSED (and other local failures) answer the SYN with RST+ACK, so the
//!   session's `connect()` fails at once with ECONNREFUSED; ENETUNREACH / EHOSTUNREACH /
//!   EACCES answer with ICMP destination unreachable quoting the SYN, which the session's
//!   kernel turns into the same errno; ETIMEDOUT answers nothing, and the session's own
//!   connect times out as it would in the pod.
//! * Open: bytes are pumped both ways (see [`pump`]). Each direction stops when its sink is
//!   full: a slow upstream leaves data in smoltcp's receive buffer, which closes the window
//!   the session may fill; a full smoltcp send buffer stops reads from upstream, which
//!   closes the kernel's window to the destination. Nothing is buffered elsewhere.
//!   Half-close passes both ways: the session's FIN becomes `shutdown(SHUT_WR)` once every
//!   received byte is written upstream; upstream EOF becomes smoltcp `close()`, whose FIN
//!   follows the queued data. Resets pass both ways: an upstream error or reset aborts the
//!   smoltcp socket (RST to the session); a RST from the session (the socket goes to
//!   CLOSED without both FINs) drops the upstream socket with `SO_LINGER` 0 (RST upstream).
//! * Removal: as soon as both directions are finished: TIME-WAIT (reached when upstream
//!   closed first) is not kept at all, since the session's kernel keeps its own and late
//!   segments for a removed flow are answered with RST, which a closing peer ignores;
//!   CLOSED after LAST-ACK or after our RST went out. A flow stuck in SYN-RECEIVED (the
//!   session vanished before the handshake ended) times out after 30 s.
//!
//! Every flow has a socket set of its own (see `buffer.rs`): segments are demultiplexed by
//! the flow table's hash map, and only flows that had an event are polled.
//!
//! This file is the flow table and its I/O; what it decides (the arrows above, the end of a
//! flow, the release of its buffers) is `decide.rs`, pure and unit-tested.

use std::collections::HashMap;
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use smoltcp::iface::PollResult;
use smoltcp::socket::tcp::{CongestionControl, State};
use smoltcp::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::budget::{self, Budget};
use super::buffer::TcpEndpoint;
use super::ctx::Ctx;
use super::flow::{fired, FlowId, FlowWaker, Proto, Slab, Token};
use super::inbound::InboundConnection;
use super::limits::{self, HalfOpen, Limits, LoggedOnce};
use super::packet::{push_tcp_reset, push_unreachable, FlowKey, Segment};
use super::stats::Stats;
use super::upstream;

mod decide;
mod open;

use decide::{
    classify_connect_error, ingress_action, observe, verdict, Closing, ConnectFailure, FlowView,
    IngressAction, RxTrack, Verdict,
};
use open::{pump, release_pages, Open};

/// How long a socket may wait for the session to finish the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection opened into the session may wait for its SYN-ACK before it is
/// given back (see [`InboundConnection`]).
const INBOUND_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest delay before re-polling a socket that asks to be polled "now" but had nothing
/// to send (keeps a confused socket from spinning the task).
const MIN_REPOLL: Duration = Duration::from_millis(1);
/// How long an ACK may wait for data going the same way (smoltcp's default is 10 ms; kept
/// short so a sender that waits for ACKs — Nagle — is barely held up).
const ACK_DELAY: Duration = Duration::from_millis(1);

/// Per-flow TCP parameters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpSettings {
    pub rx_buffer: usize,
    pub tx_buffer: usize,
    pub congestion: CongestionControl,
    pub limits: Limits,
}

struct Connecting {
    upstream: TcpStream,
    syn: Vec<u8>,
    syn_seq: u32,
    /// When the connect is given up.
    deadline: Instant,
}

enum FlowState {
    Connecting(Connecting),
    Open(Box<Open>),
    /// Transient, while moving from one state to the next.
    Gone,
}

struct Flow {
    key: FlowKey,
    waker: FlowWaker,
    timer_at: Option<Instant>,
    state: FlowState,
}

/// What service decided for a flow.
enum Step {
    Keep,
    Remove {
        reset_upstream: bool,
    },
    ConnectFailed(ConnectFailure),
    /// The session did not accept a connection opened into it.
    InboundRefused,
}

/// All TCP flows of a stack.
pub(crate) struct TcpFlows {
    flows: Slab<Flow>,
    by_key: HashMap<FlowKey, FlowId>,
    settings: TcpSettings,
    half_open: HalfOpen,
    logged: LoggedOnce,
    budget: Budget,
    /// Whether a flow has been held back by the budget yet (logged once).
    budget_logged: bool,
}

impl TcpFlows {
    pub fn new(settings: TcpSettings) -> Self {
        Self {
            flows: Slab::default(),
            by_key: HashMap::new(),
            settings,
            half_open: HalfOpen::default(),
            logged: LoggedOnce::default(),
            budget: Budget::new(settings.limits.buffer_budget),
            budget_logged: false,
        }
    }

    /// Routes one inbound segment (`pkt` is the whole IP packet).
    pub fn on_segment(&mut self, ctx: &mut Ctx<'_>, pkt: Bytes, key: FlowKey, seg: Segment) {
        let id = self.by_key.get(&key).copied();
        let view = match id.and_then(|id| self.flows.get(id)) {
            None => FlowView::None,
            Some(flow) => match &flow.state {
                FlowState::Connecting(_) | FlowState::Gone => FlowView::Connecting,
                FlowState::Open(open) => FlowView::Open {
                    finished: matches!(
                        open.endpoint.socket().state(),
                        State::Closed | State::TimeWait
                    ),
                },
            },
        };
        match ingress_action(view, &seg) {
            IngressAction::Connect => self.connect(ctx, key, &pkt, seg.seq),
            IngressAction::Absorb => {
                let flow = self
                    .flows
                    .get_mut(id.expect("connecting flow"))
                    .expect("flow");
                if let FlowState::Connecting(c) = &mut flow.state {
                    if c.syn_seq != seg.seq {
                        c.syn = pkt.to_vec();
                        c.syn_seq = seg.seq;
                    }
                }
            }
            IngressAction::Cancel => {
                tracing::debug!(?key, "session reset a connection still connecting");
                self.remove(ctx, id.expect("connecting flow"), true);
            }
            IngressAction::Deliver => {
                let flow = self.flows.get_mut(id.expect("open flow")).expect("flow");
                if let FlowState::Open(open) = &mut flow.state {
                    let queued = open.endpoint.socket().recv_queue();
                    if !self.budget.admits(open.held, queued, seg.payload_len) {
                        // Beyond the budget: the session's TCP sends it again later.
                        Stats::inc(&ctx.stats.tcp_dropped_over_budget);
                        note_budget(&mut self.budget_logged, &self.budget);
                        return;
                    }
                    if open.inbound.is_some() && seg.syn {
                        // The session's SYN-ACK: its sequence space starts here.
                        open.rx = RxTrack::new(seg.seq);
                    }
                    open.rx.segment(&seg);
                    ctx.device.rx = Some(pkt);
                    open.endpoint.with_set(|set| {
                        ctx.iface.poll_ingress_single(ctx.now, ctx.device, set);
                    });
                    ctx.device.rx = None;
                    let s = open.endpoint.socket();
                    self.budget
                        .set(&mut open.held, s.send_queue() + s.recv_queue());
                    flow.waker.wake();
                }
            }
            IngressAction::Restart => {
                self.remove(ctx, id.expect("open flow"), false);
                self.connect(ctx, key, &pkt, seg.seq);
            }
            IngressAction::Reset => {
                if push_tcp_reset(&mut ctx.device.tx, &pkt) {
                    Stats::inc(&ctx.stats.tcp_stray_segments);
                }
            }
            IngressAction::Ignore => {}
        }
    }

    fn connect(&mut self, ctx: &mut Ctx<'_>, key: FlowKey, syn: &[u8], syn_seq: u32) {
        let limits = self.settings.limits;
        let host = key.server.ip();
        if let Err(refusal) = self.half_open.admit(&limits, self.by_key.len(), host) {
            Stats::inc(&ctx.stats.tcp_refused_by_limit);
            if self.logged.first(refusal) {
                tracing::warn!(
                    "refusing new TCP connections beyond {} ({:?}; flows {}, connecting {}, \
                     connecting to {host} {}); counted as tcp_refused_by_limit",
                    refusal.describe(),
                    limits,
                    self.by_key.len(),
                    self.half_open.total(),
                    self.half_open.to(host),
                );
            }
            push_tcp_reset(&mut ctx.device.tx, syn);
            return;
        }
        Stats::inc(&ctx.stats.tcp_connects);
        match upstream::connect_tcp(key.server) {
            Ok(upstream) => {
                self.half_open.started(host);
                let timeout = Duration::from_micros(limits.connect_timeout.as_micros() as u64);
                // Service polls the connect, which registers the waker.
                self.insert_and_wake(
                    ctx,
                    key,
                    FlowState::Connecting(Connecting {
                        upstream,
                        syn: syn.to_vec(),
                        syn_seq,
                        deadline: ctx.now + timeout,
                    }),
                );
            }
            Err(e) => {
                tracing::debug!(?key, error = %e, "upstream connect failed at once");
                report_failure(ctx, syn, classify_connect_error(&e));
            }
        }
    }

    /// Opens a connection into the session from `conn.peer` to `conn.session`: a smoltcp
    /// socket that connects (its SYN goes out on the next service), relayed to `conn.stream`
    /// once the session accepts. Refused, timed out, or impossible: the stream goes back
    /// through `conn.done`.
    pub fn open_inbound(&mut self, ctx: &mut Ctx<'_>, conn: InboundConnection) {
        let key = FlowKey {
            client: conn.session,
            server: conn.peer,
        };
        if self.by_key.contains_key(&key) {
            let _ = conn.done.send(Err(conn.stream));
            return;
        }
        // Stolen connections are flows of the session like its own: a flood of clients of a
        // stolen port must not take the agent past its cap (its memory), and the connections
        // beyond go to the target, which would have had them anyway.
        if let Err(refusal) = limits::admit_flow(&self.settings.limits, self.by_key.len()) {
            Stats::inc(&ctx.stats.tcp_inbound_over_limit);
            if self.logged.first(refusal) {
                tracing::warn!(
                    "giving stolen connections to the target beyond {} ({} flows); counted \
                     as tcp_inbound_over_limit",
                    refusal.describe(),
                    self.by_key.len(),
                );
            }
            let _ = conn.done.send(Err(conn.stream));
            return;
        }
        let (rx_len, tx_len, eager_release) = ring_lens(&self.settings, self.by_key.len());
        let mut endpoint = match TcpEndpoint::new(rx_len, tx_len) {
            Ok(endpoint) => endpoint,
            Err(e) => {
                tracing::warn!(?key, error = %e, "no memory for an inbound TCP flow");
                let _ = conn.done.send(Err(conn.stream));
                return;
            }
        };
        let congestion = self.settings.congestion;
        let iface = &mut *ctx.iface;
        let connected = endpoint.with_socket(|s| {
            s.set_nagle_enabled(false);
            s.set_ack_delay(Some(ACK_DELAY));
            s.set_congestion_control(congestion);
            s.set_timeout(Some(INBOUND_CONNECT_TIMEOUT));
            s.connect(iface.context(), conn.session, conn.peer)
        });
        if let Err(e) = connected {
            tracing::debug!(?key, error = ?e, "cannot open an inbound connection");
            let _ = conn.done.send(Err(conn.stream));
            return;
        }
        let now = ctx.now;
        Stats::inc(&ctx.stats.tcp_inbound);
        self.insert_and_wake(
            ctx,
            key,
            FlowState::Open(Box::new(Open {
                upstream: conn.stream,
                endpoint,
                closing: Closing::default(),
                handshake: true,
                rx: RxTrack::new(0),
                moved_since_release: 0,
                last_moved: now,
                inbound: Some(conn.done),
                held: 0,
                budget_blocked: false,
                eager_release,
            })),
        );
    }

    /// Adds a flow in `state`, indexes it by `key` and wakes it, so its first service runs.
    fn insert_and_wake(&mut self, ctx: &mut Ctx<'_>, key: FlowKey, state: FlowState) {
        let id = self.flows.insert_with(|id| Flow {
            key,
            waker: FlowWaker::new(
                Token {
                    proto: Proto::Tcp,
                    id,
                },
                ctx.ready,
            ),
            timer_at: None,
            state,
        });
        self.by_key.insert(key, id);
        self.flows.get(id).expect("just inserted").waker.wake();
    }

    /// Runs a flow that was woken: connect progress, byte pumping, egress, removal.
    pub fn service(&mut self, ctx: &mut Ctx<'_>, id: FlowId) {
        let settings = self.settings;
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.waker.clear();
        let token = Token {
            proto: Proto::Tcp,
            id,
        };
        let was_connecting = matches!(flow.state, FlowState::Connecting(_));
        let flows = self.by_key.len();
        let step = service_flow(ctx, &settings, &mut self.budget, flows, token, flow);
        if let FlowState::Open(open) = &flow.state {
            if open.budget_blocked {
                note_budget(&mut self.budget_logged, &self.budget);
            }
        }
        if was_connecting && !matches!(flow.state, FlowState::Connecting(_)) {
            // Connected (a flow that failed is still connecting: its removal counts it).
            self.half_open.ended(flow.key.server.ip());
        }
        match step {
            Step::Keep => {}
            Step::Remove { reset_upstream } => self.remove(ctx, id, reset_upstream),
            Step::InboundRefused => {
                if let Some(flow) = self.remove_entry(id) {
                    tracing::debug!(key = ?flow.key, "the session did not accept an inbound connection");
                    if let FlowState::Open(open) = flow.state {
                        let open = *open;
                        if let Some(done) = open.inbound {
                            let _ = done.send(Err(open.upstream));
                        }
                    }
                }
            }
            Step::ConnectFailed(failure) => {
                if let Some(flow) = self.remove_entry(id) {
                    tracing::debug!(key = ?flow.key, ?failure, "upstream connect failed");
                    if let FlowState::Connecting(c) = flow.state {
                        report_failure(ctx, &c.syn, failure);
                    }
                }
            }
        }
    }

    /// A deadline popped from the timer heap.
    pub fn on_timer(&mut self, id: FlowId, at: Instant) {
        if let Some(flow) = self.flows.get_mut(id) {
            if fired(&mut flow.timer_at, at) {
                flow.waker.wake();
            }
        }
    }

    fn remove_entry(&mut self, id: FlowId) -> Option<Flow> {
        let flow = self.flows.remove(id)?;
        if let FlowState::Open(open) = &flow.state {
            self.budget.release(open.held);
        }
        if self.by_key.get(&flow.key) == Some(&id) {
            self.by_key.remove(&flow.key);
        }
        if matches!(flow.state, FlowState::Connecting(_)) {
            self.half_open.ended(flow.key.server.ip());
        }
        Some(flow)
    }

    fn remove(&mut self, ctx: &mut Ctx<'_>, id: FlowId, reset_upstream: bool) {
        let Some(flow) = self.remove_entry(id) else {
            return;
        };
        match flow.state {
            FlowState::Open(open) => {
                Stats::inc(&ctx.stats.tcp_closed);
                if reset_upstream {
                    Stats::inc(&ctx.stats.tcp_reset_by_client);
                    upstream::set_reset_on_close(&open.upstream);
                }
                tracing::debug!(key = ?flow.key, reset_upstream, "tcp flow removed");
            }
            FlowState::Connecting(c) => {
                upstream::set_reset_on_close(&c.upstream);
            }
            FlowState::Gone => {}
        }
    }
}

/// Answers a held SYN whose upstream connect failed.
fn report_failure(ctx: &mut Ctx<'_>, syn: &[u8], failure: ConnectFailure) {
    match failure {
        ConnectFailure::Refused => {
            Stats::inc(&ctx.stats.tcp_refused);
            push_tcp_reset(&mut ctx.device.tx, syn);
        }
        ConnectFailure::Unreachable(why) => {
            Stats::inc(&ctx.stats.tcp_unreachable);
            let mtu = ctx.device.mtu();
            push_unreachable(&mut ctx.device.tx, mtu, syn, why);
        }
        ConnectFailure::TimedOut => Stats::inc(&ctx.stats.tcp_timed_out),
        ConnectFailure::GaveUp => {
            Stats::inc(&ctx.stats.tcp_connect_gave_up);
            push_tcp_reset(&mut ctx.device.tx, syn);
        }
    }
}

/// Polls a connecting socket: `Ready(Ok)` once connected.
fn poll_connected(stream: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    loop {
        match stream.poll_write_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        match stream.take_error() {
            Ok(Some(e)) | Err(e) => return Poll::Ready(Err(e)),
            Ok(None) => {}
        }
        match stream.peer_addr() {
            Ok(_) => return Poll::Ready(Ok(())),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                // Spurious readiness: forget it and wait again.
                let _ = stream.try_io(Interest::WRITABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// The ring sizes of a new flow with `flows` in the table, and whether they are small (see
/// [`budget::ring_len`]).
fn ring_lens(settings: &TcpSettings, flows: usize) -> (usize, usize, bool) {
    let budget = settings.limits.buffer_budget;
    let rx = budget::ring_len(settings.rx_buffer, budget, flows);
    let tx = budget::ring_len(settings.tx_buffer, budget, flows);
    (rx, tx, rx < settings.rx_buffer || tx < settings.tx_buffer)
}

/// Logs, the first time, that the buffer budget holds flows back.
fn note_budget(logged: &mut bool, budget: &Budget) {
    if !std::mem::replace(logged, true) {
        tracing::warn!(
            used = budget.used(),
            "the TCP flows' buffers reached the buffer budget; flows beyond it wait \
             (counted as tcp_budget_waits and tcp_dropped_over_budget)"
        );
    }
}

fn service_flow(
    ctx: &mut Ctx<'_>,
    settings: &TcpSettings,
    budget: &mut Budget,
    flows: usize,
    token: Token,
    flow: &mut Flow,
) -> Step {
    if let FlowState::Connecting(c) = &flow.state {
        let mut cx = Context::from_waker(flow.waker.waker());
        match poll_connected(&c.upstream, &mut cx) {
            Poll::Pending if ctx.now >= c.deadline => {
                return Step::ConnectFailed(ConnectFailure::GaveUp)
            }
            Poll::Pending => {
                ctx.timers.arm(&mut flow.timer_at, c.deadline, token);
                return Step::Keep;
            }
            Poll::Ready(Err(e)) => return Step::ConnectFailed(classify_connect_error(&e)),
            Poll::Ready(Ok(())) => {}
        }
        let FlowState::Connecting(c) = std::mem::replace(&mut flow.state, FlowState::Gone) else {
            unreachable!("checked above");
        };
        match accept(ctx, settings, flows, flow.key, c) {
            Ok(open) => {
                Stats::inc(&ctx.stats.tcp_opened);
                tracing::debug!(key = ?flow.key, "upstream connected; SYN replayed");
                flow.state = FlowState::Open(open);
            }
            Err((c, e)) => {
                tracing::warn!(key = ?flow.key, error = %e, "no memory for a TCP flow");
                flow.state = FlowState::Connecting(c);
                return Step::ConnectFailed(ConnectFailure::Refused);
            }
        }
    }
    let FlowState::Open(open) = &mut flow.state else {
        return Step::Keep;
    };
    let mut cx = Context::from_waker(flow.waker.waker());
    let moved = pump(open, &mut cx, ctx.stats, budget);
    if moved > 0 {
        open.moved_since_release += moved;
        open.last_moved = ctx.now;
    }

    ctx.device.tx.clear_refused();
    open.endpoint.with_set(|set| {
        while ctx.iface.poll_egress(ctx.now, ctx.device, set) == PollResult::SocketStateChanged {}
    });
    let blocked = ctx.device.tx.was_refused();
    if blocked {
        ctx.blocked.push(token);
    }
    {
        let s = open.endpoint.socket();
        budget.set(&mut open.held, s.send_queue() + s.recv_queue());
    }
    if open.budget_blocked {
        Stats::inc(&ctx.stats.tcp_budget_waits);
        ctx.timers.arm(
            &mut flow.timer_at,
            ctx.now + Duration::from(budget::RETRY),
            token,
        );
    }

    let (state, tuple_present) = {
        let s = open.endpoint.socket();
        (s.state(), s.remote_endpoint().is_some())
    };
    observe(state, &mut open.closing);
    if open.inbound.is_some() {
        match state {
            State::SynSent => {}
            State::Closed | State::Listen => return Step::InboundRefused,
            _ => {
                if let Some(done) = open.inbound.take() {
                    Stats::inc(&ctx.stats.tcp_opened);
                    let _ = done.send(Ok(()));
                }
            }
        }
    }
    if open.handshake && !matches!(state, State::Listen | State::SynReceived | State::SynSent) {
        open.endpoint.with_socket(|s| s.set_timeout(None));
        open.handshake = false;
    }
    match verdict(state, tuple_present, &open.closing) {
        Verdict::Remove { reset_upstream } => Step::Remove { reset_upstream },
        Verdict::Keep => {
            if !blocked {
                let next = open
                    .endpoint
                    .with_set(|set| ctx.iface.poll_at(ctx.now, set));
                if let Some(at) = next {
                    let at = at.max(ctx.now + MIN_REPOLL);
                    ctx.timers.arm(&mut flow.timer_at, at, token);
                }
            }
            if let Some(at) = release_pages(open, ctx.now, ctx.stats) {
                ctx.timers.arm(&mut flow.timer_at, at, token);
            }
            Step::Keep
        }
    }
}

/// Makes the session-side socket for a connected flow and replays the held SYN into it.
#[allow(clippy::result_large_err)]
fn accept(
    ctx: &mut Ctx<'_>,
    settings: &TcpSettings,
    flows: usize,
    key: FlowKey,
    c: Connecting,
) -> Result<Box<Open>, (Connecting, io::Error)> {
    let (rx_len, tx_len, eager_release) = ring_lens(settings, flows);
    let mut endpoint = match TcpEndpoint::new(rx_len, tx_len) {
        Ok(ep) => ep,
        Err(e) => return Err((c, e)),
    };
    let listened = endpoint.with_socket(|s| {
        s.set_nagle_enabled(false);
        // A short delayed ACK lets the reply carry the ACK of a request: with none, every
        // request cost a pure ACK datagram through the tunnel (one more wake-up of agent and
        // client) before the reply. smoltcp still ACKs every second full segment at once.
        s.set_ack_delay(Some(ACK_DELAY));
        s.set_congestion_control(settings.congestion);
        s.set_timeout(Some(HANDSHAKE_TIMEOUT));
        s.listen(key.server)
    });
    if let Err(e) = listened {
        return Err((c, io::Error::other(format!("listen: {e:?}"))));
    }
    ctx.device.rx = Some(Bytes::from(c.syn));
    endpoint.with_set(|set| {
        ctx.iface.poll_ingress_single(ctx.now, ctx.device, set);
    });
    ctx.device.rx = None;
    Ok(Box::new(Open {
        upstream: c.upstream,
        endpoint,
        closing: Closing::default(),
        handshake: true,
        rx: RxTrack::new(c.syn_seq),
        moved_since_release: 0,
        last_moved: ctx.now,
        inbound: None,
        held: 0,
        budget_blocked: false,
        eager_release,
    }))
}
