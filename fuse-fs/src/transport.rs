//! How a file request reaches the agent: a [`Transport`] seam, and the QUIC one.
//!
//! The file system only needs "send this request, get the answer"; tests put an in-process
//! file server behind the same trait, so every translation is tested without a kernel mount.

use std::future::Future;

use mirrord_net_protocol::framing;
use mirrord_net_protocol::fs::{FsRequest, FsResponse, StreamKind, MAX_IO};

/// The agent's answer: the response and, for reads, the bytes that came with it.
#[derive(Debug)]
pub struct Reply {
    pub response: FsResponse,
    pub data: Vec<u8>,
}

/// Why a request got no answer (the user's process sees `EIO`).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("the agent connection is gone: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("file stream failed: {0}")]
    Stream(String),
    #[error("bad answer from the agent: {0}")]
    Protocol(String),
}

/// Sends file requests to an agent.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        request: FsRequest,
    ) -> impl Future<Output = Result<Reply, TransportError>> + Send;
}

/// File requests over the session's QUIC connection, one bidirectional stream each.
#[derive(Clone)]
pub struct QuicTransport {
    connection: quinn::Connection,
}

impl QuicTransport {
    pub fn new(connection: quinn::Connection) -> Self {
        QuicTransport { connection }
    }
}

fn stream_err(err: impl std::fmt::Display) -> TransportError {
    TransportError::Stream(err.to_string())
}

/// A failed write: the connection's end (the session is over) is told apart from a stream's.
fn write_err(err: quinn::WriteError) -> TransportError {
    match err {
        quinn::WriteError::ConnectionLost(lost) => TransportError::Connection(lost),
        other => stream_err(other),
    }
}

/// A failed read, told apart the same way.
fn read_err(err: quinn::ReadExactError) -> TransportError {
    match err {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(lost)) => {
            TransportError::Connection(lost)
        }
        other => stream_err(other),
    }
}

impl Transport for QuicTransport {
    async fn call(&self, request: FsRequest) -> Result<Reply, TransportError> {
        let (mut send, mut recv) = self.connection.open_bi().await?;
        let mut out = vec![StreamKind::Files as u8];
        framing::encode_into(&request, &mut out)
            .map_err(|err| TransportError::Protocol(err.to_string()))?;
        send.write_all(&out).await.map_err(write_err)?;
        send.finish().map_err(stream_err)?;

        let mut header = [0u8; 4];
        recv.read_exact(&mut header).await.map_err(read_err)?;
        let len = u32::from_be_bytes(header) as usize;
        if len > framing::MAX_FRAME_LEN {
            return Err(TransportError::Protocol(format!("frame of {len} bytes")));
        }
        let mut body = vec![0u8; len];
        recv.read_exact(&mut body).await.map_err(read_err)?;
        let response: FsResponse = decode_response(&body)?;
        let data = match response {
            FsResponse::Data { len } if len <= MAX_IO => {
                // Read straight into the buffer the kernel's reply is written from.
                let mut data = vec![0u8; len as usize];
                recv.read_exact(&mut data).await.map_err(read_err)?;
                data
            }
            FsResponse::Data { len } => {
                return Err(TransportError::Protocol(format!("read of {len} bytes")))
            }
            _ => Vec::new(),
        };
        Ok(Reply { response, data })
    }
}

fn decode_response(body: &[u8]) -> Result<FsResponse, TransportError> {
    let mut decoder = framing::FrameDecoder::new();
    decoder.push(&(body.len() as u32).to_be_bytes());
    decoder.push(body);
    decoder
        .next_message()
        .map_err(|err| TransportError::Protocol(err.to_string()))?
        .ok_or_else(|| TransportError::Protocol("empty answer".into()))
}
