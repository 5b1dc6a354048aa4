//! nftables spoken over netlink: the few messages mirrord-net sends, encoded by hand.
//!
//! Two programs keep an nftables table of their own: the agent (the redirect of stolen ports,
//! in the target's network namespace) and the client (the session's loopback redirect, in the
//! session's namespace). Both need the same things: a `NETLINK_NETFILTER` socket, tables
//! (the agent's with `NFT_TABLE_F_OWNER`: the kernel deletes such a table when the socket
//! that made it closes, so nothing outlives its owner, SIGKILL included; the session's
//! without, since it goes with the session's namespace and an owned table's deletion would
//! hold up the owner's `close`), base chains, and rules of a handful of expressions, sent in
//! batches the kernel applies atomically. This crate holds
//! exactly that; each user keeps the content of its own rules.
//!
//! It is a crate of its own, not a module of `mirrord-net-protocol`: that crate is the wire
//! format between client and agent and does no I/O, while this one owns a socket. It depends
//! on `libc` alone.
//!
//! The messages are built here, not by a crate: the message types needed (a batch, a table,
//! a chain, rules of a few expressions) take a few hundred lines of plain TLV encoding,
//! tested byte for byte against the kernel's layout (and by the users' tests against the
//! kernel itself). `nftnl` binds the C library (libnftnl, not on every target); `rustables`
//! covers far more than this needs and tracks its own API churn.
//!
//! Layout of one message: `nlmsghdr` (16 bytes), `nfgenmsg` (family, version, resource id:
//! 4 bytes), then attributes (`nlattr`: length, type, payload padded to 4 bytes); nested
//! attributes carry `NLA_F_NESTED`. A batch is `NFNL_MSG_BATCH_BEGIN`, the messages,
//! `NFNL_MSG_BATCH_END`; every inner message asks for an acknowledgement (`NLM_F_ACK`), so
//! [`Socket::talk`] knows when the kernel applied (or refused) all of it.
//!
//! [`conntrack`] asks the same kind of socket where a redirected datagram was going (the
//! session's outgoing filter). [`sock_diag`] asks a `NETLINK_SOCK_DIAG` socket which ports a
//! namespace serves (the session's served ports, the target's for `--steal-all`).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub mod conntrack;
pub mod sock_diag;

// netlink
pub const NLMSG_ERROR: u16 = 2;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLA_F_NESTED: u16 = 0x8000;
const NETLINK_NETFILTER: libc::c_int = 12;

// nfnetlink
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

// nf_tables message types
pub const NFT_MSG_NEWTABLE: u16 = 0;
pub const NFT_MSG_NEWCHAIN: u16 = 3;
pub const NFT_MSG_NEWRULE: u16 = 6;
pub const NFT_MSG_DELRULE: u16 = 8;
pub const NFT_MSG_GETGEN: u16 = 16;

pub const NFTA_TABLE_NAME: u16 = 1;
pub const NFTA_TABLE_FLAGS: u16 = 2;
pub const NFT_TABLE_F_OWNER: u32 = 0x2;

pub const NFTA_CHAIN_TABLE: u16 = 1;
pub const NFTA_CHAIN_NAME: u16 = 3;
pub const NFTA_CHAIN_HOOK: u16 = 4;
pub const NFTA_CHAIN_TYPE: u16 = 7;
pub const NFTA_HOOK_HOOKNUM: u16 = 1;
pub const NFTA_HOOK_PRIORITY: u16 = 2;
pub const NF_INET_PRE_ROUTING: u32 = 0;
pub const NF_INET_LOCAL_IN: u32 = 1;
pub const NF_INET_LOCAL_OUT: u32 = 3;
pub const NF_INET_POST_ROUTING: u32 = 4;
/// `dstnat`: where destination NAT runs.
pub const NF_IP_PRI_NAT_DST: i32 = -100;
/// `srcnat`: where source NAT runs.
pub const NF_IP_PRI_NAT_SRC: i32 = 100;

pub const NFTA_RULE_TABLE: u16 = 1;
pub const NFTA_RULE_CHAIN: u16 = 2;
pub const NFTA_RULE_EXPRESSIONS: u16 = 4;
pub const NFTA_LIST_ELEM: u16 = 1;
pub const NFTA_EXPR_NAME: u16 = 1;
pub const NFTA_EXPR_DATA: u16 = 2;
pub const NFTA_DATA_VALUE: u16 = 1;
pub const NFTA_DATA_VERDICT: u16 = 2;
pub const NFTA_VERDICT_CODE: u16 = 1;
/// `return`: leave this chain.
pub const NFT_RETURN: i32 = -5;

/// The verdict register.
pub const NFT_REG_VERDICT: u32 = 0;
pub const NFT_REG_1: u32 = 1;
pub const NFT_REG_2: u32 = 2;
pub const NFTA_META_DREG: u16 = 1;
pub const NFTA_META_KEY: u16 = 2;
pub const NFT_META_NFPROTO: u32 = 15;
pub const NFT_META_L4PROTO: u32 = 16;
/// The packet's mark (`SO_MARK` of its socket).
pub const NFT_META_MARK: u32 = 3;
pub const NFTA_CMP_SREG: u16 = 1;
pub const NFTA_CMP_OP: u16 = 2;
pub const NFTA_CMP_DATA: u16 = 3;
pub const NFT_CMP_EQ: u32 = 0;
pub const NFT_CMP_NEQ: u32 = 1;
pub const NFTA_PAYLOAD_DREG: u16 = 1;
pub const NFTA_PAYLOAD_BASE: u16 = 2;
pub const NFTA_PAYLOAD_OFFSET: u16 = 3;
pub const NFTA_PAYLOAD_LEN: u16 = 4;
pub const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
pub const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
pub const NFTA_IMMEDIATE_DREG: u16 = 1;
pub const NFTA_IMMEDIATE_DATA: u16 = 2;
pub const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
/// `ct` expression: the register to load into, and what to load.
pub const NFTA_CT_DREG: u16 = 1;
pub const NFTA_CT_KEY: u16 = 2;
pub const NFT_CT_STATE: u32 = 0;
pub const NFTA_BITWISE_SREG: u16 = 1;
pub const NFTA_BITWISE_DREG: u16 = 2;
pub const NFTA_BITWISE_LEN: u16 = 3;
pub const NFTA_BITWISE_MASK: u16 = 4;
pub const NFTA_BITWISE_XOR: u16 = 5;
pub const NFTA_NAT_TYPE: u16 = 1;
pub const NFTA_NAT_FAMILY: u16 = 2;
pub const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
pub const NFTA_NAT_REG_ADDR_MAX: u16 = 4;
pub const NFTA_NAT_FLAGS: u16 = 7;
pub const NFT_NAT_SNAT: u32 = 0;
pub const NFT_NAT_DNAT: u32 = 1;
/// Map the address keeping the bits outside the range's prefix (`dnat ip prefix to`).
pub const NF_NAT_RANGE_NETMAP: u32 = 0x40;

/// One netlink message being built: header, `nfgenmsg`, attributes.
pub struct Message {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Message {
    pub fn new(kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Self {
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

    /// An nf_tables message of the `inet` family (IPv4 and IPv6 at once).
    pub fn nft(kind: u16, flags: u16, seq: u32) -> Self {
        Self::new(
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            NLM_F_REQUEST | flags,
            seq,
            NFPROTO_INET,
            0,
        )
    }

    pub fn attr(&mut self, kind: u16, payload: &[u8]) -> &mut Self {
        let len = 4 + payload.len();
        self.buf
            .extend_from_slice(&u16::try_from(len).expect("short attribute").to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    pub fn str(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    pub fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.attr(kind, &value.to_be_bytes())
    }

    pub fn begin(&mut self, kind: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    pub fn end(&mut self) -> &mut Self {
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

    pub fn finish(mut self) -> Vec<u8> {
        assert!(self.nests.is_empty(), "unclosed nest");
        let len = u32::try_from(self.buf.len()).expect("short message");
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }

    /// One expression of a rule: `NFTA_LIST_ELEM { NAME, DATA { ... } }`.
    pub fn expr(&mut self, name: &str, data: impl FnOnce(&mut Self)) -> &mut Self {
        self.begin(NFTA_LIST_ELEM).str(NFTA_EXPR_NAME, name);
        self.begin(NFTA_EXPR_DATA);
        data(self);
        self.end().end()
    }

    /// `[ meta load KEY => reg 1 ]`
    pub fn meta(&mut self, key: u32) -> &mut Self {
        self.expr("meta", |m| {
            m.be32(NFTA_META_KEY, key).be32(NFTA_META_DREG, NFT_REG_1);
        })
    }

    /// `[ cmp eq reg 1 VALUE ]`
    pub fn cmp_eq(&mut self, value: &[u8]) -> &mut Self {
        self.expr("cmp", |m| {
            m.be32(NFTA_CMP_SREG, NFT_REG_1)
                .be32(NFTA_CMP_OP, NFT_CMP_EQ);
            m.begin(NFTA_CMP_DATA).attr(NFTA_DATA_VALUE, value).end();
        })
    }

    /// `[ cmp neq reg 1 VALUE ]`
    pub fn cmp_neq(&mut self, value: &[u8]) -> &mut Self {
        self.expr("cmp", |m| {
            m.be32(NFTA_CMP_SREG, NFT_REG_1)
                .be32(NFTA_CMP_OP, NFT_CMP_NEQ);
            m.begin(NFTA_CMP_DATA).attr(NFTA_DATA_VALUE, value).end();
        })
    }

    /// `[ payload load LEN b @ BASE header + OFFSET => reg 1 ]`
    pub fn payload(&mut self, base: u32, offset: u32, len: u32) -> &mut Self {
        self.expr("payload", |m| {
            m.be32(NFTA_PAYLOAD_DREG, NFT_REG_1)
                .be32(NFTA_PAYLOAD_BASE, base)
                .be32(NFTA_PAYLOAD_OFFSET, offset)
                .be32(NFTA_PAYLOAD_LEN, len);
        })
    }

    /// `[ bitwise reg 1 = (reg 1 & MASK) ^ 0 ]`
    pub fn and_mask(&mut self, mask: &[u8]) -> &mut Self {
        let zero = vec![0u8; mask.len()];
        self.expr("bitwise", |m| {
            m.be32(NFTA_BITWISE_SREG, NFT_REG_1)
                .be32(NFTA_BITWISE_DREG, NFT_REG_1)
                .be32(NFTA_BITWISE_LEN, mask.len() as u32);
            m.begin(NFTA_BITWISE_MASK).attr(NFTA_DATA_VALUE, mask).end();
            m.begin(NFTA_BITWISE_XOR).attr(NFTA_DATA_VALUE, &zero).end();
        })
    }

    /// `[ immediate reg REG VALUE ]`
    pub fn immediate(&mut self, reg: u32, value: &[u8]) -> &mut Self {
        self.expr("immediate", |m| {
            m.be32(NFTA_IMMEDIATE_DREG, reg);
            m.begin(NFTA_IMMEDIATE_DATA)
                .attr(NFTA_DATA_VALUE, value)
                .end();
        })
    }

    /// `[ immediate reg 0 VERDICT ]`
    pub fn verdict(&mut self, code: i32) -> &mut Self {
        self.expr("immediate", |m| {
            m.be32(NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
            m.begin(NFTA_IMMEDIATE_DATA)
                .begin(NFTA_DATA_VERDICT)
                .be32(NFTA_VERDICT_CODE, code as u32)
                .end()
                .end();
        })
    }
}

/// A batch marker (`NFNL_MSG_BATCH_BEGIN` / `END`).
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
pub fn new_table(seq: u32, table: &str) -> Vec<u8> {
    new_table_with_flags(seq, table, NFT_TABLE_F_OWNER)
}

/// `add table inet NAME` with the table flags `flags` (0: a table that lives as long as its
/// network namespace, whoever made it).
pub fn new_table_with_flags(seq: u32, table: &str, flags: u32) -> Vec<u8> {
    let mut m = Message::nft(NFT_MSG_NEWTABLE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    m.str(NFTA_TABLE_NAME, table).be32(NFTA_TABLE_FLAGS, flags);
    m.finish()
}

/// `add chain inet TABLE CHAIN { type nat hook HOOK priority PRIORITY; }`
pub fn new_nat_chain(seq: u32, table: &str, chain: &str, hook: u32, priority: i32) -> Vec<u8> {
    let mut m = Message::nft(NFT_MSG_NEWCHAIN, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq);
    m.str(NFTA_CHAIN_TABLE, table).str(NFTA_CHAIN_NAME, chain);
    m.begin(NFTA_CHAIN_HOOK)
        .be32(NFTA_HOOK_HOOKNUM, hook)
        .be32(NFTA_HOOK_PRIORITY, priority as u32)
        .end();
    m.str(NFTA_CHAIN_TYPE, "nat");
    m.finish()
}

/// `flush chain inet TABLE CHAIN`
pub fn flush_chain(seq: u32, table: &str, chain: &str) -> Vec<u8> {
    let mut m = Message::nft(NFT_MSG_DELRULE, NLM_F_ACK, seq);
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    m.finish()
}

/// `add rule inet TABLE CHAIN ...`, the expressions written by `exprs`.
pub fn new_rule(seq: u32, table: &str, chain: &str, exprs: impl FnOnce(&mut Message)) -> Vec<u8> {
    let mut m = Message::nft(
        NFT_MSG_NEWRULE,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND,
        seq,
    );
    m.str(NFTA_RULE_TABLE, table).str(NFTA_RULE_CHAIN, chain);
    m.begin(NFTA_RULE_EXPRESSIONS);
    exprs(&mut m);
    m.end();
    m.finish()
}

/// What a batch's builder is handed: push one message, made from its sequence number.
pub type Push<'a> = dyn FnMut(&dyn Fn(u32) -> Vec<u8>) + 'a;

/// A batch: the messages framed by BEGIN and END, and the sequence numbers that get an
/// answer (every message but the markers, which only answer when they fail).
pub struct Batch {
    pub bytes: Vec<u8>,
    pub acked: Vec<u32>,
    pub begin: u32,
}

impl Batch {
    /// The messages `build` pushes (each made from its sequence number), framed.
    pub fn new(
        first_seq: u32,
        build: impl FnOnce(&mut dyn FnMut(&dyn Fn(u32) -> Vec<u8>)),
    ) -> Self {
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

    /// How many sequence numbers the batch used.
    pub fn seq_count(&self) -> u32 {
        self.acked.len() as u32 + 2
    }
}

/// What the kernel answered one message: `(seq, errno)` for an error or ack (errno 0).
pub fn parse_answers(mut buf: &[u8]) -> Vec<(u32, i32)> {
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

/// A netlink socket of `protocol` in the calling thread's network namespace.
pub(crate) fn open_netlink(protocol: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Bounds each `recv` on `fd` to `seconds`: the kernel answers at once, and a socket whose
/// answer never comes must not hang its caller.
pub(crate) fn set_receive_timeout(fd: &OwnedFd, seconds: libc::time_t) {
    let timeout = libc::timeval {
        tv_sec: seconds,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a correctly sized timeval.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
}

/// A `NETLINK_NETFILTER` socket, bound to the network namespace it was opened in (whoever
/// uses it later, from wherever).
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self::from_fd(open_netlink(NETLINK_NETFILTER)?))
    }

    /// Adopts a socket opened elsewhere (another namespace, another process).
    pub fn from_fd(fd: OwnedFd) -> Self {
        set_receive_timeout(&fd, 2);
        Self {
            fd,
            seq: std::process::id().wrapping_mul(1000),
        }
    }

    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// Builds a batch from fresh sequence numbers and has the kernel apply it.
    pub fn apply(
        &mut self,
        build: impl FnOnce(&mut dyn FnMut(&dyn Fn(u32) -> Vec<u8>)),
    ) -> io::Result<()> {
        let batch = Batch::new(self.seq, build);
        self.seq = self.seq.wrapping_add(batch.seq_count());
        self.talk(&batch)
    }

    /// Sends a batch and waits for the answer to each of its messages.
    pub fn talk(&self, batch: &Batch) -> io::Result<()> {
        self.drain();
        self.send(&batch.bytes)?;
        let mut waiting: Vec<u32> = batch.acked.clone();
        let mut first_error = None;
        let mut buf = vec![0u8; 64 * 1024];
        while !waiting.is_empty() {
            let n = self.recv(&mut buf, 0)?;
            for (seq, errno) in parse_answers(&buf[..n]) {
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

    /// Whether this namespace's kernel speaks nf_tables: asks for the rule set's generation,
    /// which every nf_tables kernel answers, without privileges and without changing anything.
    /// A kernel without nf_tables (built without it, or its module neither loaded nor
    /// loadable) answers `EINVAL` or `EOPNOTSUPP`; any error is returned as it came.
    pub fn ask_generation(&mut self) -> io::Result<()> {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        self.drain();
        self.send(&Message::nft(NFT_MSG_GETGEN, NLM_F_ACK, seq).finish())?;
        let mut buf = vec![0u8; 8192];
        loop {
            let n = self.recv(&mut buf, 0)?;
            if let Some(&(_, errno)) = parse_answers(&buf[..n])
                .iter()
                .find(|(answered, _)| *answered == seq)
            {
                return match errno {
                    0 => Ok(()),
                    errno => Err(io::Error::from_raw_os_error(errno)),
                };
            }
        }
    }

    /// Sends `bytes` (one or more messages) to the kernel.
    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain data; zero is its "the kernel" address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sendto with a valid buffer and a sockaddr_nl of the right size.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One `recv` into `buf`: how many bytes came.
    fn recv(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: recv into a buffer we own.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                flags,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Drops answers left over from an earlier batch that failed half-way.
    fn drain(&self) {
        let mut buf = [0u8; 4096];
        while matches!(self.recv(&mut buf, libc::MSG_DONTWAIT), Ok(n) if n > 0) {}
    }
}

/// Helpers for tests that take messages apart (here and in the users' crates).
pub mod inspect {
    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
    }

    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Walks the attributes of `b` (no headers), returning `(type, payload)` pairs.
    pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
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

    /// The names of a rule message's expressions, in order.
    pub fn expr_names(rule: &[u8]) -> Vec<String> {
        let a = attrs(&rule[20..]);
        let exprs = a
            .iter()
            .find(|(kind, _)| *kind == super::NFTA_RULE_EXPRESSIONS | super::NLA_F_NESTED)
            .expect("expressions");
        attrs(exprs.1)
            .iter()
            .map(|(_, body)| {
                let name = attrs(body)[0].1;
                String::from_utf8_lossy(&name[..name.len() - 1]).into_owned()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::inspect::*;
    use super::*;

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
    fn chain_message_names_its_hook_and_priority() {
        let m = new_nat_chain(1, "t", "out", NF_INET_LOCAL_OUT, NF_IP_PRI_NAT_DST);
        let a = attrs(&m[20..]);
        assert_eq!(a[0], (NFTA_CHAIN_TABLE, &b"t\0"[..]));
        assert_eq!(a[1], (NFTA_CHAIN_NAME, &b"out\0"[..]));
        assert_eq!(a[2].0, NFTA_CHAIN_HOOK | NLA_F_NESTED);
        let hook = attrs(a[2].1);
        assert_eq!(hook[0], (NFTA_HOOK_HOOKNUM, &[0, 0, 0, 3][..]));
        assert_eq!(hook[1], (NFTA_HOOK_PRIORITY, &(-100i32).to_be_bytes()[..]));
        assert_eq!(a[3], (NFTA_CHAIN_TYPE, &b"nat\0"[..]));
    }

    #[test]
    fn a_verdict_is_a_nested_code_in_the_verdict_register() {
        let m = new_rule(1, "t", "c", |m| {
            m.verdict(NFT_RETURN);
        });
        assert_eq!(expr_names(&m), ["immediate"]);
        let a = attrs(&m[20..]);
        let expr = attrs(attrs(a[2].1)[0].1);
        let data = attrs(expr[1].1);
        assert_eq!(data[0], (NFTA_IMMEDIATE_DREG, &[0, 0, 0, 0][..]));
        let verdict = attrs(attrs(data[1].1)[0].1);
        assert_eq!(verdict[0], (NFTA_VERDICT_CODE, &(-5i32).to_be_bytes()[..]));
    }

    #[test]
    fn batches_are_framed_and_every_inner_message_is_acknowledged() {
        let b = Batch::new(100, |push| {
            push(&|seq| flush_chain(seq, "t", "c"));
            push(&|seq| new_rule(seq, "t", "c", |_| {}));
        });
        assert_eq!(b.begin, 100);
        assert_eq!(b.acked, [101, 102]);
        assert_eq!(b.seq_count(), 4);
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
                (NFNL_MSG_BATCH_END, 103),
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
