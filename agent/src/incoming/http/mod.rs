//! Per-request routing of a stolen HTTP connection: requests a session's filter matches go to
//! that session, every other one to the target's own process, on the same client connection.
//!
//! ```text
//!                         ┌─ matches route 1's filter ─▶ route 1's upstream (a session)
//!  client ── connection ──┼─ matches route 2's filter ─▶ route 2's upstream
//!                         └─ matches none ────────────▶ target (the pod's own process)
//! ```
//!
//! [`serve_connection`] takes one accepted client connection and first sniffs it: the first
//! bytes must arrive within [`SNIFF_TIMEOUT`] and be an HTTP/1.x request line ([`h1_proxy`]) or
//! the HTTP/2 connection preface ([`h2_proxy`], cleartext with prior knowledge). A first request
//! that asks for `Upgrade: h2c` is accepted on the target's behalf when the target speaks
//! HTTP/2 ([`h2c_upgrade`]), and the connection then goes to [`h2_proxy`] too. Anything else
//! (a silent client, a server-speaks-first protocol, TLS, a binary protocol) is piped to the
//! target untouched, the bytes read while sniffing replayed first.
//!
//! Then every request is decided on its own: [`Routes::current`] is asked for the routes as
//! they are at that moment (sessions come and go while a keep-alive connection lives), in
//! order, and the first whose [`HttpFilter`] matches takes the request. A client connection
//! keeps at most one upstream connection per [`Connector`] (compared by `Rc` identity) and
//! reuses it for the following requests, opening a new one when the old one was closed. A
//! route whose connector fails (the session's listener is not up, or crashed) loses the
//! request to the target: no request is refused or held because a session is not ready.
//!
//! A connector is tried once per request while it fails, so it should fail fast (a refused
//! connection, not a timeout) when the session's listener is not up.
//!
//! Everything runs inside the one future [`serve_connection`] returns: no task is spawned,
//! nothing needs `Send` or a `LocalSet`, and dropping the future closes every connection it
//! opened. Connectors should set `TCP_NODELAY` on the sockets they make: small requests and
//! answers are forwarded as they are parsed, never held for more.

pub mod h1;
pub mod h1_proxy;
pub mod h2_proxy;
pub mod h2c_upgrade;
mod routes;

use std::io;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use filter::{FilterError, HttpFilter, RequestHead};
/// The filters live in the protocol crate, so the client compiles them too (a bad regex is
/// the user's error before anything starts).
pub use mirrord_net_protocol::http_filter as filter;
pub use routes::{AsyncReadWrite, BoxedStream, Connector, OneRoute, Route, Routes, TcpConnector};

/// How long a client may stay silent before its connection goes to the target untouched.
pub const SNIFF_TIMEOUT: Duration = Duration::from_millis(200);

pub use h2c_upgrade::H2_PREFACE;

/// The protocol a client speaks, as far as its first bytes tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    Http1,
    Http2,
    Other,
}

/// Serves one client connection: HTTP requests routed one by one, anything else piped to the
/// target. Returns when both sides are done; an error names what broke the connection.
pub async fn serve_connection(
    mut client: BoxedStream,
    routes: &dyn Routes,
    target: Rc<dyn Connector>,
) -> io::Result<()> {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let kind = match tokio::time::timeout(SNIFF_TIMEOUT, sniff(&mut client, &mut buf)).await {
        Ok(kind) => kind?,
        Err(_elapsed) => Sniffed::Other,
    };
    match kind {
        Sniffed::Http1 => {
            if let Some(preamble) = h2c_upgrade::offered(&mut client, &mut buf).await? {
                if h2c_upgrade::speaks_h2(&*target).await {
                    let (client, fed) = h2c_upgrade::accept(client, preamble).await?;
                    return h2_proxy::serve(client, fed, routes, target).await;
                }
            }
            h1_proxy::serve(client, buf, routes, target).await
        }
        Sniffed::Http2 => h2_proxy::serve(client, buf, routes, target).await,
        Sniffed::Other => passthrough(client, &buf, &*target).await,
    }
}

/// Reads until the first bytes tell the protocol (or the client closes).
async fn sniff(client: &mut BoxedStream, buf: &mut BytesMut) -> io::Result<Sniffed> {
    loop {
        if let Some(kind) = classify(buf) {
            return Ok(kind);
        }
        if client.read_buf(buf).await? == 0 {
            return Ok(Sniffed::Other);
        }
    }
}

/// Longest request line the sniffer waits for.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Classifies a connection's first bytes; `None` while they could still become either.
pub fn classify(bytes: &[u8]) -> Option<Sniffed> {
    if bytes.starts_with(H2_PREFACE) {
        return Some(Sniffed::Http2);
    }
    if H2_PREFACE.starts_with(bytes) && !bytes.is_empty() && bytes.len() < H2_PREFACE.len() {
        // "PRI * HTTP/2.0" could not be an HTTP/1.x line anyway: wait for the whole preface.
        return None;
    }
    // method SP request-target SP "HTTP/1." digit CRLF
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let method_len = bytes.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == bytes.len() {
        return (bytes.len() > MAX_REQUEST_LINE).then_some(Sniffed::Other);
    }
    if method_len == 0 || bytes[method_len] != b' ' {
        return Some(Sniffed::Other);
    }
    let rest = &bytes[method_len + 1..];
    let target_len = rest.iter().take_while(|&&b| b > b' ' && b != 0x7f).count();
    if target_len == rest.len() {
        return (bytes.len() > MAX_REQUEST_LINE).then_some(Sniffed::Other);
    }
    if target_len == 0 || rest[target_len] != b' ' {
        return Some(Sniffed::Other);
    }
    let version = &rest[target_len + 1..];
    const HTTP1: &[u8] = b"HTTP/1.";
    let expected_len = HTTP1.len() + 2; // a digit and CR or LF
    let seen = &version[..version.len().min(expected_len)];
    let ok_so_far = seen.iter().enumerate().all(|(i, &b)| match i {
        i if i < HTTP1.len() => b == HTTP1[i],
        i if i == HTTP1.len() => b.is_ascii_digit(),
        _ => b == b'\r' || b == b'\n',
    });
    match (ok_so_far, seen.len() == expected_len) {
        (false, _) => Some(Sniffed::Other),
        (true, true) => Some(Sniffed::Http1),
        (true, false) => None,
    }
}

/// Pipes the client to the target unchanged, `sniffed` (the bytes already read) first.
pub async fn passthrough(
    mut client: BoxedStream,
    sniffed: &[u8],
    target: &dyn Connector,
) -> io::Result<()> {
    let mut upstream = target.connect().await?;
    upstream.write_all(sniffed).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_the_protocol() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(classify(b"M-SEARCH * HTTP/1.0\n"), Some(Sniffed::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Sniffed::Http2));
        for partial in [
            &b"G"[..],
            b"GET",
            b"GET /x",
            b"GET /x HTTP/1",
            b"GET / HTTP/1.1",
            b"PRI * HT",
        ] {
            assert_eq!(classify(partial), None, "{partial:?}");
        }
        for other in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"SSH-2.0-OpenSSH\r\n",
            b"GET / HTTP/2.0\r\n",
            b"GET  / HTTP/1.1\r\n",
            b"hello world\n",
            b"*1\r\n$4\r\nPING\r\n",
        ] {
            assert_eq!(classify(other), Some(Sniffed::Other), "{other:?}");
        }
        assert_eq!(
            classify(&[b'A'; MAX_REQUEST_LINE + 1]),
            Some(Sniffed::Other)
        );
    }
}
