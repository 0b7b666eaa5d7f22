//! Elections of one group (paper §5.2, §5.4.1; thesis §9.6 pre-vote, §6.2/§4.2.3 the
//! leader lease of check-quorum, §3.10 TimeoutNow): terms seen in messages, vote requests
//! and grants, tallies, and the role changes they cause. Must not replicate entries or
//! serve reads (see `replication.rs`, `read_index.rs`).

use std::collections::VecDeque;

use crate::ids::{EntryId, NodeId, Term};
use crate::raft::node::{LeaderState, RaftNode, Role, Votes};
use crate::raft::progress::Progress;
use crate::raft::quorum::{VoteResult, tally};
use crate::raft::types::{Entry, EntryKind, Message, MessageBody};

impl RaftNode {
    /// A message carries a higher term (§5.1). Returns whether to go on processing it.
    pub(crate) fn accept_higher_term(&mut self, message: &Message) -> bool {
        match message.body {
            MessageBody::PreVote { .. } | MessageBody::Vote { .. } => {
                let forced = matches!(
                    message.body,
                    MessageBody::Vote {
                        leader_transfer: true,
                        ..
                    }
                );
                // Thesis §4.2.3: a node that heard from a leader within the minimum election
                // timeout ignores vote requests, unless they come from a leader transfer.
                if self.config.check_quorum && !forced && self.in_lease() {
                    return false;
                }
                if let MessageBody::Vote { .. } = message.body {
                    self.become_follower(message.term, None);
                }
                // A pre-vote changes no state on the receiver (thesis §9.6).
                true
            }
            // A granted pre-vote comes back with the term the pre-candidate asked about.
            MessageBody::PreVoteResponse { granted: true } => true,
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                self.become_follower(message.term, Some(message.from));
                true
            }
            _ => {
                self.become_follower(message.term, None);
                true
            }
        }
    }

    /// The leader is known and was heard from within the base election timeout.
    pub(crate) fn in_lease(&self) -> bool {
        self.leader.is_some()
            && self.election_elapsed_ticks < self.config.election_timeout_ticks.get()
    }

    /// A message from an older term (§5.1): mostly ignored, but a stale leader is told the
    /// newer term so it steps down, and a pre-candidate learns why it was refused.
    pub(crate) fn answer_stale(&mut self, message: &Message) {
        match message.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. }
                if self.config.check_quorum || self.config.pre_vote =>
            {
                let required = self.term_vote_requirement();
                let body = MessageBody::HeartbeatResponse { read_round: None };
                self.send_after(required, message.from, body);
            }
            MessageBody::PreVote { .. } => {
                let required = self.term_vote_requirement();
                let body = MessageBody::PreVoteResponse { granted: false };
                self.send_after(required, message.from, body);
            }
            _ => {}
        }
    }

    pub(crate) fn step_follower(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::Append {
                prev,
                entries,
                commit,
            } => {
                self.heard_from_leader(from);
                self.handle_append(from, prev, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.heard_from_leader(from);
                self.handle_heartbeat(from, commit, read_round);
            }
            MessageBody::InstallSnapshot { snapshot } => {
                self.heard_from_leader(from);
                self.handle_install_snapshot(from, snapshot);
            }
            MessageBody::PreVote { last } => self.handle_pre_vote(message.from, message.term, last),
            MessageBody::Vote { last, .. } => self.handle_vote(message.from, last),
            // Thesis §3.10: campaign at once, skipping pre-vote and the lease.
            // Below its vote floor a node does not stand either, even when handed leadership
            // by a leader that still counts what it lost.
            MessageBody::TimeoutNow
                if self.membership.is_voter(self.config.id) && self.may_vote() =>
            {
                self.become_candidate(true);
            }
            MessageBody::ReadIndex { context } => {
                // A peer took this node for the leader; it cannot serve the read.
                let body = MessageBody::ReadIndexResponse {
                    context,
                    index: None,
                };
                self.send(from, body);
            }
            MessageBody::ReadIndexResponse { context, index } => {
                self.follower_read_confirmed(context, index);
            }
            _ => {}
        }
    }

    fn heard_from_leader(&mut self, from: NodeId) {
        self.leader = Some(from);
        self.election_elapsed_ticks = 0;
    }

    pub(crate) fn step_candidate(&mut self, message: Message) {
        match message.body {
            MessageBody::Append { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::InstallSnapshot { .. } => {
                // §5.2: a leader of this term exists; return to follower.
                self.become_follower(message.term, Some(message.from));
                self.step_follower(message);
            }
            MessageBody::PreVoteResponse { granted } => {
                let expected = if granted { self.term.next() } else { self.term };
                if matches!(self.role, Role::PreCandidate(_)) && message.term == expected {
                    self.record_vote(message.from, granted);
                }
            }
            MessageBody::VoteResponse { granted } => {
                if matches!(self.role, Role::Candidate(_)) {
                    self.record_vote(message.from, granted);
                }
            }
            MessageBody::PreVote { last } => self.handle_pre_vote(message.from, message.term, last),
            MessageBody::Vote { last, .. } => self.handle_vote(message.from, last),
            _ => {}
        }
    }

    /// Thesis §9.6: grant a pre-vote if the candidate's log is up to date and this node has
    /// not heard from a leader within the election timeout. No state changes.
    pub(crate) fn handle_pre_vote(&mut self, from: NodeId, term: Term, last: EntryId) {
        let up_to_date = last.is_up_to_date_with(self.log.last());
        let heard_from_leader = self.in_lease();
        let granted = up_to_date && term > self.term && !heard_from_leader && self.may_vote();
        let required = self.term_vote_requirement();
        let message = Message {
            from: self.config.id,
            to: from,
            term: if granted { term } else { self.term },
            body: MessageBody::PreVoteResponse { granted },
        };
        if required <= self.position_durable {
            self.messages.push(message);
        } else {
            self.deferred.push_back((required, message));
        }
    }

    /// §5.2 and §5.4.1: one vote per term, only for a candidate whose log is at least as
    /// up to date; the grant leaves only after the vote is durable.
    pub(crate) fn handle_vote(&mut self, from: NodeId, last: EntryId) {
        let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
        let granted = can_vote && last.is_up_to_date_with(self.log.last()) && self.may_vote();
        if granted && self.vote != Some(from) {
            self.vote = Some(from);
            self.term_vote_dirty = true;
            self.election_elapsed_ticks = 0;
        }
        let body = MessageBody::VoteResponse { granted };
        #[cfg(test)]
        if self.config.canary == Some(crate::raft::config::Canary::VoteNotPersisted) {
            self.send(from, body);
            return;
        }
        let required = self.term_vote_requirement();
        self.send_after(required, from, body);
    }

    /// Whether this node's log reached its vote floor (`RestoredState::vote_floor`).
    pub(crate) fn may_vote(&self) -> bool {
        self.log.last().index >= self.vote_floor
    }

    pub(crate) fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate(Votes::default());
        self.leader = None;
        self.reset_election_timer();
        let last = self.log.last();
        let pre_vote_term = self.term.next();
        for position in 0..self.membership.voters.len() {
            let Some(&voter) = self.membership.voters.get(position) else {
                break;
            };
            if voter != self.config.id {
                self.messages.push(Message {
                    from: self.config.id,
                    to: voter,
                    term: pre_vote_term,
                    body: MessageBody::PreVote { last },
                });
            }
        }
        self.record_vote(self.config.id, true);
    }

    /// §5.2: raise the term, vote for self, and ask every voter once the vote is durable.
    pub(crate) fn become_candidate(&mut self, leader_transfer: bool) {
        self.term = self.term.next();
        self.vote = Some(self.config.id);
        self.term_vote_dirty = true;
        self.role = Role::Candidate(Votes::default());
        self.leader = None;
        self.reset_election_timer();
        let last = self.log.last();
        let required = self.term_vote_requirement();
        for position in 0..self.membership.voters.len() {
            let Some(&voter) = self.membership.voters.get(position) else {
                break;
            };
            if voter != self.config.id {
                let body = MessageBody::Vote {
                    last,
                    leader_transfer,
                };
                self.send_after(required, voter, body);
            }
        }
        self.record_vote(self.config.id, true);
    }

    /// Count one response and act on the outcome.
    fn record_vote(&mut self, from: NodeId, granted: bool) {
        let Ok(position) = self.membership.voters.binary_search(&from) else {
            return;
        };
        let voter_count = self.membership.voters.len();
        let bit = 1u64 << position;
        let (Role::PreCandidate(votes) | Role::Candidate(votes)) = &mut self.role else {
            return;
        };
        if (votes.granted | votes.rejected) & bit != 0 {
            return;
        }
        if granted {
            votes.granted |= bit;
        } else {
            votes.rejected |= bit;
        }
        let result = tally(
            votes.granted.count_ones() as usize,
            votes.rejected.count_ones() as usize,
            voter_count,
        );
        let pre = matches!(self.role, Role::PreCandidate(_));
        match (result, pre) {
            (VoteResult::Won, true) => self.become_candidate(false),
            (VoteResult::Won, false) => self.become_leader(),
            (VoteResult::Lost, _) => self.become_follower(self.term, None),
            (VoteResult::Pending, _) => {}
        }
    }

    /// §5.2/§8: take over, with every follower probed from after the last entry, and append
    /// an empty entry of this term so earlier entries can be committed (§5.4.2).
    pub(crate) fn become_leader(&mut self) {
        assert!(
            matches!(self.role, Role::Candidate(_)) && self.vote == Some(self.config.id),
            "group {}: node {} becomes leader without being a candidate that voted for itself",
            self.config.group,
            self.config.id
        );
        let next = self.log.last().index.next();
        let mut progress =
            Vec::with_capacity(self.membership.voters.len() + self.membership.learners.len());
        for &voter in &self.membership.voters {
            if voter != self.config.id {
                progress.push(Progress::new(voter, true, next));
            }
        }
        for &learner in &self.membership.learners {
            if learner != self.config.id {
                progress.push(Progress::new(learner, false, next));
            }
        }
        let empty = Entry {
            id: EntryId::new(self.term, next),
            kind: EntryKind::Empty,
            data: bytes::Bytes::new(),
        };
        let state = LeaderState {
            progress,
            transfer: None,
            reads: VecDeque::new(),
            read_round: 0,
            read_round_unsent: false,
            read_round_confirmed: 0,
            heartbeat_elapsed_ticks: 0,
            heartbeat_due: false,
            appends_dirty: true,
            term_start: next,
            uncommitted_bytes: empty.size_bytes(),
        };
        self.role = Role::Leader(Box::new(state));
        self.leader = Some(self.config.id);
        self.election_elapsed_ticks = 0;
        self.log.push(empty);
    }

    /// Leader's tick: heartbeats, check-quorum (§6.2), transfer abort (§3.10).
    pub(crate) fn tick_leader(&mut self) {
        let heartbeat_interval = self.config.heartbeat_interval_ticks.get();
        let election_timeout = self.config.election_timeout_ticks.get();
        let Role::Leader(state) = &mut self.role else {
            return;
        };
        state.heartbeat_elapsed_ticks += 1;
        for progress in &mut state.progress {
            if progress.snapshot_backoff_ticks > 0 {
                progress.snapshot_backoff_ticks -= 1;
                // A follower that waited for the backoff may be offered the snapshot now.
                state.appends_dirty |= progress.snapshot_backoff_ticks == 0;
            }
        }
        if state.heartbeat_elapsed_ticks >= heartbeat_interval {
            state.heartbeat_elapsed_ticks = 0;
            state.heartbeat_due = true;
        }
        if let Some(transfer) = &mut state.transfer {
            transfer.elapsed_ticks += 1;
            if transfer.elapsed_ticks >= election_timeout {
                state.transfer = None;
            }
        }
        self.election_elapsed_ticks += 1;
        if self.election_elapsed_ticks < election_timeout {
            return;
        }
        self.election_elapsed_ticks = 0;
        if self.config.check_quorum && !self.quorum_recently_active() {
            // §6.2: without a quorum heard from in an election timeout, stop leading so
            // clients can find the real leader.
            self.become_follower(self.term, None);
            return;
        }
        self.check_round_reset();
    }

    fn quorum_recently_active(&self) -> bool {
        let Role::Leader(state) = &self.role else {
            return false;
        };
        let active = 1 + state
            .progress
            .iter()
            .filter(|p| p.voter && p.recent_active)
            .count();
        active >= self.membership.quorum()
    }
}
