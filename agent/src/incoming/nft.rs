//! The agent's nftables table, spoken over netlink: the redirect of stolen ports.
//!
//! One table per agent, in the `inet` family (IPv4 and IPv6 at once), created with
//! `NFT_TABLE_F_OWNER`: the kernel ties it to the netlink socket that made it and deletes it
//! when that socket closes, which happens when the agent exits however it exits (SIGKILL
//! included). Nothing of a session can be left in the target's rule set. Only the owning
//! socket may change the table, so [`Nft`] keeps its socket for the agent's life.
//!
//! The table holds one chain, `nat` type on `prerouting` at `dstnat` priority, with one rule
//! per stolen port:
//!
//! ```text
//! table inet mirrord-net-<pid>-<nonce> {    # flags owner
//!     chain steal {
//!         type nat hook prerouting priority dstnat; policy accept;
//!         meta l4proto tcp tcp dport 8080 tcp flags & (syn | ack) == syn
//!             redirect to :<agent listener port>
//!     }
//! }
//! ```
//!
//! Prerouting sees connections that arrive from outside the target's network namespace
//! (other pods, the node, a Service's DNAT), which is what stealing takes; the agent's own
//! connections to the target's port (the fallback when the session does not take one) leave
//! through `output` and are not redirected. Conntrack keeps each connection on the path it
//! started on, so changing the rules never moves a connection already under way.
//!
//! [`set_ports`](Nft::set_ports) replaces the chain's rules in one batch (flush, then one
//! rule per port), which the kernel applies atomically.
//!
//! The messages are built here, not by a crate: the few message types needed (a batch, a
//! table, a chain, rules of nine expressions) take a few hundred lines of plain TLV encoding,
//! tested below byte for byte against the kernel's layout. `nftnl` binds the C library
//! (libnftnl, not on every target); `rustables` covers far more than this needs and tracks
//! its own API churn.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

// netlink
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NETLINK_NETFILTER: libc::c_int = 12;

// nfnetlink
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFPROTO_INET: u8 = 1;

// nf_tables message types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_DELRULE: u16 = 8;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
const NFT_TABLE_F_OWNER: u32 = 0x2;

const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NF_INET_PRE_ROUTING: u32 = 0;
/// `dstnat`: where destination NAT runs.
const NF_IP_PRI_NAT_DST: i32 = -100;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;

const NFT_REG_1: u32 = 1;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The name of the agent's chain in its table.
pub const CHAIN: &str = "steal";

/// One netlink message being built: header, `nfgenmsg`, attributes.
struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by finish
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        buf.push(family);
        buf.push(0); // NFNETLINK_V0
        buf.extend_from_slice(&res_id.to_be_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    fn nft(kind: u16, flags: u16, seq: u32) -> Self {
        Self::new(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            seq,
            NFPROTO_INET,
            0,
        )
    }

    fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).expect("short attribute").to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_be_bytes())
    }

    fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let start = self.nests.pop().expect("an open nest");
        let len = u16::try_from(self.buf.len() - start).expect("short nest");
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = u32::try_from(self.buf.len()).expect("short message");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { NAME, DATA { ... } }`.
    fn expr(&mut self, name: &str, data: impl FnOnce(&mut Self)) -> &mut Self {
        self.begin(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, name);
        self.begin(NFTA_EXPR_DATA);
        data(self);
        self.end().end()
    }
}

fn batch_marker(kind: u16, seq: u32) -> Vec<u8> {
    Message::new(
        kind,
        NLM_F_REQUEST,
        seq,
        libc::AF_UNSPEC as u8,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish()
}

/// `add table inet NAME { flags owner; }`
fn new_table(seq: u32, table: &str) -> Vec<u8> {
    let mut m = Message::nft(NFT_MSG_NEWTABLE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    m.str(NFTA_TABLE_NAME, table)
        .be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER);
    m.finish()
}

/// `add chain inet TABLE steal { type nat hook prerouting priority dstnat; }`
fn new_chain(seq: u32, table: &str) -> Vec<u8> {
    let mut m = Message::nft(NFT_MSG_NEWCHAIN, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    m.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, CHAIN);
    m.begin(NFTA_CHAIN_HOOK)
        .be32(NFTA_HOOK_HOOKNUM, NF_INET_PRE_ROUTING)
        .be32(NFTA_HOOK_PRIORITY, NF_IP_PRI_NAT_DST as u32)
        .end();
    m.str(NFTA_CHAIN_TYPE, "nat");
    m.finish()
}

/// `flush chain inet TABLE steal`
fn flush_chain(seq: u32, table: &str) -> Vec<u8> {
    let mut m = Message::nft(NFT_MSG_DELRULE, NLM_F_ACK, seq);
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, CHAIN);
    m.finish()
}

/// `add rule inet TABLE steal meta l4proto tcp tcp dport PORT tcp flags & (syn|ack) == syn
/// redirect to :TO`
///
/// Only a connection's opening SYN is redirected. Conntrack decides NAT on a connection's
/// first packet anyway; the flags test keeps a connection that conntrack picks up in the
/// middle (its entry was lost, or the connection predates conntrack in this namespace, which
/// starts with the agent's nat chain) from being sent, mid-stream, to the agent's listener,
/// which could only reset it.
fn redirect_rule(seq: u32, table: &str, port: u16, to: u16) -> Vec<u8> {
    let mut m = Message::nft(
        NFT_MSG_NEWRULE,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        seq,
    );
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, CHAIN);
    m.begin(NFTA_RULE_EXPRESSIONS);
    m.expr("meta", |m| {
        m.be32(NFTA_META_KEY, NFT_META_L4PROTO)
            .be32(NFTA_META_DREG, NFT_REG_1);
    });
    m.expr("cmp", |m| {
        m.be32(NFTA_CMP_SREG, NFT_REG_1)
            .be32(NFTA_CMP_OP, NFT_CMP_EQ);
        m.begin(NFTA_CMP_DATA)
            .attr(NFTA_DATA_VALUE, &[libc::IPPROTO_TCP as u8])
            .end();
    });
    m.expr("payload", |m| {
        m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER)
            .be32(NFTA_PAYLOAD_OFFSET, 2) // the destination port
            .be32(NFTA_PAYLOAD_LEN, 2);
    });
    m.expr("cmp", |m| {
        m.be32(NFTA_CMP_SREG, NFT_REG_1)
            .be32(NFTA_CMP_OP, NFT_CMP_EQ);
        m.begin(NFTA_CMP_DATA)
            .attr(NFTA_DATA_VALUE, &port.to_be_bytes())
            .end();
    });
    m.expr("payload", |m| {
        m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
            .be32(NFTA_PAYLOAD_BASE, NFT_PAYLOAD_TRANSPORT_HEADER)
            .be32(NFTA_PAYLOAD_OFFSET, 13) // the flags
            .be32(NFTA_PAYLOAD_LEN, 1);
    });
    m.expr("bitwise", |m| {
        m.be32(NFTA_BITWISE_SREG, NFT_REG_1)
            .be32(NFTA_BITWISE_DREG, NFT_REG_1)
            .be32(NFTA_BITWISE_LEN, 1);
        m.begin(NFTA_BITWISE_MASK)
            .attr(NFTA_DATA_VALUE, &[TCP_SYN | TCP_ACK])
            .end();
        m.begin(NFTA_BITWISE_XOR).attr(NFTA_DATA_VALUE, &[0]).end();
    });
    m.expr("cmp", |m| {
        m.be32(NFTA_CMP_SREG, NFT_REG_1)
            .be32(NFTA_CMP_OP, NFT_CMP_EQ);
        m.begin(NFTA_CMP_DATA)
            .attr(NFTA_DATA_VALUE, &[TCP_SYN])
            .end();
    });
    m.expr("immediate", |m| {
        m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_1);
        m.begin(NFTA_IMMEDIATE_DATA)
            .attr(NFTA_DATA_VALUE, &to.to_be_bytes())
            .end();
    });
    m.expr("redir", |m| {
        m.be32(NFTA_REDIR_REG_PROTO_MIN, NFT_REG_1);
    });
    m.end();
    m.finish()
}

/// A batch: the messages framed by BEGIN and END, and the sequence numbers that get an
/// answer (every message but the markers, which only answer when they fail).
struct Batch {
    bytes: Vec<u8>,
    acked: Vec<u32>,
    begin: u32,
}

fn batch(first_seq: u32, build: impl FnOnce(&mut dyn FnMut(&dyn Fn(u32) -> Vec<u8>))) -> Batch {
    let mut seq = first_seq;
    let mut bytes = batch_marker(NFNL_MSG_BATCH_BEGIN, seq);
    let mut acked = Vec::new();
    build(&mut |message| {
        seq += 1;
        bytes.extend_from_slice(&message(seq));
        acked.push(seq);
    });
    seq += 1;
    bytes.extend_from_slice(&batch_marker(NFNL_MSG_BATCH_END, seq));
    Batch {
        bytes,
        acked,
        begin: first_seq,
    }
}

/// The batch that sets the redirected ports: flush, then one rule per `(port, to)`.
fn ports_batch(first_seq: u32, table: &str, ports: &[(u16, u16)]) -> Batch {
    batch(first_seq, |push| {
        push(&|seq| flush_chain(seq, table));
        for &(port, to) in ports {
            push(&|seq| redirect_rule(seq, table, port, to));
        }
    })
}

/// The batch that makes the table and its chain.
fn create_batch(first_seq: u32, table: &str) -> Batch {
    batch(first_seq, |push| {
        push(&|seq| new_table(seq, table));
        push(&|seq| new_chain(seq, table));
    })
}

/// What the kernel answered one message: `Some(seq, errno)` for an error or ack (errno 0).
fn parse_answers(mut buf: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    while buf.len() >= 16 {
        let len = u32::from_ne_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
        if len < 16 || len > buf.len() {
            break;
        }
        let kind = u16::from_ne_bytes(buf[4..6].try_into().expect("2 bytes"));
        let seq = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes"));
        if kind == NLMSG_ERROR && len >= 20 {
            let errno = i32::from_ne_bytes(buf[16..20].try_into().expect("4 bytes"));
            out.push((seq, -errno));
        }
        buf = &buf[(len + 3) & !3..];
    }
    out
}

/// The agent's table, owned by the netlink socket this holds.
pub struct Nft {
    socket: OwnedFd,
    table: String,
    seq: u32,
}

impl Nft {
    /// Creates table `table` (with its chain) in the calling thread's network namespace.
    pub fn create(table: &str) -> io::Result<Self> {
        // SAFETY: plain socket(2); the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: setsockopt with a correctly sized timeval.
        unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
        }
        let mut nft = Self {
            socket,
            table: table.to_owned(),
            seq: std::process::id().wrapping_mul(1000),
        };
        let batch = create_batch(nft.next_seq(4), table);
        nft.talk(&batch)?;
        Ok(nft)
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Redirects exactly `ports` (`(target port, agent listener port)`), atomically.
    pub fn set_ports(&mut self, ports: &[(u16, u16)]) -> io::Result<()> {
        let batch = ports_batch(self.next_seq(ports.len() as u32 + 3), &self.table, ports);
        self.talk(&batch)
    }

    fn next_seq(&mut self, count: u32) -> u32 {
        let first = self.seq;
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Sends a batch and waits for the answer to each of its messages.
    fn talk(&self, batch: &Batch) -> io::Result<()> {
        let fd = self.socket.as_raw_fd();
        self.drain();
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sendto with a valid buffer and a sockaddr_nl of the right size.
        let sent = unsafe {
            libc::sendto(
                fd,
                batch.bytes.as_ptr() as *const libc::c_void,
                batch.bytes.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut waiting: Vec<u32> = batch.acked.clone();
        let mut first_error = None;
        let mut buf = vec![0u8; 64 * 1024];
        while !waiting.is_empty() {
            // SAFETY: recv into a buffer we own.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            for (seq, errno) in parse_answers(&buf[..n as usize]) {
                if errno != 0 && first_error.is_none() {
                    first_error = Some(io::Error::from_raw_os_error(errno));
                }
                if seq == batch.begin {
                    // The batch itself was refused: nothing else will answer.
                    waiting.clear();
                }
                waiting.retain(|&s| s != seq);
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Drops answers left over from an earlier batch that failed half-way.
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: recv into a buffer we own, without blocking.
            let n = unsafe {
                libc::recv(
                    self.socket.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Walks the attributes of `b` (no headers), returning `(type, payload)` pairs.
    fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
        let mut out = Vec::new();
        while b.len() >= 4 {
            let len = u16_at(b, 0) as usize;
            assert!(
                len >= 4 && len <= b.len(),
                "attribute length {len} in {}",
                b.len()
            );
            out.push((u16_at(b, 2), &b[4..len]));
            b = &b[((len + 3) & !3).min(b.len())..];
        }
        assert!(b.is_empty(), "trailing bytes");
        out
    }

    #[test]
    fn table_message_has_the_nftables_header_and_the_owner_flag() {
        let m = new_table(7, "t1");
        assert_eq!(u32_at(&m, 0) as usize, m.len());
        assert_eq!(u16_at(&m, 4), (10 << 8) | NFT_MSG_NEWTABLE);
        assert_eq!(
            u16_at(&m, 6),
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
        );
        assert_eq!(u32_at(&m, 8), 7);
        assert_eq!(&m[16..20], &[NFPROTO_INET, 0, 0, 0]);
        let a = attrs(&m[20..]);
        assert_eq!(a[0], (NFTA_TABLE_NAME, &b"t1\0"[..]));
        assert_eq!(a[1], (NFTA_TABLE_FLAGS, &[0, 0, 0, 2][..]));
    }

    #[test]
    fn chain_message_hooks_prerouting_at_dstnat() {
        let m = new_chain(1, "t");
        let a = attrs(&m[20..]);
        assert_eq!(a[0], (NFTA_CHAIN_TABLE, &b"t\0"[..]));
        assert_eq!(a[1], (NFTA_CHAIN_NAME, &b"steal\0"[..]));
        assert_eq!(a[2].0, NFTA_CHAIN_HOOK | NLA_F_NESTED);
        let hook = attrs(a[2].1);
        assert_eq!(hook[0], (NFTA_HOOK_HOOKNUM, &[0, 0, 0, 0][..]));
        assert_eq!(hook[1], (NFTA_HOOK_PRIORITY, &(-100i32).to_be_bytes()[..]));
        assert_eq!(a[3], (NFTA_CHAIN_TYPE, &b"nat\0"[..]));
    }

    #[test]
    fn redirect_rule_matches_tcp_dport_and_redirects_to_the_listener() {
        let m = redirect_rule(3, "t", 8080, 40000);
        let a = attrs(&m[20..]);
        assert_eq!(a[2].0, NFTA_RULE_EXPRESSIONS | NLA_F_NESTED);
        let exprs = attrs(a[2].1);
        let names: Vec<_> = exprs
            .iter()
            .map(|(kind, body)| {
                assert_eq!(*kind, NFTA_LIST_ELEM | NLA_F_NESTED);
                let inner = attrs(body);
                assert_eq!(inner[1].0, NFTA_EXPR_DATA | NLA_F_NESTED);
                std::str::from_utf8(inner[0].1).unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "meta\0",
                "cmp\0",
                "payload\0",
                "cmp\0",
                "payload\0",
                "bitwise\0",
                "cmp\0",
                "immediate\0",
                "redir\0"
            ]
        );
        let data = |i: usize| attrs(attrs(exprs[i].1)[1].1);
        // cmp of the port: the value in network order, padded to 4 bytes on the wire.
        let port_cmp = data(3);
        let value = attrs(port_cmp[2].1);
        assert_eq!(value[0], (NFTA_DATA_VALUE, &8080u16.to_be_bytes()[..]));
        let flags = data(4);
        assert_eq!(flags[2], (NFTA_PAYLOAD_OFFSET, &[0, 0, 0, 13][..]));
        let bitwise = data(5);
        assert_eq!(attrs(bitwise[3].1)[0], (NFTA_DATA_VALUE, &[0x12][..]));
        let syn = data(6);
        assert_eq!(attrs(syn[2].1)[0], (NFTA_DATA_VALUE, &[0x02][..]));
        let immediate = data(7);
        assert_eq!(
            attrs(immediate[1].1)[0],
            (NFTA_DATA_VALUE, &40000u16.to_be_bytes()[..])
        );
        let payload = data(2);
        assert_eq!(payload[1], (NFTA_PAYLOAD_BASE, &[0, 0, 0, 2][..]));
        assert_eq!(payload[2], (NFTA_PAYLOAD_OFFSET, &[0, 0, 0, 2][..]));
    }

    #[test]
    fn batches_are_framed_and_every_inner_message_is_acknowledged() {
        let b = ports_batch(100, "t", &[(80, 1), (443, 1)]);
        assert_eq!(b.begin, 100);
        assert_eq!(b.acked, [101, 102, 103]);
        let mut kinds = Vec::new();
        let mut rest = &b.bytes[..];
        while !rest.is_empty() {
            let len = u32_at(rest, 0) as usize;
            kinds.push((u16_at(rest, 4), u32_at(rest, 8)));
            rest = &rest[len..];
        }
        assert_eq!(
            kinds,
            [
                (NFNL_MSG_BATCH_BEGIN, 100),
                ((10 << 8) | NFT_MSG_DELRULE, 101),
                ((10 << 8) | NFT_MSG_NEWRULE, 102),
                ((10 << 8) | NFT_MSG_NEWRULE, 103),
                (NFNL_MSG_BATCH_END, 104),
            ]
        );
        // The batch markers name the nftables subsystem in nfgenmsg's res_id (big endian).
        assert_eq!(&b.bytes[16..20], &[0, 0, 0, 10]);
    }

    #[test]
    fn answers_are_read_as_sequence_and_errno() {
        let mut buf = Vec::new();
        for (seq, err) in [(5u32, 0i32), (6, -libc::EEXIST)] {
            buf.extend_from_slice(&36u32.to_ne_bytes());
            buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            buf.extend_from_slice(&0u16.to_ne_bytes());
            buf.extend_from_slice(&seq.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&err.to_ne_bytes());
            buf.extend_from_slice(&[0u8; 16]);
        }
        assert_eq!(parse_answers(&buf), [(5, 0), (6, libc::EEXIST)]);
    }
}
