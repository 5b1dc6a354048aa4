//! The measuring side, run as `mirrord-net-bench __client JOB` in every mode, so direct,
//! mirrord-net and wrapper runs execute exactly the same code. Plain blocking sockets and one
//! thread per flow: the simplest client a user's program could be, with nothing of its own
//! between the socket calls being timed. The file jobs are in [`crate::file_passes`].

use std::io::{BufRead, Read, Write};
use std::net::{Shutdown, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::file_passes;
use crate::job::{Answer, Job};
use crate::ports::{self, addr};

/// The longest any single socket operation may block before the run fails.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

pub fn run(job: &str) -> Result<()> {
    crate::limits::raise_nofile();
    let job: Job = serde_json::from_str(job).context("parsing the job")?;
    let answer = match job {
        Job::PingPong { count, warmup } => ping_pong(count, warmup)?,
        Job::HttpKeepAlive { count, warmup } => keep_alive(count, warmup)?,
        Job::NewConnection { count } => new_connections(count)?,
        Job::IncomingKeepAlive {
            count,
            warmup,
            tagged,
            served_by,
            await_session,
        } => incoming_keep_alive(count, warmup, tagged, &served_by, await_session)?,
        Job::BulkUpload {
            flows,
            duration_ms,
            max_bytes,
        } => bulk(flows, Duration::from_millis(duration_ms), max_bytes, upload)?,
        Job::BulkDownload {
            flows,
            duration_ms,
            max_bytes,
        } => bulk(
            flows,
            Duration::from_millis(duration_ms),
            max_bytes,
            download,
        )?,
        Job::UdpRequestResponse { count, warmup } => udp(count, warmup)?,
        Job::SpawnChildren { count } => spawn_children(count)?,
        Job::IdleFlows { flows } => return idle_flows(flows),
        Job::ReadFile { path, len } => file_passes::read_file(&path, len)?,
        Job::StatTree { path, entries } => file_passes::stat_tree(&path, entries)?,
    };
    println!("{}", serde_json::to_string(&answer)?);
    Ok(())
}

fn connect(port: u16) -> Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr(port), IO_TIMEOUT)
        .with_context(|| format!("connecting to {}", addr(port)))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(stream)
}

fn micros(since: Instant) -> f64 {
    since.elapsed().as_nanos() as f64 / 1000.0
}

fn ping_pong(count: usize, warmup: usize) -> Result<Answer> {
    let mut stream = connect(ports::ECHO)?;
    let message = [0xa5u8; 64];
    let mut reply = [0u8; 64];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let start = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut reply).context("reading the echo")?;
        if i >= warmup {
            samples.push(micros(start));
        }
    }
    ensure!(reply == message, "the echo differs from what was sent");
    Ok(Answer {
        samples_us: samples,
        ..Answer::default()
    })
}

const REQUEST: &[u8] = b"GET /1k HTTP/1.1\r\nHost: bench\r\nUser-Agent: mirrord-net-bench\r\n\r\n";

/// Sends one GET and reads one whole response (headers, then exactly Content-Length bytes).
fn get(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    exchange(stream, buf, REQUEST).map(drop)
}

/// Sends `request` and reads one whole response; returns its `X-Served-By`, if any.
fn exchange(stream: &mut TcpStream, buf: &mut Vec<u8>, request: &[u8]) -> Result<Option<String>> {
    stream.write_all(request)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("the server closed mid-response");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            ensure!(
                head.starts_with("http/1.1 200"),
                "unexpected response: {head}"
            );
            let length: usize = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .context("no content-length")?
                .trim()
                .parse()?;
            let want = end + 4 + length;
            while buf.len() < want {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    bail!("the server closed mid-body");
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            ensure!(buf.len() == want, "more bytes than one response");
            ensure!(length == ports::HTTP_BODY, "body of {length} bytes");
            let served_by = head
                .lines()
                .find_map(|line| line.strip_prefix("x-served-by:"))
                .map(|by| by.trim().to_string());
            return Ok(served_by);
        }
    }
}

fn keep_alive(count: usize, warmup: usize) -> Result<Answer> {
    let mut stream = connect(ports::HTTP)?;
    let mut buf = Vec::with_capacity(8192);
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let start = Instant::now();
        get(&mut stream, &mut buf)?;
        if i >= warmup {
            samples.push(micros(start));
        }
    }
    Ok(Answer {
        samples_us: samples,
        ..Answer::default()
    })
}

fn incoming_request(tagged: bool) -> Vec<u8> {
    let tag = if tagged {
        format!("{}: {}\r\n", ports::STEAL_HEADER, ports::STEAL_VALUE)
    } else {
        String::new()
    };
    format!("GET /1k HTTP/1.1\r\nHost: bench\r\nUser-Agent: mirrord-net-bench\r\n{tag}\r\n")
        .into_bytes()
}

fn incoming_keep_alive(
    count: usize,
    warmup: usize,
    tagged: bool,
    served_by: &str,
    await_session: bool,
) -> Result<Answer> {
    let mut buf = Vec::with_capacity(8192);
    if await_session {
        // The steal begins once the session's listener is seen and the rule is in place.
        let deadline = Instant::now() + Duration::from_secs(20);
        let probe = incoming_request(true);
        loop {
            let answered = TcpStream::connect_timeout(&ports::incoming_addr(), IO_TIMEOUT)
                .map_err(anyhow::Error::from)
                .and_then(|mut stream| exchange(&mut stream, &mut buf, &probe));
            if matches!(&answered, Ok(Some(by)) if by == "session") {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the session did not steal in 20 s (last answer: {answered:?})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut stream = TcpStream::connect_timeout(&ports::incoming_addr(), IO_TIMEOUT)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let request = incoming_request(tagged);
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let start = Instant::now();
        let by = exchange(&mut stream, &mut buf, &request)?;
        if i >= warmup {
            samples.push(micros(start));
        }
        ensure!(
            by.as_deref() == Some(served_by),
            "request {i} answered by {by:?}, not {served_by}"
        );
    }
    Ok(Answer {
        samples_us: samples,
        ..Answer::default()
    })
}

fn new_connections(count: usize) -> Result<Answer> {
    let mut buf = Vec::with_capacity(8192);
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let mut stream = connect(ports::HTTP)?;
        get(&mut stream, &mut buf)?;
        drop(stream);
        samples.push(micros(start));
    }
    Ok(Answer {
        samples_us: samples,
        ..Answer::default()
    })
}

/// Runs `flows` transfers in parallel, all starting together; returns the aggregate rate.
fn bulk(
    flows: usize,
    duration: Duration,
    max_bytes: u64,
    transfer: fn(Instant, u64) -> Result<u64>,
) -> Result<Answer> {
    let start = Instant::now();
    let deadline = start + duration;
    let results: Vec<Result<u64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..flows)
            .map(|_| scope.spawn(move || transfer(deadline, max_bytes)))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| bail!("flow panicked")))
            .collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let mut bytes = 0;
    for result in results {
        bytes += result?;
    }
    Ok(Answer {
        gbit_per_s: Some(bytes as f64 * 8.0 / secs / 1e9),
        bytes: Some(bytes),
        ..Answer::default()
    })
}

/// Writes until the deadline or the byte limit, then waits for the server's count: the time
/// includes draining everything in flight, and the bytes are what the server really read.
fn upload(deadline: Instant, max_bytes: u64) -> Result<u64> {
    let mut stream = connect(ports::SINK)?;
    let buf = vec![0x33u8; 256 * 1024];
    let mut sent = 0u64;
    while sent < max_bytes && Instant::now() < deadline {
        let n = (max_bytes - sent).min(buf.len() as u64) as usize;
        stream.write_all(&buf[..n])?;
        sent += n as u64;
    }
    stream.shutdown(Shutdown::Write)?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .context("reading the sink's count")?;
    let received = u64::from_le_bytes(count);
    ensure!(
        received == sent,
        "sent {sent} bytes, the server read {received}"
    );
    Ok(received)
}

/// Reads until the deadline or the byte limit; counts only bytes that arrived.
fn download(deadline: Instant, max_bytes: u64) -> Result<u64> {
    let mut stream = connect(ports::SOURCE)?;
    stream.write_all(&max_bytes.to_le_bytes())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut received = 0u64;
    while received < max_bytes && Instant::now() < deadline {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        received += n as u64;
    }
    Ok(received)
}

fn udp(count: usize, warmup: usize) -> Result<Answer> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(addr(ports::UDP_ECHO))?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut samples = Vec::with_capacity(count);
    let mut reply = [0u8; 2048];
    let mut resent = 0u64;
    for i in 0..warmup + count {
        let mut message = [0u8; 64];
        message[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let start = Instant::now();
        let mut tries = 0;
        loop {
            socket.send(&message)?;
            match socket.recv(&mut reply) {
                // A late reply to an earlier, resent request: keep waiting for ours.
                Ok(n) if n != 64 || reply[..8] != message[..8] => continue,
                Ok(_) => break,
                Err(err)
                    if matches!(
                        err.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    tries += 1;
                    resent += 1;
                    ensure!(tries < 20, "no UDP echo after {tries} tries");
                }
                Err(err) => return Err(err.into()),
            }
        }
        if i >= warmup {
            samples.push(micros(start));
        }
    }
    Ok(Answer {
        samples_us: samples,
        resent: Some(resent),
        ..Answer::default()
    })
}

/// Opens `flows` connections (eight threads connecting at once), reports, then holds them
/// until stdin reaches EOF or a line; then lets the server close each one first.
fn idle_flows(flows: usize) -> Result<()> {
    const THREADS: usize = 8;
    let start = Instant::now();
    let opened: Vec<Result<Vec<TcpStream>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let share = flows / THREADS + usize::from(t < flows % THREADS);
                    (0..share).map(|_| connect(ports::HOLD)).collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|_| bail!("connector panicked"))
            })
            .collect()
    });
    let mut streams = Vec::with_capacity(flows);
    for result in opened {
        streams.extend(result?);
    }
    let answer = Answer {
        opened: Some(streams.len()),
        open_s: Some(start.elapsed().as_secs_f64()),
        ..Answer::default()
    };
    println!("{}", serde_json::to_string(&answer)?);
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    // Ask the server to close first (see the hold server), then wait for each close.
    for stream in &mut streams {
        stream.write_all(b"x")?;
    }
    let mut byte = [0u8; 1];
    for stream in &mut streams {
        while stream.read(&mut byte)? > 0 {}
    }
    Ok(())
}

/// What each child process costs: fork, exec of `/bin/true`, exit, wait.
fn spawn_children(count: usize) -> Result<Answer> {
    let mut samples_us = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let status = std::process::Command::new("/bin/true")
            .status()
            .context("starting /bin/true")?;
        samples_us.push(micros(start));
        ensure!(status.success(), "/bin/true exited with {status}");
    }
    Ok(Answer {
        samples_us,
        ..Answer::default()
    })
}
