//! Mirroring with an HTTP filter: of a connection's client→server bytes, only the requests
//! the session's filter matches are replayed into the session.
//!
//! The rebuilt stream is framed request by request with the filtered steal's own framing
//! ([`RequestStream`], HTTP/1.x, pipelining included); a request's head decides whether its
//! bytes (head and body, unchanged) are kept. A request asking for an upgrade (WebSocket)
//! decides the rest of the connection: after it, every byte is kept if it was, dropped
//! otherwise. A stream that is not HTTP/1.x (HTTP/2, another protocol, a framing the steal
//! would refuse) ends the selection: nothing more of it is mirrored. Free of I/O: bytes in,
//! kept bytes out.

use std::sync::Arc;

use crate::incoming::http::h1::{RequestStream, Step, EMPTY_HEADERS, MAX_HEAD};
use crate::incoming::http::HttpFilter;

/// The stream is not HTTP/1.x requests: stop mirroring it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotHttp;

enum Mode {
    Requests {
        upgrade: bool,
    },
    /// After an upgrade: every byte kept or not.
    Upgraded,
}

/// One connection's requests, selected by a filter.
pub struct Selector {
    filter: Arc<HttpFilter>,
    stream: RequestStream,
    /// Bytes not framed yet.
    pending: Vec<u8>,
    /// Whether the current request (or the upgraded stream) is kept.
    keep: bool,
    mode: Mode,
}

impl Selector {
    pub fn new(filter: Arc<HttpFilter>) -> Self {
        Self {
            filter,
            stream: RequestStream::new(),
            pending: Vec::new(),
            keep: false,
            mode: Mode::Requests { upgrade: false },
        }
    }

    /// Takes the stream's next bytes; appends the kept ones to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), NotHttp> {
        if let Mode::Upgraded = self.mode {
            if self.keep {
                out.extend_from_slice(input);
            }
            return Ok(());
        }
        self.pending.extend_from_slice(input);
        loop {
            let mut headers = EMPTY_HEADERS;
            let consumed = match self.stream.feed(&self.pending, &mut headers) {
                Err(_) => return Err(NotHttp),
                Ok(Step::NeedMore) => {
                    if self.stream.expects_head() && self.pending.len() > MAX_HEAD {
                        return Err(NotHttp);
                    }
                    return Ok(());
                }
                Ok(Step::Head(info)) => {
                    self.keep = self.filter.matches(&info.head);
                    self.mode = Mode::Requests {
                        upgrade: info.upgrade,
                    };
                    info.len
                }
                Ok(Step::Body(n)) => n,
                Ok(Step::End) => {
                    if let Mode::Requests { upgrade: true } = self.mode {
                        self.mode = Mode::Upgraded;
                        let rest = std::mem::take(&mut self.pending);
                        if self.keep {
                            out.extend_from_slice(&rest);
                        }
                        return Ok(());
                    }
                    0
                }
            };
            if self.keep {
                out.extend_from_slice(&self.pending[..consumed]);
            }
            self.pending.drain(..consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn by_header() -> Selector {
        Selector::new(Arc::new(
            HttpFilter::new(Some("^X-Run: a$"), None, None).unwrap(),
        ))
    }

    const MATCHING: &[u8] = b"POST /m HTTP/1.1\r\nX-Run: a\r\nContent-Length: 5\r\n\r\nhello";
    const OTHER: &[u8] = b"POST /o HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
    const CHUNKED: &[u8] =
        b"POST /c HTTP/1.1\r\nx-run: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n";

    #[test]
    fn only_matching_requests_are_kept_whatever_the_split() {
        let stream = [OTHER, MATCHING, OTHER, CHUNKED, OTHER].concat();
        let expected = [MATCHING, CHUNKED].concat();
        for split in [1, 2, 7, 64, stream.len()] {
            let mut selector = by_header();
            let mut out = Vec::new();
            for piece in stream.chunks(split) {
                selector.feed(piece, &mut out).unwrap();
            }
            assert_eq!(out, expected, "split {split}");
        }
    }

    #[test]
    fn an_upgrade_decides_the_rest_of_the_connection() {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nX-Run: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let mut selector = by_header();
        let mut out = Vec::new();
        selector.feed(upgrade, &mut out).unwrap();
        selector.feed(b"\x81\x02hi", &mut out).unwrap();
        assert_eq!(out, [&upgrade[..], b"\x81\x02hi"].concat());

        let upgrade = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81";
        let mut selector = by_header();
        let mut out = Vec::new();
        selector.feed(upgrade, &mut out).unwrap();
        selector.feed(MATCHING, &mut out).unwrap();
        assert!(out.is_empty(), "an unmatched upgrade drops the rest");
    }

    #[test]
    fn other_protocols_end_the_selection() {
        let mut out = Vec::new();
        assert_eq!(
            by_header().feed(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", &mut out),
            Err(NotHttp)
        );
        assert_eq!(
            by_header().feed(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", &mut out),
            Err(NotHttp)
        );
        assert!(out.is_empty());
    }
}
