//! The mirror capture on a real network: a namespace of its own (made by the test's thread),
//! a python3 HTTP server in it, curl as its client, and the sniffer rebuilding what curl sent
//! from the segments the server received.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use mirrord_net_agent::incoming::mirror::flows::{FlowEvent, FlowTable, DEFAULT_IDLE};
use mirrord_net_agent::incoming::mirror::packet::FlowKey;
use mirrord_net_agent::incoming::mirror::sniffer::{capture, Loopback, Sniffer};
use std::io::{BufRead, BufReader};

/// Runs `body` on a thread in a new network namespace with its loopback up.
fn in_new_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root)");
        // Children forked from this thread share its namespace.
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(up.success());
        body()
    })
    .join()
    .expect("the namespace thread")
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sniffer_rebuilds_each_client_stream_the_server_received() {
    let streams = in_new_netns(|| {
        let script = format!("{}/tests/scripts/upstream.py", env!("CARGO_MANIFEST_DIR"));
        let mut server = Kill(
            Command::new("/usr/bin/python3")
                .args([script.as_str(), "h1", "v1"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut line = String::new();
        BufReader::new(server.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let sniffer = Sniffer::open(&[port], Loopback::Capture).expect("a packet socket");
            let mut table = FlowTable::new(DEFAULT_IDLE, 64, 1 << 20);
            let mut streams: HashMap<FlowKey, (Vec<u8>, Option<FlowEvent>)> = HashMap::new();
            let body = "x".repeat(100_000);
            let url = format!("http://127.0.0.1:{port}");
            let mut curl = tokio::process::Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--data-binary", &body])
                .arg(format!("{url}/first"))
                .args([
                    "--next",
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-H",
                    "Connection: close",
                ])
                .arg(format!("{url}/second"))
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let finished = |streams: &HashMap<FlowKey, (Vec<u8>, Option<FlowEvent>)>| {
                streams.values().filter(|(_, end)| end.is_some()).count()
            };
            let mut collect = Box::pin(capture(
                &sniffer,
                &mut table,
                Duration::from_secs(1),
                |key, event, bytes| {
                    let entry = streams.entry(key).or_default();
                    entry.0.extend_from_slice(bytes);
                    if matches!(event, FlowEvent::Finished | FlowEvent::Aborted) {
                        entry.1 = Some(event);
                    }
                },
            ));
            let status = tokio::select! {
                status = curl.wait() => status.unwrap(),
                result = &mut collect => panic!("capture ended: {result:?}"),
            };
            assert!(status.success(), "curl: {status}");
            // Let the capture see the last segments (the FINs).
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut collect).await;
            drop(collect);
            assert_eq!(finished(&streams), streams.len());
            streams
        })
    });
    // curl reuses its connection for the second request: one stream holds both requests.
    assert_eq!(streams.len(), 1, "one connection");
    let (bytes, end) = streams.into_values().next().unwrap();
    assert_eq!(end, Some(FlowEvent::Finished));
    let text = String::from_utf8(bytes).unwrap();
    assert!(
        text.starts_with("POST /first HTTP/1.1\r\n"),
        "{}",
        &text[..100]
    );
    let second = text
        .find("GET /second HTTP/1.1\r\n")
        .expect("the second request");
    let first_body = &text[text.find("\r\n\r\n").unwrap() + 4..second];
    assert_eq!(first_body, "x".repeat(100_000));
    assert!(
        text.ends_with("Connection: close\r\n\r\n"),
        "{}",
        &text[second..]
    );
}
