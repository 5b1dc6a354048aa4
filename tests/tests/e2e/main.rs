//! End-to-end tests: real clients, run through `mirrord-net exec --target pid/<target>`,
//! against the servers of a network-namespace pod (see the `mirrord-net-tests` crate docs for
//! the topology). Each test pins one behaviour a user relies on; the fixture self-tests in
//! `tests/fixture.rs` show the same clients working when run directly in the pod.

mod clients;
mod concurrency;
mod demo;
mod dns;
mod environment;
mod exit_codes;
mod files;
mod incoming;
mod isolation;
mod lifecycle;
mod network;
mod preload_blind_spots;
mod shell;
mod stream_transport;
mod transfer;
