//! What the harness asks a client run to do, and what the run answers.
//!
//! The harness passes a [`Job`] as one JSON argument to `mirrord-net-bench __client`; the
//! client prints one [`Answer`] as JSON on stdout. The idle-flows job prints its answer as soon
//! as every flow is open, then holds the flows until its stdin closes, so the harness can read
//! memory use while they are open.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    /// 64-byte messages echoed one at a time over one connection.
    PingPong { count: usize, warmup: usize },
    /// GET of 1 KiB over one keep-alive connection.
    HttpKeepAlive { count: usize, warmup: usize },
    /// GET of 1 KiB over one keep-alive connection to the target's own service
    /// ([`crate::ports::INCOMING`]), from outside the pod, with the steal header when
    /// `tagged`; every answer must come from `served_by`. With `await_session`, first waits
    /// (new connection per try) until a tagged request is answered by the session.
    IncomingKeepAlive {
        count: usize,
        warmup: usize,
        tagged: bool,
        served_by: String,
        await_session: bool,
    },
    /// Connect, one GET, close; timed as a whole.
    NewConnection { count: usize },
    /// Client to server: `flows` connections writing for `duration_ms` (or `max_bytes` each).
    BulkUpload {
        flows: usize,
        duration_ms: u64,
        max_bytes: u64,
    },
    /// Server to client, the same way.
    BulkDownload {
        flows: usize,
        duration_ms: u64,
        max_bytes: u64,
    },
    /// 64-byte UDP datagrams echoed one at a time.
    UdpRequestResponse { count: usize, warmup: usize },
    /// Start `/bin/true` `count` times, one after another, each waited for.
    SpawnChildren { count: usize },
    /// Open `flows` TCP connections and hold them until stdin closes.
    IdleFlows { flows: usize },
    /// Read the file at `path` to its end twice (cold, then warm); it must hold `len` bytes.
    ReadFile { path: String, len: u64 },
    /// Walk the tree at `path` twice, stat-ing every entry without following symlinks (cold,
    /// then warm); it must hold `entries` entries below its root.
    StatTree { path: String, entries: u64 },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Answer {
    /// Latencies in microseconds, one per request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub samples_us: Vec<f64>,
    /// Throughput of a bulk job, all flows together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gbit_per_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// UDP requests that needed a resend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resent: Option<u64>,
    /// Flows the idle job holds open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened: Option<usize>,
    /// How long opening them took, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_s: Option<f64>,
    /// The duration of each pass of a file job, milliseconds: the cold pass, then the warm.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passes_ms: Vec<f64>,
}
