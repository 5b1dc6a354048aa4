//! The workloads, their sizes (full and smoke), the metrics each yields, and the targets the
//! table checks.
//!
//! A workload is one client job (or, for session start and background exec, a series of
//! `true` starts); a metric
//! is one row of the table (a file job's two passes are two rows). Targets compare the
//! mirrord-net column with the direct one (a ratio), with an absolute bound, or with another
//! row of the same column (8 flows against one flow). Targets are reported, never enforced:
//! the harness fails only on errors.

use std::path::Path;

use serde::Serialize;

use crate::job::Job;
use crate::target_data::{self, DataSizes};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    PingPong,
    KeepAlive,
    NewConnection,
    BulkUpload1,
    BulkDownload1,
    BulkUpload8,
    BulkDownload8,
    Udp,
    SessionStart,
    BackgroundExec,
    ChildProcesses,
    IdleFlows,
    FileRead,
    FileStat,
    IncomingUnmatched,
    IncomingStolen,
    IncomingMirrored,
}

pub const WORKLOADS: &[Workload] = &[
    Workload::PingPong,
    Workload::KeepAlive,
    Workload::NewConnection,
    Workload::BulkUpload1,
    Workload::BulkDownload1,
    Workload::BulkUpload8,
    Workload::BulkDownload8,
    Workload::Udp,
    Workload::SessionStart,
    Workload::BackgroundExec,
    Workload::ChildProcesses,
    Workload::IdleFlows,
    Workload::FileRead,
    Workload::FileStat,
    Workload::IncomingUnmatched,
    Workload::IncomingStolen,
    Workload::IncomingMirrored,
];

/// The workloads whose name contains one of `words` (all of them when `words` is empty).
pub fn select(words: &[String]) -> anyhow::Result<Vec<Workload>> {
    if words.is_empty() {
        return Ok(WORKLOADS.to_vec());
    }
    let chosen: Vec<Workload> = WORKLOADS
        .iter()
        .copied()
        .filter(|workload| {
            words
                .iter()
                .any(|word| workload.name().contains(word.as_str()))
        })
        .collect();
    anyhow::ensure!(
        !chosen.is_empty(),
        "--only {:?} matches no workload; names are: {}",
        words.join(","),
        WORKLOADS
            .iter()
            .map(|workload| workload.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(chosen)
}

/// Sizes for one harness invocation.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub ping_pong: usize,
    pub requests: usize,
    pub new_connections: usize,
    pub bulk_ms: u64,
    pub bulk_max_bytes: u64,
    pub udp: usize,
    pub warmup: usize,
    pub session_starts: usize,
    pub child_processes: usize,
    pub idle_flows: usize,
    pub data: DataSizes,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            ping_pong: 5000,
            requests: 2000,
            new_connections: 500,
            bulk_ms: 2000,
            bulk_max_bytes: u64::MAX,
            udp: 2000,
            warmup: 100,
            session_starts: 10,
            child_processes: 500,
            idle_flows: 10_000,
            data: DataSizes {
                file_len: 512 << 20,
                tree_dirs: 100,
                files_per_dir: 100,
            },
        }
    }

    pub fn smoke() -> Sizes {
        Sizes {
            ping_pong: 20,
            requests: 20,
            new_connections: 5,
            bulk_ms: 2000,
            bulk_max_bytes: 4 << 20,
            udp: 20,
            warmup: 2,
            session_starts: 2,
            child_processes: 5,
            idle_flows: 100,
            data: DataSizes {
                file_len: 1 << 20,
                tree_dirs: 10,
                files_per_dir: 10,
            },
        }
    }
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::PingPong => "tcp ping-pong",
            Workload::KeepAlive => "http keep-alive",
            Workload::NewConnection => "new connection",
            Workload::BulkUpload1 => "bulk upload x1",
            Workload::BulkDownload1 => "bulk download x1",
            Workload::BulkUpload8 => "bulk upload x8",
            Workload::BulkDownload8 => "bulk download x8",
            Workload::Udp => "udp request/response",
            Workload::SessionStart => "session start",
            Workload::BackgroundExec => "background exec",
            Workload::ChildProcesses => "child processes",
            Workload::IdleFlows => "idle flows",
            Workload::FileRead => "files read",
            Workload::FileStat => "files stat",
            Workload::IncomingUnmatched => "incoming unmatched",
            Workload::IncomingStolen => "incoming stolen",
            Workload::IncomingMirrored => "incoming mirrored",
        }
    }

    /// Whether the workload reads the target's data (built only when one is selected).
    pub fn needs_target_data(self) -> bool {
        matches!(self, Workload::FileRead | Workload::FileStat)
    }

    /// Whether a run starts with a cold page cache.
    pub fn drops_caches(self) -> bool {
        self.needs_target_data()
    }

    /// Whether the workload runs under a wrapper. Idle flows measure mirrord-net's memory,
    /// which a wrapper's is not; a network wrapper cannot serve the target's files; the
    /// preload designs (connect hooks) carry no UDP.
    pub fn runs_under_wrapper(self) -> bool {
        !matches!(
            self,
            Workload::IdleFlows
                | Workload::FileRead
                | Workload::FileStat
                | Workload::Udp
                | Workload::BackgroundExec
        ) && !self.is_incoming()
    }

    /// Whether the workload measures incoming traffic: a client outside the pod calls the
    /// target's own service, directly (no session) or while a session steals its port with
    /// an HTTP header filter, or mirrors it ([`Workload::incoming_job`]).
    pub fn is_incoming(self) -> bool {
        matches!(
            self,
            Workload::IncomingUnmatched | Workload::IncomingStolen | Workload::IncomingMirrored
        )
    }

    /// The job of an incoming workload: untagged requests answered by the target, or tagged
    /// ones answered by the session when it steals (by the target when it does not: the
    /// direct figure of the same request).
    pub fn incoming_job(self, sizes: &Sizes, stealing: bool) -> Job {
        let tagged = self == Workload::IncomingStolen;
        let by_session = tagged && stealing;
        Job::IncomingKeepAlive {
            count: sizes.requests,
            warmup: sizes.warmup,
            tagged,
            served_by: if by_session { "session" } else { "target" }.to_string(),
            await_session: stealing,
        }
    }

    /// Whether the workload's figures depend on the session's packet path (the file and
    /// child-process rows do not: they run once, on the default path).
    pub fn uses_packets(self) -> bool {
        !matches!(
            self,
            Workload::ChildProcesses | Workload::FileRead | Workload::FileStat
        ) && !self.is_incoming()
    }

    /// The client job, or `None` for session start (which runs `true`). File jobs read the
    /// data the target sees below `pod_dir`.
    pub fn job(self, sizes: &Sizes, pod_dir: &Path) -> Option<Job> {
        let bulk = |flows: usize| (flows, sizes.bulk_ms, sizes.bulk_max_bytes / flows as u64);
        Some(match self {
            Workload::PingPong => Job::PingPong {
                count: sizes.ping_pong,
                warmup: sizes.warmup,
            },
            Workload::KeepAlive => Job::HttpKeepAlive {
                count: sizes.requests,
                warmup: sizes.warmup,
            },
            Workload::NewConnection => Job::NewConnection {
                count: sizes.new_connections,
            },
            Workload::BulkUpload1 | Workload::BulkUpload8 => {
                let flows = if self == Workload::BulkUpload1 { 1 } else { 8 };
                let (flows, duration_ms, max_bytes) = bulk(flows);
                Job::BulkUpload {
                    flows,
                    duration_ms,
                    max_bytes,
                }
            }
            Workload::BulkDownload1 | Workload::BulkDownload8 => {
                let flows = if self == Workload::BulkDownload1 {
                    1
                } else {
                    8
                };
                let (flows, duration_ms, max_bytes) = bulk(flows);
                Job::BulkDownload {
                    flows,
                    duration_ms,
                    max_bytes,
                }
            }
            Workload::Udp => Job::UdpRequestResponse {
                count: sizes.udp,
                warmup: sizes.warmup,
            },
            Workload::SessionStart | Workload::BackgroundExec => return None,
            Workload::ChildProcesses => Job::SpawnChildren {
                count: sizes.child_processes,
            },
            Workload::IdleFlows => Job::IdleFlows {
                flows: sizes.idle_flows,
            },
            Workload::FileRead => Job::ReadFile {
                path: target_data::file_path(pod_dir).display().to_string(),
                len: sizes.data.file_len,
            },
            Workload::FileStat => Job::StatTree {
                path: target_data::tree_path(pod_dir).display().to_string(),
                entries: sizes.data.tree_entries(),
            },
            Workload::IncomingUnmatched | Workload::IncomingStolen | Workload::IncomingMirrored => {
                self.incoming_job(sizes, false)
            }
        })
    }
}

/// What a row is checked against.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// mirrord-net / direct at most this.
    RatioAtMost { ratio: f64 },
    /// mirrord-net / direct at least this.
    RatioAtLeast { ratio: f64 },
    /// The mirrord-net figure itself at most this.
    AtMost { value: f64 },
    /// The mirrord-net figure at least the mirrord-net figure of another row.
    NotBelowRow { row: &'static str },
    /// The mirrord-net figure at most `ratio` times the mirrord-net figure of another row.
    RowRatioAtMost { row: &'static str, ratio: f64 },
}

impl Target {
    pub fn describe(self) -> String {
        match self {
            Target::RatioAtMost { ratio } => format!("≤{ratio}× direct"),
            Target::RatioAtLeast { ratio } => format!("≥{:.0}% of direct", ratio * 100.0),
            Target::AtMost { value } => format!("≤{value}"),
            Target::NotBelowRow { row } => format!("≥ {row}"),
            Target::RowRatioAtMost { row, ratio } => format!("≤{ratio}× {row}"),
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub workload: Workload,
    pub target: Option<Target>,
}

const fn metric(
    name: &'static str,
    unit: &'static str,
    workload: Workload,
    target: Option<Target>,
) -> Metric {
    Metric {
        name,
        unit,
        workload,
        target,
    }
}

pub const KEEP_ALIVE_P50: &str = "HTTP keep-alive GET 1 KiB, p50";
pub const UPLOAD_1: &str = "bulk upload, 1 flow";
pub const DOWNLOAD_1: &str = "bulk download, 1 flow";

pub const METRICS: &[Metric] = &[
    metric(
        "TCP ping-pong 64 B, p50",
        "µs",
        Workload::PingPong,
        Some(Target::RatioAtMost { ratio: 2.0 }),
    ),
    metric(
        "TCP ping-pong 64 B, p99",
        "µs",
        Workload::PingPong,
        Some(Target::RatioAtMost { ratio: 3.0 }),
    ),
    metric(
        KEEP_ALIVE_P50,
        "µs",
        Workload::KeepAlive,
        Some(Target::RatioAtMost { ratio: 1.6 }),
    ),
    metric(
        "HTTP keep-alive GET 1 KiB, p99",
        "µs",
        Workload::KeepAlive,
        None,
    ),
    metric(
        "new connection + GET + close, p50",
        "µs",
        Workload::NewConnection,
        Some(Target::RatioAtMost { ratio: 2.0 }),
    ),
    metric(
        "new connection + GET + close, p99",
        "µs",
        Workload::NewConnection,
        None,
    ),
    metric(
        UPLOAD_1,
        "Gbit/s",
        Workload::BulkUpload1,
        Some(Target::RatioAtLeast { ratio: 0.5 }),
    ),
    metric(
        DOWNLOAD_1,
        "Gbit/s",
        Workload::BulkDownload1,
        Some(Target::RatioAtLeast { ratio: 0.5 }),
    ),
    metric(
        "bulk upload, 8 flows",
        "Gbit/s",
        Workload::BulkUpload8,
        Some(Target::NotBelowRow { row: UPLOAD_1 }),
    ),
    metric(
        "bulk download, 8 flows",
        "Gbit/s",
        Workload::BulkDownload8,
        Some(Target::NotBelowRow { row: DOWNLOAD_1 }),
    ),
    metric("UDP request/response 64 B, p50", "µs", Workload::Udp, None),
    // What the relays cost: CPU time of the mirrord-net client and its agent together (from
    // /proc/PID/stat when the client job answers, so session start is included), per GiB
    // moved and per 10,000 round trips. mirrord-net modes only.
    metric(COST_UPLOAD, COST_UNIT, Workload::BulkUpload1, None),
    metric(COST_DOWNLOAD, COST_UNIT, Workload::BulkDownload1, None),
    metric(COST_ROUND_TRIPS, COST_UNIT, Workload::PingPong, None),
    metric(
        "session start (`true`), median",
        "ms",
        Workload::SessionStart,
        Some(Target::AtMost { value: 30.0 }),
    ),
    // A command in a session that `mirrord-net up` holds: no agent start, no namespaces made
    // (`exec --session NAME -- true`; direct: `true` in the pod, as for session start).
    metric(
        "exec --session (`true`), median",
        "ms",
        Workload::BackgroundExec,
        Some(Target::AtMost { value: 5.0 }),
    ),
    // A preload design pays its start-up again in every process it enters; mirrord-net's
    // namespaces cost a child nothing. 1.2×: the run-to-run spread of this row here.
    metric(
        "child process (fork + exec `true`), p50",
        "µs",
        Workload::ChildProcesses,
        Some(Target::RatioAtMost { ratio: 1.2 }),
    ),
    metric(IDLE_OPEN, "s", Workload::IdleFlows, None),
    metric(
        IDLE_CLIENT,
        "MiB",
        Workload::IdleFlows,
        Some(Target::AtMost { value: 100.0 }),
    ),
    metric(
        IDLE_AGENT,
        "MiB",
        Workload::IdleFlows,
        Some(Target::AtMost { value: 150.0 }),
    ),
    // A file workload's metrics are its passes, in order: cold, then warm.
    metric("files: `cat` 512 MiB, cold", "ms", Workload::FileRead, None),
    metric(
        "files: `cat` 512 MiB, warm",
        "ms",
        Workload::FileRead,
        Some(Target::RatioAtMost { ratio: 1.3 }),
    ),
    metric(
        "files: `stat` of 10,000 files, cold",
        "ms",
        Workload::FileStat,
        None,
    ),
    metric(
        "files: `stat` of 10,000 files, warm",
        "ms",
        Workload::FileStat,
        Some(Target::RatioAtMost { ratio: 3.0 }),
    ),
    // Incoming: a client in another namespace calls the target's own service on one
    // keep-alive connection. direct: no session. mirrord-net: a session steals the port with
    // a header filter; an unmatched request passes the filter to the target (its other users
    // must barely notice), a matched one is answered by the session (compared with the same
    // keep-alive request on the session's outgoing path, the keep-alive row).
    metric(
        "incoming unmatched request via the filter, p50",
        "µs",
        Workload::IncomingUnmatched,
        Some(Target::RatioAtMost { ratio: 1.5 }),
    ),
    metric(
        "incoming unmatched request via the filter, p99",
        "µs",
        Workload::IncomingUnmatched,
        None,
    ),
    metric(
        "incoming stolen request answered by the session, p50",
        "µs",
        Workload::IncomingStolen,
        Some(Target::RowRatioAtMost {
            row: KEEP_ALIVE_P50,
            ratio: 1.3,
        }),
    ),
    metric(
        "incoming stolen request answered by the session, p99",
        "µs",
        Workload::IncomingStolen,
        None,
    ),
    // A session mirrors the port (copies of the requests, answers dropped): the target's
    // clients must not notice.
    metric(
        "incoming request on a mirrored port, p50",
        "µs",
        Workload::IncomingMirrored,
        Some(Target::RatioAtMost { ratio: 1.2 }),
    ),
    metric(
        "incoming request on a mirrored port, p99",
        "µs",
        Workload::IncomingMirrored,
        None,
    ),
];

pub const COST_UNIT: &str = "CPU s";
pub const COST_UPLOAD: &str = "cost: client + agent CPU per GiB, upload 1 flow";
pub const COST_DOWNLOAD: &str = "cost: client + agent CPU per GiB, download 1 flow";
pub const COST_ROUND_TRIPS: &str = "cost: client + agent CPU per 10,000 ping-pongs";

pub const IDLE_OPEN: &str = "idle TCP flows: time to open all";
pub const IDLE_CLIENT: &str = "idle TCP flows: client RSS";
pub const IDLE_AGENT: &str = "idle TCP flows: agent RSS";

/// Whether a smaller figure is better (latency, time, memory) or a larger one (throughput).
pub fn lower_is_better(unit: &str) -> bool {
    unit != "Gbit/s"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_selects_both_file_workloads() {
        let chosen = select(&["files".to_string()]).unwrap();
        assert_eq!(chosen, vec![Workload::FileRead, Workload::FileStat]);
    }

    #[test]
    fn file_workloads_have_a_cold_then_a_warm_row() {
        for workload in [Workload::FileRead, Workload::FileStat] {
            let rows: Vec<&str> = METRICS
                .iter()
                .filter(|metric| metric.workload == workload)
                .map(|metric| metric.name)
                .collect();
            assert_eq!(rows.len(), 2, "{rows:?}");
            assert!(
                rows[0].ends_with("cold") && rows[1].ends_with("warm"),
                "{rows:?}"
            );
        }
    }

    #[test]
    fn wrapper_skips_what_only_mirrord_net_can_serve() {
        let skipped: Vec<Workload> = WORKLOADS
            .iter()
            .copied()
            .filter(|workload| !workload.runs_under_wrapper())
            .collect();
        assert_eq!(
            skipped,
            vec![
                Workload::Udp,
                // A background session is mirrord-net's own.
                Workload::BackgroundExec,
                Workload::IdleFlows,
                Workload::FileRead,
                Workload::FileStat,
                // A preload tool can neither steal nor mirror the target's incoming traffic.
                Workload::IncomingUnmatched,
                Workload::IncomingStolen,
                Workload::IncomingMirrored,
            ]
        );
    }

    #[test]
    fn file_jobs_read_below_the_pod_directory() {
        let pod_dir = Path::new("/tmp/mnet-1-0");
        let Some(Job::StatTree { path, entries }) = Workload::FileStat.job(&Sizes::full(), pod_dir)
        else {
            panic!("not a tree job");
        };
        assert_eq!(path, "/tmp/mnet-1-0/files/tree");
        // 100 directories and their 100 files each.
        assert_eq!(entries, 10_100);
        let Some(Job::ReadFile { path, len }) = Workload::FileRead.job(&Sizes::smoke(), pod_dir)
        else {
            panic!("not a read job");
        };
        assert_eq!(path, "/tmp/mnet-1-0/files/big.bin");
        assert_eq!(len, 1 << 20);
    }
}
