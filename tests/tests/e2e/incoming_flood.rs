//! The incoming side's caps against clients that ask too much:
//!
//! - connections in hand (`MAX_IN_HAND` in `agent/src/incoming`): the ones the agent relays
//!   or serves request by request (a filtered steal) count for their whole life, so a flood
//!   of clients on such a port beyond the cap waits in the kernel's accept queue, as at a
//!   busy target, and is served as soon as held connections end; the agent's descriptors
//!   stay bounded by the cap, not by the flood. (An unfiltered steal's connections leave the
//!   count once the session's stack took them: its flow cap bounds them from then on,
//!   tested in `limits`.)
//! - streams of one HTTP/2 connection (`MAX_CLIENT_STREAMS`): those beyond are refused in
//!   the protocol's own way, and the connection lives on.

use std::time::{Duration, Instant};

use mirrord_net_tests::topology::POD_V4;
use mirrord_net_tests::{procfs, tool, Pod};

use super::incoming::{h2_deployed_and_stolen, keyed_steal, patched, session, Group, PORT};

/// The agent's cap on accepted connections it holds at once.
const MAX_IN_HAND: usize = 4096;
/// The run key of the session's filter.
const KEY: &str = "flood";
/// Connections opened beyond the cap.
const EXTRA: usize = 32;
/// Descriptors the agent has besides two per held connection (the client's and the one to
/// the target): its QUIC socket, the TUN, the steal's listeners, the runtime's own, and
/// room to spare.
const BASE_FDS: usize = 256;

/// The pod's agent, once it runs.
fn agent_of(pod: &Pod) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(agent) = pod.local_agent() {
            return agent;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no agent");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connections_beyond_the_agents_cap_wait_in_the_accept_queue_and_are_served_when_others_end() {
    let pod = Pod::start();
    // The target's service echoes lines and holds every connection: a descriptor for each.
    let mut target = pod.pod_netns().command("/bin/sh").unwrap();
    target.args([
        "-c",
        &format!(
            "ulimit -n 16384 && exec python3 {} {PORT}",
            pod.script("hold_echo.py")
        ),
    ]);
    let _target = Group::start(target);
    let session = session(&pod, &keyed_steal(KEY), &patched(&pod));
    let agent = agent_of(&pod);

    let mut client = pod.services_netns().command(&tool("python3")).unwrap();
    client.args([
        &pod.script("held_beyond_cap.py"),
        &POD_V4.to_string(),
        &PORT.to_string(),
        &MAX_IN_HAND.to_string(),
        &EXTRA.to_string(),
        KEY,
    ]);
    let mut client = Group::start(client);
    let said = |client: &mut Group| {
        let running = client.running();
        format!(
            "stdout: {}\nstderr: {}",
            running.stdout_so_far(),
            running.stderr_so_far()
        )
    };
    assert!(
        client
            .running()
            .wait_for_stdout("extra waiting", Duration::from_secs(90)),
        "the client never held {MAX_IN_HAND} connections:\n{}\nsession: {}",
        said(&mut client),
        session.stderr()
    );
    let fds = procfs::open_fds(agent);
    eprintln!("the agent holds {fds} descriptors with {MAX_IN_HAND} connections in hand");
    assert!(
        fds <= 2 * MAX_IN_HAND + BASE_FDS,
        "the agent has {fds} descriptors: the flood beyond its cap reached it"
    );
    let ok = format!("ok {MAX_IN_HAND} {EXTRA}");
    assert!(
        client
            .running()
            .wait_for_stdout(&ok, Duration::from_secs(60)),
        "no {ok:?}:\n{}\nsession: {}",
        said(&mut client),
        session.stderr()
    );
    eprintln!("{}", said(&mut client));
}

/// Streams one HTTP/2 client connection may have open at once (`MAX_CLIENT_STREAMS` in
/// `agent/src/incoming/http/h2_proxy.rs`).
const MAX_CLIENT_STREAMS: usize = 1024;

/// A client that opens 1,500 streams at once on a filtered HTTP/2 port (before it has heard
/// the agent's limit) gets each answered or refused with `REFUSED_STREAM`, never both
/// nor anything else; at least the cap's worth are answered, and the connection then takes
/// a tagged request as before.
#[test]
fn an_http2_client_opening_more_streams_than_allowed_gets_the_rest_refused_and_keeps_its_connection(
) {
    let pod = Pod::start();
    let (_deployed, session) = h2_deployed_and_stolen(&pod, KEY);

    let count = MAX_CLIENT_STREAMS + MAX_CLIENT_STREAMS / 2;
    let mut client = pod.services_netns().command(&tool("python3")).unwrap();
    client.args([
        &pod.script("h2_stream_flood.py"),
        &POD_V4.to_string(),
        &PORT.to_string(),
        KEY,
        &count.to_string(),
    ]);
    let out = client.output().expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {stdout}{}\nsession: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        session.stderr()
    );
    eprintln!("{}", stdout.trim());
    let answered: usize = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output {stdout:?}"));
    assert!(
        answered >= MAX_CLIENT_STREAMS,
        "only {answered} streams answered: the agent refused streams under its cap"
    );
    assert!(stdout.trim().ends_with("then v2"), "{stdout}");
}
