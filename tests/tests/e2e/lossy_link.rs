//! A session across a hostile 1500-MTU link: a percent of the packets each way lost, a
//! percent sent twice, a percent held back behind later ones
//! ([`ClusterLink::disorder`](mirrord_net_tests::cluster_path::ClusterLink::disorder)).
//! QUIC's datagrams are not retransmitted, so every loss reaches the TCP connections inside
//! the tunnel, whose own retransmission must make the transfer byte-exact both ways.
//!
//! CI moves 32 MiB each way; `MIRRORD_NET_LOSSY_MIB=256` runs the full size (with `cargo
//! test`: nextest ends any test after five minutes). Downloads are the slow direction today:
//! the agent's TCP (smoltcp) recovers a loss by going back to it and sending all that follows
//! again, and waits out a retransmission timeout of at least a second when that is lost too;
//! the session's kernel, sending uploads, has SACK and recovers in a round trip.

use std::time::{Duration, Instant};

use mirrord_net_tests::exec::Running;
use mirrord_net_tests::{tool, Invocation, Pod};

use super::reconnect::{across, blob_sha, link};

/// Loss, duplication and reordering each get this percentage.
const PERCENT: u8 = 1;

fn size() -> u64 {
    let mib = std::env::var("MIRRORD_NET_LOSSY_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(32);
    mib << 20
}

#[test]
fn a_link_that_loses_repeats_and_reorders_packets_loses_no_byte_either_way() {
    let size = size();
    let pod = Pod::start();
    let link = link(&pod);
    link.disorder(PERCENT).expect("the hostile link");
    let expected = blob_sha(&pod, size);
    let script = format!(
        "set -o pipefail; \
         {curl} -sS --fail http://web/blob/{size} | sha256sum; date +%s.%N >&2; \
         {python} {blob} gen {size} | {curl} -sS --fail -T - http://web/upload; date +%s.%N >&2",
        curl = tool("curl"),
        python = tool("python3"),
        blob = pod.script("blob.py"),
    );
    let start = Instant::now();
    let running = Running::start(across(
        &link,
        Invocation::session(&pod, &["/bin/bash", "-c", &script]),
    ))
    .expect("the session");
    let out = running
        .finish(Duration::from_secs(240.max(3 * (size >> 20))))
        .unwrap_or_else(|timed_out| panic!("{timed_out}"));
    let elapsed = start.elapsed();
    // The two timestamps the script wrote after each direction.
    let stamps: Vec<f64> = out
        .stderr
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    let text = out.assert_success();
    let lines: Vec<&str> = text.lines().collect();
    let downloaded = lines
        .first()
        .and_then(|line| line.split_whitespace().next());
    assert_eq!(
        downloaded,
        Some(expected.as_str()),
        "the download differs:\n{out}"
    );
    assert_eq!(
        lines.get(1).map(|line| line.trim()),
        Some(format!("{expected} {size}").as_str()),
        "the upload differs:\n{out}"
    );
    let upload = match stamps[..] {
        [down_done, up_done] => format!("{:.1} s", up_done - down_done),
        _ => "?".to_owned(),
    };
    eprintln!(
        "{} MiB each way across a link with {PERCENT}% loss, duplication and reordering: \
         {elapsed:?} in all (the session's start, the download, then the upload: {upload})",
        size >> 20
    );
}
