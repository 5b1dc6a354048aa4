//! The whole session over the stream transport: QUIC framed on a TCP connection to the
//! agent's listener, the path a Kubernetes port-forward takes, chosen for a local target with
//! `MIRRORD_NET_LOCAL_TRANSPORT=stream`. The handshake, an HTTP request, the target's files
//! and a bulk transfer must all work as over UDP.

use std::time::Duration;

use mirrord_net_tests::target_files::{TargetFiles, CONFIG};
use mirrord_net_tests::{bash, sh, tool, Invocation, Pod};

const SIXTY_FOUR_MIB: u64 = 64 << 20;

/// A session on `pod` whose client reaches the agent over the stream, logging (at -v) how it
/// connected.
fn over_stream(pod: &Pod, args: &[&str]) -> Invocation {
    Invocation::session(pod, args)
        .env("MIRRORD_NET_LOCAL_TRANSPORT", "stream")
        .client_flag("-v")
}

#[track_caller]
fn assert_used_the_stream(stderr: &str) {
    // The log may be coloured: drop the escape sequences (ESC [ … m).
    let mut plain = String::new();
    let mut escape = false;
    for c in stderr.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => plain.push(c),
        }
    }
    let stderr = plain;
    assert!(
        stderr.contains("connected to the agent") && stderr.contains("transport=Stream"),
        "the session did not say it connected over the stream:\n{stderr}"
    );
}

#[test]
fn http_and_the_targets_files_work_over_the_stream() {
    let pod = Pod::start();
    let files = TargetFiles::install(&pod, false).expect("target files");
    let config = files.path("config.yaml");
    let script = format!(
        "set -e; {curl} -sS --fail -o /dev/null -w '%{{http_code}}\\n' http://web/; cat '{config}'",
        curl = tool("curl"),
    );
    let out = over_stream(&pod, &sh(&script)).run();
    assert_eq!(out.assert_success(), format!("200\n{CONFIG}"), "{out}");
    assert_used_the_stream(&out.stderr);
}

#[test]
fn sixty_four_mib_download_arrives_intact_over_the_stream() {
    let pod = Pod::start();
    let mut hash = std::process::Command::new(tool("python3"));
    hash.arg(pod.script("blob.py"))
        .args(["sha", &SIXTY_FOUR_MIB.to_string()]);
    let expected = mirrord_net_tests::exec::run(hash, Duration::from_secs(60))
        .expect("hashing the stream")
        .assert_success()
        .trim()
        .to_string();
    let script = format!(
        "set -o pipefail; {} -sS --fail http://web/blob/{SIXTY_FOUR_MIB} | sha256sum",
        tool("curl")
    );
    let out = over_stream(&pod, &bash(&script))
        .timeout(Duration::from_secs(120))
        .run();
    let got = out
        .assert_success()
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert_eq!(got, expected, "the downloaded data differs:\n{out}");
    assert_used_the_stream(&out.stderr);
    eprintln!(
        "64 MiB over the stream took {:?} (session included)",
        out.elapsed
    );
}

#[test]
fn sixty_four_mib_upload_arrives_intact_over_the_stream() {
    let pod = Pod::start();
    let script = format!(
        "set -o pipefail; {python} {blob} gen {SIXTY_FOUR_MIB} | {curl} -sS --fail -T - http://web/upload",
        python = tool("python3"),
        blob = pod.script("blob.py"),
        curl = tool("curl"),
    );
    let mut hash = std::process::Command::new(tool("python3"));
    hash.arg(pod.script("blob.py"))
        .args(["sha", &SIXTY_FOUR_MIB.to_string()]);
    let expected = mirrord_net_tests::exec::run(hash, Duration::from_secs(60))
        .expect("hashing the stream")
        .assert_success()
        .trim()
        .to_string();
    let out = over_stream(&pod, &bash(&script))
        .timeout(Duration::from_secs(120))
        .run();
    assert_eq!(
        out.assert_success().trim(),
        format!("{expected} {SIXTY_FOUR_MIB}"),
        "the server received something else:\n{out}"
    );
    assert_used_the_stream(&out.stderr);
}

/// The local agent started by the client `client_pid`, and the TCP port its stream relay
/// listens on; waits for both.
fn agent_stream_port(client_pid: i32, within: Duration) -> u16 {
    use mirrord_net_tests::procfs;
    let deadline = std::time::Instant::now() + within;
    loop {
        let agents = procfs::descendants_of(client_pid)
            .into_iter()
            .filter(|proc| {
                procfs::cmdline(proc.pid)
                    .first()
                    .is_some_and(|program| program.ends_with("mirrord-net-agent"))
            });
        for agent in agents {
            if let Some(port) = procfs::listening_tcp_ports(agent.pid).first() {
                return *port;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no agent listening under client {client_pid} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens a TCP connection to `port` every 100 ms until `stop`: some stay silent, some send
/// well-framed garbage (QUIC-looking long headers), some a frame that never ends; up to 20 are
/// held open. Returns how many connections it opened.
fn stranger(port: u16, stop: &std::sync::atomic::AtomicBool) -> usize {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut held = std::collections::VecDeque::new();
    let mut opened = 0;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut attempt = 0u64;
    while !stop.load(Ordering::Relaxed) {
        attempt += 1;
        if let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        {
            opened += 1;
            let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
            match attempt % 3 {
                0 => {
                    let mut frames = Vec::new();
                    for _ in 0..4 {
                        let mut datagram = vec![0u8; 1200];
                        for byte in &mut datagram {
                            seed ^= seed << 13;
                            seed ^= seed >> 7;
                            seed ^= seed << 17;
                            *byte = seed as u8;
                        }
                        datagram[0] = 0xc0 | (datagram[0] & 0x0f);
                        datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
                        frames.extend_from_slice(&(datagram.len() as u16).to_be_bytes());
                        frames.extend_from_slice(&datagram);
                    }
                    let _ = stream.write_all(&frames);
                }
                1 => {
                    let _ = stream.write_all(&[0xff, 0xff, 1, 2, 3]);
                }
                _ => {}
            }
            held.push_back(stream);
            if held.len() > 20 {
                held.pop_front();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    opened
}

/// Anyone who reaches the agent's TCP port may open streams to it; none of them can take the
/// session's place: a download runs while a stranger opens a connection every 100 ms and
/// arrives byte-exact, and the session ends normally.
#[test]
fn a_stranger_on_the_agents_port_does_not_disturb_the_session() {
    let pod = Pod::start();
    let mut hash = std::process::Command::new(tool("python3"));
    hash.arg(pod.script("blob.py"))
        .args(["sha", &SIXTY_FOUR_MIB.to_string()]);
    let expected = mirrord_net_tests::exec::run(hash, Duration::from_secs(60))
        .expect("hashing the stream")
        .assert_success()
        .trim()
        .to_string();
    // Time for the stranger before, during and after the download.
    let script = format!(
        "set -o pipefail; sleep 2; {} -sS --fail --limit-rate 16M http://web/blob/{SIXTY_FOUR_MIB} | sha256sum; sleep 1",
        tool("curl")
    );
    let invocation = over_stream(&pod, &bash(&script)).timeout(Duration::from_secs(120));
    let running = invocation.start();
    let port = agent_stream_port(running.pid(), Duration::from_secs(20));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (out, opened) = std::thread::scope(|scope| {
        let stranger = scope.spawn(|| stranger(port, &stop));
        let out = running.finish(invocation.timeout_value());
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, stranger.join().expect("the stranger"))
    });
    let out = out.unwrap_or_else(|timed_out| panic!("{timed_out}"));
    let got = out
        .assert_success()
        .split_whitespace()
        .next()
        .unwrap_or_default();
    assert_eq!(got, expected, "the downloaded data differs:\n{out}");
    assert_used_the_stream(&out.stderr);
    assert!(
        opened >= 30,
        "the stranger opened only {opened} connections during the session"
    );
    eprintln!("the stranger opened {opened} connections during the session");
}
