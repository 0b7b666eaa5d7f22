//! Linearizable reads without log writes (thesis §6.4 ReadIndex): the leader records its
//! commit index, confirms it is still leader by a heartbeat round acknowledged by a
//! quorum, and releases the read once the state machine applied that index. Followers
//! forward reads to the leader and wait for their own apply. Must not touch the log.

use crate::constants::{READ_INDEX_PENDING_MAX, VOTERS_MAX};
use crate::ids::{LogIndex, NodeId};
use crate::raft::errors::ReadIndexError;
use crate::raft::node::{PendingRead, RaftNode, Role};
use crate::raft::quorum::majority_value;
use crate::raft::types::{Message, MessageBody, ReadContext, ReadState};

impl RaftNode {
    /// Queue a read on the leader for `origin` (this node or a follower that forwarded it).
    pub(crate) fn leader_read(
        &mut self,
        context: ReadContext,
        origin: NodeId,
    ) -> Result<(), ReadIndexError> {
        let commit = self.commit;
        let Role::Leader(state) = &mut self.role else {
            return Err(ReadIndexError::NoLeader);
        };
        if state.reads.len() >= READ_INDEX_PENDING_MAX {
            return Err(ReadIndexError::TooManyPending {
                pending: state.reads.len(),
            });
        }
        // §6.4 step 1: until an entry of this term is committed, the leader's commit index
        // may be stale; the read waits for that first commit.
        let committed_in_term = commit >= state.term_start;
        let index = committed_in_term.then_some(commit);
        if committed_in_term && !state.read_round_unsent {
            state.read_round += 1;
            state.read_round_unsent = true;
            state.heartbeat_due = true;
        }
        state.reads.push_back(PendingRead {
            context,
            origin,
            index,
            round: state.read_round,
        });
        self.update_read_confirmed();
        Ok(())
    }

    /// The leader's first commit of its term: reads waiting for it take the commit index
    /// and a fresh heartbeat round.
    pub(crate) fn start_waiting_reads(&mut self) {
        let commit = self.commit;
        let Role::Leader(state) = &mut self.role else {
            return;
        };
        if state.reads.iter().all(|read| read.index.is_some()) {
            return;
        }
        if !state.read_round_unsent {
            state.read_round += 1;
            state.read_round_unsent = true;
        }
        for read in state.reads.iter_mut().filter(|read| read.index.is_none()) {
            read.index = Some(commit);
            read.round = state.read_round;
        }
        state.heartbeat_due = true;
        self.update_read_confirmed();
    }

    /// The newest round a quorum of voters (this leader included) has acknowledged.
    pub(crate) fn update_read_confirmed(&mut self) {
        let self_voter = self.membership.is_voter(self.config.id);
        let Role::Leader(state) = &mut self.role else {
            return;
        };
        let mut values = [0u64; VOTERS_MAX];
        let mut count = 0;
        if self_voter {
            values[0] = state.read_round;
            count = 1;
        }
        for progress in state.progress.iter().filter(|p| p.voter) {
            if let Some(slot) = values.get_mut(count) {
                *slot = progress.read_round_acked;
                count += 1;
            }
        }
        if let Some(confirmed) = majority_value(&mut values[..count]) {
            state.read_round_confirmed = state.read_round_confirmed.max(confirmed);
        }
    }

    fn read_releasable(&self, read: &PendingRead, confirmed_round: u64) -> bool {
        let Some(index) = read.index else {
            return false;
        };
        read.round <= confirmed_round && (read.origin != self.config.id || index <= self.applied)
    }

    pub(crate) fn leader_read_releasable(&self) -> bool {
        let Role::Leader(state) = &self.role else {
            return false;
        };
        state
            .reads
            .front()
            .is_some_and(|read| self.read_releasable(read, state.read_round_confirmed))
    }

    /// Release confirmed reads in order: local ones as read states once applied, forwarded
    /// ones as answers to the follower (which waits for its own apply).
    pub(crate) fn release_leader_reads(&mut self, read_states: &mut Vec<ReadState>) {
        loop {
            let Role::Leader(state) = &self.role else {
                return;
            };
            let Some(&read) = state.reads.front() else {
                return;
            };
            if !self.read_releasable(&read, state.read_round_confirmed) {
                return;
            }
            if let Role::Leader(state) = &mut self.role {
                state.reads.pop_front();
            }
            let index = read.index.unwrap_or_default();
            if read.origin == self.config.id {
                read_states.push(ReadState {
                    context: read.context,
                    index,
                });
            } else {
                self.messages.push(Message {
                    from: self.config.id,
                    to: read.origin,
                    term: self.term,
                    body: MessageBody::ReadIndexResponse {
                        context: read.context,
                        index: Some(index),
                    },
                });
            }
        }
    }

    /// The leader confirmed a forwarded read at `index`; serve it once applied. A refused
    /// read is dropped (the caller retries on its own timeout or on a leader change).
    pub(crate) fn follower_read_confirmed(
        &mut self,
        context: ReadContext,
        index: Option<LogIndex>,
    ) {
        let Some(index) = index else {
            return;
        };
        if self.follower_reads.len() < READ_INDEX_PENDING_MAX {
            self.follower_reads.push_back(ReadState { context, index });
        }
    }
}
