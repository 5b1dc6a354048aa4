//! Texts the agent reads from the target and the client trusts only as far as they parse: the
//! target's environment block (and env files and JSON the user points at), its mount table,
//! the listening-socket tables of /proc/net.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrord_net_env_injector::{dotenv, environ, json};
use mirrord_net_protocol::listening::parse_listening;
use mirrord_net_protocol::mountinfo::parse_mountinfo;

fuzz_target!(|data: &[u8]| {
    let vars = environ::parse(data);
    assert!(vars.len() <= data.len() / 2 + 1);
    let _ = dotenv::parse(data);
    let text = String::from_utf8_lossy(data);
    let _ = json::parse(&text);
    for line in parse_mountinfo(&text) {
        assert!(!line.fs_type.contains(' '));
    }
    let _ = parse_listening(&text);
});
