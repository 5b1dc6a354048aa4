//! HTTP/1.1 message framing without I/O: where each request and response starts and ends in
//! a byte stream, so that a proxy can forward the bytes unchanged and still decide per request.
//!
//! The proxy never re-encodes a message. It hands this module the bytes it has read and
//! learns which prefix is a head (parsed with `httparse`, borrowed, nothing allocated) and
//! how many of the following bytes are body; it forwards exactly those bytes and consumes
//! them. The states of one direction of a connection:
//!
//! ```text
//!        ┌──────── Head ◀───────────────────────────┐
//!        │  (a complete head parsed: Step::Head)     │ Step::End
//!        ▼                                           │
//!   body framing ── Length(n) ──── n bytes ──────────┤
//!                ── Chunked ─── size line, data, CRLF, … "0", trailers, empty line
//!                ── Empty ───────────────────────────┘
//!                ── UntilClose (responses only): every byte up to the peer's close
//! ```
//!
//! A request's body is framed by `Transfer-Encoding: chunked` or `Content-Length`; without
//! either it has none (RFC 9112 §6.3). A response's body depends on the request too: the
//! answer to `HEAD` and every 1xx, 204 and 304 has none; chunked and Content-Length frame it;
//! anything else runs until the server closes. A request that frames its body in a way that
//! cannot be forwarded safely (a transfer coding other than chunked last, conflicting
//! Content-Lengths) is an error, the smuggling guard of RFC 9112 §6.3.
//!
//! Chunked bodies are walked byte by byte through the size line and the trailers and by
//! length through the data, so that any split of the input (a fuzzer's or the network's)
//! gives the same result. Everything here is a plain function or a small struct fed bytes:
//! [`RequestStream::feed`] is the entry point a fuzzer drives.

use super::filter::RequestHead;

/// Most headers a head may carry.
pub const MAX_HEADERS: usize = 100;
/// Largest head accepted (request line or status line plus headers).
pub const MAX_HEAD: usize = 64 * 1024;

/// An empty header array for the parsers.
pub const EMPTY_HEADERS: [httparse::Header<'static>; MAX_HEADERS] =
    [httparse::EMPTY_HEADER; MAX_HEADERS];

/// Why the bytes are not a message this proxy forwards.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed HTTP/1.x head: {0}")]
    Head(httparse::Error),
    #[error("HTTP/1.x head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("a transfer coding other than chunked last")]
    TransferEncoding,
    #[error("malformed chunked body")]
    Chunk,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// A parsed request head and what the proxy must know about its message.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Bytes of the head in the input.
    pub len: usize,
    pub head: RequestHead<'a>,
    pub method: &'a str,
    pub body: BodyKind,
    /// The request asks to switch protocols (`Connection: upgrade` and `Upgrade`).
    pub upgrade: bool,
    /// The upgrade asked for is `h2c` alone.
    pub h2c: bool,
    /// The client closes after this request (`Connection: close`, or HTTP/1.0 without
    /// keep-alive).
    pub close: bool,
}

impl RequestInfo<'_> {
    pub fn is_head(&self) -> bool {
        self.method.eq_ignore_ascii_case("HEAD")
    }
}

/// A parsed response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseInfo {
    pub len: usize,
    pub status: u16,
    pub body: BodyKind,
    /// The server closes after this response.
    pub close: bool,
}

/// The length of a head httparse parsed out of `buffered` bytes; `None` while it is
/// incomplete and may still fit in [`MAX_HEAD`].
fn head_length(
    parsed: httparse::Result<usize>,
    buffered: usize,
) -> Result<Option<usize>, ParseError> {
    match parsed {
        Ok(httparse::Status::Complete(len)) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD => Err(ParseError::HeadTooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(ParseError::HeadTooLarge),
        Err(e) => Err(ParseError::Head(e)),
    }
}

/// Parses a request head at the start of `buf`; `None` while it is incomplete.
pub fn parse_request<'b>(
    buf: &'b [u8],
    headers: &'b mut [httparse::Header<'b>],
) -> Result<Option<RequestInfo<'b>>, ParseError> {
    let mut request = httparse::Request::new(headers);
    let Some(len) = head_length(request.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let method = request.method.unwrap_or("");
    let target = request.path.unwrap_or("/");
    let version = request.version.unwrap_or(1);
    let headers: &'b [httparse::Header<'b>] = request.headers;
    let facts = HeaderFacts::of(headers)?;
    let body = if facts.transfer_encoding {
        if !facts.chunked_last {
            return Err(ParseError::TransferEncoding);
        }
        BodyKind::Chunked
    } else {
        match facts.content_length {
            Some(0) | None => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
        }
    };
    let upgrade = facts.connection_upgrade && facts.upgrade.is_some();
    Ok(Some(RequestInfo {
        len,
        head: RequestHead {
            path: path_and_query(target),
            headers,
        },
        method,
        body,
        upgrade,
        h2c: upgrade
            && facts
                .upgrade
                .is_some_and(|u| u.trim_ascii().eq_ignore_ascii_case(b"h2c")),
        close: facts.connection_close || (version == 0 && !facts.connection_keep_alive),
    }))
}

/// Parses a response head at the start of `buf`; `None` while it is incomplete. `head_request`
/// says whether it answers a `HEAD` (no body whatever the headers say).
pub fn parse_response<'b>(
    buf: &'b [u8],
    headers: &mut [httparse::Header<'b>],
    head_request: bool,
) -> Result<Option<ResponseInfo>, ParseError> {
    let mut response = httparse::Response::new(headers);
    let Some(len) = head_length(response.parse(buf), buf.len())? else {
        return Ok(None);
    };
    let status = response.code.unwrap_or(0);
    let version = response.version.unwrap_or(1);
    let facts = HeaderFacts::of(response.headers)?;
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyKind::Empty
    } else if facts.transfer_encoding {
        if facts.chunked_last {
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else {
        match facts.content_length {
            Some(0) => BodyKind::Empty,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::UntilClose,
        }
    };
    Ok(Some(ResponseInfo {
        len,
        status,
        body,
        close: facts.connection_close
            || (version == 0 && !facts.connection_keep_alive)
            || body == BodyKind::UntilClose,
    }))
}

/// The path with its query of a request target: origin-form as is, the path part of an
/// absolute-form target, `/` for an authority without path.
fn path_and_query(target: &str) -> &str {
    if target.starts_with('/') || target == "*" {
        return target;
    }
    match target.find("://") {
        Some(scheme_end) => {
            let rest = &target[scheme_end + 3..];
            match rest.find(['/', '?']) {
                Some(i) => &rest[i..],
                None => "/",
            }
        }
        None => target,
    }
}

/// What the framing depends on, gathered in one pass over the headers.
#[derive(Default)]
struct HeaderFacts<'a> {
    content_length: Option<u64>,
    transfer_encoding: bool,
    chunked_last: bool,
    connection_close: bool,
    connection_keep_alive: bool,
    connection_upgrade: bool,
    upgrade: Option<&'a [u8]>,
}

impl<'a> HeaderFacts<'a> {
    fn of(headers: &'a [httparse::Header<'a>]) -> Result<Self, ParseError> {
        let mut facts = Self::default();
        for header in headers {
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                for part in header.value.split(|&b| b == b',') {
                    let n = parse_decimal(part.trim_ascii()).ok_or(ParseError::ContentLength)?;
                    if facts.content_length.is_some_and(|old| old != n) {
                        return Err(ParseError::ContentLength);
                    }
                    facts.content_length = Some(n);
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                facts.transfer_encoding = true;
                let last = header
                    .value
                    .split(|&b| b == b',')
                    .next_back()
                    .unwrap_or(b"");
                facts.chunked_last = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                for token in header.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    facts.connection_close |= token.eq_ignore_ascii_case(b"close");
                    facts.connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                    facts.connection_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                }
            } else if name.eq_ignore_ascii_case("upgrade") {
                facts.upgrade = Some(header.value);
            }
        }
        if facts.transfer_encoding {
            // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
            facts.content_length = None;
        }
        Ok(facts)
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

/// The bytes of one body, counted off the input as they arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyFramer {
    state: Body,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    UntilClose,
    /// In a chunk-size line: the size so far, its digit count, whether past the digits
    /// (extensions or whitespace).
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// After the CR of a size line.
    SizeLf {
        size: u64,
    },
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataCr,
    DataLf,
    /// In the trailer section; `empty` while the current line has no byte yet.
    Trailer {
        empty: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// What a [`BodyFramer::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Leading bytes of the input that belong to the body.
    pub consumed: usize,
    /// The body ended with them.
    pub done: bool,
}

impl BodyFramer {
    pub fn new(kind: BodyKind) -> Self {
        let state = match kind {
            BodyKind::Empty | BodyKind::Length(0) => Body::Done,
            BodyKind::Length(n) => Body::Length(n),
            BodyKind::Chunked => Body::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            BodyKind::UntilClose => Body::UntilClose,
        };
        Self { state }
    }

    pub fn is_done(&self) -> bool {
        self.state == Body::Done
    }

    /// Counts how much of `input` is body; the rest belongs to what follows.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, ParseError> {
        let mut at = 0;
        while at < input.len() && self.state != Body::Done {
            match self.state {
                Body::Length(n) => {
                    let take = n.min((input.len() - at) as u64);
                    at += take as usize;
                    self.state = if take == n {
                        Body::Done
                    } else {
                        Body::Length(n - take)
                    };
                }
                Body::UntilClose => at = input.len(),
                Body::Data(n) => {
                    let take = n.min((input.len() - at) as u64);
                    at += take as usize;
                    self.state = if take == n {
                        Body::DataCr
                    } else {
                        Body::Data(n - take)
                    };
                }
                state => {
                    self.state = Self::step(state, input[at])?;
                    at += 1;
                }
            }
        }
        Ok(Progress {
            consumed: at,
            done: self.state == Body::Done,
        })
    }

    /// One byte of chunk framing.
    fn step(state: Body, byte: u8) -> Result<Body, ParseError> {
        let end_of_size_line = |size: u64, digits: u8| match (digits, size) {
            (0, _) => Err(ParseError::Chunk),
            (_, 0) => Ok(Body::Trailer { empty: true }),
            (_, n) => Ok(Body::Data(n)),
        };
        Ok(match (state, byte) {
            (Body::Size { size, digits, ext }, b'\r') => {
                end_of_size_line(size, digits)?;
                let _ = ext;
                Body::SizeLf { size }
            }
            (Body::Size { size, digits, .. }, b'\n') => end_of_size_line(size, digits)?,
            (
                Body::Size {
                    size,
                    digits,
                    ext: false,
                },
                b,
            ) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err(ParseError::Chunk);
                }
                let value = (b as char).to_digit(16).unwrap_or(0);
                Body::Size {
                    size: size * 16 + u64::from(value),
                    digits: digits + 1,
                    ext: false,
                }
            }
            (
                Body::Size {
                    size,
                    digits,
                    ext: false,
                },
                b';' | b' ' | b'\t',
            ) => Body::Size {
                size,
                digits,
                ext: true,
            },
            (Body::Size { ext: false, .. }, _) => return Err(ParseError::Chunk),
            (state @ Body::Size { ext: true, .. }, _) => state,
            (Body::SizeLf { size }, b'\n') => {
                if size == 0 {
                    Body::Trailer { empty: true }
                } else {
                    Body::Data(size)
                }
            }
            (Body::DataCr, b'\r') => Body::DataLf,
            (Body::DataCr | Body::DataLf, b'\n') => Body::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            (Body::Trailer { empty }, b'\r') => Body::TrailerLf { empty },
            (Body::Trailer { empty } | Body::TrailerLf { empty }, b'\n') => {
                if empty {
                    Body::Done
                } else {
                    Body::Trailer { empty: true }
                }
            }
            (Body::Trailer { .. }, _) => Body::Trailer { empty: false },
            _ => return Err(ParseError::Chunk),
        })
    }
}

/// One direction's requests, one step at a time.
#[derive(Debug, Clone, Default)]
pub struct RequestStream {
    body: Option<BodyFramer>,
}

/// What [`RequestStream::feed`] found at the start of its input.
#[derive(Debug)]
pub enum Step<'a> {
    /// Nothing complete yet: read more (nothing consumed).
    NeedMore,
    /// A request head of `info.len` bytes.
    Head(RequestInfo<'a>),
    /// This many bytes of the current request's body.
    Body(usize),
    /// The current request is complete (nothing consumed).
    End,
}

impl RequestStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the next step reads a head (and so needs header storage).
    pub fn expects_head(&self) -> bool {
        self.body.is_none()
    }

    /// Looks at the unconsumed input; the caller consumes what the step says (`len` of a
    /// head, the count of a body step) before calling again. `headers` is used only when a
    /// head is expected.
    pub fn feed<'b>(
        &mut self,
        input: &'b [u8],
        headers: &'b mut [httparse::Header<'b>],
    ) -> Result<Step<'b>, ParseError> {
        match &mut self.body {
            None => match parse_request(input, headers)? {
                None => Ok(Step::NeedMore),
                Some(info) => {
                    self.body = Some(BodyFramer::new(info.body));
                    Ok(Step::Head(info))
                }
            },
            Some(framer) if framer.is_done() => {
                self.body = None;
                Ok(Step::End)
            }
            Some(framer) => match framer.feed(input)? {
                Progress { consumed: 0, .. } => Ok(Step::NeedMore),
                Progress { consumed, .. } => Ok(Step::Body(consumed)),
            },
        }
    }
}

#[cfg(test)]
mod tests;
