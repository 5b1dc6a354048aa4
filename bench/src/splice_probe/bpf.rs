//! The little of BPF the probe needs, by the raw `bpf(2)` system call: maps, their elements,
//! programs written out as instructions (no compiler, no object file), and attaching a program
//! to a map or a cgroup; and [`SockHash`], the simplest splices.
//!
//! Every [`SockHash`] program computes a 64-bit key from the socket it runs on and redirects to
//! the socket stored under that key:
//!
//! - `sk_skb` verdicts (data a socket received) key by the socket's cookie
//!   (`bpf_get_socket_cookie`);
//! - `sk_msg` verdicts (data a socket sends) key by the socket's local port, since this
//!   kernel refuses the cookie helper to them.
//!
//! A map's program runs on the sockets that are *values* in it, so a socket that only sends
//! is held in the map under a key no program computes ([`SockHash::hold`]).

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use anyhow::{bail, Result};

// From linux/bpf.h.
const BPF_MAP_CREATE: i32 = 0;
const BPF_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_MAP_UPDATE_ELEM: i32 = 2;
const BPF_MAP_DELETE_ELEM: i32 = 3;
const BPF_PROG_LOAD: i32 = 5;
const BPF_PROG_ATTACH: i32 = 8;
pub const MAP_TYPE_HASH: u32 = 1;
pub const MAP_TYPE_SOCKHASH: u32 = 18;
pub const PROG_TYPE_SOCK_OPS: u32 = 13;
pub const PROG_TYPE_SK_SKB: u32 = 14;
pub const PROG_TYPE_SK_MSG: u32 = 16;
pub const ATTACH_CGROUP_SOCK_OPS: u32 = 3;
const ATTACH_SK_SKB_STREAM_PARSER: u32 = 4;
const ATTACH_SK_SKB_STREAM_VERDICT: u32 = 5;
pub const ATTACH_SK_MSG_VERDICT: u32 = 7;
pub const ATTACH_SK_SKB_VERDICT: u32 = 38;
pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
pub const HELPER_GET_SOCKET_COOKIE: i32 = 46;
pub const HELPER_SETSOCKOPT: i32 = 49;
pub const HELPER_SOCK_HASH_UPDATE: i32 = 70;
pub const HELPER_MSG_REDIRECT_HASH: i32 = 71;
pub const HELPER_SK_REDIRECT_HASH: i32 = 72;
pub const F_INGRESS: i32 = 1;
// `struct sk_msg_md` offsets.
pub const SK_MSG_REMOTE_IP4: i16 = 20;
/// Network byte order, shifted 16 bits up.
pub const SK_MSG_REMOTE_PORT: i16 = 60;
/// Host byte order.
pub const SK_MSG_LOCAL_PORT: i16 = 64;
/// The byte size of `union bpf_attr` the probe passes: larger than any command it uses, and
/// zero beyond what it sets, as the kernel requires.
const ATTR_SIZE: usize = 128;

/// Where a redirected socket's data goes.
#[derive(Clone, Copy, Debug)]
pub enum Verdict {
    /// Data received by a socket is sent out of the socket under its key (`sk_skb`, no
    /// stream parser).
    ReceivedOut,
    /// The same through a stream parser that takes every skb whole (`sk_skb` stream verdict),
    /// the older attachment.
    ReceivedOutParsed,
    /// Data received by a socket is queued for reading on the socket under its key.
    ReceivedIn,
    /// Data a socket sends is sent out of the socket under its key (`sk_msg`).
    SentOut,
    /// Data a socket sends is queued for reading on the socket under its key.
    SentIn,
}

/// A `BPF_MAP_TYPE_SOCKHASH` with one redirect program attached.
pub struct SockHash {
    map: OwnedFd,
    verdict: Verdict,
    _programs: Vec<OwnedFd>,
}

impl SockHash {
    pub fn new(verdict: Verdict) -> Result<SockHash> {
        // Keys are u64; a value is a socket's descriptor.
        let map = create_map(MAP_TYPE_SOCKHASH, 8, 4, 4096)?;
        let mut programs = Vec::new();
        let (prog_type, attach_type, helper, flags) = match verdict {
            Verdict::ReceivedOut => (
                PROG_TYPE_SK_SKB,
                ATTACH_SK_SKB_VERDICT,
                HELPER_SK_REDIRECT_HASH,
                0,
            ),
            Verdict::ReceivedOutParsed => (
                PROG_TYPE_SK_SKB,
                ATTACH_SK_SKB_STREAM_VERDICT,
                HELPER_SK_REDIRECT_HASH,
                0,
            ),
            Verdict::ReceivedIn => (
                PROG_TYPE_SK_SKB,
                ATTACH_SK_SKB_VERDICT,
                HELPER_SK_REDIRECT_HASH,
                F_INGRESS,
            ),
            Verdict::SentOut => (
                PROG_TYPE_SK_MSG,
                ATTACH_SK_MSG_VERDICT,
                HELPER_MSG_REDIRECT_HASH,
                0,
            ),
            Verdict::SentIn => (
                PROG_TYPE_SK_MSG,
                ATTACH_SK_MSG_VERDICT,
                HELPER_MSG_REDIRECT_HASH,
                F_INGRESS,
            ),
        };
        if matches!(verdict, Verdict::ReceivedOutParsed) {
            // The parser: the message is the whole skb (`return skb->len`).
            let parser = [Insn::ldx_w(0, 1, 0), Insn::exit()];
            let parser = load(PROG_TYPE_SK_SKB, ATTACH_SK_SKB_STREAM_PARSER, &parser)?;
            attach(map.as_fd(), &parser, ATTACH_SK_SKB_STREAM_PARSER)?;
            programs.push(parser);
        }
        let key = if prog_type == PROG_TYPE_SK_MSG {
            Insn::ldx_w(0, 1, SK_MSG_LOCAL_PORT)
        } else {
            Insn::call(HELPER_GET_SOCKET_COOKIE)
        };
        let program = [
            Insn::mov64_reg(6, 1), // r6 = ctx
            key,                   // r0 = key of this socket
            Insn::stx_dw(10, 0, -8),
            Insn::mov64_reg(1, 6),
            Insn::ld_map_fd(2, map.as_raw_fd()),
            Insn::ld_map_fd_high(),
            Insn::mov64_reg(3, 10),
            Insn::add64_imm(3, -8),
            Insn::mov64_imm(4, flags),
            Insn::call(helper), // r0 = SK_PASS once redirected, SK_DROP if no such key
            Insn::exit(),
        ];
        let program = load(prog_type, attach_type, &program)?;
        attach(map.as_fd(), &program, attach_type)?;
        programs.push(program);
        Ok(SockHash {
            map,
            verdict,
            _programs: programs,
        })
    }

    /// Redirects what the program sees on `from` to `to`.
    pub fn redirect(&self, from: &TcpStream, to: &TcpStream) -> Result<()> {
        let key = match self.verdict {
            Verdict::SentOut | Verdict::SentIn => u64::from(from.local_addr()?.port()),
            _ => cookie(from)?,
        };
        self.update(key, to)
    }

    /// Puts `socket` in the map under a key no program computes, so that the map's program
    /// runs on it.
    pub fn hold(&self, socket: &TcpStream) -> Result<()> {
        self.update((1 << 62) | cookie(socket)?, socket)
    }

    fn update(&self, key: u64, socket: &TcpStream) -> Result<()> {
        let value = socket.as_raw_fd() as u32;
        update(&self.map, &key.to_ne_bytes(), &value.to_ne_bytes())
    }
}

/// A new map of `map_type` with keys and values of the sizes given.
pub fn create_map(map_type: u32, key_size: u32, value_size: u32, entries: u32) -> Result<OwnedFd> {
    let mut attr = Attr::default();
    attr.u32_at(0, map_type);
    attr.u32_at(4, key_size);
    attr.u32_at(8, value_size);
    attr.u32_at(12, entries);
    attr.call_fd(BPF_MAP_CREATE, "creating a map")
}

/// Sets `key` to `value` in `map` (for a socket map, the value is a socket's descriptor).
pub fn update(map: &OwnedFd, key: &[u8], value: &[u8]) -> Result<()> {
    let mut attr = Attr::element(map, key);
    attr.u64_at(16, value.as_ptr() as u64);
    attr.call(BPF_MAP_UPDATE_ELEM, "updating a map")?;
    Ok(())
}

/// Removes `key` from `map`.
pub fn delete(map: &OwnedFd, key: &[u8]) -> Result<()> {
    Attr::element(map, key).call(BPF_MAP_DELETE_ELEM, "removing a key")?;
    Ok(())
}

/// Reads `key`'s value in `map` into `value`; `false` if there is no such key.
pub fn lookup(map: &OwnedFd, key: &[u8], value: &mut [u8]) -> Result<bool> {
    let mut attr = Attr::element(map, key);
    attr.u64_at(16, value.as_mut_ptr() as u64);
    match attr.call_raw(BPF_MAP_LOOKUP_ELEM) {
        Ok(_) => Ok(true),
        Err(err) if err.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(err) => bail!("looking a key up: {err}"),
    }
}

pub fn cookie(socket: &TcpStream) -> Result<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: SO_COOKIE writes a u64 into the buffer whose size is given.
    let done = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if done != 0 {
        bail!("SO_COOKIE: {}", io::Error::last_os_error());
    }
    Ok(cookie)
}

pub fn load(prog_type: u32, attach: u32, program: &[Insn]) -> Result<OwnedFd> {
    let license = b"GPL\0";
    let mut log = vec![0u8; 1 << 16];
    let mut attr = Attr::default();
    attr.u32_at(0, prog_type);
    attr.u32_at(4, program.len() as u32);
    attr.u64_at(8, program.as_ptr() as u64);
    attr.u64_at(16, license.as_ptr() as u64);
    attr.u32_at(24, 1); // log level
    attr.u32_at(28, log.len() as u32);
    attr.u64_at(32, log.as_mut_ptr() as u64);
    attr.u32_at(68, attach); // expected_attach_type
    attr.call_fd(BPF_PROG_LOAD, "loading a program")
        .map_err(|err| {
            let log = String::from_utf8_lossy(&log);
            err.context(log.trim_end_matches('\0').to_owned())
        })
}

/// Attaches `program` to `target`: a socket map, or a cgroup's directory.
pub fn attach(target: BorrowedFd, program: &OwnedFd, attach: u32) -> Result<()> {
    let mut attr = Attr::default();
    attr.u32_at(0, target.as_raw_fd() as u32);
    attr.u32_at(4, program.as_raw_fd() as u32);
    attr.u32_at(8, attach);
    attr.call(BPF_PROG_ATTACH, "attaching a program")?;
    Ok(())
}

/// `union bpf_attr`, as bytes.
struct Attr([u8; ATTR_SIZE]);

impl Default for Attr {
    fn default() -> Self {
        Attr([0; ATTR_SIZE])
    }
}

impl Attr {
    /// The attribute of a command on one element of `map`: the map and the key (which must
    /// outlive the call).
    fn element(map: &OwnedFd, key: &[u8]) -> Attr {
        let mut attr = Attr::default();
        attr.u32_at(0, map.as_raw_fd() as u32);
        attr.u64_at(8, key.as_ptr() as u64);
        attr
    }

    fn u32_at(&mut self, offset: usize, value: u32) {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    }

    fn u64_at(&mut self, offset: usize, value: u64) {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
    }

    /// `bpf(cmd, self)`.
    fn call(&mut self, cmd: i32, what: &str) -> Result<i64> {
        self.call_raw(cmd)
            .map_err(|err| anyhow::anyhow!("{what}: {err}"))
    }

    fn call_raw(&mut self, cmd: i32) -> io::Result<i64> {
        // SAFETY: the attribute is ATTR_SIZE bytes, and every pointer set in it refers to
        // memory that outlives the call.
        let done = unsafe { libc::syscall(libc::SYS_bpf, cmd, self.0.as_mut_ptr(), ATTR_SIZE) };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(done)
    }

    /// `bpf(cmd, self)` for a command that returns a new descriptor.
    fn call_fd(&mut self, cmd: i32, what: &str) -> Result<OwnedFd> {
        let fd = self.call(cmd, what)?;
        // SAFETY: the command returned a new descriptor, which the caller now owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }
}

/// `struct bpf_insn`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            regs: dst | (src << 4),
            off,
            imm,
        }
    }
    pub fn mov64_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0xbf, dst, src, 0, 0)
    }
    pub fn mov64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0xb7, dst, 0, 0, imm)
    }
    pub fn add64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x07, dst, 0, 0, imm)
    }
    pub fn ldx_w(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x61, dst, src, off, 0)
    }
    pub fn stx_dw(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x7b, dst, src, off, 0)
    }
    pub fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
        Insn::new(0x79, dst, src, off, 0)
    }
    pub fn lsh64_imm(dst: u8, imm: i32) -> Insn {
        Insn::new(0x67, dst, 0, 0, imm)
    }
    pub fn or64_reg(dst: u8, src: u8) -> Insn {
        Insn::new(0x4f, dst, src, 0, 0)
    }
    /// `if dst == imm goto +off`.
    pub fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x15, dst, 0, off, imm)
    }
    /// `if dst != imm goto +off`.
    pub fn jne_imm(dst: u8, imm: i32, off: i16) -> Insn {
        Insn::new(0x55, dst, 0, off, imm)
    }
    /// The first half of `dst = map` (`BPF_LD | BPF_IMM | BPF_DW`, `BPF_PSEUDO_MAP_FD`).
    pub fn ld_map_fd(dst: u8, fd: i32) -> Insn {
        Insn::new(0x18, dst, 1, 0, fd)
    }
    pub fn ld_map_fd_high() -> Insn {
        Insn::new(0, 0, 0, 0, 0)
    }
    pub fn call(helper: i32) -> Insn {
        Insn::new(0x85, 0, 0, 0, helper)
    }
    pub fn exit() -> Insn {
        Insn::new(0x95, 0, 0, 0, 0)
    }
}
