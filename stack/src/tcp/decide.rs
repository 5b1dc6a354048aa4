//! TCP's decisions, free of I/O: what a segment means for its flow, what a failed connect
//! becomes for the session, when a half-closed or reset flow is done, when a drained flow
//! gives its buffer pages back. The flow table (`mod.rs`) asks these and does what they say;
//! each is a unit test here.

use std::io;

use smoltcp::socket::tcp::State;
use smoltcp::time::{Duration, Instant};

use crate::packet::{Segment, Unreachable};
use crate::upstream;

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
