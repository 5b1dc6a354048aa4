//! The mirror at work: the capture of the mirrored ports ([`super::sniffer`]) feeds the
//! [`FlowTable`], and each connection it rebuilds is replayed into the session through the
//! same path a stolen connection takes.
//!
//! ```text
//!  target's clients ─► eth0 ─► the target's own socket (answers, untouched)
//!                        │ copy (packet socket + BPF: arriving, dst port ∈ mirrored)
//!                        ▼
//!   capture ─► FlowTable ─► Opened ──► Replay: SessionConnector::open (loopback pair to the
//!                 │                    stack, peer = the original client, as steal does)
//!                 ├──────► Data ─────► queued bytes ─► written into the session
//!                 ├──────► Finished ─► write side shut (FIN), the session's answer drained
//!                 └──────► Aborted ──► the replay reset (RST, Dropped, idle, port no longer
//!                                      mirrored)
//!   whatever the session answers is read and dropped
//! ```
//!
//! The replay never waits on the target and the target never waits on it: bytes are queued
//! per connection while the session connection is being opened or is slower than the
//! target's client. The queues share one budget ([`MAX_QUEUED`]); a connection whose bytes
//! would overrun it stops being mirrored (its replay is reset), so a slow session costs the
//! agent bounded memory and never the target anything.
//!
//! A connection is mirrored when its SYN is seen after the port began to be mirrored and
//! while the session listens on the port (the plan decides both, see `super::super::plan`);
//! one that the session refuses (its program went away) is simply not replayed. On a port
//! with an HTTP filter, only the matching requests are replayed ([`super::select`]), and the
//! connection into the session is opened with the first of them (a connection none of
//! whose requests match never reaches the session). Dropping the [`Mirror`] closes the
//! capture and resets the replays in progress.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::flows::{FlowEvent, FlowTable, DEFAULT_IDLE};
use super::packet::FlowKey;
use super::reassembly::DEFAULT_CAP;
use super::select::Selector;
use super::sniffer::{self, Loopback, Sniffer};
use crate::incoming::filtered::SessionConnector;
use crate::incoming::http::HttpFilter;
use crate::incoming::share::Own;

/// Most connections mirrored at once.
const MAX_FLOWS: usize = 4096;
/// Most bytes waiting to be written into the session, all connections together.
pub const MAX_QUEUED: usize = 64 << 20;
/// How often idle connections are looked for.
const SWEEP: Duration = Duration::from_secs(5);
/// How long a finished replay waits for the session's answer to end before it closes.
const LINGER: Duration = Duration::from_secs(5);

/// A task aborted when dropped.
struct Abort(JoinHandle<()>);

impl Drop for Abort {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How one target port is mirrored.
#[derive(Clone)]
pub struct MirrorPort {
    /// The port the session's program listens on.
    pub session_port: u16,
    /// Only the requests this matches are replayed; `None`: the whole connection.
    pub filter: Option<Arc<HttpFilter>>,
}

impl PartialEq for MirrorPort {
    fn eq(&self, other: &Self) -> bool {
        self.session_port == other.session_port
            && match (&self.filter, &other.filter) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            }
    }
}

type Ports = BTreeMap<u16, MirrorPort>;

/// Mirroring in progress: the capture and the replays.
pub struct Mirror {
    sniffer: Rc<Sniffer>,
    /// Target port → how it is mirrored.
    ports: Rc<RefCell<Ports>>,
    _capture: Abort,
}

impl Mirror {
    /// Starts capturing `ports` (target port → session port) in the current thread's network
    /// namespace, replaying into the session through `own`. Runs on the thread's `LocalSet`.
    pub fn start(ports: &Ports, own: Own) -> io::Result<Self> {
        let keys: Vec<u16> = ports.keys().copied().collect();
        let sniffer = Rc::new(Sniffer::open(&keys, Loopback::Skip).map_err(|err| {
            io::Error::new(
                err.kind(),
                format!("cannot open a packet socket in the target's network namespace: {err}"),
            )
        })?);
        let shared = Rc::new(RefCell::new(ports.clone()));
        let capture = tokio::task::spawn_local(capture(sniffer.clone(), shared.clone(), own));
        Ok(Self {
            sniffer,
            ports: shared,
            _capture: Abort(capture),
        })
    }

    /// The target ports mirrored now.
    pub fn ports(&self) -> Vec<u16> {
        self.ports.borrow().keys().copied().collect()
    }

    /// Changes the mirrored ports; connections in progress on ports that stay go on.
    pub fn set_ports(&mut self, ports: &Ports) -> io::Result<()> {
        if *self.ports.borrow() == *ports {
            return Ok(());
        }
        let keys: Vec<u16> = ports.keys().copied().collect();
        if keys != self.ports() {
            self.sniffer.set_ports(&keys)?;
        }
        *self.ports.borrow_mut() = ports.clone();
        Ok(())
    }
}

/// The bytes the replays may still queue, shared by all of them.
#[derive(Clone)]
struct Budget(Rc<Cell<usize>>);

impl Budget {
    fn take(&self, n: usize) -> bool {
        let left = self.0.get();
        if n > left {
            return false;
        }
        self.0.set(left - n);
        true
    }

    fn give(&self, n: usize) {
        self.0.set(self.0.get() + n);
    }
}

enum Chunk {
    Data(Vec<u8>),
    Abort,
}

/// One connection's replay, as the capture sees it.
struct Replay {
    tx: mpsc::UnboundedSender<Chunk>,
    budget: Budget,
    /// Aborted when the replay is dropped, unless it finished.
    task: Option<JoinHandle<()>>,
}

impl Replay {
    fn start(connector: SessionConnector, budget: Budget) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Queue {
            rx,
            budget: budget.clone(),
        };
        let task = tokio::task::spawn_local(replay(connector, queue));
        Self {
            tx,
            budget,
            task: Some(task),
        }
    }

    /// Queues the connection's next bytes; `false` when the replay is over (the session
    /// refused or closed, or the budget is spent).
    fn push(&self, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return !self.tx.is_closed();
        }
        if !self.budget.take(bytes.len()) {
            tracing::debug!("mirror queue full; a connection is no longer mirrored");
            return false;
        }
        if self.tx.send(Chunk::Data(bytes.to_vec())).is_err() {
            self.budget.give(bytes.len());
            return false;
        }
        true
    }

    /// The stream ended: the replay writes what is queued, then its FIN.
    fn finish(mut self) {
        drop(self.task.take()); // detached: it ends by itself
    }

    /// The connection ended abruptly: the replay resets its connection.
    fn abort(mut self) {
        if self.tx.send(Chunk::Abort).is_ok() {
            drop(self.task.take());
        }
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The replay's end of its queue; gives back the budget of whatever it did not write.
struct Queue {
    rx: mpsc::UnboundedReceiver<Chunk>,
    budget: Budget,
}

impl Queue {
    async fn recv(&mut self) -> Option<Chunk> {
        let chunk = self.rx.recv().await;
        if let Some(Chunk::Data(bytes)) = &chunk {
            self.budget.give(bytes.len());
        }
        chunk
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        self.rx.close();
        while let Ok(chunk) = self.rx.try_recv() {
            if let Chunk::Data(bytes) = chunk {
                self.budget.give(bytes.len());
            }
        }
    }
}

/// How a replay's writing ended.
enum Ended {
    Finished,
    Aborted,
    Failed,
}

/// Opens the connection into the session and writes the queued bytes into it, dropping
/// what the session answers.
async fn replay(connector: SessionConnector, mut queue: Queue) {
    let peer = connector.peer;
    let stream = match connector.open().await {
        Ok(stream) => stream,
        Err(err) => {
            tracing::debug!(%peer, "not mirrored: {err}");
            return;
        }
    };
    let (mut read, mut write) = tokio::io::split(stream);
    let ended = {
        let writer = async {
            loop {
                match queue.recv().await {
                    Some(Chunk::Data(bytes)) => {
                        if write.write_all(&bytes).await.is_err() {
                            return Ended::Failed;
                        }
                    }
                    Some(Chunk::Abort) => return Ended::Aborted,
                    None => return Ended::Finished,
                }
            }
        };
        let reader = drain(&mut read);
        tokio::pin!(writer, reader);
        let mut answered = false;
        loop {
            tokio::select! {
                ended = &mut writer => break ended,
                () = &mut reader, if !answered => answered = true,
            }
        }
    };
    match ended {
        Ended::Finished => {
            let _ = write.shutdown().await;
            let _ = tokio::time::timeout(LINGER, drain(&mut read)).await;
            tracing::debug!(%peer, "mirrored connection done");
        }
        Ended::Aborted => {
            let stream: TcpStream = read.unsplit(write);
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            tracing::debug!(%peer, "mirrored connection reset");
        }
        Ended::Failed => tracing::debug!(%peer, "the session closed a mirrored connection"),
    }
}

/// Reads and drops until the end of the stream or an error.
async fn drain(read: &mut (impl tokio::io::AsyncRead + Unpin)) {
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = read.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

/// A connection being mirrored.
struct Mirrored {
    /// On a filtered port: which requests to replay.
    selector: Option<Selector>,
    /// Opened with the first bytes to replay (at once on an unfiltered port).
    replay: Option<Replay>,
    connector: Option<SessionConnector>,
}

impl Mirrored {
    /// Replays `bytes` (the selected part of them); `false` when the connection is no longer
    /// mirrored.
    fn take(&mut self, bytes: &[u8], budget: &Budget, selected: &mut Vec<u8>) -> bool {
        let bytes = match &mut self.selector {
            None => bytes,
            Some(selector) => {
                selected.clear();
                if selector.feed(bytes, selected).is_err() {
                    return false;
                }
                if selected.is_empty() {
                    return true;
                }
                selected.as_slice()
            }
        };
        if self.replay.is_none() {
            let Some(connector) = self.connector.take() else {
                return false;
            };
            self.replay = Some(Replay::start(connector, budget.clone()));
        }
        self.replay
            .as_ref()
            .is_some_and(|replay| replay.push(bytes))
    }

    fn finish(mut self) {
        if let Some(replay) = self.replay.take() {
            replay.finish();
        }
    }

    fn abort(mut self) {
        if let Some(replay) = self.replay.take() {
            replay.abort();
        }
    }
}

/// The capture loop: rebuilt connections in, replays out, until dropped.
async fn capture(sniffer: Rc<Sniffer>, ports: Rc<RefCell<Ports>>, own: Own) {
    let mut table = FlowTable::new(DEFAULT_IDLE, MAX_FLOWS, DEFAULT_CAP);
    let mut flows: HashMap<FlowKey, Mirrored> = HashMap::new();
    let budget = Budget(Rc::new(Cell::new(MAX_QUEUED)));
    let mut selected = Vec::new();
    let result = sniffer::capture(&sniffer, &mut table, SWEEP, |key, event, bytes| {
        let port = ports.borrow().get(&key.server.port()).cloned();
        let Some(port) = port else {
            // The port is no longer mirrored.
            if let Some(flow) = flows.remove(&key) {
                flow.abort();
            }
            return;
        };
        if event == FlowEvent::Opened {
            let Some(connector) = own.connector(key.client, key.server, port.session_port) else {
                return;
            };
            tracing::debug!(client = %key.client, server = %key.server, "mirroring");
            let mut flow = Mirrored {
                selector: port.filter.map(Selector::new),
                replay: None,
                connector: Some(connector),
            };
            if flow.selector.is_none() {
                // The whole connection: opened into the session at once.
                flow.take(b"", &budget, &mut selected);
            }
            flows.insert(key, flow);
        }
        match event {
            FlowEvent::Opened | FlowEvent::Data => {
                let Some(flow) = flows.get_mut(&key) else {
                    return;
                };
                if !flow.take(bytes, &budget, &mut selected) {
                    if let Some(flow) = flows.remove(&key) {
                        flow.abort();
                    }
                }
            }
            FlowEvent::Finished => {
                if let Some(mut flow) = flows.remove(&key) {
                    if flow.take(bytes, &budget, &mut selected) {
                        flow.finish();
                    } else {
                        flow.abort();
                    }
                }
            }
            FlowEvent::Aborted => {
                if let Some(flow) = flows.remove(&key) {
                    flow.abort();
                }
            }
            FlowEvent::Ignored => {}
        }
    })
    .await;
    if let Err(err) = result {
        tracing::warn!("the mirror's capture failed: {err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let budget = Budget(Rc::new(Cell::new(10)));
        let other = budget.clone();
        assert!(budget.take(6));
        assert!(!other.take(5), "both draw on one budget");
        assert!(other.take(4));
        budget.give(6);
        assert!(other.take(6));
    }

    #[tokio::test]
    async fn queued_bytes_not_written_return_to_the_budget() {
        let budget = Budget(Rc::new(Cell::new(100)));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut queue = Queue {
            rx,
            budget: budget.clone(),
        };
        let replay = Replay {
            tx,
            budget: budget.clone(),
            task: None,
        };
        assert!(replay.push(b"0123456789"));
        assert!(replay.push(b"abcde"));
        assert_eq!(budget.0.get(), 85);
        assert!(matches!(queue.recv().await, Some(Chunk::Data(b)) if b == b"0123456789"));
        assert_eq!(budget.0.get(), 95);
        drop(queue);
        assert_eq!(budget.0.get(), 100, "the unwritten bytes came back");
        assert!(!replay.push(b"x"), "nobody reads any more");
        assert_eq!(budget.0.get(), 100);
        assert!(!replay.push(&[0; 101]), "over the budget");
    }
}
