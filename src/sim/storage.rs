//! The simulated durable log of one Raft group on one node: the hard state, the snapshot and
//! the entries after it that survive a crash, plus the queue of writes handed over by `Ready::persist` that are not yet
//! synced. A write completes after a simulated delay (so `on_persisted` lags the write), in
//! submission order; a crash keeps a prefix of the pending writes (those that reached the
//! platter before power went) and drops the rest.
//!
//! This module owns only the bytes a disk would hold. It must not know Raft roles, must not
//! call into `RaftNode`, and must not decide when messages may leave (the cluster does).

use std::collections::VecDeque;

use thiserror::Error;

use crate::ids::{EntryId, LogIndex, Term};
use crate::raft::{Entry, HardState, Message, Persist, PersistPosition};

/// A write the core asked for that this log cannot take: every variant is a bug in the core
/// (or in the driver), reported as a safety violation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StorageError {
    #[error("append starts at {first} but the log ends at {last_index}: a gap")]
    Gap {
        first: LogIndex,
        last_index: LogIndex,
    },
    #[error("appended entries are not consecutive: {previous} then {next}")]
    NotConsecutive { previous: EntryId, next: EntryId },
    #[error("log terms decrease: {previous} then {next}")]
    TermDecreases { previous: EntryId, next: EntryId },
    #[error("hard state term goes back from {old} to {new}")]
    TermRegressed { old: Term, new: Term },
    #[error("vote of term {term} changes from {old:?} to {new:?}")]
    VoteChanged {
        term: Term,
        old: Option<crate::ids::NodeId>,
        new: Option<crate::ids::NodeId>,
    },
    #[error("hard state commit goes back from {old} to {new}")]
    CommitRegressed { old: LogIndex, new: LogIndex },
    #[error("persist position {new:?} does not follow {old:?}")]
    PositionNotIncreasing {
        old: PersistPosition,
        new: PersistPosition,
    },
    #[error("a snapshot at {last} was persisted without its staged data")]
    SnapshotWithoutData { last: EntryId },
    #[error("snapshot goes back from {old} to {new}")]
    SnapshotRegressed { old: EntryId, new: EntryId },
}

/// The simulated state machine's state at a snapshot: the state is the applied prefix of the
/// log, so its identity is the prefix hash of that prefix (the `chain` of the entry at
/// `last`), exactly what a full log's chain value at `last` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimSnapshot {
    pub last: EntryId,
    pub chain: u64,
}

/// One group's log contents as of some point: a snapshot (thesis §5) and the entries after
/// it; entry `i` sits at `entries[i - snapshot_index() - 1]`. `chain` holds, for each entry,
/// the hash of every entry up to and including it (the snapshot's chain standing for the
/// prefix it folds in), so two logs agree on a prefix exactly when their chain values at its
/// last index are equal (Log Matching, paper §5.3).
#[derive(Clone, Debug, Default)]
pub struct LogState {
    pub hard_state: HardState,
    snapshot: Option<SimSnapshot>,
    entries: Vec<Entry>,
    chain: Vec<u64>,
}

impl LogState {
    pub fn snapshot(&self) -> Option<SimSnapshot> {
        self.snapshot
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.snapshot
            .map_or(LogIndex::ZERO, |snapshot| snapshot.last.index)
    }

    pub fn last_index(&self) -> LogIndex {
        self.snapshot_index().plus(self.entries.len() as u64)
    }

    pub fn last_id(&self) -> EntryId {
        match (self.entries.last(), self.snapshot) {
            (Some(entry), _) => entry.id,
            (None, Some(snapshot)) => snapshot.last,
            (None, None) => EntryId::ZERO,
        }
    }

    /// Position of entry `index` in `entries`, if it is after the snapshot.
    fn position(&self, index: LogIndex) -> Option<usize> {
        let offset = index
            .get()
            .checked_sub(self.snapshot_index().get())?
            .checked_sub(1)?;
        usize::try_from(offset).ok()
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.entries.get(self.position(index)?)
    }

    /// The prefix hash through `index`: known for the snapshot's last entry and after it.
    pub fn chain_at(&self, index: LogIndex) -> Option<u64> {
        if let Some(snapshot) = self.snapshot
            && snapshot.last.index == index
        {
            return Some(snapshot.chain);
        }
        self.chain.get(self.position(index)?).copied()
    }

    /// Fold everything up to `snapshot.last` into the snapshot (thesis §5.1): the entries
    /// after it stay if this log holds its last entry; otherwise the whole log goes.
    pub fn set_snapshot(&mut self, snapshot: SimSnapshot) -> Result<(), StorageError> {
        if let Some(old) = self.snapshot
            && old.last.index >= snapshot.last.index
        {
            return Err(StorageError::SnapshotRegressed {
                old: old.last,
                new: snapshot.last,
            });
        }
        let holds_last =
            self.entry(snapshot.last.index).map(|entry| entry.id) == Some(snapshot.last);
        match self.position(snapshot.last.index) {
            Some(position) if holds_last => {
                self.entries.drain(..=position);
                self.chain.drain(..=position);
            }
            _ => {
                self.entries.clear();
                self.chain.clear();
            }
        }
        self.snapshot = Some(snapshot);
        Ok(())
    }

    /// The first entry of each run of equal terms, as `RestoredState::term_runs` wants.
    pub fn term_runs(&self) -> Vec<EntryId> {
        let mut runs: Vec<EntryId> = Vec::new();
        for entry in &self.entries {
            if runs.last().is_none_or(|run| run.term != entry.term()) {
                runs.push(entry.id);
            }
        }
        runs
    }

    /// Entries `[first, last]` as far as the log holds them, stopping once `bytes_max` is
    /// reached (at least one entry is returned if any exists, as a WAL read would).
    pub fn entries_between(&self, first: LogIndex, last: LogIndex, bytes_max: u64) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut bytes = 0u64;
        let mut index = first;
        while index <= last {
            let Some(entry) = self.entry(index) else {
                break;
            };
            bytes = bytes.saturating_add(entry.size_bytes());
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
            index = index.next();
        }
        out
    }

    /// Apply one write: its snapshot (with the staged data `snapshot`), then its entries,
    /// then its hard state. Entries whose first index is at or below the last one replace
    /// the suffix from there (the core truncates a conflicting suffix this way); entries a
    /// snapshot taken since already folds in are skipped.
    pub fn apply(
        &mut self,
        persist: &Persist,
        snapshot: Option<SimSnapshot>,
    ) -> Result<(), StorageError> {
        if let Some(meta) = &persist.snapshot {
            match snapshot {
                Some(data) if data.last == meta.last => self.set_snapshot(data)?,
                _ => return Err(StorageError::SnapshotWithoutData { last: meta.last }),
            }
        }
        let compacted = self.snapshot_index();
        let mut entries = persist
            .entries
            .iter()
            .filter(|entry| entry.index() > compacted)
            .peekable();
        if let Some(first) = entries.peek() {
            let last_index = self.last_index();
            if first.index() > last_index.next() {
                return Err(StorageError::Gap {
                    first: first.index(),
                    last_index,
                });
            }
            let keep = self.position(first.index()).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
            self.chain.truncate(keep);
            for entry in entries {
                self.push(entry)?;
            }
        }
        if let Some(hard_state) = persist.hard_state {
            self.set_hard_state(hard_state)?;
        }
        Ok(())
    }

    fn push(&mut self, entry: &Entry) -> Result<(), StorageError> {
        let previous = self.last_id();
        if entry.index() != previous.index.next() {
            return Err(StorageError::NotConsecutive {
                previous,
                next: entry.id,
            });
        }
        if entry.term() < previous.term {
            return Err(StorageError::TermDecreases {
                previous,
                next: entry.id,
            });
        }
        let previous_chain = self
            .chain
            .last()
            .copied()
            .or(self.snapshot.map(|snapshot| snapshot.chain))
            .unwrap_or(0);
        self.chain.push(chain_hash(previous_chain, entry));
        self.entries.push(entry.clone());
        Ok(())
    }

    fn set_hard_state(&mut self, new: HardState) -> Result<(), StorageError> {
        let old = self.hard_state;
        if new.term < old.term {
            return Err(StorageError::TermRegressed {
                old: old.term,
                new: new.term,
            });
        }
        // Paper Figure 2: votedFor is set at most once per term.
        if new.term == old.term && old.vote.is_some() && new.vote != old.vote {
            return Err(StorageError::VoteChanged {
                term: new.term,
                old: old.vote,
                new: new.vote,
            });
        }
        if new.commit < old.commit {
            return Err(StorageError::CommitRegressed {
                old: old.commit,
                new: new.commit,
            });
        }
        self.hard_state = new;
        Ok(())
    }
}

/// A 64-bit digest of one entry's identity, kind and payload (FNV-1a, then a finaliser).
pub fn entry_digest(entry: &Entry) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let kind = match entry.kind {
        crate::raft::EntryKind::Command => 1u8,
        crate::raft::EntryKind::Empty => 2,
        crate::raft::EntryKind::Membership => 3,
    };
    let header = [entry.term().get(), entry.index().get()];
    for byte in header
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .chain(std::iter::once(kind))
        .chain(entry.data.iter().copied())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// The prefix hash of a log whose prefix before `entry` hashes to `previous`.
pub fn chain_hash(previous: u64, entry: &Entry) -> u64 {
    mix(previous.rotate_left(29) ^ entry_digest(entry))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A write in the disk queue: what to make durable, the messages that wait for it, and the
/// simulated time at which its sync completes.
#[derive(Debug)]
struct PendingWrite {
    persist: Option<Persist>,
    /// The staged snapshot data that `persist.snapshot` installs.
    snapshot: Option<SimSnapshot>,
    messages: Vec<Message>,
    done_at: u64,
}

/// What one completed sync hands back to the driver.
#[derive(Debug, Default)]
pub struct Completed {
    /// The position made durable, for `on_persisted`.
    pub position: Option<PersistPosition>,
    /// Messages that were waiting for these writes.
    pub messages: Vec<Message>,
    /// A snapshot the write installed: the state machine takes its state now.
    pub installed: Option<SimSnapshot>,
}

/// The durable log of one group on one node, with its queue of unsynced writes.
#[derive(Debug, Default)]
pub struct SimStorage {
    durable: LogState,
    /// `durable` with every pending write applied: what the core's own log looks like.
    view: LogState,
    pending: VecDeque<PendingWrite>,
    last_position: Option<PersistPosition>,
}

impl SimStorage {
    pub fn durable(&self) -> &LogState {
        &self.durable
    }

    pub fn view(&self) -> &LogState {
        &self.view
    }

    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// Queue a write (possibly empty, carrying only messages that must wait for every
    /// earlier write). Syncs complete in order, so `done_at` never precedes the previous one.
    pub fn submit(
        &mut self,
        persist: Option<Persist>,
        snapshot: Option<SimSnapshot>,
        messages: Vec<Message>,
        done_at: u64,
    ) -> Result<(), StorageError> {
        if let Some(persist) = &persist {
            if let Some(old) = self.last_position
                && persist.position <= old
            {
                return Err(StorageError::PositionNotIncreasing {
                    old,
                    new: persist.position,
                });
            }
            self.last_position = Some(persist.position);
            self.view.apply(persist, snapshot)?;
        }
        let done_at = self
            .pending
            .back()
            .map_or(done_at, |back| back.done_at.max(done_at));
        self.pending.push_back(PendingWrite {
            persist,
            snapshot,
            messages,
            done_at,
        });
        Ok(())
    }

    /// Complete the oldest write if its sync is due at `now`. One at a time, so that the
    /// messages waiting on a write leave while the disk holds exactly what they promise.
    pub fn complete_next(&mut self, now: u64) -> Result<Option<Completed>, StorageError> {
        if self.pending.front().is_none_or(|write| write.done_at > now) {
            return Ok(None);
        }
        let Some(write) = self.pending.pop_front() else {
            return Ok(None);
        };
        let mut completed = Completed {
            position: None,
            messages: write.messages,
            installed: None,
        };
        if let Some(persist) = &write.persist {
            self.durable.apply(persist, write.snapshot)?;
            completed.position = Some(persist.position);
            if persist.snapshot.is_some() {
                completed.installed = write.snapshot;
            }
        }
        Ok(Some(completed))
    }

    /// Whether a write that installs a received snapshot waits for its sync.
    pub fn snapshot_pending(&self) -> bool {
        self.pending
            .iter()
            .any(|write| write.persist.as_ref().is_some_and(|p| p.snapshot.is_some()))
    }

    /// The node took a snapshot of its state machine and wrote it durably (a snapshot file
    /// is written and synced before the log is compacted): both the durable log and the
    /// view fold in everything up to it. A snapshot not past what a log already has leaves
    /// that log alone.
    pub fn compact(&mut self, snapshot: SimSnapshot) -> Result<(), StorageError> {
        for log in [&mut self.durable, &mut self.view] {
            if log.snapshot_index() < snapshot.last.index {
                log.set_snapshot(snapshot)?;
            }
        }
        Ok(())
    }

    /// Power loss: the first `survivors` pending writes reached the disk, the rest did not;
    /// waiting messages are lost either way.
    pub fn crash(&mut self, survivors: usize) -> Result<(), StorageError> {
        for write in self.pending.drain(..).take(survivors) {
            if let Some(persist) = &write.persist {
                self.durable.apply(persist, write.snapshot)?;
            }
        }
        self.view = self.durable.clone();
        self.last_position = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ids::NodeId;
    use crate::raft::EntryKind;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            kind: EntryKind::Command,
            data: Bytes::from(format!("{index}@{term}")),
        }
    }

    fn write(position: u64, entries: Vec<Entry>, hard_state: Option<HardState>) -> Persist {
        Persist {
            position: PersistPosition(position),
            entries,
            hard_state,
            snapshot: None,
        }
    }

    impl SimStorage {
        fn submit_test(
            &mut self,
            persist: Option<Persist>,
            messages: Vec<Message>,
            done_at: u64,
        ) -> Result<(), StorageError> {
            self.submit(persist, None, messages, done_at)
        }
    }

    impl LogState {
        fn apply_test(&mut self, persist: &Persist) -> Result<(), StorageError> {
            self.apply(persist, None)
        }
    }

    #[test]
    fn snapshot_folds_the_prefix_and_keeps_a_matching_suffix() {
        // Thesis §5.1: compaction keeps the entries after the snapshot and their chain; a
        // snapshot that conflicts with the log discards it; writes of folded entries are
        // skipped and a snapshot never goes back.
        let mut log = LogState::default();
        log.apply_test(&write(1, vec![entry(1, 1), entry(1, 2), entry(1, 3)], None))
            .unwrap();
        let chain_two = log.chain_at(LogIndex(2)).unwrap();
        let chain_three = log.chain_at(LogIndex(3)).unwrap();
        let snapshot = SimSnapshot {
            last: EntryId::new(Term(1), LogIndex(2)),
            chain: chain_two,
        };
        log.set_snapshot(snapshot).unwrap();
        assert_eq!(log.entry(LogIndex(2)), None);
        assert_eq!(log.chain_at(LogIndex(2)), Some(chain_two));
        assert_eq!(log.chain_at(LogIndex(3)), Some(chain_three));
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term_runs(), vec![EntryId::new(Term(1), LogIndex(3))]);
        log.apply_test(&write(2, vec![entry(1, 2), entry(1, 3), entry(1, 4)], None))
            .unwrap();
        assert_eq!(log.last_index(), LogIndex(4));
        assert_eq!(log.chain_at(LogIndex(3)), Some(chain_three));
        assert!(matches!(
            log.set_snapshot(snapshot),
            Err(StorageError::SnapshotRegressed { .. })
        ));
        let other = SimSnapshot {
            last: EntryId::new(Term(2), LogIndex(3)),
            chain: 7,
        };
        log.set_snapshot(other).unwrap();
        assert_eq!(log.last_id(), other.last);
        assert_eq!(log.entry(LogIndex(4)), None);
        let meta = crate::raft::SnapshotMeta {
            last: EntryId::new(Term(2), LogIndex(9)),
            membership: crate::raft::Membership::default(),
        };
        let without_data = Persist {
            snapshot: Some(meta),
            ..write(3, Vec::new(), None)
        };
        assert!(matches!(
            log.apply_test(&without_data),
            Err(StorageError::SnapshotWithoutData { .. })
        ));
    }

    #[test]
    fn crash_keeps_synced_and_drops_pending() {
        // A write is durable only once its sync completes; a crash keeps the surviving prefix.
        let mut storage = SimStorage::default();
        storage
            .submit_test(Some(write(1, vec![entry(1, 1)], None)), Vec::new(), 5)
            .unwrap();
        storage
            .submit_test(Some(write(2, vec![entry(1, 2)], None)), Vec::new(), 3)
            .unwrap();
        assert_eq!(storage.view().last_index(), LogIndex(2));
        assert_eq!(storage.durable().last_index(), LogIndex(0));
        // The second write may not overtake the first one.
        assert!(storage.complete_next(4).unwrap().is_none());
        let done = storage.complete_next(5).unwrap().unwrap();
        assert_eq!(done.position, Some(PersistPosition(1)));
        assert_eq!(storage.durable().last_index(), LogIndex(1));
        let done = storage.complete_next(5).unwrap().unwrap();
        assert_eq!(done.position, Some(PersistPosition(2)));
        assert!(storage.complete_next(5).unwrap().is_none());
        storage
            .submit_test(Some(write(3, vec![entry(2, 3)], None)), Vec::new(), 9)
            .unwrap();
        storage.crash(0).unwrap();
        assert_eq!(storage.durable().last_index(), LogIndex(2));
        assert_eq!(storage.view().last_index(), LogIndex(2));
    }

    #[test]
    fn conflicting_append_replaces_suffix_and_chain() {
        // An append at or below the last index truncates, and the prefix hash follows it.
        let mut log = LogState::default();
        log.apply_test(&write(1, vec![entry(1, 1), entry(1, 2), entry(1, 3)], None))
            .unwrap();
        let chain_two = log.chain_at(LogIndex(2)).unwrap();
        let old_three = log.chain_at(LogIndex(3)).unwrap();
        log.apply_test(&write(2, vec![entry(2, 3)], None)).unwrap();
        assert_eq!(log.last_id(), EntryId::new(Term(2), LogIndex(3)));
        assert_eq!(log.chain_at(LogIndex(2)), Some(chain_two));
        assert_ne!(log.chain_at(LogIndex(3)), Some(old_three));
        assert_eq!(
            log.term_runs(),
            vec![
                EntryId::new(Term(1), LogIndex(1)),
                EntryId::new(Term(2), LogIndex(3))
            ]
        );
        let gap = log.apply_test(&write(3, vec![entry(2, 9)], None));
        assert!(matches!(gap, Err(StorageError::Gap { .. })), "{gap:?}");
    }

    #[test]
    fn hard_state_rules_are_enforced() {
        // Term never decreases and a vote, once cast in a term, never changes (Figure 2).
        let mut log = LogState::default();
        let voted = HardState {
            term: Term(3),
            vote: Some(NodeId(1)),
            commit: LogIndex(0),
            vote_floor: LogIndex::ZERO,
        };
        log.apply_test(&write(1, Vec::new(), Some(voted))).unwrap();
        let other = HardState {
            vote: Some(NodeId(2)),
            ..voted
        };
        assert!(matches!(
            log.apply_test(&write(2, Vec::new(), Some(other))),
            Err(StorageError::VoteChanged { .. })
        ));
        let older = HardState {
            term: Term(2),
            ..voted
        };
        assert!(matches!(
            log.apply_test(&write(3, Vec::new(), Some(older))),
            Err(StorageError::TermRegressed { .. })
        ));
    }
}
