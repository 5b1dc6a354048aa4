//! The splice as a session would set it up, where the agent never holds the program's socket:
//! one socket hash keyed by (a connection's 4-tuple as the program's socket sees it, a role),
//! a cookie map, and three programs.
//!
//! - `sock_ops`, attached to a cgroup of the session's own: a socket created in it that
//!   completes an active open (`ACTIVE_ESTABLISHED`) goes into the socket hash under
//!   (its tuple, [`PROGRAM`]), and its receive buffer is raised to [`PROGRAM_RCVBUF`].
//!   Nothing else in the session is touched.
//! - `sk_msg`, on the socket hash: what a socket there sends goes out of the socket under
//!   (the sender's tuple, [`UPSTREAM`]), in the sender's own `sendmsg`. The agent puts its
//!   upstream socket there when it learns the tuple (from the SYN, before it answers it). A
//!   sender with no upstream socket keeps its data (`SK_PASS`): its own TCP connection, the
//!   session's stack, carries it, which is the fallback for every flow not spliced.
//! - `sk_skb` verdict, on the socket hash: what an upstream socket receives is queued for
//!   reading on the program's socket of the tuple its cookie names in the cookie map (which
//!   the agent writes with the upstream socket), and so is its FIN if the entry says
//!   [`FinPath::Map`]. A socket with no cookie entry keeps its data.
//!
//! One map for both programs, so the program's socket has the verdict program too: that
//! makes the kernel read it with its parser-aware `recvmsg`, which turns a redirected FIN
//! into an end of file. In a layout of two maps, with the verdict only on the upstream
//! socket's, the same redirected FIN made the program's `read` fail with `EFAULT`.
//!
//! The tuple is one u64: the remote IPv4 address in the upper half, and the remote port (as
//! the kernel shows it to both program types: network byte order, shifted 16 bits up) or'd
//! with the local port (host byte order) in the lower. The session has one address, so the
//! local address is left out.

use std::fs;
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mirrord_net_tests::cgroup;

use crate::bpf::{self, Insn};

/// The role of a program's socket in a key.
pub const PROGRAM: u64 = 1;
/// The role of the agent's upstream socket in a key.
pub const UPSTREAM: u64 = 0;
/// The receive buffer `sock_ops` gives a program's socket (the kernel doubles it, and caps it
/// at `net.core.rmem_max`). Data queued through the map bypasses TCP, so the buffer never
/// grows by itself: at the default 128 KiB a 64 MiB download took 4.1 s (130 Mbit/s), the
/// kernel's worker retrying a full queue once a tick.
pub const PROGRAM_RCVBUF: i32 = 4 << 20;

// `struct bpf_sock_ops` and `struct __sk_buff` offsets (linux/bpf.h); `struct sk_msg_md`'s
// are in `bpf`.
const SOCK_OPS_OP: i16 = 0;
const SOCK_OPS_FAMILY: i16 = 20;
const SOCK_OPS_REMOTE_IP4: i16 = 24;
const SOCK_OPS_REMOTE_PORT: i16 = 64;
const SOCK_OPS_LOCAL_PORT: i16 = 68;
const SKB_LEN: i16 = 0;
const ACTIVE_ESTABLISHED_CB: i32 = 4;
const AF_INET: i32 = 2;
const SOL_SOCKET: i32 = 1;
const SO_RCVBUF: i32 = 8;
const SK_PASS: i32 = 1;

/// How the end of the server's data reaches the program's socket.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FinPath {
    /// The upstream socket keeps its FIN; the agent, told of it, ends the program's
    /// connection through the session's stack, apart from the data, which the kernel's
    /// worker may still hold.
    Stack,
    /// The FIN (a zero-length skb) is redirected behind the data into the program's socket's
    /// queue, where it reads as the end; the stack sends none.
    Map,
}

impl FinPath {
    pub fn name(self) -> &'static str {
        match self {
            FinPath::Stack => "the FIN through the stack",
            FinPath::Map => "the FIN through the map",
        }
    }
}

/// The maps and programs of one session.
pub struct SessionMaps {
    sockets: OwnedFd,
    cookies: OwnedFd,
    _programs: Vec<OwnedFd>,
}

impl SessionMaps {
    /// Makes the maps and programs, and attaches the `sock_ops` program to `cgroup`.
    pub fn new(cgroup: &Cgroup) -> Result<SessionMaps> {
        // Key: (tuple, role); value: a socket (its descriptor in, its cookie out).
        let sockets = bpf::create_map(bpf::MAP_TYPE_SOCKHASH, 16, 8, 4096)?;
        // Key: an upstream socket's cookie; value: (its connection's tuple, its FinPath as
        // 0 for Stack and 1 for Map).
        let cookies = bpf::create_map(bpf::MAP_TYPE_HASH, 8, 16, 4096)?;
        let sockets_fd = sockets.as_raw_fd();
        let cookies_fd = cookies.as_raw_fd();

        let sock_ops = [
            &[
                Insn::mov64_reg(6, 1),
                Insn::ldx_w(2, 6, SOCK_OPS_OP),
                Insn::jne_imm(2, ACTIVE_ESTABLISHED_CB, 27), // to `out`
                Insn::ldx_w(2, 6, SOCK_OPS_FAMILY),
                Insn::jne_imm(2, AF_INET, 25), // to `out`
            ][..],
            &tuple_into_r2(
                SOCK_OPS_REMOTE_IP4,
                SOCK_OPS_REMOTE_PORT,
                SOCK_OPS_LOCAL_PORT,
            ),
            &call_with_key(PROGRAM, sockets_fd, 0, bpf::HELPER_SOCK_HASH_UPDATE),
            &[
                Insn::mov64_imm(2, PROGRAM_RCVBUF),
                Insn::stx_dw(10, 2, -24), // the int's four bytes first (little endian)
                Insn::mov64_reg(1, 6),
                Insn::mov64_imm(2, SOL_SOCKET),
                Insn::mov64_imm(3, SO_RCVBUF),
                Insn::mov64_reg(4, 10),
                Insn::add64_imm(4, -24),
                Insn::mov64_imm(5, 4),
                Insn::call(bpf::HELPER_SETSOCKOPT),
                // out:
                Insn::mov64_imm(0, 1),
                Insn::exit(),
            ],
        ]
        .concat();

        let sent = [
            &[Insn::mov64_reg(6, 1)][..],
            &tuple_into_r2(
                bpf::SK_MSG_REMOTE_IP4,
                bpf::SK_MSG_REMOTE_PORT,
                bpf::SK_MSG_LOCAL_PORT,
            ),
            // Out of the upstream socket.
            &call_with_key(UPSTREAM, sockets_fd, 0, bpf::HELPER_MSG_REDIRECT_HASH),
            &[
                // SK_DROP here only means "no upstream socket under that key": keep the data.
                Insn::mov64_imm(0, SK_PASS),
                Insn::exit(),
            ],
        ]
        .concat();

        let received = [
            &[
                Insn::mov64_reg(6, 1),
                Insn::call(bpf::HELPER_GET_SOCKET_COOKIE),
                Insn::stx_dw(10, 0, -8),
                Insn::ld_map_fd(1, cookies_fd),
                Insn::ld_map_fd_high(),
                Insn::mov64_reg(2, 10),
                Insn::add64_imm(2, -8),
                Insn::call(bpf::HELPER_MAP_LOOKUP_ELEM),
                Insn::jeq_imm(0, 0, 16), // no entry: to `pass`
                Insn::ldx_dw(2, 0, 8),   // the FinPath
                Insn::jne_imm(2, 0, 2),  // Map: to `redirect`
                Insn::ldx_w(3, 6, SKB_LEN),
                Insn::jeq_imm(3, 0, 12), // Stack, and the FIN: to `pass`
                // redirect:
                Insn::ldx_dw(2, 0, 0), // the tuple
            ][..],
            &call_with_key(
                PROGRAM,
                sockets_fd,
                bpf::F_INGRESS,
                bpf::HELPER_SK_REDIRECT_HASH,
            ),
            &[
                Insn::exit(),
                // pass:
                Insn::mov64_imm(0, SK_PASS),
                Insn::exit(),
            ],
        ]
        .concat();

        let sent = bpf::load(bpf::PROG_TYPE_SK_MSG, bpf::ATTACH_SK_MSG_VERDICT, &sent)
            .context("the sk_msg program")?;
        bpf::attach(sockets.as_fd(), &sent, bpf::ATTACH_SK_MSG_VERDICT)?;
        let received = bpf::load(bpf::PROG_TYPE_SK_SKB, bpf::ATTACH_SK_SKB_VERDICT, &received)
            .context("the sk_skb program")?;
        bpf::attach(sockets.as_fd(), &received, bpf::ATTACH_SK_SKB_VERDICT)?;
        let sock_ops = bpf::load(
            bpf::PROG_TYPE_SOCK_OPS,
            bpf::ATTACH_CGROUP_SOCK_OPS,
            &sock_ops,
        )
        .context("the sock_ops program")?;
        bpf::attach(cgroup.dir.as_fd(), &sock_ops, bpf::ATTACH_CGROUP_SOCK_OPS)?;
        Ok(SessionMaps {
            sockets,
            cookies,
            _programs: vec![sent, received, sock_ops],
        })
    }

    /// Splices the agent's `upstream` socket to the program's socket of `tuple`: what the
    /// agent does once its upstream `connect` succeeded, before it answers the SYN.
    pub fn splice(&self, tuple: u64, upstream: &TcpStream, fin: FinPath) -> Result<()> {
        let fd = upstream.as_raw_fd() as u64;
        bpf::update(&self.sockets, &key(tuple, UPSTREAM), &fd.to_ne_bytes())
            .context("the upstream socket")?;
        let cookie = bpf::cookie(upstream)?;
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&tuple.to_ne_bytes());
        value[8..].copy_from_slice(&u64::from(fin == FinPath::Map).to_ne_bytes());
        bpf::update(&self.cookies, &cookie.to_ne_bytes(), &value)
            .context("the upstream socket's cookie")
    }

    /// Ends the splice of `upstream`, the upstream socket of `tuple`: once in no map, it is an
    /// ordinary socket again, which the agent reads and relays through the session's stack.
    /// What the verdict had already queued on the program's socket stays ahead of what comes
    /// that way.
    pub fn unsplice(&self, tuple: u64, upstream: &TcpStream) -> Result<()> {
        bpf::delete(&self.cookies, &bpf::cookie(upstream)?.to_ne_bytes())?;
        bpf::delete(&self.sockets, &key(tuple, UPSTREAM))
    }

    /// Whether the `sock_ops` program put the program's socket of `tuple` in the map.
    pub fn holds_program_socket(&self, tuple: u64) -> bool {
        let mut cookie = [0u8; 8];
        bpf::lookup(&self.sockets, &key(tuple, PROGRAM), &mut cookie).unwrap_or(false)
    }
}

/// `r2` = the tuple of the socket whose context is in `r6`, from the context's remote
/// address, remote port and local port at the offsets given.
fn tuple_into_r2(remote_ip4: i16, remote_port: i16, local_port: i16) -> [Insn; 6] {
    [
        Insn::ldx_w(2, 6, remote_ip4),
        Insn::lsh64_imm(2, 32),
        Insn::ldx_w(3, 6, remote_port),
        Insn::or64_reg(2, 3),
        Insn::ldx_w(3, 6, local_port),
        Insn::or64_reg(2, 3),
    ]
}

/// `helper(r6's context, map, &(r2's tuple, role), flags)`, the key on the stack at -16.
fn call_with_key(role: u64, map_fd: i32, flags: i32, helper: i32) -> [Insn; 10] {
    [
        Insn::stx_dw(10, 2, -16),
        Insn::mov64_imm(2, role as i32),
        Insn::stx_dw(10, 2, -8),
        Insn::mov64_reg(1, 6),
        Insn::ld_map_fd(2, map_fd),
        Insn::ld_map_fd_high(),
        Insn::mov64_reg(3, 10),
        Insn::add64_imm(3, -16),
        Insn::mov64_imm(4, flags),
        Insn::call(helper),
    ]
}

fn key(tuple: u64, role: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&tuple.to_ne_bytes());
    key[8..].copy_from_slice(&role.to_ne_bytes());
    key
}

/// The tuple of a program's socket (IPv4), as the programs compute it.
pub fn tuple_of(program_socket: &TcpStream) -> Result<u64> {
    let (local, remote) = (program_socket.local_addr()?, program_socket.peer_addr()?);
    let SocketAddr::V4(remote) = remote else {
        bail!("IPv4 only");
    };
    Ok(tuple(remote, local.port()))
}

/// The tuple of a connection from `local_port` to `remote`, as the programs compute it.
pub fn tuple(remote: SocketAddrV4, local_port: u16) -> u64 {
    let ip = u64::from(u32::from_ne_bytes(remote.ip().octets()));
    let port = u64::from(u16::from_ne_bytes(remote.port().to_be_bytes())) << 16;
    (ip << 32) | port | u64::from(local_port)
}

/// A cgroup (v2) of the probe's own, removed when dropped. Sockets created while the probe is
/// inside ([`Cgroup::create_inside`]) are the cgroup's for life, as a session's are.
pub struct Cgroup {
    path: PathBuf,
    dir: fs::File,
    /// The probe's own cgroup, to go back to.
    home: PathBuf,
}

impl Cgroup {
    /// Makes cgroup `name` at the cgroup v2 root. A test-style name (`mnet-<pid>-<n>-…`) lets
    /// the tests' sweep remove it if the probe is killed before its end.
    pub fn create(name: &str) -> Result<Cgroup> {
        let mount = cgroup::v2_mount().context("no cgroup v2 hierarchy is mounted")?;
        let own = fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let home = mount.join(own.trim_start_matches('/'));
        let path = mount.join(name);
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        let dir = fs::File::open(&path)?;
        Ok(Cgroup { path, dir, home })
    }

    /// Runs `make` with the probe in this cgroup, then moves the probe back home.
    pub fn create_inside<T>(&self, make: impl FnOnce() -> T) -> Result<T> {
        move_to(&self.path)?;
        let made = make();
        move_to(&self.home)?;
        Ok(made)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = move_to(&self.home);
        let _ = fs::remove_dir(&self.path);
    }
}

fn move_to(cgroup: &Path) -> Result<()> {
    let procs = cgroup.join("cgroup.procs");
    fs::write(&procs, std::process::id().to_string())
        .with_context(|| format!("moving into {}", cgroup.display()))
}
