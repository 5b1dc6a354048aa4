//! `Upgrade: h2c` (RFC 7540 §3.2): an HTTP/1.1 client asks to switch its connection to
//! HTTP/2, and the filter accepts on the target's behalf when the target speaks HTTP/2.
//!
//! The HTTP/2 side of the filter ([`super::h2_proxy`]) is a server of the `h2` crate, which
//! knows only prior knowledge: its first bytes must be the connection preface. An upgrade
//! starts otherwise — the request that asked becomes stream 1, half-closed by the client, and
//! the settings come in a header. So the upgrade is turned into the prior-knowledge start
//! the server expects (the design of Go's `x/net/http2/h2c`):
//!
//! ```text
//!  client: GET / HTTP/1.1, Upgrade: h2c, HTTP2-Settings: S ─▶ filter answers 101 itself
//!  client: preface, SETTINGS, frames…    ─▶ read preface, then the server is fed
//!          preface · SETTINGS(S) · HEADERS(stream 1, the request) · the client's frames…
//!  server: SETTINGS, ACK(S), ACK, frames ─▶ ACK(S) swallowed (the 101 acknowledged S) ─▶ client
//! ```
//!
//! The request is encoded with HPACK literals that never touch the dynamic table, so the
//! client's encoder and the server's decoder stay in step.
//!
//! When is it accepted? Only on the connection's first request, without a body, with one
//! `HTTP2-Settings` and a `Host`, nothing sent after it, and only when the target answers an
//! HTTP/2 preface with its SETTINGS ([`speaks_h2`]: one short probe connection per upgrade
//! offer). Otherwise the upgrade is declined by [`super::h1_proxy`] and the connection stays
//! HTTP/1.1, routed per request: a server may always ignore an upgrade (RFC 9110 §7.8), and a
//! target that speaks only HTTP/1.1 must never receive HTTP/2 streams.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::h1::{self, BodyKind, EMPTY_HEADERS};
use super::routes::{BoxedStream, Connector};

/// The HTTP/2 connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The answer that accepts the upgrade.
const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n";
/// How long the target may take to show its SETTINGS to the probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the client may take to send its preface after the 101.
const PREFACE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest frame payload a peer must accept before it says otherwise (RFC 9113 §4.2).
const DEFAULT_MAX_FRAME: usize = 16_384;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_SETTINGS: u8 = 0x4;
const FRAME_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// Headers that belong to the HTTP/1.1 connection, not to the request (RFC 9113 §8.2.2).
const CONNECTION_SPECIFIC: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "host",
];

/// Reads the client's first request head (more bytes as needed) and returns the bytes an
/// HTTP/2 server must be fed in its place when it is an upgrade to accept; `None` (with
/// everything read left in `buf`) for any other request.
pub async fn offered(client: &mut BoxedStream, buf: &mut BytesMut) -> io::Result<Option<Vec<u8>>> {
    loop {
        let mut headers = EMPTY_HEADERS;
        match h1::parse_request(buf, &mut headers) {
            Ok(Some(info)) => {
                let alone = info.len == buf.len();
                return Ok(alone.then(|| preamble(&info)).flatten());
            }
            Ok(None) => {}
            // The HTTP/1.1 proxy answers what it cannot parse.
            Err(_) => return Ok(None),
        }
        buf.reserve(16 * 1024);
        if client.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Accepts the upgrade: answers 101, takes the client's preface and returns the bytes the
/// HTTP/2 server reads first (`preamble`, then what the client sent after its preface) and
/// the client wrapped so that the server's acknowledgement of the header's settings is
/// dropped.
pub async fn accept(
    mut client: BoxedStream,
    preamble: Vec<u8>,
) -> io::Result<(BoxedStream, BytesMut)> {
    client.write_all(SWITCHING).await?;
    client.flush().await?;
    let mut after = BytesMut::with_capacity(16 * 1024);
    let read_preface = async {
        while after.len() < H2_PREFACE.len() {
            if client.read_buf(&mut after).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
        }
        io::Result::Ok(())
    };
    tokio::time::timeout(PREFACE_TIMEOUT, read_preface)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HTTP/2 preface after 101"))??;
    if !after.starts_with(H2_PREFACE) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the client did not send the HTTP/2 preface after 101",
        ));
    }
    let mut fed = BytesMut::from(&preamble[..]);
    fed.extend_from_slice(&after[H2_PREFACE.len()..]);
    let client = Box::new(SwallowFirstSettingsAck {
        inner: client,
        filter: FirstSettingsAck::default(),
        pending: Vec::new(),
        sent: 0,
    });
    Ok((client, fed))
}

/// Whether the target answers an HTTP/2 preface with its SETTINGS, within [`PROBE_TIMEOUT`].
pub async fn speaks_h2(target: &dyn Connector) -> bool {
    let probe = async {
        let mut stream = target.connect().await?;
        let mut hello = H2_PREFACE.to_vec();
        frame_header(&mut hello, 0, FRAME_SETTINGS, 0, 0);
        stream.write_all(&hello).await?;
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await?;
        io::Result::Ok(
            header[3] == FRAME_SETTINGS && header[4] & FLAG_ACK == 0 && header[5..] == [0; 4],
        )
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, probe).await,
        Ok(Ok(true))
    )
}

/// What an HTTP/2 server reads in place of an upgrade request: the preface, the client's
/// settings from `HTTP2-Settings` and the request as stream 1. `None` when the request is no
/// upgrade to accept: another upgrade, a body, no or several `HTTP2-Settings`, bad settings,
/// no `Host`.
pub fn preamble(info: &h1::RequestInfo<'_>) -> Option<Vec<u8>> {
    if !info.h2c || info.body != BodyKind::Empty {
        return None;
    }
    let headers = info.head.headers;
    let named = |name: &'static str| {
        headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
    };
    let mut settings = named("http2-settings");
    let (Some(settings), None) = (settings.next(), settings.next()) else {
        return None;
    };
    let settings = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(without_padding(settings.value.trim_ascii()))
        .ok()?;
    if settings.len() % 6 != 0 || settings.len() > DEFAULT_MAX_FRAME {
        return None;
    }
    let authority = named("host").next()?.value.trim_ascii();

    let mut block = Vec::new();
    hpack_literal(&mut block, b":method", info.method.as_bytes());
    hpack_literal(&mut block, b":scheme", b"http");
    hpack_literal(&mut block, b":authority", authority);
    hpack_literal(&mut block, b":path", info.head.path.as_bytes());
    for header in headers {
        let name = header.name.to_ascii_lowercase();
        let value = header.value.trim_ascii();
        if CONNECTION_SPECIFIC.contains(&name.as_str())
            || (name == "te" && !value.eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        hpack_literal(&mut block, name.as_bytes(), value);
    }

    let mut out = H2_PREFACE.to_vec();
    frame_header(&mut out, settings.len(), FRAME_SETTINGS, 0, 0);
    out.extend_from_slice(&settings);
    let mut chunks = block.chunks(DEFAULT_MAX_FRAME).peekable();
    let mut kind = FRAME_HEADERS;
    while let Some(chunk) = chunks.next() {
        let mut flags = if kind == FRAME_HEADERS {
            FLAG_END_STREAM
        } else {
            0
        };
        if chunks.peek().is_none() {
            flags |= FLAG_END_HEADERS;
        }
        frame_header(&mut out, chunk.len(), kind, flags, 1);
        out.extend_from_slice(chunk);
        kind = FRAME_CONTINUATION;
    }
    Some(out)
}

/// `HTTP2-Settings` is base64url without padding (RFC 7540 §3.2.1); some clients pad.
fn without_padding(value: &[u8]) -> &[u8] {
    let end = value.iter().rposition(|&b| b != b'=').map_or(0, |i| i + 1);
    &value[..end]
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A header as an HPACK "literal header field without indexing, new name" (RFC 7541
/// §6.2.2): plain strings, no Huffman coding, no dynamic table entry.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    for string in [name, value] {
        hpack_integer(out, 7, 0x00, string.len());
        out.extend_from_slice(string);
    }
}

/// An HPACK integer with an `n`-bit prefix after `flags` (RFC 7541 §5.1).
fn hpack_integer(out: &mut Vec<u8>, n: u32, flags: u8, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Walks the frames a server writes and drops the first SETTINGS acknowledgement: the one
/// for the settings of `HTTP2-Settings`, which the client never sent as a frame (the 101
/// acknowledged them, RFC 7540 §3.2.1) and would take as a protocol error.
#[derive(Debug, Default)]
pub struct FirstSettingsAck {
    header: [u8; 9],
    have: usize,
    payload_left: usize,
    done: bool,
}

impl FirstSettingsAck {
    /// Appends to `out` what of `input` goes on to the client.
    pub fn filter(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.done {
                out.extend_from_slice(input);
                return;
            }
            if self.payload_left > 0 {
                let n = self.payload_left.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.payload_left -= n;
                input = &input[n..];
                continue;
            }
            let n = (9 - self.have).min(input.len());
            self.header[self.have..self.have + n].copy_from_slice(&input[..n]);
            self.have += n;
            input = &input[n..];
            if self.have == 9 {
                self.have = 0;
                let len = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
                let is_ack = self.header[3] == FRAME_SETTINGS && self.header[4] & FLAG_ACK != 0;
                if is_ack && len == 0 {
                    self.done = true;
                } else {
                    out.extend_from_slice(&self.header);
                    self.payload_left = len as usize;
                }
            }
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// The client connection as the HTTP/2 server writes to it, through [`FirstSettingsAck`].
struct SwallowFirstSettingsAck {
    inner: BoxedStream,
    filter: FirstSettingsAck,
    /// Filtered bytes not yet written, from `sent` on.
    pending: Vec<u8>,
    sent: usize,
}

impl SwallowFirstSettingsAck {
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for SwallowFirstSettingsAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SwallowFirstSettingsAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        if this.filter.is_done() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.filter.filter(buf, &mut this.pending);
        // Written now if the socket takes it, else by the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_drain(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(head: &[u8], check: impl FnOnce(Option<Vec<u8>>)) {
        let mut headers = EMPTY_HEADERS;
        let info = h1::parse_request(head, &mut headers).unwrap().unwrap();
        check(preamble(&info));
    }

    const UPGRADE: &[u8] = b"GET /a/b?c=d HTTP/1.1\r\nHost: svc:8080\r\n\
Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\
X-Verifier-Run: key-1\r\nTE: gzip\r\nAccept: */*\r\n\r\n";

    #[test]
    fn hpack_integers_are_those_of_the_rfc() {
        // RFC 7541 C.1.1 – C.1.3.
        let mut out = Vec::new();
        hpack_integer(&mut out, 5, 0, 10);
        assert_eq!(out, [0x0a]);
        out.clear();
        hpack_integer(&mut out, 5, 0, 1337);
        assert_eq!(out, [0x1f, 0x9a, 0x0a]);
        out.clear();
        hpack_integer(&mut out, 8, 0, 42);
        assert_eq!(out, [0x2a]);
        out.clear();
        hpack_integer(&mut out, 7, 0, 127);
        assert_eq!(out, [0x7f, 0x00]);
    }

    #[test]
    fn only_a_bodiless_h2c_upgrade_with_one_settings_header_and_a_host_is_accepted() {
        request(UPGRADE, |p| assert!(p.is_some()));
        for refused in [
            // Another protocol.
            &b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"[..],
            // No settings.
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            // Two settings headers.
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABk\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
            // Settings that are not whole (6-byte) entries, or not base64url.
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMA\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: !!\r\n\r\n",
            // A body.
            b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABk\r\nContent-Length: 3\r\n\r\n",
            // No host.
            b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n",
        ] {
            request(refused, |p| {
                assert!(p.is_none(), "{}", String::from_utf8_lossy(refused))
            });
        }
        // Padded settings are taken.
        request(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQ=\r\n\r\n",
            |p| assert!(p.is_none(), "8 bytes are not whole entries"),
        );
        request(
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA==\r\n\r\n",
            |p| assert!(p.is_some()),
        );
    }

    /// The preamble read by the `h2` crate's server: stream 1 is the request, with its
    /// method, path, authority and end-to-end headers, and nothing of the HTTP/1.1 connection.
    #[test]
    fn an_http2_server_reads_the_preamble_as_stream_one() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut long = UPGRADE[..UPGRADE.len() - 2].to_vec();
        // Headers larger than one frame: HEADERS and CONTINUATION frames.
        for i in 0..40 {
            long.extend_from_slice(format!("X-Big-{i}: {}\r\n", "v".repeat(1000)).as_bytes());
        }
        long.extend_from_slice(b"\r\n");
        for head in [UPGRADE, &long[..]] {
            let mut headers = EMPTY_HEADERS;
            let info = h1::parse_request(head, &mut headers).unwrap().unwrap();
            let fed = preamble(&info).unwrap();
            let big = head.len() > 16_384;
            runtime.block_on(async move {
                let (server_side, mut client_side) = tokio::io::duplex(1 << 20);
                client_side.write_all(&fed).await.unwrap();
                let mut connection = h2::server::handshake(server_side).await.unwrap();
                let (request, _respond) = connection.accept().await.unwrap().unwrap();
                assert_eq!(request.method(), "GET");
                assert_eq!(request.uri().path_and_query().unwrap(), "/a/b?c=d");
                assert_eq!(request.uri().authority().unwrap(), "svc:8080");
                assert_eq!(request.uri().scheme_str(), Some("http"));
                let headers = request.headers();
                assert_eq!(headers["x-verifier-run"], "key-1");
                assert_eq!(headers["accept"], "*/*");
                for gone in ["connection", "upgrade", "http2-settings", "host", "te"] {
                    assert!(!headers.contains_key(gone), "{gone}");
                }
                assert_eq!(headers.contains_key("x-big-39"), big);
                assert!(request.body().is_end_stream());
            });
        }
    }

    #[test]
    fn the_first_settings_ack_is_dropped_whatever_the_split() {
        let mut frames = Vec::new();
        frame_header(&mut frames, 6, FRAME_SETTINGS, 0, 0);
        frames.extend_from_slice(&[0, 3, 0, 0, 0, 100]);
        frame_header(&mut frames, 4, 0x8, 0, 0); // WINDOW_UPDATE
        frames.extend_from_slice(&[0, 1, 0, 0]);
        let first_ack = frames.len();
        frame_header(&mut frames, 0, FRAME_SETTINGS, FLAG_ACK, 0);
        let second_ack = frames.len();
        frame_header(&mut frames, 0, FRAME_SETTINGS, FLAG_ACK, 0);
        frame_header(&mut frames, 3, FRAME_HEADERS, FLAG_END_HEADERS, 1);
        frames.extend_from_slice(&[0x88, 0x0f, 0x10]);
        let mut expected = frames[..first_ack].to_vec();
        expected.extend_from_slice(&frames[second_ack..]);
        assert_eq!(expected.len(), frames.len() - 9);
        assert_eq!(
            &frames[first_ack..second_ack],
            &frames[second_ack..second_ack + 9]
        );
        for step in 1..=frames.len() {
            let mut filter = FirstSettingsAck::default();
            let mut out = Vec::new();
            for piece in frames.chunks(step) {
                filter.filter(piece, &mut out);
            }
            assert_eq!(out, expected, "split every {step} bytes");
            assert!(filter.is_done());
        }
    }
}
