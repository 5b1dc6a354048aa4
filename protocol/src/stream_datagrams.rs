//! QUIC datagrams carried on a byte stream.
//!
//! Where only TCP reaches the agent (the Kubernetes API's port-forward carries TCP streams,
//! nothing else), the session's QUIC packets, which would be UDP datagrams, travel on one byte
//! stream instead. Each datagram becomes a frame: its length as a 2-byte big-endian number, then
//! its bytes. A UDP payload never exceeds 65,535 bytes, so the length always fits.
//!
//! ```text
//! ┌────────┬──────────────────┬────────┬─────────── …
//! │ len: 2 │ datagram (len)   │ len: 2 │ datagram …
//! └────────┴──────────────────┴────────┴─────────── …
//! ```
//!
//! The stream is reliable and ordered, so QUIC never sees a loss on it; its congestion
//! controller still paces the sender, and the sockets on both ends push back (see the client's
//! `tunnel::stream_socket` and the agent's `stream_relay`) instead of dropping. The decoder is
//! a plain buffer: feed it whatever a read returned, take whole datagrams out.

/// Bytes of the length prefix.
pub const LEN_PREFIX: usize = 2;
/// The largest datagram a frame can carry.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a datagram of {0} bytes does not fit a stream frame (at most {MAX_DATAGRAM} bytes)")]
pub struct TooLarge(pub usize);

/// Appends the frame of `datagram` to `out`.
pub fn encode_into(datagram: &[u8], out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let len = u16::try_from(datagram.len()).map_err(|_| TooLarge(datagram.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(())
}

/// The size of the frame that carries a datagram of `len` bytes.
pub fn frame_len(len: usize) -> usize {
    LEN_PREFIX + len
}

/// Reassembles datagrams from the stream's bytes, in any chunking.
#[derive(Debug, Default)]
pub struct Decoder {
    buffer: Vec<u8>,
    /// Where the next frame starts in `buffer`; bytes before it are consumed and dropped at the
    /// next [`Decoder::push`], so taking datagrams out never moves memory.
    start: usize,
    /// Bytes at the end of `buffer` lent out by [`Decoder::spare`] and not yet filled.
    spare: usize,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.filled(0);
        self.compact();
        self.buffer.extend_from_slice(bytes);
    }

    /// A buffer of at least `min` free bytes to read the stream into; then
    /// [`Decoder::filled`] says how many of them the read filled. Saves the copy that
    /// [`Decoder::push`] makes.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        self.filled(0);
        self.compact();
        let len = self.buffer.len();
        self.buffer.resize(len + min, 0);
        self.spare = min;
        &mut self.buffer[len..]
    }

    /// Keeps the first `n` bytes of the last [`Decoder::spare`] buffer (as many as the read
    /// returned) and drops the rest.
    pub fn filled(&mut self, n: usize) {
        let n = n.min(self.spare);
        let end = self.buffer.len() - self.spare + n;
        self.buffer.truncate(end);
        self.spare = 0;
    }

    /// The next whole datagram, if the buffer holds one.
    pub fn next_datagram(&mut self) -> Option<&[u8]> {
        let rest = &self.buffer[self.start..self.buffer.len() - self.spare];
        let prefix: [u8; LEN_PREFIX] = rest.get(..LEN_PREFIX)?.try_into().ok()?;
        let len = u16::from_be_bytes(prefix) as usize;
        if rest.len() < LEN_PREFIX + len {
            return None;
        }
        let begin = self.start + LEN_PREFIX;
        self.start = begin + len;
        Some(&self.buffer[begin..begin + len])
    }

    /// True when bytes of an unfinished frame are buffered (a stream ending now was cut short).
    pub fn has_partial_frame(&self) -> bool {
        self.start < self.buffer.len() - self.spare
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random sequence (xorshift), so failures reproduce.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn datagram(rng: &mut Rng) -> Vec<u8> {
        // Mostly small, sometimes the largest: both edges of the length prefix.
        let len = match rng.below(10) {
            0 => MAX_DATAGRAM,
            1 => 0,
            2 => 255 + rng.below(2),
            _ => rng.below(1500),
        };
        (0..len).map(|_| rng.next() as u8).collect()
    }

    fn decode_all(decoder: &mut Decoder, out: &mut Vec<Vec<u8>>) {
        while let Some(datagram) = decoder.next_datagram() {
            out.push(datagram.to_vec());
        }
    }

    #[test]
    fn frames_are_length_then_bytes() {
        let mut out = Vec::new();
        encode_into(b"abc", &mut out).unwrap();
        encode_into(b"", &mut out).unwrap();
        assert_eq!(out, [0, 3, b'a', b'b', b'c', 0, 0]);
        assert_eq!(frame_len(3), 5);
    }

    #[test]
    fn datagrams_beyond_the_prefix_are_refused() {
        let mut out = vec![9];
        let big = vec![0; MAX_DATAGRAM + 1];
        assert_eq!(encode_into(&big, &mut out), Err(TooLarge(MAX_DATAGRAM + 1)));
        assert_eq!(out, [9], "nothing is written for a refused datagram");
        encode_into(&big[..MAX_DATAGRAM], &mut out).unwrap();
        assert_eq!(out.len(), 1 + frame_len(MAX_DATAGRAM));
    }

    #[test]
    fn random_datagrams_survive_random_chunking() {
        for seed in 1..=40u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let sent: Vec<Vec<u8>> = (0..1 + rng.below(60)).map(|_| datagram(&mut rng)).collect();
            let mut wire = Vec::new();
            for datagram in &sent {
                encode_into(datagram, &mut wire).unwrap();
            }
            let mut decoder = Decoder::new();
            let mut got = Vec::new();
            let mut at = 0;
            while at < wire.len() {
                let n = (1 + rng.below(70_000)).min(wire.len() - at);
                if rng.below(2) == 0 {
                    decoder.push(&wire[at..at + n]);
                } else {
                    let spare = decoder.spare(n + rng.below(100));
                    spare[..n].copy_from_slice(&wire[at..at + n]);
                    decoder.filled(n);
                }
                at += n;
                decode_all(&mut decoder, &mut got);
            }
            assert_eq!(got, sent, "seed {seed}");
            assert!(!decoder.has_partial_frame());
        }
    }

    #[test]
    fn a_cut_frame_waits_and_is_reported_partial() {
        let mut wire = Vec::new();
        encode_into(b"whole", &mut wire).unwrap();
        encode_into(b"cut short", &mut wire).unwrap();
        let mut decoder = Decoder::new();
        decoder.push(&wire[..wire.len() - 1]);
        assert_eq!(decoder.next_datagram(), Some(&b"whole"[..]));
        assert_eq!(decoder.next_datagram(), None);
        assert!(decoder.has_partial_frame());
        decoder.push(&wire[wire.len() - 1..]);
        assert_eq!(decoder.next_datagram(), Some(&b"cut short"[..]));
        assert!(!decoder.has_partial_frame());
    }
}
