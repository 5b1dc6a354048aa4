//! Bytes from the other end of a session: control and file frames (length-prefixed postcard)
//! decoded as every message type either end reads, and QUIC datagrams framed on a stream (the
//! port-forward path). The first byte picks the piece size the bytes arrive in.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrord_net_protocol::framing::FrameDecoder;
use mirrord_net_protocol::fs::{FsRequest, FsResponse};
use mirrord_net_protocol::messages::{AgentHello, AgentMessage, ClientHello, ClientMessage};
use mirrord_net_protocol::stream_datagrams::Decoder;
use serde::de::DeserializeOwned;

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else {
        return;
    };
    let split = usize::from(split).max(1);
    frames::<ClientHello>(input, split);
    frames::<AgentHello>(input, split);
    frames::<ClientMessage>(input, split);
    frames::<AgentMessage>(input, split);
    frames::<FsRequest>(input, split);
    frames::<FsResponse>(input, split);
    datagrams(input, split);
});

fn frames<T: DeserializeOwned>(input: &[u8], split: usize) {
    let mut decoder = FrameDecoder::new();
    for piece in input.chunks(split) {
        decoder.push(piece);
        if decoder.bytes_wanted().is_err() {
            return;
        }
        loop {
            match decoder.next_message::<T>() {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn datagrams(input: &[u8], split: usize) {
    let mut decoder = Decoder::new();
    let mut total = 0;
    for piece in input.chunks(split) {
        decoder.push(piece);
        while let Some(datagram) = decoder.next_datagram() {
            total += datagram.len();
        }
    }
    assert!(total <= input.len());
}
