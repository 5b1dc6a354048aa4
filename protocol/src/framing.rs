//! Length-prefixed frames for messages on QUIC streams.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of [`postcard`]. The
//! decoder is a plain buffer: feed it whatever the stream yielded, take out whole messages.
//! A length above [`MAX_FRAME_LEN`] is an error rather than an allocation, so a confused or
//! hostile peer cannot make us reserve gigabytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame either end accepts (resolv.conf and hosts ride in the handshake, and a
/// hosts file can be large, but never this large).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

const LEN_PREFIX: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
}

/// Appends one framed message to `out`.
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    let out_taken = std::mem::take(out);
    let mut body = postcard::to_extend(message, out_taken)?;
    let len = body.len() - start - LEN_PREFIX;
    if len > MAX_FRAME_LEN {
        body.truncate(start);
        *out = body;
        return Err(FrameError::TooLarge(len));
    }
    body[start..start + LEN_PREFIX].copy_from_slice(&(len as u32).to_be_bytes());
    *out = body;
    Ok(())
}

/// One framed message as a new buffer.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    encode_into(message, &mut out)?;
    Ok(out)
}

/// Reassembles frames from stream chunks.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// How many more bytes the decoder needs before the next frame can be complete; at least 1
    /// while a frame is incomplete, 0 when [`Self::next_message`] will yield one.
    pub fn bytes_wanted(&self) -> Result<usize, FrameError> {
        match self.frame_len()? {
            None => Ok(LEN_PREFIX - self.buffer.len()),
            Some(len) => Ok((LEN_PREFIX + len).saturating_sub(self.buffer.len())),
        }
    }

    /// The next whole message, if the buffer holds one.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(len) = self.frame_len()? else {
            return Ok(None);
        };
        if self.buffer.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let message = postcard::from_bytes(&self.buffer[LEN_PREFIX..LEN_PREFIX + len])?;
        self.buffer.drain(..LEN_PREFIX + len);
        Ok(Some(message))
    }

    /// True when bytes of an unfinished frame are buffered (a stream ending now was cut short).
    pub fn has_partial_frame(&self) -> bool {
        !self.buffer.is_empty()
    }

    fn frame_len(&self) -> Result<Option<usize>, FrameError> {
        let Some(prefix) = self.buffer.get(..LEN_PREFIX) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(prefix.try_into().expect("4-byte prefix")) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge(len));
        }
        Ok(Some(len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::client_hello;
    use crate::messages::ClientMessage;

    #[test]
    fn frames_survive_arbitrary_chunking() {
        let first = ClientMessage::Hello(client_hello());
        let mut second_hello = client_hello();
        second_hello.client_version = "x".repeat(1000);
        let second = ClientMessage::Hello(second_hello);
        let mut wire = encode(&first).unwrap();
        encode_into(&second, &mut wire).unwrap();

        for chunk in [1, 3, 7, wire.len()] {
            let mut decoder = FrameDecoder::new();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(message) = decoder.next_message::<ClientMessage>().unwrap() {
                    got.push(message);
                }
            }
            assert_eq!(
                got,
                vec![first.clone(), second.clone()],
                "chunk size {chunk}"
            );
            assert!(!decoder.has_partial_frame());
        }
    }

    #[test]
    fn oversized_length_prefix_is_an_error_not_an_allocation() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decoder.next_message::<ClientMessage>(),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(
            decoder.next_message::<ClientMessage>(),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn bytes_wanted_counts_down_to_a_whole_frame() {
        let wire = encode(&ClientMessage::Hello(client_hello())).unwrap();
        let mut decoder = FrameDecoder::new();
        assert_eq!(decoder.bytes_wanted().unwrap(), 4);
        decoder.push(&wire[..4]);
        assert_eq!(decoder.bytes_wanted().unwrap(), wire.len() - 4);
        decoder.push(&wire[4..]);
        assert_eq!(decoder.bytes_wanted().unwrap(), 0);
    }
}
