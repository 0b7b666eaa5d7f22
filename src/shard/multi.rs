//! `MultiRaft`: the Raft groups of one core (DESIGN §5). One tick for all groups; incoming
//! batches routed to their groups; a round that collects the Ready of every group that has
//! work (a dirty list, never a scan of idle groups) into one outgoing batch per destination
//! node, one list of persistence requests for a single WAL write, and per-group committed
//! entries for the caller to apply. Messages that must wait for durability are held here
//! until the caller reports the group's position persisted.
//!
//! This module owns routing, the dirty set and the held messages. It must not do I/O, read
//! a clock, or look inside a group's Raft state: the WAL, the state machine and the network
//! belong to the caller (the shard round, DESIGN §2).

use bytes::Bytes;

use crate::constants::{GROUP_ID_LIMIT, GROUPS_PER_CORE_MAX};
use crate::ids::{EntryId, GroupId, LogIndex, NodeId};
use crate::raft::{
    Entry, Fetch, Message, MessageBody, Persist, PersistPosition, ReadState, Ready, SoftState,
};
use crate::shard::batch::{Batch, BatchAssembler, BatchError};
use crate::shard::group::RaftGroup;

/// Marks an id in `slot_of` that no group of this core has.
const NO_SLOT: u32 = u32::MAX;
const _: () = assert!(GROUPS_PER_CORE_MAX < NO_SLOT as usize);

#[derive(Debug, thiserror::Error)]
pub enum MultiRaftError {
    #[error("group {group} is not hosted on this core")]
    UnknownGroup { group: GroupId },
    #[error("group {group} is already hosted on this core")]
    GroupExists { group: GroupId },
    #[error("group id {group} is not below the limit {GROUP_ID_LIMIT}")]
    GroupIdBeyondLimit { group: GroupId },
    #[error("this core already hosts {GROUPS_PER_CORE_MAX} groups")]
    TooManyGroups,
    #[error("batch for node {to} arrived at node {node}")]
    Misaddressed { to: NodeId, node: NodeId },
    #[error("batch from node {from}: {source}")]
    Batch {
        from: NodeId,
        #[source]
        source: BatchError,
    },
    #[error("group {group} refused the proposal: {source}")]
    Proposal {
        group: GroupId,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// One group's persistence request of a round.
#[derive(Debug)]
pub struct GroupPersist {
    pub group: GroupId,
    pub persist: Persist,
}

/// One group's newly committed entries of a round, in log order.
#[derive(Debug)]
pub struct GroupEntries {
    pub group: GroupId,
    pub entries: Vec<Entry>,
}

/// What one round asks of the caller (DESIGN §2): send `batches` now; write all of
/// `persists` in ONE write and sync, then call `on_persisted` per group; apply `committed`
/// and call `on_applied`; serve `read_states`; answer `fetches` with `on_fetched`.
#[derive(Debug, Default)]
pub struct RoundOutput {
    /// At most one batch per destination node, unless a batch limit split it.
    pub batches: Vec<Batch>,
    pub persists: Vec<GroupPersist>,
    pub committed: Vec<GroupEntries>,
    pub read_states: Vec<(GroupId, ReadState)>,
    pub fetches: Vec<(GroupId, Fetch)>,
    pub soft_states: Vec<(GroupId, SoftState)>,
    /// A leader's `InstallSnapshot` offers: not sent in a batch, because the snapshot's data
    /// must reach the follower first; the caller streams it and steps the offer there.
    pub snapshot_offers: Vec<(GroupId, Message)>,
}

impl RoundOutput {
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
            && self.persists.is_empty()
            && self.committed.is_empty()
            && self.read_states.is_empty()
            && self.fetches.is_empty()
            && self.soft_states.is_empty()
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.persists.clear();
        self.committed.clear();
        self.read_states.clear();
        self.fetches.clear();
        self.soft_states.clear();
        self.snapshot_offers.clear();
    }
}

/// What `step_batch` did with a batch's messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepSummary {
    pub delivered_count: usize,
    /// Messages for groups this core does not host, or that their group refused.
    pub dropped_count: usize,
}

/// Counters since creation, for tests and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MultiRaftStats {
    pub round_count: u64,
    /// Groups a round looked at (the dirty ones), summed over rounds.
    pub groups_visited_count: u64,
    pub ready_count: u64,
    pub batches_sent_count: u64,
    pub messages_received_count: u64,
    pub messages_dropped_count: u64,
}

struct Slot<G> {
    group: GroupId,
    raft: G,
    /// Whether `slot` is in `MultiRaft::dirty`; keeps each group in it at most once.
    dirty: bool,
    /// The last position this group asked to persist; `persisted <= persist_requested`.
    persist_requested: PersistPosition,
    persisted: PersistPosition,
}

/// Messages of one group that may leave only once `position` is durable.
struct Held {
    slot: u32,
    position: PersistPosition,
    messages: Vec<Message>,
}

/// The Raft groups of one core. Groups live densely in `slots`; `slot_of` maps a group id to
/// its slot (4 bytes per id up to the largest id hosted).
pub struct MultiRaft<G: RaftGroup> {
    node: NodeId,
    slot_of: Vec<u32>,
    slots: Vec<Slot<G>>,
    /// Slots that received input since the last round; each at most once.
    dirty: Vec<u32>,
    /// The previous round's dirty list, kept for its capacity.
    dirty_scratch: Vec<u32>,
    held: Vec<Held>,
    assembler: BatchAssembler,
    stats: MultiRaftStats,
}

impl<G: RaftGroup> MultiRaft<G> {
    pub fn new(node: NodeId) -> MultiRaft<G> {
        MultiRaft {
            node,
            slot_of: Vec::new(),
            slots: Vec::new(),
            dirty: Vec::new(),
            dirty_scratch: Vec::new(),
            held: Vec::new(),
            assembler: BatchAssembler::new(node),
            stats: MultiRaftStats::default(),
        }
    }

    /// A core that will host about `group_count` groups with ids below `group_id_limit`,
    /// with its tables allocated once, exactly.
    pub fn with_capacity(node: NodeId, group_count: usize, group_id_limit: u32) -> MultiRaft<G> {
        assert!(
            group_count <= GROUPS_PER_CORE_MAX && group_id_limit <= GROUP_ID_LIMIT,
            "node {node}: capacity for {group_count} groups below id {group_id_limit} is \
             beyond the limits {GROUPS_PER_CORE_MAX} and {GROUP_ID_LIMIT}"
        );
        let mut multi = MultiRaft::new(node);
        multi.slots.reserve_exact(group_count);
        multi.dirty.reserve_exact(group_count);
        multi.dirty_scratch.reserve_exact(group_count);
        multi.slot_of.reserve_exact(group_id_limit as usize);
        multi
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn group_count(&self) -> usize {
        self.slots.len()
    }

    pub fn stats(&self) -> MultiRaftStats {
        self.stats
    }

    /// Hosts `group` on this core, driven by `raft`. The group is dirty at once, so a
    /// bootstrapped group's first Ready is collected by the next round.
    pub fn add_group(&mut self, group: GroupId, raft: G) -> Result<(), MultiRaftError> {
        if group.get() >= GROUP_ID_LIMIT {
            return Err(MultiRaftError::GroupIdBeyondLimit { group });
        }
        if self.slot(group).is_some() {
            return Err(MultiRaftError::GroupExists { group });
        }
        if self.slots.len() >= GROUPS_PER_CORE_MAX {
            return Err(MultiRaftError::TooManyGroups);
        }
        let id = group.get() as usize;
        if self.slot_of.len() <= id {
            self.slot_of.resize(id + 1, NO_SLOT);
        }
        let slot = self.slots.len() as u32;
        self.slot_of[id] = slot;
        self.slots.push(Slot {
            group,
            raft,
            dirty: false,
            persist_requested: PersistPosition::default(),
            persisted: PersistPosition::default(),
        });
        self.mark_dirty(slot);
        Ok(())
    }

    /// Read access to one group, e.g. for its status.
    pub fn group(&self, group: GroupId) -> Option<&G> {
        let slot = self.slot(group)?;
        Some(&self.slots[slot as usize].raft)
    }

    /// Runs `f` on one group and marks it dirty, for the calls this layer does not wrap
    /// (read_index, transfer_leader, ...).
    pub fn with_group<R>(
        &mut self,
        group: GroupId,
        f: impl FnOnce(&mut G) -> R,
    ) -> Result<R, MultiRaftError> {
        let slot = self.slot_or_error(group)?;
        let result = f(&mut self.slots[slot as usize].raft);
        self.mark_dirty(slot);
        Ok(result)
    }

    /// One logical clock tick for every group of the core. This is the only per-round cost
    /// an idle group pays; a group whose tick produced work joins the dirty list.
    pub fn tick(&mut self) {
        for (index, slot) in self.slots.iter_mut().enumerate() {
            slot.raft.tick();
            if !slot.dirty && slot.raft.has_ready() {
                slot.dirty = true;
                self.dirty.push(index as u32);
            }
        }
    }

    /// Routes a batch from a peer to its groups (heartbeats expanded). Messages for groups
    /// this core does not host, or that their group refuses, are dropped and counted: the
    /// network may deliver stale or misrouted messages, and Raft tolerates their loss.
    pub fn step_batch(&mut self, mut batch: Batch) -> Result<StepSummary, MultiRaftError> {
        if batch.to != self.node {
            return Err(MultiRaftError::Misaddressed {
                to: batch.to,
                node: self.node,
            });
        }
        batch.validate().map_err(|source| MultiRaftError::Batch {
            from: batch.from,
            source,
        })?;
        let mut summary = StepSummary::default();
        for (group, message) in batch.drain_messages() {
            let Some(slot) = self.slot(group) else {
                summary.dropped_count += 1;
                continue;
            };
            match self.slots[slot as usize].raft.step(message) {
                Ok(()) => summary.delivered_count += 1,
                Err(error) => {
                    tracing::debug!(%group, %error, "message dropped by its group");
                    summary.dropped_count += 1;
                }
            }
            self.mark_dirty(slot);
        }
        self.assembler.recycle(batch);
        self.stats.messages_received_count +=
            (summary.delivered_count + summary.dropped_count) as u64;
        self.stats.messages_dropped_count += summary.dropped_count as u64;
        Ok(summary)
    }

    pub fn propose(&mut self, group: GroupId, data: Bytes) -> Result<EntryId, MultiRaftError> {
        let slot = self.slot_or_error(group)?;
        let result = self.slots[slot as usize].raft.propose(data);
        // A refused proposal changes nothing, but marking costs one flag check.
        self.mark_dirty(slot);
        result.map_err(|source| MultiRaftError::Proposal {
            group,
            source: Box::new(source),
        })
    }

    pub fn campaign(&mut self, group: GroupId) -> Result<(), MultiRaftError> {
        self.with_group(group, |raft| raft.campaign())
    }

    /// The caller made `group`'s persistence requests up to `position` durable.
    pub fn on_persisted(
        &mut self,
        group: GroupId,
        position: PersistPosition,
    ) -> Result<(), MultiRaftError> {
        let slot = self.slot_or_error(group)?;
        let state = &mut self.slots[slot as usize];
        assert!(
            position <= state.persist_requested,
            "group {group}: persisted {position:?} beyond requested {:?}",
            state.persist_requested
        );
        if position > state.persisted {
            state.persisted = position;
            state.raft.on_persisted(position);
            self.mark_dirty(slot);
        }
        Ok(())
    }

    /// The caller applied `group`'s committed entries up to `index`.
    pub fn on_applied(&mut self, group: GroupId, index: LogIndex) -> Result<(), MultiRaftError> {
        self.with_group(group, |raft| raft.on_applied(index))
    }

    /// Entries the caller read back from the WAL for `group`'s `Fetch`.
    pub fn on_fetched(
        &mut self,
        group: GroupId,
        entries: Vec<Entry>,
    ) -> Result<(), MultiRaftError> {
        self.with_group(group, |raft| raft.on_fetched(entries))
    }

    /// Gives back a batch the caller has sent (encoded), so its lists' capacity serves a
    /// later round.
    pub fn recycle(&mut self, batch: Batch) {
        self.assembler.recycle(batch);
    }

    /// Whether a round now would visit any group or release any held message.
    pub fn has_work(&self) -> bool {
        !self.dirty.is_empty() || self.held.iter().any(|h| self.is_durable(h))
    }

    /// One round: releases held messages whose position is durable, collects the Ready of
    /// every dirty group, and assembles the output into `out` (cleared first, so the caller
    /// can reuse its buffers).
    pub fn round(&mut self, out: &mut RoundOutput) {
        out.clear();
        self.stats.round_count += 1;
        self.release_held();
        if !self.dirty.is_empty() {
            self.collect_dirty(out);
        }
        self.assembler.drain_into(&mut out.batches);
        self.stats.batches_sent_count += out.batches.len() as u64;
        if out.is_empty() && self.dirty.is_empty() && self.held.is_empty() {
            // A round with nothing to show: an idle core keeps no capacity a burst of held
            // messages left behind. Spare batches stay (bounded by count and bytes): the
            // next tick's heartbeats reuse them.
            self.held = Vec::new();
        }
    }

    /// Collects the Ready of every dirty group; a group with more to give after its Ready
    /// stays dirty for the next round.
    fn collect_dirty(&mut self, out: &mut RoundOutput) {
        std::mem::swap(&mut self.dirty, &mut self.dirty_scratch);
        let mut dirty = std::mem::take(&mut self.dirty_scratch);
        for &slot in &dirty {
            self.stats.groups_visited_count += 1;
            let state = &mut self.slots[slot as usize];
            assert!(
                state.dirty,
                "slot {slot} of group {} listed but not dirty",
                state.group
            );
            state.dirty = false;
            if !state.raft.has_ready() {
                continue;
            }
            let ready = state.raft.ready();
            let more = state.raft.has_ready();
            self.stats.ready_count += 1;
            self.collect(slot, ready, out);
            if more {
                self.mark_dirty(slot);
            }
        }
        dirty.clear();
        self.dirty_scratch = dirty;
    }

    fn collect(&mut self, slot: u32, ready: Ready, out: &mut RoundOutput) {
        let state = &mut self.slots[slot as usize];
        let group = state.group;
        if let Some(soft_state) = ready.soft_state {
            out.soft_states.push((group, soft_state));
        }
        if let Some(persist) = ready.persist {
            assert!(
                persist.position > state.persist_requested,
                "group {group}: persist position {:?} not after {:?}",
                persist.position,
                state.persist_requested
            );
            state.persist_requested = persist.position;
            out.persists.push(GroupPersist { group, persist });
        }
        // `messages` leave now (a leader's appends go out in parallel with its own write,
        // thesis §10.2.1); `messages_after_persist` (votes granted, appends acknowledged)
        // wait until the state they promise is durable (paper Figure 2: "respond to RPCs
        // only after updating stable storage").
        let durable = state.persisted >= state.persist_requested;
        let position = state.persist_requested;
        for message in ready.messages {
            if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                out.snapshot_offers.push((group, message));
            } else {
                self.assembler.push(group, message);
            }
        }
        if !ready.messages_after_persist.is_empty() {
            if durable {
                for message in ready.messages_after_persist {
                    self.assembler.push(group, message);
                }
            } else {
                self.held.push(Held {
                    slot,
                    position,
                    messages: ready.messages_after_persist,
                });
            }
        }
        if !ready.committed_entries.is_empty() {
            out.committed.push(GroupEntries {
                group,
                entries: ready.committed_entries,
            });
        }
        out.read_states
            .extend(ready.read_states.into_iter().map(|r| (group, r)));
        if let Some(fetch) = ready.fetch {
            out.fetches.push((group, fetch));
        }
    }

    /// Moves the held messages whose position is now durable into this round's batches, in
    /// the order they were held.
    fn release_held(&mut self) {
        let slots = &self.slots;
        let assembler = &mut self.assembler;
        self.held.retain_mut(|held| {
            let slot = &slots[held.slot as usize];
            if slot.persisted < held.position {
                return true;
            }
            for message in held.messages.drain(..) {
                assembler.push(slot.group, message);
            }
            false
        });
    }

    fn is_durable(&self, held: &Held) -> bool {
        self.slots[held.slot as usize].persisted >= held.position
    }

    fn mark_dirty(&mut self, slot: u32) {
        let state = &mut self.slots[slot as usize];
        if !state.dirty {
            state.dirty = true;
            self.dirty.push(slot);
        }
    }

    fn slot(&self, group: GroupId) -> Option<u32> {
        match self.slot_of.get(group.get() as usize) {
            Some(&slot) if slot != NO_SLOT => Some(slot),
            _ => None,
        }
    }

    fn slot_or_error(&self, group: GroupId) -> Result<u32, MultiRaftError> {
        self.slot(group)
            .ok_or(MultiRaftError::UnknownGroup { group })
    }
}
