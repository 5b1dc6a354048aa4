//! [`Ctx`]: what the protocol tables (`tcp`, `udp`, `icmp`) may touch while handling one
//! event. The event loop (`engine`) builds one per event and hands it down; it sits below the
//! tables so they import it, not the loop.

use std::sync::Arc;

use smoltcp::iface::Interface;
use smoltcp::time::Instant;

use super::device::LinkDevice;
use super::flow::{ReadyQueue, Timers, Token};
use super::stats::Stats;

/// What the protocol tables may touch while handling one event.
pub(crate) struct Ctx<'a> {
    pub now: Instant,
    pub iface: &'a mut Interface,
    pub device: &'a mut LinkDevice,
    pub timers: &'a mut Timers,
    pub ready: &'a Arc<ReadyQueue>,
    /// Flows parked until the outbound queue drains.
    pub blocked: &'a mut Vec<Token>,
    pub stats: &'a Stats,
    /// The stack's IP identification counter ([`Ctx::next_ident`]).
    pub(super) ident: &'a mut u32,
}

impl Ctx<'_> {
    /// A fresh IP identification for packets that may be fragmented.
    pub fn next_ident(&mut self) -> u32 {
        *self.ident = self.ident.wrapping_add(1);
        *self.ident
    }
}
