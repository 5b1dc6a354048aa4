//! The agent's userspace network stack: the session's IP packets in, real sockets in the
//! target's network namespace out.
//!
//! A library of its own (`mirrord-net-stack`): the agent (`mirrord-net-agent`) runs it for each
//! session and re-exports it as `mirrord_net_agent::stack`; the links it reads and writes
//! ([`PacketLink`]: QUIC datagrams, the session's TUN, or memory) and the upstream sockets it
//! opens (`upstream`) are its seams, so it also runs, and is fuzzed, over memory.
//!
//! The client reads raw IP packets (IPv4 and IPv6, no extra header) from the session's TUN
//! device and sends each as one QUIC DATAGRAM. [`serve`] terminates them here, in the agent,
//! which runs inside the target's network namespace. An agent on the client's own machine
//! may instead be handed the TUN descriptor and read and write it itself ([`serve_tun`],
//! `tun_link`): one relay, no tunnel. Either way:
//!
//! | session sends            | becomes (in the target's namespace)        | replies come from        |
//! |--------------------------|--------------------------------------------|--------------------------|
//! | TCP SYN to `dst:port`    | a TCP connect to `dst:port`, *then* SYN-ACK | a smoltcp socket at `dst:port` |
//! | UDP `src:p` → `dst:q`    | a UDP socket connected to `dst:q`          | packets built from `dst:q` |
//! | ICMP echo to `dst`       | an echo from an ICMP socket to `dst`       | replies rebuilt with the session's id |
//!
//! Refusals and routing failures come back as the pod would see them: RST for a refused
//! port, ICMP unreachable for an unreachable host or network, silence for a timeout.
//!
//! Layout (one file per concern, state machines apart from I/O where it pays):
//! `engine` (the event loop), `tcp` / `udp` / `icmp` (one flow table each), `packet`
//! (parsing and building the packets smoltcp does not write), `device` (smoltcp's
//! `phy::Device` and the outbound queue), `buffer` (a TCP flow's socket and memory), `flow`
//! (ids, deadlines, idle checks, readiness), `ctx` (what a flow table may touch while it
//! handles an event), `config` (the settings), `limits` (caps on flows and connects),
//! `budget` (the one byte budget of all TCP flows' buffers), `link`
//! (the tunnel), `tun_link` (the session's TUN as the link), `upstream` (opening real
//! sockets), `stats` (counters). Imports go one way: `engine` uses the tables, the tables use
//! `ctx`, `flow` and the modules below them.
//!
//! Backpressure runs end to end: a slow upstream closes the session's TCP window, a slow
//! session or tunnel stops reads from upstream, and a full tunnel (quinn's datagram buffer)
//! stops smoltcp's egress. Memory stays bounded whatever the session sends: the TCP flows'
//! buffers share one budget (`budget`), and replies to inbound packets (RSTs, ICMP errors,
//! ACKs) are dropped and counted once the outbound queue passes its bound (`device`).

mod budget;
mod buffer;
pub mod busy_poll;
mod config;
mod ctx;
mod datagram;
mod device;
mod engine;
mod flow;
#[doc(hidden)]
pub mod fuzzing;
mod icmp;
pub mod inbound;
pub mod limits;
mod link;
mod packet;
mod stats;
mod tcp;
mod tun_link;
mod udp;
mod upstream;

#[cfg(test)]
mod tests;

use anyhow::Context as _;

pub use config::{StackConfig, TcpCongestion};
pub use device::TxQueue;
pub use limits::Limits;
pub use link::{memory_link, LinkError, MemoryLink, MemoryPeer, PacketLink};
pub use stats::{Stats, StatsSnapshot};
pub use tun_link::TunLink;

/// Runs the stack for one session until the connection closes. Returns `Ok(())` on a normal
/// close.
pub async fn serve(conn: quinn::Connection, config: StackConfig) -> anyhow::Result<()> {
    serve_with_inbound(conn, config, None).await
}

/// [`serve`], also opening the connections that arrive on `inbound` into the session (see
/// [`inbound`]).
pub async fn serve_with_inbound(
    conn: quinn::Connection,
    mut config: StackConfig,
    inbound: Option<inbound::InboundReceiver>,
) -> anyhow::Result<()> {
    let max = conn.max_datagram_size().context(
        "the client's QUIC connection does not carry DATAGRAM frames, which the packet tunnel needs",
    )?;
    if config.mtu > max {
        tracing::warn!(
            mtu = config.mtu,
            max,
            "tunnel MTU above the QUIC datagram size; using the datagram size"
        );
        config.mtu = max;
    }
    let link = link::QuinnLink::new(conn, config.mtu, config.stats.clone());
    serve_link_with_inbound(link, config, inbound)
        .await
        .context("packet tunnel")
}

/// Runs the stack on the session's TUN device `tun` (handed over by a local client) until
/// the device goes away with the session's namespace. `config.mtu` must be the device's MTU.
/// Connections arriving on `inbound` are opened into the session, as in [`serve_with_inbound`].
pub async fn serve_tun(
    tun: std::os::fd::OwnedFd,
    config: StackConfig,
    inbound: Option<inbound::InboundReceiver>,
) -> anyhow::Result<()> {
    let link = TunLink::new(tun, config.mtu, config.stats.clone())
        .context("cannot use the session's TUN device")?;
    serve_link_with_inbound(link, config, inbound)
        .await
        .context("packet path on the TUN")
}

/// Runs the stack over any [`PacketLink`] until it closes. Returns `Ok(())` when the link
/// reports [`LinkError::Closed`].
///
/// Sockets are created in the calling thread's network namespace (the agent enters the
/// target's before starting its runtime). Raises the soft open-file limit to the hard
/// limit, since each flow holds a descriptor.
pub async fn serve_link<L: PacketLink>(link: L, config: StackConfig) -> Result<(), LinkError> {
    serve_link_with_inbound(link, config, None).await
}

/// [`serve_link`], also opening the connections that arrive on `inbound` into the session.
pub async fn serve_link_with_inbound<L: PacketLink>(
    link: L,
    config: StackConfig,
    inbound: Option<inbound::InboundReceiver>,
) -> Result<(), LinkError> {
    upstream::raise_fd_limit();
    let mut engine = engine::Engine::new(link, &config);
    engine.set_inbound(inbound);
    let result = std::future::poll_fn(|cx| engine.poll_run(cx)).await;
    tracing::debug!(stats = %config.stats.snapshot(), "packet stack stopped");
    result
}
