//! The demo's default command: prints, one check per line, what a process sees where it runs.
//!
//! Run by the demo inside a session on the demo pod as `mirrord-net __demo-probe HOST_PORT`, it
//! uses only what any program would: `gethostname`, `/etc/resolv.conf`, the system resolver
//! (std's `ToSocketAddrs`, which is glibc's getaddrinfo with the search list and `ndots`), and
//! plain `TcpStream`s. Each check says what it found and whether that is what the pod offers:
//!
//! 1. the hostname is the pod's;
//! 2. the resolver is the pod's (first nameserver 10.89.0.53);
//! 3. the short name `hello` resolves, through the search list, to the service;
//! 4. `GET http://hello/` reaches the service (at the addresses in the resolver's order, as an
//!    HTTP client would), whose answer says where it saw the connection come from;
//! 5. the service answers at its IPv4 and at its IPv6 address alike;
//! 6. the host's loopback is not this process's: a listener the demo opened on the host's
//!    127.0.0.1:HOST_PORT cannot be reached;
//! 7. the pod's environment variable `DEMO_GREETING` is in this process's environment;
//! 8. the pod's own volume shows at its path: `/srv/demo/config.txt`, a file only the pod's
//!    mount namespace has, reads as the pod wrote it.
//!
//! The exit code is 0 when every check holds and 1 otherwise. Network steps have deadlines so
//! that a broken session shows up as a failed line, not a hang.

use std::fmt;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::Duration;

use mirrord_net_protocol::resolv_conf::ResolvConf;

use super::{DNS_IPV4, POD_HOSTNAME, SERVICE_IPV4, SERVICE_IPV6, SERVICE_NAME, SERVICE_PORT};

/// getaddrinfo has no deadline of its own; glibc may retry each search domain for a while.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(30);
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
const IO_DEADLINE: Duration = Duration::from_secs(5);
/// The most of a response the probe reads; the service's answers are a few hundred bytes.
const MAX_RESPONSE: u64 = 64 * 1024;
/// The column where a check's finding starts.
const LABEL_WIDTH: usize = 19;

/// Entry point of `mirrord-net __demo-probe HOST_PORT`.
pub fn probe_main() -> ! {
    let host_port = std::env::args()
        .nth(2)
        .and_then(|port| port.parse::<u16>().ok());
    let Some(host_port) = host_port else {
        eprintln!("usage: mirrord-net {} HOST_PORT", super::PROBE_ARG);
        std::process::exit(2);
    };
    let checks = run_checks(host_port, &mut std::io::stdout().lock());
    std::process::exit(if checks.iter().all(|check| check.ok) {
        0
    } else {
        1
    });
}

/// One finding of the probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub ok: bool,
    pub label: &'static str,
    pub finding: String,
    /// Further lines shown under the finding (the HTTP body).
    pub more: Vec<String>,
}

impl Check {
    fn new(ok: bool, label: &'static str, finding: impl Into<String>) -> Self {
        Self {
            ok,
            label,
            finding: finding.into(),
            more: Vec::new(),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.ok { '✓' } else { '✗' };
        write!(f, "  {mark} {:<LABEL_WIDTH$} {}", self.label, self.finding)?;
        for line in &self.more {
            write!(f, "\n    {:<LABEL_WIDTH$} {line}", "")?;
        }
        Ok(())
    }
}

/// Runs every check, printing each to `out` as soon as it is known.
pub fn run_checks(host_port: u16, out: &mut dyn Write) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut report = |check: Check| {
        let _ = writeln!(out, "{check}");
        let _ = out.flush();
        checks.push(check);
    };
    report(hostname());
    report(resolver());
    let resolved = resolve(SERVICE_NAME, SERVICE_PORT);
    report(resolution(&resolved));
    let addresses = resolved.unwrap_or_default();
    report(http_check(&addresses));
    report(family_check(&addresses, false));
    report(family_check(&addresses, true));
    report(host_loopback(host_port));
    report(environment());
    report(pod_file());
    checks
}

fn hostname() -> Check {
    match nix::unistd::gethostname() {
        Ok(name) => {
            let name = name.to_string_lossy().into_owned();
            Check::new(name == POD_HOSTNAME, "hostname", name)
        }
        Err(err) => Check::new(false, "hostname", format!("cannot read it: {err}")),
    }
}

fn resolver() -> Check {
    const LABEL: &str = "/etc/resolv.conf";
    let text = match std::fs::read_to_string("/etc/resolv.conf") {
        Ok(text) => text,
        Err(err) => return Check::new(false, LABEL, format!("cannot read it: {err}")),
    };
    let conf = ResolvConf::parse(&text);
    let ok = conf.nameservers.first() == Some(&IpAddr::V4(DNS_IPV4));
    Check::new(ok, LABEL, describe_resolv_conf(&conf))
}

fn resolution(resolved: &Result<Vec<SocketAddr>, String>) -> Check {
    const LABEL: &str = "resolve hello";
    match resolved {
        Ok(addresses) => {
            let ips: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
            let ok = [IpAddr::V4(SERVICE_IPV4), IpAddr::V6(SERVICE_IPV6)]
                .iter()
                .all(|ip| addresses.iter().any(|a| a.ip() == *ip));
            Check::new(ok, LABEL, ips.join(", "))
        }
        Err(err) => Check::new(false, LABEL, err.clone()),
    }
}

fn http_check(addresses: &[SocketAddr]) -> Check {
    let label = "GET http://hello/";
    if addresses.is_empty() {
        return Check::new(false, label, "not tried: `hello` did not resolve");
    }
    // Like any HTTP client: the addresses in the resolver's order, until one answers.
    let mut failures = Vec::new();
    for address in addresses {
        match get(*address, SERVICE_NAME) {
            Ok(response) => return http_finding(label, *address, &response),
            Err(err) => failures.push(format!("{address}: {err}")),
        }
    }
    Check::new(false, label, failures.join("; "))
}

/// The service over one address family, at the address the resolver gave for it, or at the
/// service's own address when it gave none: a resolver failure and a connectivity failure
/// then show as different lines.
fn family_check(addresses: &[SocketAddr], ipv6: bool) -> Check {
    let (label, own) = if ipv6 {
        ("IPv6", IpAddr::V6(SERVICE_IPV6))
    } else {
        ("IPv4", IpAddr::V4(SERVICE_IPV4))
    };
    let address = addresses
        .iter()
        .copied()
        .find(|address| address.is_ipv6() == ipv6)
        .unwrap_or_else(|| SocketAddr::new(own, SERVICE_PORT));
    match get(address, SERVICE_NAME) {
        Ok(response) => {
            let mut check = http_finding(label, address, &response);
            check.more.clear();
            check
        }
        Err(err) => Check::new(false, label, format!("{address}: {err}")),
    }
}

fn http_finding(label: &'static str, address: SocketAddr, response: &HttpResponse) -> Check {
    let mut check = Check::new(
        response.status == 200,
        label,
        format!("{} {} from {address}", response.status, response.reason),
    );
    check.more = String::from_utf8_lossy(&response.body)
        .lines()
        .map(str::to_owned)
        .collect();
    check
}

fn environment() -> Check {
    const LABEL: &str = "environment";
    let var = super::pod::GREETING_VAR;
    match std::env::var(var) {
        Ok(value) => Check::new(
            value == super::pod::greeting(),
            LABEL,
            format!("{var}={value}"),
        ),
        Err(_) => Check::new(false, LABEL, format!("{var} is not set")),
    }
}

fn pod_file() -> Check {
    const LABEL: &str = "pod's file";
    let path = super::pod::CONFIG_FILE;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let wanted = format!("greeting = {}", super::pod::greeting());
            let found = text.lines().find(|line| line.starts_with("greeting"));
            Check::new(
                found == Some(wanted.as_str()),
                LABEL,
                format!("{path}: {}", found.unwrap_or("no greeting line")),
            )
        }
        Err(err) => Check::new(false, LABEL, format!("cannot read {path}: {err}")),
    }
}

fn host_loopback(port: u16) -> Check {
    let label = "host's loopback";
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match TcpStream::connect_timeout(&address, CONNECT_DEADLINE) {
        Ok(_) => Check::new(
            false,
            label,
            format!("{address} answered: this is the host's network, not the pod's"),
        ),
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Check::new(
            true,
            label,
            format!("{address} refused: this process has a loopback of its own"),
        ),
        Err(err) => Check::new(
            true,
            label,
            format!("{address} unreachable ({err}): this process has a network of its own"),
        ),
    }
}

/// Resolves through the system resolver, giving up after [`RESOLVE_DEADLINE`].
fn resolve(name: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let (done, result) = mpsc::channel();
    let query = (name.to_owned(), port);
    // getaddrinfo cannot be cancelled; a thread that outlives the deadline dies with the probe.
    std::thread::spawn(move || {
        let _ = done.send(query.to_socket_addrs().map(Iterator::collect::<Vec<_>>));
    });
    match result.recv_timeout(RESOLVE_DEADLINE) {
        Ok(Ok(mut addresses)) => {
            let mut seen = Vec::new();
            addresses.retain(|a| {
                let new = !seen.contains(a);
                seen.push(*a);
                new
            });
            Ok(addresses)
        }
        Ok(Err(err)) => Err(format!("does not resolve: {err}")),
        Err(_) => Err(format!("no answer within {RESOLVE_DEADLINE:?}")),
    }
}

/// `GET /` with `Host: host` over a fresh connection to `address`.
fn get(address: SocketAddr, host: &str) -> Result<HttpResponse, String> {
    let mut stream =
        TcpStream::connect_timeout(&address, CONNECT_DEADLINE).map_err(|err| err.to_string())?;
    stream
        .set_read_timeout(Some(IO_DEADLINE))
        .and_then(|()| stream.set_write_timeout(Some(IO_DEADLINE)))
        .map_err(|err| err.to_string())?;
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mirrord-net-demo-probe\r\n\
         Connection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|err| format!("sending the request: {err}"))?;
    let mut raw = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut raw)
        .map_err(|err| format!("reading the response: {err}"))?;
    HttpResponse::parse(&raw).map_err(|err| err.to_string())
}

/// A resolv.conf as the probe reports it: its nameservers, search list and options.
pub fn describe_resolv_conf(conf: &ResolvConf) -> String {
    let nameservers: Vec<String> = conf.nameservers.iter().map(IpAddr::to_string).collect();
    let mut text = match nameservers.is_empty() {
        true => "no nameserver".to_owned(),
        false => format!("nameserver {}", nameservers.join(" ")),
    };
    if !conf.search.is_empty() {
        text += &format!("; search {}", conf.search.join(" "));
    }
    if !conf.options.is_empty() {
        text += &format!("; options {}", conf.options.join(" "));
    }
    text
}

/// An HTTP/1.x response, read to its end.
#[derive(Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HttpParseError {
    #[error("the response ended before its headers did ({0} bytes)")]
    NoHeadEnd(usize),
    #[error("not an HTTP/1.x status line: {0:?}")]
    StatusLine(String),
    #[error("bad Content-Length {0:?}")]
    ContentLength(String),
    #[error("the body ended after {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    #[error("chunked bodies are not read by the probe")]
    Chunked,
}

impl HttpResponse {
    /// Parses a whole response as read from a `Connection: close` exchange.
    pub fn parse(raw: &[u8]) -> Result<Self, HttpParseError> {
        let head_end = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or(HttpParseError::NoHeadEnd(raw.len()))?;
        let head = String::from_utf8_lossy(&raw[..head_end]);
        let body = &raw[head_end + 4..];
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let bad_status = || HttpParseError::StatusLine(status_line.to_owned());
        let (version, rest) = status_line.split_once(' ').ok_or_else(bad_status)?;
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if !version.starts_with("HTTP/1.") || code.len() != 3 {
            return Err(bad_status());
        }
        let status = code.parse().map_err(|_| bad_status())?;

        let mut length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let parsed = value
                    .parse::<usize>()
                    .map_err(|_| HttpParseError::ContentLength(value.to_owned()))?;
                length = Some(parsed);
            } else if name.eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
            {
                return Err(HttpParseError::Chunked);
            }
        }
        let body = match length {
            Some(expected) if body.len() < expected => {
                return Err(HttpParseError::Truncated {
                    expected,
                    got: body.len(),
                })
            }
            Some(expected) => &body[..expected],
            None => body,
        };
        Ok(Self {
            status,
            reason: reason.to_owned(),
            body: body.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resolv_conf_is_described_in_one_line() {
        let conf =
            ResolvConf::parse("nameserver 10.89.0.53\nsearch demo.svc a\noptions ndots:5 edns0");
        assert_eq!(
            describe_resolv_conf(&conf),
            "nameserver 10.89.0.53; search demo.svc a; options ndots:5 edns0"
        );
        assert_eq!(
            describe_resolv_conf(&ResolvConf::parse("")),
            "no nameserver"
        );
    }

    #[test]
    fn an_http_response_is_cut_at_its_content_length() {
        let response = HttpResponse::parse(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\ncontent-length: 5\r\n\r\nhello, and more",
        )
        .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.reason, "OK");
        assert_eq!(response.body, b"hello");
    }

    #[test]
    fn an_http_response_without_length_runs_to_the_end() {
        let response = HttpResponse::parse(b"HTTP/1.0 404 Not Found\r\n\r\ngone\n").unwrap();
        assert_eq!((response.status, &response.body[..]), (404, &b"gone\n"[..]));
        let bare = HttpResponse::parse(b"HTTP/1.1 204\r\n\r\n").unwrap();
        assert_eq!((bare.status, bare.reason.as_str()), (204, ""));
    }

    #[test]
    fn broken_http_responses_say_what_is_wrong() {
        assert_eq!(
            HttpResponse::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"),
            Err(HttpParseError::NoHeadEnd(36))
        );
        assert_eq!(
            HttpResponse::parse(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(HttpParseError::StatusLine("SSH-2.0-OpenSSH".into()))
        );
        assert_eq!(
            HttpResponse::parse(b"HTTP/1.1 2000 OK\r\n\r\n"),
            Err(HttpParseError::StatusLine("HTTP/1.1 2000 OK".into()))
        );
        assert_eq!(
            HttpResponse::parse(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            Err(HttpParseError::ContentLength("x".into()))
        );
        assert_eq!(
            HttpResponse::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"),
            Err(HttpParseError::Truncated {
                expected: 10,
                got: 5
            })
        );
        assert_eq!(
            HttpResponse::parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n"),
            Err(HttpParseError::Chunked)
        );
    }

    #[test]
    fn the_service_answer_parses_as_the_probe_reads_it() {
        let local: SocketAddr = (SERVICE_IPV4, SERVICE_PORT).into();
        let raw = super::super::http::respond(
            b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n",
            local,
            "10.89.0.2:1234".parse().unwrap(),
        );
        let response = HttpResponse::parse(&raw).unwrap();
        let check = http_finding("GET http://hello/", local, &response);
        assert!(check.ok);
        assert_eq!(check.finding, "200 OK from 10.89.0.10:80");
        assert_eq!(check.more.len(), 1);
    }

    #[test]
    fn checks_print_as_aligned_lines() {
        let mut check = Check::new(true, "hostname", "demo-pod");
        assert_eq!(check.to_string(), "  ✓ hostname            demo-pod");
        check.ok = false;
        check.more = vec!["body".into()];
        assert_eq!(
            check.to_string(),
            "  ✗ hostname            demo-pod\n                        body"
        );
    }

    #[test]
    fn a_refused_host_port_means_the_loopback_is_not_shared() {
        // A port that was just free: nothing listens on it any more.
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(host_loopback(port).ok);
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let check = host_loopback(listener.local_addr().unwrap().port());
        assert!(!check.ok, "{check}");
    }
}
