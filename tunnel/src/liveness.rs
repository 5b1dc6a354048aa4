//! Keeping a session across a network cut: the reconnect window, and a new path when the old
//! one went quiet.
//!
//! The rule both ends follow: after [`SILENCE_LIMIT`] without a word from its client, an agent
//! gives the session's stolen traffic back to the target; it then waits the reconnect window
//! (`--reconnect-window`, default 15 s) for the same client, and ends when that runs out. The
//! window is the QUIC connection's idle timeout minus the silence limit
//! ([`transport::idle_timeout`]), so the connection, its streams and every flow inside it
//! simply outlive a shorter cut; the client's keep-alives (every second) and the control
//! stream's heartbeat are what the agent hears.
//!
//! A connection that outlives a cut must also *resume* quickly. QUIC backs off its probe
//! timer exponentially while nothing is acknowledged: after a 10 s cut, a sender with a full
//! congestion window would next probe 5–10 s later. The client therefore moves to a new UDP
//! socket ([`quinn::Endpoint::rebind`]) every [`REBIND_AFTER`] of silence. The first packet
//! the agent gets after the cut then comes from a new address: QUIC migration (on at the
//! agent) starts a new path, with nothing in flight on it, so the agent sends at once instead
//! of waiting out its backoff; lost packets are declared lost by the acknowledgements that
//! follow and retransmitted. The same move is what a client needs when the old path is really
//! gone (a NAT that forgot the mapping, a laptop on another network). A new path carries the
//! old connection only for the pinned client: its packets must decrypt with the connection's
//! keys. [`PathWatch`] is the decision, without I/O.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args;
use mirrord_net_protocol::messages::SILENCE_LIMIT;
use mirrord_net_protocol::transport::{self, DEFAULT_RECONNECT_WINDOW, MAX_RECONNECT_WINDOW};

/// After this long without a datagram from the agent, the client tries a new socket (and
/// again each time this much more passes in silence). Above the keep-alive interval, so a
/// live but idle path never triggers it.
pub const REBIND_AFTER: Duration = Duration::from_secs(2);
/// How often the connection's receive counter is read.
const POLL: Duration = Duration::from_millis(200);

/// How long a session survives losing its agent.
#[derive(Debug, Clone, Copy, Args)]
pub struct ReconnectArgs {
    /// Seconds the agent waits for this client after it fell silent for 3 s (a network cut,
    /// a suspend): within that, the session carries on where it was; after it, the session
    /// ends (default 15, at most 600).
    #[arg(long, value_name = "SECONDS", value_parser = parse_window, default_value = "15")]
    pub reconnect_window: u64,
}

impl Default for ReconnectArgs {
    fn default() -> Self {
        Self {
            reconnect_window: DEFAULT_RECONNECT_WINDOW.as_secs(),
        }
    }
}

impl ReconnectArgs {
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.reconnect_window)
    }
}

fn parse_window(value: &str) -> Result<u64, String> {
    let max = MAX_RECONNECT_WINDOW.as_secs();
    match value.parse::<u64>() {
        Ok(secs) if secs <= max => Ok(secs),
        _ => Err(format!(
            "{value:?} is not a number of seconds from 0 to {max}"
        )),
    }
}

/// How long a session lasts without a word from its agent before it ends, for the message
/// that says so.
pub fn lost_after(window: Duration) -> Duration {
    transport::idle_timeout(window)
}

/// The one line that ends a session whose agent stayed silent through the window.
pub fn lost_line(window: Duration) -> String {
    format!(
        "lost the agent: nothing heard for {} s ({} s, then the {} s reconnect window); the session was ended",
        lost_after(window).as_secs(),
        SILENCE_LIMIT.as_secs(),
        window.as_secs()
    )
}

/// When to move the connection to a new socket, from the count of datagrams received.
#[derive(Debug)]
pub struct PathWatch {
    received: u64,
    heard: Instant,
    last_move: Option<Instant>,
}

impl PathWatch {
    pub fn new(received: u64, now: Instant) -> Self {
        Self {
            received,
            heard: now,
            last_move: None,
        }
    }

    /// The receive counter read at `now`: whether to move to a new socket now.
    pub fn observe(&mut self, received: u64, now: Instant) -> bool {
        if received != self.received {
            self.received = received;
            self.heard = now;
            self.last_move = None;
            return false;
        }
        let since = self.last_move.unwrap_or(self.heard);
        if now.duration_since(since) >= REBIND_AFTER {
            self.last_move = Some(now);
            return true;
        }
        false
    }

    /// How long the agent has been silent at `now`.
    pub fn silent_for(&self, now: Instant) -> Duration {
        now.duration_since(self.heard)
    }
}

/// Moves `connection` to a new socket of `endpoint` whenever [`PathWatch`] says so, until the
/// connection ends.
pub async fn keep_path(
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    agent: SocketAddr,
) {
    let mut watch = PathWatch::new(connection.stats().udp_rx.datagrams, Instant::now());
    let mut silent = false;
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = connection.closed() => return,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        let received = connection.stats().udp_rx.datagrams;
        if silent && received != watch.received {
            tracing::info!("the agent is heard again after {:?}", watch.silent_for(now));
        }
        let moving = watch.observe(received, now);
        silent = watch.silent_for(now) >= REBIND_AFTER;
        if !moving {
            continue;
        }
        match new_socket(agent) {
            Ok(socket) => {
                let local = socket.local_addr().ok();
                match endpoint.rebind(socket) {
                    Ok(()) => tracing::info!(
                        ?local,
                        "nothing from the agent for {:?}: trying a new path",
                        watch.silent_for(now)
                    ),
                    Err(err) => tracing::warn!("cannot move to a new socket: {err}"),
                }
            }
            Err(err) => tracing::warn!("cannot open a new socket for the tunnel: {err}"),
        }
    }
}

/// A UDP socket of the family that reaches `agent`, with the tunnel's buffers.
pub fn new_socket(agent: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let local: SocketAddr = match agent {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(local)?;
    transport::enlarge_socket_buffers(&socket);
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_path_that_keeps_talking_is_kept() {
        let start = Instant::now();
        let mut watch = PathWatch::new(0, start);
        for step in 1..100u64 {
            assert!(!watch.observe(step, start + MS * 900 * step as u32));
        }
    }

    #[test]
    fn silence_moves_the_path_and_again_while_it_lasts() {
        let start = Instant::now();
        let mut watch = PathWatch::new(5, start);
        assert!(!watch.observe(5, start + REBIND_AFTER - MS));
        assert!(watch.observe(5, start + REBIND_AFTER));
        assert!(!watch.observe(5, start + REBIND_AFTER + MS * 500));
        assert!(watch.observe(5, start + REBIND_AFTER * 2));
        assert_eq!(watch.silent_for(start + REBIND_AFTER * 2), REBIND_AFTER * 2);
        // Heard again: the clock starts over.
        let back = start + REBIND_AFTER * 3;
        assert!(!watch.observe(6, back));
        assert!(!watch.observe(6, back + REBIND_AFTER - MS));
        assert!(watch.observe(6, back + REBIND_AFTER));
    }

    #[test]
    fn the_window_is_checked_and_said_in_the_final_line() {
        assert_eq!(parse_window("15"), Ok(15));
        assert_eq!(parse_window("0"), Ok(0));
        assert!(parse_window("601").unwrap_err().contains("from 0 to 600"));
        assert!(parse_window("-1").is_err());
        let line = lost_line(Duration::from_secs(15));
        assert_eq!(
            line,
            "lost the agent: nothing heard for 18 s (3 s, then the 15 s reconnect window); the session was ended"
        );
    }
}
