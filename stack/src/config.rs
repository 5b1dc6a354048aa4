//! The settings of one session's stack ([`StackConfig`]), which the event loop and the flow
//! tables read; below all of them, so each imports it and none imports the loop for it.

use std::sync::Arc;
use std::time::Duration;

use super::limits::Limits;
use super::stats::Stats;

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
    /// Caps on flows and connects in progress, and the connect timeout (see [`limits`](super::limits)).
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
