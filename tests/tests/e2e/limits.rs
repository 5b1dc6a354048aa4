//! The agent's limits (`stack/src/limits.rs`) under a SYN flood from the session.
//!
//! A program in the session opens thousands of connections to a host of the pod network that
//! drops everything (an nft rule in the services namespace). The agent keeps at most its
//! per-host cap of connects in progress (counted from the pod's own socket table), refuses the
//! rest with RST, and a new connection to another server answers at once while an existing
//! one keeps working.

use std::time::Duration;

use mirrord_net_tests::cgroup::MemoryCgroup;
use mirrord_net_tests::session::bin_dir;
use mirrord_net_tests::topology::{HOLD_ECHO_PORT, SERVICES_V4};
use mirrord_net_tests::{procfs, tool, Invocation, Pod};

/// The address that drops everything, added to the services end.
const SILENT_V4: &str = "10.213.0.9";
/// The agent's default cap on connects in progress towards one host.
const PER_HOST_CAP: usize = 1024;
/// SYNs the flood sends: several times the cap.
const FLOOD: usize = 4000;

const FLOOD_PY: &str = r#"
import errno, http.client, resource, socket, sys, time

silent, count, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def echo_line(sock, text):
    sock.sendall(text)
    got = b""
    while not got.endswith(b"\n"):
        chunk = sock.recv(100)
        if not chunk:
            break
        got += chunk
    return got

existing = socket.create_connection(("echo", 7000), timeout=5)
assert echo_line(existing, b"before\n") == b"before\n"

flood = []
for _ in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex((silent, 80))
    flood.append(s)
print("flooded", flush=True)
time.sleep(hold)

started = time.monotonic()
web = http.client.HTTPConnection("web", 80, timeout=5)
web.request("GET", "/")
status = web.getresponse().status
print(f"web {status} {time.monotonic() - started:.3f}", flush=True)

existing.settimeout(5)
print("existing", echo_line(existing, b"after\n").decode().strip(), flush=True)

refused = sum(1 for s in flood if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED)
print(f"refused {refused}", flush=True)
"#;

/// Connects from the pod towards `SILENT_V4` still in progress, from the pod's socket table.
fn half_open_in_pod(pod: &Pod) -> usize {
    let out = pod
        .pod_netns()
        .command(&tool("ss"))
        .expect("ss in the pod")
        .args(["-Htn", "state", "syn-sent", "dst", SILENT_V4])
        .output()
        .expect("ss");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// Adds `SILENT_V4` to the services end, with a rule that drops everything sent to it.
fn silence(pod: &Pod) {
    pod.services_netns()
        .ip_batch(&format!("addr add {SILENT_V4}/32 dev svc0\n"))
        .expect("the silent address");
    let nft = format!(
        "table inet flood_test {{\n chain input {{\n type filter hook input priority -10; policy accept;\n ip daddr {SILENT_V4} drop\n }}\n}}\n"
    );
    let out = pod
        .services_netns()
        .command(&tool("nft"))
        .expect("nft in the services namespace")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(nft.as_bytes())?;
            child.wait_with_output()
        })
        .expect("nft");
    assert!(out.status.success(), "nft failed: {out:?}");
}

#[test]
fn a_syn_flood_to_a_silent_host_is_capped_and_starves_nothing_else() {
    let pod = Pod::builder().hold_echo().build();
    silence(&pod);
    let script = pod.dir().join("flood.py");
    std::fs::write(&script, FLOOD_PY).expect("writing flood.py");

    let invocation = Invocation::session(
        &pod,
        &[
            &tool("python3"),
            script.to_str().expect("a UTF-8 path"),
            SILENT_V4,
            &FLOOD.to_string(),
            "3",
        ],
    )
    .timeout(Duration::from_secs(60));
    let mut running = invocation.start();
    assert!(
        running.wait_for_stdout("flooded", Duration::from_secs(30)),
        "the flood did not start:\n{}",
        running.stderr_so_far()
    );
    // Let the SYNs reach the agent, then count what the pod holds.
    std::thread::sleep(Duration::from_millis(1500));
    let half_open = half_open_in_pod(&pod);
    let out = running
        .finish(invocation.timeout_value())
        .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    let stdout = out.assert_success().to_string();
    eprintln!(
        "{} connects in progress in the pod during the flood\n{stdout}",
        half_open
    );
    assert!(
        half_open <= PER_HOST_CAP,
        "{half_open} connects in progress to one host, above the cap of {PER_HOST_CAP}:\n{out}"
    );
    assert!(half_open > 0, "the flood never reached the pod:\n{out}");

    let web = stdout
        .lines()
        .find_map(|line| line.strip_prefix("web "))
        .unwrap_or_else(|| panic!("no web line:\n{out}"));
    let (status, elapsed) = web.split_once(' ').expect("status and time");
    assert_eq!(status, "200", "{out}");
    let elapsed: f64 = elapsed.parse().expect("seconds");
    assert!(
        elapsed < 1.0,
        "a new connection to {SERVICES_V4} took {elapsed} s during the flood:\n{out}"
    );
    assert!(
        stdout.contains("existing after"),
        "the connection opened before the flood stopped working:\n{out}"
    );
    let refused: usize = stdout
        .lines()
        .find_map(|line| line.strip_prefix("refused "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no refused line:\n{out}"));
    assert!(
        refused >= FLOOD / 2,
        "only {refused} of {FLOOD} flood connects were refused at once:\n{out}"
    );
}

/// The memory the agent gets in [`an_agent_in_a_96_mib_cgroup_keeps_serving_under_a_syn_flood_with_10000_idle_flows`].
///
/// Measured on cgroup v1, where the kernel's objects for the agent's upstream sockets are
/// charged to it: 10,000 idle flows cost ~60 MiB (~42 MiB of it those sockets, ~4.1 KiB
/// each; ~16 MiB the agent's own, ~1.6 KiB each), ~67 MiB at the flood's peak. The agent
/// sizes its caps to its limit (`Limits::within_memory`): at 96 MiB 12,288 flows, 768
/// connects in progress towards one host.
const AGENT_MEMORY: u64 = 96 << 20;
/// The memory of [`an_agent_in_a_64_mib_cgroup_refuses_the_flows_it_cannot_hold_and_serves_the_rest_under_a_syn_flood`]:
/// less than 10,000 flows need, so the agent's caps (7,509 flows at 64 MiB) are what keep
/// it alive.
const SMALL_AGENT_MEMORY: u64 = 64 << 20;
/// Idle flows held open through the flood.
const IDLE_FLOWS: usize = 10_000;
/// How long the flood runs, in seconds.
const FLOOD_SECONDS: &str = "6";

/// Opens `count` echo connections (in batches, under the per-host cap on connects in
/// progress), counting those the agent refuses (RST: ECONNREFUSED at once), proves each
/// held one echoes a line, closes `spare` of them (room for new flows where the agent's cap
/// refused some), and waits for the file `go`; then sends
/// SYNs from a raw socket towards `silent` (random source ports, never answered) for
/// `seconds` while it checks, one second in, that a request on a keep-alive HTTP connection
/// opened before, a line on one of the idle flows and a NEW HTTP connection all answer.
const IDLE_AND_FLOOD_PY: &str = r#"
import errno, http.client, os, random, resource, selectors, socket, struct, sys, threading, time

server, port, silent, count, seconds, go, spare = (sys.argv[1], int(sys.argv[2]), sys.argv[3],
                                                   int(sys.argv[4]), float(sys.argv[5]), sys.argv[6],
                                                   int(sys.argv[7]))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

def get(conn):
    started = time.monotonic()
    conn.request("GET", "/")
    response = conn.getresponse()
    response.read()
    return response.status, time.monotonic() - started

keepalive = http.client.HTTPConnection(server, 80, timeout=5)
assert get(keepalive)[0] == 200

started = time.monotonic()
idle, refused, other = [], 0, {}
sel = selectors.DefaultSelector()
attempted = 0
while attempted < count:
    batch = min(256, count - attempted)
    attempted += batch
    for _ in range(batch):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((server, port))
        sel.register(s, selectors.EVENT_WRITE)
    pending = batch
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        for key, _ in sel.select(1):
            sel.unregister(key.fileobj)
            pending -= 1
            err = key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            key.fileobj.close() if err else idle.append(key.fileobj)
            if err == errno.ECONNREFUSED:
                refused += 1
            elif err:
                name = errno.errorcode.get(err, str(err))
                other[name] = other.get(name, 0) + 1
    if pending:
        sys.exit(f"{pending} connects of a batch did not finish, {len(idle)} open, {refused} refused")
opened = time.monotonic() - started
for s in idle:
    s.sendall(b"x\n")
for s in idle:
    s.setblocking(True)
    s.settimeout(10)
    got = b""
    while not got.endswith(b"\n"):
        chunk = s.recv(10)
        assert chunk, "an idle flow closed"
        got += chunk
    assert got == b"x\n", got
print(f"held {len(idle)} refused {refused} other {other or '-'}: opened in {opened:.1f} s, all echoed after {time.monotonic() - started:.1f} s", flush=True)
for s in idle[:spare]:
    s.close()
idle = idle[spare:]

deadline = time.monotonic() + 30
while not os.path.exists(go):
    assert time.monotonic() < deadline, "never told to go on"
    time.sleep(0.05)

def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF

probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
probe.connect((silent, 80))
source = probe.getsockname()[0]
probe.close()
src, dst = socket.inet_aton(source), socket.inet_aton(silent)
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent = [0]

def flood():
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(100):
            sport = random.randrange(1024, 65536)
            seq = random.getrandbits(32)
            tcp = struct.pack("!HHIIBBHHH", sport, 80, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
            tcp = tcp[:16] + struct.pack("!H", checksum(src + dst + struct.pack("!BBH", 0, 6, 20) + tcp)) + tcp[18:]
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0, 64, 6, 0, src, dst)
            try:
                raw.sendto(ip + tcp, (silent, 0))
                sent[0] += 1
            except (BlockingIOError, OSError):
                time.sleep(0.001)

flooder = threading.Thread(target=flood)
flooder.start()
print("flooding", flush=True)
time.sleep(1)

status, took = get(keepalive)
print(f"keepalive {status} {took:.3f}", flush=True)
s = random.choice(idle)
started = time.monotonic()
s.sendall(b"still\n")
got = b""
while not got.endswith(b"\n"):
    chunk = s.recv(10)
    if not chunk:
        break
    got += chunk
print(f"idle {got.decode().strip()} {time.monotonic() - started:.3f}", flush=True)
status, took = get(http.client.HTTPConnection(server, 80, timeout=5))
print(f"new {status} {took:.3f}", flush=True)

flooder.join()
print(f"flood sent {sent[0]} SYNs in {seconds:.0f} s", flush=True)
status, took = get(http.client.HTTPConnection(server, 80, timeout=5))
print(f"after {status} {took:.3f}", flush=True)
"#;

/// Resident memory of `pid`, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the agent's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in:\n{status}"))
}

/// The seconds a check line (`NAME STATUS SECONDS`) reports, after asserting its status.
fn check_line(stdout: &str, name: &str, status: &str) -> f64 {
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} line:\n{stdout}"));
    let (got, seconds) = line.rsplit_once(' ').expect("status and time");
    assert_eq!(got, status, "{name}: {line}\n{stdout}");
    seconds.parse().expect("seconds")
}

/// How many of [`IDLE_FLOWS`] the agent held and refused, when it ran in `memory` bytes
/// through [`IDLE_AND_FLOOD_PY`] with `spare` of the flows closed before the flood; the
/// agent must not be OOM-killed, must keep at most `per_host_cap` connects in progress
/// towards the silent host, and must keep serving old flows and open new ones.
fn idle_flows_under_a_flood(memory: u64, spare: usize, per_host_cap: usize) -> (usize, usize) {
    let pod = Pod::builder().hold_echo().build();
    silence(&pod);
    let cgroup = MemoryCgroup::create(&format!("mnet-{}", pod.id()), memory)
        .expect("a memory cgroup for the agent");
    let agent = cgroup
        .wrapper(pod.dir(), &bin_dir().join("mirrord-net-agent"))
        .expect("the agent's wrapper");
    let script = pod.dir().join("idle_and_flood.py");
    std::fs::write(&script, IDLE_AND_FLOOD_PY).expect("writing idle_and_flood.py");
    let go = pod.dir().join("go");

    let invocation = Invocation::session(
        &pod,
        &[
            &tool("python3"),
            script.to_str().expect("a UTF-8 path"),
            &SERVICES_V4.to_string(),
            &HOLD_ECHO_PORT.to_string(),
            SILENT_V4,
            &IDLE_FLOWS.to_string(),
            FLOOD_SECONDS,
            go.to_str().expect("a UTF-8 path"),
            &spare.to_string(),
        ],
    )
    .env("MIRRORD_NET_AGENT", agent.to_str().expect("a UTF-8 path"))
    .timeout(Duration::from_secs(60));
    let mut running = invocation.start();
    if !running.wait_for_stdout("held ", Duration::from_secs(40)) {
        let out = running.finish(Duration::from_secs(10));
        panic!(
            "the idle flows did not open; peak charged {:?} KiB, {:?}:\n{}",
            cgroup.peak().map(|b| b / 1024),
            cgroup.events(),
            match &out {
                Ok(out) => out.to_string(),
                Err(timed_out) => timed_out.to_string(),
            }
        );
    }
    let procs = cgroup.procs();
    assert_eq!(procs.len(), 1, "the agent alone in its cgroup: {procs:?}");
    // A quiet second: idle flows give their buffer pages back.
    std::thread::sleep(Duration::from_millis(1500));
    let idle_rss = rss_kib(procs[0]);
    let idle_charged = cgroup.usage().expect("the cgroup's usage");
    let idle_stat = cgroup.stat().unwrap_or_else(|err| format!("{err:#}"));
    std::fs::write(&go, "").expect("writing go");
    assert!(
        running.wait_for_stdout("flooding", Duration::from_secs(10)),
        "the flood did not start:\n{}\n{}",
        running.stdout_so_far(),
        running.stderr_so_far()
    );
    std::thread::sleep(Duration::from_millis(2000));
    let half_open = half_open_in_pod(&pod);
    let flood_rss = procfs::is_alive(procs[0]).then(|| rss_kib(procs[0]));
    let out = running
        .finish(invocation.timeout_value())
        .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    let events = cgroup.events().expect("the cgroup's events");
    eprintln!(
        "agent in {} MiB with {IDLE_FLOWS} flows asked for: RSS {idle_rss} KiB, cgroup charged {} KiB; \
         during the flood: RSS {flood_rss:?} KiB, {half_open} connects in progress in the pod; \
         peak charged {:?} KiB, limit hit {:?} times; {:?}:\n{events}{}\n\
         charged when idle:\n{idle_stat}",
        memory >> 20,
        idle_charged / 1024,
        cgroup.peak().map(|b| b / 1024),
        cgroup.limit_hits().ok(),
        cgroup.version(),
        out.stdout,
    );
    assert_eq!(
        cgroup.oom_kills().expect("the OOM kill count"),
        0,
        "the agent was OOM-killed:\n{out}"
    );
    let stdout = out.assert_success();
    assert!(half_open > 0, "the flood never reached the pod:\n{out}");
    assert!(
        half_open <= per_host_cap,
        "{half_open} connects in progress to one host, above the cap of {per_host_cap}:\n{out}"
    );
    let keepalive = check_line(stdout, "keepalive", "200");
    let idle = check_line(stdout, "idle", "still");
    let new = check_line(stdout, "new", "200");
    let after = check_line(stdout, "after", "200");
    for (what, seconds) in [
        ("a request on a keep-alive connection", keepalive),
        ("a line on an idle flow", idle),
        ("a new connection to another host", new),
        ("a new connection after the flood", after),
    ] {
        assert!(
            seconds < 1.0,
            "{what} took {seconds} s during the flood:\n{out}"
        );
    }
    let held = stdout
        .lines()
        .find_map(|line| line.strip_prefix("held "))
        .unwrap_or_else(|| panic!("no held line:\n{out}"));
    assert!(
        held.contains(" other -:"),
        "connects failed otherwise than refused:\n{out}"
    );
    let numbers: Vec<usize> = held
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    (numbers[0], numbers[1])
}

#[test]
fn an_agent_in_a_96_mib_cgroup_keeps_serving_under_a_syn_flood_with_10000_idle_flows() {
    let (held, refused) = idle_flows_under_a_flood(AGENT_MEMORY, 0, 768);
    assert_eq!((held, refused), (IDLE_FLOWS, 0), "held and refused");
}

#[test]
fn an_agent_in_a_64_mib_cgroup_refuses_the_flows_it_cannot_hold_and_serves_the_rest_under_a_syn_flood(
) {
    let (held, refused) = idle_flows_under_a_flood(SMALL_AGENT_MEMORY, 1_000, 469);
    assert!(
        held >= 7_000 && refused > 0 && held + refused == IDLE_FLOWS,
        "{held} flows held and {refused} refused of {IDLE_FLOWS}: the agent should hold what \
         64 MiB holds (7,509 flows, the keep-alive one included) and refuse the rest at once"
    );
}
