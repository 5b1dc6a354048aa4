//! Which ports a network namespace serves, asked of the kernel with `NETLINK_SOCK_DIAG`.
//!
//! `/proc/PID/net/tcp` answers the same question as text, but the kernel builds that text by
//! walking its whole established-connection hash (every bucket, of every namespace) on each
//! read, listening sockets or not: read four times a second beside a busy transfer, that walk
//! was a tenth of the client's CPU. An `inet_diag` dump asked for `LISTEN` only walks the
//! listening hash and skips the established one (`inet_diag_dump_icsk`); for UDP, sockets in
//! `CLOSE` state are the unconnected ones, a server's. The dump answers for the namespace the
//! socket was opened in, whoever asks on it later: the session's child opens it and the
//! client, in the host's namespaces (rootless too, where it could not enter the session's),
//! asks on it.
//!
//! The request and the answers are built and read here without I/O ([`dump_request`],
//! [`parse_answers`], unit-tested); [`Diag`] carries them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// `struct inet_diag_req_v2`: family, protocol, extensions, pad, states, and a 48-byte
/// socket id that a dump leaves zero.
const REQ_LEN: usize = 56;
/// The bytes of `struct inet_diag_msg` read: family, state, timer, retransmits, then the
/// socket id, whose first field is the local port (network order).
const MSG_MIN: usize = 6;

/// TCP's `LISTEN` state (`TCP_LISTEN`).
pub const TCP_LISTEN: u8 = 10;
/// The state of a UDP socket that has no peer (`TCP_CLOSE`): bound, not connected.
pub const UDP_UNCONNECTED: u8 = 7;

/// A dump request of every `protocol` socket of `family` (`AF_INET`, `AF_INET6`) in `state`.
pub fn dump_request(seq: u32, family: u8, protocol: u8, state: u8) -> Vec<u8> {
    let len = NLMSG_HDR + REQ_LEN;
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    buf.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, protocol, 0, 0]);
    buf.extend_from_slice(&(1u32 << state).to_ne_bytes());
    buf.resize(len, 0);
    buf
}

/// What one read of a dump's answers held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// The local ports of the sockets described, in order.
    pub ports: Vec<u16>,
    /// Whether the dump ended in this read (`NLMSG_DONE`, or an error).
    pub done: bool,
    /// The errno the kernel answered with, if it refused the dump.
    pub error: Option<i32>,
}

/// Reads the messages of one `recv` of a dump with sequence number `seq`; messages of
/// other sequence numbers (a late answer to an earlier dump) are skipped.
pub fn parse_answers(mut buf: &[u8], seq: u32) -> Answers {
    let mut answers = Answers::default();
    while buf.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDR || len > buf.len() {
            // A truncated or corrupt message: nothing after it can be trusted.
            answers.done = true;
            answers.error.get_or_insert(libc::EBADMSG);
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().unwrap());
        let their_seq = u32::from_ne_bytes(buf[8..12].try_into().unwrap());
        let body = &buf[NLMSG_HDR..len];
        if their_seq == seq {
            match kind {
                NLMSG_DONE => answers.done = true,
                NLMSG_ERROR => {
                    let errno = body
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                        .unwrap_or(-libc::EBADMSG);
                    answers.done = true;
                    if errno != 0 {
                        answers.error = Some(-errno);
                    }
                }
                SOCK_DIAG_BY_FAMILY if body.len() >= MSG_MIN => {
                    answers.ports.push(u16::from_be_bytes([body[4], body[5]]));
                }
                _ => {}
            }
        }
        // Messages are padded to 4 bytes.
        let next = (len + 3) & !3;
        buf = &buf[next.min(buf.len())..];
    }
    answers
}

/// The ports a namespace serves: TCP listeners and unconnected UDP sockets, IPv4 and IPv6,
/// each list sorted and without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
}

/// A `NETLINK_SOCK_DIAG` socket of one network namespace.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self::from_fd(crate::open_netlink(NETLINK_SOCK_DIAG)?))
    }

    /// Adopts a socket opened elsewhere (the session's namespace, by its child).
    pub fn from_fd(fd: OwnedFd) -> Self {
        // A dump is answered as it is read; the timeout only guards against a kernel that
        // never ends one.
        crate::set_receive_timeout(&fd, 1);
        Self { fd, seq: 1 }
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// The ports the socket's namespace serves.
    pub fn served(&mut self) -> io::Result<Served> {
        let mut served = Served::default();
        for family in [libc::AF_INET, libc::AF_INET6] {
            served
                .tcp
                .extend(self.ports(family as u8, libc::IPPROTO_TCP as u8, TCP_LISTEN)?);
            served.udp.extend(self.ports(
                family as u8,
                libc::IPPROTO_UDP as u8,
                UDP_UNCONNECTED,
            )?);
        }
        for ports in [&mut served.tcp, &mut served.udp] {
            ports.sort_unstable();
            ports.dedup();
        }
        Ok(served)
    }

    /// The local ports of `protocol` sockets of `family` in `state`.
    pub fn ports(&mut self, family: u8, protocol: u8, state: u8) -> io::Result<Vec<u16>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let request = dump_request(seq, family, protocol, state);
        let fd = self.fd.as_raw_fd();
        // SAFETY: sockaddr_nl is plain data; zero is its "the kernel" address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sendto with a valid buffer and a sockaddr_nl of the right size.
        let sent = unsafe {
            libc::sendto(
                fd,
                request.as_ptr() as *const libc::c_void,
                request.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut ports = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: recv into a buffer we own.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let answers = parse_answers(&buf[..n as usize], seq);
            ports.extend(answers.ports);
            if let Some(errno) = answers.error {
                return Err(io::Error::from_raw_os_error(errno));
            }
            if answers.done || n == 0 {
                return Ok(ports);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let len = NLMSG_HDR + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&0x2u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        m.resize((m.len() + 3) & !3, 0);
        m
    }

    fn socket_msg(port: u16) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, TCP_LISTEN, 0, 0];
        body.extend_from_slice(&port.to_be_bytes());
        body.resize(72, 0);
        body
    }

    #[test]
    fn the_request_asks_a_dump_of_one_state() {
        let req = dump_request(7, libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8, TCP_LISTEN);
        assert_eq!(req.len(), 72);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(req[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(req[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(req[8..12].try_into().unwrap()), 7);
        assert_eq!(
            &req[16..20],
            &[libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8, 0, 0]
        );
        assert_eq!(u32::from_ne_bytes(req[20..24].try_into().unwrap()), 1 << 10);
        assert!(req[24..].iter().all(|&b| b == 0));
    }

    #[test]
    fn answers_give_ports_until_done() {
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 5, &socket_msg(8080));
        buf.extend(message(SOCK_DIAG_BY_FAMILY, 5, &socket_msg(53)));
        let partial = parse_answers(&buf, 5);
        assert_eq!(partial.ports, [8080, 53]);
        assert!(!partial.done);
        buf.extend(message(NLMSG_DONE, 5, &0i32.to_ne_bytes()));
        let all = parse_answers(&buf, 5);
        assert!(all.done);
        assert_eq!(all.error, None);
    }

    #[test]
    fn other_sequences_are_skipped_and_errors_end_the_dump() {
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 4, &socket_msg(1));
        let mut error = (-libc::ENOENT).to_ne_bytes().to_vec();
        error.extend_from_slice(&[0; 16]);
        buf.extend(message(NLMSG_ERROR, 5, &error));
        let answers = parse_answers(&buf, 5);
        assert!(answers.ports.is_empty());
        assert!(answers.done);
        assert_eq!(answers.error, Some(libc::ENOENT));
    }

    #[test]
    fn corrupt_lengths_end_the_read_without_panicking() {
        let mut buf = message(SOCK_DIAG_BY_FAMILY, 5, &socket_msg(1));
        buf[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        let answers = parse_answers(&buf, 5);
        assert!(answers.done);
        assert_eq!(answers.error, Some(libc::EBADMSG));
        assert_eq!(parse_answers(&[1, 2, 3], 5), Answers::default());
        let short = message(SOCK_DIAG_BY_FAMILY, 5, &[1, 2]);
        assert!(parse_answers(&short, 5).ports.is_empty());
    }

    #[test]
    fn this_namespace_listeners_are_seen() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let served = Diag::open().unwrap().served().unwrap();
        assert!(served.tcp.contains(&listener.local_addr().unwrap().port()));
        assert!(served.udp.contains(&udp.local_addr().unwrap().port()));
        let connected = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(udp.local_addr().unwrap()).unwrap();
        let served = Diag::open().unwrap().served().unwrap();
        assert!(!served.udp.contains(&connected.local_addr().unwrap().port()));
    }
}
