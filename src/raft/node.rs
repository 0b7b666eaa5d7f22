//! `RaftNode`: one group's Raft state machine (paper Figure 2, thesis chapters 3, 6, 9).
//! This file owns the node's state, its public entry points and the assembly of `Ready`;
//! elections live in `election.rs`, replication in `replication.rs`, ReadIndex in
//! `read_index.rs`. It must not perform I/O, read a clock, or draw randomness other than
//! from the `Prng` handed in.
//!
//! Contract with the caller (DESIGN §4 and the doc comment on `Ready`):
//! - `Ready::persist` is tagged with a `PersistPosition` that grows by one per persist;
//!   `on_persisted(p)` says everything through `p` is durable.
//! - `Ready::messages` may be sent at once; `Ready::messages_after_persist` only once that
//!   Ready's persist is durable. Messages that depend on durable state whose persist was
//!   handed out in an earlier Ready are held inside the node and come out in `messages` of
//!   a later Ready once `on_persisted` covers them.
//! - `committed_entries` never go beyond the commit index of a hard state handed out in
//!   the same or an earlier Ready, and never beyond entries handed out to be persisted.
//! - `read_states` are released only when a heartbeat quorum confirmed leadership after the
//!   request (thesis §6.4) and the state machine applied the read index. When leadership is
//!   lost, pending reads are dropped silently: the caller learns of it from `soft_state`
//!   (role or term change) and fails or retries the reads it is still waiting for. A
//!   follower's forwarded read that the leader cannot serve is likewise dropped.
//! - Entries not in memory are requested through `Ready::fetch` and answered by
//!   `on_fetched`; `step` never waits for them.
//! - Snapshots (thesis §5): the caller compacts with `compact` once it holds a durable
//!   snapshot; a leader offers `InstallSnapshot` to a follower whose next entry is compacted
//!   and hears how the transfer ended through `report_snapshot`; a follower's installed
//!   snapshot comes out as `Persist::snapshot`, and applied jumps to it at `on_persisted`.

use std::collections::VecDeque;

use bytes::Bytes;

use crate::constants::{READ_INDEX_PENDING_MAX, VOTERS_MAX};
use crate::ids::{EntryId, LogIndex, NodeId, Term};
use crate::prng::Prng;
use crate::raft::config::{RaftConfig, RestoredState};
use crate::raft::errors::{ProposeError, ReadIndexError, StepError, TransferError};
use crate::raft::log::RaftLog;
use crate::raft::progress::Progress;
use crate::raft::types::{
    Entry, EntryKind, Fetch, HardState, Membership, Message, MessageBody, Persist, PersistPosition,
    ReadContext, ReadState, Ready, RoleKind, SoftState,
};

/// What `RaftNode::status` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: RoleKind,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit: LogIndex,
    pub applied: LogIndex,
    pub last: EntryId,
    pub persisted: LogIndex,
    /// Every entry up to here is folded into a snapshot (zero without one).
    pub compacted: LogIndex,
}

/// Votes received in one election, as bitsets over the positions of the voters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Votes {
    pub granted: u64,
    pub rejected: u64,
}

/// A role carries its own state, so leader-only state cannot exist on a follower.
#[derive(Debug)]
pub(crate) enum Role {
    Follower,
    PreCandidate(Votes),
    Candidate(Votes),
    Leader(Box<LeaderState>),
}

#[derive(Debug)]
pub(crate) struct Transfer {
    pub target: NodeId,
    pub elapsed_ticks: u32,
    pub timeout_now_sent: bool,
}

/// A ReadIndex request held by the leader (thesis §6.4).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingRead {
    pub context: ReadContext,
    pub origin: NodeId,
    /// The commit index when the request arrived; `None` until this leader has committed an
    /// entry of its own term (thesis §6.4 step 1).
    pub index: Option<LogIndex>,
    /// The heartbeat round whose quorum acknowledgement confirms leadership for it.
    pub round: u64,
}

#[derive(Debug)]
pub(crate) struct LeaderState {
    /// One per peer (voters and learners), never for this node.
    pub progress: Vec<Progress>,
    pub transfer: Option<Transfer>,
    pub reads: VecDeque<PendingRead>,
    pub read_round: u64,
    /// `read_round` was raised but no heartbeat carried it yet.
    pub read_round_unsent: bool,
    pub read_round_confirmed: u64,
    pub heartbeat_elapsed_ticks: u32,
    /// Heartbeats go out at the next `ready`.
    pub heartbeat_due: bool,
    /// Something changed that may let appends go out at the next `ready`.
    pub appends_dirty: bool,
    /// Index of this leader's first (empty) entry; commit reaching it means the leader has
    /// committed in its term.
    pub term_start: LogIndex,
    /// Bytes of entries of this term that are proposed and not yet committed.
    pub uncommitted_bytes: u64,
}

pub struct RaftNode {
    pub(crate) config: RaftConfig,
    pub(crate) prng: Prng,
    pub(crate) membership: Membership,
    pub(crate) term: Term,
    pub(crate) vote: Option<NodeId>,
    pub(crate) leader: Option<NodeId>,
    pub(crate) role: Role,
    pub(crate) log: RaftLog,
    pub(crate) commit: LogIndex,
    pub(crate) applied: LogIndex,
    /// Committed entries up to here were handed out in `Ready::committed_entries`.
    pub(crate) apply_sent: LogIndex,
    /// Ticks since the leader was last heard from (follower) or since the last
    /// check-quorum round (leader).
    pub(crate) election_elapsed_ticks: u32,
    /// This election's timeout, drawn from `[base, 2 * base)` (§5.2).
    pub(crate) election_timeout_ticks: u32,
    pub(crate) hard_state_sent: HardState,
    /// The current term and vote change in a persist not handed out yet.
    pub(crate) term_vote_dirty: bool,
    /// The persist that carries the current term and vote.
    pub(crate) term_vote_position: PersistPosition,
    pub(crate) position_sent: PersistPosition,
    pub(crate) position_durable: PersistPosition,
    pub(crate) messages: Vec<Message>,
    /// Messages waiting for a persist position to be durable, in order of that position.
    pub(crate) deferred: VecDeque<(PersistPosition, Message)>,
    /// Reads confirmed by the leader, waiting for this node's apply (follower side).
    pub(crate) follower_reads: VecDeque<ReadState>,
    pub(crate) soft_state_sent: SoftState,
    pub(crate) fetch_in_flight: bool,
    pub(crate) fetch_wanted: Option<LogIndex>,
    pub(crate) fetch_backoff_ticks: u32,
    /// A received snapshot (the one the log now starts after) is not yet handed out in a
    /// persist. The newest snapshot itself is not stored: its last entry is where the log
    /// starts and its membership is the group's (kept small for idle groups).
    pub(crate) snapshot_unsent: bool,
    /// A received snapshot was handed out in the persist at this position and is not yet
    /// durable. No compaction can happen meanwhile (it is beyond applied), so the log still
    /// starts after it.
    pub(crate) snapshot_pending: Option<PersistPosition>,
    /// A durable snapshot newer than where the log starts, which the caller also keeps
    /// (`note_snapshot`); zero when none.
    pub(crate) newest_snapshot: LogIndex,
    /// See `RestoredState::vote_floor` (the larger of it and the persisted one): no votes
    /// and no campaigns while the log ends below; part of the hard state until reached.
    pub(crate) vote_floor: LogIndex,
}

impl RaftNode {
    /// A node restored from durable state (or bootstrapped), as a follower.
    pub fn new(config: RaftConfig, restored: RestoredState, prng: Prng) -> RaftNode {
        config.validate();
        let RestoredState {
            hard_state,
            membership,
            snapshot,
            term_runs,
            last_index,
            applied,
            vote_floor,
        } = restored;
        assert!(
            membership.voters.len() <= VOTERS_MAX,
            "group {}: {} voters over the limit of {VOTERS_MAX}",
            config.group,
            membership.voters.len()
        );
        // The snapshot's membership is the group's (membership change is a later issue).
        let before_first = snapshot.map_or(EntryId::ZERO, |snapshot| snapshot.last);
        let log = RaftLog::restore(before_first, term_runs, last_index);
        // A snapshot holds only committed entries, though the hard state that said so may
        // not have been durable when it was taken.
        let commit = hard_state.commit.max(before_first.index);
        assert!(
            applied <= commit && commit <= last_index,
            "group {}: restored applied {applied}, commit {commit}, last {last_index} out of order",
            config.group
        );
        assert!(
            applied >= before_first.index,
            "group {}: applied {applied} below snapshot {before_first}",
            config.group
        );
        let soft_state = SoftState {
            role: RoleKind::Follower,
            term: hard_state.term,
            leader: None,
        };
        let mut node = RaftNode {
            config,
            prng,
            membership,
            term: hard_state.term,
            vote: hard_state.vote,
            leader: None,
            role: Role::Follower,
            log,
            commit,
            applied,
            apply_sent: applied,
            election_elapsed_ticks: 0,
            election_timeout_ticks: 0,
            hard_state_sent: hard_state,
            term_vote_dirty: false,
            term_vote_position: PersistPosition(0),
            position_sent: PersistPosition(0),
            position_durable: PersistPosition(0),
            messages: Vec::new(),
            deferred: VecDeque::new(),
            follower_reads: VecDeque::new(),
            soft_state_sent: soft_state,
            fetch_in_flight: false,
            fetch_wanted: None,
            fetch_backoff_ticks: 0,
            snapshot_unsent: false,
            snapshot_pending: None,
            newest_snapshot: LogIndex::ZERO,
            vote_floor: vote_floor.max(hard_state.vote_floor),
        };
        node.reset_election_timer();
        node
    }

    pub fn id(&self) -> NodeId {
        self.config.id
    }

    pub fn config(&self) -> &RaftConfig {
        &self.config
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// One tick of logical time: election timeouts, heartbeats, check-quorum, transfer abort.
    /// Allocates nothing: heartbeats are built in `ready`.
    pub fn tick(&mut self) {
        self.fetch_backoff_ticks = self.fetch_backoff_ticks.saturating_sub(1);
        self.release_idle_memory();
        if matches!(self.role, Role::Leader(_)) {
            self.tick_leader();
        } else {
            self.election_elapsed_ticks = self.election_elapsed_ticks.saturating_add(1);
            let voter = self.membership.is_voter(self.config.id);
            if voter && self.election_elapsed_ticks >= self.election_timeout_ticks {
                self.campaign();
            }
        }
    }

    /// Give back buffers that are empty, so idle groups stay small. Frees, never allocates.
    fn release_idle_memory(&mut self) {
        if self.messages.is_empty() && self.messages.capacity() > 0 {
            self.messages = Vec::new();
        }
        if self.deferred.is_empty() && self.deferred.capacity() > 0 {
            self.deferred = VecDeque::new();
        }
        if self.follower_reads.is_empty() && self.follower_reads.capacity() > 0 {
            self.follower_reads = VecDeque::new();
        }
        self.log.release_idle_memory();
    }

    /// Process one message from a peer (paper Figure 2 "Rules for Servers").
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        if message.to != self.config.id {
            return Err(StepError::WrongRecipient {
                to: message.to,
                id: self.config.id,
            });
        }
        if let MessageBody::InstallSnapshot { snapshot } = &message.body {
            // A leader only offers a snapshot of committed entries of its term or earlier, of
            // this group's membership (membership change is a later issue).
            let last = snapshot.last;
            if last.index == LogIndex::ZERO
                || last.term > message.term
                || snapshot.membership != self.membership
            {
                return Err(StepError::MalformedSnapshot {
                    from: message.from,
                    term: message.term,
                    last,
                });
            }
        }
        if let MessageBody::Append { prev, entries, .. } = &message.body {
            self.validate_append(message.from, message.term, *prev, entries)?;
        }
        if message.term > self.term {
            if !self.accept_higher_term(&message) {
                return Ok(());
            }
        } else if message.term < self.term {
            self.answer_stale(&message);
            return Ok(());
        }
        match self.role {
            Role::Leader(_) => self.step_leader(message),
            Role::Candidate(_) | Role::PreCandidate(_) => self.step_candidate(message),
            Role::Follower => self.step_follower(message),
        }
        Ok(())
    }

    /// Entries of an append must follow `prev` one by one with non-decreasing terms no
    /// later than the message's term; anything else is refused before touching state.
    fn validate_append(
        &self,
        from: NodeId,
        term: Term,
        prev: EntryId,
        entries: &[Entry],
    ) -> Result<(), StepError> {
        let mut expected = prev;
        for (position, entry) in entries.iter().enumerate() {
            let follows = entry.index() == expected.index.next()
                && entry.term() >= expected.term
                && entry.term() <= term;
            if !follows {
                return Err(StepError::MalformedAppend {
                    from,
                    prev,
                    position,
                    entry: entry.id,
                });
            }
            expected = entry.id;
        }
        Ok(())
    }

    /// Append a command to the leader's log; it is replicated from the next `ready`.
    pub fn propose(&mut self, data: Bytes) -> Result<EntryId, ProposeError> {
        let data_bytes = data.len() as u64;
        if data_bytes > self.config.command_bytes_max() {
            return Err(ProposeError::TooLarge {
                bytes: data_bytes,
                bytes_max: self.config.command_bytes_max(),
            });
        }
        let id = EntryId::new(self.term, self.log.last().index.next());
        let entry = Entry {
            id,
            kind: EntryKind::Command,
            data,
        };
        let entry_bytes = entry.size_bytes();
        let uncommitted_bytes_max = self.config.uncommitted_bytes_max;
        let Role::Leader(state) = &mut self.role else {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        };
        if state.transfer.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        // The first proposal is always admitted, however large, so progress is possible.
        if state.uncommitted_bytes > 0
            && state.uncommitted_bytes + entry_bytes > uncommitted_bytes_max
        {
            return Err(ProposeError::UncommittedFull {
                uncommitted_bytes: state.uncommitted_bytes,
                bytes_max: uncommitted_bytes_max,
            });
        }
        state.uncommitted_bytes += entry_bytes;
        state.appends_dirty = true;
        self.log.push(entry);
        Ok(id)
    }

    /// Start an election now (tests, single-node bootstrap). A no-op on a leader or a
    /// non-voter.
    pub fn campaign(&mut self) {
        if matches!(self.role, Role::Leader(_))
            || !self.membership.is_voter(self.config.id)
            || !self.may_vote()
        {
            return;
        }
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    /// Begin a linearizable read (thesis §6.4). The leader serves it; a follower forwards it.
    pub fn read_index(&mut self, context: ReadContext) -> Result<(), ReadIndexError> {
        if matches!(self.role, Role::Leader(_)) {
            return self.leader_read(context, self.config.id);
        }
        let Some(leader) = self.leader else {
            return Err(ReadIndexError::NoLeader);
        };
        if self.follower_reads.len() >= READ_INDEX_PENDING_MAX {
            return Err(ReadIndexError::TooManyPending {
                pending: self.follower_reads.len(),
            });
        }
        self.send(leader, MessageBody::ReadIndex { context });
        Ok(())
    }

    /// Hand leadership to `target` (thesis §3.10): proposals stop, the target is brought up
    /// to date and told to time out; the transfer is abandoned after an election timeout.
    pub fn transfer_leader(&mut self, target: NodeId) -> Result<(), TransferError> {
        let leader = self.leader;
        let is_voter = self.membership.is_voter(target);
        let id = self.config.id;
        let Role::Leader(state) = &mut self.role else {
            return Err(TransferError::NotLeader { leader });
        };
        if target == id {
            return Ok(());
        }
        if !is_voter {
            return Err(TransferError::NotAVoter { target });
        }
        if let Some(transfer) = &state.transfer {
            if transfer.target == target {
                return Ok(());
            }
            return Err(TransferError::InProgress {
                target: transfer.target,
            });
        }
        state.transfer = Some(Transfer {
            target,
            elapsed_ticks: 0,
            timeout_now_sent: false,
        });
        state.appends_dirty = true;
        Ok(())
    }

    /// The hard state as it must be persisted now.
    pub(crate) fn hard_state(&self) -> HardState {
        // The canary forgets a vote for another node, and the term raise that came with it,
        // so a restart can vote again in that term.
        #[cfg(test)]
        if self.config.canary == Some(crate::raft::config::Canary::VoteNotPersisted)
            && self.vote.is_some_and(|vote| vote != self.config.id)
        {
            return HardState {
                term: self.hard_state_sent.term,
                vote: self.hard_state_sent.vote,
                commit: self.commit,
                vote_floor: self.vote_floor,
            };
        }
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.commit,
            vote_floor: self.vote_floor,
        }
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            role: self.role_kind(),
            term: self.term,
            leader: self.leader,
        }
    }

    pub(crate) fn role_kind(&self) -> RoleKind {
        match self.role {
            Role::Follower => RoleKind::Follower,
            Role::PreCandidate(_) => RoleKind::PreCandidate,
            Role::Candidate(_) => RoleKind::Candidate,
            Role::Leader(_) => RoleKind::Leader,
        }
    }

    /// Bytes this group holds: the node itself plus the heap it owns (capacities, so an
    /// estimate from below of what the allocator hands out).
    pub fn memory_bytes(&self) -> usize {
        let mut bytes = std::mem::size_of::<RaftNode>()
            + self.membership.voters.capacity() * std::mem::size_of::<NodeId>()
            + self.membership.learners.capacity() * std::mem::size_of::<NodeId>()
            + self.messages.capacity() * std::mem::size_of::<Message>()
            + self.deferred.capacity() * std::mem::size_of::<(PersistPosition, Message)>()
            + self.follower_reads.capacity() * std::mem::size_of::<ReadState>()
            + self.log.memory_bytes();
        if let Role::Leader(state) = &self.role {
            bytes += std::mem::size_of::<LeaderState>()
                + state.reads.capacity() * std::mem::size_of::<PendingRead>()
                + state
                    .progress
                    .iter()
                    .map(Progress::memory_bytes)
                    .sum::<usize>();
        }
        bytes
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.config.id,
            role: self.role_kind(),
            term: self.term,
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
            last: self.log.last(),
            persisted: self.log.persisted(),
            compacted: self.log.before_first().index,
        }
    }

    /// Queue a message that may leave at once.
    pub(crate) fn send(&mut self, to: NodeId, body: MessageBody) {
        let message = Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        };
        self.messages.push(message);
    }

    /// Queue a message that may leave only once `required` is durable.
    pub(crate) fn send_after(&mut self, required: PersistPosition, to: NodeId, body: MessageBody) {
        let message = Message {
            from: self.config.id,
            to,
            term: self.term,
            body,
        };
        if required <= self.position_durable {
            self.messages.push(message);
        } else {
            self.deferred.push_back((required, message));
        }
    }

    /// The persist position that makes the current term and vote durable.
    pub(crate) fn term_vote_requirement(&self) -> PersistPosition {
        if self.term_vote_dirty {
            PersistPosition(self.position_sent.0 + 1)
        } else {
            self.term_vote_position
        }
    }

    /// The persist position that makes the log durable through `index` (and the term and
    /// vote with it).
    pub(crate) fn log_requirement(&self, index: LogIndex) -> PersistPosition {
        let term_vote = self.term_vote_requirement();
        if index <= self.log.persisted() {
            return term_vote;
        }
        // A received snapshot not yet handed out makes its whole prefix unwritten too.
        let has_unwritten = self.log.last().index > self.log.written() || self.snapshot_unsent;
        let entries = if has_unwritten {
            PersistPosition(self.position_sent.0 + 1)
        } else {
            self.position_sent
        };
        term_vote.max(entries)
    }

    pub(crate) fn reset_election_timer(&mut self) {
        let base = self.config.election_timeout_ticks.get();
        self.election_elapsed_ticks = 0;
        self.election_timeout_ticks = base + self.prng.below(u64::from(base)) as u32;
    }

    /// Adopt `term` (§5.1) and follow `leader`.
    pub(crate) fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        assert!(
            term >= self.term,
            "group {}: become follower at term {term} below {}",
            self.config.group,
            self.term
        );
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.term_vote_dirty = true;
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_election_timer();
    }

    fn leader_flush_due(&self) -> bool {
        match &self.role {
            Role::Leader(state) => state.heartbeat_due || state.appends_dirty,
            _ => false,
        }
    }

    pub(crate) fn mark_appends_dirty(&mut self) {
        if let Role::Leader(state) = &mut self.role {
            state.appends_dirty = true;
        }
    }

    pub fn has_ready(&self) -> bool {
        if self.soft_state() != self.soft_state_sent
            || self.snapshot_unsent
            || self.log.last().index > self.log.written()
            || self.hard_state() != self.hard_state_sent
            || !self.messages.is_empty()
            || self.leader_flush_due()
        {
            return true;
        }
        if self
            .deferred
            .front()
            .is_some_and(|(required, _)| *required <= self.position_durable)
        {
            return true;
        }
        if self.apply_sent < self.commit && !self.snapshot_install_in_progress() {
            let next = self.apply_sent.next();
            if self.log.entry(next).is_some() || self.can_fetch() {
                return true;
            }
        }
        if self.fetch_wanted.is_some() && self.can_fetch() {
            return true;
        }
        if self
            .follower_reads
            .front()
            .is_some_and(|read| read.index <= self.applied)
        {
            return true;
        }
        self.leader_read_releasable()
    }

    fn can_fetch(&self) -> bool {
        !self.fetch_in_flight && self.fetch_backoff_ticks == 0
    }

    /// Take everything pending; see the module comment for how to handle it.
    pub fn ready(&mut self) -> Ready {
        let mut ready = Ready::default();
        if self.vote_floor > LogIndex::ZERO && self.log.last().index >= self.vote_floor {
            // The log holds the leader's entries up to the floor again (they include every
            // committed one, §5.4): the hard state persisted with them drops the floor.
            self.vote_floor = LogIndex::ZERO;
        }
        self.flush_leader();
        self.collect_persist(&mut ready);
        self.collect_committed(&mut ready);
        self.collect_reads(&mut ready);
        self.collect_fetch(&mut ready);
        let soft_state = self.soft_state();
        if soft_state != self.soft_state_sent {
            self.soft_state_sent = soft_state;
            ready.soft_state = Some(soft_state);
        }
        ready.messages = std::mem::take(&mut self.messages);
        self.drop_window_if_unneeded();
        ready
    }

    fn collect_persist(&mut self, ready: &mut Ready) {
        let entries = self.log.take_unwritten();
        let hard_state = self.hard_state();
        let hard_state_changed = hard_state != self.hard_state_sent;
        if entries.is_empty() && !hard_state_changed && !self.snapshot_unsent {
            while let Some((required, _)) = self.deferred.front() {
                if *required > self.position_durable {
                    break;
                }
                if let Some((_, message)) = self.deferred.pop_front() {
                    self.messages.push(message);
                }
            }
            return;
        }
        let position = PersistPosition(self.position_sent.0 + 1);
        self.position_sent = position;
        self.log.persist_sent(position);
        let snapshot = self.snapshot_persist_sent(position);
        if hard_state_changed {
            self.hard_state_sent = hard_state;
        }
        if self.term_vote_dirty {
            self.term_vote_dirty = false;
            self.term_vote_position = position;
        }
        // Every deferred message requires at most this position. Those of an older term
        // are dropped (as if lost): the state they depended on may never have been durable
        // on its own, since this persist already carries a newer term.
        let term = self.term;
        ready.messages_after_persist = std::mem::take(&mut self.deferred)
            .into_iter()
            .filter(|(_, message)| message.term == term)
            .map(|(_, message)| message)
            .collect();
        ready.persist = Some(Persist {
            position,
            entries,
            hard_state: hard_state_changed.then_some(hard_state),
            snapshot,
        });
    }

    /// Committed entries, up to the commit index already handed out in a hard state.
    fn collect_committed(&mut self, ready: &mut Ready) {
        if self.snapshot_install_in_progress() {
            return;
        }
        let apply_last = self
            .commit
            .min(self.hard_state_sent.commit)
            .min(self.log.written());
        if self.apply_sent >= apply_last {
            return;
        }
        let first = self.apply_sent.next();
        let limits = (usize::MAX, self.config.apply_bytes_max);
        match self.log.entries(first, apply_last, limits) {
            Ok(entries) => {
                if let Some(last) = entries.last() {
                    self.apply_sent = last.index();
                }
                ready.committed_entries = entries;
            }
            Err(missing) => self.want_fetch(missing.0),
        }
    }

    pub(crate) fn want_fetch(&mut self, index: LogIndex) {
        self.fetch_wanted = Some(self.fetch_wanted.map_or(index, |wanted| wanted.min(index)));
    }

    fn collect_fetch(&mut self, ready: &mut Ready) {
        let Some(first) = self.fetch_wanted else {
            return;
        };
        if !self.can_fetch() {
            return;
        }
        self.fetch_wanted = None;
        let tail_first = self.log.tail_first();
        // A want recorded while an earlier fetch was in flight may be answered by it.
        if first >= tail_first
            || first <= self.log.before_first().index
            || self.log.entry(first).is_some()
        {
            return;
        }
        let span = self.config.append_entries_max as u64;
        let last = LogIndex(tail_first.get() - 1).min(first.plus(span - 1));
        let fetch = Fetch {
            first,
            last,
            bytes_max: self
                .config
                .append_bytes_max
                .max(self.config.apply_bytes_max),
        };
        self.fetch_in_flight = true;
        ready.fetch = Some(fetch);
    }

    fn collect_reads(&mut self, ready: &mut Ready) {
        while let Some(read) = self.follower_reads.front() {
            if read.index > self.applied {
                break;
            }
            if let Some(read) = self.follower_reads.pop_front() {
                ready.read_states.push(read);
            }
        }
        self.release_leader_reads(&mut ready.read_states);
    }

    /// The persist up to `position` is durable.
    pub fn on_persisted(&mut self, position: PersistPosition) {
        assert!(
            position <= self.position_sent,
            "group {}: persisted position {position:?} never handed out (last {:?})",
            self.config.group,
            self.position_sent
        );
        if position <= self.position_durable {
            return;
        }
        self.position_durable = position;
        self.log.persisted_to(position);
        self.snapshot_persisted(position);
        if matches!(self.role, Role::Leader(_)) {
            // The leader counts itself only once its own entries are durable (§10.2.1).
            self.maybe_commit();
        }
        self.trim_tail();
    }

    /// The state machine applied every committed entry through `index`.
    pub fn on_applied(&mut self, index: LogIndex) {
        // Entries handed out before a snapshot was installed past them may be reported late.
        if index < self.applied && self.log.before_first().index >= self.applied {
            return;
        }
        assert!(
            index >= self.applied && index <= self.apply_sent,
            "group {}: applied {index} outside [{}, {}] (handed out)",
            self.config.group,
            self.applied,
            self.apply_sent
        );
        self.applied = index;
        self.trim_tail();
    }

    /// Entries read back from the WAL, answering `Ready::fetch`.
    pub fn on_fetched(&mut self, entries: Vec<Entry>) {
        if !std::mem::take(&mut self.fetch_in_flight) {
            return;
        }
        if !self.log.set_window(entries) {
            // Nothing usable: wait a heartbeat before asking again.
            self.fetch_backoff_ticks = self.config.heartbeat_interval_ticks.get();
        }
        self.mark_appends_dirty();
    }

    /// Drop tail entries that are durable, applied and (on a leader) matched by every
    /// follower, and durable ones beyond the tail's byte limit.
    pub(crate) fn trim_tail(&mut self) {
        let mut needed_from = self.applied.next();
        let mut term_start = None;
        if let Role::Leader(state) = &self.role {
            term_start = Some(state.term_start);
            for progress in &state.progress {
                needed_from = needed_from.min(progress.matched.next());
            }
        }
        let commit = self.commit;
        let mut dropped_uncommitted = 0u64;
        self.log
            .trim_tail(needed_from, self.config.tail_bytes_max, |entry| {
                let counted = term_start.is_some_and(|start| entry.index() >= start);
                if counted && entry.index() > commit {
                    dropped_uncommitted += entry.size_bytes();
                }
            });
        if let Role::Leader(state) = &mut self.role {
            state.uncommitted_bytes -= dropped_uncommitted;
        }
    }

    fn drop_window_if_unneeded(&mut self) {
        let Some(window_last) = self.log.window_last() else {
            return;
        };
        let mut needed = self.apply_sent < window_last && self.apply_sent < self.commit;
        if let Role::Leader(state) = &self.role {
            needed |= state.progress.iter().any(|p| p.next <= window_last);
        }
        if !needed {
            self.log.clear_window();
        }
    }
}
