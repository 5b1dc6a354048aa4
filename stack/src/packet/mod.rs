//! Reading the packets the session sends, and writing the ones the stack makes itself.
//!
//! One file per job, each below this one:
//! - `parse`: each inbound packet classified once, with its flow key (pure);
//! - `reply`: the packets smoltcp does not write — RSTs, ICMP errors, UDP and echo replies;
//! - `fragment`: replies and rebuilt packets larger than the link's MTU, as IP fragments;
//! - `header`: the IP header and the transport checksum they all write;
//! - `craft`: packets as the session writes them, for tests and the fuzz harness.

mod craft;
mod fragment;
mod header;
mod parse;
mod reply;
#[cfg(test)]
pub(crate) mod tests;

pub(crate) use craft::{echo_request_packet, tcp_segment, udp_datagram};
pub(crate) use fragment::push_fragments;
pub(crate) use header::IPV6_HEADER_LEN;
pub(crate) use parse::{parse, DropReason, EchoKey, FlowKey, Parsed, Segment};
pub(crate) use reply::{
    echo_request, push_echo_reply, push_tcp_reset, push_udp, push_unreachable, synthetic_udp,
    Unreachable,
};
