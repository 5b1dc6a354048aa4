//! The whole stack, driven through a [`MemoryLink`] against real kernel sockets.
//!
//! Each test runs in a fresh network namespace of its own (the tests run as root), with
//! only `lo` up: upstream servers listen on 127.0.0.1 / ::1, nothing else is routable, and
//! tests cannot disturb each other or the host. The session side is either a client-side
//! smoltcp interface (10.0.0.2, fd00::2) that behaves like the session's kernel, or
//! hand-built packets when a test pins the exact bytes the stack answers with.

use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Address, Ipv4Packet, Ipv6Address,
    Ipv6Packet, TcpControl, TcpPacket, UdpPacket,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use super::fuzzing::{private_network, tcp_echo_server};
use super::packet::{echo_request_packet, tcp_segment, udp_datagram};
use super::*;

const CLIENT_V4: &str = "10.0.0.2";
const CLIENT_V6: &str = "fd00::2";

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Runs `test` on a thread of its own in a new network namespace, on a current-thread
/// runtime (so every socket, the stack's included, lives in that namespace).
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        let rt = private_network();
        rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), test())
                .await
                .expect("test timed out");
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Starts a stack over a memory link; returns the peer end and the stats.
fn start_stack(
    mtu: usize,
    link_capacity: usize,
) -> (
    MemoryPeer,
    Arc<Stats>,
    tokio::task::JoinHandle<Result<(), LinkError>>,
) {
    let (link, peer) = memory_link(link_capacity);
    let config = StackConfig {
        mtu,
        ..StackConfig::default()
    };
    let stats = config.stats.clone();
    let task = tokio::spawn(serve_link(link, config));
    (peer, stats, task)
}

struct ClientDevice {
    rx: VecDeque<Bytes>,
    out: Vec<Bytes>,
    mtu: usize,
}

struct ClientRx(Bytes);
struct ClientTx<'a>(&'a mut Vec<Bytes>);

impl phy::RxToken for ClientRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for ClientTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push(Bytes::from(buf));
        r
    }
}

impl phy::Device for ClientDevice {
    type RxToken<'a> = ClientRx;
    type TxToken<'a> = ClientTx<'a>;

    fn receive(&mut self, _: SmolInstant) -> Option<(ClientRx, ClientTx<'_>)> {
        let pkt = self.rx.pop_front()?;
        Some((ClientRx(pkt), ClientTx(&mut self.out)))
    }

    fn transmit(&mut self, _: SmolInstant) -> Option<ClientTx<'_>> {
        Some(ClientTx(&mut self.out))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

/// The session's side: a smoltcp interface playing the session's kernel.
struct Client {
    peer: MemoryPeer,
    iface: Interface,
    dev: ClientDevice,
    sockets: SocketSet<'static>,
    origin: std::time::Instant,
    next_port: u16,
}

impl Client {
    fn new(peer: MemoryPeer, mtu: usize) -> Self {
        let mut dev = ClientDevice {
            rx: VecDeque::new(),
            out: Vec::new(),
            mtu,
        };
        let mut iface = Interface::new(
            Config::new(HardwareAddress::Ip),
            &mut dev,
            SmolInstant::ZERO,
        );
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::v4(10, 0, 0, 2), 24))
                .unwrap();
            addrs
                .push(IpCidr::new(IpAddress::v6(0xfd00, 0, 0, 0, 0, 0, 0, 2), 64))
                .unwrap();
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::new(10, 0, 0, 1))
            .unwrap();
        iface
            .routes_mut()
            .add_default_ipv6_route(Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1))
            .unwrap();
        Self {
            peer,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            origin: std::time::Instant::now(),
            next_port: 40000,
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_micros(self.origin.elapsed().as_micros() as i64)
    }

    /// Opens a TCP connection to `server`; `buffer` bytes each way.
    fn connect(&mut self, server: SocketAddr, buffer: usize) -> SocketHandle {
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        sock.set_nagle_enabled(false);
        sock.set_ack_delay(None);
        let port = self.next_port;
        self.next_port += 1;
        // Name the local address: smoltcp would pick ::1 as the source for ::1.
        let local: IpAddr = if server.is_ipv4() {
            CLIENT_V4.parse().unwrap()
        } else {
            CLIENT_V6.parse().unwrap()
        };
        sock.connect(self.iface.context(), server, SocketAddr::new(local, port))
            .unwrap();
        self.sockets.add(sock)
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    fn exchange(&mut self) {
        while let Some(p) = self.peer.try_recv() {
            self.dev.rx.push_back(p);
        }
        let now = self.now();
        self.iface.poll(now, &mut self.dev, &mut self.sockets);
        for p in self.dev.out.drain(..) {
            self.peer.send(p);
        }
    }

    /// Runs the session side until `f` returns a value.
    async fn until<T>(&mut self, what: &str, mut f: impl FnMut(&mut Self) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.exchange();
            if let Some(v) = f(self) {
                self.exchange();
                return v;
            }
            self.exchange();
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            let delay = self
                .iface
                .poll_delay(self.now(), &self.sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_millis(20))
                .min(Duration::from_millis(20));
            tokio::select! {
                p = self.peer.recv() => {
                    if let Some(p) = p {
                        self.dev.rx.push_back(p);
                    }
                }
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Keeps the session side running until the stack's counters satisfy `f`.
    async fn until_stats(&mut self, stats: &Stats, what: &str, f: impl Fn(&StatsSnapshot) -> bool) {
        self.until(what, |_| f(&stats.snapshot()).then_some(()))
            .await;
    }

    /// Keeps the session side running until `task` has finished, and returns its output.
    async fn until_done<T>(&mut self, task: tokio::task::JoinHandle<T>) -> T {
        self.until("the upstream task", |_| task.is_finished().then_some(()))
            .await;
        task.await.unwrap()
    }

    /// Sends all of `data` and reads until `expect` bytes came back.
    async fn send_and_receive(&mut self, h: SocketHandle, data: &[u8], expect: usize) -> Vec<u8> {
        let mut sent = 0;
        let mut got = Vec::new();
        self.until("data to round-trip", |c| {
            let s = c.tcp(h);
            if sent < data.len() && s.can_send() {
                sent += s.send_slice(&data[sent..]).unwrap();
            }
            while s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            (got.len() >= expect && sent == data.len()).then_some(())
        })
        .await;
        got
    }
}

/// A TCP server on `addr` that echoes every connection until EOF, then closes.
async fn echo_server(addr: &str) -> SocketAddr {
    // `addr` as `bind` reads it: `::1:0` too.
    let addr = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .unwrap()
        .next()
        .unwrap();
    tcp_echo_server(addr).await
}

/// A port on `ip` where nothing listens.
fn closed_port(ip: &str) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
    l.local_addr().unwrap()
}

async fn next_packet(peer: &MemoryPeer) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), peer.recv())
        .await
        .expect("a packet from the stack")
        .expect("stack running")
}

async fn wait_stats(stats: &Stats, what: &str, f: impl Fn(&StatsSnapshot) -> bool) {
    for _ in 0..500 {
        if f(&stats.snapshot()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("stats never showed {what}: {}", stats.snapshot());
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

fn transport_of(pkt: &[u8]) -> (IpAddress, IpAddress, IpProtocol, Vec<u8>) {
    if pkt[0] >> 4 == 4 {
        let ip = Ipv4Packet::new_checked(pkt).unwrap();
        assert!(ip.verify_checksum());
        (
            ip.src_addr().into(),
            ip.dst_addr().into(),
            ip.next_header(),
            ip.payload().to_vec(),
        )
    } else {
        let ip = Ipv6Packet::new_checked(pkt).unwrap();
        (
            ip.src_addr().into(),
            ip.dst_addr().into(),
            ip.next_header(),
            ip.payload().to_vec(),
        )
    }
}

// ---------------------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------------------

async fn round_trip(server_ip: &str) {
    let server = echo_server(&format!("{server_ip}:0")).await;
    let (peer, stats, _task) = start_stack(9000, 64);
    let mut client = Client::new(peer, 9000);
    let h = client.connect(server, 64 * 1024);
    client
        .until("the connection to open", |c| {
            c.tcp(h).may_send().then_some(())
        })
        .await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let got = client.send_and_receive(h, &data, data.len()).await;
    assert_eq!(got, data);
    client.tcp(h).close();
    client
        .until("both sides to close", |c| {
            matches!(c.tcp(h).state(), tcp::State::TimeWait | tcp::State::Closed).then_some(())
        })
        .await;
    client
        .until_stats(&stats, "the flow removed", |s| {
            s.tcp_opened == 1 && s.tcp_closed == 1 && s.tcp_reset_by_client == 0
        })
        .await;
}

#[test]
fn tcp_connect_succeeds_and_data_round_trips_v4() {
    in_netns(|| round_trip("127.0.0.1"));
}

#[test]
fn tcp_connect_succeeds_and_data_round_trips_v6() {
    in_netns(|| round_trip("::1"));
}

#[test]
fn quiet_flows_give_their_buffer_pages_back() {
    in_netns(|| async {
        let server = echo_server("127.0.0.1:0").await;
        let (peer, stats, _task) = start_stack(9000, 64);
        let mut client = Client::new(peer, 9000);
        let h = client.connect(server, 16 * 1024);
        client
            .until("open", |c| c.tcp(h).may_send().then_some(()))
            .await;
        let got = client.send_and_receive(h, b"request", 7).await;
        assert_eq!(got, b"request");
        assert_eq!(stats.snapshot().tcp_buffer_releases, 0);
        // Still open and idle: after a quiet second the rings' pages go back.
        client
            .until_stats(&stats, "the pages released", |s| s.tcp_buffer_releases == 1)
            .await;
        assert_eq!(stats.snapshot().tcp_open(), 1);
        // The flow still works, with fresh pages.
        let got = client.send_and_receive(h, b"again", 5).await;
        assert_eq!(got, b"again");
    });
}

#[test]
fn refused_port_answers_rst() {
    in_netns(|| async {
        let (peer, stats, _task) = start_stack(1500, 64);
        for server in [closed_port("127.0.0.1"), closed_port("::1")] {
            let client = if server.is_ipv4() {
                sa(CLIENT_V4, 40000)
            } else {
                sa(CLIENT_V6, 40000)
            };
            let syn = tcp_segment(client, server, 1_000_000, None, TcpControl::Syn, &[]);
            let started = std::time::Instant::now();
            peer.send(Bytes::from(syn));
            let reply = next_packet(&peer).await;
            assert!(started.elapsed() < Duration::from_millis(500));
            let (src, dst, proto, body) = transport_of(&reply);
            assert_eq!(proto, IpProtocol::Tcp);
            assert_eq!((src, dst), (server.ip().into(), client.ip().into()));
            let tcp = TcpPacket::new_checked(&body[..]).unwrap();
            assert!(tcp.verify_checksum(&src, &dst));
            assert!(tcp.rst() && tcp.ack());
            assert_eq!(tcp.ack_number().0 as u32, 1_000_001);
            assert_eq!((tcp.src_port(), tcp.dst_port()), (server.port(), 40000));
        }
        assert_eq!(stats.snapshot().tcp_refused, 2);
        assert_eq!(stats.snapshot().tcp_opened, 0);
    });
}

#[test]
fn refused_port_fails_the_client_connect_at_once() {
    in_netns(|| async {
        let (peer, _stats, _task) = start_stack(1500, 64);
        let mut client = Client::new(peer, 1500);
        let h = client.connect(closed_port("127.0.0.1"), 4096);
        let started = std::time::Instant::now();
        client
            .until("the connect to fail", |c| {
                (c.tcp(h).state() == tcp::State::Closed).then_some(())
            })
            .await;
        assert!(started.elapsed() < Duration::from_millis(500));
    });
}

#[test]
fn unreachable_network_answers_icmp_unreachable_quoting_the_syn() {
    in_netns(|| async {
        let (peer, stats, _task) = start_stack(1500, 64);
        // The namespace has only `lo`: no route to either destination.
        for (client, server) in [
            (sa(CLIENT_V4, 40001), sa("10.99.0.1", 80)),
            (sa(CLIENT_V6, 40001), sa("2001:db8::1", 80)),
        ] {
            let syn = tcp_segment(client, server, 77, None, TcpControl::Syn, &[]);
            peer.send(Bytes::from(syn.clone()));
            let reply = next_packet(&peer).await;
            let (src, dst, proto, body) = transport_of(&reply);
            assert_eq!((src, dst), (server.ip().into(), client.ip().into()));
            if server.is_ipv4() {
                assert_eq!(proto, IpProtocol::Icmp);
                assert_eq!(&body[..2], &[3, 0], "ICMP net unreachable");
            } else {
                assert_eq!(proto, IpProtocol::Icmpv6);
                assert_eq!(&body[..2], &[1, 0], "ICMPv6 no route");
            }
            assert_eq!(&body[8..], &syn[..]);
        }
        assert_eq!(stats.snapshot().tcp_unreachable, 2);
    });
}

#[test]
fn syn_is_answered_only_after_upstream_accepts() {
    in_netns(|| async {
        // A listener with a backlog of 0 and one unaccepted connection drops further SYNs,
        // so the stack's upstream connect hangs until we accept.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&sa("127.0.0.1", 0).into()).unwrap();
        sock.listen(0).unwrap();
        let server = sock.local_addr().unwrap().as_socket().unwrap();
        let listener = std::net::TcpListener::from(sock);
        let _filler = std::net::TcpStream::connect(server).unwrap();

        let (peer, stats, _task) = start_stack(1500, 64);
        let client = sa(CLIENT_V4, 40002);
        let syn = Bytes::from(tcp_segment(
            client,
            server,
            5000,
            None,
            TcpControl::Syn,
            &[],
        ));
        peer.send(syn.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        peer.send(syn.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            peer.try_recv().is_none(),
            "nothing answers the SYN (or its retransmission) while upstream has not accepted"
        );
        assert_eq!(
            stats.snapshot().tcp_connects,
            1,
            "the retransmission was absorbed"
        );

        // Accept the filler; the kernel's retransmitted SYN then gets through.
        let (_a, _) = listener.accept().unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), peer.recv())
            .await
            .unwrap()
            .unwrap();
        let (_, _, _, body) = transport_of(&reply);
        let tcp = TcpPacket::new_checked(&body[..]).unwrap();
        assert!(tcp.syn() && tcp.ack());
        assert_eq!(tcp.ack_number().0 as u32, 5001);
    });
}

#[test]
fn stray_segment_answers_rst_with_its_ack_as_sequence() {
    in_netns(|| async {
        let (peer, stats, _task) = start_stack(1500, 64);
        let seg = tcp_segment(
            sa(CLIENT_V4, 40003),
            sa("127.0.0.1", 9),
            10,
            Some(4242),
            TcpControl::None,
            b"late",
        );
        peer.send(Bytes::from(seg));
        let reply = next_packet(&peer).await;
        let (_, _, _, body) = transport_of(&reply);
        let tcp = TcpPacket::new_checked(&body[..]).unwrap();
        assert!(tcp.rst() && !tcp.ack());
        assert_eq!(tcp.seq_number().0 as u32, 4242);
        assert_eq!(stats.snapshot().tcp_stray_segments, 1);
        assert_eq!(stats.snapshot().tcp_connects, 0);
    });
}

#[test]
fn client_half_close_reaches_upstream_after_its_data() {
    in_netns(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            // The session's FIN arrived; the other direction is still open.
            s.write_all(b"bye after EOF").await.unwrap();
            s.shutdown().await.unwrap();
            got
        });
        let (peer, stats, _task) = start_stack(9000, 64);
        let mut client = Client::new(peer, 9000);
        let h = client.connect(server, 64 * 1024);
        client
            .until("open", |c| c.tcp(h).may_send().then_some(()))
            .await;
        let data = vec![0xabu8; 50_000];
        let mut sent = 0;
        client
            .until("data sent", |c| {
                sent += c.tcp(h).send_slice(&data[sent..]).unwrap();
                (sent == data.len()).then_some(())
            })
            .await;
        client.tcp(h).close();
        let mut reply = Vec::new();
        client
            .until("upstream's reply and FIN", |c| {
                let s = c.tcp(h);
                while s.can_recv() {
                    s.recv(|b| {
                        reply.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                (!s.may_recv()).then_some(())
            })
            .await;
        assert_eq!(reply, b"bye after EOF");
        assert_eq!(client.until_done(upstream).await, data);
        client
            .until_stats(&stats, "the flow removed", |s| {
                s.tcp_closed == 1 && s.tcp_reset_by_client == 0
            })
            .await;
    });
}

#[test]
fn upstream_half_close_reaches_the_client_and_it_may_still_send() {
    in_netns(|| async {
        let listener = TcpListener::bind("[::1]:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"banner").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let (peer, stats, _task) = start_stack(9000, 64);
        let mut client = Client::new(peer, 9000);
        let h = client.connect(server, 64 * 1024);
        let mut banner = Vec::new();
        client
            .until("banner and upstream FIN", |c| {
                let s = c.tcp(h);
                while s.can_recv() {
                    s.recv(|b| {
                        banner.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                (s.state() == tcp::State::CloseWait).then_some(())
            })
            .await;
        assert_eq!(banner, b"banner");
        let mut sent = false;
        client
            .until("more data sent after the upstream FIN", |c| {
                let s = c.tcp(h);
                if !sent {
                    s.send_slice(b"still talking").unwrap();
                    sent = true;
                }
                (s.send_queue() == 0).then_some(())
            })
            .await;
        client.tcp(h).close();
        assert_eq!(client.until_done(upstream).await, b"still talking");
        client
            .until("closed", |c| {
                (c.tcp(h).state() == tcp::State::Closed).then_some(())
            })
            .await;
        client
            .until_stats(&stats, "the flow removed", |s| {
                s.tcp_closed == 1 && s.tcp_reset_by_client == 0
            })
            .await;
    });
}

#[test]
fn client_reset_resets_upstream() {
    in_netns(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"x");
            s.read(&mut buf).await
        });
        let (peer, stats, _task) = start_stack(9000, 64);
        let mut client = Client::new(peer, 9000);
        let h = client.connect(server, 4096);
        client
            .until("open", |c| c.tcp(h).may_send().then_some(()))
            .await;
        client.tcp(h).send_slice(b"x").unwrap();
        client
            .until("sent", |c| (c.tcp(h).send_queue() == 0).then_some(()))
            .await;
        client.tcp(h).abort();
        let err = client
            .until_done(upstream)
            .await
            .expect_err("upstream sees a reset");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        client
            .until_stats(&stats, "the reset flow removed", |s| {
                s.tcp_closed == 1 && s.tcp_reset_by_client == 1
            })
            .await;
    });
}

#[test]
fn upstream_reset_resets_the_client() {
    in_netns(|| async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1];
            s.read_exact(&mut buf).await.unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
            drop(s);
        });
        let (peer, stats, _task) = start_stack(9000, 64);
        let mut client = Client::new(peer, 9000);
        let h = client.connect(server, 4096);
        client
            .until("open", |c| c.tcp(h).may_send().then_some(()))
            .await;
        client.tcp(h).send_slice(b"!").unwrap();
        client
            .until("the RST", |c| {
                (c.tcp(h).state() == tcp::State::Closed).then_some(())
            })
            .await;
        client
            .until_stats(&stats, "the aborted flow removed", |s| {
                s.tcp_reset_by_upstream == 1 && s.tcp_closed == 1
            })
            .await;
    });
}

#[test]
fn five_hundred_concurrent_connections_round_trip() {
    in_netns(|| async {
        let server = echo_server("127.0.0.1:0").await;
        let (peer, stats, _task) = start_stack(9000, 256);
        let mut client = Client::new(peer, 9000);
        let handles: Vec<_> = (0..500).map(|_| client.connect(server, 8192)).collect();
        client
            .until("all 500 open", |c| {
                handles.iter().all(|&h| c.tcp(h).may_send()).then_some(())
            })
            .await;
        assert_eq!(stats.snapshot().tcp_open(), 500);
        let mut got = vec![Vec::new(); handles.len()];
        for (i, &h) in handles.iter().enumerate() {
            client
                .tcp(h)
                .send_slice(format!("message {i:03}").as_bytes())
                .unwrap();
        }
        client
            .until("every echo", |c| {
                for (i, &h) in handles.iter().enumerate() {
                    let s = c.tcp(h);
                    while s.can_recv() {
                        s.recv(|b| {
                            got[i].extend_from_slice(b);
                            (b.len(), ())
                        })
                        .unwrap();
                    }
                }
                got.iter().all(|g| g.len() == 11).then_some(())
            })
            .await;
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, format!("message {i:03}").as_bytes());
        }
        for &h in &handles {
            client.tcp(h).close();
        }
        client
            .until("all closed", |c| {
                handles
                    .iter()
                    .all(|&h| matches!(c.tcp(h).state(), tcp::State::TimeWait | tcp::State::Closed))
                    .then_some(())
            })
            .await;
        client
            .until_stats(&stats, "every flow removed", |s| {
                s.tcp_opened == 500 && s.tcp_closed == 500
            })
            .await;
    });
}

#[test]
fn bulk_transfer_survives_a_congested_tunnel_without_drops() {
    in_netns(|| async {
        const SIZE: usize = 8 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        // Upstream sends SIZE bytes and reads SIZE bytes, slowly at first.
        let upstream = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let writer = tokio::spawn(async move {
                let data: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8).collect();
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            got
        });
        // A tunnel that holds only 4 packets: the stack must wait, not drop.
        let (peer, stats, _task) = start_stack(9000, 4);
        let mut client = Client::new(peer, 9000);
        let h = client.connect(server, 256 * 1024);
        client
            .until("open", |c| c.tcp(h).may_send().then_some(()))
            .await;
        let data: Vec<u8> = (0..SIZE).map(|i| (i % 253) as u8).collect();
        let started = std::time::Instant::now();
        let mut sent = 0;
        let mut got = Vec::new();
        client
            .until("both directions done", |c| {
                let s = c.tcp(h);
                if sent < SIZE && s.can_send() {
                    sent += s.send_slice(&data[sent..]).unwrap();
                    if sent == SIZE {
                        s.close();
                    }
                }
                while s.can_recv() {
                    s.recv(|b| {
                        got.extend_from_slice(b);
                        (b.len(), ())
                    })
                    .unwrap();
                }
                (sent == SIZE && !s.may_recv()).then_some(())
            })
            .await;
        assert_eq!(got.len(), SIZE);
        assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        assert!(
            client.until_done(upstream).await == data,
            "upstream got every byte"
        );
        // A single dropped segment would cost smoltcp a 1 s retransmission timeout.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        let s = stats.snapshot();
        assert_eq!(s.dropped_too_large + s.dropped_malformed, 0);
    });
}

// ---------------------------------------------------------------------------------------
// UDP
// ---------------------------------------------------------------------------------------

async fn udp_echo_server(addr: &str) -> SocketAddr {
    let sock = UdpSocket::bind(addr).await.unwrap();
    let local = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = sock.recv_from(&mut buf).await.unwrap();
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            sock.send_to(&reply, from).await.unwrap();
        }
    });
    local
}

fn udp_reply(pkt: &[u8]) -> (SocketAddr, SocketAddr, Vec<u8>) {
    let (src, dst, proto, body) = transport_of(pkt);
    assert_eq!(proto, IpProtocol::Udp);
    let udp = UdpPacket::new_checked(&body[..]).unwrap();
    assert!(udp.verify_checksum(&src, &dst), "valid UDP checksum");
    (
        SocketAddr::new(src.into(), udp.src_port()),
        SocketAddr::new(dst.into(), udp.dst_port()),
        udp.payload().to_vec(),
    )
}

#[test]
fn udp_echo_round_trips_v4_and_v6() {
    in_netns(|| async {
        let (peer, stats, _task) = start_stack(1500, 64);
        for (client, server) in [
            (sa(CLIENT_V4, 5353), udp_echo_server("127.0.0.1:0").await),
            (sa(CLIENT_V6, 5353), udp_echo_server("[::1]:0").await),
        ] {
            peer.send(Bytes::from(udp_datagram(client, server, b"ping")));
            let (src, dst, payload) = udp_reply(&next_packet(&peer).await);
            assert_eq!((src, dst), (server, client));
            assert_eq!(payload, b"echo:ping");
            // Same pair again: same flow.
            peer.send(Bytes::from(udp_datagram(client, server, b"again")));
            let (_, _, payload) = udp_reply(&next_packet(&peer).await);
            assert_eq!(payload, b"echo:again");
        }
        assert_eq!(stats.snapshot().udp_opened, 2);
    });
}

#[test]
fn one_unconnected_client_socket_talking_to_two_peers_gets_two_flows() {
    in_netns(|| async {
        let (peer, stats, _task) = start_stack(1500, 64);
        let a = udp_echo_server("127.0.0.1:0").await;
        let b = udp_echo_server("127.0.0.1:0").await;
        let client = sa(CLIENT_V4, 6000);
        peer.send(Bytes::from(udp_datagram(client, a, b"to a")));
        peer.send(Bytes::from(udp_datagram(client, b, b"to b")));
        let mut replies = vec![
            udp_reply(&next_packet(&peer).await),
            udp_reply(&next_packet(&peer).await),
        ];
        replies.sort_by_key(|r| r.0.port());
        let mut want = vec![
            (a, client, b"echo:to a".to_vec()),
            (b, client, b"echo:to b".to_vec()),
        ];
        want.sort_by_key(|r| r.0.port());
        assert_eq!(replies, want);
        assert_eq!(stats.snapshot().udp_opened, 2);
    });
}

#[test]
fn udp_to_a_closed_port_answers_icmp_port_unreachable() {
    in_netns(|| async {
        let (peer, stats, _task) = start_stack(1500, 64);
        let server = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let client = sa(CLIENT_V4, 7000);
        peer.send(Bytes::from(udp_datagram(client, server, b"anyone?")));
        let reply = next_packet(&peer).await;
        let (src, dst, proto, body) = transport_of(&reply);
        assert_eq!(proto, IpProtocol::Icmp);
        assert_eq!((src, dst), (server.ip().into(), client.ip().into()));
        assert_eq!(&body[..2], &[3, 3], "port unreachable");
        // The quoted header names the flow, so the client's kernel finds its socket.
        let quoted = Ipv4Packet::new_checked(&body[8..]).unwrap();
        assert_eq!(IpAddr::from(quoted.src_addr()), client.ip());
        assert_eq!(IpAddr::from(quoted.dst_addr()), server.ip());
        assert_eq!(
            &quoted.payload()[..4],
            &[0x1b, 0x58, (server.port() >> 8) as u8, server.port() as u8]
        );
        assert_eq!(stats.snapshot().udp_refused, 1);
    });
}

#[test]
fn udp_replies_larger_than_the_mtu_arrive_as_fragments() {
    in_netns(|| async {
        let (peer, _stats, _task) = start_stack(1400, 64);
        let server = udp_echo_server("127.0.0.1:0").await;
        let client = sa(CLIENT_V4, 5300);
        let payload: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        peer.send(Bytes::from(udp_datagram(client, server, &payload)));
        let mut whole = Vec::new();
        loop {
            let frag = next_packet(&peer).await;
            assert!(frag.len() <= 1400);
            let ip = Ipv4Packet::new_checked(&frag[..]).unwrap();
            assert!(ip.verify_checksum());
            assert_eq!(usize::from(ip.frag_offset()), whole.len());
            whole.extend_from_slice(ip.payload());
            if !ip.more_frags() {
                break;
            }
        }
        let udp = UdpPacket::new_checked(&whole[..]).unwrap();
        assert!(udp.verify_checksum(&IpAddress::from(server.ip()), &IpAddress::from(client.ip())));
        assert_eq!(&udp.payload()[..5], b"echo:");
        assert_eq!(&udp.payload()[5..], &payload[..]);
    });
}

#[test]
fn idle_udp_flows_are_reaped() {
    in_netns(|| async {
        let (link, peer) = memory_link(64);
        let config = StackConfig {
            udp_idle_timeout: Duration::from_millis(200),
            ..StackConfig::default()
        };
        let stats = config.stats.clone();
        let _task = tokio::spawn(serve_link(link, config));
        let server = udp_echo_server("127.0.0.1:0").await;
        peer.send(Bytes::from(udp_datagram(sa(CLIENT_V4, 8000), server, b"x")));
        next_packet(&peer).await;
        assert_eq!(stats.snapshot().udp_open(), 1);
        wait_stats(&stats, "the idle flow reaped", |s| s.udp_closed == 1).await;
    });
}

// ---------------------------------------------------------------------------------------
// ICMP echo, session lifetime
// ---------------------------------------------------------------------------------------

async fn ping_round_trips() -> StatsSnapshot {
    let (peer, stats, _task) = start_stack(1500, 64);
    for (client, server) in [(CLIENT_V4, "127.0.0.1"), (CLIENT_V6, "::1")] {
        let (client, server): (IpAddr, IpAddr) = (client.parse().unwrap(), server.parse().unwrap());
        for seq in 1..=2u16 {
            peer.send(Bytes::from(echo_request_packet(
                client,
                server,
                0x4d2,
                seq,
                b"abcdefgh",
            )));
            let reply = next_packet(&peer).await;
            let (src, dst, _, body) = transport_of(&reply);
            assert_eq!((src, dst), (server.into(), client.into()));
            let echo_reply = if client.is_ipv4() { 0 } else { 129 };
            assert_eq!(body[0], echo_reply);
            assert_eq!(u16::from_be_bytes([body[4], body[5]]), 0x4d2);
            assert_eq!(u16::from_be_bytes([body[6], body[7]]), seq);
            assert_eq!(&body[8..], b"abcdefgh");
        }
    }
    let s = stats.snapshot();
    assert_eq!((s.icmp_opened, s.icmp_echo_replies), (2, 4));
    s
}

#[test]
fn ping_round_trips_through_raw_sockets_v4_and_v6() {
    // A new namespace admits no group to ping sockets: the stack falls back to raw ones.
    in_netns(|| async {
        ping_round_trips().await;
    });
}

#[test]
fn ping_round_trips_through_ping_sockets_v4_and_v6() {
    in_netns(|| async {
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 2147483647").unwrap();
        // Prove the unprivileged kind is what the stack gets here.
        let (_, kind) = super::upstream::open_echo("127.0.0.1".parse().unwrap(), false).unwrap();
        assert_eq!(kind, super::upstream::EchoSocketKind::Ping);
        ping_round_trips().await;
    });
}

#[test]
fn a_shrunk_tunnel_gets_fitting_packets_and_a_smaller_mss() {
    in_netns(|| async {
        let (peer, _stats, _task) = start_stack(9000, 64);
        peer.set_mtu(1400);
        // A UDP reply larger than the new MTU arrives in fragments that fit.
        let server = udp_echo_server("127.0.0.1:0").await;
        let client = sa(CLIENT_V4, 5400);
        peer.send(Bytes::from(udp_datagram(client, server, &[7u8; 3000])));
        let mut total = 0;
        loop {
            let frag = next_packet(&peer).await;
            assert!(frag.len() <= 1400, "fragment of {} bytes", frag.len());
            let ip = Ipv4Packet::new_checked(&frag[..]).unwrap();
            total += ip.payload().len();
            if !ip.more_frags() {
                break;
            }
        }
        assert_eq!(total, 8 + 5 + 3000);
        // A new connection is offered an MSS that fits the new MTU.
        let upstream = echo_server("127.0.0.1:0").await;
        let syn = tcp_segment(
            sa(CLIENT_V4, 40100),
            upstream,
            9,
            None,
            TcpControl::Syn,
            &[],
        );
        peer.send(Bytes::from(syn));
        let synack = next_packet(&peer).await;
        let (_, _, _, body) = transport_of(&synack);
        let tcp = TcpPacket::new_checked(&body[..]).unwrap();
        assert!(tcp.syn() && tcp.ack());
        let mss = smoltcp::wire::TcpRepr::parse(
            &tcp,
            &IpAddress::from(upstream.ip()),
            &IpAddress::v4(10, 0, 0, 2),
            &smoltcp::phy::ChecksumCapabilities::ignored(),
        )
        .unwrap()
        .max_seg_size;
        assert_eq!(mss, Some(1400 - 40));
    });
}

/// A connected pair of QUIC connections (client, agent) on loopback, with session keys.
async fn quic_pair() -> (quinn::Connection, quinn::Connection) {
    use mirrord_net_protocol::{transport, trust::SessionIdentity};
    let profile = transport::PathProfile::Network;
    let agent_id = SessionIdentity::generate().unwrap();
    let client_id = SessionIdentity::generate().unwrap();
    let server_config =
        transport::server_config(&agent_id, client_id.fingerprint(), profile).unwrap();
    let client_config =
        transport::client_config(&client_id, agent_id.fingerprint(), profile).unwrap();
    let bind = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let runtime = Arc::new(quinn::TokioRuntime);
    let agent_ep = quinn::Endpoint::new(
        transport::endpoint_config(profile),
        Some(server_config),
        bind(),
        runtime.clone(),
    )
    .unwrap();
    let client_ep =
        quinn::Endpoint::new(transport::endpoint_config(profile), None, bind(), runtime).unwrap();
    let agent_addr = agent_ep.local_addr().unwrap();
    tokio::join!(
        async {
            client_ep
                .connect_with(client_config, agent_addr, "agent")
                .unwrap()
                .await
                .unwrap()
        },
        async { agent_ep.accept().await.unwrap().await.unwrap() }
    )
}

#[test]
fn serve_carries_packets_over_quic_datagrams_and_ends_with_the_connection() {
    in_netns(|| async {
        let (client_conn, agent_conn) = quic_pair().await;
        let mtu = client_conn.max_datagram_size().unwrap();
        let config = StackConfig {
            mtu,
            ..StackConfig::default()
        };
        let stats = config.stats.clone();
        let stack = tokio::spawn(serve(agent_conn, config));

        let server = udp_echo_server("127.0.0.1:0").await;
        let client = sa(CLIENT_V4, 5500);
        client_conn
            .send_datagram(Bytes::from(udp_datagram(client, server, b"over quic")))
            .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), client_conn.read_datagram())
            .await
            .unwrap()
            .unwrap();
        let (src, dst, payload) = udp_reply(&reply);
        assert_eq!((src, dst), (server, client));
        assert_eq!(payload, b"echo:over quic");
        assert!(reply.len() <= mtu);
        assert_eq!(stats.snapshot().udp_datagrams_down, 1);

        client_conn.close(0u32.into(), b"done");
        let result = tokio::time::timeout(Duration::from_secs(5), stack)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    });
}

#[test]
fn packets_larger_than_the_quic_datagram_size_are_fragmented_not_dropped() {
    in_netns(|| async {
        let (client_conn, agent_conn) = quic_pair().await;
        let max = client_conn.max_datagram_size().unwrap();
        // The stack believes in a bigger MTU than the connection carries, as after quinn
        // lowered its datagram size under a running session.
        let config = StackConfig {
            mtu: 9000,
            ..StackConfig::default()
        };
        let stats = config.stats.clone();
        let link = super::link::QuinnLink::new(agent_conn, 9000, stats.clone());
        tokio::spawn(serve_link(link, config));

        // A server that answers a small request with a large reply.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = [0u8; 16];
            loop {
                let (_, from) = sock.recv_from(&mut buf).await.unwrap();
                sock.send_to(&[buf[0]; 5000], from).await.unwrap();
            }
        });
        let client = sa(CLIENT_V4, 5600);
        for round in 0..2u8 {
            let payload = vec![round; 5000];
            client_conn
                .send_datagram(Bytes::from(udp_datagram(client, server, &[round])))
                .unwrap();
            let mut whole = Vec::new();
            loop {
                let frag =
                    tokio::time::timeout(Duration::from_secs(5), client_conn.read_datagram())
                        .await
                        .unwrap()
                        .unwrap();
                assert!(frag.len() <= max);
                let ip = Ipv4Packet::new_checked(&frag[..]).unwrap();
                assert!(ip.verify_checksum());
                assert_eq!(usize::from(ip.frag_offset()), whole.len());
                whole.extend_from_slice(ip.payload());
                if !ip.more_frags() {
                    break;
                }
            }
            let udp = UdpPacket::new_checked(&whole[..]).unwrap();
            assert!(
                udp.verify_checksum(&IpAddress::from(server.ip()), &IpAddress::from(client.ip()))
            );
            assert_eq!(udp.payload(), &payload[..]);
        }
        assert_eq!(stats.snapshot().dropped_too_large, 0);
    });
}

#[test]
fn serve_returns_ok_when_the_session_closes() {
    in_netns(|| async {
        let (peer, _stats, task) = start_stack(1500, 64);
        peer.close();
        let result = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
    });
}

#[test]
fn non_ip_garbage_is_counted_and_ignored() {
    in_netns(|| async {
        let (peer, stats, _task) = start_stack(1500, 64);
        peer.send(Bytes::from_static(&[0xff; 40]));
        peer.send(Bytes::from_static(&[0x45, 0, 0]));
        wait_stats(&stats, "two malformed packets", |s| {
            s.dropped_malformed == 2
        })
        .await;
        assert!(peer.try_recv().is_none());
    });
}

/// A listener on `ip` whose accept queue is full: the kernel drops further SYNs to it, so
/// connects to it stay in progress (a host that does not answer). Keep both halves alive.
fn silent_port(ip: &str) -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    let addr = sa(ip, 0);
    let listener = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )
    .unwrap();
    listener.bind(&addr.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    // The one connection the queue holds, never accepted.
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (listener, filler, addr)
}

fn start_stack_with(
    limits: Limits,
) -> (
    MemoryPeer,
    Arc<Stats>,
    tokio::task::JoinHandle<Result<(), LinkError>>,
) {
    let (link, peer) = memory_link(256);
    let config = StackConfig {
        mtu: 1500,
        limits,
        ..StackConfig::default()
    };
    let stats = config.stats.clone();
    let task = tokio::spawn(serve_link(link, config));
    (peer, stats, task)
}

fn is_rst_to(pkt: &[u8], client: SocketAddr) -> bool {
    let (_, dst, proto, body) = transport_of(pkt);
    proto == IpProtocol::Tcp
        && dst == client.ip().into()
        && TcpPacket::new_checked(&body[..])
            .is_ok_and(|tcp| tcp.rst() && tcp.dst_port() == client.port())
}

#[test]
fn connects_beyond_the_per_host_cap_get_rst_and_other_hosts_still_connect() {
    in_netns(|| async {
        let limits = Limits {
            max_half_open_per_host: 3,
            connect_timeout: Duration::from_secs(30),
            ..Limits::default()
        };
        let (peer, stats, _task) = start_stack_with(limits);
        let (_listener, _filler, silent) = silent_port("127.0.0.1");
        for port in 0..5u16 {
            let client = sa(CLIENT_V4, 41000 + port);
            peer.send(Bytes::from(tcp_segment(
                client,
                silent,
                1,
                None,
                TcpControl::Syn,
                &[],
            )));
        }
        // The two beyond the cap are refused at once.
        for port in 3..5u16 {
            let reply = next_packet(&peer).await;
            assert!(is_rst_to(&reply, sa(CLIENT_V4, 41000 + port)), "{reply:?}");
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.tcp_refused_by_limit, 2, "{snapshot}");
        assert_eq!(snapshot.tcp_connects, 3, "{snapshot}");

        // Another host connects at once.
        let server = echo_server("[::1]:0").await;
        let client = sa(CLIENT_V6, 42000);
        peer.send(Bytes::from(tcp_segment(
            client,
            server,
            1,
            None,
            TcpControl::Syn,
            &[],
        )));
        let reply = next_packet(&peer).await;
        let (_, _, _, body) = transport_of(&reply);
        let tcp = TcpPacket::new_checked(&body[..]).unwrap();
        assert!(tcp.syn() && tcp.ack(), "a SYN-ACK from the other host");
        assert_eq!(stats.snapshot().tcp_refused_by_limit, 2);
    });
}

#[test]
fn a_connect_that_takes_too_long_is_given_up_with_rst() {
    in_netns(|| async {
        let limits = Limits {
            connect_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let (peer, stats, _task) = start_stack_with(limits);
        let (_listener, _filler, silent) = silent_port("127.0.0.1");
        let client = sa(CLIENT_V4, 43000);
        let started = std::time::Instant::now();
        peer.send(Bytes::from(tcp_segment(
            client,
            silent,
            1,
            None,
            TcpControl::Syn,
            &[],
        )));
        let reply = next_packet(&peer).await;
        assert!(is_rst_to(&reply, client), "{reply:?}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
            "given up after {waited:?}"
        );
        assert_eq!(stats.snapshot().tcp_connect_gave_up, 1);
        // The slot is free again: a new connect to the same host starts.
        peer.send(Bytes::from(tcp_segment(
            sa(CLIENT_V4, 43001),
            silent,
            1,
            None,
            TcpControl::Syn,
            &[],
        )));
        wait_stats(&stats, "a second connect", |s| s.tcp_connects == 2).await;
    });
}

#[test]
fn stalled_readers_hold_no_more_than_the_buffer_budget_and_resume_when_it_frees() {
    // Rings are a share of the budget (`budget::ring_len`): the first flows get large ones,
    // the rest 16 KiB, about 330 KiB of send rings in all, well above the budget.
    const FLOWS: usize = 16;
    const EACH: usize = 1 << 20;
    const WINDOW: usize = 4096;
    const BUDGET: usize = 128 * 1024;
    in_netns(|| async {
        // Sends EACH bytes (the connection's index, repeated) on each accepted connection.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for index in 0..FLOWS {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let data = vec![index as u8; EACH];
                    let _ = conn.write_all(&data).await;
                });
            }
        });
        let limits = Limits {
            buffer_budget: BUDGET,
            ..Limits::default()
        };
        let (peer, stats, _task) = start_stack_with(limits);
        let mut client = Client::new(peer, 1500);
        let handles: Vec<_> = (0..FLOWS).map(|_| client.connect(server, WINDOW)).collect();
        // Never read: every flow stalls once the session's window is full.
        client
            .until_stats(&stats, "the budget to hold flows back", |s| {
                s.tcp_budget_waits > 10
            })
            .await;
        let down = stats.snapshot().tcp_bytes_down as usize;
        // What the stack took from upstream: its rings (the budget, plus a page per flow)
        // and what the session's windows acknowledged.
        let most = BUDGET + FLOWS * (budget::FLOOR + WINDOW);
        assert!(
            down <= most,
            "{down} bytes read from upstream by stalled flows, more than {most}"
        );
        assert!(down >= BUDGET / 2, "only {down} bytes read from upstream");

        // The readers come back: every flow delivers all of its bytes.
        let mut got = [0usize; FLOWS];
        client
            .until("every flow's data", |c| {
                for (index, &h) in handles.iter().enumerate() {
                    let s = c.tcp(h);
                    while s.can_recv() {
                        s.recv(|b| {
                            assert!(b.iter().all(|&x| x == index as u8), "flow {index} mixed up");
                            got[index] += b.len();
                            (b.len(), ())
                        })
                        .unwrap();
                    }
                }
                got.iter().all(|&n| n == EACH).then_some(())
            })
            .await;
    });
}

#[test]
fn stolen_connections_beyond_the_flow_cap_are_given_back_at_once() {
    in_netns(|| async {
        let (link, peer) = memory_link(256);
        let config = StackConfig {
            mtu: 1500,
            limits: Limits {
                max_flows: 1,
                ..Limits::default()
            },
            ..StackConfig::default()
        };
        let stats = config.stats.clone();
        let (inbound, inbound_rx) = inbound::channel();
        let _task = tokio::spawn(serve_link_with_inbound(link, config, Some(inbound_rx)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut outcomes = Vec::new();
        // Kept open: a client whose connection the stack gives back gets it closed otherwise.
        let mut clients = Vec::new();
        for port in [8080, 8081] {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            let (stream, _) = listener.accept().await.unwrap();
            let (done, outcome) = tokio::sync::oneshot::channel();
            let _ = inbound.send(inbound::InboundConnection {
                peer: sa("10.1.0.7", 51234),
                session: sa(CLIENT_V4, port),
                stream,
                done,
            });
            outcomes.push(outcome);
        }
        // The first is opened into the session (its SYN goes out); the second is over the
        // cap of one flow and comes back at once, without a SYN.
        let syn = next_packet(&peer).await;
        let (_, dst, _, body) = transport_of(&syn);
        assert_eq!(dst, IpAddress::from(CLIENT_V4.parse::<IpAddr>().unwrap()));
        assert_eq!(TcpPacket::new_checked(&body[..]).unwrap().dst_port(), 8080);
        let second = tokio::time::timeout(Duration::from_secs(1), outcomes.pop().unwrap())
            .await
            .expect("the second connection came back at once")
            .expect("an outcome");
        assert!(second.is_err(), "the second connection was given back");
        assert_eq!(stats.snapshot().tcp_inbound_over_limit, 1);
        assert_eq!(stats.snapshot().tcp_inbound, 1);
    });
}
