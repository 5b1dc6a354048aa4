//! A script of packets a session writes to its TUN (raw bytes, and TCP, UDP and echo packets
//! that follow the stack's sequence numbers), run through the agent's whole stack over a
//! memory link against real sockets in a network namespace of the target's own: the stack
//! must not panic or hang, and every packet it sends must be well formed within the MTU.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mirrord_net_agent::stack::fuzzing::flow_engine(data);
});
