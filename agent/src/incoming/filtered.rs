//! Filtered steal: a stolen connection on a port with an HTTP filter is served request by
//! request ([`super::http::serve_connection`]); the session gets the requests its filter
//! matches, the target's own process every other one, on the same client connection.
//!
//! ```text
//!  client ─► agent listener ─► serve_connection ─┬─ filter matches ─► loopback pair ─► stack
//!                                                │   (SessionConnector)  InboundConnection
//!                                                │                       peer = the client
//!                                                └─ else ─► TcpStream::connect(original)
//!                                                           (TcpConnector; leaves
//!                                                           through output, not redirected)
//! ```
//!
//! The stack relays an [`InboundConnection`]'s `TcpStream` into the session, so the session
//! connector makes a connected pair of loopback TCP sockets (a listener on `127.0.0.1:0` in
//! the target's namespace, made once per session; connect, then accept the very connection
//! made) and hands one end to the stack while the proxy writes to the other. When the
//! session refuses (nothing listens on the port there), the stack gives the end back at
//! once, the pair is dropped and the connect fails with `ConnectionRefused`, so the request
//! goes to the target. The pair costs two loopback sockets and a copy per session
//! connection; an in-process stream handed to the stack would spare both.
//!
//! Every request that reaches the target crosses the agent twice (the request in, the answer
//! back): the client's and the target's sockets are wrapped so that bytes through them kick
//! the agent's busy poll ([`crate::busy_poll`]), and the answer is taken without a wake-up of
//! the agent's thread when it comes within the window.
//!
//! Which sessions a port's requests may go to is the port's routes (`super::share`: this
//! session's own filter and those of other sessions sharing the port). The proxy's futures
//! are not `Send` (its routes are `Rc`): each connection is a task of the agent thread's
//! `LocalSet`.

use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Mutex};

use super::http::{self, BoxedStream, Connector, Routes, TcpConnector};
use crate::busy_poll::{BusyPoll, Kicking};
use crate::stack::inbound::{InboundConnection, InboundSender};

/// How long making a loopback pair may take before it counts as failed.
const PAIR_TIMEOUT: Duration = Duration::from_secs(1);

/// The loopback listener session connections are paired through.
pub struct Pairs {
    listener: TcpListener,
    /// One pair at a time, so the connection accepted is the one just made.
    turn: Mutex<()>,
}

impl Pairs {
    pub fn bind() -> io::Result<Self> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            listener: TcpListener::from_std(listener)?,
            turn: Mutex::new(()),
        })
    }

    /// A connected pair of loopback sockets: (the end that connected, the end accepted).
    async fn pair(&self) -> io::Result<(TcpStream, TcpStream)> {
        let _turn = self.turn.lock().await;
        let made = async {
            let near = TcpStream::connect(self.listener.local_addr()?).await?;
            let near_addr = near.local_addr()?;
            loop {
                let (far, from) = self.listener.accept().await?;
                // Anyone in the namespace may connect to the listener: take only ours.
                if from == near_addr {
                    near.set_nodelay(true)?;
                    far.set_nodelay(true)?;
                    return Ok((near, far));
                }
            }
        };
        tokio::time::timeout(PAIR_TIMEOUT, made)
            .await
            .unwrap_or_else(|_| Err(io::Error::other("no loopback pair in time")))
    }
}

/// Opens a connection into the session, from the original client's address.
pub struct SessionConnector {
    pub pairs: Arc<Pairs>,
    pub stack: InboundSender,
    pub peer: SocketAddr,
    pub session: SocketAddr,
}

impl SessionConnector {
    /// Opens the connection into the session: the local end of a loopback pair whose other
    /// end the stack relays into the session, once the session accepted.
    pub async fn open(&self) -> io::Result<TcpStream> {
        let (near, far) = self.pairs.pair().await?;
        let (done, outcome) = oneshot::channel();
        let conn = InboundConnection {
            peer: self.peer,
            session: self.session,
            stream: far,
            done,
        };
        if self.stack.send(conn).is_err() {
            return Err(io::Error::other("the stack is gone"));
        }
        match outcome.await {
            Ok(Ok(())) => Ok(near),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "the session did not take the connection",
            )),
            Err(_) => Err(io::Error::other("the stack dropped the connection")),
        }
    }
}

impl Connector for SessionConnector {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + '_>> {
        Box::pin(async move { Ok(Box::new(self.open().await?) as BoxedStream) })
    }
}

/// Connects like `inner`, the stream kicking `poll` on traffic.
struct KickingConnector<C> {
    inner: C,
    poll: BusyPoll,
}

impl<C: Connector> Connector for KickingConnector<C> {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + '_>> {
        Box::pin(async move {
            let stream = self.inner.connect().await?;
            Ok(Box::new(Kicking::new(stream, self.poll.clone())) as BoxedStream)
        })
    }
}

/// Serves `client` (from `peer`, to the target's listener at `original`) request by request
/// over `routes`, on a task of the thread's `LocalSet`, holding `permit` (the agent's count
/// of connections in hand) until the connection ends.
pub fn spawn(
    client: TcpStream,
    routes: impl Routes + 'static,
    peer: SocketAddr,
    original: SocketAddr,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    tokio::task::spawn_local(async move {
        let _permit = permit;
        // Bytes through the client's and the target's sockets keep the runtime polling
        // briefly for the answer (see `busy_poll`); a session's own are the stack's traffic.
        let (client, target): (BoxedStream, Rc<dyn Connector>) = match BusyPoll::process() {
            Some(poll) => (
                Box::new(Kicking::new(client, poll.clone())),
                Rc::new(KickingConnector {
                    inner: TcpConnector(original),
                    poll,
                }),
            ),
            None => (Box::new(client), Rc::new(TcpConnector(original))),
        };
        match http::serve_connection(client, &routes, target).await {
            Ok(()) => tracing::debug!(%peer, "filtered connection done"),
            Err(err) => tracing::debug!(%peer, "filtered connection: {err}"),
        }
    });
}
