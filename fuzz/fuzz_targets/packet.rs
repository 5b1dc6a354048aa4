//! An IP packet a session writes to its TUN: the agent's stack parses it and builds the replies
//! it may send about it (reset, unreachable, echo reply, UDP answer), each of which must parse.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mirrord_net_agent::stack::fuzzing::packet(data);
});
