//! UDP: each (session endpoint, destination endpoint) pair becomes a connected UDP socket in
//! the target's network namespace.
//!
//! What maps to what: the first datagram from `client:port` to `server:port` opens a socket
//! bound to an ephemeral port and `connect()`ed to `server:port`; later datagrams of the pair
//! reuse it. Replies read from that socket are written back as UDP packets from
//! `server:port` to `client:port`. A session socket that talks to several peers with
//! `sendto` therefore gets one flow per peer, and each peer's replies come from the address
//! the session wrote to. DNS to the pod's nameserver is just another flow. smoltcp is not
//! involved: parsing and building datagrams directly is simpler and cheaper.
//!
//! States: a flow is open until it has been idle (no datagram either way) for the idle
//! timeout, then its socket is closed. The deadline is checked lazily: it is armed once and,
//! when it fires, re-armed at `last_active + idle` if traffic moved it.
//!
//! Odd cases:
//! * The kernel reports an ICMP port unreachable for a connected socket as ECONNREFUSED on
//!   a later send or receive; the session gets an ICMP port unreachable in turn (so its own
//!   connected socket sees ECONNREFUSED, and `dig` or `nc -u` fail the way they would in the
//!   pod). Routing failures become ICMP net/host unreachable the same way.
//! * A send that would block (socket buffer full) parks the datagram in a small per-flow
//!   backlog until the socket is writable; past the backlog's bound datagrams are dropped
//!   and counted, as the kernel would drop them.
//! * Replies larger than the tunnel MTU are fragmented (see `packet/fragment.rs`).
//! * Replies stop being read while the tunnel queue is over its high-water mark; the flow
//!   is parked and resumed when the queue drains, and the kernel socket buffer holds (or, at
//!   its limit, drops) what arrives meanwhile.

use std::collections::VecDeque;
use std::io;
use std::ops::Range;
use std::task::{Context, Poll};

use bytes::Bytes;
use smoltcp::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::ctx::Ctx;
use super::datagram::{DatagramFlows, READ_BUDGET};
use super::flow::{FlowId, Proto, Token};
use super::limits::{admit_flow, Limits, LoggedOnce, Refusal};
use super::packet::{push_udp, push_unreachable, synthetic_udp, FlowKey, Unreachable};
use super::stats::Stats;
use super::upstream;

/// Datagrams a flow may hold while its socket is not writable.
const BACKLOG_LIMIT: usize = 256;
/// Largest UDP payload a socket can deliver.
const MAX_DATAGRAM: usize = 65_535;

/// What the session should learn from a failed send or receive on a connected socket.
pub(crate) fn error_reply(err: &io::Error) -> Option<Unreachable> {
    if err.raw_os_error() == Some(libc::ECONNREFUSED) {
        return Some(Unreachable::Port);
    }
    upstream::unreachable_reason(err)
}

/// Sends on the socket directly. tokio's `try_send` first checks the write readiness it has
/// recorded, which `service` deliberately consumes (see there).
fn send_now(socket: &UdpSocket, payload: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(socket).send(payload)
}

/// A UDP flow's upstream end: its connected socket, and what waits for it to be writable.
struct Upstream {
    socket: UdpSocket,
    backlog: VecDeque<Bytes>,
}

/// All UDP flows of a stack.
pub(crate) struct UdpFlows {
    limits: Limits,
    logged: LoggedOnce,
    flows: DatagramFlows<FlowKey, Upstream>,
    recv_buf: Box<[u8]>,
}

impl UdpFlows {
    pub fn new(idle: Duration, limits: Limits) -> Self {
        Self {
            limits,
            logged: LoggedOnce::default(),
            flows: DatagramFlows::new(Proto::Udp, idle),
            recv_buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        }
    }

    /// Sends one datagram from the session upstream (`pkt` is the whole IP packet).
    pub fn on_datagram(
        &mut self,
        ctx: &mut Ctx<'_>,
        pkt: Bytes,
        key: FlowKey,
        payload: Range<usize>,
    ) {
        let id = match self.flows.find(&key) {
            Some(id) => id,
            None if admit_flow(&self.limits, self.flows.len()).is_err() => {
                Stats::inc(&ctx.stats.udp_refused_by_limit);
                if self.logged.first(Refusal::Flows) {
                    tracing::warn!(
                        max = self.limits.max_flows,
                        "refusing new UDP flows beyond the session's flow cap; counted as \
                         udp_refused_by_limit"
                    );
                }
                let mtu = ctx.device.mtu();
                push_unreachable(&mut ctx.device.tx, mtu, &pkt, Unreachable::Prohibited);
                return;
            }
            None => match self.open(ctx, key) {
                Ok(id) => id,
                Err(e) => {
                    tracing::debug!(?key, error = %e, "cannot open a UDP flow");
                    Stats::inc(&ctx.stats.udp_dropped);
                    if let Some(why) = upstream::unreachable_reason(&e) {
                        let mtu = ctx.device.mtu();
                        push_unreachable(&mut ctx.device.tx, mtu, &pkt, why);
                    }
                    return;
                }
            },
        };
        let flow = self.flows.get_mut(id).expect("mapped flow exists");
        flow.last_active = ctx.now;
        let upstream = &mut flow.upstream;
        if !upstream.backlog.is_empty() {
            if upstream.backlog.len() < BACKLOG_LIMIT {
                upstream.backlog.push_back(pkt.slice(payload));
            } else {
                Stats::inc(&ctx.stats.udp_dropped);
            }
            return;
        }
        match send_now(&upstream.socket, &pkt[payload.clone()]) {
            Ok(_) => Stats::inc(&ctx.stats.udp_datagrams_up),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                upstream.backlog.push_back(pkt.slice(payload));
                flow.waker.wake();
            }
            Err(e) => {
                Stats::inc(&ctx.stats.udp_dropped);
                if let Some(why) = error_reply(&e) {
                    if why == Unreachable::Port {
                        Stats::inc(&ctx.stats.udp_refused);
                    }
                    let mtu = ctx.device.mtu();
                    push_unreachable(&mut ctx.device.tx, mtu, &pkt, why);
                }
            }
        }
    }

    fn open(&mut self, ctx: &mut Ctx<'_>, key: FlowKey) -> io::Result<FlowId> {
        let socket = upstream::connect_udp(key.server)?;
        let upstream = Upstream {
            socket,
            backlog: VecDeque::new(),
        };
        let id = self.flows.insert(ctx, key, upstream);
        Stats::inc(&ctx.stats.udp_opened);
        tracing::debug!(?key, "udp flow opened");
        Ok(id)
    }

    /// Flushes the backlog and passes replies to the session.
    pub fn service(&mut self, ctx: &mut Ctx<'_>, id: FlowId) {
        let Some(flow) = self.flows.get_mut(id) else {
            return;
        };
        flow.waker.clear();
        let mut cx = Context::from_waker(flow.waker.waker());
        let mtu = ctx.device.mtu();

        while let Some(front) = flow.upstream.backlog.front() {
            match send_now(&flow.upstream.socket, front) {
                Ok(_) => {
                    Stats::inc(&ctx.stats.udp_datagrams_up);
                    flow.upstream.backlog.pop_front();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match flow.upstream.socket.poll_send_ready(&mut cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) => {
                            Stats::inc(&ctx.stats.udp_dropped);
                            flow.upstream.backlog.pop_front();
                        }
                        Poll::Pending => break,
                    }
                }
                Err(e) => {
                    Stats::inc(&ctx.stats.udp_dropped);
                    flow.upstream.backlog.pop_front();
                    if let Some(why) = error_reply(&e) {
                        push_unreachable(&mut ctx.device.tx, mtu, &synthetic_udp(flow.key), why);
                    }
                }
            }
        }

        let mut received = false;
        let token = Token {
            proto: Proto::Udp,
            id,
        };
        for left in (0..READ_BUDGET).rev() {
            if !flow.may_read(ctx, token, left) {
                break;
            }
            let err = match flow.upstream.socket.try_recv(&mut self.recv_buf) {
                Ok(n) => {
                    received = true;
                    flow.last_active = ctx.now;
                    Stats::inc(&ctx.stats.udp_datagrams_down);
                    let ident = ctx.next_ident();
                    push_udp(
                        &mut ctx.device.tx,
                        mtu,
                        ident,
                        flow.key.server,
                        flow.key.client,
                        &self.recv_buf[..n],
                    );
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match flow.upstream.socket.poll_recv_ready(&mut cx) {
                        Poll::Ready(Ok(())) => continue,
                        Poll::Ready(Err(_)) | Poll::Pending => {}
                    }
                    // Woken with nothing to read: perhaps an ICMP error (see below).
                    match flow.upstream.socket.take_error() {
                        Ok(Some(e)) if !received => e,
                        _ => break,
                    }
                }
                Err(e) => e,
            };
            match error_reply(&err) {
                Some(why) => {
                    if why == Unreachable::Port {
                        Stats::inc(&ctx.stats.udp_refused);
                    }
                    push_unreachable(&mut ctx.device.tx, mtu, &synthetic_udp(flow.key), why);
                }
                None => break,
            }
        }

        // An ICMP error makes the socket report EPOLLERR without EPOLLIN; tokio wakes only
        // writers for that, and gates `try_recv` on read readiness that never comes. So the
        // flow also waits for write readiness (after consuming what tokio recorded, as a
        // UDP socket is always writable), and a wake-up with nothing to read checks
        // `SO_ERROR`. Once tokio has seen an error it keeps the socket write-ready; later
        // errors then surface on the next send instead.
        if flow.upstream.backlog.is_empty() {
            let _ = flow.upstream.socket.try_io(Interest::WRITABLE, || {
                Err::<(), _>(io::ErrorKind::WouldBlock.into())
            });
            let _ = flow.upstream.socket.poll_send_ready(&mut cx);
        }
    }

    /// Reaps the flow if it stayed idle.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>, id: FlowId, at: Instant) {
        if let Some(flow) = self.flows.on_timer(ctx, id, at) {
            Stats::inc(&ctx.stats.udp_closed);
            tracing::debug!(key = ?flow.key, "udp flow idle; closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_routing_errors_become_icmp() {
        let e = io::Error::from_raw_os_error;
        assert_eq!(error_reply(&e(libc::ECONNREFUSED)), Some(Unreachable::Port));
        assert_eq!(error_reply(&e(libc::EHOSTUNREACH)), Some(Unreachable::Host));
        assert_eq!(error_reply(&e(libc::ENETUNREACH)), Some(Unreachable::Net));
        assert_eq!(error_reply(&e(libc::ENOBUFS)), None);
    }
}
