//! The face of the per-core `Shard` as the reactor drives it: the `ShardCore` trait and the
//! plain types that cross it (origin of a client request, WAL ticket, round output, shard
//! configuration), plus key -> group -> core placement.
//!
//! It owns no decisions: the shard decides, the reactor executes. It must not name glommio,
//! so the driver's contract with the shard can be read (and faked in a test) on its own.

use crate::ids::{CoreId, GroupId, NodeId, Ticks};
use crate::log::recovery::RestoredGroup;
use crate::raft::types::{Entry, Fetch, Persist};
use crate::shard::Batch;
use crate::wire::client::{ClientRequest, ClientResponse, GroupStatus};

/// The group a key belongs to: crc32c of the key modulo the cluster's group count, the same
/// on every node (DESIGN §5).
pub fn group_of_key(key: &[u8], groups_total: u32) -> GroupId {
    assert!(groups_total > 0, "group_of_key: groups_total is 0");
    GroupId(crc32c::crc32c(key) % groups_total)
}

/// The core that hosts `group` on every node, so core i talks to core i of each peer.
pub fn core_of_group(group: GroupId, cores: usize) -> CoreId {
    assert!(cores > 0, "core_of_group: cores is 0");
    CoreId((group.0 as usize % cores) as u16)
}

/// Where a client reply goes on this node: a connection of some core.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub core: CoreId,
    pub connection: u64,
}

/// Identifies one WAL append the shard asked for; answered in ticket order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalTicket(pub u64);

/// Everything one round asks the driver to do.
#[derive(Debug, Default)]
pub struct ShardOutput {
    /// Peer batches: send now.
    pub batches: Vec<Batch>,
    /// Append and sync, then `on_wal_durable(ticket)`.
    pub wal_append: Option<(WalTicket, Vec<(GroupId, Persist)>)>,
    /// Replies to deliver to their connection (maybe on another core).
    pub replies: Vec<(Origin, ClientResponse)>,
    /// Entries to read back from the WAL, then `on_fetched`.
    pub fetches: Vec<(GroupId, Fetch)>,
}

impl ShardOutput {
    pub fn clear(&mut self) {
        self.batches.clear();
        self.wal_append = None;
        self.replies.clear();
        self.fetches.clear();
    }
}

/// What a shard is built from.
#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub node: NodeId,
    pub core: CoreId,
    pub cores: usize,
    pub groups_total: u32,
    pub nodes: Vec<NodeId>,
    pub election_timeout_ticks: Ticks,
    pub heartbeat_interval_ticks: Ticks,
    pub request_timeout_ticks: Ticks,
    pub seed: u64,
}

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
    /// Hand leaderships to up-to-date peers; new requests get `ShuttingDown`.
    fn begin_shutdown(&mut self);
    fn is_drained(&self) -> bool;
    fn has_work(&self) -> bool;
    /// Fills `out`, which the caller has cleared.
    fn round(&mut self, out: &mut ShardOutput);
    fn status(&self) -> Vec<GroupStatus>;
}

/// Builds a core's shard from its configuration and what the WAL restored.
pub type ShardFactory<S> =
    fn(config: ShardConfig, restored: &dyn Fn(GroupId) -> Option<RestoredGroup>) -> S;

#[cfg(test)]
mod tests {
    use super::*;

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
