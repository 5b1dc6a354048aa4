//! The agent's limits (`agent/src/stack/limits.rs`) under a SYN flood from the session.
//!
//! A program in the session opens thousands of connections to a host of the pod network that
//! drops everything (an nft rule in the services namespace). The agent keeps at most its
//! per-host cap of connects in progress (counted from the pod's own socket table), refuses the
//! rest with RST, and a new connection to another server answers at once while an existing
//! one keeps working.

use std::time::Duration;

use mirrord_net_tests::topology::SERVICES_V4;
use mirrord_net_tests::{tool, Invocation, Pod};

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

#[test]
fn a_syn_flood_to_a_silent_host_is_capped_and_starves_nothing_else() {
    let pod = Pod::builder().hold_echo().build();
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
