//! The stack's one byte budget for what its TCP flows hold in their buffers.
//!
//! Each TCP flow has rings of [`StackConfig::tcp_rx_buffer`](super::StackConfig) and
//! `tcp_tx_buffer` bytes (1 MiB each by default), backed by memory only where written
//! (`buffer`). That is cheap while data flows through, but a session may stop reading: with
//! 10,000 stalled readers, each send ring fills with what the upstream sent, and 10,000 × 1 MiB
//! is 10 GiB; a stalled upstream likewise leaves the receive rings full of what the session
//! sent. So the bytes queued in all rings (`send_queue + recv_queue` of every flow) are
//! counted against one budget ([`Limits::buffer_budget`](super::Limits)):
//!
//! * every flow may always hold [`FLOOR`] bytes, so no flow ever stops for good because of
//!   others (a stalled crowd cannot starve an active flow of its first page);
//! * beyond that a flow may take only what the budget has left.
//!
//! Upstream to session: the flow reads from its upstream socket only as much as it may take
//! (the data stays in the kernel's socket, whose window then closes towards the server, as it
//! would for a slow reader in the pod). A flow that stopped for the budget looks again after
//! [`RETRY`]. Session to upstream: a data segment that would take a flow beyond what it may
//! take, while its receive ring is not empty, is dropped before smoltcp sees it (counted as
//! `tcp_dropped_over_budget`); the session's TCP retransmits it. Both cost throughput only while the budget is spent.
//!
//! The accounting here is free of I/O: the TCP code reports each flow's holding after every
//! change ([`Budget::set`]) and asks [`Budget::allowance`] before it adds.

use std::time::Duration;

/// Bytes every flow may hold whatever the budget says: one page, the unit memory comes in.
pub(crate) const FLOOR: usize = 4096;
/// The smallest ring (each way) a new flow gets when many flows share the budget.
pub(crate) const MIN_RING: usize = 16 * 1024;
/// How soon a flow stopped by the budget looks again.
pub(crate) const RETRY: Duration = Duration::from_millis(20);

/// The ring size (each way) of a new flow when `flows` are open: an even share of the
/// budget `limit`, at most `configured` and at least [`MIN_RING`], in whole pages.
///
/// Why: a flow touches the first page of each ring as soon as data passes, and the kernel
/// keeps a page-table page for every 2 MiB of address space touched, also after the pages
/// themselves are given back. With 1 MiB rings each flow touches its own 2 MiB, so 10,000
/// flows that each carried one request held 40 MiB of page tables (measured); with rings
/// of a fair share, flows of a crowded session pack many to a page-table page.
pub(crate) fn ring_len(configured: usize, limit: usize, flows: usize) -> usize {
    let share = limit / 2 / (flows + 1);
    let len = share.min(configured).max(MIN_RING.min(configured));
    if len >= FLOOR {
        len & !(FLOOR - 1)
    } else {
        len
    }
}

/// Bytes held by all flows, against the limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    used: usize,
}

impl Budget {
    pub fn new(limit: usize) -> Self {
        Self { limit, used: 0 }
    }

    /// How many more bytes a flow that holds `held` may take now.
    pub fn allowance(&self, held: usize) -> usize {
        let floor = FLOOR.saturating_sub(held);
        let shared = self.limit.saturating_sub(self.used);
        floor.max(shared)
    }

    /// Whether a segment of `len` payload bytes from the session may enter a flow that holds
    /// `held`, whose receive ring holds `queued`. A flow with an empty receive ring always
    /// takes one segment (a segment may be far larger than [`FLOOR`] on a 64 KiB tunnel), so
    /// a spent budget slows a flow down but never stops it.
    pub fn admits(&self, held: usize, queued: usize, len: usize) -> bool {
        len <= self.allowance(held) || queued == 0
    }

    /// A flow's holding changed from `*held` to `now`.
    pub fn set(&mut self, held: &mut usize, now: usize) {
        self.used = self.used - *held + now;
        *held = now;
    }

    /// A flow holding `held` is gone.
    pub fn release(&mut self, held: usize) {
        self.used -= held;
    }

    /// Bytes held by all flows.
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_take_what_the_budget_has_left() {
        let mut budget = Budget::new(100_000);
        let (mut a, mut b) = (0, 0);
        assert_eq!(budget.allowance(a), 100_000);
        budget.set(&mut a, 70_000);
        assert_eq!(budget.allowance(b), 30_000);
        budget.set(&mut b, 30_000);
        assert_eq!(budget.used(), 100_000);
        assert_eq!(budget.allowance(a), 0, "spent");
        budget.set(&mut a, 10_000);
        assert_eq!(a, 10_000);
        assert_eq!(budget.allowance(b), 60_000);
        budget.release(b);
        assert_eq!(budget.used(), 10_000);
    }

    #[test]
    fn crowded_sessions_get_smaller_rings() {
        let mib = 1 << 20;
        assert_eq!(
            ring_len(mib, 256 * mib, 0),
            mib,
            "alone: the configured size"
        );
        assert_eq!(ring_len(mib, 256 * mib, 127), mib);
        assert_eq!(ring_len(mib, 256 * mib, 1023), 128 * 1024);
        assert_eq!(ring_len(mib, 256 * mib, 10_000), MIN_RING);
        assert_eq!(ring_len(mib, 256 * mib, 2000) % FLOOR, 0, "whole pages");
        assert_eq!(
            ring_len(1000, 256 * mib, 10_000),
            1000,
            "never above the configured"
        );
    }

    #[test]
    fn a_flow_with_an_empty_receive_ring_always_takes_a_segment() {
        let mut budget = Budget::new(FLOOR);
        let mut crowd = 0;
        budget.set(&mut crowd, 10 * FLOOR);
        assert!(
            budget.admits(0, 0, 65_000),
            "one large segment into an empty ring"
        );
        assert!(!budget.admits(65_000, 65_000, 1000), "not a second one");
        assert!(
            budget.admits(1000, 1000, 1000),
            "a small one within the floor"
        );
        budget.release(crowd);
        assert!(
            budget.admits(65_000, 65_000, 1000),
            "the budget has room again"
        );
    }

    #[test]
    fn every_flow_keeps_its_floor_when_the_budget_is_spent() {
        let mut budget = Budget::new(FLOOR);
        let mut crowd = 0;
        budget.set(&mut crowd, FLOOR);
        assert_eq!(budget.allowance(0), FLOOR, "a new flow still gets a page");
        assert_eq!(budget.allowance(1000), FLOOR - 1000);
        assert_eq!(budget.allowance(FLOOR), 0);
        let mut newcomer = 0;
        budget.set(&mut newcomer, FLOOR);
        assert_eq!(budget.used(), 2 * FLOOR, "floors may pass the limit");
        assert_eq!(budget.allowance(0), FLOOR);
    }
}
