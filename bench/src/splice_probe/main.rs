//! `mirrord-net-splice-probe`: what a round trip would cost if the kernel carried a session's
//! TCP connection with no user-space hop, by splicing it to the agent's upstream socket with
//! socket maps, or by routing the session's namespace into the pod's (the designs
//! docs/benchmarks.md weighs for the loopback latency rows), and what each breaks. Not a mode
//! of mirrord-net: it measures sockets and links set up by hand, to say which design is worth
//! building.
//!
//! Two network namespaces stand for the session (S) and the pod (P); an echo server runs in
//! P. Every path but the direct one has the same sockets, as the design would:
//!
//! - `C`, the program's socket in S, connected to `A`, a listener's socket in S (where the
//!   session's stack ends the connection today);
//! - `B`, the agent's upstream socket in P, connected to the server's socket `D`.
//!
//! The paths, each a 64-byte ping-pong from `C`:
//!
//! - **direct**: a client in P to the server, no S at all;
//! - **user-space relay**: a thread per direction copies between `A` and `B` (the agent's
//!   relay without a stack);
//! - **sk_skb both ways**: `A`'s and `B`'s received data are sent out of the other by the
//!   kernel (`sk_skb` verdicts; the redirect runs in a workqueue);
//! - **sk_skb both ways, stream parser**: the same through the older stream-parser
//!   attachment;
//! - **sk_msg out, user-space relay in**: what `C` sends goes out of `B` in its `sendmsg`
//!   (`sk_msg`); what `B` receives a thread copies to `A` (the way back through the session's
//!   stack, as today);
//! - **sk_msg out, sk_skb in**: what `C` sends goes out of `B` in its `sendmsg` (`sk_msg`),
//!   and what `B` receives is queued on `C` (`sk_skb` with `BPF_F_INGRESS`). `A` idles. The
//!   agent needs `C` in its map: a `sock_ops` program on the session's cgroup can put it
//!   there. Nothing in the pod changes;
//! - **sk_msg out, sk_skb in, by sock_ops**: the same splice set up as a session would
//!   (see [`session_maps`]): `C` is created in a cgroup whose `sock_ops` program puts it in
//!   the map when its connection is established, keyed by its 4-tuple, and raises its
//!   receive buffer; the agent, which never holds `C`, adds `B` under that tuple and `B`'s
//!   cookie to a second map;
//! - **sk_msg both ways**: `C`'s sends are queued on `D` and `D`'s on `C`, both in the
//!   sender's `sendmsg`: the best case, which needs the pod's own socket `D` in the map;
//! - **direct, in a pod with the routed session's NAT**: direct, in the pod the session is
//!   routed into, whose NAT table turns connection tracking on for all its traffic;
//! - **routed**: no `A` and no `B`: a client in S reaches a server in that pod through a veth
//!   pair, source-NATed to the pod's address there (see [`routed`]).
//!
//! Then:
//!
//! - **bulk**: 64 MiB each way on one connection: direct, through the sock_ops splice, and
//!   routed;
//! - **new connections**: connect, a 64-byte echo and close, direct and routed;
//! - **the closing race**: the server sends and closes at once, while `C` reads to its end.
//!   Either the agent, told of `B`'s end, ends `C`'s connection itself (`A`'s FIN, as the
//!   session's stack would send it) while `B`'s last data may still be in the kernel's
//!   worker, or `B`'s FIN is redirected behind its data (see [`session_maps::FinPath`]).
//!   The probe counts the connections where `C` read every byte and then its end, those
//!   whose end came early, and the reads that failed;
//! - **leaving the splice**: a 16 MiB download (a counted pattern) whose splice the agent
//!   ends after `C` read 1 or 4 MiB, relaying the rest itself through `A`, as a flow that
//!   turned bulky would leave it; counts the downloads read whole and in order;
//! - **a nonblocking writer ahead of the server**, through `sk_msg` out: whether `POLLOUT`
//!   and an edge-triggered `EPOLLOUT` follow the room in `B`'s send queue;
//! - **a server that speaks first**: 64 bytes the server sends as it accepts, before `B`
//!   enters the map, or once `B` is in it but before `C`'s handshake ended (`C` is not in the
//!   map yet); counts the connections whose `C` reads them.
//!
//! Root only (`bpf(2)` with socket maps needs `CAP_BPF` and `CAP_NET_ADMIN`). The vCPU
//! wake-ups of docs/benchmarks.md ("where the round trip goes") make every path's figures
//! bimodal on two vCPUs; `taskset -c 1` shows the work itself.

mod bpf;
mod routed;
mod session_maps;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use mirrord_net_tests::netns::Netns;
use mirrord_net_tests::sweep;

use crate::bpf::{SockHash, Verdict};
use crate::routed::ServiceLink;
use crate::session_maps::{Cgroup, FinPath, SessionMaps};

#[derive(Debug, Parser)]
#[command(
    name = "mirrord-net-splice-probe",
    about = "Measures a 64-byte TCP round trip spliced between two namespaces by socket maps"
)]
struct Args {
    /// Round trips measured per path and round (after 1,000 not measured).
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Rounds; the paths alternate within each.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measures only the paths whose names contain this (and direct, the reference), for a
    /// profile of one path.
    #[arg(long)]
    only: Option<String>,
    /// Connections per row of the closing race and of leaving the splice.
    #[arg(long, default_value_t = 200)]
    closes: usize,
    /// Connections per row of the server that speaks first (each that fails waits 0.5 s).
    #[arg(long, default_value_t = 20)]
    banners: usize,
}

impl Args {
    /// Whether `--only` leaves the rows named `name` in.
    fn wants(&self, name: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| name.contains(only.as_str()))
    }
}

const WARMUP: usize = 1_000;
const MESSAGE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Direct,
    Relay,
    ReceivedBothWays,
    ReceivedBothWaysParsed,
    SentOutRelayIn,
    SentOutReceivedIn,
    SessionSplice,
    SentBothWays,
    DirectNat,
    Routed,
}

impl Path {
    const ALL: [Path; 10] = [
        Path::Direct,
        Path::Relay,
        Path::ReceivedBothWays,
        Path::ReceivedBothWaysParsed,
        Path::SentOutRelayIn,
        Path::SentOutReceivedIn,
        Path::SessionSplice,
        Path::SentBothWays,
        Path::DirectNat,
        Path::Routed,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relay => "user-space relay",
            Path::ReceivedBothWays => "sk_skb both ways",
            Path::ReceivedBothWaysParsed => "sk_skb both ways, stream parser",
            Path::SentOutRelayIn => "sk_msg out, user-space relay in",
            Path::SentOutReceivedIn => "sk_msg out, sk_skb in",
            Path::SessionSplice => "sk_msg out, sk_skb in, by sock_ops",
            Path::SentBothWays => "sk_msg both ways",
            Path::DirectNat => "direct, in a pod with the routed session's NAT",
            Path::Routed => "routed: veth + NAT into the pod",
        }
    }
}

/// The maps, made once: a socket map's programs stay attached to it.
struct Maps {
    received_out: SockHash,
    received_out_parsed: SockHash,
    received_in: SockHash,
    sent_out: SockHash,
    sent_in: SockHash,
    session: SessionMaps,
    /// The session's cgroup, whose `sock_ops` program fills `session`.
    cgroup: Cgroup,
}

/// The echo server in P: each accepted socket is handed to the caller, which starts its echo
/// once the socket is where the path wants it (a reader already blocked in `recv` when its
/// socket enters a map is not woken by data queued through the map).
struct Server {
    /// Its address on the pod's loopback.
    addr: SocketAddr,
    accepted: mpsc::Receiver<TcpStream>,
    /// While set, the server echoes on every socket it accepts itself, for the
    /// new-connection rows.
    echo_all: Arc<AtomicBool>,
}

impl Server {
    fn start(pod: &Netns) -> Result<Server> {
        // Every address of the pod: its loopback, and the address routed into it.
        let listener = pod.run(|| TcpListener::bind("0.0.0.0:0"))??;
        let addr = SocketAddr::from(([127, 0, 0, 1], listener.local_addr()?.port()));
        let (hand, accepted) = mpsc::channel();
        let echo_all = Arc::new(AtomicBool::new(false));
        let echoing = echo_all.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                if echoing.load(Ordering::SeqCst) {
                    let _ = socket.set_nodelay(true);
                    echo(socket);
                } else if hand.send(socket).is_err() {
                    return;
                }
            }
        });
        Ok(Server {
            addr,
            accepted,
            echo_all,
        })
    }
}

/// The pod the session is routed into (see [`routed`]): a namespace and an echo server of
/// its own, so that the NAT's connection tracking there stays out of the other paths.
struct RoutedPod {
    pod: Netns,
    server: Server,
}

/// What every row runs on: the namespaces, their servers and the maps.
struct Lab {
    /// S, where the program's sockets are.
    session: Netns,
    /// P, with the echo server the paths reach.
    pod: Netns,
    server: Server,
    routed: RoutedPod,
    /// A host beyond the pods, linked to both (held for its life), with a server of its own.
    _service: Netns,
    far: Server,
    maps: Maps,
}

impl Lab {
    /// Makes the namespaces (named as the tests name theirs, so that those a killed probe left
    /// are swept by the next probe or test), links and servers, and the maps.
    fn set_up() -> Result<Lab> {
        sweep::sweep_once();
        let name = sweep::unique_name();
        let session = Netns::create(&format!("{name}-splice-session"))?;
        let pod = Netns::create(&format!("{name}-splice-pod"))?;
        session.ip_batch("link set lo up")?;
        pod.ip_batch("link set lo up")?;
        let server = Server::start(&pod)?;
        let routed_pod = Netns::create(&format!("{name}-splice-routed"))?;
        routed_pod.ip_batch("link set lo up")?;
        let routed = RoutedPod {
            server: Server::start(&routed_pod)?,
            pod: routed_pod,
        };
        routed::join(&session, &routed.pod)?;
        let service = Netns::create(&format!("{name}-splice-service"))?;
        service.ip_batch("link set lo up")?;
        routed::link_service(&pod, &service, ServiceLink::Plain)?;
        routed::link_service(&routed.pod, &service, ServiceLink::Routed)?;
        let far = Server::start(&service)?;
        let cgroup = Cgroup::create(&format!("{name}-splice"))?;
        let maps = Maps {
            received_out: SockHash::new(Verdict::ReceivedOut)?,
            received_out_parsed: SockHash::new(Verdict::ReceivedOutParsed)?,
            received_in: SockHash::new(Verdict::ReceivedIn)?,
            sent_out: SockHash::new(Verdict::SentOut)?,
            sent_in: SockHash::new(Verdict::SentIn)?,
            session: SessionMaps::new(&cgroup)?,
            cgroup,
        };
        Ok(Lab {
            session,
            pod,
            server,
            routed,
            _service: service,
            far,
            maps,
        })
    }
}

/// The sockets of one measured connection (see the module's doc).
struct Connection {
    c: TcpStream,
    a: TcpStream,
    b: TcpStream,
    d: TcpStream,
}

impl Connection {
    /// The four sockets; `C` is created in the session's cgroup (where `sock_ops` puts it in
    /// the map) when `in_cgroup`. `B` connects first, as the agent connects upstream before it
    /// answers the session's SYN.
    fn through_the_session(lab: &Lab, in_cgroup: bool) -> Result<Connection> {
        let (session, pod, server, maps) = (&lab.session, &lab.pod, &lab.server, &lab.maps);
        let cgroup = in_cgroup.then_some(&maps.cgroup);
        let server_addr = server.addr;
        let b = pod.run(|| TcpStream::connect(server_addr))??;
        let d = server.accepted.recv().context("the server stopped")?;
        let listener = session.run(|| TcpListener::bind("127.0.0.1:0"))??;
        let to = listener.local_addr()?;
        let connect = || session.run(|| TcpStream::connect(to));
        let c = match cgroup {
            Some(cgroup) => cgroup.create_inside(connect)???,
            None => connect()??,
        };
        let (a, _) = listener.accept()?;
        for socket in [&c, &a, &b, &d] {
            socket.set_nodelay(true)?;
        }
        Ok(Connection { c, a, b, d })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("mirrord-net-splice-probe: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    let lab = Lab::set_up()?;

    let paths: Vec<Path> = Path::ALL
        .into_iter()
        .filter(|path| *path == Path::Direct || args.wants(path.name()))
        .collect();
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 1..=args.rounds {
        for (index, &path) in paths.iter().enumerate() {
            let times = measure(path, args.count, &lab)
                .with_context(|| format!("{}, round {round}", path.name()))?;
            let (p50, p99) = (percentile(&times, 0.5), percentile(&times, 0.99));
            println!(
                "round {round}  {:32} p50 {p50:7.2} µs   p99 {p99:7.2} µs",
                path.name()
            );
            p50s[index].push(p50);
        }
    }

    let direct = median(&mut p50s[0].clone());
    println!("\n| path | p50 per round, µs | median | / direct |\n|---|---|--:|--:|");
    for (path, p50s) in paths.iter().zip(&mut p50s) {
        let rounds: Vec<String> = p50s.iter().map(|p50| format!("{p50:.2}")).collect();
        let median = median(p50s);
        println!(
            "| {} | {} | {median:.2} | {:.2}× |",
            path.name(),
            rounds.join(" / "),
            median / direct
        );
    }

    if args.wants("bulk") {
        println!();
        bulk(&lab)?;
    }
    if args.wants("beyond the pod") {
        println!();
        beyond_the_pod(args.count, &lab)?;
    }
    if args.wants("new connection") {
        println!();
        new_connection_rows(args.count.min(5_000), &lab)?;
    }
    if args.wants("closing") {
        println!();
        for fin in [FinPath::Stack, FinPath::Map] {
            for size in [64, 16 << 20] {
                let race = closing_race(args.closes, size, fin, &lab)
                    .with_context(|| format!("the closing race, {size} bytes"))?;
                println!(
                    "closing, {size} bytes then the server's close, {}: C read every byte and \
                     then its end on {} of {} connections; {} ended early ({} bytes missing \
                     in all); {} reads failed{}",
                    fin.name(),
                    race.whole,
                    args.closes,
                    race.short,
                    race.missing,
                    race.failed,
                    race.first_error_note()
                );
            }
        }
    }
    if args.wants("leaving") {
        println!();
        for at in [1 << 20, 4 << 20] {
            let race = leaving_the_splice(args.closes, 16 << 20, at, &lab)
                .context("leaving the splice")?;
            println!(
                "leaving the splice after {at} of 16 MiB: C read every byte in order and then \
                 its end on {} of {} downloads; {} differed; {} failed{}",
                race.whole,
                args.closes,
                race.short,
                race.failed,
                race.first_error_note()
            );
        }
    }
    if args.wants("nonblocking") {
        println!();
        println!("{}", nonblocking_writer(&lab)?);
    }
    if args.wants("server first") {
        println!();
        for banner in [Banner::BeforeTheSplice, Banner::BeforeTheHandshake] {
            let race =
                server_first(args.banners, banner, &lab).context("a server that speaks first")?;
            println!(
                "a server that speaks first, {}: C read the banner on {} of {} connections; \
                 {} not within 0.5 s{}",
                banner.name(),
                race.whole,
                args.banners,
                race.failed,
                race.first_error_note()
            );
        }
    }
    Ok(())
}

/// 64 MiB transfers each way, directly, through the splice set up by sock_ops, and routed:
/// the median of three after one not measured.
fn bulk(lab: &Lab) -> Result<()> {
    let maps = &lab.maps;
    const SIZE: usize = 64 << 20;
    let payload: Arc<[u8]> = vec![3u8; SIZE].into();
    for way in [Path::Direct, Path::SessionSplice, Path::Routed] {
        for upload in [true, false] {
            let mut rates = Vec::new();
            for _ in 0..4 {
                // (the program's socket, the server's, the agent's thread)
                let (program, server_side, agent) = if way == Path::SessionSplice {
                    let Connection { c, a, b, d } = Connection::through_the_session(lab, true)?;
                    maps.session
                        .splice(session_maps::tuple_of(&c)?, &b, FinPath::Map)?;
                    // The agent's part: `C`'s FIN comes through the stack (here `A`), after
                    // every byte `C` sent went out of `B` in `C`'s own sendmsg; it ends `B`.
                    let agent = std::thread::spawn(move || {
                        let (mut a, b) = (a, b);
                        let _ = a.read(&mut [0u8; 1]);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                        (a, b)
                    });
                    (c, d, Some(agent))
                } else {
                    let (client, accepted) = connect_to_the_server(way, lab)?;
                    (client, accepted, None)
                };
                let (from, to) = if upload {
                    (program, server_side)
                } else {
                    (server_side, program)
                };
                // `C`'s close (when it received) is the agent's cue to end `B`.
                rates.push(transfer(from, to, &payload)?);
                if let Some(agent) = agent {
                    drop(agent.join());
                }
            }
            println!(
                "bulk {}, 64 MiB, {}: {:.2} Gbit/s (median of {:.2} / {:.2} / {:.2}, after one \
                 at {:.2})",
                if upload { "upload" } else { "download" },
                way.name(),
                median(&mut rates[1..].to_vec()),
                rates[1],
                rates[2],
                rates[3],
                rates[0]
            );
        }
    }
    Ok(())
}

/// `count` downloads of `size` bytes (a counted pattern, so order shows) through the splice,
/// each leaving it when `C` has read `at` bytes: the agent unsplices `B` and relays the rest
/// itself through `A`, as the session's stack would. Counts the downloads `C` read whole and
/// in order, up to the server's end.
fn leaving_the_splice(count: usize, size: usize, at: usize, lab: &Lab) -> Result<Race> {
    let maps = &lab.maps;
    let mut race = Race::default();
    let payload: Arc<[u8]> = (0..size).map(|i| (i % 251) as u8).collect();
    for _ in 0..count {
        let Connection { mut c, a, b, mut d } = Connection::through_the_session(lab, true)?;
        let tuple = session_maps::tuple_of(&c)?;
        maps.session.splice(tuple, &b, FinPath::Map)?;
        let b_here = b.try_clone()?;
        let (leave, left) = mpsc::channel::<()>();
        let agent = std::thread::spawn(move || -> Result<()> {
            let (mut a, mut b) = (a, b);
            if left.recv().is_err() {
                return Ok(());
            }
            std::io::copy(&mut b, &mut a)?;
            a.shutdown(std::net::Shutdown::Write)?;
            Ok(())
        });
        let sent = payload.clone();
        let sender = std::thread::spawn(move || {
            let _ = d.write_all(&sent);
        });
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut got = vec![0u8; at];
        let read = c
            .read_exact(&mut got)
            .map_err(anyhow::Error::from)
            .and_then(|()| {
                // The agent's part, in the order it would do it.
                maps.session.unsplice(tuple, &b_here)
            });
        drop(b_here);
        let _ = leave.send(());
        let read = read.and_then(|()| c.read_to_end(&mut got).map_err(anyhow::Error::from));
        let _ = sender.join();
        let relayed = agent.join().expect("the agent's thread");
        match read.and(relayed) {
            Ok(_) if *got == *payload => race.whole += 1,
            Ok(_) => {
                race.short += 1;
                race.missing += payload.len().saturating_sub(got.len());
                let first_difference = got.iter().zip(payload.iter()).position(|(g, p)| g != p);
                race.first_error
                    .get_or_insert_with(|| match first_difference {
                        Some(at) => format!("{} bytes, the first out of order at {at}", got.len()),
                        None => format!("{} of {size} bytes, in order", got.len()),
                    });
            }
            Err(err) => {
                race.failed += 1;
                race.first_error
                    .get_or_insert_with(|| format!("{err:#} after {} bytes", got.len()));
            }
        }
    }
    Ok(race)
}

/// When a server that speaks first sends its banner, against the splice's setting up.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Banner {
    /// Before `B` enters the map (the server writes as it accepts, and the agent splices once
    /// its `connect` returned).
    BeforeTheSplice,
    /// After `B` entered the map, before `C`'s handshake ends (`C` is not in the map yet).
    BeforeTheHandshake,
}

impl Banner {
    fn name(self) -> &'static str {
        match self {
            Banner::BeforeTheSplice => "before B enters the map",
            Banner::BeforeTheHandshake => "after B entered the map, before C's handshake",
        }
    }
}

/// `count` connections to a server that sends 64 bytes first, at `banner`; counts those whose
/// `C` read the banner within 0.5 s (through a working splice it takes microseconds).
fn server_first(count: usize, banner: Banner, lab: &Lab) -> Result<Race> {
    use nix::sys::socket::{
        bind, connect, getsockname, socket, AddressFamily, SockFlag, SockType, SockaddrIn,
    };
    let (session, pod, server, maps) = (&lab.session, &lab.pod, &lab.server, &lab.maps);
    let mut race = Race::default();
    for _ in 0..count {
        let server_addr = server.addr;
        let b = pod.run(|| TcpStream::connect(server_addr))??;
        let mut d = server.accepted.recv().context("the server stopped")?;
        let listener = session.run(|| TcpListener::bind("127.0.0.1:0"))??;
        let SocketAddr::V4(to) = listener.local_addr()? else {
            anyhow::bail!("IPv4 only");
        };
        // `C`, made in the cgroup and bound, so that its tuple is known before it connects,
        // as the agent knows it from the SYN.
        let c = maps.cgroup.create_inside(|| {
            session.run(|| -> nix::Result<std::os::fd::OwnedFd> {
                let fd = socket(
                    AddressFamily::Inet,
                    SockType::Stream,
                    SockFlag::SOCK_CLOEXEC,
                    None,
                )?;
                bind(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 0))?;
                Ok(fd)
            })
        })???;
        let local: SockaddrIn = getsockname(c.as_raw_fd())?;
        let tuple = session_maps::tuple(to, local.port());
        let banner_bytes = [9u8; MESSAGE];
        if banner == Banner::BeforeTheSplice {
            d.write_all(&banner_bytes)?;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        maps.session.splice(tuple, &b, FinPath::Map)?;
        if banner == Banner::BeforeTheHandshake {
            d.write_all(&banner_bytes)?;
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        connect(c.as_raw_fd(), &SockaddrIn::from(to))?;
        let mut c = TcpStream::from(c);
        let (_a, _) = listener.accept()?;
        c.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
        let mut got = [0u8; MESSAGE];
        match c.read_exact(&mut got) {
            Ok(()) if got == banner_bytes => race.whole += 1,
            Ok(()) => race.short += 1,
            Err(err) => {
                race.failed += 1;
                race.first_error.get_or_insert_with(|| err.to_string());
            }
        }
        drop(b);
    }
    Ok(race)
}

/// A nonblocking writer on `C` sending faster than the server reads, through `sk_msg` out
/// alone (the way back left to the stack): how much `C` takes before `EAGAIN`, whether
/// `POLLOUT` then waits for room (or wakes at once, which would make the writer spin) and
/// whether room comes back once the server reads.
fn nonblocking_writer(lab: &Lab) -> Result<String> {
    let maps = &lab.maps;
    let Connection {
        mut c,
        a: _a,
        b,
        mut d,
    } = Connection::through_the_session(lab, false)?;
    maps.sent_out.redirect(&c, &b)?;
    maps.sent_out.hold(&c)?;
    c.set_nonblocking(true)?;
    let chunk = [1u8; 65536];
    let fill = |c: &mut TcpStream| -> Result<usize> {
        let mut taken = 0;
        loop {
            match c.write(&chunk) {
                Ok(n) => taken += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return Ok(taken),
                Err(err) => return Err(err.into()),
            }
        }
    };
    let poll_out = |c: &TcpStream, ms: i32| -> (i16, std::time::Duration) {
        let mut fds = [libc::pollfd {
            fd: c.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        }];
        let started = Instant::now();
        // SAFETY: one pollfd, which outlives the call.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        (fds[0].revents, started.elapsed())
    };
    let ready = |revents: i16| {
        if revents & libc::POLLOUT != 0 {
            "ready"
        } else {
            "not ready"
        }
    };
    let taken = fill(&mut c)?;
    let (full_revents, full_waited) = poll_out(&c, 200);
    let again = fill(&mut c)?;
    // The server reads everything written so far.
    d.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let mut sink = vec![0u8; taken + again];
    d.read_exact(&mut sink)
        .context("the server did not get what C was told it took")?;
    let (drained_revents, drained_waited) = poll_out(&c, 200);
    let after = fill(&mut c)?;

    // Edge-triggered, as Go's runtime waits: after EAGAIN, does room made by the server
    // reading (100 ms later, in another thread) bring an EPOLLOUT edge within 1 s?
    // SAFETY: plain epoll calls on descriptors that outlive them.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    anyhow::ensure!(
        epoll >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    let mut event = libc::epoll_event {
        events: (libc::EPOLLOUT | libc::EPOLLET) as u32,
        u64: 0,
    };
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1];
    unsafe {
        libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, c.as_raw_fd(), &mut event);
        // The edge of the registration itself.
        libc::epoll_wait(epoll, events.as_mut_ptr(), 1, 0);
    }
    let full = fill(&mut c)?;
    let queued = after + full;
    let reader = std::thread::spawn(move || -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut sink = vec![0u8; queued];
        d.read_exact(&mut sink)
    });
    let started = Instant::now();
    let edge = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), 1, 1000) };
    let edge_after = started.elapsed();
    unsafe { libc::close(epoll) };
    reader.join().expect("the reader")?;
    Ok(format!(
        "a nonblocking writer ahead of the server, sk_msg out: {taken} bytes taken before \
         EAGAIN; then POLLOUT {} after {full_waited:.1?} and {again} bytes more; once the \
         server read them all, POLLOUT {} after {drained_waited:.1?} and {after} bytes more; \
         edge-triggered, after EAGAIN with {full} bytes more, the server's reading brought {}",
        ready(full_revents),
        ready(drained_revents),
        if edge > 0 {
            format!("an EPOLLOUT edge after {edge_after:.1?}")
        } else {
            format!("no EPOLLOUT edge within {edge_after:.1?}")
        }
    ))
}

/// What a row of connections measured (the closing race, leaving the splice, a server that
/// speaks first).
#[derive(Default)]
struct Race {
    /// Connections whose `C` read every byte, in order, then its end.
    whole: usize,
    /// Those whose `C` read an end early, or bytes that differ.
    short: usize,
    /// Bytes those never got.
    missing: usize,
    /// Those whose `C` got an error.
    failed: usize,
    first_error: Option<String>,
}

impl Race {
    /// " (the first: …)" when anything went wrong, for the end of a row.
    fn first_error_note(&self) -> String {
        self.first_error
            .as_ref()
            .map(|err| format!(" (the first: {err})"))
            .unwrap_or_default()
    }
}

/// `count` connections spliced by sock_ops, each ended by the server right after it sent
/// `size` bytes while `C` reads. With [`FinPath::Stack`], the agent ends `C`'s connection
/// itself (`A`'s FIN, as the session's stack would) when `B` reports its peer's end
/// (`POLLRDHUP`: it never reads `B`, whose data the verdict takes); with [`FinPath::Map`],
/// `B`'s FIN follows its data into `C`'s queue and the agent sends none.
fn closing_race(count: usize, size: usize, fin: FinPath, lab: &Lab) -> Result<Race> {
    let maps = &lab.maps;
    let mut race = Race::default();
    let payload: Arc<[u8]> = vec![5u8; size].into();
    for _ in 0..count {
        let Connection { mut c, a, b, mut d } = Connection::through_the_session(lab, true)?;
        maps.session.splice(session_maps::tuple_of(&c)?, &b, fin)?;
        let agent = std::thread::spawn(move || {
            if fin == FinPath::Stack {
                let mut peer_end = [libc::pollfd {
                    fd: b.as_raw_fd(),
                    events: libc::POLLRDHUP,
                    revents: 0,
                }];
                // SAFETY: one pollfd, which outlives the call.
                unsafe { libc::poll(peer_end.as_mut_ptr(), 1, 5_000) };
                let _ = a.shutdown(std::net::Shutdown::Write);
            }
            (a, b)
        });
        let sent = payload.clone();
        let sender = std::thread::spawn(move || {
            let _ = d.write_all(&sent);
        });
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        let mut got = Vec::new();
        let read = c.read_to_end(&mut got);
        let _ = sender.join();
        let kept = agent.join();
        match read {
            Ok(_) if got.len() == size => race.whole += 1,
            Ok(_) => {
                race.short += 1;
                race.missing += size - got.len();
            }
            Err(err) => {
                race.failed += 1;
                race.first_error
                    .get_or_insert_with(|| format!("{err} after {} of {size} bytes", got.len()));
            }
        }
        drop(kept);
    }
    Ok(race)
}

/// Sets `path` up on a new connection and times `count` round trips.
fn measure(path: Path, count: usize, lab: &Lab) -> Result<Vec<f64>> {
    let maps = &lab.maps;
    if matches!(path, Path::Direct | Path::DirectNat | Path::Routed) {
        let (client, accepted) = connect_to_the_server(path, lab)?;
        if path == Path::Routed {
            // The server must see the pod's own address, as from a program in the pod.
            let from = accepted.peer_addr()?.ip();
            anyhow::ensure!(
                from == routed::POD,
                "the server saw {from}, not the pod's address"
            );
        }
        echo(accepted);
        return ping_pong(client, count);
    }
    let Connection { c, a, b, d } =
        Connection::through_the_session(lab, path == Path::SessionSplice)?;
    match path {
        Path::Direct | Path::DirectNat | Path::Routed => unreachable!("handled above"),
        Path::Relay => {
            copy(a.try_clone()?, b.try_clone()?);
            copy(b.try_clone()?, a.try_clone()?);
        }
        Path::ReceivedBothWays | Path::ReceivedBothWaysParsed => {
            let map = if path == Path::ReceivedBothWays {
                &maps.received_out
            } else {
                &maps.received_out_parsed
            };
            map.redirect(&a, &b)?;
            map.redirect(&b, &a)?;
        }
        Path::SentOutRelayIn => {
            maps.sent_out.redirect(&c, &b)?;
            maps.sent_out.hold(&c)?;
            copy(b.try_clone()?, a.try_clone()?);
        }
        Path::SentOutReceivedIn => {
            maps.sent_out.redirect(&c, &b)?;
            maps.sent_out.hold(&c)?;
            maps.received_in.redirect(&b, &c)?;
            maps.received_in.hold(&b)?;
        }
        Path::SessionSplice => {
            let tuple = session_maps::tuple_of(&c)?;
            anyhow::ensure!(
                maps.session.holds_program_socket(tuple),
                "the sock_ops program did not put C in the map under {tuple:#x}"
            );
            maps.session.splice(tuple, &b, FinPath::Map)?;
        }
        Path::SentBothWays => {
            maps.sent_in.redirect(&c, &d)?;
            maps.sent_in.redirect(&d, &c)?;
        }
    }
    echo(d);
    let times = ping_pong(c, count);
    // A and B stay open until the round trips are done; the maps drop them when they close.
    drop((a, b));
    times
}

/// Where a client of a server without the session's sockets runs, where it connects to, and
/// the server: in the pod itself (direct), in the routed pod itself, or in the session routed
/// into that pod.
fn client_side(path: Path, lab: &Lab) -> (&Netns, SocketAddr, &Server) {
    let routed = &lab.routed;
    match path {
        Path::Routed => (
            &lab.session,
            routed::server_from_the_session(routed.server.addr.port()),
            &routed.server,
        ),
        Path::DirectNat => (&routed.pod, routed.server.addr, &routed.server),
        _ => (&lab.pod, lab.server.addr, &lab.server),
    }
}

/// A client of a server without the session's sockets (see [`client_side`]), and the
/// server's end.
fn connect_to_the_server(path: Path, lab: &Lab) -> Result<(TcpStream, TcpStream)> {
    let (from, to, server) = client_side(path, lab);
    let client = from.run(|| TcpStream::connect(to))??;
    client.set_nodelay(true)?;
    let accepted = server.accepted.recv().context("the server stopped")?;
    Ok((client, accepted))
}

/// New connections (connect, a 64-byte echo, close): direct, direct in the routed pod, and
/// routed from the session.
fn new_connection_rows(count: usize, lab: &Lab) -> Result<()> {
    let mut direct_p50 = None;
    for way in [Path::Direct, Path::DirectNat, Path::Routed] {
        let (from, to, server) = client_side(way, lab);
        let times = new_connections(count, from, to, server)
            .with_context(|| format!("new connections, {}", way.name()))?;
        let p50 = percentile(&times, 0.5);
        let direct = *direct_p50.get_or_insert(p50);
        println!(
            "new connection + 64 B echo + close, {}: p50 {p50:.1} µs ({:.2}× direct), p99 \
             {:.1} µs",
            way.name(),
            p50 / direct,
            percentile(&times, 0.99)
        );
    }
    Ok(())
}

/// Sends `payload` from `from` to `to` and closes both: Gbit/s.
fn transfer(mut from: TcpStream, mut to: TcpStream, payload: &Arc<[u8]>) -> Result<f64> {
    let sent = payload.clone();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let done = from.write_all(&sent);
        let _ = from.shutdown(std::net::Shutdown::Write);
        done
    });
    to.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut got = Vec::with_capacity(payload.len());
    to.read_to_end(&mut got)
        .context("the transfer stalled for 10 s")?;
    let took = started.elapsed();
    sender.join().expect("the sender")?;
    anyhow::ensure!(
        got.len() == payload.len(),
        "{} of {} bytes arrived",
        got.len(),
        payload.len()
    );
    Ok(payload.len() as f64 * 8.0 / took.as_secs_f64() / 1e9)
}

/// The rows beyond the pod: a server on another host the pod reaches through a link of its
/// own (a service, another pod), from the pod itself and from the session routed into the pod
/// (forwarded by the pod's namespace and masqueraded to its address on that link).
fn beyond_the_pod(count: usize, lab: &Lab) -> Result<()> {
    let Lab {
        session, pod, far, ..
    } = lab;
    let payload: Arc<[u8]> = vec![4u8; 64 << 20].into();
    let mut direct_p50s = None;
    for (name, from, link) in [
        ("direct, from the pod", pod, ServiceLink::Plain),
        ("routed, from the session", session, ServiceLink::Routed),
    ] {
        let (pod_address, service_address) = link.addresses();
        let to = SocketAddr::from((service_address, far.addr.port()));
        let client = from.run(|| TcpStream::connect(to))??;
        client.set_nodelay(true)?;
        let accepted = far.accepted.recv().context("the far server stopped")?;
        let seen = accepted.peer_addr()?.ip();
        anyhow::ensure!(
            seen == pod_address,
            "the far server saw {seen}, not the pod's address on its link"
        );
        echo(accepted);
        let round_trip = percentile(&ping_pong(client, count)?, 0.5);
        let connection = percentile(&new_connections(count.min(5_000), from, to, far)?, 0.5);
        let mut rates = [Vec::new(), Vec::new()];
        for (upload, rates) in [true, false].into_iter().zip(&mut rates) {
            for _ in 0..4 {
                let client = from.run(|| TcpStream::connect(to))??;
                let accepted = far.accepted.recv().context("the far server stopped")?;
                let (sender, receiver) = if upload {
                    (client, accepted)
                } else {
                    (accepted, client)
                };
                rates.push(transfer(sender, receiver, &payload)?);
            }
        }
        let [mut up, mut down] = rates.map(|rates| rates[1..].to_vec());
        let (up, down) = (median(&mut up), median(&mut down));
        let (rt0, nc0) = *direct_p50s.get_or_insert((round_trip, connection));
        println!(
            "beyond the pod, {name}: ping-pong p50 {round_trip:.2} µs ({:.2}×), new connection \
             p50 {connection:.1} µs ({:.2}×), bulk 64 MiB up {up:.2} / down {down:.2} Gbit/s",
            round_trip / rt0,
            connection / nc0
        );
    }
    Ok(())
}

/// `count` new connections from `from` to `to` (after 100 not measured), each a 64-byte
/// echo and a close: µs each, sorted.
fn new_connections(
    count: usize,
    from: &Netns,
    to: SocketAddr,
    server: &Server,
) -> Result<Vec<f64>> {
    server.echo_all.store(true, Ordering::SeqCst);
    let times = from.run(|| -> Result<Vec<f64>> {
        let message = [7u8; MESSAGE];
        let mut answer = [0u8; MESSAGE];
        let mut times = Vec::with_capacity(count);
        for turn in 0..100 + count {
            let start = Instant::now();
            let mut client = TcpStream::connect(to)?;
            client.set_nodelay(true)?;
            client.write_all(&message)?;
            client.read_exact(&mut answer)?;
            drop(client);
            if turn >= 100 {
                times.push(start.elapsed().as_secs_f64() * 1e6);
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times)
    });
    server.echo_all.store(false, Ordering::SeqCst);
    times?
}

fn echo(mut socket: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 65536];
        while let Ok(read) = socket.read(&mut buffer) {
            if read == 0 || socket.write_all(&buffer[..read]).is_err() {
                return;
            }
        }
    });
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || std::io::copy(&mut from, &mut to));
}

/// Round-trip times in µs, sorted.
fn ping_pong(mut socket: TcpStream, count: usize) -> Result<Vec<f64>> {
    socket.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    let message = [7u8; MESSAGE];
    let mut answer = [0u8; MESSAGE];
    let mut times = Vec::with_capacity(count);
    for turn in 0..WARMUP + count {
        let start = Instant::now();
        socket.write_all(&message)?;
        socket
            .read_exact(&mut answer)
            .context("no echo within 5 s")?;
        if turn >= WARMUP {
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    anyhow::ensure!(answer == message, "the echo differs from the message");
    times.sort_by(f64::total_cmp);
    Ok(times)
}

fn percentile(sorted: &[f64], quantile: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * quantile) as usize]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
