//! Where a request may go: a [`Connector`] opens a connection to one upstream (a session's
//! listener, or the target), a [`Route`] pairs a session's filter with its connector, and
//! [`Routes`] are a port's routes as they are now. The proxies of both HTTP versions and the
//! callers that build routes import these from here (re-exported by the parent module).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::filter::HttpFilter;

/// A byte stream in both directions.
pub trait AsyncReadWrite: AsyncRead + AsyncWrite {}
impl<T: AsyncRead + AsyncWrite + ?Sized> AsyncReadWrite for T {}

pub type BoxedStream = Box<dyn AsyncReadWrite + Unpin>;

/// Opens a connection to one upstream (a session's listener, or the target).
pub trait Connector {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + '_>>;
}

/// A session's claim on the port: its filter and where its requests go.
#[derive(Clone)]
pub struct Route {
    pub filter: Arc<HttpFilter>,
    pub upstream: Rc<dyn Connector>,
}

/// The routes of a port as they are now, first match wins.
pub trait Routes {
    fn current(&self) -> Vec<Route>;
}

/// A plain TCP connect to one address, with `TCP_NODELAY` (the target's own listener).
pub struct TcpConnector(pub SocketAddr);

impl Connector for TcpConnector {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + '_>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(self.0).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}

/// Routes that are always the same one route (one session's filter).
pub struct OneRoute(pub Route);

impl Routes for OneRoute {
    fn current(&self) -> Vec<Route> {
        vec![self.0.clone()]
    }
}
