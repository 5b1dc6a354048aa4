//! The bench's servers, run as `mirrord-net-bench __serve` inside the services namespace.
//!
//! One process, one small tokio runtime, one task per connection: fast enough that the
//! direct path measures the network and not the server, and cheap per idle connection so
//! 10,000 held flows cost the server little. Protocols are the ones in [`crate::ports`].

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::ports::{self, addr};

pub fn serve() -> Result<()> {
    crate::limits::raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(listen(addr(ports::ECHO), echo));
        tasks.spawn(listen(addr(ports::HTTP), http));
        tasks.spawn(listen(addr(ports::SINK), sink));
        tasks.spawn(listen(addr(ports::SOURCE), source));
        tasks.spawn(listen(addr(ports::HOLD), hold));
        tasks.spawn(udp_echo(addr(ports::UDP_ECHO)));
        eprintln!("bench servers listening");
        // Any server that stops is an error: the harness sees the process exit.
        match tasks.join_next().await {
            Some(Ok(result)) => result,
            Some(Err(err)) => Err(err.into()),
            None => Ok(()),
        }
    })
}

async fn listen<F, Fut>(at: SocketAddr, handle: F) -> Result<()>
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind(at)
        .await
        .with_context(|| format!("binding {at}"))?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // EMFILE and friends: keep serving what is open.
            Err(err) => {
                eprintln!("accept on {at}: {err}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(handle(stream));
    }
}

async fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// Answers every request (a header block ending in a blank line) with a fixed 1 KiB body.
/// `mirrord-net-bench __serve-incoming BY`: the HTTP service of [`ports::INCOMING`] on every
/// address, its answers naming `BY` (the target's own copy, or the session's).
pub fn serve_incoming(by: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let response: &'static [u8] = Vec::leak(http_response(Some(by)));
    runtime.block_on(async {
        let at = SocketAddr::from(([0, 0, 0, 0], ports::INCOMING));
        eprintln!("incoming service ({by}) listening on {at}");
        listen(at, move |stream| http_with(stream, response)).await
    })
}

fn http_response(served_by: Option<&str>) -> Vec<u8> {
    let by = served_by.map_or(String::new(), |by| format!("X-Served-By: {by}\r\n"));
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{by}Content-Length: {}\r\n\r\n",
        ports::HTTP_BODY
    )
    .into_bytes();
    response.extend(std::iter::repeat_n(b'x', ports::HTTP_BODY));
    response
}

async fn http(stream: TcpStream) -> std::io::Result<()> {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    http_with(stream, RESPONSE.get_or_init(|| http_response(None))).await
}

async fn http_with(mut stream: TcpStream, response: &'static [u8]) -> std::io::Result<()> {
    let mut pending = Vec::with_capacity(4096);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        pending.extend_from_slice(&buf[..n]);
        let mut answers = 0;
        while let Some(end) = find(&pending, b"\r\n\r\n") {
            pending.drain(..end + 4);
            answers += 1;
        }
        if answers > 0 {
            stream.write_all(&response.repeat(answers)).await?;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

async fn sink(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    stream.write_all(&total.to_le_bytes()).await?;
    stream.shutdown().await
}

async fn source(mut stream: TcpStream) -> std::io::Result<()> {
    let mut limit = [0u8; 8];
    stream.read_exact(&mut limit).await?;
    let mut left = u64::from_le_bytes(limit);
    let buf = vec![0x5au8; 256 * 1024];
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        // The client closing early (a time-limited download) ends this with an error.
        stream.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    stream.shutdown().await
}

/// Holds the connection until the client sends anything, then closes first, so TIME-WAIT
/// lands here and not on the pod's side, whose ephemeral ports the next 10,000 flows need.
async fn hold(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 64];
    // Any byte, or the client's end of stream, is the signal: how many does not matter.
    let _signal = stream.read(&mut buf).await?;
    stream.shutdown().await
}

async fn udp_echo(at: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind(at)
        .await
        .with_context(|| format!("binding udp {at}"))?;
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let _ = socket.send_to(&buf[..n], from).await;
    }
}
