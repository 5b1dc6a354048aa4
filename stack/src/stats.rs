//! Counters of one stack: what came in, what went out, which flows opened, failed and closed,
//! and every packet the stack chose not to pass on.
//!
//! The stack bumps them with relaxed atomic adds from its single task; anyone holding the
//! `Arc<Stats>` from [`StackConfig`](super::StackConfig) may read a [`StatsSnapshot`] at any
//! time (a benchmark prints one at the end of a run). Gauges such as "TCP flows open" are the
//! difference of two counters, so a snapshot never needs a lock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Live counters of one stack, shared with whoever wants to read them.
        #[derive(Debug, Default)]
        pub struct Stats {
            $($(#[$doc])* pub(crate) $name: AtomicU64,)*
        }

        /// A copy of [`Stats`] at one instant.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct StatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl Stats {
            /// Reads every counter (each one atomically; the set as a whole is not a
            /// consistent cut, which no reader of these numbers needs).
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl fmt::Display for StatsSnapshot {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut first = true;
                $(
                    if self.$name != 0 {
                        if !first {
                            f.write_str(" ")?;
                        }
                        first = false;
                        write!(f, "{}={}", stringify!($name), self.$name)?;
                    }
                )*
                if first {
                    f.write_str("(all zero)")?;
                }
                Ok(())
            }
        }
    };
}

counters! {
    /// IP packets received from the tunnel.
    packets_in,
    /// Bytes of those packets.
    bytes_in,
    /// IP packets handed to the tunnel.
    packets_out,
    /// Bytes of those packets.
    bytes_out,
    /// TCP SYNs that started an upstream connect.
    tcp_connects,
    /// Upstream connects that succeeded (the SYN was then answered), and connections opened
    /// into the session that it accepted.
    tcp_opened,
    /// Connections the agent began to open into the session (stolen inbound ones).
    tcp_inbound,
    /// Connections to open into the session given back (to the target) because the session
    /// holds its cap of flows.
    tcp_inbound_over_limit,
    /// Upstream connects refused (answered with RST).
    tcp_refused,
    /// Upstream connects that failed with a routing error (answered with ICMP unreachable).
    tcp_unreachable,
    /// Upstream connects that timed out (answered with nothing).
    tcp_timed_out,
    /// SYNs answered with RST because of a cap on flows or connects in progress.
    tcp_refused_by_limit,
    /// Upstream connects given up at the agent's connect timeout (answered with RST).
    tcp_connect_gave_up,
    /// TCP flows removed after they had opened.
    tcp_closed,
    /// TCP flows aborted towards the client because the upstream socket failed or reset.
    tcp_reset_by_upstream,
    /// TCP flows reset by the client, passed upstream as RST.
    tcp_reset_by_client,
    /// Segments for no known flow, answered with RST as a closed port would.
    tcp_stray_segments,
    /// Payload bytes written to upstream TCP sockets.
    tcp_bytes_up,
    /// Payload bytes read from upstream TCP sockets.
    tcp_bytes_down,
    /// Times a drained TCP flow gave its buffer pages back to the kernel.
    tcp_buffer_releases,
    /// Times a TCP flow left upstream data unread because the buffer budget was spent.
    tcp_budget_waits,
    /// Data segments from the session dropped because the buffer budget was spent (the
    /// session retransmits them).
    tcp_dropped_over_budget,
    /// UDP flows opened (one per client endpoint and destination).
    udp_opened,
    /// UDP flows reaped.
    udp_closed,
    /// UDP datagrams sent upstream.
    udp_datagrams_up,
    /// UDP datagrams received from upstream and passed to the client.
    udp_datagrams_down,
    /// UDP datagrams dropped (upstream send failed, or a flow's backlog was full).
    udp_dropped,
    /// UDP datagrams of new flows beyond the flow cap (answered with ICMP prohibited).
    udp_refused_by_limit,
    /// Echo requests of new flows beyond the flow cap (dropped).
    icmp_refused_by_limit,
    /// ICMP port-unreachable errors passed to the client for refused UDP.
    udp_refused,
    /// ICMP echo flows opened.
    icmp_opened,
    /// ICMP echo flows reaped.
    icmp_closed,
    /// Echo requests sent from the target's namespace.
    icmp_echo_requests,
    /// Echo replies passed back to the client.
    icmp_echo_replies,
    /// Echo requests that could not be sent (no ICMP socket available, or send failed).
    icmp_dropped,
    /// Inbound packets too short or inconsistent to parse.
    dropped_malformed,
    /// Inbound IP fragments (the tunnel MTU makes them unnecessary).
    dropped_fragments,
    /// Inbound packets of a kind the stack does not carry (other protocols, ICMP other than
    /// echo requests, multicast, IPv6 extension headers).
    dropped_unsupported,
    /// Outbound packets the tunnel refused as too large for a datagram.
    dropped_too_large,
    /// Outbound packets the session's TUN device refused (direct TUN link only).
    dropped_tun_refused,
    /// Replies to inbound packets (ACKs, RSTs, ICMP errors) dropped because the queue
    /// towards the session was at its bound.
    dropped_queue_full,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl StatsSnapshot {
    /// TCP flows currently open (connected upstream and not yet removed).
    pub fn tcp_open(&self) -> u64 {
        self.tcp_opened.saturating_sub(self.tcp_closed)
    }

    /// UDP flows currently open.
    pub fn udp_open(&self) -> u64 {
        self.udp_opened.saturating_sub(self.udp_closed)
    }

    /// ICMP echo flows currently open.
    pub fn icmp_open(&self) -> u64 {
        self.icmp_opened.saturating_sub(self.icmp_closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reads_counters_and_gauges() {
        let stats = Stats::default();
        Stats::inc(&stats.tcp_opened);
        Stats::inc(&stats.tcp_opened);
        Stats::inc(&stats.tcp_closed);
        Stats::add(&stats.bytes_in, 1500);
        let snap = stats.snapshot();
        assert_eq!(snap.tcp_open(), 1);
        assert_eq!(snap.bytes_in, 1500);
        assert_eq!(snap.to_string(), "bytes_in=1500 tcp_opened=2 tcp_closed=1");
        assert_eq!(StatsSnapshot::default().to_string(), "(all zero)");
    }
}
