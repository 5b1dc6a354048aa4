//! The HTTP/1.1 side of the filter: one client connection, each request routed on its own,
//! answers returned in request order.
//!
//! Two halves run inside one future and meet at a queue:
//!
//! ```text
//!  client ─▶ requests ── head parsed, route chosen ─▶ upstream A / B / target (writes)
//!               │ push (upstream's read side, HEAD?, upgrade?)
//!               ▼
//!            queue ─▶ responses ── reads the answer from the queued upstream ─▶ client
//! ```
//!
//! *requests* parses each head ([`super::h1`]), asks the routes, forwards the head and then
//! the body bytes as they arrive to the chosen upstream, unchanged. It never waits for an
//! answer, so pipelined requests flow to their upstreams at once. *responses* takes the queue
//! in order and copies exactly one answer from that request's upstream (1xx interim answers
//! included, which is how `Expect: 100-continue` works), then the next. Answers of different
//! upstreams therefore reach the client in request order: an upstream that answers early
//! waits in its socket until its turn.
//!
//! Each client connection holds one connection per upstream ([`Slot`]), opened at its first
//! request and reused; an upstream that said `Connection: close` (or closed) is replaced at
//! the next request for it. The write side of an upstream belongs to *requests*, the read side
//! travels with the queued entries to *responses* ([`Link`]): no lock is held across an await.
//!
//! Upgrades: a request that asks to switch protocols stops the parsing of what follows (it
//! may be another protocol) until its answer is known. A 101 turns the connection into a byte
//! pipe between the client and that upstream; any other answer resumes HTTP. An `Upgrade:
//! h2c` that reaches this module (a later request's, or one [`super::h2c_upgrade`] does not
//! accept, such as any upgrade to a target that speaks only HTTP/1.1) is declined: its
//! `Upgrade`, `HTTP2-Settings` and the matching `Connection` tokens are removed, so the
//! upstream answers in HTTP/1.1 and the following requests are still routed one by one (a
//! server may always ignore an upgrade, RFC 9110 §7.8).
//!
//! At most [`MAX_PIPELINED`] requests are forwarded ahead of the answer being copied; then
//! the client is not read until that answer is done, so a client that pipelines without end
//! is held back by the answers, as a server that handles one request at a time holds it back.
//!
//! Failures: when the target itself cannot be reached the client gets `502 Bad Gateway` and
//! the connection closes. When an upstream closes a kept-alive connection before answering a
//! request already sent on it (the keep-alive race), the client gets a 502 for that request
//! and the connection closes, as a proxy must not replay a request that may have been seen.
//! A client that sends something that is not HTTP/1.1 after its first request gets the
//! answers to the requests before it, then the connection closes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use bytes::{Buf, BytesMut};
use futures_util::future::{select, Either};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;

use super::h1::{self, BodyFramer, BodyKind, RequestStream, Step, EMPTY_HEADERS};
use super::routes::{BoxedStream, Connector, Routes};

const BAD_GATEWAY: &[u8] =
    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
const BAD_REQUEST: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
/// Free space asked for before each read.
const READ_SPACE: usize = 16 * 1024;
/// Requests a client may have forwarded ahead of the answers it is waiting for. Beyond it the
/// client's connection is not read until an answer is done: a client that pipelines without
/// end towards an upstream that reads but answers slowly would otherwise grow the queue (and
/// the upstream's backlog) without bound.
pub const MAX_PIPELINED: usize = 128;

/// The read side of an upstream connection and what it knows about it.
struct Link {
    reader: Cell<Option<ReadSide>>,
    /// The upstream closes after its current answers: open a new one for the next request.
    closing: Cell<bool>,
}

struct ReadSide {
    half: ReadHalf<BoxedStream>,
    buf: BytesMut,
}

/// One upstream connection of this client connection.
struct Slot {
    connector: Rc<dyn Connector>,
    writer: WriteHalf<BoxedStream>,
    link: Rc<Link>,
}

enum Pending {
    /// A request sent on `link`: read its answer there.
    Sent {
        link: Rc<Link>,
        head_request: bool,
        upgrade: bool,
    },
    /// Answer this one with a canned response and close.
    Refuse(&'static [u8]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Upgraded,
    NotUpgraded,
}

#[derive(Default)]
struct Shared {
    queue: RefCell<VecDeque<Pending>>,
    queued: Notify,
    requests_done: Cell<bool>,
    /// An entry was taken off the queue.
    taken: Notify,
    verdict: Cell<Option<Verdict>>,
    verdict_ready: Notify,
}

impl Shared {
    fn push(&self, pending: Pending) {
        self.queue.borrow_mut().push_back(pending);
        self.queued.notify_one();
    }
}

/// Serves an HTTP/1.x client whose first bytes are in `buf`.
pub async fn serve(
    client: BoxedStream,
    mut buf: BytesMut,
    routes: &dyn Routes,
    target: Rc<dyn Connector>,
) -> io::Result<()> {
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let shared = Shared::default();
    let requests = pin(requests(
        &mut client_read,
        &mut buf,
        &shared,
        routes,
        target,
    ));
    let responses = pin(responses(&mut client_write, &shared));
    let result = match select(requests, responses).await {
        Either::Left((request_end, responses)) => {
            shared.requests_done.set(true);
            shared.queued.notify_one();
            let response_end = responses.await;
            request_end.and(response_end)
        }
        Either::Right((response_end, _requests)) => response_end,
    };
    let _ = client_write.shutdown().await;
    result
}

fn pin<'a, T>(
    future: impl std::future::Future<Output = T> + 'a,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = T> + 'a>> {
    Box::pin(future)
}

/// Reads more from the client; `false` at its end.
async fn read_more(reader: &mut ReadHalf<BoxedStream>, buf: &mut BytesMut) -> io::Result<bool> {
    buf.reserve(READ_SPACE);
    Ok(reader.read_buf(buf).await? > 0)
}

/// The request half: parse, route, forward.
async fn requests(
    client: &mut ReadHalf<BoxedStream>,
    buf: &mut BytesMut,
    shared: &Shared,
    routes: &dyn Routes,
    target: Rc<dyn Connector>,
) -> io::Result<()> {
    let mut slots: Vec<Slot> = Vec::new();
    let mut stream = RequestStream::new();
    // The slot of the request being forwarded, and whether it asked for an upgrade.
    let mut current: Option<(usize, bool)> = None;
    loop {
        if stream.expects_head() && shared.queue.borrow().len() >= MAX_PIPELINED {
            for slot in &mut slots {
                slot.writer.flush().await?;
            }
            while shared.queue.borrow().len() >= MAX_PIPELINED {
                shared.taken.notified().await;
            }
        }
        let step = if stream.expects_head() {
            let mut headers = EMPTY_HEADERS;
            match stream.feed(buf, &mut headers) {
                Ok(Step::Head(info)) => {
                    let chosen = {
                        let routes = routes.current();
                        let matched = routes.iter().find(|r| r.filter.matches(&info.head));
                        match matched {
                            Some(route) => slot_for(&mut slots, &route.upstream).await.ok(),
                            None => None,
                        }
                    };
                    let slot = match chosen {
                        Some(slot) => slot,
                        None => match slot_for(&mut slots, &target).await {
                            Ok(slot) => slot,
                            Err(error) => {
                                shared.push(Pending::Refuse(BAD_GATEWAY));
                                return Err(error);
                            }
                        },
                    };
                    let upgrade = info.upgrade && !info.h2c;
                    shared.push(Pending::Sent {
                        link: slots[slot].link.clone(),
                        head_request: info.is_head(),
                        upgrade,
                    });
                    let writer = &mut slots[slot].writer;
                    if info.h2c {
                        writer.write_all(&decline_h2c(&buf[..info.len])).await?;
                    } else {
                        writer.write_all(&buf[..info.len]).await?;
                    }
                    let len = info.len;
                    current = Some((slot, upgrade));
                    buf.advance(len);
                    continue;
                }
                other => other.map(|step| match step {
                    Step::NeedMore => None,
                    _ => unreachable!("a head step"),
                }),
            }
        } else {
            stream.feed(buf, &mut []).map(|step| match step {
                Step::Body(n) => Some(Ok(n)),
                Step::End => Some(Err(())),
                _ => None,
            })
        };
        match step {
            Err(_parse_error) => {
                // Answers to the earlier requests go out first, then this one's 400.
                shared.push(Pending::Refuse(BAD_REQUEST));
                return Ok(());
            }
            Ok(Some(Ok(n))) => {
                let (slot, _) = current.expect("a body follows a head");
                slots[slot].writer.write_all(&buf[..n]).await?;
                buf.advance(n);
            }
            Ok(Some(Err(()))) => {
                let (slot, upgrade) = current.take().expect("an end follows a head");
                if upgrade {
                    slots[slot].writer.flush().await?;
                    if wait_verdict(shared).await == Verdict::Upgraded {
                        let mut slot = slots.swap_remove(slot);
                        slot.writer.write_all(buf).await?;
                        buf.clear();
                        tokio::io::copy(client, &mut slot.writer).await?;
                        slot.writer.shutdown().await?;
                        // The answers' half ends the connection when the upstream closes.
                        return std::future::pending().await;
                    }
                }
            }
            Ok(None) => {
                for slot in &mut slots {
                    slot.writer.flush().await?;
                }
                if !read_more(client, buf).await? {
                    return Ok(());
                }
            }
        }
    }
}

async fn wait_verdict(shared: &Shared) -> Verdict {
    loop {
        if let Some(verdict) = shared.verdict.take() {
            return verdict;
        }
        shared.verdict_ready.notified().await;
    }
}

/// The slot of `connector`'s upstream, connecting when there is none or the old one closes.
async fn slot_for(slots: &mut Vec<Slot>, connector: &Rc<dyn Connector>) -> io::Result<usize> {
    let key = Rc::as_ptr(connector) as *const ();
    let found = slots
        .iter()
        .position(|slot| Rc::as_ptr(&slot.connector) as *const () == key);
    if let Some(i) = found {
        if !slots[i].link.closing.get() {
            return Ok(i);
        }
        slots.swap_remove(i);
    }
    let stream = connector.connect().await?;
    let (half, writer) = tokio::io::split(stream);
    slots.push(Slot {
        connector: connector.clone(),
        writer,
        link: Rc::new(Link {
            reader: Cell::new(Some(ReadSide {
                half,
                buf: BytesMut::with_capacity(READ_SPACE),
            })),
            closing: Cell::new(false),
        }),
    });
    Ok(slots.len() - 1)
}

/// The head without what asks for h2c: `Upgrade`, `HTTP2-Settings`, and those tokens of
/// `Connection`.
fn decline_h2c(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut lines = head.split_inclusive(|&b| b == b'\n');
    if let Some(request_line) = lines.next() {
        out.extend_from_slice(request_line);
    }
    for line in lines {
        let name_end = line.iter().position(|&b| b == b':').unwrap_or(0);
        let name = &line[..name_end];
        if name.eq_ignore_ascii_case(b"upgrade") || name.eq_ignore_ascii_case(b"http2-settings") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            let value = line[name_end + 1..].trim_ascii();
            let kept: Vec<&[u8]> = value
                .split(|&b| b == b',')
                .map(|t| t.trim_ascii())
                .filter(|t| {
                    !t.is_empty()
                        && !t.eq_ignore_ascii_case(b"upgrade")
                        && !t.eq_ignore_ascii_case(b"http2-settings")
                })
                .collect();
            if !kept.is_empty() {
                out.extend_from_slice(b"Connection: ");
                out.extend_from_slice(&kept.join(&b", "[..]));
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        out.extend_from_slice(line);
    }
    out
}

/// The answer half: copy each queued request's answer to the client, in order.
async fn responses(client: &mut WriteHalf<BoxedStream>, shared: &Shared) -> io::Result<()> {
    loop {
        let pending = loop {
            let next = shared.queue.borrow_mut().pop_front();
            if let Some(pending) = next {
                shared.taken.notify_one();
                break Some(pending);
            }
            if shared.requests_done.get() {
                break None;
            }
            client.flush().await?;
            shared.queued.notified().await;
        };
        let (link, head_request, upgrade) = match pending {
            None => return Ok(()),
            Some(Pending::Refuse(canned)) => {
                client.write_all(canned).await?;
                return Ok(());
            }
            Some(Pending::Sent {
                link,
                head_request,
                upgrade,
            }) => (link, head_request, upgrade),
        };
        let mut side = link.reader.take().expect("one answer read at a time");
        match answer(client, &mut side, head_request, upgrade).await? {
            Answered::Done { close } => {
                if close {
                    link.closing.set(true);
                }
                link.reader.set(Some(side));
                if upgrade {
                    shared.verdict.set(Some(Verdict::NotUpgraded));
                    shared.verdict_ready.notify_one();
                }
            }
            Answered::Upgraded => {
                shared.verdict.set(Some(Verdict::Upgraded));
                shared.verdict_ready.notify_one();
                client.write_all(&side.buf).await?;
                client.flush().await?;
                tokio::io::copy(&mut side.half, client).await?;
                return Ok(());
            }
            Answered::Closed => {
                // Also ends the client connection: the answer ran until the upstream closed.
                return Ok(());
            }
            Answered::Lost => {
                client.write_all(BAD_GATEWAY).await?;
                return Ok(());
            }
        }
    }
}

enum Answered {
    /// One final answer copied; `close` when the upstream closes after it.
    Done { close: bool },
    /// A 101 copied: the rest is a byte pipe.
    Upgraded,
    /// An answer that ran until the upstream closed.
    Closed,
    /// The upstream closed before any byte of the answer.
    Lost,
}

/// Copies one final answer (and the 1xx before it) from `side` to the client.
async fn answer(
    client: &mut WriteHalf<BoxedStream>,
    side: &mut ReadSide,
    head_request: bool,
    upgrade: bool,
) -> io::Result<Answered> {
    let mut sent_any = false;
    loop {
        let parsed = {
            let mut headers = EMPTY_HEADERS;
            h1::parse_response(&side.buf, &mut headers, head_request)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        };
        let Some(info) = parsed else {
            client.flush().await?;
            side.buf.reserve(READ_SPACE);
            if side.half.read_buf(&mut side.buf).await? == 0 {
                if !sent_any && side.buf.is_empty() {
                    return Ok(Answered::Lost);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            continue;
        };
        sent_any = true;
        if (100..200).contains(&info.status) {
            client.write_all(&side.buf[..info.len]).await?;
            side.buf.advance(info.len);
            if info.status == 101 && upgrade {
                return Ok(Answered::Upgraded);
            }
            continue;
        }
        // The head and the part of the body already read go out in one write (one segment
        // for a small answer: the client wakes once).
        let mut framer = BodyFramer::new(info.body);
        let first = framer
            .feed(&side.buf[info.len..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        client
            .write_all(&side.buf[..info.len + first.consumed])
            .await?;
        side.buf.advance(info.len + first.consumed);
        while !framer.is_done() {
            let progress = framer
                .feed(&side.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if progress.consumed > 0 {
                client.write_all(&side.buf[..progress.consumed]).await?;
                side.buf.advance(progress.consumed);
            }
            if progress.done {
                break;
            }
            client.flush().await?;
            side.buf.reserve(READ_SPACE);
            if side.half.read_buf(&mut side.buf).await? == 0 {
                if info.body == BodyKind::UntilClose {
                    return Ok(Answered::Closed);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        return Ok(Answered::Done { close: info.close });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2c_upgrade_is_declined() {
        let head =
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\n\
Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nX-A: 1\r\n\r\n";
        let out = decline_h2c(head);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive\r\nX-A: 1\r\n\r\n"
        );
        let only = b"GET / HTTP/1.1\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n";
        assert_eq!(decline_h2c(only), b"GET / HTTP/1.1\r\n\r\n");
    }
}
