//! End-to-end test fixtures for mirrord-net: real network-namespace "pods", real servers,
//! real clients.
//!
//! A [`Pod`] is built per test, with names unique to the test process, so tests run in
//! parallel (nextest runs each test in its own process):
//!
//! ```text
//!  host netns (test process, mirrord-net client)
//!
//!  ┌ services netns ─────────────────────┐  veth  ┌ pod netns ──────────────────────────────┐
//!  │ svc0 10.213.0.1/24                  ├────────┤ eth0 10.213.0.2/24                      │
//!  │      fd6d:6e65:7400::1/64           │        │      fd6d:6e65:7400::2/64               │
//!  │ dnsmasq :53   *.svc.cluster.local   │        │ default routes via the services end     │
//!  │ httpd :80  hold-echo :7000          │        │ target: sleep, in its own mount and UTS │
//!  │ udp-echo :7777  postgres :5432      │        │ namespaces: resolv.conf, hosts and      │
//!  │ redis :6379                         │        │ hostname pod-<id> only it sees          │
//!  └─────────────────────────────────────┘        └─────────────────────────────────────────┘
//! ```
//!
//! [`run_in_session`] runs a command through `mirrord-net exec --target pid/<target>`;
//! [`run_in_pod`] runs the same command directly in the target's namespaces, which is what a
//! session must be indistinguishable from. Everything a pod starts is stopped in `Drop`, also
//! when the test panics, and [`sweep`] removes what a killed test process left behind.
//!
//! Run the tests with nextest (`cargo nextest run`), which gives every test its own process:
//! the leftover checks ([`leftovers`]) attribute processes to a test by process ancestry,
//! which is exact only then. Everything needs root.

pub mod cgroup;
pub mod cluster_path;
pub mod exec;
pub mod go;
pub mod kube;
pub mod leftovers;
pub mod netfilter_state;
pub mod netns;
pub mod pod;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod servers;
pub mod session;
pub mod sweep;
pub mod target;
pub mod target_files;
pub mod testdir;
pub mod tools;
pub mod topology;

pub use exec::Outcome;
pub use pod::{Pod, PodBuilder};
pub use session::{run_in_pod, run_in_session, run_in_session_via, Invocation, Packets};
pub use tools::tool;

/// `sh -c SCRIPT` as an argument list.
pub fn sh(script: &str) -> [&str; 3] {
    ["/bin/sh", "-c", script]
}

/// `bash -c SCRIPT` as an argument list (for `set -o pipefail`, which dash lacks).
pub fn bash(script: &str) -> [&str; 3] {
    ["/bin/bash", "-c", script]
}
