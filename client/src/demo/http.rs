//! The demo pod's service: a tiny HTTP/1.1 server on 10.89.0.10:80 and [fd89::10]:80.
//!
//! One request per connection (`Connection: close`), answered from the request head alone:
//! `GET /` (or `HEAD /`) gets a short text that names the pod and the addresses of the
//! connection as the server saw them, so a session can show that its connection really
//! arrived inside the pod; other paths get 404, other methods 405, anything unparsable 400.
//! [`respond`] is the whole logic; [`serve`] accepts, reads the head with a deadline and a
//! size limit, writes the answer and closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The most a request head may take; more is a 400.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client has to send its request head.
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until it fails.
pub async fn serve(listener: TcpListener, verbose: bool) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = handle(stream, peer, verbose).await;
        });
    }
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, verbose: bool) -> std::io::Result<()> {
    let local = stream.local_addr()?;
    let head = tokio::time::timeout(READ_DEADLINE, read_head(&mut stream))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))?;
    let response = respond(&head, local, peer);
    if verbose {
        let request_line = head
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or_default();
        let status = response.split(|&b| b == b'\r').next().unwrap_or_default();
        eprintln!(
            "demo-pod http: {peer} -> {local}: {} -> {}",
            String::from_utf8_lossy(request_line),
            String::from_utf8_lossy(status)
        );
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Reads until the end of the request head, EOF, or [`MAX_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(head)
}

/// The whole response to a request head received on `local` from `peer`.
pub fn respond(head: &[u8], local: SocketAddr, peer: SocketAddr) -> Vec<u8> {
    let Some((method, path)) = request_line(head) else {
        return response(400, "Bad Request", "bad request\n", false);
    };
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return response(405, "Method Not Allowed", "only GET and HEAD\n", head_only);
    }
    // An absolute-form target (`http://hello/`) names the same path.
    let path = path
        .strip_prefix("http://")
        .map(|rest| rest.find('/').map_or("/", |slash| &rest[slash..]))
        .unwrap_or(path);
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if path != "/" {
        return response(404, "Not Found", "not found\n", head_only);
    }
    let body = format!(
        "Hello from {pod}! This is the service {name}, listening on {local} inside the pod; \
         your connection came from {peer}.\n",
        pod = super::POD_HOSTNAME,
        name = super::SERVICE_NAME,
    );
    response(200, "OK", &body, head_only)
}

/// `(method, target)` of a complete, well-formed HTTP/1.x request head.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&head[..end]).ok()?;
    let line = head.lines().next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || method.is_empty()
        || !method.bytes().all(|b| b.is_ascii_uppercase())
        || !version.starts_with("HTTP/1.")
        || target.is_empty()
    {
        return None;
    }
    Some((method, target))
}

fn response(status: u16, reason: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\n\
         Server: mirrord-net-demo\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> (SocketAddr, SocketAddr) {
        (
            "10.89.0.10:80".parse().unwrap(),
            "10.89.0.2:40000".parse().unwrap(),
        )
    }

    fn status_and_body(response: &[u8]) -> (String, String) {
        let text = String::from_utf8(response.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.lines().next().unwrap().to_owned();
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        if !body.is_empty() {
            assert_eq!(body.len(), length);
        }
        (status, body.to_owned())
    }

    #[test]
    fn get_root_names_the_pod_and_both_ends_of_the_connection() {
        let (local, peer) = addrs();
        let request = b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n";
        let (status, body) = status_and_body(&respond(request, local, peer));
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.starts_with("Hello from demo-pod!"), "{body}");
        assert!(
            body.contains("10.89.0.10:80") && body.contains("10.89.0.2:40000"),
            "{body}"
        );
    }

    #[test]
    fn head_gets_the_headers_only() {
        let (local, peer) = addrs();
        let (status, body) = status_and_body(&respond(b"HEAD / HTTP/1.0\r\n\r\n", local, peer));
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.is_empty());
    }

    #[test]
    fn absolute_targets_and_queries_name_the_root_too() {
        let (local, peer) = addrs();
        for request in [
            &b"GET http://hello/ HTTP/1.1\r\n\r\n"[..],
            b"GET http://hello HTTP/1.1\r\n\r\n",
            b"GET /?x=1 HTTP/1.1\r\n\r\n",
        ] {
            let (status, _) = status_and_body(&respond(request, local, peer));
            assert_eq!(status, "HTTP/1.1 200 OK");
        }
    }

    #[test]
    fn other_paths_methods_and_garbage_get_errors() {
        let (local, peer) = addrs();
        let status = |request: &[u8]| status_and_body(&respond(request, local, peer)).0;
        assert_eq!(status(b"GET /x HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
        assert_eq!(
            status(b"POST / HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(status(b"GET / HTTP/1.1\r\n"), "HTTP/1.1 400 Bad Request");
        assert_eq!(status(b"GET / SPDY/3\r\n\r\n"), "HTTP/1.1 400 Bad Request");
        assert_eq!(
            status(b"\x16\x03\x01\x02\r\n\r\n"),
            "HTTP/1.1 400 Bad Request"
        );
    }
}
