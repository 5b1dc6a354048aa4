//! The stack's limits: how many flows a session may hold and how many connects may be in
//! progress, in all and towards one host, and how long a connect may take.
//!
//! A session is one client, but not a trusted one: a program in it may open connections
//! faster than the pod's network answers (a scanner, a retry loop, a SYN flood). Each new TCP
//! flow costs a real `connect()` from the target's namespace, which the kernel keeps for up to
//! two minutes when the destination never answers; without bounds a flood towards one silent
//! host fills the pod's socket tables and starves every other connection. So:
//!
//! * at most [`Limits::max_flows`] flows per protocol (TCP, UDP, ICMP echo);
//! * at most [`Limits::max_half_open`] TCP connects in progress, and at most
//!   [`Limits::max_half_open_per_host`] towards one destination address, so a flood towards
//!   one host leaves room for connects to every other;
//! * a connect that has not completed after [`Limits::connect_timeout`] is given up and the
//!   session's SYN answered with RST;
//! * the bytes all TCP flows hold in their buffers are counted against one
//!   [`Limits::buffer_budget`] (see `budget`): beyond it flows wait instead of buffering more.
//!
//! A SYN beyond a cap is answered with RST (the session's `connect()` fails with
//! ECONNREFUSED at once), a UDP datagram with ICMP administratively prohibited, an echo
//! request is dropped; each is counted, and the first refusal of each kind is logged. The
//! decisions here are free of I/O; the flow tables apply them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

/// The caps; see the module comment. The agent's options set them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_flows: usize,
    pub max_half_open: usize,
    pub max_half_open_per_host: usize,
    pub connect_timeout: Duration,
    /// Bytes all TCP flows together may hold in their buffers (see `budget`).
    pub buffer_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_flows: 16_384,
            max_half_open: 4_096,
            max_half_open_per_host: 1_024,
            connect_timeout: Duration::from_secs(10),
            buffer_budget: 256 << 20,
        }
    }
}

/// What one TCP flow costs its process's memory cgroup, for [`Limits::within_memory`]:
/// ~4.1 KiB of the kernel's objects for the upstream socket (socket, inode, file, dentry,
/// epoll entry: charged to the cgroup as kernel memory, and no fewer for the same
/// connection made by a program in the pod) and ~1.6 KiB of the agent's own (the smoltcp
/// socket in its set, the flow's slot and waker, the runtime's registration). Measured with
/// 2,000 and 10,000 idle flows on cgroup v1 (tests/tests/e2e/limits.rs).
pub const FLOW_MEMORY: u64 = 6 << 10;
/// What the agent costs before its first flow, for [`Limits::within_memory`]: its code and
/// libraries as they are paged in (~8 MiB), the runtime, the file server, the heap the
/// allocator keeps (a sixteenth of the limit, `heap::tune_for_packets_within`) and slack.
pub const BASE_MEMORY: u64 = 12 << 20;

impl Limits {
    /// The defaults, lowered where a memory limit of `bytes` (the agent's cgroup's) could
    /// not hold them, so the agent refuses new flows (RST, counted, logged once) rather
    /// than being OOM-killed with every flow of the session:
    ///
    /// * the buffer budget: an eighth of the limit;
    /// * flows: what is left after [`BASE_MEMORY`] and the budget, at [`FLOW_MEMORY`]
    ///   each (a connect in progress is a flow too: its socket costs the same);
    /// * connects in progress: a quarter of the flows, a quarter of that towards one host,
    ///   so a flood towards a silent host leaves the others room.
    ///
    /// With the Kubernetes agent's default limit (1 GiB) the caps are the defaults and the
    /// budget half of its default; without a limit (a local agent) all are the defaults.
    pub fn within_memory(bytes: u64) -> Self {
        let defaults = Self::default();
        let buffer_budget = defaults
            .buffer_budget
            .min(usize::try_from(bytes / 8).unwrap_or(usize::MAX));
        let for_flows = bytes.saturating_sub(BASE_MEMORY + buffer_budget as u64);
        let max_flows = defaults
            .max_flows
            .min(usize::try_from(for_flows / FLOW_MEMORY).unwrap_or(usize::MAX))
            .max(1);
        let max_half_open = defaults.max_half_open.min(max_flows / 4).max(1);
        Self {
            max_flows,
            max_half_open,
            max_half_open_per_host: defaults
                .max_half_open_per_host
                .min(max_half_open / 4)
                .max(1),
            connect_timeout: defaults.connect_timeout,
            buffer_budget,
        }
    }
}

/// Which cap refused a new flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Flows,
    HalfOpen,
    HalfOpenToHost,
}

impl Refusal {
    fn index(self) -> usize {
        self as usize
    }

    pub fn describe(self) -> &'static str {
        match self {
            Refusal::Flows => "the session's flow cap",
            Refusal::HalfOpen => "the session's cap on connects in progress",
            Refusal::HalfOpenToHost => "the cap on connects in progress towards one host",
        }
    }
}

/// Whether a new flow may join a table that holds `flows`.
pub(crate) fn admit_flow(limits: &Limits, flows: usize) -> Result<(), Refusal> {
    if flows >= limits.max_flows {
        Err(Refusal::Flows)
    } else {
        Ok(())
    }
}

/// TCP connects in progress, in all and by destination address.
#[derive(Debug, Default)]
pub(crate) struct HalfOpen {
    total: usize,
    by_host: HashMap<IpAddr, usize>,
}

impl HalfOpen {
    /// Whether a new connect to `host` may start, with `flows` TCP flows in the table.
    pub fn admit(&self, limits: &Limits, flows: usize, host: IpAddr) -> Result<(), Refusal> {
        admit_flow(limits, flows)?;
        if self.total >= limits.max_half_open {
            return Err(Refusal::HalfOpen);
        }
        if self.to(host) >= limits.max_half_open_per_host {
            return Err(Refusal::HalfOpenToHost);
        }
        Ok(())
    }

    pub fn started(&mut self, host: IpAddr) {
        self.total += 1;
        *self.by_host.entry(host).or_default() += 1;
    }

    /// A connect to `host` completed, failed or was given up.
    pub fn ended(&mut self, host: IpAddr) {
        if let Some(count) = self.by_host.get_mut(&host) {
            *count -= 1;
            self.total -= 1;
            if *count == 0 {
                self.by_host.remove(&host);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }

    pub fn to(&self, host: IpAddr) -> usize {
        self.by_host.get(&host).copied().unwrap_or(0)
    }
}

/// Which refusals have been logged: each kind once per table.
#[derive(Debug, Default)]
pub(crate) struct LoggedOnce([bool; 3]);

impl LoggedOnce {
    /// Whether `refusal` is the first of its kind (and from now on, not).
    pub fn first(&mut self, refusal: Refusal) -> bool {
        !std::mem::replace(&mut self.0[refusal.index()], true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_flows: 10,
            max_half_open: 4,
            max_half_open_per_host: 2,
            connect_timeout: Duration::from_secs(1),
            buffer_budget: 1 << 20,
        }
    }

    #[test]
    fn a_flood_to_one_host_leaves_room_for_others() {
        let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
            "10.0.0.1".parse().unwrap(),
            "10.0.0.2".parse().unwrap(),
            "10.0.0.3".parse().unwrap(),
        );
        let mut half = HalfOpen::default();
        for _ in 0..2 {
            assert_eq!(half.admit(&limits(), 0, a), Ok(()));
            half.started(a);
        }
        assert_eq!(half.admit(&limits(), 2, a), Err(Refusal::HalfOpenToHost));
        assert_eq!(half.admit(&limits(), 2, b), Ok(()));
        half.started(b);
        half.started(b);
        assert_eq!(half.total(), 4);
        assert_eq!(half.admit(&limits(), 4, c), Err(Refusal::HalfOpen));
        half.ended(a);
        assert_eq!(half.to(a), 1);
        assert_eq!(half.admit(&limits(), 4, c), Ok(()));
        assert_eq!(half.admit(&limits(), 10, c), Err(Refusal::Flows));
    }

    #[test]
    fn ends_of_unknown_connects_change_nothing() {
        let mut half = HalfOpen::default();
        half.ended("10.0.0.1".parse().unwrap());
        assert_eq!(half.total(), 0);
    }

    #[test]
    fn flow_cap() {
        assert_eq!(admit_flow(&limits(), 9), Ok(()));
        assert_eq!(admit_flow(&limits(), 10), Err(Refusal::Flows));
    }

    #[test]
    fn each_refusal_is_logged_once() {
        let mut logged = LoggedOnce::default();
        assert!(logged.first(Refusal::HalfOpen));
        assert!(!logged.first(Refusal::HalfOpen));
        assert!(logged.first(Refusal::Flows));
    }

    #[test]
    fn a_memory_limit_lowers_the_caps_to_what_it_holds() {
        let defaults = Limits::default();
        let gib = Limits::within_memory(1 << 30);
        assert_eq!(
            (gib.max_flows, gib.max_half_open, gib.max_half_open_per_host),
            (
                defaults.max_flows,
                defaults.max_half_open,
                defaults.max_half_open_per_host
            ),
            "1 GiB (the Kubernetes agent's default limit) holds the default caps"
        );
        assert_eq!(gib.buffer_budget, 128 << 20, "an eighth of it for buffers");
        assert_eq!(Limits::within_memory(u64::MAX), defaults, "no limit");
        let small = Limits::within_memory(64 << 20);
        assert_eq!(small.buffer_budget, 8 << 20);
        assert_eq!(
            small.max_flows,
            ((64 - 12 - 8) << 10) / 6,
            "44 MiB at 6 KiB a flow"
        );
        assert_eq!(small.max_half_open, small.max_flows / 4);
        assert_eq!(small.max_half_open_per_host, small.max_flows / 16);
        assert_eq!(small.connect_timeout, defaults.connect_timeout);
        let tiny = Limits::within_memory(4096);
        assert!(tiny.max_flows >= 1 && tiny.max_half_open >= 1 && tiny.max_half_open_per_host >= 1);
    }
}
