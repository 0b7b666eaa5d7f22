//! Node-to-node transport of one core: one TCP connection per (node, core) pair carrying
//! length-prefixed flatbuffer `Batch` frames (DESIGN §7). Owns the hello frame that opens
//! every connection (who connects, to whom, for which core), the outgoing link per peer node
//! (connect, reconnect with backoff, a bounded queue that drops when full: Raft retransmits),
//! the reader of an accepted connection (frames limited by size; a bad frame closes that
//! connection with a logged reason).
//!
//! It must not decide anything about Raft: batches go in and out unread beyond validation.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flatbuffers::FlatBufferBuilder;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use thiserror::Error;

use crate::constants::{
    PEER_CONNECT_TIMEOUT_MS, PEER_FRAME_BYTES_MAX, PEER_IDLE_CHECK_US, PEER_QUEUE_FRAMES_MAX,
    PEER_RECONNECT_BACKOFF_MAX_MS, PEER_RECONNECT_BACKOFF_MIN_MS,
};
use crate::ids::{CoreId, NodeId};
use crate::reactor::context::Bell;
use crate::reactor::gather::gather_frames;
use crate::shard::{Batch, BatchError};
use crate::wire::frame::FRAME_HEADER_BYTES;
use crate::wire::{FrameError, FrameHeader, WireError, decode_batch_shared, encode_batch};

/// First bytes of every hello payload: "ringraft peer, version 1".
pub const HELLO_MAGIC: [u8; 4] = *b"RRP1";
/// Payload bytes of a hello: magic, from node, to node, core.
pub const HELLO_BYTES: usize = 4 + 8 + 8 + 2;

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed by the peer")]
    Closed,
    #[error("connection closed in the middle of a frame (truncated frame)")]
    Truncated,
    #[error("bad frame header: {0}")]
    Frame(#[from] FrameError),
    #[error("bad hello: {0}")]
    Hello(String),
    #[error("undecodable batch: {0}")]
    Wire(#[from] WireError),
    #[error("batch refused: {0}")]
    Batch(#[from] BatchError),
    #[error(
        "batch from node {from} to node {to} arrived on the connection of node {expected} to this node"
    )]
    Misrouted {
        from: NodeId,
        to: NodeId,
        expected: NodeId,
    },
}

/// Who opens a connection: the first frame on every peer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub from: NodeId,
    pub to: NodeId,
    pub core: CoreId,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + HELLO_BYTES);
        frame.extend_from_slice(&FrameHeader::encode(HELLO_BYTES));
        frame.extend_from_slice(&HELLO_MAGIC);
        frame.extend_from_slice(&self.from.0.to_le_bytes());
        frame.extend_from_slice(&self.to.0.to_le_bytes());
        frame.extend_from_slice(&self.core.0.to_le_bytes());
        frame
    }

    /// Decodes a hello payload; checks only its shape (the caller checks the ids).
    pub fn decode(payload: &[u8]) -> Result<Hello, PeerError> {
        if payload.len() != HELLO_BYTES {
            return Err(PeerError::Hello(format!(
                "{} bytes, expected {HELLO_BYTES}",
                payload.len()
            )));
        }
        if payload.get(..4) != Some(&HELLO_MAGIC[..]) {
            return Err(PeerError::Hello("wrong magic: not a ringraft peer".into()));
        }
        let u64_at = |at: usize| -> Result<u64, PeerError> {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(
                payload
                    .get(at..at + 8)
                    .ok_or_else(|| PeerError::Hello("short".into()))?,
            );
            Ok(u64::from_le_bytes(bytes))
        };
        let mut core = [0u8; 2];
        core.copy_from_slice(
            payload
                .get(20..22)
                .ok_or_else(|| PeerError::Hello("short".into()))?,
        );
        Ok(Hello {
            from: NodeId(u64_at(4)?),
            to: NodeId(u64_at(12)?),
            core: CoreId(u16::from_le_bytes(core)),
        })
    }
}

/// Encodes a batch as one frame (header and payload), reusing `builder`.
pub fn encode_frame(
    builder: &mut FlatBufferBuilder<'static>,
    batch: &Batch,
    core: CoreId,
) -> Vec<u8> {
    let payload = encode_batch(builder, batch, core);
    let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
    frame.extend_from_slice(&FrameHeader::encode(payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// Reads one frame's payload of at most `payload_bytes_max` bytes. A clean end of stream
/// before a header is `Closed`; an end inside a frame is `Truncated`.
pub async fn read_frame<R: futures_lite::AsyncRead + Unpin>(
    reader: &mut R,
    payload_bytes_max: usize,
) -> Result<Vec<u8>, PeerError> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut filled = 0;
    while filled < FRAME_HEADER_BYTES {
        let count = reader.read(&mut header[filled..]).await?;
        if count == 0 {
            return Err(if filled == 0 {
                PeerError::Closed
            } else {
                PeerError::Truncated
            });
        }
        filled += count;
    }
    let parsed = FrameHeader::parse(&header, payload_bytes_max)?
        .ok_or_else(|| PeerError::Hello("header shorter than its size".into()))?;
    let mut payload = vec![0u8; parsed.payload_bytes];
    reader
        .read_exact(&mut payload)
        .await
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::UnexpectedEof => PeerError::Truncated,
            _ => PeerError::Io(error),
        })?;
    Ok(payload)
}

/// The sending half of the link to one peer node from this core.
pub struct PeerLink {
    hello: Hello,
    queue: LocalSender<Vec<u8>>,
    /// Frames dropped because the queue was full (the peer is slow or unreachable).
    dropped: RefCell<u64>,
    state: Rc<LinkState>,
}

/// What the sending half and the link task both see of the link.
struct LinkState {
    /// Bytes of frames queued and not yet written to the socket (nor lost with a
    /// connection). Counted in bytes because the writer gathers several frames per write.
    unwritten_bytes: Cell<usize>,
    connected: Cell<bool>,
    /// Rung when `unwritten_bytes` reaches zero or the connection goes down.
    settled: Rc<Bell>,
}

impl LinkState {
    fn bytes_done(&self, written_bytes: usize) {
        let unwritten_bytes = self.unwritten_bytes.get();
        assert!(
            written_bytes <= unwritten_bytes,
            "peer link wrote {written_bytes} bytes but only {unwritten_bytes} were queued"
        );
        self.unwritten_bytes.set(unwritten_bytes - written_bytes);
        if unwritten_bytes == written_bytes {
            self.settled.ring();
        }
    }

    fn set_connected(&self, connected: bool) {
        self.connected.set(connected);
        if !connected {
            self.settled.ring();
        }
    }
}

impl PeerLink {
    /// Queues a frame; drops it when the queue is full (Raft retransmits what matters).
    pub fn send(&self, frame: Vec<u8>) {
        let frame_bytes = frame.len();
        if self.queue.try_send(frame).is_ok() {
            let unwritten_bytes = self.state.unwritten_bytes.get();
            self.state
                .unwritten_bytes
                .set(unwritten_bytes + frame_bytes);
        } else {
            let mut dropped = self.dropped.borrow_mut();
            *dropped += 1;
            if dropped.is_power_of_two() {
                tracing::debug!(peer = %self.hello.to, dropped = *dropped, "peer queue full: frames dropped");
            }
        }
    }

    /// Whether every frame given has been written to the socket, or the link is down (its
    /// frames then wait for a reconnection nobody may be around to see).
    pub fn is_flushed(&self) -> bool {
        !self.state.connected.get() || self.state.unwritten_bytes.get() == 0
    }
}

/// Where a link connects, and what it says there.
pub struct LinkTarget {
    pub hello: Hello,
    pub address: SocketAddr,
    /// Set while the connection is up (read by `Status`), when this link reports for its node.
    pub up: Option<Arc<AtomicBool>>,
    /// Rung when the link has written everything it was given or lost its connection.
    pub settled: Rc<Bell>,
}

/// Starts the link task (in the caller's task queue) and returns its sending half.
pub fn spawn_link(target: LinkTarget, queue: glommio::TaskQueueHandle) -> Rc<PeerLink> {
    let (sender, receiver) = local_channel::new_bounded(PEER_QUEUE_FRAMES_MAX);
    let hello = target.hello;
    let node = hello.to;
    let state = Rc::new(LinkState {
        unwritten_bytes: Cell::new(0),
        connected: Cell::new(false),
        settled: target.settled.clone(),
    });
    let task = glommio::spawn_local_into(run_link(target, receiver, state.clone()), queue);
    match task {
        Ok(task) => task.detach(),
        Err(error) => panic!("spawning the link to node {node}: {error}"),
    };
    Rc::new(PeerLink {
        hello,
        queue: sender,
        dropped: RefCell::new(0),
        state,
    })
}

async fn run_link(target: LinkTarget, frames: LocalReceiver<Vec<u8>>, state: Rc<LinkState>) {
    let mut backoff = Duration::from_millis(PEER_RECONNECT_BACKOFF_MIN_MS);
    let mut failures: u64 = 0;
    let peer = target.hello.to;
    let mut gathered = Vec::new();
    // Whether `gathered` holds frames not yet written: kept from a connection found closed.
    let mut held = false;
    loop {
        match connect(&target).await {
            Ok(mut stream) => {
                tracing::info!(peer = %peer,
                    address = %target.address, "peer connection up");
                set_up(&target, true);
                state.set_connected(true);
                backoff = Duration::from_millis(PEER_RECONNECT_BACKOFF_MIN_MS);
                failures = 0;
                let mut last_write = Instant::now();
                let reason = loop {
                    if !std::mem::take(&mut held) && !gather_frames(&frames, &mut gathered).await {
                        return;
                    }
                    if last_write.elapsed() >= Duration::from_micros(PEER_IDLE_CHECK_US)
                        && let Some(reason) = closed_by_peer(&stream)
                    {
                        // Nothing of this write left: it goes out on the next connection.
                        held = true;
                        break reason;
                    }
                    let written = stream.write_all(&gathered).await;
                    last_write = Instant::now();
                    state.bytes_done(gathered.len());
                    if let Err(error) = written {
                        break error;
                    }
                };
                set_up(&target, false);
                state.set_connected(false);
                tracing::warn!(peer = %peer,
                    address = %target.address, error = %reason,
                    "peer connection down; reconnecting (check that node {peer} runs)");
            }
            Err(error) => {
                failures += 1;
                // The first failure and then every 32nd, so a long-dead peer does not flood the log.
                if failures == 1 || failures.is_multiple_of(32) {
                    tracing::warn!(peer = %peer,
                        address = %target.address, %error, failures,
                        "cannot connect to peer; retrying with backoff (is node {peer} started and is --peers right?)");
                }
            }
        }
        glommio::timer::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(PEER_RECONNECT_BACKOFF_MAX_MS));
    }
}

/// Whether the peer has closed this connection (a send-only one: the peer never writes on
/// it, so anything readable is its end), without waiting; returns why.
fn closed_by_peer(stream: &TcpStream) -> Option<std::io::Error> {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: a one-byte peek into a live local; the descriptor belongs to `stream`, which
    // outlives the call.
    let read = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match read {
        0 => Some(std::io::ErrorKind::UnexpectedEof.into()),
        read if read > 0 => None,
        _ => {
            let error = std::io::Error::last_os_error();
            (error.kind() != std::io::ErrorKind::WouldBlock
                && error.kind() != std::io::ErrorKind::Interrupted)
                .then_some(error)
        }
    }
}

fn set_up(target: &LinkTarget, up: bool) {
    if let Some(flag) = &target.up {
        flag.store(up, Ordering::Relaxed);
    }
}

async fn connect(target: &LinkTarget) -> Result<TcpStream, std::io::Error> {
    let stream = TcpStream::connect_timeout(
        target.address,
        Duration::from_millis(PEER_CONNECT_TIMEOUT_MS),
    )
    .await
    .map_err(std::io::Error::from)?;
    stream.set_nodelay(true).map_err(std::io::Error::from)?;
    let mut stream = stream;
    stream.write_all(&target.hello.encode()).await?;
    Ok(stream)
}

/// Checks a hello received by node `me` (with `cores` cores, peers `nodes`).
pub fn check_hello(
    hello: &Hello,
    me: NodeId,
    nodes: &[NodeId],
    cores: usize,
) -> Result<(), PeerError> {
    if hello.to != me {
        return Err(PeerError::Hello(format!(
            "addressed to node {} but this is node {me}: check --peers on node {}",
            hello.to, hello.from
        )));
    }
    if hello.from == me || !nodes.contains(&hello.from) {
        return Err(PeerError::Hello(format!(
            "node {} is not a peer of node {me}: check --peers",
            hello.from
        )));
    }
    if usize::from(hello.core.0) >= cores {
        return Err(PeerError::Hello(format!(
            "core {} from node {} but this node runs {cores} cores: every node needs the same --cores",
            hello.core, hello.from
        )));
    }
    Ok(())
}

/// Reads batches from an accepted peer connection (hello already read) and hands each to
/// `deliver` until the connection ends or a frame is bad.
pub async fn read_batches<R, F, Fut>(reader: &mut R, hello: Hello, mut deliver: F) -> PeerError
where
    R: futures_lite::AsyncRead + Unpin,
    F: FnMut(Batch) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let payload = match read_frame(reader, PEER_FRAME_BYTES_MAX).await {
            Ok(payload) => payload,
            Err(error) => return error,
        };
        let payload = bytes::Bytes::from(payload);
        let (core, batch) = match decode_batch_shared(&payload) {
            Ok(decoded) => decoded,
            Err(error) => return PeerError::Wire(error),
        };
        if let Err(error) = batch.validate() {
            return PeerError::Batch(error);
        }
        if batch.from != hello.from || batch.to != hello.to || core != hello.core {
            return PeerError::Misrouted {
                from: batch.from,
                to: batch.to,
                expected: hello.from,
            };
        }
        deliver(batch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_bad_hellos_are_named() {
        // A hello decodes to what was encoded; wrong sizes, magic and ids are refused.
        let hello = Hello {
            from: NodeId(2),
            to: NodeId(1),
            core: CoreId(3),
        };
        let frame = hello.encode();
        assert_eq!(
            Hello::decode(&frame[FRAME_HEADER_BYTES..]).expect("valid"),
            hello
        );
        assert!(Hello::decode(&frame[FRAME_HEADER_BYTES + 1..]).is_err());
        let mut bad = frame[FRAME_HEADER_BYTES..].to_vec();
        bad[0] = b'X';
        assert!(Hello::decode(&bad).is_err());
        let nodes = [NodeId(1), NodeId(2)];
        assert!(check_hello(&hello, NodeId(1), &nodes, 4).is_ok());
        assert!(check_hello(&hello, NodeId(1), &nodes, 3).is_err());
        assert!(check_hello(&hello, NodeId(2), &nodes, 4).is_err());
        assert!(check_hello(&hello, NodeId(1), &[NodeId(1)], 4).is_err());
    }

    #[test]
    fn a_frame_for_a_restarted_peer_goes_out_on_a_new_connection() {
        // The peer closes the link's connection (its process exited) and listens again: the
        // next frame, sent after the link sat idle, is not written into the closed connection
        // (where it would be lost) but reaches the peer over a new one.
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let hello = Hello {
            from: NodeId(2),
            to: NodeId(1),
            core: CoreId(0),
        };
        let hello_bytes = hello.encode().len();
        let first_closed = Arc::new(AtomicBool::new(false));
        let closed = Arc::clone(&first_closed);
        let peer = std::thread::spawn(move || {
            let read_hello = |stream: &mut std::net::TcpStream| {
                let mut bytes = vec![0u8; hello_bytes];
                stream.read_exact(&mut bytes).expect("hello");
            };
            let (mut first, _) = listener.accept().expect("first connection");
            read_hello(&mut first);
            drop(first);
            closed.store(true, Ordering::Release);
            listener.set_nonblocking(true).expect("nonblocking");
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut second = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() >= deadline {
                            return Err(error);
                        }
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(error) => return Err(error),
                }
            };
            second.set_nonblocking(false).expect("blocking");
            second
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            read_hello(&mut second);
            let mut frame = [0u8; 5];
            second.read_exact(&mut frame).map(|()| frame)
        });
        let config = crate::reactor::executor::ExecutorConfig::new("test-link");
        let handle = crate::reactor::executor::spawn_executor(&config, move || async move {
            let target = LinkTarget {
                hello,
                address,
                up: None,
                settled: Bell::new(),
            };
            let link = spawn_link(target, glommio::executor().current_task_queue());
            let deadline = Instant::now() + Duration::from_secs(20);
            while !first_closed.load(Ordering::Acquire) {
                assert!(
                    Instant::now() < deadline,
                    "the peer never closed the first connection"
                );
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            // The close reaches this end and the link has been idle past its check.
            glommio::timer::sleep(Duration::from_millis(5)).await;
            link.send(b"frame".to_vec());
            // Keep the executor, and with it the link, alive until the peer has read.
            while !link.is_flushed() || link.state.unwritten_bytes.get() > 0 {
                assert!(Instant::now() < deadline, "the frame was never written");
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        })
        .expect("executor starts");
        handle.join().expect("no panic");
        let frame = peer
            .join()
            .expect("peer thread")
            .expect("frame read on the new connection");
        assert_eq!(&frame, b"frame");
    }

    #[test]
    fn a_batch_survives_the_wire() {
        // A batch with coalesced beats encodes to a frame whose payload decodes unchanged.
        let mut batch = Batch::new(NodeId(1), NodeId(2));
        let message = |body| crate::raft::types::Message {
            from: NodeId(1),
            to: NodeId(2),
            term: crate::ids::Term(3),
            body,
        };
        batch.push(
            crate::ids::GroupId(5),
            message(crate::raft::types::MessageBody::Heartbeat {
                commit: crate::ids::LogIndex(4),
                read_round: None,
            }),
        );
        let mut builder = FlatBufferBuilder::new();
        let frame = encode_frame(&mut builder, &batch, CoreId(1));
        let decoded = crate::wire::decode_batch(&frame[FRAME_HEADER_BYTES..]).expect("decodes");
        assert_eq!(decoded, (CoreId(1), batch));
    }
}
