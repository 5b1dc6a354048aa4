//! One TCP connection's client→server byte stream, rebuilt from sniffed segments.
//!
//! A sniffer sees what the wire carried, not what the target's socket accepted: segments
//! arrive out of order, twice, overlapping, or never (the capture dropped them). The
//! reassembler turns them into the bytes the server read, in order, exactly once:
//!
//! ```text
//!   Listen ── SYN (ISN) ──▶ Open { next = ISN+1 } ── FIN reached in order ──▶ Finished
//!                             │  data at next: delivered, then any buffered data it joins
//!                             │  data beyond next: buffered (at most `cap` bytes)
//!                             │  data before next: the new part only (retransmissions)
//!                             ├── RST ───────────────────────────────────────▶ Reset
//!                             └── buffered data over the cap ────────────────▶ Dropped
//! ```
//!
//! Sequence numbers are compared by their signed distance to `next` (RFC 793's modular
//! arithmetic), and stream offsets are kept in 64 bits, so a stream may pass 4 GiB and wrap
//! its sequence space. A connection seen without its SYN (it began before the capture) is not
//! mirrored: its start is unknown, and a replay from its middle would not parse. A gap that
//! never fills (the capture lost a segment that the target got) shows up as buffered data
//! growing past the cap: the connection is then dropped from mirroring rather than replayed
//! with a hole. The session's copy ends at the FIN (once every byte before it arrived) or at
//! an RST.

use std::collections::BTreeMap;

/// The part of a TCP segment the reassembler needs.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

/// Default cap of out-of-order bytes held per connection.
pub const DEFAULT_CAP: usize = 1 << 20;

/// What a segment did to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The SYN: the connection starts.
    Opened,
    /// Bytes were appended to the output (possibly none: a duplicate or buffered segment).
    Progress,
    /// Every byte up to the client's FIN was delivered: the stream ends.
    Finished,
    /// The connection was reset.
    Reset,
    /// Not mirrored any more (see [`DropReason`]).
    Dropped(DropReason),
    /// A segment for a connection that is not (or no longer) being rebuilt.
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Out-of-order data beyond the cap: a segment was lost by the capture.
    Gap,
    /// Data before any SYN: the connection began before mirroring did.
    MidStream,
}

#[derive(Debug)]
enum State {
    Listen,
    Open,
    Closed,
}

/// Rebuilds one direction of one connection.
#[derive(Debug)]
pub struct Reassembler {
    state: State,
    /// Sequence number of the next byte to deliver.
    next: u32,
    /// Bytes delivered so far (the stream offset of `next`).
    delivered: u64,
    /// Stream offset of the FIN, once seen.
    fin_at: Option<u64>,
    /// Out-of-order data by stream offset.
    pending: BTreeMap<u64, Vec<u8>>,
    pending_bytes: usize,
    cap: usize,
}

impl Reassembler {
    /// A connection not yet opened; `cap` bounds the out-of-order bytes held.
    pub fn new(cap: usize) -> Self {
        Self {
            state: State::Listen,
            next: 0,
            delivered: 0,
            fin_at: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            cap,
        }
    }

    /// Bytes delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Out-of-order bytes held.
    pub fn buffered(&self) -> usize {
        self.pending_bytes
    }

    /// Takes one segment; in-order bytes are appended to `out`.
    pub fn segment(&mut self, segment: &Segment, out: &mut Vec<u8>) -> Event {
        match self.state {
            State::Closed => Event::Ignored,
            State::Listen if segment.syn && !segment.rst => {
                self.state = State::Open;
                self.next = segment.seq.wrapping_add(1);
                if segment.payload.is_empty() && !segment.fin {
                    return Event::Opened;
                }
                // Data on a SYN (TCP Fast Open) follows the SYN's sequence number.
                match self.data(segment.seq.wrapping_add(1), segment, out) {
                    Event::Progress => Event::Opened,
                    other => other,
                }
            }
            State::Listen => {
                self.state = State::Closed;
                Event::Dropped(DropReason::MidStream)
            }
            State::Open if segment.rst => {
                self.close();
                Event::Reset
            }
            // A retransmitted SYN.
            State::Open if segment.syn => Event::Progress,
            State::Open => self.data(segment.seq, segment, out),
        }
    }

    fn data(&mut self, seq: u32, segment: &Segment, out: &mut Vec<u8>) -> Event {
        let distance = i64::from(seq.wrapping_sub(self.next) as i32);
        let start = self.delivered as i64 + distance;
        if start < 0 {
            // Before the SYN: nothing sane can follow.
            return Event::Progress;
        }
        let start = start as u64;
        if segment.fin {
            let fin_at = start + segment.payload.len() as u64;
            self.fin_at.get_or_insert(fin_at);
        }
        self.accept(start, segment.payload, out);
        if self.pending_bytes > self.cap {
            self.close();
            return Event::Dropped(DropReason::Gap);
        }
        if self.fin_at.is_some_and(|fin| self.delivered >= fin) {
            self.close();
            return Event::Finished;
        }
        Event::Progress
    }

    /// Delivers what continues the stream, buffers what lies beyond it.
    fn accept(&mut self, start: u64, payload: &[u8], out: &mut Vec<u8>) {
        let end = start + payload.len() as u64;
        if end <= self.delivered || payload.is_empty() {
            return;
        }
        if start > self.delivered {
            let held = self.pending.entry(start).or_default();
            if held.len() < payload.len() {
                self.pending_bytes += payload.len() - held.len();
                held.clear();
                held.extend_from_slice(payload);
            }
            return;
        }
        self.deliver(&payload[(self.delivered - start) as usize..], out);
        while let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            if start > self.delivered {
                break;
            }
            let held = entry.remove();
            self.pending_bytes -= held.len();
            let end = start + held.len() as u64;
            if end > self.delivered {
                self.deliver(&held[(self.delivered - start) as usize..], out);
            }
        }
    }

    fn deliver(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(bytes);
        self.delivered += bytes.len() as u64;
        self.next = self.next.wrapping_add(bytes.len() as u32);
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.pending.clear();
        self.pending_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syn(seq: u32) -> Segment<'static> {
        Segment {
            seq,
            syn: true,
            fin: false,
            rst: false,
            payload: &[],
        }
    }

    fn data(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            seq,
            syn: false,
            fin: false,
            rst: false,
            payload,
        }
    }

    fn fin(seq: u32, payload: &[u8]) -> Segment<'_> {
        Segment {
            seq,
            syn: false,
            fin: true,
            rst: false,
            payload,
        }
    }

    #[test]
    fn in_order_stream_is_delivered_and_finishes_at_fin() {
        let mut r = Reassembler::new(DEFAULT_CAP);
        let mut out = Vec::new();
        assert_eq!(r.segment(&syn(1000), &mut out), Event::Opened);
        assert_eq!(r.segment(&data(1001, b"hello "), &mut out), Event::Progress);
        assert_eq!(r.segment(&fin(1007, b"world"), &mut out), Event::Finished);
        assert_eq!(out, b"hello world");
        assert_eq!(r.segment(&data(1012, b"late"), &mut out), Event::Ignored);
    }

    #[test]
    fn out_of_order_duplicates_and_overlaps_give_each_byte_once() {
        let mut r = Reassembler::new(DEFAULT_CAP);
        let mut out = Vec::new();
        r.segment(&syn(u32::MAX - 3), &mut out); // the stream wraps the sequence space
        let base = u32::MAX - 2;
        let s = |off: u32| base.wrapping_add(off);
        assert_eq!(r.segment(&data(s(6), b"ghij"), &mut out), Event::Progress);
        assert_eq!(r.segment(&data(s(3), b"def"), &mut out), Event::Progress);
        assert!(out.is_empty());
        assert_eq!(r.buffered(), 7);
        assert_eq!(r.segment(&fin(s(10), b"k"), &mut out), Event::Progress);
        assert_eq!(r.segment(&data(s(0), b"abcd"), &mut out), Event::Finished);
        assert_eq!(out, b"abcdefghijk");
        let mut r = Reassembler::new(DEFAULT_CAP);
        let mut out = Vec::new();
        r.segment(&syn(0), &mut out);
        r.segment(&data(1, b"abc"), &mut out);
        r.segment(&data(1, b"abc"), &mut out);
        r.segment(&data(2, b"bcdef"), &mut out);
        assert_eq!(out, b"abcdef");
        assert_eq!(r.delivered(), 6);
    }

    #[test]
    fn gap_past_the_cap_drops_the_connection() {
        let mut r = Reassembler::new(8);
        let mut out = Vec::new();
        r.segment(&syn(0), &mut out);
        assert_eq!(r.segment(&data(10, b"12345"), &mut out), Event::Progress);
        assert_eq!(
            r.segment(&data(20, b"12345"), &mut out),
            Event::Dropped(DropReason::Gap)
        );
        assert_eq!(r.segment(&data(1, b"a"), &mut out), Event::Ignored);
        assert!(out.is_empty());
    }

    #[test]
    fn reset_and_midstream_end_mirroring() {
        let mut r = Reassembler::new(DEFAULT_CAP);
        let mut out = Vec::new();
        r.segment(&syn(5), &mut out);
        let rst = Segment {
            seq: 6,
            syn: false,
            fin: false,
            rst: true,
            payload: &[],
        };
        assert_eq!(r.segment(&rst, &mut out), Event::Reset);
        let mut r = Reassembler::new(DEFAULT_CAP);
        assert_eq!(
            r.segment(&data(77, b"x"), &mut out),
            Event::Dropped(DropReason::MidStream)
        );
    }

    #[test]
    fn data_on_syn_and_syn_retransmission() {
        let mut r = Reassembler::new(DEFAULT_CAP);
        let mut out = Vec::new();
        let tfo = Segment {
            seq: 9,
            syn: true,
            fin: false,
            rst: false,
            payload: b"GET",
        };
        assert_eq!(r.segment(&tfo, &mut out), Event::Opened);
        assert_eq!(r.segment(&syn(9), &mut out), Event::Progress);
        r.segment(&data(13, b" /"), &mut out);
        assert_eq!(out, b"GET /");
    }
}
