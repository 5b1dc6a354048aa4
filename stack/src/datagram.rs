//! The flow table both datagram protocols keep (UDP in `udp.rs`, ICMP echo in `icmp.rs`).
//!
//! A datagram flow has no handshake and no end of its own: it is made by the first datagram
//! of its key, lives while datagrams pass either way, and is closed after the session's idle
//! time without any. This table holds what that takes for both protocols alike — flows by key
//! in a [`Slab`], each with its waker, its idle timer and when it was last active — and
//! leaves to the protocol what a flow sends, receives and refuses (its `upstream`).

use std::collections::HashMap;
use std::hash::Hash;

use smoltcp::time::{Duration, Instant};

use super::ctx::Ctx;
use super::flow::{fired, idle_check, FlowId, FlowWaker, IdleCheck, Proto, Slab, Token};

/// Replies a flow reads in one service before the other flows get a turn.
pub(crate) const READ_BUDGET: usize = 256;

/// One datagram flow: the table's part, and the protocol's `upstream`.
pub(crate) struct DatagramFlow<K, U> {
    pub key: K,
    pub waker: FlowWaker,
    timer_at: Option<Instant>,
    /// When a datagram last passed (either way); the idle timer checks it.
    pub last_active: Instant,
    pub upstream: U,
}

impl<K, U> DatagramFlow<K, U> {
    /// Whether the flow being serviced may read one more reply, `left` reads before the end
    /// of its turn ([`READ_BUDGET`]): not when its turn is over (it is queued again, to come
    /// back after the other flows), nor when the session's queue is full (it waits in
    /// `ctx.blocked` until the queue drains).
    pub fn may_read(&self, ctx: &mut Ctx<'_>, token: Token, left: usize) -> bool {
        if left == 0 {
            self.waker.wake();
            return false;
        }
        if !ctx.device.tx.has_room() {
            ctx.blocked.push(token);
            return false;
        }
        true
    }
}

/// The flows of one datagram protocol.
pub(crate) struct DatagramFlows<K, U> {
    proto: Proto,
    flows: Slab<DatagramFlow<K, U>>,
    by_key: HashMap<K, FlowId>,
    idle: Duration,
}

impl<K: Copy + Eq + Hash, U> DatagramFlows<K, U> {
    /// `idle`: how long a flow may pass no datagram before it is closed.
    pub fn new(proto: Proto, idle: Duration) -> Self {
        Self {
            proto,
            flows: Slab::default(),
            by_key: HashMap::new(),
            idle,
        }
    }

    /// The flow of `key`, if there is one.
    pub fn find(&self, key: &K) -> Option<FlowId> {
        self.by_key.get(key).copied()
    }

    /// How many flows are open (for the flow cap).
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut DatagramFlow<K, U>> {
        self.flows.get_mut(id)
    }

    /// Adds the flow of `key`, arms its idle timer and wakes it, so that its first service
    /// registers for replies.
    pub fn insert(&mut self, ctx: &mut Ctx<'_>, key: K, upstream: U) -> FlowId {
        let proto = self.proto;
        let id = self.flows.insert_with(|id| DatagramFlow {
            key,
            waker: FlowWaker::new(Token { proto, id }, ctx.ready),
            timer_at: None,
            last_active: ctx.now,
            upstream,
        });
        self.by_key.insert(key, id);
        let flow = self.flows.get_mut(id).expect("just inserted");
        ctx.timers
            .arm(&mut flow.timer_at, ctx.now + self.idle, Token { proto, id });
        flow.waker.wake();
        id
    }

    /// The flow's idle timer fired at `at`: returns the flow, removed, if it passed nothing
    /// for the idle time, or arms the timer again for when it could have.
    pub fn on_timer(
        &mut self,
        ctx: &mut Ctx<'_>,
        id: FlowId,
        at: Instant,
    ) -> Option<DatagramFlow<K, U>> {
        let flow = self.flows.get_mut(id)?;
        if !fired(&mut flow.timer_at, at) {
            return None;
        }
        match idle_check(flow.last_active, ctx.now, self.idle) {
            IdleCheck::Recheck(deadline) => {
                let token = Token {
                    proto: self.proto,
                    id,
                };
                ctx.timers.arm(&mut flow.timer_at, deadline, token);
                None
            }
            IdleCheck::Expire => {
                let flow = self.flows.remove(id).expect("present");
                self.by_key.remove(&flow.key);
                Some(flow)
            }
        }
    }
}
