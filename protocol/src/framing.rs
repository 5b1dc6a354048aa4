//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes of body.
//!
//! One framing, two body encodings, one per kind of link:
//! - **postcard** ([`encode`], [`FrameDecoder::next_message`]) on the QUIC streams between
//!   client and agent: compact, and the peer is another machine, so frames are limited to
//!   [`MAX_FRAME_LEN`];
//! - **JSON** ([`encode_json`], [`FrameDecoder::next_json_message`], [`decode_json_body`]) on
//!   the Unix sockets between processes of one machine: the client and its session child,
//!   the CLI and a background session's holder. Their messages stay readable in `strace`,
//!   and use what postcard cannot encode (fields that default when absent, flattened
//!   structs). The session's spec carries a whole environment and hosts file, so these may
//!   reach [`MAX_LOCAL_FRAME_LEN`].
//!
//! The decoder is a plain buffer: feed it whatever the stream yielded, take out whole
//! messages. A length above the decoder's limit is an error rather than an allocation, so a
//! confused or hostile peer cannot make us reserve gigabytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The largest frame either end of a QUIC stream accepts (resolv.conf and hosts ride in the
/// handshake, and a hosts file can be large, but never this large).
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The largest JSON frame on a local socket (see the module's documentation).
pub const MAX_LOCAL_FRAME_LEN: usize = 64 << 20;

/// The length of a frame's header.
pub const LEN_PREFIX: usize = 4;

/// A frame that cannot be a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN} bytes")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Appends one framed message to `out`.
pub fn encode_into<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let start = out.len();
    out.extend_from_slice(&[0; LEN_PREFIX]);
    let out_taken = std::mem::take(out);
    let mut body = postcard::to_extend(message, out_taken)
        .map_err(|err| FrameError::Malformed(err.to_string()))?;
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

/// One message as a frame with a JSON body, for a local socket.
///
/// # Panics
/// If `message` cannot be JSON: a map with keys other than strings, which no message of
/// this project has.
pub fn encode_json<T: Serialize>(message: &T) -> Vec<u8> {
    let mut frame = vec![0; LEN_PREFIX];
    serde_json::to_writer(&mut frame, message).expect("local messages always serialize");
    let len = (frame.len() - LEN_PREFIX) as u32;
    frame[..LEN_PREFIX].copy_from_slice(&len.to_be_bytes());
    frame
}

/// The body length a frame header announces, refused above `limit`. For a reader that
/// reads the header and the body apart (a socket that also carries descriptors).
pub fn body_len(header: [u8; LEN_PREFIX], limit: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    if len > limit {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a JSON frame body.
pub fn decode_json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|err| FrameError::Malformed(err.to_string()))
}

/// Reassembles frames from stream chunks.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: Vec<u8>,
    /// The longest body accepted.
    limit: usize,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder for a QUIC stream (frames up to [`MAX_FRAME_LEN`]).
    pub fn new() -> Self {
        Self {
            buffer: Vec::new(),
            limit: MAX_FRAME_LEN,
        }
    }

    /// A decoder for a local socket (frames up to [`MAX_LOCAL_FRAME_LEN`]).
    pub fn local() -> Self {
        Self {
            buffer: Vec::new(),
            limit: MAX_LOCAL_FRAME_LEN,
        }
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

    /// The next whole postcard message, if the buffer holds one.
    pub fn next_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.next_body(|body| {
            postcard::from_bytes(body).map_err(|err| FrameError::Malformed(err.to_string()))
        })
    }

    /// The next whole JSON message, if the buffer holds one.
    pub fn next_json_message<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.next_body(decode_json_body)
    }

    fn next_body<T>(
        &mut self,
        decode: impl FnOnce(&[u8]) -> Result<T, FrameError>,
    ) -> Result<Option<T>, FrameError> {
        let Some(len) = self.frame_len()? else {
            return Ok(None);
        };
        if self.buffer.len() < LEN_PREFIX + len {
            return Ok(None);
        }
        let message = decode(&self.buffer[LEN_PREFIX..LEN_PREFIX + len])?;
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
        body_len(prefix.try_into().expect("4-byte prefix"), self.limit).map(Some)
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

    #[test]
    fn json_frames_survive_arbitrary_chunking_and_keep_their_limit() {
        let first = vec!["a".to_string(), "b".repeat(300)];
        let second = vec!["c".to_string()];
        let mut wire = encode_json(&first);
        wire.extend(encode_json(&second));
        for chunk in [1, 2, 5, wire.len()] {
            let mut decoder = FrameDecoder::local();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(message) = decoder.next_json_message::<Vec<String>>().unwrap() {
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
        // A local frame may be larger than a QUIC one, but not without bound.
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        assert_eq!(body_len(header, MAX_LOCAL_FRAME_LEN), Ok(MAX_FRAME_LEN + 1));
        assert_eq!(
            body_len(header, MAX_FRAME_LEN),
            Err(FrameError::TooLarge(MAX_FRAME_LEN + 1))
        );
        let mut decoder = FrameDecoder::local();
        decoder.push(&((MAX_LOCAL_FRAME_LEN + 1) as u32).to_be_bytes());
        assert_eq!(
            decoder.next_json_message::<Vec<String>>(),
            Err(FrameError::TooLarge(MAX_LOCAL_FRAME_LEN + 1))
        );
    }

    #[test]
    fn a_json_body_that_is_not_the_message_is_malformed() {
        let mut decoder = FrameDecoder::local();
        decoder.push(&[0, 0, 0, 2]);
        decoder.push(b"{]");
        assert!(matches!(
            decoder.next_json_message::<Vec<String>>(),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            decode_json_body::<u32>(b"\"text\""),
            Err(FrameError::Malformed(_))
        ));
    }
}
