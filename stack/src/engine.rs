//! The stack's event loop: one task that owns the smoltcp interface, the flow tables and the
//! outbound queue, and moves packets between the tunnel and the flows.
//!
//! Each poll of the task runs rounds until nothing is left to do:
//!
//! 1. drain every packet the tunnel has ready (up to a budget) and route each to its table:
//!    TCP segments to their flow's socket (or the SYN logic), UDP datagrams and echo
//!    requests straight to their upstream sockets; then open the connections the incoming
//!    side asked to open into the session (`inbound`);
//! 2. fire due deadlines (smoltcp timers, idle timeouts);
//! 3. service every flow whose waker fired (upstream readiness, new smoltcp data): pump
//!    bytes, then let smoltcp emit what it can;
//! 4. hand the outbound queue to the tunnel; once it drains below its low-water mark,
//!    service the flows that were parked on a full queue.
//!
//! When a round makes no progress every source has registered the task's waker (the tunnel
//! receive and send, the flows' wakers, one tokio timer set to the earliest deadline) and
//! the task sleeps. A round budget makes a busy stack yield so quinn's tasks get the CPU.
//! Nothing here allocates per packet: the ready list and scratch vectors are reused, and
//! outbound packets come from the device's arena and buffer pool.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use smoltcp::iface::{Config, Interface};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{HardwareAddress, Ipv4Address, Ipv6Address};
use tokio::time::Sleep;

use super::config::StackConfig;
use super::ctx::Ctx;
use super::device::{LinkDevice, TxQueue};
use super::flow::{Proto, ReadyQueue, Timers, Token};
use super::icmp::IcmpFlows;
use super::inbound::InboundReceiver;
use super::link::{LinkError, PacketLink};
use super::packet::{self, DropReason, Parsed};
use super::stats::Stats;
use super::tcp::{TcpFlows, TcpSettings};
use super::udp::UdpFlows;
use crate::busy_poll::BusyPoll;

/// Rounds per poll before yielding to other tasks.
const ROUNDS_PER_POLL: usize = 16;
/// Tunnel packets taken per round.
const RECV_PER_ROUND: usize = 256;
/// The outbound queue's bound for replies, as a multiple of its high-water mark: room for
/// replies to some 100,000 inbound packets (a RST is 40 bytes) while the tunnel drains.
const REPLY_BOUND_FACTOR: usize = 4;

/// smoltcp time measured from the stack's start.
struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.origin.elapsed().as_micros() as i64)
    }

    fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        self.origin + std::time::Duration::from_micros(at.total_micros().max(0) as u64)
    }
}

pub(crate) struct Engine<L> {
    link: L,
    iface: Interface,
    device: LinkDevice,
    timers: Timers,
    ready: Arc<ReadyQueue>,
    ready_scratch: Vec<Token>,
    blocked: Vec<Token>,
    blocked_scratch: Vec<Token>,
    tcp: TcpFlows,
    udp: UdpFlows,
    icmp: IcmpFlows,
    stats: Arc<Stats>,
    clock: Clock,
    ident: u32,
    sleep: Pin<Box<Sleep>>,
    sleep_at: Option<Instant>,
    /// Connections to open into the session (stolen inbound ones), if the agent steals.
    inbound: Option<InboundReceiver>,
    /// Told of traffic, so the runtime polls on briefly before it sleeps.
    busy_poll: Option<BusyPoll>,
}

macro_rules! ctx {
    ($engine:ident, $now:expr) => {
        Ctx {
            now: $now,
            iface: &mut $engine.iface,
            device: &mut $engine.device,
            timers: &mut $engine.timers,
            ready: &$engine.ready,
            blocked: &mut $engine.blocked,
            stats: &$engine.stats,
            ident: &mut $engine.ident,
        }
    };
}

fn random_seed() -> u64 {
    RandomState::new().build_hasher().finish()
}

/// The stack's interface: any-IP, with routes back to every session address.
fn new_interface(device: &mut LinkDevice, now: Instant) -> Interface {
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = random_seed();
    let mut iface = Interface::new(config, device, now);
    // Any-IP: accept segments for every destination. Egress needs a route to the session's
    // addresses; on an IP medium any gateway will do, no neighbour is looked up.
    iface.set_any_ip(true);
    iface
        .routes_mut()
        .add_default_ipv4_route(Ipv4Address::new(0, 0, 0, 1))
        .expect("room for the IPv4 default route");
    iface
        .routes_mut()
        .add_default_ipv6_route(Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1))
        .expect("room for the IPv6 default route");
    iface
}

impl<L: PacketLink> Engine<L> {
    pub fn new(link: L, config: &StackConfig) -> Self {
        let clock = Clock {
            origin: tokio::time::Instant::now(),
        };
        // The queue may hold a burst of full-size packets before it pushes back, enough to
        // keep the tunnel busy while the stack produces the next burst.
        let high = (16 * config.mtu).max(1 << 20);
        let mut tx = TxQueue::new(high, high / 2);
        // Replies to inbound packets may pass `high` (the session, not the stack, sets their
        // number), up to a bound where they are dropped (see `device`).
        tx.set_bound(REPLY_BOUND_FACTOR * high, config.stats.clone());
        let mut device = LinkDevice::new(config.mtu, tx);
        device.set_tcp_checksum_trusted(link.tx_checksum_trusted());
        let iface = new_interface(&mut device, clock.now());
        let settings = TcpSettings {
            rx_buffer: config.tcp_rx_buffer,
            tx_buffer: config.tcp_tx_buffer,
            congestion: config.tcp_congestion.into(),
            limits: config.limits,
        };
        let origin = clock.origin;
        Self {
            link,
            iface,
            device,
            timers: Timers::default(),
            ready: Arc::new(ReadyQueue::default()),
            ready_scratch: Vec::new(),
            blocked: Vec::new(),
            blocked_scratch: Vec::new(),
            tcp: TcpFlows::new(settings),
            udp: UdpFlows::new(
                Duration::from_micros(config.udp_idle_timeout.as_micros() as u64),
                config.limits,
            ),
            icmp: IcmpFlows::new(
                Duration::from_micros(config.icmp_idle_timeout.as_micros() as u64),
                config.limits,
            ),
            stats: config.stats.clone(),
            clock,
            ident: random_seed() as u32,
            sleep: Box::pin(tokio::time::sleep_until(origin)),
            sleep_at: None,
            inbound: None,
            busy_poll: config.busy_poll.clone(),
        }
    }

    /// Where connections to open into the session come from.
    pub fn set_inbound(&mut self, inbound: Option<InboundReceiver>) {
        self.inbound = inbound;
    }

    /// Runs until the tunnel closes (`Ok`) or fails.
    pub fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        self.ready.enter(cx.waker());
        for _ in 0..ROUNDS_PER_POLL {
            match self.round(cx) {
                Err(LinkError::Closed) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
                Ok(true) => {}
                Ok(false) => {
                    if !self.ready.try_leave() {
                        continue;
                    }
                    if self.arm_sleep(cx) {
                        cx.waker().wake_by_ref();
                    }
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// One round; returns whether anything happened.
    fn round(&mut self, cx: &mut Context<'_>) -> Result<bool, LinkError> {
        let mut progress = false;
        let now = self.clock.now();

        for _ in 0..RECV_PER_ROUND {
            match self.link.poll_recv(cx) {
                Poll::Ready(Ok(pkt)) => {
                    self.on_inbound(now, pkt);
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => break,
            }
        }

        if let Some(inbound) = self.inbound.as_mut() {
            loop {
                match inbound.poll_recv(cx) {
                    Poll::Ready(Some(conn)) => {
                        let mut ctx = ctx!(self, now);
                        self.tcp.open_inbound(&mut ctx, conn);
                        progress = true;
                    }
                    Poll::Ready(None) => {
                        self.inbound = None;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
        }

        while let Some((at, token)) = self.timers.pop_due(now) {
            progress = true;
            let mut ctx = ctx!(self, now);
            match token.proto {
                Proto::Tcp => self.tcp.on_timer(token.id, at),
                Proto::Udp => self.udp.on_timer(&mut ctx, token.id, at),
                Proto::Icmp => self.icmp.on_timer(&mut ctx, token.id, at),
            }
        }

        let mut ready = std::mem::take(&mut self.ready_scratch);
        self.ready.take_into(&mut ready);
        progress |= !ready.is_empty();
        for token in ready.drain(..) {
            self.service(now, token);
        }
        self.ready_scratch = ready;

        progress |= self.flush(cx, now)?;
        Ok(progress)
    }

    fn on_inbound(&mut self, now: Instant, pkt: Bytes) {
        if let Some(busy) = &self.busy_poll {
            busy.kick();
        }
        Stats::inc(&self.stats.packets_in);
        Stats::add(&self.stats.bytes_in, pkt.len() as u64);
        let mut ctx = ctx!(self, now);
        match packet::parse(&pkt) {
            Parsed::Tcp { key, seg } => self.tcp.on_segment(&mut ctx, pkt, key, seg),
            Parsed::Udp { key, payload } => self.udp.on_datagram(&mut ctx, pkt, key, payload),
            Parsed::Echo { key, seq, data } => self.icmp.on_echo(&mut ctx, &pkt, key, seq, data),
            Parsed::Drop(reason) => {
                tracing::trace!(?reason, len = pkt.len(), "inbound packet dropped");
                Stats::inc(match reason {
                    DropReason::Malformed => &self.stats.dropped_malformed,
                    DropReason::Fragment => &self.stats.dropped_fragments,
                    DropReason::Unsupported => &self.stats.dropped_unsupported,
                });
            }
        }
    }

    fn service(&mut self, now: Instant, token: Token) {
        let mut ctx = ctx!(self, now);
        match token.proto {
            Proto::Tcp => self.tcp.service(&mut ctx, token.id),
            Proto::Udp => self.udp.service(&mut ctx, token.id),
            Proto::Icmp => self.icmp.service(&mut ctx, token.id),
        }
    }

    /// Hands queued packets to the tunnel and resumes parked flows once it drained.
    fn flush(&mut self, cx: &mut Context<'_>, now: Instant) -> Result<bool, LinkError> {
        let (packets, bytes) = (self.device.tx.len(), self.device.tx.bytes());
        if packets > 0 {
            if let Poll::Ready(Err(e)) = self.link.poll_send(cx, &mut self.device.tx) {
                return Err(e);
            }
        }
        // (The link may have put fragments of a refused packet back: never underflow.)
        let sent = packets.saturating_sub(self.device.tx.len());
        if sent > 0 {
            if let Some(busy) = &self.busy_poll {
                busy.kick();
            }
        }
        Stats::add(&self.stats.packets_out, sent as u64);
        Stats::add(
            &self.stats.bytes_out,
            bytes.saturating_sub(self.device.tx.bytes()) as u64,
        );
        let mut progress = packets != self.device.tx.len() || bytes != self.device.tx.bytes();
        if let Some(mtu) = self.link.mtu() {
            if mtu < self.device.mtu() {
                self.shrink_mtu(mtu);
            }
        }
        if !self.blocked.is_empty() && self.device.tx.below_low() {
            let mut parked = std::mem::take(&mut self.blocked_scratch);
            std::mem::swap(&mut parked, &mut self.blocked);
            for token in parked.drain(..) {
                self.service(now, token);
            }
            self.blocked_scratch = parked;
            progress = true;
        }
        Ok(progress)
    }

    /// Sizes what the stack builds from now on to a smaller tunnel MTU. Packets smoltcp
    /// emits are sized by the interface's capabilities, fixed when it is made, so the
    /// interface is remade (it holds no per-flow state: every socket lives in its flow's own
    /// set); new connections then announce a fitting MSS. Established ones keep theirs and
    /// the link fragments their segments.
    fn shrink_mtu(&mut self, mtu: usize) {
        tracing::warn!(from = self.device.mtu(), to = mtu, "tunnel MTU shrank");
        self.device.set_mtu(mtu);
        self.iface = new_interface(&mut self.device, self.clock.now());
    }

    /// Points the timer at the earliest deadline; true if it is already due.
    fn arm_sleep(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(at) = self.timers.next_deadline() else {
            return false;
        };
        if self.sleep_at != Some(at) {
            self.sleep.as_mut().reset(self.clock.to_tokio(at));
            self.sleep_at = Some(at);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.sleep_at = None;
            return true;
        }
        false
    }
}
