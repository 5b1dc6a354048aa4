//! A stand-in API server for unit tests: a tower service that answers requests, in order,
//! with recorded responses, and keeps what it was sent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::{Request, Response};
use kube::client::Body;

/// One expected request (method, path without the query) and its recorded answer.
pub struct Reply {
    method: &'static str,
    path: String,
    query: Option<String>,
    status: u16,
    content_type: &'static str,
    body: &'static str,
}

impl Reply {
    pub fn json(method: &'static str, uri: &str, body: &'static str) -> Self {
        Self::status(200, method, uri, body)
    }

    pub fn status(status: u16, method: &'static str, uri: &str, body: &'static str) -> Self {
        let (path, query) = match uri.split_once('?') {
            Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
            None => (uri.to_owned(), None),
        };
        Self {
            method,
            path,
            query,
            status,
            content_type: "application/json",
            body,
        }
    }

    pub fn text(method: &'static str, uri: &str, body: &'static str) -> Self {
        Self {
            content_type: "text/plain",
            ..Self::status(200, method, uri, body)
        }
    }
}

/// (method, URI, content type, body) of a request the service received.
pub type Sent = (String, String, Option<String>, Vec<u8>);

#[derive(Clone)]
pub struct Replay {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl Replay {
    pub fn new(replies: Vec<Reply>) -> Self {
        Self {
            replies: Arc::new(Mutex::new(replies.into())),
            sent: Arc::default(),
        }
    }

    pub fn requests(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    pub fn unused(&self) -> usize {
        self.replies.lock().unwrap().len()
    }
}

impl tower::Service<Request<Body>> for Replay {
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let replies = self.replies.clone();
        let sent = self.sent.clone();
        Box::pin(async move {
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let content_type = request
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = request
                .into_body()
                .collect_bytes()
                .await
                .map(|bytes| bytes.to_vec())
                .unwrap_or_default();
            sent.lock()
                .unwrap()
                .push((method.clone(), uri.clone(), content_type, body));
            let reply = replies
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| panic!("unexpected request {method} {uri}"));
            let (path, query) = match uri.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (uri.as_str(), None),
            };
            assert_eq!(
                (method.as_str(), path),
                (reply.method, reply.path.as_str()),
                "requests out of the recorded order"
            );
            if let Some(expected) = &reply.query {
                assert_eq!(query, Some(expected.as_str()), "query of {path}");
            }
            Ok(Response::builder()
                .status(reply.status)
                .header(http::header::CONTENT_TYPE, reply.content_type)
                .body(Body::from(reply.body.as_bytes().to_vec()))
                .expect("valid response"))
        })
    }
}
