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
//! the route's upstream, a second server of the same kind); and, for reference, through a
//! plain TCP relay (what any extra hop costs). Prints p50, p90 and p99.
//!
//! On a busy two-core machine the thread wake-ups dominate (each path swings between about 4
//! and 40 µs depending on which core a thread lands on); `taskset -c 1` in front of the
//! command puts every thread on one core and gives steady figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mirrord_net_agent::incoming::http::{
    serve_connection, Connector, HttpFilter, OneRoute, Route, TcpConnector,
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

/// A plain TCP relay (tokio's `copy_bidirectional`) on its own thread, the reference cost of
/// any extra hop; its address.
fn relay(target: SocketAddr) -> SocketAddr {
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
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                stream.set_nodelay(true).unwrap();
                tokio::task::spawn_local(async move {
                    let mut upstream = TcpStream::connect(target).await.unwrap();
                    upstream.set_nodelay(true).unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
                });
            }
        });
    });
    rx.recv().unwrap()
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
                upstream: Rc::new(TcpConnector(session)),
            }));
            let target: Rc<dyn Connector> = Rc::new(TcpConnector(target));
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

/// One keep-alive client connection and its request.
struct Client {
    stream: StdStream,
    request: Vec<u8>,
    times: Vec<Duration>,
}

impl Client {
    fn new(addr: SocketAddr, header: &str) -> Self {
        let stream = StdStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        let request =
            format!("GET /bench HTTP/1.1\r\nHost: bench\r\nUser-Agent: bench\r\n{header}\r\n");
        Self {
            stream,
            request: request.into_bytes(),
            times: Vec::new(),
        }
    }

    /// `count` sequential requests, their latencies kept when `keep`.
    fn run(&mut self, count: usize, keep: bool) {
        let mut answer = [0u8; ANSWER.len()];
        for _ in 0..count {
            let start = Instant::now();
            self.stream.write_all(&self.request).unwrap();
            self.stream.read_exact(&mut answer).unwrap();
            let elapsed = start.elapsed();
            assert_eq!(answer, ANSWER);
            if keep {
                self.times.push(elapsed);
            }
        }
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |s| s.parse().expect("REQUESTS is a number"));
    let (target, session) = (server(), server());
    let through = filter(target, session);
    let relayed = relay(target);
    let mut clients = [
        ("direct", Client::new(target, "")),
        ("plain TCP relay", Client::new(relayed, "")),
        (
            "filter, unmatched → target",
            Client::new(through, "x-other: 1\r\n"),
        ),
        (
            "filter, matched → route",
            Client::new(through, "X-Run: bench\r\n"),
        ),
    ];
    // Warm-up, then the paths take turns in blocks so that a change of load on the machine
    // hits them alike.
    for (_, client) in &mut clients {
        client.run(n / 10, false);
    }
    const BLOCK: usize = 500;
    for _ in 0..n.div_ceil(BLOCK) {
        for (_, client) in &mut clients {
            client.run(BLOCK, true);
        }
    }
    for (_, client) in &mut clients {
        client.times.sort();
    }
    let pct = |times: &[Duration], p: usize| times[(times.len() * p / 100).min(times.len() - 1)];
    println!("{n} keep-alive requests each, loopback, microseconds");
    println!("{:<28} {:>8} {:>8} {:>8}", "path", "p50", "p90", "p99");
    for (name, client) in &clients {
        let times = &client.times;
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "{name:<28} {:>8.1} {:>8.1} {:>8.1}",
            us(pct(times, 50)),
            us(pct(times, 90)),
            us(pct(times, 99))
        );
    }
    let [direct, plain_relay, unmatched, _] = clients.map(|(_, client)| client.times);
    let ratio = pct(&unmatched, 50).as_secs_f64() / pct(&direct, 50).as_secs_f64();
    println!("unmatched p50 / direct p50 = {ratio:.2}");
    let ratio = pct(&unmatched, 50).as_secs_f64() / pct(&plain_relay, 50).as_secs_f64();
    println!("unmatched p50 / plain relay p50 = {ratio:.2}");
}
