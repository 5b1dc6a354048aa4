//! A session across a network cut: the client and its agent on the cluster path (two
//! namespaces joined by a veth of MTU 1500, `mirrord_net_tests::cluster_path`), every packet
//! on the QUIC tunnel, and the link cut by an nftables drop rule.
//!
//! A cut shorter than the reconnect window (10 s here, the default window 15 s) must not end
//! anything: a download in flight arrives byte-exact, a shell keeps answering, a stolen port
//! goes back to the target while the client is silent and returns to the session after. A cut
//! longer than the window ends the session with one line and leaves nothing behind.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use mirrord_net_tests::cluster_path::ClusterLink;
use mirrord_net_tests::exec::{Outcome, Running};
use mirrord_net_tests::leftovers::Baseline;
use mirrord_net_tests::session::client_binary;
use mirrord_net_tests::topology::SERVICES_V4;
use mirrord_net_tests::{sweep, tool, Invocation, Packets, Pod};

const CUT: Duration = Duration::from_secs(10);

/// The cluster path for `pod`'s sessions; gone (with an agent left in it) when dropped.
pub(crate) fn link(pod: &Pod) -> ClusterLink {
    ClusterLink::create(
        &format!("{}{}", sweep::PREFIX, pod.id()),
        pod.dir(),
        &client_binary().with_file_name("mirrord-net-agent"),
    )
    .expect("the cluster path")
}

/// A session on `pod` across `link`, packets on QUIC, with client logs (-v).
pub(crate) fn across(link: &ClusterLink, invocation: Invocation) -> Command {
    let command = invocation
        .packets(Packets::Quic)
        .client_flag("-v")
        .command();
    link.wrap(&command).expect("the session's command")
}

/// Cuts the link for `length`, then heals it; heals it also when the test fails meanwhile.
fn cut_for(link: &ClusterLink, length: Duration) {
    struct Heal<'a>(&'a ClusterLink);
    impl Drop for Heal<'_> {
        fn drop(&mut self) {
            let _ = self.0.heal();
        }
    }
    link.cut().expect("cutting the link");
    let heal = Heal(link);
    std::thread::sleep(length);
    heal.0.heal().expect("healing the link");
    std::mem::forget(heal);
}

fn wait_for(running: &mut Running, needle: &str, within: Duration) {
    assert!(
        running.wait_for_stdout(needle, within),
        "no {needle:?} within {within:?}:\nstdout: {}\nstderr: {}",
        running.stdout_so_far(),
        running.stderr_so_far()
    );
}

fn finish(running: Running, within: Duration) -> Outcome {
    running
        .finish(within)
        .unwrap_or_else(|timed_out| panic!("{timed_out}"))
}

/// Reads `http://web/blob/SIZE` at about 8 MiB/s (so a cut lands in the middle), prints
/// `reading` once the body flows, then the SHA-256 and the longest gap between two reads.
const PACED_DOWNLOAD: &str = r#"
import hashlib, sys, time, urllib.request
size = int(sys.argv[1])
body = urllib.request.urlopen(f"http://web/blob/{size}", timeout=120)
digest, got, gap = hashlib.sha256(), 0, 0.0
start = last = time.monotonic()
while True:
    chunk = body.read(256 * 1024)
    if not chunk:
        break
    now = time.monotonic()
    gap = max(gap, now - last)
    last = now
    if got == 0:
        print("reading", flush=True)
    digest.update(chunk)
    got += len(chunk)
    ahead = got / (8 << 20) - (now - start)
    if ahead > 0:
        time.sleep(ahead)
print(digest.hexdigest(), got, f"{gap:.3f}", flush=True)
"#;

#[test]
fn a_ten_second_cut_in_the_middle_of_a_download_loses_nothing() {
    const SIZE: u64 = 64 << 20;
    let pod = Pod::start();
    let link = link(&pod);
    let expected = blob_sha(&pod, SIZE);
    let script = pod.dir().join("paced_download.py");
    std::fs::write(&script, PACED_DOWNLOAD).unwrap();
    let size = SIZE.to_string();
    let line = paced_download(&pod, &script, &size);
    let args = ["/bin/bash", "-c", &line];
    let mut running =
        Running::start(across(&link, Invocation::session(&pod, &args))).expect("the session");
    wait_for(&mut running, "reading", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    cut_for(&link, CUT);
    healed(&pod);
    let out = finish(running, Duration::from_secs(60));
    let gap = downloaded(&out, &expected, &size);
    eprintln!(
        "64 MiB across a {CUT:?} cut: the longest stall was {gap:.3} s, the flow resumed {:.3} s after the link did",
        gap - CUT.as_secs_f64()
    );
    // QUIC resumes within a round trip of the link's return (the client's new path), but the
    // inner TCP connection's own retransmission timer has backed off during the cut (the
    // agent's stack doubles it from 1 s, up to 10 s): its next try comes up to ~5 s later.
    assert!(
        gap < CUT.as_secs_f64() + 7.0,
        "the flow took {gap:.3} s to resume after a {CUT:?} cut:\n{out}"
    );
}

#[test]
fn a_shell_keeps_answering_across_a_ten_second_cut() {
    let pod = Pod::start();
    let link = link(&pod);
    let fifo = pod.dir().join("shell-input");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Read and write, so opening does not wait for the shell and the shell sees no end
    // until this handle goes.
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let shell = format!("exec /bin/sh < {}", fifo.display());
    let mut running = Running::start(across(
        &link,
        Invocation::session(&pod, &["/bin/sh", "-c", &shell]).timeout(Duration::from_secs(60)),
    ))
    .expect("the session");
    let curl = tool("curl");
    let mut say = |line: String| input.write_all(format!("{line}\n").as_bytes()).unwrap();
    say(format!(
        "{curl} -sS --max-time 30 http://web/ >/dev/null && echo before-cut"
    ));
    wait_for(&mut running, "before-cut", Duration::from_secs(30));

    link.cut().unwrap();
    // Typed during the cut: answered once the link is back. By address: a name lookup has
    // its own timeout (the resolver's, 5 s a try), which a cut this long outlasts.
    say(format!(
        "{curl} -sS --max-time 30 http://{SERVICES_V4}/ >/dev/null && echo during-cut"
    ));
    std::thread::sleep(CUT);
    link.heal().unwrap();
    let healed = Instant::now();
    wait_for(&mut running, "during-cut", Duration::from_secs(10));
    eprintln!(
        "a command typed during the cut answered {:?} after it",
        healed.elapsed()
    );
    say(format!(
        "{curl} -sS --max-time 30 http://web/ >/dev/null && echo after-cut"
    ));
    wait_for(&mut running, "after-cut", Duration::from_secs(10));
    say("exit 0".into());
    let out = finish(running, Duration::from_secs(20));
    assert_eq!(
        out.assert_success().lines().collect::<Vec<_>>(),
        ["before-cut", "during-cut", "after-cut"],
        "{out}"
    );
}

#[test]
fn a_cut_longer_than_the_window_ends_the_session_with_one_line_and_leaves_nothing() {
    let pod = Pod::start();
    let link = link(&pod);
    let baseline = Baseline::capture(Some(&pod));
    let mut running = Running::start(
        link.wrap(
            &Invocation::session(&pod, &["/bin/sh", "-c", "echo up; exec sleep 120"])
                .packets(Packets::Quic)
                .client_flag("--reconnect-window")
                .client_flag("3")
                .command(),
        )
        .unwrap(),
    )
    .expect("the session");
    wait_for(&mut running, "up", Duration::from_secs(30));
    link.cut().unwrap();
    let cut = Instant::now();
    let out = finish(running, Duration::from_secs(30));
    let ended = cut.elapsed();
    assert_eq!(out.code(), Some(1), "{out}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines,
        ["mirrord-net: lost the agent: nothing heard for 6 s (3 s, then the 3 s reconnect window); the session was ended"],
        "{out}"
    );
    // 3 s of silence, then the window, then at most the command's grace to stop.
    assert!(
        ended >= Duration::from_secs(6) && ended < Duration::from_secs(10),
        "the session ended {ended:?} after the cut:\n{out}"
    );
    // The agent (in its own namespace, across the cut) ends by itself within 5 s of the
    // window's end, as do the session's namespaces and mounts.
    let window_over = Duration::from_secs(6).saturating_sub(ended);
    baseline.assert_clean_within(Some(&pod), None, window_over + Duration::from_secs(5));
    eprintln!("the session ended {ended:?} after the cut began");
    link.heal().unwrap();
}

#[test]
fn a_ten_second_cut_on_the_stream_transport_loses_nothing() {
    const SIZE: u64 = 64 << 20;
    let pod = Pod::start();
    let link = link(&pod);
    let expected = blob_sha(&pod, SIZE);
    let script = pod.dir().join("paced_download.py");
    std::fs::write(&script, PACED_DOWNLOAD).unwrap();
    let size = SIZE.to_string();
    let line = paced_download(&pod, &script, &size);
    let args = ["/bin/bash", "-c", &line];
    let mut running = Running::start(across(
        &link,
        Invocation::session(&pod, &args).env("MIRRORD_NET_LOCAL_TRANSPORT", "stream"),
    ))
    .expect("the session");
    wait_for(&mut running, "reading", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    cut_for(&link, CUT);
    healed(&pod);
    let out = finish(running, Duration::from_secs(60));
    let gap = downloaded(&out, &expected, &size);
    eprintln!("64 MiB over the stream across a {CUT:?} cut: the longest stall was {gap:.3} s");
    // The reader stalled for most of the cut: the cut fell in the middle of the transfer,
    // whatever the buffers on the session's side held when it began.
    assert!(
        gap > CUT.as_secs_f64() / 2.0,
        "the download did not stall during the cut (longest stall {gap:.3} s):\n{out}"
    );
}

/// The session's shell line for a paced download of `size` bytes by `script`, which then waits
/// for the test's [`healed`] marker: the session must not end while the link is cut (its
/// close could not reach the agent, which would then wait out the reconnect window).
fn paced_download(pod: &Pod, script: &std::path::Path, size: &str) -> String {
    format!(
        "python3 {} {size} && while [ ! -e {} ]; do sleep 0.1; done",
        script.display(),
        pod.dir().join("healed").display()
    )
}

/// Tells the session's [`paced_download`] command that the link is back.
fn healed(pod: &Pod) {
    std::fs::write(pod.dir().join("healed"), b"").unwrap();
}

/// Checks the paced download's report against the blob; returns its longest stall in seconds.
fn downloaded(out: &Outcome, expected: &str, size: &str) -> f64 {
    let words: Vec<&str> = out.assert_success().split_whitespace().collect();
    assert_eq!(
        words.get(1..3),
        Some(&[expected, size][..]),
        "the download differs:\n{out}"
    );
    words[3].parse().unwrap()
}

/// The tag of the answer to one request from the services namespace to the pod's stolen
/// port; `None` when none came within a second (a request the session held when the cut
/// began).
fn served_by(pod: &Pod) -> Option<String> {
    use mirrord_net_tests::topology::POD_V4;
    let out = pod
        .services_netns()
        .command(&tool("curl"))
        .unwrap()
        .args(["-sS", "--max-time", "1"])
        .arg(format!("http://{POD_V4}:{}/", super::incoming::PORT))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success())
        .then(|| text.split_whitespace().next().map(str::to_owned))
        .flatten()
}

/// Polls until requests are answered by `want`; returns how long that took.
fn serves(pod: &Pod, want: &str, within: Duration) -> Duration {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let got = served_by(pod);
        if got.as_deref() == Some(want) {
            return start.elapsed();
        }
        seen.push(got);
        assert!(
            start.elapsed() < within,
            "requests did not go to {want} within {within:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stolen_port_goes_back_to_the_target_during_a_cut_and_returns_after_it() {
    use super::incoming::{assert_ruleset_restored, deployed, ruleset, Group, PORT, SWITCH};
    let pod = Pod::start();
    let link = link(&pod);
    let before = ruleset(&pod);
    let _v1 = deployed(&pod);
    let patched = format!("exec python3 {} {PORT} v2", pod.script("tagged_httpd.py"));
    let mut session = Group::start(across(
        &link,
        Invocation::session(&pod, &["/bin/sh", "-c", &patched])
            .client_flag("--steal")
            .client_flag(&PORT.to_string())
            .timeout(Duration::from_secs(60)),
    ));
    session.wait_for("listening");
    serves(&pod, "v2", SWITCH);

    link.cut().unwrap();
    let cut_began = Instant::now();
    let back = serves(&pod, "v1", SWITCH);
    eprintln!("the target had its port again {back:?} after the cut began");
    // For the rest of the cut, every request is the target's and is answered.
    while cut_began.elapsed() < CUT {
        assert_eq!(
            served_by(&pod).as_deref(),
            Some("v1"),
            "{}",
            session.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    link.heal().unwrap();
    let returned = serves(&pod, "v2", SWITCH);
    eprintln!("the session had the port again {returned:?} after the link was back");
    session.kill();
    assert_ruleset_restored(&pod, &before);
}

/// The SHA-256 of `blob.py`'s `size` bytes, computed without the network.
pub(crate) fn blob_sha(pod: &Pod, size: u64) -> String {
    let mut hash = Command::new(tool("python3"));
    hash.arg(pod.script("blob.py"))
        .args(["sha", &size.to_string()]);
    mirrord_net_tests::exec::run(hash, Duration::from_secs(120))
        .expect("hashing the blob")
        .assert_success()
        .trim()
        .to_string()
}

#[test]
fn a_broken_stream_is_reopened_and_the_download_carries_on() {
    const SIZE: u64 = 64 << 20;
    let pod = Pod::start();
    let link = link(&pod);
    let expected = blob_sha(&pod, SIZE);
    let script = pod.dir().join("paced_download.py");
    std::fs::write(&script, PACED_DOWNLOAD).unwrap();
    let size = SIZE.to_string();
    let line = paced_download(&pod, &script, &size);
    let mut running = Running::start(across(
        &link,
        Invocation::session(&pod, &["/bin/bash", "-c", &line])
            .env("MIRRORD_NET_LOCAL_TRANSPORT", "stream"),
    ))
    .expect("the session");
    wait_for(&mut running, "reading", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    link.cut_and_reset().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    link.heal().unwrap();
    healed(&pod);
    let out = finish(running, Duration::from_secs(60));
    downloaded(&out, &expected, &size);
    assert!(
        out.stderr.contains("moved to a new stream"),
        "the client did not re-open its stream:\n{out}"
    );
}
