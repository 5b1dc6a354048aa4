//! An open flow: the bytes moved between its upstream socket and its smoltcp socket, and
//! its ring pages given back when it goes quiet.

use std::io;
use std::task::{Context, Poll};

use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use tokio::net::TcpStream;

use super::decide::{release_plan, wants_upstream_shutdown, Closing, Release, RxTrack};
use crate::budget::Budget;
use crate::buffer::TcpEndpoint;
use crate::inbound::InboundDone;
use crate::stats::Stats;
use crate::upstream;

/// A connected flow: its upstream socket, its smoltcp socket and what they have done.
pub(super) struct Open {
    pub(super) upstream: TcpStream,
    pub(super) endpoint: TcpEndpoint,
    pub(super) closing: Closing,
    /// The handshake timeout is still set on the socket.
    pub(super) handshake: bool,
    pub(super) rx: RxTrack,
    /// Payload bytes moved (either way) since the rings' pages were last given back.
    pub(super) moved_since_release: usize,
    /// When bytes last moved.
    pub(super) last_moved: Instant,
    /// A connection opened into the session whose handshake has not ended: who to tell.
    pub(super) inbound: Option<InboundDone>,
    /// Bytes queued in both rings, as last counted against the budget.
    pub(super) held: usize,
    /// The last pump left upstream data unread for the budget: look again after
    /// [`budget::RETRY`](crate::budget::RETRY).
    pub(super) budget_blocked: bool,
    /// Small rings: give pages back as soon as drained (see [`release_plan`]).
    pub(super) eager_release: bool,
}

/// Gives a drained flow's ring pages back when [`release_plan`] says so; returns when to
/// look again, if that is later.
pub(super) fn release_pages(open: &mut Open, now: Instant, stats: &Stats) -> Option<Instant> {
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

/// Moves bytes between the smoltcp socket and the upstream socket, as far as both sides
/// and the buffer budget allow, registering the flow's waker with whichever upstream
/// readiness it waits for (or setting `budget_blocked` when the budget stopped it).
pub(super) fn pump(
    open: &mut Open,
    cx: &mut Context<'_>,
    stats: &Stats,
    budget: &mut Budget,
) -> usize {
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
