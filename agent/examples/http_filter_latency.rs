//! Latency of a keep-alive HTTP/1.1 request through the HTTP filter against the same request
//! sent directly, on loopback.
//!
//! `cargo run --release -p mirrord-net-agent --example http_filter_latency [REQUESTS]`
//!
//! A minimal keep-alive server (one thread) answers every request with a fixed 2-byte body;
//! the filter (`serve_connection`, one thread, current-thread runtime like the agent's) has
//! one route with a header filter. A blocking client (the main thread) sends one request at a
//! time and waits for its answer, three ways: straight to the server, through the filter
//! without the route's header (goes to the target), and through the filter with it (goes to
//! the route's upstream, a second server of the same kind). Prints p50, p90 and p99.

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrord_net_agent::incoming::http::{
    serve_connection, BoxedStream, Connector, HttpFilter, Route, Routes,
};
use tokio::net::{TcpListener, TcpStream};

const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nv1";

/// A keep-alive server: reads heads, answers each with `ANSWER`.
fn server() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            stream.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(4096);
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        if stream.write_all(ANSWER).is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

struct Tcp(SocketAddr);

impl Connector for Tcp {
    fn connect(&self) -> Pin<Box<dyn Future<Output = io::Result<BoxedStream>> + '_>> {
        Box::pin(async move {
            let stream = TcpStream::connect(self.0).await?;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxedStream)
        })
    }
}

struct OneRoute(Route);

impl Routes for OneRoute {
    fn current(&self) -> Vec<Route> {
        vec![self.0.clone()]
    }
}

/// The filter on its own thread; its address.
fn filter(target: SocketAddr, session: SocketAddr) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let filter = HttpFilter::new(Some("^x-run: bench$"), None, None).unwrap();
            let routes = Rc::new(OneRoute(Route {
                filter: Arc::new(filter),
                upstream: Rc::new(Tcp(session)),
            }));
            let target: Rc<dyn Connector> = Rc::new(Tcp(target));
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (routes, target) = (routes.clone(), target.clone());
                tokio::task::spawn_local(async move {
                    let _ = serve_connection(Box::new(stream), &*routes, target).await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

/// Latencies of `n` sequential requests on one connection (after a warm-up).
fn measure(addr: SocketAddr, header: &str, n: usize) -> Vec<Duration> {
    let mut stream = StdStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let request =
        format!("GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n{header}\r\n");
    let mut answer = [0u8; ANSWER.len()];
    let mut once = |stream: &mut StdStream| {
        let start = Instant::now();
        stream.write_all(request.as_bytes()).unwrap();
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(answer, ANSWER);
        start.elapsed()
    };
    for _ in 0..n / 10 {
        once(&mut stream);
    }
    let mut times: Vec<Duration> = (0..n).map(|_| once(&mut stream)).collect();
    times.sort();
    times
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |s| s.parse().expect("REQUESTS is a number"));
    let (target, session) = (server(), server());
    let through = filter(target, session);
    let direct = measure(target, "", n);
    let unmatched = measure(through, "x-other: 1\r\n", n);
    let matched = measure(through, "X-Run: bench\r\n", n);
    let pct = |times: &[Duration], p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!("{n} keep-alive requests each, loopback, microseconds");
    println!("{:<28} {:>8} {:>8} {:>8}", "path", "p50", "p90", "p99");
    for (name, times) in [
        ("direct", &direct),
        ("filter, unmatched → target", &unmatched),
        ("filter, matched → route", &matched),
    ] {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{name:<28} {:>8.1} {:>8.1} {:>8.1}",
            us(pct(times, 50)),
            us(pct(times, 90)),
            us(pct(times, 99))
        );
    }
    let ratio = pct(&unmatched, 50).as_secs_f64() / pct(&direct, 50).as_secs_f64();
    println!("unmatched p50 / direct p50 = {ratio:.2}");
}
