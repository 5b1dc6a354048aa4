//! The mirrored connections by 4-tuple, each with its [`Reassembler`].
//!
//! A connection enters the table with its SYN (segments of unknown connections without a SYN
//! are ignored: they began before mirroring) and leaves it when its stream finishes, is reset,
//! is dropped, or stays idle longer than the idle timeout (its FIN or RST was never seen). The
//! table holds at most `max_flows` connections; a SYN beyond that is not mirrored, so a flood
//! of connections costs the agent bounded memory. Time is passed in, never read, so the tests
//! drive expiry without sleeping.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::packet::FlowKey;
use super::reassembly::{Event, Reassembler, Segment};

/// Default idle time after which a connection is forgotten.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

/// What one segment did, for the caller that replays streams into the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// A new connection: open its replay (any bytes in `out` are its first).
    Opened,
    /// `out` holds the connection's next bytes (possibly none).
    Data,
    /// The stream ended cleanly (after any bytes in `out`): close the replay's write side.
    Finished,
    /// The connection ended abruptly or cannot be mirrored any more: abort its replay.
    Aborted,
    /// Not a mirrored connection.
    Ignored,
}

struct Flow {
    reassembler: Reassembler,
    last_seen: Instant,
}

/// The mirrored connections.
pub struct FlowTable {
    flows: HashMap<FlowKey, Flow>,
    idle: Duration,
    max_flows: usize,
    cap: usize,
}

impl FlowTable {
    /// `cap` bounds each connection's out-of-order bytes.
    pub fn new(idle: Duration, max_flows: usize, cap: usize) -> Self {
        Self {
            flows: HashMap::new(),
            idle,
            max_flows,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Takes one client→server segment; the stream's next bytes are appended to `out`.
    pub fn segment(
        &mut self,
        now: Instant,
        key: FlowKey,
        segment: &Segment,
        out: &mut Vec<u8>,
    ) -> FlowEvent {
        let room = self.flows.len() < self.max_flows;
        let flow = match self.flows.entry(key) {
            Entry::Occupied(flow) => flow.into_mut(),
            Entry::Vacant(vacant) if segment.syn && !segment.rst && room => vacant.insert(Flow {
                reassembler: Reassembler::new(self.cap),
                last_seen: now,
            }),
            Entry::Vacant(_) => return FlowEvent::Ignored,
        };
        flow.last_seen = now;
        let event = flow.reassembler.segment(segment, out);
        match event {
            Event::Opened => FlowEvent::Opened,
            Event::Progress => FlowEvent::Data,
            Event::Ignored => FlowEvent::Ignored,
            Event::Finished => {
                self.flows.remove(&key);
                FlowEvent::Finished
            }
            Event::Reset | Event::Dropped(_) => {
                self.flows.remove(&key);
                FlowEvent::Aborted
            }
        }
    }

    /// Forgets the connections idle since before `now - idle`; returns them (their replays
    /// should be aborted).
    pub fn expire(&mut self, now: Instant) -> Vec<FlowKey> {
        let idle = self.idle;
        let mut expired = Vec::new();
        self.flows.retain(|key, flow| {
            let keep = now.saturating_duration_since(flow.last_seen) < idle;
            if !keep {
                expired.push(*key);
            }
            keep
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::{build_ipv4, flags, parse};
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey {
            client: format!("10.0.0.2:{port}").parse().unwrap(),
            server: "10.0.0.1:8080".parse().unwrap(),
        }
    }

    fn feed(table: &mut FlowTable, now: Instant, packet: &[u8], out: &mut Vec<u8>) -> FlowEvent {
        let (key, segment) = parse(packet).unwrap();
        table.segment(now, key, &segment, out)
    }

    #[test]
    fn interleaved_connections_are_rebuilt_apart() {
        let now = Instant::now();
        let mut table = FlowTable::new(DEFAULT_IDLE, 16, 1 << 16);
        let (a, b) = (key(1000), key(1001));
        let (mut out_a, mut out_b) = (Vec::new(), Vec::new());
        assert_eq!(
            feed(
                &mut table,
                now,
                &build_ipv4(&a, 100, flags::SYN, b""),
                &mut out_a
            ),
            FlowEvent::Opened
        );
        assert_eq!(
            feed(
                &mut table,
                now,
                &build_ipv4(&b, 900, flags::SYN, b""),
                &mut out_b
            ),
            FlowEvent::Opened
        );
        feed(
            &mut table,
            now,
            &build_ipv4(&b, 904, flags::ACK, b"/b"),
            &mut out_b,
        );
        feed(
            &mut table,
            now,
            &build_ipv4(&a, 101, flags::ACK, b"GET /a"),
            &mut out_a,
        );
        feed(
            &mut table,
            now,
            &build_ipv4(&b, 901, flags::ACK, b"GET"),
            &mut out_b,
        );
        assert_eq!(
            feed(
                &mut table,
                now,
                &build_ipv4(&a, 107, flags::ACK | flags::FIN, b""),
                &mut out_a
            ),
            FlowEvent::Finished
        );
        assert_eq!(
            (out_a.as_slice(), out_b.as_slice()),
            (&b"GET /a"[..], &b"GET/b"[..])
        );
        assert_eq!(table.len(), 1);
        assert_eq!(
            feed(
                &mut table,
                now,
                &build_ipv4(&b, 906, flags::RST, b""),
                &mut out_b
            ),
            FlowEvent::Aborted
        );
        assert!(table.is_empty());
    }

    #[test]
    fn unknown_connections_without_syn_are_ignored() {
        let mut table = FlowTable::new(DEFAULT_IDLE, 16, 1 << 16);
        let mut out = Vec::new();
        let now = Instant::now();
        assert_eq!(
            feed(
                &mut table,
                now,
                &build_ipv4(&key(1), 5, flags::ACK, b"x"),
                &mut out
            ),
            FlowEvent::Ignored
        );
        assert!(table.is_empty());
    }

    #[test]
    fn idle_connections_expire_and_the_table_is_bounded() {
        let start = Instant::now();
        let mut table = FlowTable::new(Duration::from_secs(10), 2, 1 << 16);
        let mut out = Vec::new();
        for port in 1..=3 {
            feed(
                &mut table,
                start,
                &build_ipv4(&key(port), 0, flags::SYN, b""),
                &mut out,
            );
        }
        assert_eq!(table.len(), 2, "the third SYN is over the limit");
        feed(
            &mut table,
            start + Duration::from_secs(8),
            &build_ipv4(&key(1), 1, flags::ACK, b"a"),
            &mut out,
        );
        assert_eq!(table.expire(start + Duration::from_secs(12)), vec![key(2)]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.expire(start + Duration::from_secs(19)), vec![key(1)]);
    }
}
