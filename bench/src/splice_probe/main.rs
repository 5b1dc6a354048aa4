//! `mirrord-net-splice-probe`: what a round trip would cost if the kernel spliced a session's
//! TCP connection to the agent's upstream socket, with no user-space hop (the design
//! docs/benchmarks.md proposes for the loopback latency rows). Not a mode of mirrord-net: it
//! measures sockets set up by hand, to say which sockmap design is worth building.
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
//!   sender's `sendmsg`: the best case, which needs the pod's own socket `D` in the map.
//!
//! Then, for the sock_ops splice only:
//!
//! - **bulk**: 64 MiB each way on one connection, against the same directly;
//! - **the closing race**: the server sends and closes at once, while `C` reads to its end.
//!   Either the agent, told of `B`'s end, ends `C`'s connection itself (`A`'s FIN, as the
//!   session's stack would send it) while `B`'s last data may still be in the kernel's
//!   worker, or `B`'s FIN is redirected behind its data (see [`session_maps::FinPath`]).
//!   The probe counts the connections where `C` read every byte and then its end, those
//!   whose end came early, and the reads that failed.
//!
//! Root only (`bpf(2)` with socket maps needs `CAP_BPF` and `CAP_NET_ADMIN`). The vCPU
//! wake-ups of docs/benchmarks.md ("where the round trip goes") make every path's figures
//! bimodal on two vCPUs; `taskset -c 1` shows the work itself.

mod bpf;
mod session_maps;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Parser;
use mirrord_net_tests::netns::Netns;

use crate::bpf::{SockHash, Verdict};
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
    /// Connections closed by the server per size and way in the closing race.
    #[arg(long, default_value_t = 200)]
    closes: usize,
}

const WARMUP: usize = 1_000;
const MESSAGE: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Path {
    Direct,
    Relay,
    ReceivedBothWays,
    ReceivedBothWaysParsed,
    SentOutReceivedIn,
    SessionSplice,
    SentBothWays,
}

impl Path {
    const ALL: [Path; 7] = [
        Path::Direct,
        Path::Relay,
        Path::ReceivedBothWays,
        Path::ReceivedBothWaysParsed,
        Path::SentOutReceivedIn,
        Path::SessionSplice,
        Path::SentBothWays,
    ];

    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Relay => "user-space relay",
            Path::ReceivedBothWays => "sk_skb both ways",
            Path::ReceivedBothWaysParsed => "sk_skb both ways, stream parser",
            Path::SentOutReceivedIn => "sk_msg out, sk_skb in",
            Path::SessionSplice => "sk_msg out, sk_skb in, by sock_ops",
            Path::SentBothWays => "sk_msg both ways",
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
    addr: SocketAddr,
    accepted: mpsc::Receiver<TcpStream>,
}

impl Server {
    fn start(pod: &Netns) -> Result<Server> {
        let listener = pod.run(|| TcpListener::bind("127.0.0.1:0"))??;
        let addr = listener.local_addr()?;
        let (hand, accepted) = mpsc::channel();
        std::thread::spawn(move || {
            for socket in listener.incoming().flatten() {
                if hand.send(socket).is_err() {
                    return;
                }
            }
        });
        Ok(Server { addr, accepted })
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
    /// The four sockets; `C` is created in `cgroup` if one is given. `B` connects first, as
    /// the agent connects upstream before it answers the session's SYN.
    fn through_the_session(
        session: &Netns,
        pod: &Netns,
        server: &Server,
        cgroup: Option<&Cgroup>,
    ) -> Result<Connection> {
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
    let id = std::process::id();
    let session = Netns::create(&format!("mnet-splice-s-{id}"))?;
    let pod = Netns::create(&format!("mnet-splice-p-{id}"))?;
    session.ip_batch("link set lo up")?;
    pod.ip_batch("link set lo up")?;
    let server = Server::start(&pod)?;
    let cgroup = Cgroup::create("mnet-splice-")?;
    let maps = Maps {
        received_out: SockHash::new(Verdict::ReceivedOut)?,
        received_out_parsed: SockHash::new(Verdict::ReceivedOutParsed)?,
        received_in: SockHash::new(Verdict::ReceivedIn)?,
        sent_out: SockHash::new(Verdict::SentOut)?,
        sent_in: SockHash::new(Verdict::SentIn)?,
        session: SessionMaps::new(&cgroup)?,
        cgroup,
    };

    let paths: Vec<Path> = Path::ALL
        .into_iter()
        .filter(|path| {
            *path == Path::Direct
                || args
                    .only
                    .as_ref()
                    .is_none_or(|only| path.name().contains(only.as_str()))
        })
        .collect();
    let mut p50s: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for round in 1..=args.rounds {
        for (index, &path) in paths.iter().enumerate() {
            let times = measure(path, args.count, &session, &pod, &server, &maps)
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

    if args
        .only
        .as_ref()
        .is_none_or(|only| "bulk".contains(only.as_str()))
    {
        println!();
        bulk(&session, &pod, &server, &maps)?;
    }
    if args
        .only
        .as_ref()
        .is_none_or(|only| "closing".contains(only.as_str()))
    {
        println!();
        for fin in [FinPath::Stack, FinPath::Map] {
            for size in [64, 16 << 20] {
                let race = closing_race(args.closes, size, fin, &session, &pod, &server, &maps)
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
                    race.first_error
                        .map(|err| format!(" (the first: {err})"))
                        .unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// One 64 MiB transfer each way, directly and through the splice set up by sock_ops, after
/// one not measured.
fn bulk(session: &Netns, pod: &Netns, server: &Server, maps: &Maps) -> Result<()> {
    const SIZE: usize = 64 << 20;
    let payload = vec![3u8; SIZE];
    for spliced in [false, true] {
        for upload in [true, false] {
            let mut rates = Vec::new();
            for _ in 0..4 {
                // (the program's socket, the server's, the agent's thread)
                let (program, server_side, agent) = if spliced {
                    let Connection { c, a, b, d } =
                        Connection::through_the_session(session, pod, server, Some(&maps.cgroup))?;
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
                    let to = server.addr;
                    let client = pod.run(|| TcpStream::connect(to))??;
                    (
                        client,
                        server.accepted.recv().context("the server stopped")?,
                        None,
                    )
                };
                let (mut from, mut to) = if upload {
                    (program, server_side)
                } else {
                    (server_side, program)
                };
                let payload = payload.clone();
                let started = Instant::now();
                let sender = std::thread::spawn(move || {
                    let sent = from.write_all(&payload);
                    let _ = from.shutdown(std::net::Shutdown::Write);
                    sent
                });
                to.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
                let mut got = Vec::with_capacity(SIZE);
                to.read_to_end(&mut got)
                    .context("the transfer stalled for 10 s")?;
                let took = started.elapsed();
                sender.join().expect("the sender")?;
                // `C`'s close (when it received) is the agent's cue to end `B`.
                drop(to);
                if let Some(agent) = agent {
                    drop(agent.join());
                }
                anyhow::ensure!(got.len() == SIZE, "{} of {SIZE} bytes arrived", got.len());
                rates.push(SIZE as f64 * 8.0 / took.as_secs_f64() / 1e9);
            }
            println!(
                "bulk {}, 64 MiB, {}: {:.2} Gbit/s (median of {:.2} / {:.2} / {:.2}, after one \
                 at {:.2})",
                if upload { "upload" } else { "download" },
                if spliced {
                    "sk_msg out, sk_skb in, by sock_ops"
                } else {
                    "direct"
                },
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

/// What the closing race measured.
#[derive(Default)]
struct Race {
    whole: usize,
    short: usize,
    missing: usize,
    failed: usize,
    first_error: Option<String>,
}

/// `count` connections spliced by sock_ops, each ended by the server right after it sent
/// `size` bytes while `C` reads. With [`FinPath::Stack`], the agent ends `C`'s connection
/// itself (`A`'s FIN, as the session's stack would) when `B` reports its peer's end
/// (`POLLRDHUP`: it never reads `B`, whose data the verdict takes); with [`FinPath::Map`],
/// `B`'s FIN follows its data into `C`'s queue and the agent sends none.
fn closing_race(
    count: usize,
    size: usize,
    fin: FinPath,
    session: &Netns,
    pod: &Netns,
    server: &Server,
    maps: &Maps,
) -> Result<Race> {
    let mut race = Race::default();
    let payload = vec![5u8; size];
    for _ in 0..count {
        let Connection { mut c, a, b, mut d } =
            Connection::through_the_session(session, pod, server, Some(&maps.cgroup))?;
        maps.session.splice(session_maps::tuple_of(&c)?, &b, fin)?;
        let agent = std::thread::spawn(move || {
            if fin == FinPath::Stack {
                let mut peer_end = [libc::pollfd {
                    fd: std::os::fd::AsRawFd::as_raw_fd(&b),
                    events: libc::POLLRDHUP,
                    revents: 0,
                }];
                // SAFETY: one pollfd, which outlives the call.
                unsafe { libc::poll(peer_end.as_mut_ptr(), 1, 5_000) };
                let _ = a.shutdown(std::net::Shutdown::Write);
            }
            (a, b)
        });
        let payload = payload.clone();
        let sender = std::thread::spawn(move || {
            let _ = d.write_all(&payload);
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
fn measure(
    path: Path,
    count: usize,
    session: &Netns,
    pod: &Netns,
    server: &Server,
    maps: &Maps,
) -> Result<Vec<f64>> {
    if path == Path::Direct {
        let to = server.addr;
        let client = pod.run(|| TcpStream::connect(to))??;
        client.set_nodelay(true)?;
        echo(server.accepted.recv().context("the server stopped")?);
        return ping_pong(client, count);
    }
    let cgroup = (path == Path::SessionSplice).then_some(&maps.cgroup);
    let Connection { c, a, b, d } = Connection::through_the_session(session, pod, server, cgroup)?;
    match path {
        Path::Direct => unreachable!("handled above"),
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
