//! A quinn socket over a byte stream: the session's QUIC datagrams framed on a TCP connection
//! (the Kubernetes port-forward) instead of sent as UDP.
//!
//! quinn drives its endpoint through [`quinn::AsyncUdpSocket`]: `try_send` hands over one
//! datagram or says `WouldBlock`, a [`quinn::UdpPoller`] wakes the sender when sending may
//! succeed again, and `poll_recv` fills receive buffers. Over a stream:
//!
//! - **Sending** appends the datagram's frame ([`stream_datagrams`]) to an outgoing buffer,
//!   which a writer task writes to the stream. When the buffer holds [`OUTGOING_LIMIT`] bytes,
//!   `try_send` says `WouldBlock`, and the pollers are woken when the writer has taken the
//!   buffer. A stream slower than quinn thus slows quinn down (backpressure), where a UDP
//!   socket would drop: on a reliable stream a drop would only look like congestion and cost
//!   a retransmission.
//! - **Receiving** reads the stream in the endpoint's own task, straight from `poll_recv`, and
//!   hands over as many whole datagrams as quinn has buffers for. quinn reading slowly leaves
//!   bytes in the stream, which pushes back on the agent.
//! - **Addresses** are placeholders: the stream has one peer, [`STREAM_PEER`]. Every datagram
//!   comes from it, and what quinn sends goes to it whatever the destination.
//! - **The stream's end** (EOF, or an error either way) makes sends vanish and receives wait,
//!   as on a UDP socket whose peer is gone. [`StreamSocket::ended`] says it at once, so the
//!   tunnel can end the connection without waiting for QUIC's idle timeout.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use mirrord_net_protocol::stream_datagrams::{self, Decoder};
use quinn::udp::{RecvMeta, Transmit};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{watch, Notify};

/// Bytes of frames queued for the stream before `try_send` pushes back. Enough to keep a fast
/// stream busy between two writes (the writer takes all of it at once).
pub const OUTGOING_LIMIT: usize = 1024 * 1024;
/// Bytes asked of each stream read.
const READ_CHUNK: usize = 256 * 1024;

/// The address the stream's one peer (the agent) goes by.
pub const STREAM_PEER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1));
/// This end's address, as quinn asks for one.
const STREAM_LOCAL: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 2));

type Reader = Box<dyn AsyncRead + Unpin + Send>;

/// A [`quinn::AsyncUdpSocket`] whose datagrams travel on a byte stream.
pub struct StreamSocket {
    receive: Mutex<Receive>,
    send: Arc<SendState>,
    ended: watch::Sender<bool>,
}

struct Receive {
    reader: Reader,
    decoder: Decoder,
    done: bool,
}

/// What `try_send`, the pollers and the writer task share.
struct SendState {
    queue: Mutex<Outgoing>,
    /// Wakes the writer when frames are queued.
    queued: Notify,
}

#[derive(Default)]
struct Outgoing {
    frames: Vec<u8>,
    /// Pollers waiting for room.
    waiting: Vec<Waker>,
    /// The stream is gone: sends are dropped from now on.
    broken: bool,
    /// The socket is gone: the writer flushes, shuts the stream down and ends.
    closed: bool,
}

impl StreamSocket {
    /// Wraps `stream` and starts its writer task on the current tokio runtime.
    pub fn new<S>(stream: S) -> Arc<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (reader, writer) = tokio::io::split(stream);
        let send = Arc::new(SendState {
            queue: Mutex::new(Outgoing::default()),
            queued: Notify::new(),
        });
        let (ended, _) = watch::channel(false);
        let socket = Arc::new(Self {
            receive: Mutex::new(Receive {
                reader: Box::new(reader),
                decoder: Decoder::new(),
                done: false,
            }),
            send: send.clone(),
            ended,
        });
        tokio::spawn(write_frames(writer, send, socket.ended.clone()));
        socket
    }

    /// Resolves when the stream has ended, in either direction.
    pub fn ended(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut ended = self.ended.subscribe();
        async move {
            let _ = ended.wait_for(|ended| *ended).await;
        }
    }
}

/// Writes queued frames to the stream until it breaks or the socket is dropped.
async fn write_frames(
    mut writer: impl AsyncWrite + Unpin,
    send: Arc<SendState>,
    ended: watch::Sender<bool>,
) {
    let mut batch = Vec::with_capacity(OUTGOING_LIMIT);
    loop {
        let (waiting, closed) = {
            let mut queue = send.queue.lock().expect("send queue lock");
            std::mem::swap(&mut queue.frames, &mut batch);
            (std::mem::take(&mut queue.waiting), queue.closed)
        };
        // There is room again: let quinn queue the next batch while this one is written.
        waiting.into_iter().for_each(Waker::wake);
        if batch.is_empty() {
            if closed {
                let _ = writer.shutdown().await;
                return;
            }
            send.queued.notified().await;
            continue;
        }
        let written = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        };
        if let Err(err) = written.await {
            tracing::debug!("writing to the agent's stream: {err}");
            let mut queue = send.queue.lock().expect("send queue lock");
            queue.broken = true;
            queue.frames = Vec::new();
            queue.waiting.drain(..).for_each(Waker::wake);
            drop(queue);
            let _ = ended.send(true);
            return;
        }
        batch.clear();
    }
}

impl fmt::Debug for StreamSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamSocket")
            .field("peer", &STREAM_PEER)
            .finish_non_exhaustive()
    }
}

impl Drop for StreamSocket {
    fn drop(&mut self) {
        // Let the writer see that the socket is gone, flush and shut the stream down.
        self.send.queue.lock().expect("send queue lock").closed = true;
        self.send.queued.notify_one();
    }
}

impl quinn::AsyncUdpSocket for StreamSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn quinn::UdpPoller>> {
        Box::pin(RoomPoller {
            send: self.send.clone(),
        })
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let contents = transmit.contents;
        let mut queue = self.send.queue.lock().expect("send queue lock");
        if queue.broken {
            // Gone like a datagram to a vanished peer; QUIC's timers end the connection.
            return Ok(());
        }
        let frame = stream_datagrams::frame_len(contents.len());
        if !queue.frames.is_empty() && queue.frames.len() + frame > OUTGOING_LIMIT {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        stream_datagrams::encode_into(contents, &mut queue.frames)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let first = queue.frames.len() == frame;
        drop(queue);
        if first {
            self.send.queued.notify_one();
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut receive = self.receive.lock().expect("receive lock");
        let receive = &mut *receive;
        loop {
            let mut count = 0;
            while count < bufs.len().min(meta.len()) {
                let buf = &mut bufs[count];
                let Some(datagram) = receive.decoder.next_datagram() else {
                    break;
                };
                if datagram.len() > buf.len() {
                    // Larger than quinn's buffers: cannot be ours (our profile's datagrams
                    // fit), so drop it as the kernel would truncate-and-flag it.
                    tracing::debug!(len = datagram.len(), "dropped an oversized datagram");
                    continue;
                }
                buf[..datagram.len()].copy_from_slice(datagram);
                meta[count] = RecvMeta {
                    addr: STREAM_PEER,
                    len: datagram.len(),
                    stride: datagram.len(),
                    ecn: None,
                    dst_ip: None,
                };
                count += 1;
            }
            if count > 0 {
                return Poll::Ready(Ok(count));
            }
            if receive.done {
                return Poll::Pending;
            }
            let spare = receive.decoder.spare(READ_CHUNK);
            let mut read = ReadBuf::new(spare);
            let polled = Pin::new(&mut receive.reader).poll_read(cx, &mut read);
            let n = read.filled().len();
            receive.decoder.filled(n);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) if n > 0 => continue,
                Poll::Ready(result) => {
                    match result {
                        Ok(()) => tracing::debug!("the agent's stream ended"),
                        Err(err) => tracing::debug!("reading the agent's stream: {err}"),
                    }
                    receive.done = true;
                    let _ = self.ended.send(true);
                    return Poll::Pending;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(STREAM_LOCAL)
    }

    fn may_fragment(&self) -> bool {
        // Frames are never split on the way: as a "don't fragment" socket.
        false
    }
}

/// Ready when the outgoing buffer has room.
struct RoomPoller {
    send: Arc<SendState>,
}

impl fmt::Debug for RoomPoller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoomPoller").finish_non_exhaustive()
    }
}

impl quinn::UdpPoller for RoomPoller {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let mut queue = self.send.queue.lock().expect("send queue lock");
        // Room for one more largest frame, or a broken stream (sends then vanish).
        if queue.broken
            || queue.frames.len() + stream_datagrams::frame_len(u16::MAX as usize) <= OUTGOING_LIMIT
        {
            return Poll::Ready(Ok(()));
        }
        if !queue
            .waiting
            .iter()
            .any(|waker| waker.will_wake(cx.waker()))
        {
            queue.waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::time::Duration;

    use mirrord_net_protocol::transport::{self, PathProfile};
    use mirrord_net_protocol::trust::{SessionIdentity, AGENT_SERVER_NAME};
    use quinn::AsyncUdpSocket;
    use tokio::io::AsyncReadExt;

    use super::*;

    fn transmit(contents: &[u8]) -> Transmit<'_> {
        Transmit {
            destination: STREAM_PEER,
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        }
    }

    async fn recv_one(socket: &StreamSocket) -> Vec<u8> {
        let mut buf = vec![0u8; 70_000];
        let mut meta = [RecvMeta::default()];
        let n = poll_fn(|cx| {
            let mut bufs = [IoSliceMut::new(&mut buf)];
            socket.poll_recv(cx, &mut bufs, &mut meta)
        })
        .await
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(meta[0].addr, STREAM_PEER);
        buf[..meta[0].len].to_vec()
    }

    #[tokio::test]
    async fn datagrams_travel_as_frames_both_ways() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let socket = StreamSocket::new(ours);
        socket.try_send(&transmit(b"hello")).unwrap();
        socket.try_send(&transmit(&[7; 1200])).unwrap();
        let mut wire = vec![0u8; 2 + 5 + 2 + 1200];
        theirs.read_exact(&mut wire).await.unwrap();
        assert_eq!(&wire[..7], b"\0\x05hello");
        assert_eq!(&wire[7..9], &1200u16.to_be_bytes());

        let mut frames = Vec::new();
        stream_datagrams::encode_into(b"first", &mut frames).unwrap();
        stream_datagrams::encode_into(&[9; 65_000], &mut frames).unwrap();
        // Cut in two writes, mid-frame.
        theirs.write_all(&frames[..4]).await.unwrap();
        theirs.write_all(&frames[4..]).await.unwrap();
        assert_eq!(recv_one(&socket).await, b"first");
        assert_eq!(recv_one(&socket).await, vec![9; 65_000]);
    }

    #[tokio::test]
    async fn a_stream_behind_pushes_back_then_wakes_the_sender() {
        // A stream nobody reads: the pipe (64 KiB) and the outgoing buffer fill up.
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let socket = StreamSocket::new(ours);
        let datagram = vec![1u8; 60_000];
        let mut sent = 0;
        loop {
            match socket.try_send(&transmit(&datagram)) {
                Ok(()) => sent += 1,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("{err}"),
            }
            // Let the writer take what it can.
            tokio::task::yield_now().await;
            assert!(sent < 1000, "never pushed back");
        }
        let mut poller = socket.clone().create_io_poller();
        let pending = poll_fn(|cx| Poll::Ready(poller.as_mut().poll_writable(cx).is_pending()));
        assert!(
            pending.await,
            "the poller must wait while the buffer is full"
        );

        // Reading the stream makes room: the poller is woken and sending works again.
        let reader = tokio::spawn(async move {
            let mut sink = vec![0u8; 1 << 20];
            let mut total = 0;
            while let Ok(n) = theirs.read(&mut sink).await {
                if n == 0 {
                    break;
                }
                total += n;
            }
            total
        });
        tokio::time::timeout(
            Duration::from_secs(5),
            poll_fn(|cx| poller.as_mut().poll_writable(cx)),
        )
        .await
        .expect("woken when there is room")
        .unwrap();
        socket.try_send(&transmit(&datagram)).unwrap();
        sent += 1;
        drop(poller);
        drop(socket);
        // Nothing was dropped: every frame reached the stream before it was shut down.
        let total = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the stream is shut down when the socket goes")
            .unwrap();
        assert_eq!(total, sent * stream_datagrams::frame_len(datagram.len()));
    }

    #[tokio::test]
    async fn the_end_of_the_stream_is_announced() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let socket = StreamSocket::new(ours);
        let ended = socket.ended();
        let receiving = {
            let socket = socket.clone();
            tokio::spawn(async move { recv_one(&socket).await })
        };
        drop(theirs);
        tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("ended when the peer closes");
        // Receives wait (as on a UDP socket whose peer is gone); sends vanish.
        assert!(!receiving.is_finished());
        receiving.abort();
        socket.try_send(&transmit(b"lost")).unwrap();
    }

    /// Two quinn endpoints talking through a pair of stream sockets on an in-memory pipe,
    /// with the session's pinned certificates and stream settings: the handshake, a ping-pong
    /// and a bulk stream transfer, intact.
    #[tokio::test]
    async fn quic_runs_over_a_pair_of_stream_sockets() {
        let agent_id = SessionIdentity::generate().unwrap();
        let client_id = SessionIdentity::generate().unwrap();
        let profile = PathProfile::Stream;
        let (a, b) = tokio::io::duplex(256 * 1024);
        let runtime = quinn::default_runtime().unwrap();
        let server = quinn::Endpoint::new_with_abstract_socket(
            transport::endpoint_config(profile),
            Some(transport::server_config(&agent_id, client_id.fingerprint(), profile).unwrap()),
            StreamSocket::new(a),
            runtime.clone(),
        )
        .unwrap();
        let mut client = quinn::Endpoint::new_with_abstract_socket(
            transport::endpoint_config(profile),
            None,
            StreamSocket::new(b),
            runtime,
        )
        .unwrap();
        client.set_default_client_config(
            transport::client_config(&client_id, agent_id.fingerprint(), profile).unwrap(),
        );

        const BULK: usize = 16 << 20;
        let serve = tokio::spawn(async move {
            let connection = server.accept().await.unwrap().await.unwrap();
            // Echo datagrams; sink one stream and answer with its length.
            let echo = connection.clone();
            tokio::spawn(async move {
                while let Ok(datagram) = echo.read_datagram().await {
                    let _ = echo.send_datagram(datagram);
                }
            });
            let (mut send, mut recv) = connection.accept_bi().await.unwrap();
            let data = recv.read_to_end(BULK).await.unwrap();
            send.write_all(&(data.len() as u64).to_be_bytes())
                .await
                .unwrap();
            send.finish().unwrap();
            let sum: u64 = data.iter().map(|&b| b as u64).sum();
            connection.closed().await;
            sum
        });
        let connection = client
            .connect(STREAM_PEER, AGENT_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        assert!(connection.max_datagram_size().unwrap() > 60_000);
        for i in 0..10u8 {
            connection
                .send_datagram(vec![i; 1000 * i as usize + 1].into())
                .unwrap();
            let back = connection.read_datagram().await.unwrap();
            assert_eq!(back.len(), 1000 * i as usize + 1);
        }
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
        let expected: u64 = data.iter().map(|&b| b as u64).sum();
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
        let answer = recv.read_to_end(8).await.unwrap();
        assert_eq!(answer, (BULK as u64).to_be_bytes());
        connection.close(0u32.into(), b"done");
        assert_eq!(serve.await.unwrap(), expected);
    }
}
