//! The per-group index of the WAL: for every live entry of a group, its term and where its
//! record lives; plus the group's latest hard state and snapshot mark and where they live.
//! Built by recovery from the records in write order, then kept up to date by the planner.
//!
//! This file owns the replacement rules of a log (a later append of index i supersedes every
//! entry from i on; a snapshot mark drops what it covers) and nothing about bytes or disks.

use std::collections::VecDeque;

use crate::ids::{EntryId, LogIndex, Term};
use crate::log::disk::SegmentSeq;
use crate::raft::types::{HardState, SnapshotMeta};

/// Where one record lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub segment: SegmentSeq,
    /// Byte offset of the record in its segment.
    pub offset: u64,
    /// Bytes of the record, padding included.
    pub record_bytes: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct IndexedEntry {
    term: Term,
    location: Location,
}

/// One group's view of the WAL.
#[derive(Clone, Debug, Default)]
pub struct GroupIndex {
    /// Live entries in index order; the last one has index `last_index`. Their segments never
    /// decrease along the deque, because every append goes to the newest segment.
    entries: VecDeque<IndexedEntry>,
    /// The index of the last entry written (or covered by the snapshot mark) for this group;
    /// zero when the group has written nothing.
    last_index: LogIndex,
    hard_state: Option<(HardState, SegmentSeq)>,
    snapshot: Option<(SnapshotMeta, SegmentSeq)>,
    /// Entries at or below this index are no longer needed (set by `compact`).
    compacted: LogIndex,
}

impl GroupIndex {
    pub fn last_index(&self) -> LogIndex {
        self.last_index
    }

    /// The index of the first entry the index can locate, if any.
    pub fn first_index(&self) -> Option<LogIndex> {
        let count = self.entries.len() as u64;
        (count > 0).then(|| LogIndex(self.last_index.0 + 1 - count))
    }

    pub fn hard_state(&self) -> Option<HardState> {
        self.hard_state.map(|(hard_state, _)| hard_state)
    }

    pub fn snapshot(&self) -> Option<&SnapshotMeta> {
        self.snapshot.as_ref().map(|(snapshot, _)| snapshot)
    }

    pub fn compacted(&self) -> LogIndex {
        self.compacted
    }

    pub fn entry_count(&self) -> usize {
        self.entries.len()
    }

    /// Where the hard state and snapshot mark live, for purge decisions.
    pub fn state_segments(&self) -> (Option<SegmentSeq>, Option<SegmentSeq>) {
        (
            self.hard_state.as_ref().map(|(_, seq)| *seq),
            self.snapshot.as_ref().map(|(_, seq)| *seq),
        )
    }

    /// The oldest segment holding a live entry.
    pub fn first_entry_segment(&self) -> Option<SegmentSeq> {
        self.entries.front().map(|entry| entry.location.segment)
    }

    /// The term and location of entry `index`, if the index holds it.
    pub fn get(&self, index: LogIndex) -> Option<(Term, Location)> {
        let first = self.first_index()?;
        if index < first || index > self.last_index {
            return None;
        }
        let position = usize::try_from(index.0 - first.0).ok()?;
        self.entries
            .get(position)
            .map(|entry| (entry.term, entry.location))
    }

    /// The term of entry `index`, from the index or the snapshot mark.
    pub fn term_of(&self, index: LogIndex) -> Option<Term> {
        if let Some((term, _)) = self.get(index) {
            return Some(term);
        }
        self.snapshot
            .as_ref()
            .filter(|(snapshot, _)| snapshot.last.index == index)
            .map(|(snapshot, _)| snapshot.last.term)
    }

    /// Records an entry written at `location`. An entry at or below the last index replaces
    /// that entry and every later one (conflicting suffix truncated, paper §5.3). An entry
    /// past `last_index + 1` (possible during recovery, when older segments were purged)
    /// starts the index afresh.
    pub fn append(&mut self, id: EntryId, location: Location) {
        assert!(
            id.index > LogIndex::ZERO,
            "index append: entry index 0 at {location:?}"
        );
        match self.first_index() {
            Some(first) if id.index >= first && id.index <= self.last_index.next() => {
                let keep = usize::try_from(id.index.0 - first.0).unwrap_or(usize::MAX);
                self.entries.truncate(keep);
            }
            _ => self.entries.clear(),
        }
        self.entries.push_back(IndexedEntry {
            term: id.term,
            location,
        });
        self.last_index = id.index;
        assert!(
            self.first_index().is_some_and(|first| first <= id.index),
            "index append: first {:?} after appended {}",
            self.first_index(),
            id.index
        );
    }

    pub fn set_hard_state(&mut self, hard_state: HardState, segment: SegmentSeq) {
        self.hard_state = Some((hard_state, segment));
    }

    /// Records a snapshot mark: every entry up to `snapshot.last` is folded into the snapshot.
    /// Entries after it stay only if the entry at `snapshot.last` matches its term (the log
    /// continues the snapshot); otherwise the whole log is discarded (thesis §5.1, as etcd).
    pub fn set_snapshot(&mut self, snapshot: SnapshotMeta, segment: SegmentSeq) {
        let last = snapshot.last;
        // The log also continues the snapshot when every indexed entry comes after it: the
        // entries at and before `last` were compacted away, or purge is writing the mark again
        // (a Raft core never installs a snapshot older than its compacted prefix).
        let continues = (self.term_of(last.index) == Some(last.term)
            && last.index > LogIndex::ZERO)
            || self.first_index().is_some_and(|first| first > last.index);
        if continues {
            self.drop_through(last.index);
        } else {
            self.entries.clear();
            self.last_index = last.index;
        }
        if self.last_index < last.index {
            self.last_index = last.index;
        }
        self.snapshot = Some((snapshot, segment));
    }

    /// Marks entries up to `index` as no longer needed and forgets their locations. A point
    /// past the last index (the caller's snapshot is ahead of what the WAL still holds, e.g.
    /// after purge recycled every entry of an idle group) moves the last index up to it, so
    /// appends continue right after the snapshot.
    pub fn compact(&mut self, index: LogIndex) {
        if index <= self.compacted {
            return;
        }
        self.compacted = index;
        self.drop_through(index);
        if index > self.last_index {
            self.entries.clear();
            self.last_index = index;
        }
    }

    fn drop_through(&mut self, index: LogIndex) {
        while let Some(first) = self.first_index() {
            if first > index {
                break;
            }
            self.entries.pop_front();
        }
    }

    /// The first entry of each run of equal terms among the indexed entries, in index order.
    pub fn term_runs(&self) -> Vec<EntryId> {
        let mut runs: Vec<EntryId> = Vec::new();
        let Some(first) = self.first_index() else {
            return runs;
        };
        for (offset, entry) in self.entries.iter().enumerate() {
            if runs.last().is_none_or(|run| run.term != entry.term) {
                runs.push(EntryId::new(entry.term, first.plus(offset as u64)));
            }
        }
        runs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Location {
        Location {
            segment: SegmentSeq(1),
            offset,
            record_bytes: 64,
        }
    }

    fn id(term: u64, index: u64) -> EntryId {
        EntryId::new(Term(term), LogIndex(index))
    }

    #[test]
    fn append_truncates_conflicting_suffix_and_tracks_runs() {
        // Paper §5.3: appending index 3 again drops 3..5; term runs follow the surviving log.
        let mut index = GroupIndex::default();
        for i in 1..=5 {
            index.append(id(1, i), at(i * 64));
        }
        index.append(id(2, 3), at(1000));
        assert_eq!(index.last_index(), LogIndex(3));
        assert_eq!(index.first_index(), Some(LogIndex(1)));
        assert_eq!(index.get(LogIndex(3)).map(|(term, _)| term), Some(Term(2)));
        assert_eq!(index.get(LogIndex(4)), None);
        assert_eq!(index.term_runs(), vec![id(1, 1), id(2, 3)]);
    }

    #[test]
    fn compaction_and_snapshot_drop_covered_entries() {
        // Compact forgets locations up to its index; a matching snapshot keeps the rest, a
        // non-matching one discards the whole log.
        let mut index = GroupIndex::default();
        for i in 1..=6 {
            index.append(id(1, i), at(i * 64));
        }
        index.compact(LogIndex(2));
        assert_eq!(index.first_index(), Some(LogIndex(3)));
        index.set_snapshot(
            SnapshotMeta {
                last: id(1, 4),
                ..SnapshotMeta::default()
            },
            SegmentSeq(1),
        );
        assert_eq!(index.first_index(), Some(LogIndex(5)));
        assert_eq!(index.last_index(), LogIndex(6));
        index.set_snapshot(
            SnapshotMeta {
                last: id(3, 9),
                ..SnapshotMeta::default()
            },
            SegmentSeq(1),
        );
        assert_eq!(index.first_index(), None);
        assert_eq!(index.last_index(), LogIndex(9));
        assert_eq!(index.term_of(LogIndex(9)), Some(Term(3)));
        index.append(id(3, 10), at(2000));
        assert_eq!(index.first_index(), Some(LogIndex(10)));
    }
}
