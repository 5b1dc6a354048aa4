//! Entry points for the fuzz targets (`fuzz/`): the stack's packet parsing and the replies it
//! builds about a packet, reached from outside the crate without making the parser public;
//! and the whole flow engine driven by a script of packets (`engine`).
//!
//! Every entry point takes the bytes a hostile session could write to its TUN and must
//! neither panic nor loop; the replies it builds must be packets this parser accepts again
//! (the session's kernel reads them).

mod engine;

pub use engine::{flow_engine, Outcome as FlowEngineOutcome};
#[cfg(test)]
pub(crate) use engine::{private_network, tcp_echo_server};

use super::device::TxQueue;
use super::packet::{self, DropReason, Parsed, Unreachable};

/// The link MTUs replies are built for: the smallest IPv6 allows, a common one, loopback's.
const MTUS: [usize; 3] = [1280, 1500, 65_535];

/// Parses `data` as a packet from the session and builds every reply the stack may send
/// about it: a TCP reset, destination-unreachable errors, an echo reply, a UDP answer.
pub fn packet(data: &[u8]) {
    let parsed = packet::parse(data);
    for mtu in MTUS {
        let mut tx = TxQueue::new(usize::MAX, 0);
        match &parsed {
            Parsed::Tcp { .. } => {
                packet::push_tcp_reset(&mut tx, data);
            }
            Parsed::Udp { key, payload } => {
                for why in [Unreachable::Port, Unreachable::Host] {
                    packet::push_unreachable(&mut tx, mtu, data, why);
                }
                // An answer from the flow's destination carrying the same payload, as big as
                // the input allows (fragmented to the MTU).
                packet::push_udp(
                    &mut tx,
                    mtu,
                    7,
                    key.server,
                    key.client,
                    &data[payload.clone()],
                );
            }
            Parsed::Echo {
                key,
                seq,
                data: range,
            } => {
                packet::push_echo_reply(
                    &mut tx,
                    mtu,
                    7,
                    key.server,
                    key.client,
                    key.ident,
                    *seq,
                    &data[range.clone()],
                );
            }
            Parsed::Drop(_) => {
                packet::push_unreachable(&mut tx, mtu, data, Unreachable::Prohibited);
            }
        }
        while let Some(reply) = tx.pop_front() {
            assert!(
                reply.len() <= mtu.max(packet::IPV6_HEADER_LEN + 1232),
                "a reply of {} bytes for an MTU of {mtu}",
                reply.len()
            );
            assert_ne!(
                packet::parse(&reply),
                Parsed::Drop(DropReason::Malformed),
                "the stack built a malformed packet: {reply:02x?}"
            );
        }
    }
}
