//! Log replication of one group (paper §5.3, §5.4.2; thesis §3.5 flow control, §10.2.1
//! the leader's own write in parallel): the leader's appends and heartbeats, the
//! follower's consistency check and conflict hint, acknowledgements, and commit by
//! counting only entries of the current term (Figure 8). Must not decide elections.

use crate::constants::VOTERS_MAX;
use crate::ids::{EntryId, LogIndex, NodeId};
use crate::raft::log::{Missing, RaftLog};
use crate::raft::node::{RaftNode, Role};
use crate::raft::progress::{Progress, ProgressState};
use crate::raft::quorum::majority_value;
use crate::raft::types::{AppendResponse, Entry, Membership, Message, MessageBody, SnapshotMeta};

/// Heartbeats without any acknowledgement while appends are in flight after which those
/// appends count as lost and the follower is probed again.
const APPENDS_LOST_AFTER_HEARTBEATS: u8 = 3;

/// What building appends for one follower needs besides its progress.
struct AppendContext<'a> {
    log: &'a RaftLog,
    from: NodeId,
    term: crate::ids::Term,
    commit: LogIndex,
    count_max: usize,
    bytes_max: u64,
    inflight_appends_max: usize,
    inflight_bytes_max: u64,
    /// The snapshot offered to a follower whose next entry is compacted (thesis §5): the
    /// newest the caller keeps (`RaftNode::snapshot_to_offer`), with this membership.
    snapshot: EntryId,
    membership: &'a Membership,
    /// Leader ticks before the snapshot may be offered to the same follower again.
    snapshot_backoff_ticks: u32,
}

impl RaftNode {
    /// Build the leader's pending heartbeats, appends and TimeoutNow (called from `ready`).
    pub(crate) fn flush_leader(&mut self) {
        let snapshot = self.snapshot_to_offer();
        let Role::Leader(state) = &mut self.role else {
            return;
        };
        let heartbeat_due = std::mem::take(&mut state.heartbeat_due);
        let appends_dirty = std::mem::take(&mut state.appends_dirty);
        let context = AppendContext {
            log: &self.log,
            from: self.config.id,
            term: self.term,
            commit: self.commit,
            count_max: self.config.append_entries_max,
            bytes_max: self.config.append_bytes_max,
            inflight_appends_max: self.config.inflight_appends_max,
            inflight_bytes_max: self.config.inflight_bytes_max,
            snapshot,
            membership: &self.membership,
            snapshot_backoff_ticks: self.config.election_timeout_ticks.get(),
        };
        let read_round = if state.reads.is_empty() {
            None
        } else {
            Some(state.read_round)
        };
        let mut missing = None;
        for progress in &mut state.progress {
            let lost = heartbeat_due && progress.heartbeat_sent(APPENDS_LOST_AFTER_HEARTBEATS);
            if heartbeat_due {
                self.messages.push(Message {
                    from: context.from,
                    to: progress.node,
                    term: context.term,
                    body: MessageBody::Heartbeat {
                        // Never beyond what the follower is known to hold (§5.3).
                        commit: context.commit.min(progress.matched),
                        read_round,
                    },
                });
            }
            if (appends_dirty || lost)
                && let Err(Missing(index)) = send_appends(&context, progress, &mut self.messages)
            {
                missing = Some(missing.map_or(index, |m: LogIndex| m.min(index)));
            }
        }
        if heartbeat_due {
            state.read_round_unsent = false;
        }
        if let Some(transfer) = &mut state.transfer
            && !transfer.timeout_now_sent
            && let Some(progress) = state.progress.iter().find(|p| p.node == transfer.target)
            && progress.matched == self.log.last().index
        {
            // Thesis §3.10: the target is up to date; tell it to start an election now.
            transfer.timeout_now_sent = true;
            self.messages.push(Message {
                from: context.from,
                to: transfer.target,
                term: context.term,
                body: MessageBody::TimeoutNow,
            });
        }
        if let Some(index) = missing {
            self.want_fetch(index);
        }
    }

    pub(crate) fn step_leader(&mut self, message: Message) {
        let from = message.from;
        match message.body {
            MessageBody::AppendResponse(response) => self.handle_append_response(from, response),
            MessageBody::HeartbeatResponse { read_round } => {
                self.handle_heartbeat_response(from, read_round);
            }
            MessageBody::ReadIndex { context } => {
                let refused = self.leader_read(context, from).is_err();
                if refused {
                    let body = MessageBody::ReadIndexResponse {
                        context,
                        index: None,
                    };
                    self.send(from, body);
                }
            }
            // A leader of this term already has a vote; refuse (§5.2).
            MessageBody::Vote { .. } => {
                self.send(from, MessageBody::VoteResponse { granted: false })
            }
            MessageBody::PreVote { last } => self.handle_pre_vote(from, message.term, last),
            _ => {}
        }
    }

    fn progress_mut(&mut self, node: NodeId) -> Option<&mut Progress> {
        let Role::Leader(state) = &mut self.role else {
            return None;
        };
        state.progress.iter_mut().find(|p| p.node == node)
    }

    fn handle_append_response(&mut self, from: NodeId, response: AppendResponse) {
        let last_index = self.log.last().index;
        let compacted = self.log.before_first().index;
        let mut committed_moved = false;
        let mut trim = false;
        match response {
            AppendResponse::Accepted { last_index: acked } => {
                let Some(progress) = self.progress_mut(from) else {
                    return;
                };
                progress.recent_active = true;
                if acked > last_index {
                    return;
                }
                if progress.acknowledge(acked, compacted) {
                    committed_moved = progress.voter;
                    trim = true;
                }
            }
            AppendResponse::Rejected {
                rejected,
                hint,
                lost,
            } => {
                let conflict = self.log.find_conflict_by_term(hint.index, hint.term);
                let Some(progress) = self.progress_mut(from) else {
                    return;
                };
                progress.recent_active = true;
                if lost {
                    progress.forget_match();
                }
                back_up(progress, rejected, conflict);
            }
        }
        self.mark_appends_dirty();
        if committed_moved {
            self.maybe_commit();
        }
        if trim {
            self.trim_tail();
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: Option<u64>) {
        let last_index = self.log.last().index;
        let Role::Leader(state) = &mut self.role else {
            return;
        };
        let current_round = state.read_round;
        let Some(progress) = state.progress.iter_mut().find(|p| p.node == from) else {
            return;
        };
        progress.recent_active = true;
        if let ProgressState::Probe { paused: true } = progress.state {
            progress.state = ProgressState::Probe { paused: false };
        }
        if progress.matched < last_index {
            state.appends_dirty = true;
        }
        if let Some(round) = read_round
            && round <= current_round
            && round > progress.read_round_acked
        {
            progress.read_round_acked = round;
            self.update_read_confirmed();
        }
    }

    /// §5.3/§5.4.2: the highest index a majority of voters holds durably becomes committed,
    /// but only if that entry is of the current term (Figure 8).
    pub(crate) fn maybe_commit(&mut self) {
        let Role::Leader(state) = &self.role else {
            return;
        };
        let mut values = [0u64; VOTERS_MAX];
        let mut count = 0;
        if self.membership.is_voter(self.config.id) {
            values[0] = self.log.persisted().get();
            count = 1;
        }
        for progress in state.progress.iter().filter(|p| p.voter) {
            if let Some(slot) = values.get_mut(count) {
                *slot = progress.matched.get();
                count += 1;
            }
        }
        let Some(majority) = majority_value(&mut values[..count]) else {
            return;
        };
        let majority = LogIndex(majority);
        if majority <= self.commit {
            return;
        }
        #[cfg(test)]
        let any_term =
            self.config.canary == Some(crate::raft::config::Canary::CommitOldTermEntries);
        #[cfg(not(test))]
        let any_term = false;
        if !any_term && self.log.term_at(majority) != Some(self.term) {
            return;
        }
        self.commit_to(majority);
    }

    /// Raise the commit index (never lowers it).
    pub(crate) fn commit_to(&mut self, commit: LogIndex) {
        if commit <= self.commit {
            return;
        }
        assert!(
            commit <= self.log.last().index,
            "group {}: commit {commit} beyond last {}",
            self.config.group,
            self.log.last()
        );
        let previous = self.commit;
        self.commit = commit;
        if let Role::Leader(state) = &mut self.role {
            // Uncommitted-bytes accounting: entries of this term still in the tail.
            let first = previous
                .next()
                .max(state.term_start)
                .max(self.log.tail_first());
            let mut index = first;
            while index <= commit {
                if let Some(entry) = self.log.entry(index) {
                    state.uncommitted_bytes =
                        state.uncommitted_bytes.saturating_sub(entry.size_bytes());
                }
                index = index.next();
            }
            let first_commit_in_term = previous < state.term_start && commit >= state.term_start;
            state.appends_dirty = true;
            if first_commit_in_term {
                self.start_waiting_reads();
            }
        }
    }

    /// Follower side of AppendEntries (§5.3).
    pub(crate) fn handle_append(
        &mut self,
        from: NodeId,
        prev: EntryId,
        entries: Vec<Entry>,
        commit: LogIndex,
    ) {
        if prev.index < self.commit {
            // Everything up to the commit index already matches the leader (§5.4 Leader
            // Completeness); acknowledge it so the leader moves on.
            let skip = self.commit.distance_from(prev.index) as usize;
            let rest: Vec<Entry> = entries.into_iter().skip(skip).collect();
            let prev = EntryId::new(
                self.log.term_at(self.commit).unwrap_or_default(),
                self.commit,
            );
            return self.handle_append(from, prev, rest, commit);
        }
        if !self.log.matches(prev) {
            let hint = self.log.find_conflict_by_term(prev.index, prev.term);
            let required = self.term_vote_requirement();
            let body = MessageBody::AppendResponse(AppendResponse::Rejected {
                rejected: prev,
                hint,
                lost: !self.may_vote(),
            });
            self.send_after(required, from, body);
            return;
        }
        let last_new = prev.index.plus(entries.len() as u64);
        let first_new = if prev.index == self.log.last().index {
            Some(0)
        } else {
            entries.iter().position(|entry| !self.log.matches(entry.id))
        };
        if let Some(position) = first_new {
            for entry in entries.into_iter().skip(position) {
                if entry.index() <= self.log.last().index {
                    assert!(
                        entry.index() > self.commit,
                        "group {}: append from {from} conflicts at {} with committed {}",
                        self.config.group,
                        entry.id,
                        self.commit
                    );
                    self.log.truncate_from(entry.index());
                }
                self.log.push(entry);
            }
        }
        self.commit_to(commit.min(last_new));
        let required = self.log_requirement(last_new);
        let body = MessageBody::AppendResponse(AppendResponse::Accepted {
            last_index: last_new,
        });
        self.send_after(required, from, body);
    }

    /// A heartbeat carries the commit index, bounded by what this follower holds.
    pub(crate) fn handle_heartbeat(
        &mut self,
        from: NodeId,
        commit: LogIndex,
        read_round: Option<u64>,
    ) {
        self.commit_to(commit.min(self.log.last().index));
        let required = self.term_vote_requirement();
        if !self.may_vote() && commit > self.log.last().index {
            // A leader shows a follower at most the commit it matched, so it still counts
            // entries this node acknowledged before it lost them; an idle group sends no
            // append to reject, so this says so (the leader forgets the match and probes).
            let hint = self.log.find_conflict_by_term(commit, self.term);
            let body = MessageBody::AppendResponse(AppendResponse::Rejected {
                rejected: EntryId::new(self.term, commit),
                hint,
                lost: true,
            });
            self.send_after(required, from, body);
        }
        self.send_after(
            required,
            from,
            MessageBody::HeartbeatResponse { read_round },
        );
    }

    /// Once per election timeout on the leader: forget who was active, send replicating
    /// followers whose match did not move back to probing (their appends were lost), and
    /// release idle in-flight windows.
    pub(crate) fn check_round_reset(&mut self) {
        let last_index = self.log.last().index;
        let Role::Leader(state) = &mut self.role else {
            return;
        };
        for progress in &mut state.progress {
            progress.recent_active = false;
            let stalled = progress.state == ProgressState::Replicate
                && progress.matched < last_index
                && progress.matched == progress.matched_at_check
                && progress.inflights.count() > 0;
            if stalled {
                progress.become_probe(progress.matched.next());
                state.appends_dirty = true;
            }
            progress.matched_at_check = progress.matched;
            progress.inflights.release_if_idle();
        }
    }
}

/// A follower refused an append: unless stale, probe again from the entry after the
/// leader's last entry that may match (fast backtracking, §5.3).
fn back_up(progress: &mut Progress, rejected: EntryId, conflict: EntryId) {
    if rejected.index <= progress.matched {
        return;
    }
    // A rejection of an append sent before the snapshot was offered says nothing new.
    if let ProgressState::Snapshot { .. } = progress.state {
        return;
    }
    if let ProgressState::Probe { .. } = progress.state
        && rejected.index.next() != progress.next
    {
        return;
    }
    let next = conflict
        .index
        .next()
        .min(rejected.index)
        .max(progress.matched.next());
    progress.become_probe(next);
}

/// Offer the snapshot to a follower whose next entry is compacted, at most once per backoff
/// (an election timeout), and wait for it in the snapshot state.
fn offer_snapshot(
    context: &AppendContext<'_>,
    progress: &mut Progress,
    messages: &mut Vec<Message>,
) {
    if progress.snapshot_backoff_ticks > 0 {
        return;
    }
    let last = context.snapshot;
    assert!(
        last.index > LogIndex::ZERO,
        "leader {}: follower {} needs entry {} that no snapshot covers",
        context.from,
        progress.node,
        progress.next
    );
    messages.push(Message {
        from: context.from,
        to: progress.node,
        term: context.term,
        body: MessageBody::InstallSnapshot {
            snapshot: SnapshotMeta {
                last,
                membership: context.membership.clone(),
            },
        },
    });
    progress.become_snapshot(last.index, context.snapshot_backoff_ticks);
}

/// Send what the window allows to one follower, up to `bytes_max` this time (the
/// acknowledgements of these messages bring the next flush). Reports the first entry not in
/// memory.
fn send_appends(
    context: &AppendContext<'_>,
    progress: &mut Progress,
    messages: &mut Vec<Message>,
) -> Result<(), Missing> {
    let last_index = context.log.last().index;
    let mut flushed_bytes = 0u64;
    while progress.can_send(context.inflight_appends_max, context.inflight_bytes_max)
        && progress.next <= last_index
        && flushed_bytes < context.bytes_max
    {
        let Some(prev_index) = progress.next.prev() else {
            break;
        };
        let Some(prev_term) = context.log.term_at(prev_index) else {
            // Compacted away: the follower needs the snapshot (thesis §5).
            offer_snapshot(context, progress, messages);
            break;
        };
        let entries = context.log.entries(
            progress.next,
            last_index,
            (context.count_max, context.bytes_max),
        )?;
        let Some(last) = entries.last().map(Entry::index) else {
            break;
        };
        let bytes: u64 = entries.iter().map(Entry::size_bytes).sum();
        let entry_count = entries.len();
        messages.push(Message {
            from: context.from,
            to: progress.node,
            term: context.term,
            body: MessageBody::Append {
                prev: EntryId::new(prev_term, prev_index),
                entries,
                commit: context.commit,
            },
        });
        progress.sent(last, bytes, entry_count);
        flushed_bytes += bytes;
    }
    probe_past_the_end(context, progress, messages);
    Ok(())
}

/// A follower probed from past the leader's last entry (after a snapshot transfer was
/// reported finished, thesis §5) is asked with an empty append whether it holds that entry,
/// so that its answer moves the leader on either way.
fn probe_past_the_end(
    context: &AppendContext<'_>,
    progress: &mut Progress,
    messages: &mut Vec<Message>,
) {
    let last = context.log.last();
    let probing = progress.state == (ProgressState::Probe { paused: false });
    if !probing || progress.next != last.index.next() || progress.matched >= last.index {
        return;
    }
    messages.push(Message {
        from: context.from,
        to: progress.node,
        term: context.term,
        body: MessageBody::Append {
            prev: last,
            entries: Vec::new(),
            commit: context.commit,
        },
    });
    progress.sent(last.index, 0, 0);
}
