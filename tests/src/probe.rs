//! Readiness probes: is a server in a namespace answering yet?
//!
//! Probes run on a thread inside the namespace ([`Netns::run`]) with plain sockets, so
//! waiting for a server costs no process spawns. Each one retries until a deadline and then
//! fails with the last error it saw.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;

/// How long a server may take to start answering.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Retries `attempt` every few milliseconds inside `ns` until it succeeds or `within` passes.
pub fn until_ready(
    ns: &Netns,
    what: &str,
    within: Duration,
    attempt: impl Fn() -> Result<()> + Send + Sync,
) -> Result<()> {
    let deadline = Instant::now() + within;
    ns.run(|| loop {
        match attempt() {
            Ok(()) => return Ok(()),
            Err(err) if Instant::now() >= deadline => {
                return Err(err.context(format!("{what} not ready after {within:?}")))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    })?
}

/// A TCP connection is accepted.
pub fn tcp_accepts(addr: SocketAddr) -> Result<()> {
    TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connect to {addr}"))?;
    Ok(())
}

/// `request` sent over TCP gets a reply starting with `expect`.
pub fn tcp_answers(addr: SocketAddr, request: &[u8], expect: &[u8]) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(request)?;
    let mut reply = vec![0u8; expect.len()];
    stream.read_exact(&mut reply)?;
    if reply != expect {
        bail!("{addr} answered {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

/// `GET /` over HTTP/1.0 is answered with 200 (read to the end, so the server is not cut
/// off mid-reply).
pub fn http_ok(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    if !reply.starts_with(b"HTTP/1.1 200") && !reply.starts_with(b"HTTP/1.0 200") {
        bail!("{addr} answered {:?}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

/// A UDP datagram to `addr` comes back unchanged.
pub fn udp_echoes(addr: SocketAddr) -> Result<()> {
    let socket = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    socket.send_to(b"ready?", addr)?;
    let mut reply = [0u8; 16];
    let (n, _) = socket.recv_from(&mut reply).context("no UDP echo")?;
    if &reply[..n] != b"ready?" {
        bail!("UDP echo answered {:?}", &reply[..n]);
    }
    Ok(())
}

/// A DNS server at `server` answers an A query for `name` with at least one record.
pub fn dns_answers(server: SocketAddr, name: &str) -> Result<()> {
    let socket = UdpSocket::bind(if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let id: u16 = 0x6d6e;
    socket.send_to(&dns_query(id, name), server)?;
    let mut reply = [0u8; 512];
    let n = socket.recv(&mut reply).context("no DNS reply")?;
    let reply = &reply[..n];
    if n < 12 || reply[..2] != id.to_be_bytes() {
        bail!("malformed DNS reply");
    }
    let rcode = reply[3] & 0x0f;
    let answers = u16::from_be_bytes([reply[6], reply[7]]);
    if rcode != 0 || answers == 0 {
        bail!("DNS reply for {name}: rcode {rcode}, {answers} answers");
    }
    Ok(())
}

/// A minimal recursive A query.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; 1 question
    for label in name.trim_end_matches('.').split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]); // root; type A; class IN
    packet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_query_encodes_labels() {
        let packet = dns_query(7, "web.svc");
        assert_eq!(&packet[..2], &[0, 7]);
        assert_eq!(&packet[12..], b"\x03web\x03svc\x00\x00\x01\x00\x01");
    }
}
