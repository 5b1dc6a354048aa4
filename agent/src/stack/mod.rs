//! The agent's userspace network stack: the session's IP packets in, real sockets in the
//! target's network namespace out.
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
//! (ids, deadlines, readiness), `limits` (caps on flows and connects), `link` (the tunnel), `tun_link` (the session's TUN as the
//! link), `upstream` (opening real sockets),
//! `stats` (counters).
//!
//! Backpressure runs end to end and nothing is dropped on the stack's own queues: a slow
//! upstream closes the session's TCP window, a slow session or tunnel stops reads from
//! upstream, and a full tunnel (quinn's datagram buffer) stops smoltcp's egress.

mod buffer;
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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use device::TxQueue;
pub use limits::Limits;
pub use link::{memory_link, LinkError, MemoryLink, MemoryPeer, PacketLink};
pub use stats::{Stats, StatsSnapshot};
pub use tun_link::TunLink;

/// Congestion control of the stack's TCP sockets (towards the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpCongestion {
    /// Send whatever the session's window allows. The tunnel does not lose packets on
    /// its own (quinn's DATAGRAM sends wait instead of dropping), and on a loopback tunnel
    /// this measured at least as fast as CUBIC.
    #[default]
    None,
    /// CUBIC, for tunnels that do lose packets.
    Cubic,
}

impl From<TcpCongestion> for smoltcp::socket::tcp::CongestionControl {
    fn from(c: TcpCongestion) -> Self {
        match c {
            TcpCongestion::None => Self::None,
            TcpCongestion::Cubic => Self::Cubic,
        }
    }
}

/// Settings of one session's stack.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// IP MTU of the tunnel (= QUIC max datagram size, e.g. ~65000 on loopback, ~1400 on
    /// networks). Packets the stack emits never exceed it.
    pub mtu: usize,
    /// Idle time after which a UDP flow's socket is closed.
    pub udp_idle_timeout: Duration,
    /// Idle time after which an ICMP echo flow's socket is closed.
    pub icmp_idle_timeout: Duration,
    /// Receive buffer of each TCP flow (session to upstream); sets the window the session
    /// may fill. Backed by memory only while in use: a quiet flow gives its pages back.
    pub tcp_rx_buffer: usize,
    /// Send buffer of each TCP flow (upstream to session).
    pub tcp_tx_buffer: usize,
    /// Congestion control towards the session.
    pub tcp_congestion: TcpCongestion,
    /// Caps on flows and connects in progress, and the connect timeout (see [`limits`]).
    pub limits: Limits,
    /// Counters; clone the `Arc` before handing the config over to read them later.
    pub stats: Arc<Stats>,
    /// Kicked on every packet the stack takes or sends, so the runtime keeps polling for the
    /// answer briefly instead of sleeping (see [`crate::busy_poll`]). `None`: no busy polling.
    pub busy_poll: Option<crate::busy_poll::BusyPoll>,
}

impl Default for StackConfig {
    fn default() -> Self {
        Self {
            mtu: 1400,
            udp_idle_timeout: Duration::from_secs(60),
            icmp_idle_timeout: Duration::from_secs(30),
            tcp_rx_buffer: 1 << 20,
            tcp_tx_buffer: 1 << 20,
            tcp_congestion: TcpCongestion::default(),
            limits: Limits::default(),
            stats: Arc::default(),
            busy_poll: None,
        }
    }
}

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
