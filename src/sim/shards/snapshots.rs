//! The snapshot I/O of one simulated core, doing what `reactor/snapshots.rs` does for a real
//! one, over the core's `SimSnapshotStore` and the simulated network:
//! - writing the snapshots the shard takes, chunk by chunk (each chunk durable some rounds
//!   later, drawn from the seed), then removing the files beyond `SNAPSHOTS_KEPT`;
//! - streaming a snapshot file to the follower a leader offered it to: chunks of a size drawn
//!   per transfer, at most `SIM_SNAPSHOT_WINDOW_CHUNKS` unacknowledged, sent again from the
//!   last acknowledged byte after `SIM_SNAPSHOT_RESEND_TICKS` without an acknowledgement,
//!   reported failed after `SIM_SNAPSHOT_STALL_TICKS` without progress, finished once the
//!   receiver holds every byte: every offer is reported unless a newer offer of the same group
//!   to the same node replaces it (that one is reported);
//! - staging a snapshot a leader streams here into a temporary file and a decoder at once,
//!   acknowledging the bytes held, and once complete and durable, handing it to the shard;
//! - restarting a group from the newest snapshot that loads, like `reactor/server.rs`.
//!
//! A store operation that fails because the simulated power was cut ends the core's work: the
//! cluster then crashes the whole node. This file must not decide when to snapshot, what to
//! offer or whether to install (the shard does), and must not draw randomness but from the
//! seeded `Prng` it is handed, nor read any clock but the simulated tick count.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use thiserror::Error;

use crate::constants::{
    SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MAX, SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MIN,
    SIM_SNAPSHOT_RESEND_TICKS, SIM_SNAPSHOT_STALL_TICKS, SIM_SNAPSHOT_WINDOW_CHUNKS,
    SNAPSHOTS_KEPT,
};
use crate::ids::{GroupId, LogIndex, NodeId, Term};
use crate::kv::snapshot::SnapshotDecoder;
use crate::kv::store::{
    SnapshotId, SnapshotReader, SnapshotStore, SnapshotWriter, StoreError, load_newest, remove_old,
};
use crate::log::RestoredGroup;
use crate::prng::Prng;
use crate::raft::{Message, MessageBody, SnapshotMeta, SnapshotStatus};
use crate::shard::core::{GroupRestart, Shard, SnapshotWrite};
use crate::sim::disk::block_on;
use crate::sim::snapstore::{SimSnapshotStore, SimSnapshotWriter};
use crate::wire::batch::{Batch, SnapshotAck, SnapshotChunk};

#[derive(Debug, Error)]
pub enum SimSnapshotError {
    /// The store lost power in the middle of an operation: the node must crash now.
    #[error("the snapshot store lost power: {0}")]
    PowerCut(StoreError),
}

/// What the simulated cluster's snapshots did, for tests to assert on and runs to print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Snapshots the shards took and made durable (`SnapshotTaken` events).
    pub taken: u64,
    /// Snapshots received from a leader that became a group's state (`SnapshotInstalled`).
    pub installed: u64,
    /// Snapshots the shards failed to take (`SnapshotFailed`).
    pub take_failed: u64,
    /// Staged snapshots the Raft core refused (`SnapshotRefused`).
    pub refused: u64,
    /// Offers the senders streamed to the end, and those they reported failed.
    pub sent_finished: u64,
    pub sent_failed: u64,
    /// Offers whose snapshot file the leader's store did not hold.
    pub offers_without_file: u64,
    /// Snapshots received completely, made durable and handed to the shard.
    pub staged: u64,
    /// Nodes crashed by a power cut of a snapshot store.
    pub power_cuts: u64,
    /// Snapshot files skipped at a restart because they did not load (corrupt or torn).
    pub skipped_at_restart: u64,
    /// Groups restarted from a snapshot file.
    pub restored_from_snapshot: u64,
    /// Groups restarted empty because no snapshot that loads continues their WAL.
    pub groups_lost: u64,
    /// WAL segments freed by purges after compactions.
    pub segments_purged: u64,
}

/// One outgoing transfer of a snapshot file to a follower.
#[derive(Debug)]
struct Outgoing {
    /// The leader's term when it offered the snapshot.
    term: Term,
    snapshot: SnapshotMeta,
    bytes: Bytes,
    chunk_bytes: u64,
    /// The offset to send next.
    next: u64,
    /// Bytes the receiver last said it holds.
    acked: u64,
    /// The most bytes the receiver ever said it held: progress is exceeding it.
    acked_best: u64,
    last_progress_tick: u64,
    last_ack_tick: u64,
    refused: bool,
}

/// A snapshot being received.
#[derive(Debug)]
struct Staging {
    id: SnapshotId,
    writer: SimSnapshotWriter,
    decoder: SnapshotDecoder,
    received: u64,
}

/// The receiver's answer to one chunk.
enum Answer {
    Received(u64),
    Refused,
}

/// The snapshot I/O state of one simulated core; lost in a crash, like the reactor's tasks.
#[derive(Debug)]
pub struct CoreSnapshots {
    node: NodeId,
    store: SimSnapshotStore,
    /// Writes handed out by the shard, in order, each with the round it is carried out at.
    writes: VecDeque<(u64, SnapshotWrite)>,
    writers: BTreeMap<SnapshotId, SimSnapshotWriter>,
    /// Snapshots whose write failed: their later chunks are dropped.
    failed: BTreeSet<SnapshotId>,
    outgoing: BTreeMap<(GroupId, NodeId), Outgoing>,
    staging: BTreeMap<GroupId, Staging>,
    /// The last snapshot each group staged completely, with its size.
    completed: BTreeMap<GroupId, (SnapshotId, u64)>,
}

impl CoreSnapshots {
    pub fn new(node: NodeId, store: SimSnapshotStore) -> CoreSnapshots {
        CoreSnapshots {
            node,
            store,
            writes: VecDeque::new(),
            writers: BTreeMap::new(),
            failed: BTreeSet::new(),
            outgoing: BTreeMap::new(),
            staging: BTreeMap::new(),
            completed: BTreeMap::new(),
        }
    }

    /// Whether a snapshot is being written or received: a power cut now lands in the middle.
    pub fn busy(&self) -> bool {
        !self.writes.is_empty() || !self.writers.is_empty() || !self.staging.is_empty()
    }

    /// A store error: a power cut ends the core's work; any other is returned as a reason.
    fn fatal(&self, error: StoreError) -> Result<String, SimSnapshotError> {
        if self.store.power_is_cut() {
            Err(SimSnapshotError::PowerCut(error))
        } else {
            Ok(error.to_string())
        }
    }

    // ---- Writing the snapshots this core takes ----

    /// Queues a write of the shard, carried out at round `at` (never before an earlier one).
    pub fn queue_write(&mut self, at: u64, write: SnapshotWrite) {
        let after = self.writes.back().map_or(0, |(due, _)| *due);
        self.writes.push_back((at.max(after), write));
    }

    /// Carries out the writes due by round `now`, answering the shard.
    pub fn run_writes(&mut self, now: u64, shard: &mut Shard) -> Result<(), SimSnapshotError> {
        while self.writes.front().is_some_and(|(at, _)| *at <= now) {
            let Some((_, write)) = self.writes.pop_front() else {
                break;
            };
            self.write_one(write, shard)?;
        }
        Ok(())
    }

    fn write_one(
        &mut self,
        write: SnapshotWrite,
        shard: &mut Shard,
    ) -> Result<(), SimSnapshotError> {
        let (id, chunk, last) = match write {
            SnapshotWrite::Abort { id } => {
                if let Some(writer) = self.writers.remove(&id)
                    && let Err(error) = block_on(writer.abort())
                {
                    self.fatal(error)?;
                }
                return Ok(());
            }
            SnapshotWrite::Discard { id } => {
                // Any failure but a power cut leaves the file (the reactor only warns).
                if let Err(error) = block_on(self.store.remove(id)) {
                    self.fatal(error)?;
                }
                return Ok(());
            }
            SnapshotWrite::Chunk { id, chunk, last } => (id, chunk, last),
        };
        if self.failed.contains(&id) {
            return Ok(());
        }
        let result = self.write_chunk(id, &chunk, last);
        shard.on_snapshot_chunk_written(id);
        match result {
            Ok(false) => {}
            Ok(true) => {
                if let Err(error) = block_on(remove_old(&self.store, id.group, SNAPSHOTS_KEPT)) {
                    // Old files take space until the next snapshot removes them.
                    self.fatal(error)?;
                }
                shard.on_snapshot_written(id, Ok(()));
            }
            Err(error) => {
                let reason = self.fatal(error)?;
                self.failed.insert(id);
                if let Some(writer) = self.writers.remove(&id)
                    && let Err(error) = block_on(writer.abort())
                {
                    self.fatal(error)?;
                }
                shard.on_snapshot_written(id, Err(reason));
            }
        }
        Ok(())
    }

    /// Writes one chunk; `Ok(true)` once the file is durable under its name.
    fn write_chunk(
        &mut self,
        id: SnapshotId,
        chunk: &[u8],
        last: bool,
    ) -> Result<bool, StoreError> {
        let writer = match self.writers.entry(id) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(block_on(self.store.begin(id))?)
            }
        };
        block_on(writer.write(chunk))?;
        if !last {
            return Ok(false);
        }
        let Some(writer) = self.writers.remove(&id) else {
            panic!("sim snapshots: the writer of {id} vanished");
        };
        block_on(writer.finish())?;
        Ok(true)
    }

    // ---- Sending a snapshot to a follower ----

    /// A leader's offer: reads the whole file (as the reactor holds it open, a later removal
    /// does not cut the transfer) and starts streaming it, replacing an earlier transfer of
    /// the group to the same node. A file that is not there fails the offer at once.
    pub fn offer(
        &mut self,
        group: GroupId,
        offer: Message,
        context: OfferContext<'_>,
        shard: &mut Shard,
    ) -> Result<(), SimSnapshotError> {
        let MessageBody::InstallSnapshot { snapshot } = offer.body else {
            panic!(
                "sim snapshots: group {group} offered a {:?}, not a snapshot",
                offer.body
            );
        };
        let to = offer.to;
        let id = SnapshotId {
            group,
            last: snapshot.last,
        };
        let bytes = match read_file(&self.store, id) {
            Ok(bytes) => bytes,
            Err(error) => {
                self.fatal(error)?;
                self.outgoing.remove(&(group, to));
                context.stats.offers_without_file += 1;
                context.stats.sent_failed += 1;
                shard.on_snapshot_sent(group, to, SnapshotStatus::Failed);
                return Ok(());
            }
        };
        let chunk_bytes = context.prng.range_inclusive(
            SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MIN,
            SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MAX,
        );
        let outgoing = Outgoing {
            term: offer.term,
            snapshot,
            bytes: Bytes::from(bytes),
            chunk_bytes,
            next: 0,
            acked: 0,
            acked_best: 0,
            last_progress_tick: context.tick,
            last_ack_tick: context.tick,
            refused: false,
        };
        self.outgoing.insert((group, to), outgoing);
        Ok(())
    }

    /// An acknowledgement from `from`: how much of the snapshot it holds, or that it refused.
    pub fn on_ack(&mut self, from: NodeId, ack: SnapshotAck, tick: u64) {
        let Some(outgoing) = self.outgoing.get_mut(&(ack.group, from)) else {
            return;
        };
        if outgoing.snapshot.last != ack.last {
            return;
        }
        outgoing.last_ack_tick = tick;
        if ack.refused {
            outgoing.refused = true;
            return;
        }
        if ack.received_bytes < outgoing.acked {
            // The receiver lost what it had staged (it restarted): start over there.
            outgoing.next = ack.received_bytes;
        }
        outgoing.acked = ack.received_bytes;
        if outgoing.acked > outgoing.acked_best {
            outgoing.acked_best = outgoing.acked;
            outgoing.last_progress_tick = tick;
        }
    }

    /// Sends what each transfer's window allows and reports the transfers that ended.
    pub fn pump(
        &mut self,
        tick: u64,
        shard: &mut Shard,
        stats: &mut SnapshotStats,
        sent: &mut Vec<Batch>,
    ) {
        let mut ended = Vec::new();
        for (&(group, to), outgoing) in &mut self.outgoing {
            let total = outgoing.bytes.len() as u64;
            if outgoing.acked >= total {
                ended.push((group, to, SnapshotStatus::Finished));
                continue;
            }
            if outgoing.refused || tick >= outgoing.last_progress_tick + SIM_SNAPSHOT_STALL_TICKS {
                ended.push((group, to, SnapshotStatus::Failed));
                continue;
            }
            if tick >= outgoing.last_ack_tick + SIM_SNAPSHOT_RESEND_TICKS {
                // Chunks or acknowledgements were lost: send again from the last acknowledged.
                outgoing.next = outgoing.acked;
                outgoing.last_ack_tick = tick;
            }
            outgoing.next = outgoing.next.max(outgoing.acked);
            let window = SIM_SNAPSHOT_WINDOW_CHUNKS as u64 * outgoing.chunk_bytes;
            while outgoing.next < total && outgoing.next - outgoing.acked < window {
                let start = outgoing.next;
                let end = (start + outgoing.chunk_bytes).min(total);
                let mut batch = Batch::new(self.node, to);
                batch.snapshot_chunks.push(SnapshotChunk {
                    group,
                    term: outgoing.term,
                    snapshot: outgoing.snapshot.clone(),
                    offset: start,
                    total_bytes: total,
                    data: outgoing.bytes.slice(start as usize..end as usize),
                });
                sent.push(batch);
                outgoing.next = end;
            }
        }
        for (group, to, status) in ended {
            self.outgoing.remove(&(group, to));
            match status {
                SnapshotStatus::Finished => stats.sent_finished += 1,
                SnapshotStatus::Failed => stats.sent_failed += 1,
            }
            shard.on_snapshot_sent(group, to, status);
        }
    }

    // ---- Staging a snapshot a leader streams here ----

    /// A chunk from `from`: staged if it is the next one; the answer to send back. Once the
    /// snapshot is complete and durable its offer is stepped by the shard.
    pub fn on_chunk(
        &mut self,
        from: NodeId,
        chunk: SnapshotChunk,
        shard: &mut Shard,
        stats: &mut SnapshotStats,
    ) -> Result<SnapshotAck, SimSnapshotError> {
        let group = chunk.group;
        let id = SnapshotId {
            group,
            last: chunk.snapshot.last,
        };
        let answer = match self.completed.get(&group) {
            Some(&(done, total)) if done == id => Answer::Received(total),
            _ => self.stage(from, id, chunk, shard, stats)?,
        };
        let (received_bytes, refused) = match answer {
            Answer::Received(bytes) => (bytes, false),
            Answer::Refused => (0, true),
        };
        Ok(SnapshotAck {
            group,
            last: id.last,
            received_bytes,
            refused,
        })
    }

    fn stage(
        &mut self,
        from: NodeId,
        id: SnapshotId,
        chunk: SnapshotChunk,
        shard: &mut Shard,
        stats: &mut SnapshotStats,
    ) -> Result<Answer, SimSnapshotError> {
        let group = id.group;
        if let Some(current) = self.staging.get(&group)
            && current.id != id
        {
            if id.last.index <= current.id.last.index {
                // An older snapshot than the one being staged: its sender should stop.
                return Ok(Answer::Refused);
            }
            if let Some(old) = self.staging.remove(&group)
                && let Err(error) = block_on(old.writer.abort())
            {
                self.fatal(error)?;
            }
        }
        if !self.staging.contains_key(&group) {
            if chunk.offset != 0 {
                return Ok(Answer::Received(0));
            }
            let writer = match block_on(self.store.begin(id)) {
                Ok(writer) => writer,
                Err(error) => {
                    self.fatal(error)?;
                    return Ok(Answer::Refused);
                }
            };
            let staging = Staging {
                id,
                writer,
                decoder: SnapshotDecoder::new(),
                received: 0,
            };
            self.staging.insert(group, staging);
        }
        let Some(current) = self.staging.get_mut(&group) else {
            return Ok(Answer::Refused);
        };
        if chunk.offset != current.received {
            return Ok(Answer::Received(current.received));
        }
        if current.decoder.feed(&chunk.data).is_err() {
            return self.give_up(group);
        }
        if let Err(error) = block_on(current.writer.write(&chunk.data)) {
            self.fatal(error)?;
            return self.give_up(group);
        }
        current.received += chunk.data.len() as u64;
        let received = current.received;
        if received < chunk.total_bytes {
            return Ok(Answer::Received(received));
        }
        let Some(done) = self.staging.remove(&group) else {
            return Ok(Answer::Refused);
        };
        if let Err(error) = block_on(done.writer.finish()) {
            self.fatal(error)?;
            return Ok(Answer::Refused);
        }
        let restored = match done.decoder.finish() {
            Ok(restored)
                if restored.header.group == group && restored.header.meta == chunk.snapshot =>
            {
                restored
            }
            _ => {
                if let Err(error) = block_on(self.store.remove(id)) {
                    self.fatal(error)?;
                }
                return Ok(Answer::Refused);
            }
        };
        if let Err(error) = block_on(remove_old(&self.store, group, SNAPSHOTS_KEPT)) {
            self.fatal(error)?;
        }
        self.completed.insert(group, (id, received));
        stats.staged += 1;
        let offer = Message {
            from,
            to: self.node,
            term: chunk.term,
            body: MessageBody::InstallSnapshot {
                snapshot: chunk.snapshot,
            },
        };
        shard.on_snapshot_staged(group, offer, restored.machine);
        Ok(Answer::Received(received))
    }

    fn give_up(&mut self, group: GroupId) -> Result<Answer, SimSnapshotError> {
        if let Some(old) = self.staging.remove(&group)
            && let Err(error) = block_on(old.writer.abort())
        {
            self.fatal(error)?;
        }
        Ok(Answer::Refused)
    }
}

/// What an offer draws from the cluster.
pub struct OfferContext<'a> {
    pub tick: u64,
    pub prng: &'a mut Prng,
    pub stats: &'a mut SnapshotStats,
}

/// Every byte of a listed snapshot file.
fn read_file(store: &SimSnapshotStore, id: SnapshotId) -> Result<Vec<u8>, StoreError> {
    let mut reader = block_on(store.open(id))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = block_on(reader.next_chunk())? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// What a group restarts from, as `reactor/server.rs::restore_group` builds it: the newest
/// snapshot file that loads, the indices of the files at or below it (ascending), and the
/// WAL's view of the group. Counts the files skipped and the restore in `stats`.
pub fn restore_group(
    store: &SimSnapshotStore,
    group: GroupId,
    wal: Option<RestoredGroup>,
    stats: &mut SnapshotStats,
) -> Result<GroupRestart, StoreError> {
    let loaded = block_on(load_newest(store, group))?;
    stats.skipped_at_restart += loaded.skipped.len() as u64;
    let Some((id, restored)) = loaded.restored else {
        return Ok(GroupRestart {
            wal,
            ..GroupRestart::default()
        });
    };
    stats.restored_from_snapshot += 1;
    let mut kept: Vec<LogIndex> = block_on(store.list(group))?
        .into_iter()
        .map(|other| other.last.index)
        .filter(|&index| index <= id.last.index)
        .collect();
    kept.sort_unstable();
    Ok(GroupRestart {
        wal,
        snapshot: Some(restored),
        kept,
    })
}
