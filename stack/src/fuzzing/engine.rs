//! The flow-engine fuzz target's harness: the whole stack (flow tables, smoltcp, the upstream
//! sockets, the limits) driven through a memory link by a script of packets decoded from the
//! fuzzer's bytes, as a hostile session would write them to its TUN.
//!
//! The upstream side is real: the stack's sockets are the kernel's, in a network namespace
//! the harness makes for itself (its thread unshares one on first use; root only) with only
//! `lo` up. Echo servers listen on 127.0.0.1 and ::1 (TCP and UDP, port 7); port 9 is closed;
//! every other destination is unroutable (ENETUNREACH at once). So any input exercises the
//! paths a session reaches (connects that succeed, are refused or cannot route; data, FIN and
//! RST both ways; UDP answers and ICMP errors; echo), and no input can reach another host.
//!
//! The script, one step after another until the bytes run out (each argument one byte; a
//! missing byte reads as zero):
//!
//! | op % 8 | step | arguments |
//! |---|---|---|
//! | 0 | a raw packet | length (two bytes, at most 2048), the bytes |
//! | 1, 2 | a TCP segment, over IPv4 (1) or IPv6 (2) | `which` (bits 0–1: the client port, bits 2–3: echo, closed, echo, unroutable), flags (None, SYN, FIN, RST, PSH), whether to ACK what the stack sent, a signed offset from the next sequence number, payload length (< 64), the payload |
//! | 3 | a UDP datagram | `which` (bit 0: IPv6, bit 1: the closed port, bit 2: unroutable), payload length, the payload |
//! | 4 | an echo request | `which` (bit 0: IPv6, bit 1: unroutable), sequence number, payload length, the payload |
//! | 5 | wait | milliseconds (< 4) |
//! | 6, 7 | let the stack run | — |
//!
//! The harness plays the session's TCP as far as sequence numbers go: it keeps each client
//! port's next sequence number and acknowledges what the stack sent, so scripts reach
//! established connections and their ends, not only the stack's first checks.
//!
//! Checks: the stack never panics; every packet it sends is a well-formed IPv4 or IPv6
//! packet no longer than the MTU whose checksums hold; when the link closes, the stack stops
//! within two seconds.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use smoltcp::wire::{
    IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet, TcpControl, TcpPacket, UdpPacket,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, UdpSocket};

use crate::link::{memory_link, MemoryPeer};
use crate::packet::{echo_request_packet, tcp_segment, udp_datagram};
use crate::{serve_link, Limits, StackConfig};

/// The link's MTU: a common network's, so large answers are fragmented.
const MTU: usize = 1500;
/// The session's addresses.
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
/// Where the echo servers listen, on 127.0.0.1 and ::1.
const ECHO_PORT: u16 = 7;
/// A port nothing listens on.
const CLOSED_PORT: u16 = 9;
/// Destinations with no route in the harness's namespace.
const UNROUTABLE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const UNROUTABLE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The client ports a script's TCP segments come from.
const CLIENT_PORTS: [u16; 4] = [40_000, 40_001, 40_002, 40_003];
/// The first sequence number of every client port.
const CLIENT_ISN: u32 = 1_000;

thread_local! {
    /// The runtime, made with the namespace on this thread's first script (see module docs).
    static WORLD: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

/// What one script did, for tests that check the harness reaches the stack's depths.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Packets the stack sent to the session.
    pub packets: usize,
    /// TCP payload bytes the stack sent from the echo port (echoed data).
    pub echoed: usize,
    /// UDP datagrams the stack sent from the echo port.
    pub udp_answers: usize,
}

/// Runs the script in `data` against a fresh stack (see the module docs).
///
/// The first call on a thread moves that thread into a new network namespace.
pub fn flow_engine(data: &[u8]) -> Outcome {
    WORLD.with(|world| {
        let mut world = world.borrow_mut();
        let runtime = world.get_or_insert_with(make_world);
        runtime.block_on(run_script(data))
    })
}

/// The namespace, its loopback and echo servers, and the runtime they and the stack run on.
fn make_world() -> tokio::runtime::Runtime {
    let runtime = private_network();
    runtime.block_on(async {
        for ip in [
            IpAddr::from(Ipv4Addr::LOCALHOST),
            Ipv6Addr::LOCALHOST.into(),
        ] {
            let addr = SocketAddr::new(ip, ECHO_PORT);
            tcp_echo_server(addr).await;
            let udp = UdpSocket::bind(addr).await.expect("the UDP echo server");
            tokio::spawn(async move {
                let mut buf = vec![0; 65_536];
                while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                    let _ = udp.send_to(&buf[..len], from).await;
                }
            });
        }
    });
    runtime
}

/// Moves this thread into a new network namespace with only `lo` up, and makes the
/// current-thread runtime whose sockets (the stack's included) live there. For the harness
/// and the stack's tests; root only.
pub(crate) fn private_network() -> tokio::runtime::Runtime {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET): must run as root");
    loopback_up();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A TCP server on `addr` that echoes every connection until its client half-closes, on
/// tasks of the current runtime; returns the address it listens on (for port 0).
pub(crate) async fn tcp_echo_server(addr: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(addr).await.expect("the TCP echo server");
    let local = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    local
}

/// Brings `lo` up in the current network namespace.
fn loopback_up() {
    // SAFETY: plain ioctls on a local socket and a zeroed `ifreq`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "a socket for ioctls");
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr), 0);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr), 0);
        libc::close(fd);
    }
}

/// The fuzzer's bytes, read a step at a time.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn op(&mut self) -> Option<u8> {
        let (&first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(first)
    }

    fn byte(&mut self) -> u8 {
        self.op().unwrap_or(0)
    }

    fn bytes(&mut self, len: usize) -> &[u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

/// The session's side of the TCP conversations, as far as sequence numbers go.
#[derive(Default)]
struct Session {
    /// The next sequence number each client port sends.
    client_next: HashMap<u16, u32>,
    /// The next sequence number the stack sends to each client port.
    stack_next: HashMap<u16, u32>,
    outcome: Outcome,
}

async fn run_script(data: &[u8]) -> Outcome {
    let (link, peer) = memory_link(64);
    let config = StackConfig {
        mtu: MTU,
        tcp_rx_buffer: 64 << 10,
        tcp_tx_buffer: 64 << 10,
        limits: Limits {
            max_flows: 16,
            max_half_open: 8,
            max_half_open_per_host: 4,
            connect_timeout: Duration::from_millis(500),
            buffer_budget: 256 << 10,
        },
        ..StackConfig::default()
    };
    let stack = tokio::spawn(serve_link(link, config));
    let mut session = Session::default();
    let mut script = Script(data);
    while let Some(op) = script.op() {
        match op % 8 {
            0 => {
                let len = usize::from(u16::from_be_bytes([script.byte(), script.byte()])) % 2049;
                peer.send(Bytes::copy_from_slice(script.bytes(len)));
            }
            1 | 2 => send_tcp(&peer, &mut session, &mut script, op % 8 == 2),
            3 => {
                let which = script.byte();
                let server = server(which & 1 == 1, which & 4 == 4, which & 2 == 2);
                let len = usize::from(script.byte() % 64);
                let client = SocketAddr::new(client(server.is_ipv6()), CLIENT_PORTS[0]);
                peer.send(udp_datagram(client, server, script.bytes(len)).into());
            }
            4 => {
                let which = script.byte();
                let server = server(which & 1 == 1, which & 2 == 2, false).ip();
                let seq = u16::from(script.byte());
                let len = usize::from(script.byte() % 64);
                let packet = echo_request_packet(
                    client(server.is_ipv6()),
                    server,
                    7,
                    seq,
                    script.bytes(len),
                );
                peer.send(packet.into());
            }
            5 => {
                let millis = u64::from(script.byte() % 4);
                tokio::time::sleep(Duration::from_millis(millis)).await;
            }
            _ => tokio::task::yield_now().await,
        }
        drain(&peer, &mut session);
    }
    // The answers to the last steps.
    tokio::time::sleep(Duration::from_millis(2)).await;
    drain(&peer, &mut session);
    peer.close();
    drop(peer);
    match tokio::time::timeout(Duration::from_secs(2), stack).await {
        Err(_) => panic!("the stack did not stop within 2 s of its link closing"),
        Ok(Err(err)) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
        Ok(_) => {}
    }
    session.outcome
}

fn client(ipv6: bool) -> IpAddr {
    if ipv6 {
        CLIENT_V6.into()
    } else {
        CLIENT_V4.into()
    }
}

/// The destination a step names.
fn server(ipv6: bool, unroutable: bool, closed: bool) -> SocketAddr {
    let ip: IpAddr = match (ipv6, unroutable) {
        (false, false) => Ipv4Addr::LOCALHOST.into(),
        (true, false) => Ipv6Addr::LOCALHOST.into(),
        (false, true) => UNROUTABLE_V4.into(),
        (true, true) => UNROUTABLE_V6.into(),
    };
    SocketAddr::new(ip, if closed { CLOSED_PORT } else { ECHO_PORT })
}

fn send_tcp(peer: &MemoryPeer, session: &mut Session, script: &mut Script<'_>, ipv6: bool) {
    let which = script.byte();
    let port = CLIENT_PORTS[usize::from(which & 3)];
    let server = match (which >> 2) & 3 {
        1 => server(ipv6, false, true),
        3 => server(ipv6, true, false),
        _ => server(ipv6, false, false),
    };
    let control = match script.byte() % 5 {
        0 => TcpControl::None,
        1 => TcpControl::Syn,
        2 => TcpControl::Fin,
        3 => TcpControl::Rst,
        _ => TcpControl::Psh,
    };
    let ack = (script.byte() & 1 == 1).then(|| session.stack_next.get(&port).copied().unwrap_or(0));
    let offset = script.byte() as i8;
    let len = usize::from(script.byte() % 64);
    let payload = script.bytes(len);
    let next = session.client_next.entry(port).or_insert(CLIENT_ISN);
    if control == TcpControl::Syn {
        *next = CLIENT_ISN;
    }
    let seq = next.wrapping_add_signed(i32::from(offset));
    let segment = tcp_segment(
        SocketAddr::new(client(ipv6), port),
        server,
        seq,
        ack,
        control,
        payload,
    );
    if offset == 0 {
        let flags = usize::from(matches!(control, TcpControl::Syn | TcpControl::Fin));
        *next = next.wrapping_add((payload.len() + flags) as u32);
    }
    peer.send(segment.into());
}

/// Takes every packet the stack sent, checks it and notes what the session learns from it.
fn drain(peer: &MemoryPeer, session: &mut Session) {
    while let Some(packet) = peer.try_recv() {
        check(&packet, session);
        session.outcome.packets += 1;
    }
}

/// Asserts `packet` is a well-formed IP packet within the MTU whose checksums hold.
fn check(packet: &[u8], session: &mut Session) {
    assert!(
        packet.len() <= MTU,
        "the stack sent {} bytes on a link of MTU {MTU}",
        packet.len()
    );
    let (src, dst, protocol, payload, whole) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet)
                .unwrap_or_else(|e| panic!("a malformed IPv4 packet ({e}): {packet:02x?}"));
            assert!(
                ip.verify_checksum(),
                "a bad IPv4 header checksum: {packet:02x?}"
            );
            let whole = !ip.more_frags() && ip.frag_offset() == 0;
            (
                IpAddress::from(ip.src_addr()),
                IpAddress::from(ip.dst_addr()),
                ip.next_header(),
                ip.payload(),
                whole,
            )
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet)
                .unwrap_or_else(|e| panic!("a malformed IPv6 packet ({e}): {packet:02x?}"));
            let whole = ip.next_header() != IpProtocol::Ipv6Frag;
            (
                IpAddress::from(ip.src_addr()),
                IpAddress::from(ip.dst_addr()),
                ip.next_header(),
                ip.payload(),
                whole,
            )
        }
        _ => panic!("the stack sent a packet of no IP version: {packet:02x?}"),
    };
    if !whole {
        return;
    }
    match protocol {
        IpProtocol::Tcp => {
            let tcp = TcpPacket::new_checked(payload)
                .unwrap_or_else(|e| panic!("a malformed TCP segment ({e}): {packet:02x?}"));
            assert!(
                tcp.verify_checksum(&src, &dst),
                "a bad TCP checksum: {packet:02x?}"
            );
            let len = tcp.payload().len() + usize::from(tcp.syn()) + usize::from(tcp.fin());
            let end = (tcp.seq_number() + len).0 as u32;
            session.stack_next.insert(tcp.dst_port(), end);
            if tcp.src_port() == ECHO_PORT {
                session.outcome.echoed += tcp.payload().len();
            }
        }
        IpProtocol::Udp => {
            let udp = UdpPacket::new_checked(payload)
                .unwrap_or_else(|e| panic!("a malformed UDP datagram ({e}): {packet:02x?}"));
            assert!(
                udp.verify_checksum(&src, &dst),
                "a bad UDP checksum: {packet:02x?}"
            );
            if udp.src_port() == ECHO_PORT {
                session.outcome.udp_answers += 1;
            }
        }
        IpProtocol::Icmp => {
            let icmp = smoltcp::wire::Icmpv4Packet::new_checked(payload)
                .unwrap_or_else(|e| panic!("a malformed ICMP message ({e}): {packet:02x?}"));
            assert!(icmp.verify_checksum(), "a bad ICMP checksum: {packet:02x?}");
        }
        IpProtocol::Icmpv6 => {
            let icmp = smoltcp::wire::Icmpv6Packet::new_checked(payload)
                .unwrap_or_else(|e| panic!("a malformed ICMPv6 message ({e}): {packet:02x?}"));
            let (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) = (src, dst) else {
                panic!("ICMPv6 over IPv4: {packet:02x?}");
            };
            assert!(
                icmp.verify_checksum(&src, &dst),
                "a bad ICMPv6 checksum: {packet:02x?}"
            );
        }
        other => panic!("the stack sent a {other} packet: {packet:02x?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `scripts` on a thread of its own (the harness moves it into a new namespace).
    fn run_all(scripts: Vec<Vec<u8>>) -> Vec<Outcome> {
        std::thread::spawn(move || scripts.iter().map(|s| flow_engine(s)).collect())
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// A TCP step (see the module's table).
    fn tcp(ipv6: bool, which: u8, flags: u8, ack: bool, payload: &[u8]) -> Vec<u8> {
        let mut step = vec![if ipv6 { 2 } else { 1 }, which, flags, u8::from(ack), 0];
        step.push(payload.len() as u8);
        step.extend_from_slice(payload);
        step
    }

    /// A wait of 3 ms, twice: time for a connect and its answer.
    const WAIT: [u8; 4] = [5, 3, 5, 3];

    /// SYN, data, FIN and the last ACK from client port `which`, to the echo port.
    fn conversation(ipv6: bool, which: u8) -> Vec<u8> {
        [
            tcp(ipv6, which, 1, false, b""),
            WAIT.to_vec(),
            tcp(ipv6, which, 0, true, b"hello"),
            WAIT.to_vec(),
            tcp(ipv6, which, 2, true, b""),
            WAIT.to_vec(),
            tcp(ipv6, which, 0, true, b""),
            WAIT.to_vec(),
        ]
        .concat()
    }

    /// The scripts the corpus began with (`fuzz/corpus/flow_engine`), by what they do.
    fn seeds() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("tcp-v4-echo", conversation(false, 0)),
            ("tcp-v6-echo", conversation(true, 1)),
            (
                "tcp-refused-and-unroutable",
                [
                    tcp(false, 0b0100, 1, false, b""),
                    WAIT.to_vec(),
                    tcp(true, 0b1101, 1, false, b""),
                    WAIT.to_vec(),
                ]
                .concat(),
            ),
            (
                "tcp-reset",
                [
                    tcp(false, 2, 1, false, b""),
                    WAIT.to_vec(),
                    tcp(false, 2, 0, true, b"x"),
                    WAIT.to_vec(),
                    tcp(false, 2, 3, true, b""),
                    WAIT.to_vec(),
                ]
                .concat(),
            ),
            (
                "udp",
                [
                    &[3, 0, 4][..],
                    b"ping",
                    &WAIT,
                    &[3, 1, 4],
                    b"pong",
                    &WAIT,
                    &[3, 2, 1, b'x'],
                    &WAIT,
                    &[3, 4, 1, b'y'],
                    &WAIT,
                ]
                .concat(),
            ),
            (
                "echo",
                [
                    &[4, 0, 1, 3][..],
                    b"abc",
                    &WAIT,
                    &[4, 1, 2, 3],
                    b"abc",
                    &WAIT,
                    &[4, 2, 3, 0],
                    &WAIT,
                ]
                .concat(),
            ),
        ]
    }

    #[test]
    fn the_seeds_reach_echoed_data_udp_answers_and_errors() {
        let (names, scripts): (Vec<_>, Vec<_>) = seeds().into_iter().unzip();
        let outcomes = run_all(scripts);
        let by_name: HashMap<_, _> = names.iter().zip(&outcomes).collect();
        assert_eq!(by_name[&"tcp-v4-echo"].echoed, 5, "{outcomes:?}");
        assert_eq!(by_name[&"tcp-v6-echo"].echoed, 5, "{outcomes:?}");
        assert_eq!(by_name[&"udp"].udp_answers, 2, "{outcomes:?}");
        for (name, outcome) in &by_name {
            assert!(outcome.packets > 0, "{name}: the stack answered nothing");
        }
    }

    #[test]
    fn random_scripts_neither_crash_nor_hang_the_stack() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let scripts = (0..200)
            .map(|_| {
                (0..64)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state as u8
                    })
                    .collect()
            })
            .collect();
        run_all(scripts);
    }
}
