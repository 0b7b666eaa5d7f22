//! Snapshots and log compaction of one group (thesis chapter 5, paper §7): folding the
//! applied prefix into a snapshot the caller holds (`compact`), offering it to a follower
//! whose next entry is gone, the leader's snapshot state per follower and the caller's
//! report on the transfer (`report_snapshot`), and a follower installing one.
//!
//! The core carries snapshot METADATA and the protocol decisions only: the state machine's
//! bytes are written, streamed in chunks and staged by the layer around it, which steps
//! `InstallSnapshot` only once the whole snapshot is staged. This file must not hold or
//! request snapshot data, and must not perform I/O.

use crate::ids::{LogIndex, NodeId};
use crate::raft::errors::CompactError;
use crate::raft::node::{RaftNode, Role};
use crate::raft::progress::ProgressState;
use crate::raft::types::{
    AppendResponse, MessageBody, PersistPosition, SnapshotMeta, SnapshotStatus,
};

impl RaftNode {
    /// The caller holds a durable snapshot of the state machine at `index` (at most the
    /// applied index): record it as this group's snapshot and forget the log up to it
    /// (thesis §5.1). Entries at or below it are never asked for again; the term of `index`
    /// stays known. Compacting at or below the current snapshot does nothing.
    pub fn compact(&mut self, index: LogIndex) -> Result<(), CompactError> {
        if index > self.applied {
            return Err(CompactError::BeyondApplied {
                index,
                applied: self.applied,
            });
        }
        if index <= self.log.before_first().index {
            return Ok(());
        }
        self.log.compact(index);
        let last = self.log.before_first();
        assert!(
            last.index == index,
            "group {}: compacted to {last}, asked for {index}",
            self.config.group
        );
        if self.fetch_wanted.is_some_and(|wanted| wanted <= index) {
            self.fetch_wanted = None;
        }
        // Followers whose next entry is now gone need the snapshot.
        self.mark_appends_dirty();
        Ok(())
    }

    /// The caller keeps a durable snapshot at `index` (at most the applied index) beside the
    /// log, which still starts at an older one: a follower that needs a snapshot is offered
    /// this newest one, so it does not replay the entries between the two (the leader may
    /// send any snapshot of committed state, thesis §5.3). An index at or below where the log
    /// starts, or beyond applied, is ignored.
    pub fn note_snapshot(&mut self, index: LogIndex) {
        if index > self.log.before_first().index && index <= self.applied {
            self.newest_snapshot = self.newest_snapshot.max(index);
        }
    }

    /// The snapshot a follower that needs one is offered: the newest the caller noted, while
    /// the log still knows its term, else the one the log starts at.
    pub(crate) fn snapshot_to_offer(&self) -> crate::ids::EntryId {
        let start = self.log.before_first();
        if self.newest_snapshot > start.index
            && let Some(term) = self.log.term_at(self.newest_snapshot)
        {
            return crate::ids::EntryId::new(term, self.newest_snapshot);
        }
        start
    }

    /// The newest snapshot this node knows of (restored, compacted or installed): where the
    /// log starts, with the group's membership.
    pub fn snapshot(&self) -> Option<SnapshotMeta> {
        let last = self.log.before_first();
        (last.index > LogIndex::ZERO).then(|| SnapshotMeta {
            last,
            membership: self.membership.clone(),
        })
    }

    /// On a leader: the lowest match among the followers heard from since the last
    /// check-quorum round (thesis §6.2), or `None` (not leading, or no such follower). A
    /// caller that compacts past it makes that follower need a snapshot (thesis §5.1).
    pub fn active_follower_match_min(&self) -> Option<LogIndex> {
        let Role::Leader(state) = &self.role else {
            return None;
        };
        state
            .progress
            .iter()
            .filter(|p| p.node != self.config.id && p.recent_active)
            .map(|p| p.matched)
            .min()
    }

    /// The layer streaming a snapshot to `to` ended the transfer (etcd's ReportSnapshot).
    /// Finished: probe from the snapshot's last entry on. Failed: probe again after a
    /// heartbeat round, which offers the snapshot again if still needed. Ignored unless this
    /// node leads and `to` waits for a snapshot.
    pub fn report_snapshot(&mut self, to: NodeId, status: SnapshotStatus) {
        let Role::Leader(state) = &mut self.role else {
            return;
        };
        let Some(progress) = state.progress.iter_mut().find(|p| p.node == to) else {
            return;
        };
        let ProgressState::Snapshot { last } = progress.state else {
            return;
        };
        match status {
            SnapshotStatus::Finished => {
                let next = last.max(progress.matched).next();
                progress.become_probe(next);
            }
            SnapshotStatus::Failed => {
                progress.become_probe(progress.matched.next());
                progress.state = ProgressState::Probe { paused: true };
            }
        }
        state.appends_dirty = true;
    }

    /// Follower side of InstallSnapshot (thesis §5.1), stepped once the data is staged. A
    /// snapshot at or below the commit index (stale, or this node caught up meanwhile)
    /// changes nothing and is answered with the commit index. Otherwise the log keeps the
    /// entries after the snapshot if it holds its last entry, or is discarded; the snapshot
    /// goes out with the next persist, commit moves to it at once and applied once it is
    /// durable, and the acknowledgement leaves only after that persist.
    pub(crate) fn handle_install_snapshot(&mut self, from: NodeId, snapshot: SnapshotMeta) {
        let last = snapshot.last;
        if last.index <= self.commit {
            let required = self.log_requirement(self.commit);
            let body = MessageBody::AppendResponse(AppendResponse::Accepted {
                last_index: self.commit,
            });
            self.send_after(required, from, body);
            return;
        }
        self.log.install_snapshot(last, self.commit);
        self.commit = last.index;
        self.apply_sent = self.apply_sent.max(last.index);
        if self.fetch_wanted.is_some_and(|wanted| wanted <= last.index) {
            self.fetch_wanted = None;
        }
        self.snapshot_unsent = true;
        // The snapshot rides on the next persist; term and vote are durable by then too.
        let required = PersistPosition(self.position_sent.0 + 1).max(self.term_vote_requirement());
        let body = MessageBody::AppendResponse(AppendResponse::Accepted {
            last_index: last.index,
        });
        #[cfg(test)]
        if self.config.canary == Some(crate::raft::config::Canary::SnapshotAckedBeforePersist) {
            self.send(from, body);
            return;
        }
        self.send_after(required, from, body);
    }

    /// A persist handed out a received snapshot: applied jumps to it once that is durable.
    pub(crate) fn snapshot_persist_sent(
        &mut self,
        position: PersistPosition,
    ) -> Option<SnapshotMeta> {
        if !std::mem::take(&mut self.snapshot_unsent) {
            return None;
        }
        self.snapshot_pending = Some(position);
        self.snapshot()
    }

    /// `position` is durable: if it carried a received snapshot, the caller installed the
    /// staged state machine data with it, so everything up to the snapshot is applied.
    pub(crate) fn snapshot_persisted(&mut self, position: PersistPosition) {
        let Some(required) = self.snapshot_pending else {
            return;
        };
        let index = self.log.before_first().index;
        if position < required {
            return;
        }
        self.snapshot_pending = None;
        self.applied = self.applied.max(index);
        self.apply_sent = self.apply_sent.max(index);
    }

    /// Whether committed entries must wait: a received snapshot is not yet durable (and so
    /// not yet the state machine's state).
    pub(crate) fn snapshot_install_in_progress(&self) -> bool {
        self.snapshot_unsent || self.snapshot_pending.is_some()
    }
}
