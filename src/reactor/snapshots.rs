//! The snapshot I/O of one core (thesis chapter 5), carrying out what the shard decides:
//! - writing the snapshots the shard takes, chunk by chunk, into `DmaSnapshotStore` files
//!   (durable under their final name, then the older ones beyond `SNAPSHOTS_KEPT` removed);
//! - streaming a snapshot file to a follower the leader offered it to: chunks of
//!   `SNAPSHOT_CHUNK_BYTES` read with direct I/O, at most `SNAPSHOT_SEND_WINDOW_CHUNKS`
//!   unacknowledged, paced by the core's bandwidth cap (so live traffic keeps its share of
//!   the disk and the network), sent again from the last acknowledged byte when
//!   acknowledgements stop, given up after `SNAPSHOT_STALL_MS` without progress;
//! - staging a snapshot a leader streams to this node: chunks taken in order into a
//!   temporary file and a decoder at once, acknowledged with the bytes held (a transfer cut
//!   by a dropped connection resumes there), and once complete, made durable and handed to
//!   the shard with the decoded state machine; its file removed if the group did not take
//!   it (`SnapshotWrite::Discard`).
//!
//! It must not decide when to snapshot, what to offer or whether to install: the shard does.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::io::DmaFile;

use crate::constants::{
    SNAPSHOT_CHUNK_BYTES, SNAPSHOT_RESEND_MS, SNAPSHOT_SEND_WINDOW_CHUNKS, SNAPSHOT_STALL_MS,
    SNAPSHOTS_KEPT,
};
use crate::ids::{GroupId, NodeId};
use crate::kv::snapshot::SnapshotDecoder;
use crate::kv::store::{SnapshotId, SnapshotStore, SnapshotWriter, remove_old};
use crate::raft::{Message, MessageBody, SnapshotMeta, SnapshotStatus};
use crate::reactor::context::{CoreContext, Input};
use crate::reactor::peer::{PeerLink, encode_frame};
use crate::reactor::shard_api::SnapshotWrite;
use crate::reactor::snapstore::{DmaSnapshotStore, DmaSnapshotWriter};
use crate::wire::batch::{Batch, SnapshotAck, SnapshotChunk};

/// What the driver hands the snapshot tasks.
pub enum SnapshotJob {
    Write(SnapshotWrite),
    /// The leader offers the group's snapshot (`InstallSnapshot`) to the message's `to`.
    Offer(GroupId, Message),
    Chunk(NodeId, SnapshotChunk),
    Ack(NodeId, SnapshotAck),
}

/// Paces snapshot sends of one core to a number of bytes per second.
struct Pacer {
    bytes_per_second: u64,
    next_free: Cell<Instant>,
}

impl Pacer {
    async fn acquire(&self, bytes: usize) {
        let now = Instant::now();
        let start = self.next_free.get().max(now);
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second.max(1) as f64);
        self.next_free.set(start + cost);
        if start > now {
            glommio::timer::sleep(start - now).await;
        }
    }
}

/// One outgoing transfer, shared between its task and the acknowledgements.
struct Outgoing {
    generation: u64,
    /// Bytes the receiver said it holds.
    acked: Cell<u64>,
    /// The receiver gave the snapshot up.
    refused: Cell<bool>,
    /// The offset to send next, when the receiver asked to go back or skip ahead.
    rewind: Cell<Option<u64>>,
    doorbell: LocalSender<()>,
}

/// How many tasks are in a section per group: the sends opening a group's snapshot file, or
/// the tasks removing its old files.
#[derive(Default)]
struct GroupCounts(RefCell<HashMap<GroupId, usize>>);

impl GroupCounts {
    fn enter(&self, group: GroupId) {
        *self.0.borrow_mut().entry(group).or_insert(0) += 1;
    }

    fn leave(&self, group: GroupId) {
        let mut counts = self.0.borrow_mut();
        let count = counts.entry(group).or_insert(0);
        assert!(*count > 0, "group {group} left a section it never entered");
        *count -= 1;
        if *count == 0 {
            counts.remove(&group);
        }
    }

    fn busy(&self, group: GroupId) -> bool {
        self.0.borrow().contains_key(&group)
    }
}

/// The snapshot tasks' shared state.
pub struct Snapshots {
    context: Rc<CoreContext>,
    store: Rc<DmaSnapshotStore>,
    peers: HashMap<NodeId, Rc<PeerLink>>,
    pacer: Pacer,
    writes: LocalSender<SnapshotWrite>,
    chunks: LocalSender<(NodeId, SnapshotChunk)>,
    outgoing: RefCell<HashMap<(GroupId, NodeId), Rc<Outgoing>>>,
    next_generation: Cell<u64>,
    /// glommio 0.9's `DmaFile::open` calls `statfs` on the path after the open completes and
    /// panics if the file is gone by then (`io/dma_file.rs`, `open_at`): a send opening a
    /// group's snapshot file and the removal of that group's old files must never overlap.
    opening: GroupCounts,
    removing: GroupCounts,
}

impl Snapshots {
    /// Starts the writer and the receiver tasks of the core in `queue`.
    pub fn start(
        context: Rc<CoreContext>,
        store: Rc<DmaSnapshotStore>,
        peers: HashMap<NodeId, Rc<PeerLink>>,
        bytes_per_second: u64,
        queue: glommio::TaskQueueHandle,
    ) -> Rc<Snapshots> {
        let (writes, write_ring) = local_channel::new_unbounded();
        let (chunks, chunk_ring) = local_channel::new_unbounded();
        let snapshots = Rc::new(Snapshots {
            context,
            store,
            peers,
            pacer: Pacer {
                bytes_per_second,
                next_free: Cell::new(Instant::now()),
            },
            writes,
            chunks,
            outgoing: RefCell::new(HashMap::new()),
            next_generation: Cell::new(1),
            opening: GroupCounts::default(),
            removing: GroupCounts::default(),
        });
        spawn(snapshots.clone().run_writer(write_ring), queue);
        spawn(snapshots.clone().run_receiver(chunk_ring), queue);
        snapshots
    }

    pub fn handle(self: &Rc<Self>, job: SnapshotJob) {
        match job {
            SnapshotJob::Write(write) => {
                let _ = self.writes.try_send(write);
            }
            SnapshotJob::Chunk(from, chunk) => {
                let _ = self.chunks.try_send((from, chunk));
            }
            SnapshotJob::Ack(from, ack) => self.on_ack(from, ack),
            SnapshotJob::Offer(group, offer) => self.start_send(group, offer),
        }
    }

    // ---- Writing the snapshots this core takes ----

    async fn run_writer(self: Rc<Self>, ring: LocalReceiver<SnapshotWrite>) {
        let mut writers: HashMap<SnapshotId, DmaSnapshotWriter> = HashMap::new();
        let mut failed: HashSet<SnapshotId> = HashSet::new();
        while let Some(write) = ring.recv().await {
            match write {
                SnapshotWrite::Abort { id } => {
                    if let Some(writer) = writers.remove(&id) {
                        let _ = writer.abort().await;
                    }
                }
                SnapshotWrite::Discard { id } => self.discard(id).await,
                SnapshotWrite::Chunk { id, chunk, last } => {
                    if failed.contains(&id) {
                        continue;
                    }
                    let result = self.write_chunk(&mut writers, id, &chunk, last).await;
                    self.context.push(Input::SnapshotChunkWritten(id));
                    match result {
                        Ok(false) => {}
                        Ok(true) => self.context.push(Input::SnapshotWritten(id, Ok(()))),
                        Err(reason) => {
                            failed.insert(id);
                            if let Some(writer) = writers.remove(&id) {
                                let _ = writer.abort().await;
                            }
                            self.context.push(Input::SnapshotWritten(id, Err(reason)));
                        }
                    }
                }
            }
        }
    }

    /// Writes one chunk; `Ok(true)` once the file is durable under its name.
    async fn write_chunk(
        &self,
        writers: &mut HashMap<SnapshotId, DmaSnapshotWriter>,
        id: SnapshotId,
        chunk: &[u8],
        last: bool,
    ) -> Result<bool, String> {
        let writer = match writers.entry(id) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(self.store.begin(id).await.map_err(|e| e.to_string())?)
            }
        };
        writer.write(chunk).await.map_err(|e| e.to_string())?;
        if !last {
            return Ok(false);
        }
        let Some(writer) = writers.remove(&id) else {
            return Err(format!("snapshot {id}: writer lost"));
        };
        writer.finish().await.map_err(|e| e.to_string())?;
        self.remove_old(id.group).await;
        Ok(true)
    }

    /// Removes a received snapshot the group did not take. Unlike `remove_old` it does not
    /// leave the file to a later snapshot (it is newer than the group's, so `remove_old`
    /// would keep it): it waits for sends opening a file of the group, which are short.
    async fn discard(&self, id: SnapshotId) {
        while self.opening.busy(id.group) {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.removing.enter(id.group);
        let removed = self.store.remove(id).await;
        self.removing.leave(id.group);
        if let Err(error) = removed {
            tracing::warn!(group = %id.group, index = %id.last.index, %error,
                "removing a received snapshot the group did not take failed; it takes disk \
                 space until a later snapshot removes it");
        }
    }

    async fn remove_old(&self, group: GroupId) {
        if self.opening.busy(group) {
            // The next snapshot of the group removes what this one leaves.
            tracing::debug!(%group, "old snapshot files kept: a send is opening one");
            return;
        }
        self.removing.enter(group);
        let removed = remove_old(self.store.as_ref(), group, SNAPSHOTS_KEPT).await;
        self.removing.leave(group);
        if let Err(error) = removed {
            tracing::warn!(%group, %error,
                "removing old snapshot files failed; they take disk space until the next \
                 snapshot removes them");
        }
    }

    // ---- Sending a snapshot to a follower ----

    fn start_send(self: &Rc<Self>, group: GroupId, offer: Message) {
        let to = offer.to;
        let generation = self.next_generation.get();
        self.next_generation.set(generation + 1);
        let (doorbell, ring) = local_channel::new_bounded(1);
        let outgoing = Rc::new(Outgoing {
            generation,
            acked: Cell::new(0),
            refused: Cell::new(false),
            rewind: Cell::new(None),
            doorbell,
        });
        self.outgoing
            .borrow_mut()
            .insert((group, to), outgoing.clone());
        let queue = self.context.raft_queue;
        spawn(self.clone().send(group, offer, outgoing, ring), queue);
    }

    fn on_ack(&self, from: NodeId, ack: SnapshotAck) {
        let outgoing = self.outgoing.borrow().get(&(ack.group, from)).cloned();
        let Some(outgoing) = outgoing else {
            return;
        };
        if ack.refused {
            outgoing.refused.set(true);
        } else if ack.received_bytes != outgoing.acked.get() {
            if ack.received_bytes < outgoing.acked.get() {
                // The receiver lost what it had staged (it restarted): start over there.
                outgoing.rewind.set(Some(ack.received_bytes));
            }
            outgoing.acked.set(ack.received_bytes);
        }
        let _ = outgoing.doorbell.try_send(());
    }

    async fn send(
        self: Rc<Self>,
        group: GroupId,
        offer: Message,
        outgoing: Rc<Outgoing>,
        ring: LocalReceiver<()>,
    ) {
        let to = offer.to;
        let status = match self.stream(group, &offer, &outgoing, &ring).await {
            Ok(()) => SnapshotStatus::Finished,
            Err(reason) => {
                tracing::warn!(%group, peer = %to, %reason,
                    "sending a snapshot failed; the leader offers it again after a heartbeat");
                SnapshotStatus::Failed
            }
        };
        let mut outgoing_map = self.outgoing.borrow_mut();
        let current = outgoing_map
            .get(&(group, to))
            .is_some_and(|o| o.generation == outgoing.generation);
        if current {
            outgoing_map.remove(&(group, to));
            drop(outgoing_map);
            self.context.push(Input::SnapshotSent(group, to, status));
        }
    }

    async fn stream(
        &self,
        group: GroupId,
        offer: &Message,
        outgoing: &Outgoing,
        ring: &LocalReceiver<()>,
    ) -> Result<(), String> {
        let MessageBody::InstallSnapshot { snapshot } = &offer.body else {
            return Err(format!("not a snapshot offer: {:?}", offer.body));
        };
        let id = SnapshotId {
            group,
            last: snapshot.last,
        };
        let path = self.store.path_of(id);
        while self.removing.busy(group) {
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        self.opening.enter(group);
        let opened = DmaFile::open(&path).await;
        self.opening.leave(group);
        let file = opened.map_err(|e| format!("opening {}: {e}", path.display()))?;
        let result = self
            .stream_file(group, offer, snapshot, &file, outgoing, ring)
            .await;
        let _ = file.close().await;
        if result.is_ok() {
            tracing::info!(%group, peer = %offer.to, index = %snapshot.last.index,
                "snapshot sent");
        }
        result
    }

    async fn stream_file(
        &self,
        group: GroupId,
        offer: &Message,
        snapshot: &SnapshotMeta,
        file: &DmaFile,
        outgoing: &Outgoing,
        ring: &LocalReceiver<()>,
    ) -> Result<(), String> {
        let to = offer.to;
        let Some(link) = self.peers.get(&to).cloned() else {
            return Err(format!("node {to} is not a peer"));
        };
        let total = file
            .file_size()
            .await
            .map_err(|e| format!("size of the snapshot file: {e}"))?;
        tracing::info!(%group, peer = %to, index = %snapshot.last.index, bytes = total,
            "sending a snapshot");
        let window = (SNAPSHOT_SEND_WINDOW_CHUNKS * SNAPSHOT_CHUNK_BYTES) as u64;
        let mut next = 0u64;
        let mut last_progress = Instant::now();
        let mut best_acked = 0u64;
        let mut builder = FlatBufferBuilder::new();
        loop {
            if self.superseded(group, to, outgoing) {
                return Err("a newer offer of the group replaced this transfer".into());
            }
            if outgoing.refused.get() {
                return Err("the receiver refused the snapshot".into());
            }
            let acked = outgoing.acked.get();
            if acked >= total {
                return Ok(());
            }
            if acked > best_acked {
                best_acked = acked;
                last_progress = Instant::now();
            }
            if let Some(offset) = outgoing.rewind.take() {
                next = offset;
            }
            next = next.max(acked);
            if last_progress.elapsed() >= Duration::from_millis(SNAPSHOT_STALL_MS) {
                return Err(format!(
                    "no progress for {SNAPSHOT_STALL_MS} ms ({acked} of {total} bytes acknowledged)"
                ));
            }
            if next < total && next - acked < window {
                let len = (total - next).min(SNAPSHOT_CHUNK_BYTES as u64) as usize;
                self.pacer.acquire(len).await;
                let data = file
                    .read_at(next, len)
                    .await
                    .map_err(|e| format!("reading the snapshot file at {next}: {e}"))?;
                if data.len() != len {
                    return Err(format!(
                        "the snapshot file ended at {} of {total} bytes",
                        next + data.len() as u64
                    ));
                }
                let mut batch = Batch::new(self.context.node, to);
                batch.snapshot_chunks.push(SnapshotChunk {
                    group,
                    term: offer.term,
                    snapshot: snapshot.clone(),
                    offset: next,
                    total_bytes: total,
                    data: Bytes::copy_from_slice(&data),
                });
                link.send(encode_frame(&mut builder, &batch, self.context.core));
                next += len as u64;
                continue;
            }
            // The window is full (or everything is sent): wait for an acknowledgement; none
            // for a while means chunks were lost, so send again from the last acknowledged.
            let resend = Duration::from_millis(SNAPSHOT_RESEND_MS);
            let woke = futures_lite::future::or(async { ring.recv().await.is_some() }, async {
                glommio::timer::sleep(resend).await;
                false
            })
            .await;
            if !woke {
                next = outgoing.acked.get();
            }
        }
    }

    fn superseded(&self, group: GroupId, to: NodeId, outgoing: &Outgoing) -> bool {
        self.outgoing
            .borrow()
            .get(&(group, to))
            .is_none_or(|o| o.generation != outgoing.generation)
    }

    // ---- Staging a snapshot a leader streams here ----

    async fn run_receiver(self: Rc<Self>, ring: LocalReceiver<(NodeId, SnapshotChunk)>) {
        let mut staging: HashMap<GroupId, Staging> = HashMap::new();
        let mut completed: HashMap<GroupId, (SnapshotId, u64)> = HashMap::new();
        let mut builder = FlatBufferBuilder::new();
        while let Some((from, chunk)) = ring.recv().await {
            let group = chunk.group;
            let id = SnapshotId {
                group,
                last: chunk.snapshot.last,
            };
            // A new transfer of a snapshot staged before (its offer was not taken then, and
            // the leader offers it again) is staged again; a late resend is acknowledged.
            if chunk.offset == 0 && completed.get(&group).is_some_and(|(done, _)| *done == id) {
                completed.remove(&group);
            }
            let answer = if completed.get(&group).is_some_and(|(done, _)| *done == id) {
                let total = completed.get(&group).map_or(0, |(_, total)| *total);
                Answer::Received(total)
            } else {
                self.stage(&mut staging, &mut completed, from, id, chunk)
                    .await
            };
            let (received_bytes, refused) = match answer {
                Answer::Received(bytes) => (bytes, false),
                Answer::Refused => (0, true),
            };
            let mut batch = Batch::new(self.context.node, from);
            batch.snapshot_acks.push(SnapshotAck {
                group,
                last: id.last,
                received_bytes,
                refused,
            });
            if let Some(link) = self.peers.get(&from) {
                link.send(encode_frame(&mut builder, &batch, self.context.core));
            }
        }
    }

    async fn stage(
        &self,
        staging: &mut HashMap<GroupId, Staging>,
        completed: &mut HashMap<GroupId, (SnapshotId, u64)>,
        from: NodeId,
        id: SnapshotId,
        chunk: SnapshotChunk,
    ) -> Answer {
        let group = id.group;
        if let Some(current) = staging.get(&group)
            && current.id != id
        {
            if id.last.index <= current.id.last.index {
                // An older snapshot than the one being staged: its sender should stop.
                return Answer::Refused;
            }
            if let Some(old) = staging.remove(&group) {
                tracing::info!(%group, index = %old.id.last.index,
                    "a newer snapshot replaces the one being received");
                let _ = old.writer.abort().await;
            }
        }
        if let std::collections::hash_map::Entry::Vacant(vacant) = staging.entry(group) {
            if chunk.offset != 0 {
                return Answer::Received(0);
            }
            let writer = match self.store.begin(id).await {
                Ok(writer) => writer,
                Err(error) => {
                    tracing::warn!(%group, %error, "cannot stage a snapshot from the leader");
                    return Answer::Refused;
                }
            };
            tracing::info!(%group, leader = %from, index = %id.last.index,
                bytes = chunk.total_bytes, "receiving a snapshot");
            vacant.insert(Staging {
                id,
                writer,
                decoder: SnapshotDecoder::new(),
                received: 0,
                started: Instant::now(),
            });
        }
        let Some(current) = staging.get_mut(&group) else {
            return Answer::Refused;
        };
        if chunk.offset != current.received {
            return Answer::Received(current.received);
        }
        let fed = match current.decoder.feed(&chunk.data) {
            Ok(()) => current
                .writer
                .write(&chunk.data)
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(reason) = fed {
            return self.give_up(staging, group, &reason).await;
        }
        current.received += chunk.data.len() as u64;
        let received = current.received;
        if received < chunk.total_bytes {
            return Answer::Received(received);
        }
        let Some(done) = staging.remove(&group) else {
            return Answer::Refused;
        };
        let started = done.started;
        if let Err(error) = done.writer.finish().await {
            tracing::warn!(%group, %error, "making a received snapshot durable failed");
            return Answer::Refused;
        }
        let restored = match done.decoder.finish() {
            Ok(restored) => restored,
            Err(error) => {
                tracing::warn!(%group, %error, "a received snapshot does not decode");
                let _ = self.store.remove(id).await;
                return Answer::Refused;
            }
        };
        if restored.header.group != group || restored.header.meta != chunk.snapshot {
            tracing::warn!(%group, "a received snapshot's header does not match its offer");
            let _ = self.store.remove(id).await;
            return Answer::Refused;
        }
        tracing::info!(%group, index = %id.last.index, bytes = received,
            keys = restored.header.key_count, millis = started.elapsed().as_millis() as u64,
            "received a snapshot");
        self.remove_old(group).await;
        completed.insert(group, (id, received));
        let offer = Message {
            from,
            to: self.context.node,
            term: chunk.term,
            body: MessageBody::InstallSnapshot {
                snapshot: chunk.snapshot,
            },
        };
        self.context
            .push(Input::SnapshotStaged(group, offer, restored.machine));
        Answer::Received(received)
    }

    async fn give_up(
        &self,
        staging: &mut HashMap<GroupId, Staging>,
        group: GroupId,
        reason: &str,
    ) -> Answer {
        tracing::warn!(%group, %reason, "giving up a snapshot being received");
        if let Some(old) = staging.remove(&group) {
            let _ = old.writer.abort().await;
        }
        Answer::Refused
    }
}

enum Answer {
    Received(u64),
    Refused,
}

/// A snapshot being received.
struct Staging {
    id: SnapshotId,
    writer: DmaSnapshotWriter,
    decoder: SnapshotDecoder,
    received: u64,
    started: Instant,
}

fn spawn<F: std::future::Future<Output = ()> + 'static>(
    future: F,
    queue: glommio::TaskQueueHandle,
) {
    match glommio::spawn_local_into(future, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(error) => tracing::error!(%error, "cannot start a snapshot task"),
    }
}
