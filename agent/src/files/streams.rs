//! One file request per stream: read it, answer it on the blocking pool, send the answer.

use std::sync::Arc;

use bytes::Bytes;
use mirrord_net_protocol::framing::{self, FrameDecoder};
use mirrord_net_protocol::fs::{FsRequest, MAX_IO};

use super::server::FileServer;

/// Largest request accepted (a write of `MAX_IO` bytes plus its header).
const MAX_REQUEST: usize = MAX_IO as usize + 4096;

/// Serves the request on a stream whose kind byte has been read.
pub async fn serve_stream(
    server: Arc<FileServer>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let bytes = recv.read_to_end(MAX_REQUEST).await?;
    let mut decoder = FrameDecoder::new();
    decoder.push(&bytes);
    let request: FsRequest = decoder
        .next_message()?
        .ok_or_else(|| anyhow::anyhow!("file stream ended inside its request"))?;
    tracing::trace!(?request, "file request");
    let answer = tokio::task::spawn_blocking(move || server.handle(request)).await?;
    send.write_all(&framing::encode(&answer.response)?).await?;
    if let Some(data) = answer.data {
        // Handed over as it is: no copy between pread and QUIC.
        send.write_chunk(Bytes::from(data)).await?;
    }
    send.finish()?;
    Ok(())
}
