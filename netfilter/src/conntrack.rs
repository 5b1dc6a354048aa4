//! Where a redirected datagram was going: conntrack's original tuple, asked over
//! `ctnetlink` by the tuple of the redirect's reply direction.
//!
//! `SO_ORIGINAL_DST` answers this for a TCP socket (the accepted connection names its own
//! conntrack entry); a UDP socket that many flows are redirected to has no such option. What
//! it does know is each datagram's source, and with its own address that is the reply tuple
//! of the flow's conntrack entry (`our address:port → source`); `IPCTNL_MSG_CT_GET` with
//! `CTA_TUPLE_REPLY` returns the entry, whose `CTA_TUPLE_ORIG` destination is the address
//! the program sent to. Replies need no lookup: sent from the redirect's socket to the
//! source, conntrack rewrites their source back to that address.
//!
//! The message and its answer are built and read here (pure, unit-tested); [`Socket::ask`]
//! carries them. [`original_destination_of`] answers for TCP, for the agent's stolen
//! connections and the session's relay alike.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;

use crate::{Message, Socket, NLMSG_ERROR, NLM_F_REQUEST};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `IPCTNL_MSG_CT_GET` of the entry whose reply direction is `from → to` for `protocol`
/// (`IPPROTO_UDP`, ...). Both addresses must be of one family.
pub fn get_by_reply(seq: u32, protocol: u8, from: SocketAddr, to: SocketAddr) -> Vec<u8> {
    let family = match from {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    } as u8;
    let mut m = Message::new(
        (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
        NLM_F_REQUEST,
        seq,
        family,
        0,
    );
    m.begin(CTA_TUPLE_REPLY).begin(CTA_TUPLE_IP);
    match (from.ip(), to.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            m.attr(CTA_IP_V4_SRC, &src.octets())
                .attr(CTA_IP_V4_DST, &dst.octets());
        }
        (src, dst) => {
            m.attr(CTA_IP_V6_SRC, &v6(src).octets())
                .attr(CTA_IP_V6_DST, &v6(dst).octets());
        }
    }
    m.end().begin(CTA_TUPLE_PROTO);
    m.attr(CTA_PROTO_NUM, &[protocol])
        .attr(CTA_PROTO_SRC_PORT, &from.port().to_be_bytes())
        .attr(CTA_PROTO_DST_PORT, &to.port().to_be_bytes());
    m.end().end();
    m.finish()
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

/// The answer to [`get_by_reply`]: the original direction's destination, or the errno the
/// kernel answered (`ENOENT`: no such entry).
pub fn original_destination(answer: &[u8]) -> Result<SocketAddr, i32> {
    if answer.len() < 20 {
        return Err(libc::EBADMSG);
    }
    let kind = u16::from_ne_bytes([answer[4], answer[5]]);
    if kind == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(answer[16..20].try_into().expect("4 bytes"));
        return Err(if errno == 0 { libc::EBADMSG } else { -errno });
    }
    let len =
        (u32::from_ne_bytes(answer[0..4].try_into().expect("4 bytes")) as usize).min(answer.len());
    let orig = find(&answer[20..len], CTA_TUPLE_ORIG).ok_or(libc::EBADMSG)?;
    let ip = find(orig, CTA_TUPLE_IP).ok_or(libc::EBADMSG)?;
    let proto = find(orig, CTA_TUPLE_PROTO).ok_or(libc::EBADMSG)?;
    let port = find(proto, CTA_PROTO_DST_PORT)
        .and_then(|p| <[u8; 2]>::try_from(p).ok())
        .map(u16::from_be_bytes)
        .ok_or(libc::EBADMSG)?;
    let addr = if let Some(v4) = find(ip, CTA_IP_V4_DST) {
        IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(v4).map_err(|_| libc::EBADMSG)?,
        ))
    } else {
        let v6 = find(ip, CTA_IP_V6_DST).ok_or(libc::EBADMSG)?;
        IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(v6).map_err(|_| libc::EBADMSG)?,
        ))
    };
    Ok(SocketAddr::new(addr, port))
}

/// The payload of the first attribute of type `kind` in `attrs` (flags ignored); a
/// malformed length ends the walk.
fn find(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let this = u16::from_ne_bytes([attrs[2], attrs[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if this == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[((len + 3) & !3).min(attrs.len())..];
    }
    None
}

/// Where a redirected TCP connection was going: `SO_ORIGINAL_DST` (IPv4) or
/// `IP6T_SO_ORIGINAL_DST` (IPv6) on the accepted socket, which conntrack answers from the
/// NAT it applied. `v6`: the socket is IPv6.
pub fn original_destination_of(socket: &impl AsRawFd, v6: bool) -> io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in6 is plain data, large enough for either family's answer.
    let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    let level = if v6 { libc::SOL_IPV6 } else { libc::SOL_IP };
    // SAFETY: getsockopt into a buffer of the size given.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            SO_ORIGINAL_DST,
            (&mut addr as *mut libc::sockaddr_in6).cast(),
            &mut len,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    if v6 {
        Ok(SocketAddr::new(
            IpAddr::V6(Ipv6Addr::from(addr.sin6_addr.s6_addr)),
            u16::from_be(addr.sin6_port),
        ))
    } else {
        // SAFETY: for IPv4 the kernel wrote a sockaddr_in at the start of the buffer.
        let v4: libc::sockaddr_in =
            unsafe { std::ptr::read((&addr as *const libc::sockaddr_in6).cast()) };
        Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))),
            u16::from_be(v4.sin_port),
        ))
    }
}

impl Socket {
    /// The destination a redirected datagram from `source` to our `local` address was sent
    /// to, from the conntrack of the socket's network namespace.
    pub fn original_destination(
        &mut self,
        protocol: u8,
        local: SocketAddr,
        source: SocketAddr,
    ) -> io::Result<SocketAddr> {
        self.seq = self.seq.wrapping_add(1);
        let request = get_by_reply(self.seq, protocol, local, source);
        let answer = self.ask(&request)?;
        original_destination(&answer).map_err(io::Error::from_raw_os_error)
    }

    /// Sends one request and returns the first answer of the same sequence number.
    fn ask(&self, request: &[u8]) -> io::Result<Vec<u8>> {
        let fd = self.fd.as_raw_fd();
        let seq = u32::from_ne_bytes(request[8..12].try_into().expect("4 bytes"));
        // SAFETY: send of a buffer we own on our socket; netlink needs no address when
        // sending to the kernel with send(2).
        let sent = unsafe { libc::send(fd, request.as_ptr().cast(), request.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; 8192];
        loop {
            // SAFETY: recv into a buffer we own.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let answer = &buf[..n as usize];
            if answer.len() >= 16
                && u32::from_ne_bytes(answer[8..12].try_into().expect("4 bytes")) == seq
            {
                return Ok(answer.to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{attrs, u16_at};

    #[test]
    fn the_request_names_the_reply_tuple() {
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let to: SocketAddr = "10.1.2.3:5353".parse().unwrap();
        let m = get_by_reply(7, 17, from, to);
        assert_eq!(u16_at(&m, 4), (1 << 8) | 1);
        assert_eq!(m[16], libc::AF_INET as u8);
        let top = attrs(&m[20..]);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].0 & NLA_TYPE_MASK, CTA_TUPLE_REPLY);
        let tuple = attrs(top[0].1);
        let ip = attrs(tuple[0].1);
        assert_eq!(ip[0], (CTA_IP_V4_SRC, &[127, 0, 0, 1][..]));
        assert_eq!(ip[1], (CTA_IP_V4_DST, &[10, 1, 2, 3][..]));
        let proto = attrs(tuple[1].1);
        assert_eq!(proto[0], (CTA_PROTO_NUM, &[17][..]));
        assert_eq!(proto[1], (CTA_PROTO_SRC_PORT, &4000u16.to_be_bytes()[..]));
        assert_eq!(proto[2], (CTA_PROTO_DST_PORT, &5353u16.to_be_bytes()[..]));
    }

    /// An answer as the kernel writes it: the original tuple first, then the reply's.
    fn answer(orig_dst: SocketAddr) -> Vec<u8> {
        let mut m = Message::new(1 << 8, 0, 7, 2, 0);
        m.begin(CTA_TUPLE_ORIG).begin(CTA_TUPLE_IP);
        match orig_dst.ip() {
            IpAddr::V4(ip) => {
                m.attr(CTA_IP_V4_SRC, &[10, 0, 0, 9])
                    .attr(CTA_IP_V4_DST, &ip.octets());
            }
            IpAddr::V6(ip) => {
                m.attr(CTA_IP_V6_SRC, &[0; 16])
                    .attr(CTA_IP_V6_DST, &ip.octets());
            }
        }
        m.end().begin(CTA_TUPLE_PROTO);
        m.attr(CTA_PROTO_NUM, &[17])
            .attr(CTA_PROTO_SRC_PORT, &[0x30, 0x39])
            .attr(CTA_PROTO_DST_PORT, &orig_dst.port().to_be_bytes());
        m.end().end();
        m.begin(CTA_TUPLE_REPLY).begin(CTA_TUPLE_IP);
        m.attr(CTA_IP_V4_SRC, &[127, 0, 0, 1]);
        m.end().end();
        m.finish()
    }

    #[test]
    fn the_answer_gives_the_original_destination() {
        for dst in ["192.0.2.7:53", "[2001:db8::7]:8053"] {
            let dst: SocketAddr = dst.parse().unwrap();
            assert_eq!(original_destination(&answer(dst)), Ok(dst));
        }
    }

    #[test]
    fn an_error_or_a_short_answer_is_an_errno() {
        let mut m = Message::new(NLMSG_ERROR, 0, 7, 0, 0);
        m.attr(0, &[0; 16]);
        // nlmsgerr: the errno is the first 4 bytes after the header (here where nfgenmsg
        // would be), negative.
        let mut bytes = m.finish();
        bytes[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(original_destination(&bytes), Err(libc::ENOENT));
        assert_eq!(original_destination(&[0; 8]), Err(libc::EBADMSG));
        let truncated = &answer("192.0.2.7:53".parse().unwrap())[..30];
        assert!(original_destination(truncated).is_err());
    }
}
