//! Who holds each node the agent named: the references the daemon owes the agent, and why it
//! still needs them.
//!
//! The agent counts one reference per answer that names a node (a lookup, a new file, each
//! `readdirplus` entry) and closes the node when `Forget` gives them all back. The kernel counts
//! its own lookup references the same way and `forget`s them later. The two used to be equal,
//! so the kernel's forgets went straight to the agent; a cached listing breaks that: one fetch
//! from the agent (one agent reference per entry) answers many `readdirplus` calls, each of
//! which hands the kernel one more reference.
//!
//! So the daemon owns the agent's references and keeps, per node:
//! - `agent`: references taken at the agent and not yet given back;
//! - `kernel`: references handed to the kernel and not yet forgotten;
//! - `listings`: cached listings that hold the node (each holds it once).
//!
//! **Invariant:** a node is in the ledger exactly while `kernel > 0 || listings > 0`, and then
//! `agent >= 1`, so the agent keeps the node open. When both fall to zero, the node leaves the
//! ledger and all of its `agent` references go back in one `Forget` (what [`Ledger`] methods
//! return). A reference the agent gave that nobody ended up holding (an entry that did not fit
//! the kernel's buffer and is cached nowhere) is given back the same way.
//!
//! Counts are additive, so the agent and the ledger agree whatever order a `Forget` and a new
//! answer naming the same node cross in: a node forgotten here and named again by an answer
//! already in flight simply starts a new row.

use std::collections::HashMap;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Holds {
    agent: u64,
    kernel: u64,
    listings: u64,
}

/// Nodes to give back to the agent: `(node, count)` for one `Forget` each.
pub type Release = Option<(u64, u64)>;

/// The references the daemon holds at the agent, and who needs them.
#[derive(Debug, Default)]
pub struct Ledger {
    nodes: HashMap<u64, Holds>,
}

impl Ledger {
    /// An answer named `node` and the kernel took it (lookup, mkdir, create, symlink, a
    /// `readdirplus` entry fetched for one call).
    pub fn took_for_kernel(&mut self, node: u64) {
        let holds = self.nodes.entry(node).or_default();
        holds.agent += 1;
        holds.kernel += 1;
    }

    /// An answer named `node` and a cached listing keeps it.
    pub fn took_for_listing(&mut self, node: u64) {
        let holds = self.nodes.entry(node).or_default();
        holds.agent += 1;
        holds.listings += 1;
    }

    /// A cached listing handed `node` to the kernel once more: no new agent reference, the
    /// listing's keeps the node open until the kernel forgets it.
    pub fn kernel_saw(&mut self, node: u64) {
        let holds = self.nodes.get_mut(&node);
        debug_assert!(holds.is_some(), "a cached entry is held by its listing");
        if let Some(holds) = holds {
            holds.kernel += 1;
        }
    }

    /// The kernel gave back `count` of its references.
    pub fn kernel_forgot(&mut self, node: u64, count: u64) -> Release {
        let holds = self.nodes.get_mut(&node)?;
        holds.kernel = holds.kernel.saturating_sub(count);
        self.settle(node)
    }

    /// A cached listing that held `node` went (expired, replaced or dropped).
    pub fn listing_released(&mut self, node: u64) -> Release {
        let holds = self.nodes.get_mut(&node)?;
        holds.listings = holds.listings.saturating_sub(1);
        self.settle(node)
    }

    /// Removes `node` when nobody holds it, returning what the agent is owed.
    fn settle(&mut self, node: u64) -> Release {
        let holds = self.nodes.get(&node)?;
        if holds.kernel > 0 || holds.listings > 0 {
            return None;
        }
        let holds = self.nodes.remove(&node).expect("just found");
        (holds.agent > 0).then_some((node, holds.agent))
    }

    /// References the daemon holds at the agent, in all.
    pub fn agent_refs(&self) -> u64 {
        self.nodes.values().map(|holds| holds.agent).sum()
    }

    /// Nodes held.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_is_given_back_when_the_kernel_forgets_it() {
        let mut ledger = Ledger::default();
        ledger.took_for_kernel(7);
        ledger.took_for_kernel(7);
        assert_eq!(
            ledger.kernel_forgot(7, 1),
            None,
            "one kernel reference left"
        );
        assert_eq!(ledger.kernel_forgot(7, 1), Some((7, 2)));
        assert!(ledger.is_empty());
    }

    #[test]
    fn entries_served_many_times_from_a_listing_cost_the_agent_one_reference() {
        let mut ledger = Ledger::default();
        ledger.took_for_listing(5);
        for _ in 0..3 {
            ledger.kernel_saw(5);
        }
        assert_eq!(ledger.agent_refs(), 1);
        // The listing expires while the kernel still uses the node: it stays open.
        assert_eq!(ledger.listing_released(5), None);
        assert_eq!(ledger.kernel_forgot(5, 2), None);
        assert_eq!(ledger.kernel_forgot(5, 1), Some((5, 1)));
        assert!(ledger.is_empty());
    }

    #[test]
    fn the_kernel_forgetting_first_leaves_the_listing_holding_the_node() {
        let mut ledger = Ledger::default();
        ledger.took_for_listing(5);
        ledger.kernel_saw(5);
        assert_eq!(
            ledger.kernel_forgot(5, 1),
            None,
            "the listing still holds it"
        );
        assert_eq!(ledger.listing_released(5), Some((5, 1)));
    }

    #[test]
    fn cached_entries_that_did_not_fit_the_kernel_buffer_go_with_their_listing() {
        let mut ledger = Ledger::default();
        // A listing of three; the kernel's buffer took only the first.
        for node in [2, 3, 4] {
            ledger.took_for_listing(node);
        }
        ledger.kernel_saw(2);
        assert_eq!(ledger.listing_released(3), Some((3, 1)));
        assert_eq!(ledger.listing_released(4), Some((4, 1)));
        assert_eq!(ledger.listing_released(2), None, "the kernel holds it");
        assert_eq!(ledger.len(), 1);
    }

    #[test]
    fn a_node_in_two_listings_and_the_kernel_is_given_back_once_all_are_done() {
        let mut ledger = Ledger::default();
        // A hard link listed in two directories, also looked up.
        ledger.took_for_listing(9);
        ledger.took_for_listing(9);
        ledger.took_for_kernel(9);
        ledger.kernel_saw(9);
        assert_eq!(ledger.listing_released(9), None);
        assert_eq!(ledger.kernel_forgot(9, 2), None);
        assert_eq!(ledger.listing_released(9), Some((9, 3)));
    }

    #[test]
    fn forgetting_a_node_never_held_asks_nothing_of_the_agent() {
        let mut ledger = Ledger::default();
        assert_eq!(ledger.kernel_forgot(1, 5), None);
        assert_eq!(ledger.listing_released(1), None);
        // Forgetting more than was handed out does not underflow.
        ledger.took_for_kernel(3);
        assert_eq!(ledger.kernel_forgot(3, 10), Some((3, 1)));
    }
}
