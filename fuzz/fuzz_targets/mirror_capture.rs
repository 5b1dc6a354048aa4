//! Captured packets of mirrored connections (anything the target's network delivers): parsed
//! and reassembled per connection. The input is a sequence of packets, each prefixed by its
//! length (two bytes, big endian).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use mirrord_net_agent::incoming::mirror::packet;
use mirrord_net_agent::incoming::mirror::reassembly::Reassembler;

/// A small cap, so that the out-of-order bound is reached within one input.
const CAP: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut flows: HashMap<packet::FlowKey, Reassembler> = HashMap::new();
    let mut out = Vec::new();
    let mut rest = data;
    while rest.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        let take = len.min(rest.len() - 2);
        let one = &rest[2..2 + take];
        rest = &rest[2 + take..];
        let Some((key, segment)) = packet::parse(one) else {
            continue;
        };
        let flow = flows.entry(key).or_insert_with(|| Reassembler::new(CAP));
        let before = flow.delivered();
        out.clear();
        flow.segment(&segment, &mut out);
        assert_eq!(flow.delivered() - before, out.len() as u64);
        assert!(
            flow.buffered() <= CAP + usize::from(u16::MAX),
            "out-of-order data past the cap"
        );
    }
});
