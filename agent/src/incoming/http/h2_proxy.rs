//! The HTTP/2 side of the filter (cleartext, prior knowledge): each stream routed on its own.
//!
//! The client's connection is served with the `h2` crate's server, the upstreams are reached
//! with its client, one HTTP/2 connection per upstream per client connection, opened at the
//! first stream routed there and shared by the following ones (HTTP/2 multiplexes, so no
//! ordering question arises). Each stream:
//!
//! ```text
//!  client stream ─ head ─▶ filter ─▶ upstream connection (A, B or target)
//!       body frames ──────────────▶ request body   (flow control: data is released to the
//!       ◀────────────── response head, body, trailers         client as the upstream takes it)
//! ```
//!
//! The filter sees the header names as HTTP/2 sends them (lowercase) plus a `host` header made
//! from `:authority` when the request has no `host`, so that a filter written for HTTP/1.1's
//! `Host` works on both. The request is forwarded with the same pseudo-headers, headers, body
//! and trailers, the answer likewise. A route whose upstream cannot be reached loses the
//! stream to the target; when the target cannot be reached either the stream gets a 502.
//!
//! Concurrency without tasks: the connection's accept loop, every stream and every upstream
//! connection's driver are futures polled by [`serve`] itself (two `FuturesUnordered`, one
//! for the streams and one for the upstream drivers, which streams hand over through an
//! inbox). When the client's connection ends and its streams are done, dropping the drivers
//! closes the upstream connections.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

use super::filter::RequestHead;
use super::routes::{BoxedStream, Connector, Routes};

/// Streams opened on a new upstream connection before its SETTINGS tell its limit.
const INITIAL_MAX_STREAMS: usize = 100;
/// Streams a client may have open at once (h2 sets no limit of its own): each is a request
/// the agent routes and forwards, so a client's concurrency is bounded as its pipelining is
/// on HTTP/1.1 (`h1_proxy::MAX_PIPELINED`). Header lists are bounded like HTTP/1.1 heads.
const MAX_CLIENT_STREAMS: u32 = 1024;

type LocalFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Serves an HTTP/2 client whose first bytes (the preface at least) are in `buf`.
pub async fn serve(
    client: BoxedStream,
    buf: BytesMut,
    routes: &dyn Routes,
    target: Rc<dyn Connector>,
) -> io::Result<()> {
    let client = Prefixed {
        prefix: buf,
        inner: client,
    };
    let mut connection = h2::server::Builder::new()
        .max_concurrent_streams(MAX_CLIENT_STREAMS)
        .max_header_list_size(super::h1::MAX_HEAD as u32)
        .handshake(client)
        .await
        .map_err(io::Error::other)?;
    let ctx = Ctx {
        routes,
        target,
        upstreams: RefCell::new(Vec::new()),
        inbox: RefCell::new(Vec::new()),
        inbox_ready: Notify::new(),
        opening: tokio::sync::Mutex::new(()),
    };
    let mut streams: FuturesUnordered<LocalFuture<'_>> = FuturesUnordered::new();
    let mut drivers: FuturesUnordered<LocalFuture<'static>> = FuturesUnordered::new();
    let mut accepting = true;
    let mut result = Ok(());
    while accepting || !streams.is_empty() {
        drivers.extend(ctx.inbox.borrow_mut().drain(..));
        tokio::select! {
            next = connection.accept(), if accepting => match next {
                Some(Ok((request, respond))) => streams.push(Box::pin(stream(&ctx, request, respond))),
                Some(Err(error)) => {
                    accepting = false;
                    if !error.is_go_away() && !error.is_io() {
                        result = Err(io::Error::other(error));
                    }
                }
                None => accepting = false,
            },
            Some(()) = streams.next(), if !streams.is_empty() => {}
            Some(()) = drivers.next(), if !drivers.is_empty() => {}
            () = ctx.inbox_ready.notified() => {}
        }
    }
    result
}

struct Ctx<'r> {
    routes: &'r dyn Routes,
    target: Rc<dyn Connector>,
    upstreams: RefCell<Vec<Upstream>>,
    /// Drivers of upstream connections opened by streams, for [`serve`] to poll.
    inbox: RefCell<Vec<LocalFuture<'static>>>,
    inbox_ready: Notify,
    /// Held while a stream looks for or opens an upstream connection.
    opening: tokio::sync::Mutex<()>,
}

struct Upstream {
    connector: Rc<dyn Connector>,
    sender: SendRequest<Bytes>,
    alive: Rc<Cell<bool>>,
}

impl Ctx<'_> {
    /// A request sender on `connector`'s upstream connection, opened if needed.
    ///
    /// Opening is done by one stream at a time: streams that arrive together (a client opens
    /// hundreds at once) wait for the first one's connection and share it instead of each
    /// opening their own.
    async fn sender(&self, connector: &Rc<dyn Connector>) -> io::Result<SendRequest<Bytes>> {
        let key = Rc::as_ptr(connector) as *const ();
        let _opening = self.opening.lock().await;
        {
            let mut upstreams = self.upstreams.borrow_mut();
            upstreams.retain(|u| u.alive.get());
            if let Some(u) = upstreams
                .iter()
                .find(|u| Rc::as_ptr(&u.connector) as *const () == key)
            {
                return Ok(u.sender.clone());
            }
        }
        let io = connector.connect().await?;
        // Until the upstream's SETTINGS arrive the limit on concurrent streams is unknown
        // (unlimited, says RFC 9113); a server may refuse streams beyond its own. 100 is the
        // least a server should allow (RFC 9113 §6.5.2), so streams that arrive together
        // before the SETTINGS wait instead of being refused.
        let (sender, connection) = h2::client::Builder::new()
            .initial_max_send_streams(INITIAL_MAX_STREAMS)
            .handshake(io)
            .await
            .map_err(io::Error::other)?;
        let alive = Rc::new(Cell::new(true));
        let driver_alive = alive.clone();
        self.inbox.borrow_mut().push(Box::pin(async move {
            let _ = connection.await;
            driver_alive.set(false);
        }));
        self.inbox_ready.notify_one();
        self.upstreams.borrow_mut().push(Upstream {
            connector: connector.clone(),
            sender: sender.clone(),
            alive,
        });
        Ok(sender)
    }
}

/// One client stream, routed and proxied; failures reset or answer 502.
async fn stream(ctx: &Ctx<'_>, request: Request<RecvStream>, mut respond: SendResponse<Bytes>) {
    if let Err(error) = proxy_stream(ctx, request, &mut respond).await {
        tracing::debug!(%error, "HTTP/2 stream failed");
        let bad_gateway = Response::builder()
            .status(502)
            .body(())
            .expect("a valid response");
        if respond.send_response(bad_gateway, true).is_err() {
            respond.send_reset(h2::Reason::INTERNAL_ERROR);
        }
    }
}

async fn proxy_stream(
    ctx: &Ctx<'_>,
    request: Request<RecvStream>,
    respond: &mut SendResponse<Bytes>,
) -> io::Result<()> {
    let (parts, body) = request.into_parts();
    let matched = {
        let mut headers: Vec<httparse::Header> = parts
            .headers
            .iter()
            .map(|(name, value)| httparse::Header {
                name: name.as_str(),
                value: value.as_bytes(),
            })
            .collect();
        if !parts.headers.contains_key(http::header::HOST) {
            if let Some(authority) = parts.uri.authority() {
                headers.push(httparse::Header {
                    name: "host",
                    value: authority.as_str().as_bytes(),
                });
            }
        }
        let head = RequestHead {
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            headers: &headers,
        };
        let routes = ctx.routes.current();
        let found = routes.iter().find(|r| r.filter.matches(&head));
        found.map(|route| route.upstream.clone())
    };
    let sender = match matched {
        Some(upstream) => match ctx.sender(&upstream).await {
            Ok(sender) => sender,
            Err(_) => ctx.sender(&ctx.target).await?,
        },
        None => ctx.sender(&ctx.target).await?,
    };
    let mut sender = sender.ready().await.map_err(io::Error::other)?;
    let upload_done = body.is_end_stream();
    let (response, upload) = sender
        .send_request(Request::from_parts(parts, ()), upload_done)
        .map_err(io::Error::other)?;
    let upload = async {
        if !upload_done {
            pump(body, upload).await
        } else {
            Ok(())
        }
    };
    let download = async {
        let response = response.await.map_err(io::Error::other)?;
        let (parts, body) = response.into_parts();
        let done = body.is_end_stream();
        let send = respond
            .send_response(Response::from_parts(parts, ()), done)
            .map_err(io::Error::other)?;
        if !done {
            // The head is out: a failure from here on can only reset the stream.
            if let Err(error) = pump(body, send).await {
                tracing::debug!(%error, "HTTP/2 answer body failed");
            }
        }
        Ok::<_, io::Error>(())
    };
    let (uploaded, downloaded) = futures_util::future::join(upload, download).await;
    if let Err(error) = uploaded {
        tracing::debug!(%error, "HTTP/2 request body failed");
    }
    downloaded
}

/// Copies a body and its trailers from one stream to another, releasing flow-control credit
/// to the sender only as the receiver takes the data.
async fn pump(mut from: RecvStream, mut to: SendStream<Bytes>) -> io::Result<()> {
    while let Some(chunk) = from.data().await {
        let mut chunk = chunk.map_err(io::Error::other)?;
        let len = chunk.len();
        while !chunk.is_empty() {
            to.reserve_capacity(chunk.len());
            match poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(0)) => {}
                Some(Ok(n)) => {
                    let part = chunk.split_to(n.min(chunk.len()));
                    to.send_data(part, false).map_err(io::Error::other)?;
                }
                Some(Err(error)) => return Err(io::Error::other(error)),
                None => return Err(io::Error::other("stream closed by its receiver")),
            }
        }
        from.flow_control()
            .release_capacity(len)
            .map_err(io::Error::other)?;
    }
    match from.trailers().await.map_err(io::Error::other)? {
        Some(trailers) => to.send_trailers(trailers),
        None => to.send_data(Bytes::new(), true),
    }
    .map_err(io::Error::other)
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: BytesMut,
    inner: BoxedStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
