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

use std::collections::HashMap;
use std::io;
use std::task::{Context, Poll};

use bytes::Bytes;
use smoltcp::iface::PollResult;
use smoltcp::socket::tcp::{self, CongestionControl, State};
use smoltcp::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::budget::{self, Budget};
use super::buffer::TcpEndpoint;
use super::ctx::Ctx;
use super::flow::{fired, FlowId, FlowWaker, Proto, Slab, Token};
use super::inbound::{InboundConnection, InboundDone};
use super::limits::{HalfOpen, Limits, LoggedOnce};
use super::packet::{push_tcp_reset, push_unreachable, FlowKey, Segment, Unreachable};
use super::stats::Stats;
use super::upstream;

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

// ---------------------------------------------------------------------------------------
// Decisions (no I/O)
// ---------------------------------------------------------------------------------------

/// What the table knows about a segment's flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowView {
    None,
    Connecting,
    /// `finished`: the socket is CLOSED or in TIME-WAIT and only awaits removal.
    Open {
        finished: bool,
    },
}

/// What to do with an inbound segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IngressAction {
    /// New connection: connect upstream and hold the SYN.
    Connect,
    /// A retransmitted SYN while connecting: keep (the newest) SYN, answer nothing.
    Absorb,
    /// The session gave up while connecting.
    Cancel,
    /// Hand the segment to the flow's socket.
    Deliver,
    /// A new SYN for a 4-tuple whose old connection is finished: replace the flow.
    Restart,
    /// Not for any connection: answer with RST, as a closed port does.
    Reset,
    /// Nothing to do.
    Ignore,
}

pub(crate) fn ingress_action(view: FlowView, seg: &Segment) -> IngressAction {
    match view {
        FlowView::None if seg.is_initial_syn() => IngressAction::Connect,
        FlowView::None if seg.rst => IngressAction::Ignore,
        FlowView::None => IngressAction::Reset,
        FlowView::Connecting if seg.is_initial_syn() => IngressAction::Absorb,
        FlowView::Connecting if seg.rst => IngressAction::Cancel,
        FlowView::Connecting => IngressAction::Ignore,
        FlowView::Open { finished: true } if seg.is_initial_syn() => IngressAction::Restart,
        FlowView::Open { .. } => IngressAction::Deliver,
    }
}

/// How a failed upstream connect is reported to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectFailure {
    /// RST+ACK: ECONNREFUSED.
    Refused,
    /// ICMP destination unreachable.
    Unreachable(Unreachable),
    /// Nothing: the session's connect times out by itself.
    TimedOut,
    /// RST+ACK: the agent's connect timeout ran out first.
    GaveUp,
}

pub(crate) fn classify_connect_error(err: &io::Error) -> ConnectFailure {
    if err.raw_os_error() == Some(libc::ETIMEDOUT) {
        return ConnectFailure::TimedOut;
    }
    match upstream::unreachable_reason(err) {
        Some(why) => ConnectFailure::Unreachable(why),
        // ECONNREFUSED, and local failures (EMFILE, EADDRNOTAVAIL, ...) that the session's
        // program can best handle as a refusal.
        None => ConnectFailure::Refused,
    }
}

/// Which halves of an open flow have been closed, and how.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closing {
    /// The session's FIN was passed upstream with `shutdown(SHUT_WR)`.
    pub upstream_write_shut: bool,
    /// Upstream EOF was passed to the session (smoltcp `close()`).
    pub upstream_eof: bool,
    /// We aborted the smoltcp socket because upstream failed.
    pub aborted: bool,
    /// The session's FIN has been seen.
    pub client_fin: bool,
}

/// States in which the session's FIN has been received.
fn fin_received(state: State) -> bool {
    matches!(
        state,
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait
    )
}

/// Records what the socket state says about the session's side.
pub(crate) fn observe(state: State, c: &mut Closing) {
    if fin_received(state) {
        c.client_fin = true;
    }
}

/// Whether to pass the session's FIN upstream now: it arrived and everything before it has
/// been written upstream.
pub(crate) fn wants_upstream_shutdown(state: State, rx_queued: usize, c: &Closing) -> bool {
    !c.upstream_write_shut && !c.aborted && rx_queued == 0 && fin_received(state)
}

/// Whether an open flow is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    Remove {
        /// Drop the upstream socket with a RST rather than a FIN.
        reset_upstream: bool,
    },
}

/// `tuple_present`: the socket still has a peer (after `abort()`, until its RST is out).
pub(crate) fn verdict(state: State, tuple_present: bool, c: &Closing) -> Verdict {
    match state {
        State::TimeWait => Verdict::Remove {
            reset_upstream: false,
        },
        State::Closed if c.aborted => {
            if tuple_present {
                Verdict::Keep
            } else {
                Verdict::Remove {
                    reset_upstream: false,
                }
            }
        }
        State::Closed if c.client_fin && c.upstream_eof => Verdict::Remove {
            reset_upstream: false,
        },
        // Reset by the session, or the handshake timed out.
        State::Closed => Verdict::Remove {
            reset_upstream: true,
        },
        // The replayed SYN was not taken; nothing can proceed.
        State::Listen => Verdict::Remove {
            reset_upstream: true,
        },
        _ => Verdict::Keep,
    }
}

/// What the flow table knows about the session's sequence space, enough to prove that
/// smoltcp holds no out-of-order data in the receive ring (which it stores past the queued
/// data, where nothing else shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RxTrack {
    /// Sequence number of the first payload byte (ISN + 1).
    base: u32,
    /// Payload bytes taken out of the ring so far (wrapping).
    consumed: u32,
    /// End of the highest payload the session has sent.
    highest_end: u32,
}

impl RxTrack {
    pub fn new(isn: u32) -> Self {
        let base = isn.wrapping_add(1);
        Self {
            base,
            consumed: 0,
            highest_end: base,
        }
    }

    /// Records an inbound segment.
    pub fn segment(&mut self, seg: &Segment) {
        if seg.payload_len > 0 {
            let end = seg.seq.wrapping_add(seg.payload_len as u32);
            if (end.wrapping_sub(self.highest_end) as i32) > 0 {
                self.highest_end = end;
            }
        }
    }

    /// Records bytes taken out of the ring.
    pub fn consumed(&mut self, n: usize) {
        self.consumed = self.consumed.wrapping_add(n as u32);
    }

    /// Whether nothing live is in the ring: no queued bytes, and everything the session
    /// ever sent is among the bytes received in order (so no out-of-order data is held).
    pub fn ring_is_dead(&self, queued: usize) -> bool {
        let contiguous_end = self
            .base
            .wrapping_add(self.consumed)
            .wrapping_add(queued as u32);
        queued == 0 && (self.highest_end.wrapping_sub(contiguous_end) as i32) <= 0
    }
}

/// Quiet time after which a drained flow gives its ring pages back. Giving them back
/// while traffic flows would cost a page fault per page on the next burst (measured: a
/// quarter less bulk throughput when released every 256 KiB), so only quiet flows do.
const RELEASE_AFTER_QUIET: Duration = Duration::from_secs(1);

/// When a drained flow (both rings dead) should give its pages back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Nothing was touched since the last release.
    Clean,
    Now,
    At(Instant),
}

/// `eager`: the flow got small rings in a crowded session (see `budget::ring_len`); its
/// pages go back as soon as it is drained, since thousands of flows that each keep a page
/// or two for a second add up.
pub(crate) fn release_plan(
    moved: usize,
    last_moved: Instant,
    now: Instant,
    eager: bool,
) -> Release {
    if moved == 0 {
        Release::Clean
    } else if eager || now >= last_moved + RELEASE_AFTER_QUIET {
        Release::Now
    } else {
        Release::At(last_moved + RELEASE_AFTER_QUIET)
    }
}

// ---------------------------------------------------------------------------------------
// The table and its I/O
// ---------------------------------------------------------------------------------------

struct Connecting {
    upstream: TcpStream,
    syn: Vec<u8>,
    syn_seq: u32,
    /// When the connect is given up.
    deadline: Instant,
}

struct Open {
    upstream: TcpStream,
    endpoint: TcpEndpoint,
    closing: Closing,
    /// The handshake timeout is still set on the socket.
    handshake: bool,
    rx: RxTrack,
    /// Payload bytes moved (either way) since the rings' pages were last given back.
    moved_since_release: usize,
    /// When bytes last moved.
    last_moved: Instant,
    /// A connection opened into the session whose handshake has not ended: who to tell.
    inbound: Option<InboundDone>,
    /// Bytes queued in both rings, as last counted against the budget.
    held: usize,
    /// The last pump left upstream data unread for the budget: look again after
    /// [`budget::RETRY`].
    budget_blocked: bool,
    /// Small rings: give pages back as soon as drained (see [`release_plan`]).
    eager_release: bool,
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

/// Gives a drained flow's ring pages back when [`release_plan`] says so; returns when to
/// look again, if that is later.
fn release_pages(open: &mut Open, now: Instant, stats: &Stats) -> Option<Instant> {
    let s = open.endpoint.socket();
    if s.send_queue() != 0 || !open.rx.ring_is_dead(s.recv_queue()) {
        return None;
    }
    match release_plan(
        open.moved_since_release,
        open.last_moved,
        now,
        open.eager_release,
    ) {
        Release::Clean => None,
        Release::At(at) => Some(at),
        Release::Now => {
            open.endpoint.release_rx();
            open.endpoint.release_tx();
            open.moved_since_release = 0;
            Stats::inc(&stats.tcp_buffer_releases);
            None
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

/// Moves bytes between the smoltcp socket and the upstream socket, as far as both sides
/// and the buffer budget allow, registering the flow's waker with whichever upstream
/// readiness it waits for (or setting `budget_blocked` when the budget stopped it).
fn pump(open: &mut Open, cx: &mut Context<'_>, stats: &Stats, budget: &mut Budget) -> usize {
    let Open {
        upstream,
        endpoint,
        closing,
        rx,
        held,
        budget_blocked,
        ..
    } = open;
    *budget_blocked = false;
    let mut moved = 0;
    endpoint.with_socket(|sock| {
        // Session -> upstream.
        while !closing.upstream_write_shut && !closing.aborted && sock.can_recv() {
            let res = sock.recv(|buf| match upstream.try_write(buf) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match res {
                Ok(Ok(n)) => {
                    rx.consumed(n);
                    moved += n;
                    Stats::add(&stats.tcp_bytes_up, n as u64);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    match upstream.poll_write_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => upstream_failed(sock, closing, stats),
                        Poll::Pending => {}
                    }
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upstream write failed; resetting the session's side");
                    upstream_failed(sock, closing, stats);
                }
                Err(_) => break,
            }
        }
        if wants_upstream_shutdown(sock.state(), sock.recv_queue(), closing) {
            closing.upstream_write_shut = true;
            let _ = upstream::shutdown_write(upstream);
        }

        // Upstream -> session, as far as the budget allows.
        budget.set(held, sock.send_queue() + sock.recv_queue());
        let mut allow = budget.allowance(*held);
        while !closing.upstream_eof && !closing.aborted && sock.may_send() && sock.can_send() {
            if allow == 0 {
                // Only a flow with data waiting looks again on a timer; an idle one waits
                // for its upstream as usual.
                *budget_blocked = upstream.poll_read_ready(cx).is_ready();
                break;
            }
            let res = sock.send(|buf| {
                let len = buf.len().min(allow);
                match upstream.try_read(&mut buf[..len]) {
                    Ok(n) => (n, Ok(n)),
                    Err(e) => (0, Err(e)),
                }
            });
            match res {
                Ok(Ok(0)) => {
                    closing.upstream_eof = true;
                    sock.close();
                }
                Ok(Ok(n)) => {
                    moved += n;
                    allow -= n;
                    Stats::add(&stats.tcp_bytes_down, n as u64);
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    match upstream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => upstream_failed(sock, closing, stats),
                        Poll::Pending => {}
                    }
                    break;
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "upstream read failed; resetting the session's side");
                    upstream_failed(sock, closing, stats);
                }
                Err(_) => break,
            }
        }
    });
    moved
}

fn upstream_failed(sock: &mut tcp::Socket<'_>, closing: &mut Closing, stats: &Stats) {
    if !closing.aborted {
        closing.aborted = true;
        Stats::inc(&stats.tcp_reset_by_upstream);
        sock.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(syn: bool, ack: bool, rst: bool) -> Segment {
        Segment {
            syn,
            ack,
            rst,
            ..Segment::default()
        }
    }

    #[test]
    fn syn_for_a_new_tuple_connects_and_other_segments_get_rst() {
        assert_eq!(
            ingress_action(FlowView::None, &seg(true, false, false)),
            IngressAction::Connect
        );
        assert_eq!(
            ingress_action(FlowView::None, &seg(false, true, false)),
            IngressAction::Reset
        );
        assert_eq!(
            ingress_action(FlowView::None, &seg(true, true, false)),
            IngressAction::Reset,
            "a stray SYN-ACK is not a connection attempt"
        );
        assert_eq!(
            ingress_action(FlowView::None, &seg(false, true, true)),
            IngressAction::Ignore
        );
    }

    #[test]
    fn segments_while_connecting_are_absorbed_or_cancel() {
        assert_eq!(
            ingress_action(FlowView::Connecting, &seg(true, false, false)),
            IngressAction::Absorb
        );
        assert_eq!(
            ingress_action(FlowView::Connecting, &seg(false, false, true)),
            IngressAction::Cancel
        );
        assert_eq!(
            ingress_action(FlowView::Connecting, &seg(false, true, false)),
            IngressAction::Ignore
        );
    }

    #[test]
    fn open_flows_take_everything_and_finished_ones_restart_on_syn() {
        let open = FlowView::Open { finished: false };
        let done = FlowView::Open { finished: true };
        assert_eq!(
            ingress_action(open, &seg(true, false, false)),
            IngressAction::Deliver
        );
        assert_eq!(
            ingress_action(done, &seg(true, false, false)),
            IngressAction::Restart
        );
        assert_eq!(
            ingress_action(done, &seg(false, true, false)),
            IngressAction::Deliver
        );
    }

    #[test]
    fn connect_errors_map_to_what_the_pod_would_see() {
        let e = |errno| io::Error::from_raw_os_error(errno);
        assert_eq!(
            classify_connect_error(&e(libc::ECONNREFUSED)),
            ConnectFailure::Refused
        );
        assert_eq!(
            classify_connect_error(&e(libc::EHOSTUNREACH)),
            ConnectFailure::Unreachable(Unreachable::Host)
        );
        assert_eq!(
            classify_connect_error(&e(libc::ENETUNREACH)),
            ConnectFailure::Unreachable(Unreachable::Net)
        );
        assert_eq!(
            classify_connect_error(&e(libc::ETIMEDOUT)),
            ConnectFailure::TimedOut
        );
        assert_eq!(
            classify_connect_error(&e(libc::EMFILE)),
            ConnectFailure::Refused
        );
    }

    #[test]
    fn session_fin_goes_upstream_only_after_its_data() {
        let c = Closing::default();
        assert!(!wants_upstream_shutdown(State::Established, 0, &c));
        assert!(!wants_upstream_shutdown(State::CloseWait, 10, &c));
        assert!(wants_upstream_shutdown(State::CloseWait, 0, &c));
        assert!(wants_upstream_shutdown(State::TimeWait, 0, &c));
        let shut = Closing {
            upstream_write_shut: true,
            ..c
        };
        assert!(!wants_upstream_shutdown(State::CloseWait, 0, &shut));
    }

    #[test]
    fn flows_are_removed_when_both_sides_are_done() {
        let mut c = Closing::default();
        assert_eq!(verdict(State::Established, true, &c), Verdict::Keep);
        // Session closed first: CLOSE-WAIT, then our FIN (LAST-ACK), then CLOSED.
        observe(State::CloseWait, &mut c);
        assert!(c.client_fin);
        c.upstream_eof = true;
        assert_eq!(verdict(State::LastAck, true, &c), Verdict::Keep);
        assert_eq!(
            verdict(State::Closed, false, &c),
            Verdict::Remove {
                reset_upstream: false
            }
        );
        // Upstream closed first: TIME-WAIT is not kept.
        assert_eq!(
            verdict(State::TimeWait, true, &Closing::default()),
            Verdict::Remove {
                reset_upstream: false
            }
        );
    }

    #[test]
    fn resets_pass_both_ways() {
        // The session reset the connection: RST upstream.
        assert_eq!(
            verdict(State::Closed, false, &Closing::default()),
            Verdict::Remove {
                reset_upstream: true
            }
        );
        // Upstream failed and we aborted: keep the flow until our RST is out.
        let aborted = Closing {
            aborted: true,
            ..Closing::default()
        };
        assert_eq!(verdict(State::Closed, true, &aborted), Verdict::Keep);
        assert_eq!(
            verdict(State::Closed, false, &aborted),
            Verdict::Remove {
                reset_upstream: false
            }
        );
    }

    fn data(seq: u32, len: usize) -> Segment {
        Segment {
            ack: true,
            seq,
            payload_len: len,
            ..Segment::default()
        }
    }

    #[test]
    fn receive_ring_is_dead_only_without_queued_or_out_of_order_data() {
        let isn = u32::MAX - 10; // the sequence space wraps during the test
        let mut rx = RxTrack::new(isn);
        assert!(rx.ring_is_dead(0));
        // 100 bytes in order, not yet taken out.
        rx.segment(&data(isn.wrapping_add(1), 100));
        assert!(!rx.ring_is_dead(100));
        rx.consumed(100);
        assert!(rx.ring_is_dead(0));
        // A segment beyond a hole: held out of order, nothing queued.
        rx.segment(&data(isn.wrapping_add(201), 50));
        assert!(!rx.ring_is_dead(0), "out-of-order data lives in the ring");
        // The hole is filled: 150 bytes queued, then taken.
        rx.segment(&data(isn.wrapping_add(101), 100));
        assert!(!rx.ring_is_dead(150));
        rx.consumed(150);
        assert!(rx.ring_is_dead(0));
        // Retransmissions of old data change nothing.
        rx.segment(&data(isn.wrapping_add(1), 100));
        assert!(rx.ring_is_dead(0));
    }

    #[test]
    fn drained_flows_release_after_a_quiet_second() {
        let t = Instant::from_millis;
        assert_eq!(release_plan(0, t(0), t(5000), false), Release::Clean);
        assert_eq!(
            release_plan(10, t(1000), t(1500), false),
            Release::At(t(2000))
        );
        assert_eq!(
            release_plan(1 << 30, t(1000), t(1500), false),
            Release::At(t(2000))
        );
        assert_eq!(release_plan(10, t(1000), t(2000), false), Release::Now);
        // Small rings of a crowded session: at once.
        assert_eq!(release_plan(10, t(1000), t(1001), true), Release::Now);
        assert_eq!(release_plan(0, t(1000), t(1001), true), Release::Clean);
    }
}
