//! The face of the per-core `Shard` (shard/core.rs) as the reactor drives it: the
//! `ShardCore` trait, its implementation for `Shard`, the factory the server builds shards
//! with, and the re-exported types that cross it (origin of a client request, WAL ticket,
//! round output, configuration, key -> group -> core placement).
//!
//! It owns no decisions: the shard decides, the reactor executes. It must not name glommio,
//! so the driver's contract with the shard can be read (and replaced in a test) on its own.

use crate::ids::{GroupId, NodeId};
use crate::kv::KvMachine;
use crate::kv::store::SnapshotId;
use crate::raft::types::{Entry, Message, SnapshotStatus};
use crate::shard::Batch;
use crate::wire::client::{ClientRequest, GroupStatus};

pub use crate::shard::core::{
    GroupRestart, Origin, RequestFailure, Shard, ShardConfig, ShardEvent, ShardOutput,
    SnapshotPolicy, SnapshotWrite, WalTicket, core_of_group, group_of_key,
};

/// The per-core Multi-Raft orchestrator as the reactor drives it.
pub trait ShardCore {
    fn tick(&mut self);
    /// A batch from a peer; an error names what was wrong with it (the connection is kept:
    /// the frame was well formed, the content was refused).
    fn on_peer_batch(&mut self, batch: Batch) -> Result<(), String>;
    /// `raw` is the request's payload as the client sent it (forwarded without re-encoding).
    fn on_client_request(&mut self, origin: Origin, request: ClientRequest, raw: bytes::Bytes);
    /// In ticket order.
    fn on_wal_durable(&mut self, ticket: WalTicket);
    fn on_fetched(&mut self, group: GroupId, entries: Vec<Entry>);
    /// The snapshot writer wrote one chunk of `id`.
    fn on_snapshot_chunk_written(&mut self, id: SnapshotId);
    /// A snapshot the shard takes is durable under its name, or failed.
    fn on_snapshot_written(&mut self, id: SnapshotId, result: Result<(), String>);
    /// Every byte of a snapshot a leader offered is staged durably and decoded.
    fn on_snapshot_staged(&mut self, group: GroupId, offer: Message, machine: KvMachine);
    /// A transfer of a snapshot to `to` ended.
    fn on_snapshot_sent(&mut self, group: GroupId, to: NodeId, status: SnapshotStatus);
    /// Hand leaderships to up-to-date peers; new requests get `ShuttingDown`.
    fn begin_shutdown(&mut self);
    fn is_drained(&self) -> bool;
    /// Client requests accepted and not answered yet.
    fn in_flight_count(&self) -> usize;
    fn has_work(&self) -> bool;
    /// Fills `out`, which the caller has cleared.
    fn round(&mut self, out: &mut ShardOutput);
    fn status(&self) -> Vec<GroupStatus>;
}

impl ShardCore for Shard {
    fn tick(&mut self) {
        Shard::tick(self);
    }

    fn on_peer_batch(&mut self, batch: Batch) -> Result<(), String> {
        Shard::on_peer_batch(self, batch).map_err(|error| error.to_string())
    }

    fn on_client_request(&mut self, origin: Origin, request: ClientRequest, raw: bytes::Bytes) {
        Shard::on_client_request(self, origin, request, raw);
    }

    fn on_wal_durable(&mut self, ticket: WalTicket) {
        Shard::on_wal_durable(self, ticket);
    }

    fn on_fetched(&mut self, group: GroupId, entries: Vec<Entry>) {
        Shard::on_fetched(self, group, entries);
    }

    fn on_snapshot_chunk_written(&mut self, id: SnapshotId) {
        Shard::on_snapshot_chunk_written(self, id);
    }

    fn on_snapshot_written(&mut self, id: SnapshotId, result: Result<(), String>) {
        Shard::on_snapshot_written(self, id, result);
    }

    fn on_snapshot_staged(&mut self, group: GroupId, offer: Message, machine: KvMachine) {
        Shard::on_snapshot_staged(self, group, offer, machine);
    }

    fn on_snapshot_sent(&mut self, group: GroupId, to: NodeId, status: SnapshotStatus) {
        Shard::on_snapshot_sent(self, group, to, status);
    }

    fn begin_shutdown(&mut self) {
        Shard::begin_shutdown(self);
    }

    fn is_drained(&self) -> bool {
        Shard::is_drained(self)
    }

    fn in_flight_count(&self) -> usize {
        Shard::in_flight_count(self)
    }

    fn has_work(&self) -> bool {
        Shard::has_work(self)
    }

    fn round(&mut self, out: &mut ShardOutput) {
        Shard::round(self, out);
    }

    fn status(&self) -> Vec<GroupStatus> {
        Shard::status(self)
    }
}

/// The production shard, as a `ShardFactory`.
pub fn new_shard(config: ShardConfig, restored: &mut dyn FnMut(GroupId) -> GroupRestart) -> Shard {
    Shard::new(config, restored)
}

/// Builds a core's shard from its configuration and what each group restarts from (its
/// newest snapshot and the WAL).
pub type ShardFactory<S> =
    fn(config: ShardConfig, restored: &mut dyn FnMut(GroupId) -> GroupRestart) -> S;

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ids::CoreId;

    #[test]
    fn placement_is_stable_and_in_range() {
        // The same key maps to the same group and core every time, within the bounds.
        for key in [&b"a"[..], b"user:42", b"zzzzzzzzzz"] {
            let group = group_of_key(key, 12);
            assert!(group.0 < 12, "group {group} out of range");
            assert_eq!(group, group_of_key(key, 12));
            assert!(core_of_group(group, 4).0 < 4);
        }
        assert_eq!(core_of_group(GroupId(7), 3), CoreId(1));
    }
}
