//! Bulk data arrives intact both ways. The data is blob.py's deterministic stream: every MiB
//! differs, so a lost, repeated or reordered segment changes the sha256. The expected hash is
//! computed on the host, with no network involved, while the transfer runs.

use std::time::Duration;

use mirrord_net_tests::{bash, tool, Invocation, Packets, Pod};

const ONE_GIB: u64 = 1 << 30;
/// Generous: 1 GiB at a mere 20 MB/s, on a loaded machine.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(240);

fn expected_sha256(pod: &Pod, size: u64) -> String {
    let mut command = std::process::Command::new(tool("python3"));
    command
        .arg(pod.script("blob.py"))
        .args(["sha", &size.to_string()]);
    let out = mirrord_net_tests::exec::run(command, Duration::from_secs(120))
        .expect("hashing the stream");
    out.assert_success().trim().to_string()
}

on_every_packet_path! {
    fn one_gib_download_arrives_intact(packets: Packets) {
        let pod = Pod::start();
        let script = format!(
            "set -o pipefail; {} -sS --fail http://web/blob/{ONE_GIB} | sha256sum",
            tool("curl")
        );
        let (out, expected) = std::thread::scope(|scope| {
            let expected = scope.spawn(|| expected_sha256(&pod, ONE_GIB));
            let out = Invocation::session(&pod, &bash(&script)).packets(packets)
                .timeout(TRANSFER_TIMEOUT)
                .run();
            (out, expected.join().unwrap())
        });
        let got = out
            .assert_success()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        assert_eq!(
            got, expected,
            "the downloaded GiB differs from what was sent:\n{out}"
        );
        eprintln!("1 GiB download took {:?} (session included)", out.elapsed);
    }

    fn one_gib_upload_arrives_intact(packets: Packets) {
        let pod = Pod::start();
        let script = format!(
            "set -o pipefail; {python} {blob} gen {ONE_GIB} | {curl} -sS --fail -T - http://web/upload",
            python = tool("python3"),
            blob = pod.script("blob.py"),
            curl = tool("curl"),
        );
        let (out, expected) = std::thread::scope(|scope| {
            let expected = scope.spawn(|| expected_sha256(&pod, ONE_GIB));
            let out = Invocation::session(&pod, &bash(&script)).packets(packets)
                .timeout(TRANSFER_TIMEOUT)
                .run();
            (out, expected.join().unwrap())
        });
        assert_eq!(
            out.assert_success().trim(),
            format!("{expected} {ONE_GIB}"),
            "the server received something other than the GiB that was sent:\n{out}"
        );
        eprintln!("1 GiB upload took {:?} (session included)", out.elapsed);
    }
}
