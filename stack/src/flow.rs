//! Flow bookkeeping shared by the TCP, UDP and ICMP tables: identities, storage, deadlines
//! and readiness.
//!
//! * [`Slab`] stores one protocol's flows. A [`FlowId`] is an index plus a generation, so an
//!   id that outlives its flow (a late wake-up, a stale deadline) finds nothing instead of
//!   finding the flow that reused the slot.
//! * [`Timers`] is a min-heap of `(deadline, token)`. Entries are never removed early: each
//!   flow remembers the one deadline it currently wants (`timer_at`), [`Timers::arm`] pushes
//!   only when a deadline moves earlier, and a popped entry that no longer matches its flow's
//!   `timer_at` is stale and ignored. That keeps re-arming (which TCP does after every
//!   packet) at O(1) in the common case, and the heap small.
//! * [`idle_check`] decides what an expired idle deadline of a UDP or ICMP flow means.
//! * [`ReadyQueue`] and [`FlowWaker`] turn readiness into a list of flows to service. Each
//!   flow owns one `Waker`; tokio's reactor wakes it when the flow's upstream socket becomes
//!   readable or writable, and the stack wakes it itself when smoltcp state changed. A wake
//!   appends the flow's token to the queue once (a flag absorbs repeats until the stack has
//!   taken it) and wakes the stack's task, unless that task is running and will look at the
//!   queue anyway. The stack then services exactly the flows that have something to do, so
//!   10,000 idle flows cost nothing per packet.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

use futures_util::task::AtomicWaker;
use smoltcp::time::{Duration, Instant};

/// Which table a flow lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Proto {
    Tcp,
    Udp,
    Icmp,
}

/// A flow's slot in its table, with the generation that makes stale ids harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FlowId {
    index: u32,
    generation: u32,
}

/// A flow anywhere in the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Token {
    pub proto: Proto,
    pub id: FlowId,
}

#[derive(Debug)]
struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Generational storage of one protocol's flows.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Inserts the value `make` builds from its future id.
    pub fn insert_with(&mut self, make: impl FnOnce(FlowId) -> T) -> FlowId {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                let index = u32::try_from(self.slots.len()).expect("fewer than 2^32 flows");
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                index
            }
        };
        let slot = &mut self.slots[index as usize];
        let id = FlowId {
            index,
            generation: slot.generation,
        };
        slot.value = Some(make(id));
        self.len += 1;
        id
    }

    pub fn get(&self, id: FlowId) -> Option<&T> {
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_ref()
    }

    pub fn get_mut(&mut self, id: FlowId) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    pub fn remove(&mut self, id: FlowId) -> Option<T> {
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        Some(value)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }
}

/// Deadlines of all flows, with lazy cancellation (see the module comment).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    heap: BinaryHeap<Reverse<(Instant, Token)>>,
}

impl Timers {
    /// Makes sure `token` fires no later than `at`. `timer_at` is the flow's record of the
    /// deadline it is armed for.
    pub fn arm(&mut self, timer_at: &mut Option<Instant>, at: Instant, token: Token) {
        if timer_at.is_none_or(|armed| at < armed) {
            *timer_at = Some(at);
            self.heap.push(Reverse((at, token)));
        }
    }

    /// Pops the next entry due at `now`, stale or not; the owner checks it with [`fired`].
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Token)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// The earliest entry, stale or not (waking early is harmless).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

/// Whether a popped deadline `at` is the one the flow is armed for; if so the flow is
/// disarmed and must re-arm as it sees fit.
pub(crate) fn fired(timer_at: &mut Option<Instant>, at: Instant) -> bool {
    if *timer_at == Some(at) {
        *timer_at = None;
        true
    } else {
        false
    }
}

/// The list of flows that have something to do, and the stack task's waker.
#[derive(Debug, Default)]
pub(crate) struct ReadyQueue {
    list: Mutex<Vec<Token>>,
    waker: AtomicWaker,
    /// The stack's task is running and will drain `list` before it sleeps.
    active: AtomicBool,
}

impl ReadyQueue {
    fn push(&self, token: Token) {
        self.list.lock().expect("ready list poisoned").push(token);
        if !self.active.load(Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    /// Registers the stack task and marks it running.
    pub fn enter(&self, waker: &Waker) {
        self.waker.register(waker);
        self.active.store(true, Ordering::SeqCst);
    }

    /// Marks the stack task about to sleep. Returns false (and stays running) if work
    /// arrived meanwhile.
    pub fn try_leave(&self) -> bool {
        self.active.store(false, Ordering::SeqCst);
        if self.list.lock().expect("ready list poisoned").is_empty() {
            true
        } else {
            self.active.store(true, Ordering::SeqCst);
            false
        }
    }

    /// Moves every queued token into `out` (which should be empty; its allocation is reused).
    pub fn take_into(&self, out: &mut Vec<Token>) {
        std::mem::swap(&mut *self.list.lock().expect("ready list poisoned"), out);
    }
}

struct FlowWake {
    token: Token,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for FlowWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.push(self.token);
        }
    }
}

/// A flow's waker: registered with its sockets, and called by the stack to mark it ready.
pub(crate) struct FlowWaker {
    inner: Arc<FlowWake>,
    waker: Waker,
}

impl FlowWaker {
    pub fn new(token: Token, ready: &Arc<ReadyQueue>) -> Self {
        let inner = Arc::new(FlowWake {
            token,
            queued: AtomicBool::new(false),
            ready: ready.clone(),
        });
        let waker = Waker::from(inner.clone());
        Self { inner, waker }
    }

    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// Queues the flow for service (once, however often it is called before service).
    pub fn wake(&self) {
        self.waker.wake_by_ref();
    }

    /// Called when the stack takes the flow off the queue: wakes from now on queue it again.
    pub fn clear(&self) {
        self.inner.queued.store(false, Ordering::Release);
    }
}

/// What an expired idle deadline means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleCheck {
    /// Idle for the whole timeout: close the flow.
    Expire,
    /// Active since the deadline was armed: check again then.
    Recheck(Instant),
}

pub(crate) fn idle_check(last_active: Instant, now: Instant, idle: Duration) -> IdleCheck {
    let deadline = last_active + idle;
    if now >= deadline {
        IdleCheck::Expire
    } else {
        IdleCheck::Recheck(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: FlowId) -> Token {
        Token {
            proto: Proto::Udp,
            id,
        }
    }

    #[test]
    fn slab_ids_of_removed_flows_find_nothing() {
        let mut slab = Slab::default();
        let a = slab.insert_with(|_| "a");
        assert_eq!(slab.get(a), Some(&"a"));
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert_with(|_| "b");
        assert_ne!(a, b, "the reused slot has a new generation");
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn timers_fire_only_the_deadline_a_flow_is_armed_for() {
        let mut slab = Slab::default();
        let id = slab.insert_with(|_| ());
        let tok = token(id);
        let mut timers = Timers::default();
        let mut armed = None;
        let t = Instant::from_millis;

        timers.arm(&mut armed, t(100), tok);
        // Later deadlines do not push: the earlier entry fires first and the flow re-arms.
        timers.arm(&mut armed, t(200), tok);
        assert_eq!(timers.len(), 1);
        // Earlier ones do, and make the old entry stale.
        timers.arm(&mut armed, t(50), tok);
        assert_eq!(timers.len(), 2);
        assert_eq!(timers.next_deadline(), Some(t(50)));

        assert_eq!(timers.pop_due(t(49)), None);
        let (at, got) = timers.pop_due(t(60)).unwrap();
        assert_eq!(got, tok);
        assert!(fired(&mut armed, at));
        assert_eq!(armed, None);
        timers.arm(&mut armed, t(300), tok);

        let (at, _) = timers.pop_due(t(150)).unwrap();
        assert_eq!(at, t(100));
        assert!(!fired(&mut armed, at), "stale entry is ignored");
        assert_eq!(armed, Some(t(300)));
        assert_eq!(timers.pop_due(t(299)), None);
        let (at, _) = timers.pop_due(t(300)).unwrap();
        assert!(fired(&mut armed, at));
    }

    #[test]
    fn flow_waker_queues_a_flow_once_until_cleared() {
        let ready = Arc::new(ReadyQueue::default());
        let mut slab = Slab::default();
        let id = slab.insert_with(|_| ());
        let w = FlowWaker::new(token(id), &ready);
        w.wake();
        w.waker().wake_by_ref();
        let owned = w.waker().clone();
        owned.wake();
        let mut out = Vec::new();
        ready.take_into(&mut out);
        assert_eq!(out, vec![token(id)]);
        out.clear();
        w.wake();
        ready.take_into(&mut out);
        assert!(out.is_empty(), "not cleared yet");
        w.clear();
        w.wake();
        ready.take_into(&mut out);
        assert_eq!(out, vec![token(id)]);
    }

    #[test]
    fn ready_queue_refuses_to_sleep_with_work_pending() {
        let ready = Arc::new(ReadyQueue::default());
        ready.enter(Waker::noop());
        let w = FlowWaker::new(token(Slab::default().insert_with(|_| ())), &ready);
        w.wake();
        assert!(!ready.try_leave());
        let mut out = Vec::new();
        ready.take_into(&mut out);
        assert!(ready.try_leave());
    }

    #[test]
    fn idle_flows_expire_and_active_ones_are_rechecked() {
        let idle = Duration::from_secs(60);
        let t = Instant::from_secs;
        assert_eq!(idle_check(t(0), t(60), idle), IdleCheck::Expire);
        assert_eq!(idle_check(t(30), t(60), idle), IdleCheck::Recheck(t(90)));
    }
}
