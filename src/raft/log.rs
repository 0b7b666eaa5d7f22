//! One group's view of its Raft log in memory: the term of every index as runs of equal
//! terms, a bounded tail of recent entries, one window of entries fetched back from the
//! WAL, and the cursors of persistence (what was handed out to be written, what is
//! durable). It must not perform I/O: entries that are not in memory are reported missing
//! and the caller of this module asks for them through `Ready::fetch`.

use std::collections::VecDeque;

use crate::ids::{EntryId, LogIndex, Term};
use crate::raft::types::{Entry, PersistPosition};

/// A read of entries that are not in memory: the first index missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Missing(pub LogIndex);

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The entry before the first entry of the log (the snapshot's last, or ZERO).
    before_first: EntryId,
    /// First entry of each run of equal terms, strictly ascending in index and term; covers
    /// `(before_first.index, last.index]`, empty exactly when that range is empty.
    term_runs: Vec<EntryId>,
    last: EntryId,
    /// A contiguous suffix of the log (possibly empty): its back is `last` when non-empty.
    tail: VecDeque<Entry>,
    tail_bytes: u64,
    /// Entries fetched from the WAL: contiguous, each matching `term_runs`, possibly empty.
    window: Vec<Entry>,
    /// Every entry up to here was handed out in some `Persist`; later ones must still be.
    written: LogIndex,
    /// Every entry up to here is durable (and matches this log).
    persisted: LogIndex,
    /// Persists handed out and not yet durable: position and the log's last index it reaches.
    in_flight: VecDeque<(PersistPosition, LogIndex)>,
}

impl RaftLog {
    /// The log after a restart: everything restored is durable; nothing is in memory.
    pub fn restore(
        before_first: EntryId,
        term_runs: Vec<EntryId>,
        last_index: LogIndex,
    ) -> RaftLog {
        assert!(
            last_index >= before_first.index,
            "log restore: last index {last_index} below snapshot {before_first}"
        );
        if last_index == before_first.index {
            assert!(
                term_runs.is_empty(),
                "log restore: runs {term_runs:?} for an empty log"
            );
        } else {
            let first = term_runs.first().map(|run| run.index);
            assert!(
                first == Some(before_first.index.next()),
                "log restore: first run {first:?} does not start after {before_first}"
            );
        }
        for pair in term_runs.windows(2) {
            assert!(
                pair[0].index < pair[1].index && pair[0].term < pair[1].term,
                "log restore: runs not ascending: {} then {}",
                pair[0],
                pair[1]
            );
        }
        let last_term = term_runs.last().map_or(before_first.term, |run| run.term);
        if let Some(run) = term_runs.last() {
            assert!(
                run.index <= last_index && run.term >= before_first.term,
                "log restore: last run {run} beyond last index {last_index}"
            );
        }
        RaftLog {
            before_first,
            term_runs,
            last: EntryId::new(last_term, last_index),
            tail: VecDeque::new(),
            tail_bytes: 0,
            window: Vec::new(),
            written: last_index,
            persisted: last_index,
            in_flight: VecDeque::new(),
        }
    }

    pub fn last(&self) -> EntryId {
        self.last
    }

    pub fn persisted(&self) -> LogIndex {
        self.persisted
    }

    /// Entries up to here were handed out in some `Persist`.
    pub fn written(&self) -> LogIndex {
        self.written
    }

    pub fn before_first(&self) -> EntryId {
        self.before_first
    }

    /// The first index held by the tail (`last + 1` when the tail is empty).
    pub fn tail_first(&self) -> LogIndex {
        LogIndex(self.last.index.get() + 1 - self.tail.len() as u64)
    }

    #[cfg(test)]
    pub fn tail_bytes(&self) -> u64 {
        self.tail_bytes
    }

    /// Give back empty buffers. Frees, never allocates.
    pub fn release_idle_memory(&mut self) {
        if self.tail.is_empty() && self.tail.capacity() > 0 {
            self.tail = VecDeque::new();
        }
        if self.in_flight.is_empty() && self.in_flight.capacity() > 0 {
            self.in_flight = VecDeque::new();
        }
    }

    /// Heap bytes held (capacities; payloads counted by their length).
    pub fn memory_bytes(&self) -> usize {
        self.term_runs.capacity() * std::mem::size_of::<EntryId>()
            + self.tail.capacity() * std::mem::size_of::<Entry>()
            + self.window.capacity() * std::mem::size_of::<Entry>()
            + self.in_flight.capacity() * std::mem::size_of::<(PersistPosition, LogIndex)>()
            + self
                .tail
                .iter()
                .map(|entry| entry.data.len())
                .sum::<usize>()
    }

    /// The term of entry `index`, from memory; `None` beyond the log or before its start.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.before_first.index {
            return Some(self.before_first.term);
        }
        if index < self.before_first.index || index > self.last.index {
            return None;
        }
        // Fast path: most lookups are in the newest run.
        let newest = self.term_runs.last()?;
        if index >= newest.index {
            return Some(newest.term);
        }
        let position = self.term_runs.partition_point(|run| run.index <= index);
        // position >= 1 because the first run starts right after before_first.
        self.term_runs
            .get(position.checked_sub(1)?)
            .map(|run| run.term)
    }

    /// Whether this log holds entry `id`.
    pub fn matches(&self, id: EntryId) -> bool {
        self.term_at(id.index) == Some(id.term)
    }

    /// The last entry at or below `index` whose term is at most `term` (fast backtracking,
    /// thesis §5.3 / etcd's findConflictByTerm). Walks runs backwards: O(runs).
    pub fn find_conflict_by_term(&self, index: LogIndex, term: Term) -> EntryId {
        let mut index = index.min(self.last.index);
        if index <= self.before_first.index {
            return self.before_first;
        }
        let mut position = self.term_runs.partition_point(|run| run.index <= index);
        while let Some(run_position) = position.checked_sub(1) {
            let Some(run) = self.term_runs.get(run_position) else {
                break;
            };
            if run.term <= term {
                return EntryId::new(run.term, index);
            }
            index = LogIndex(run.index.get() - 1);
            position = run_position;
        }
        self.before_first
    }

    /// An entry from memory (tail, then fetched window).
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        let tail_first = self.tail_first();
        if index >= tail_first {
            return self.tail.get(index.distance_from(tail_first) as usize);
        }
        let window_first = self.window.first()?.index();
        if index < window_first {
            return None;
        }
        self.window.get(index.distance_from(window_first) as usize)
    }

    /// Clones of entries from `first` on, at most `count_max` and (beyond the first) at most
    /// `bytes_max` bytes, not past `last_max`. Stops early at an entry not in memory; if even
    /// `first` is missing, returns `Missing(first)`. Costs O(entries returned).
    pub fn entries(
        &self,
        first: LogIndex,
        last_max: LogIndex,
        limits: (usize, u64),
    ) -> Result<Vec<Entry>, Missing> {
        let (count_max, bytes_max) = limits;
        let last_max = last_max.min(self.last.index);
        if first > last_max {
            return Ok(Vec::new());
        }
        let count_wanted = (last_max.distance_from(first) + 1).min(count_max as u64) as usize;
        let mut entries = Vec::with_capacity(count_wanted);
        let mut bytes = 0u64;
        let tail_first = self.tail_first();
        let mut next = first;
        if first < tail_first {
            let window_first = self.window.first().map_or(first, Entry::index);
            if first >= window_first {
                let skip = first.distance_from(window_first) as usize;
                let from_window = self.window.get(skip..).unwrap_or_default();
                next = take_within(
                    from_window,
                    &mut entries,
                    &mut bytes,
                    (count_wanted, bytes_max),
                )
                .unwrap_or(next);
            }
            if next < tail_first {
                // The window ended before the tail starts (or held nothing): stop here.
                return if entries.is_empty() {
                    Err(Missing(first))
                } else {
                    Ok(entries)
                };
            }
        }
        if entries.len() < count_wanted && next >= tail_first {
            let skip = next.distance_from(tail_first) as usize;
            let (front, back) = self.tail.as_slices();
            let (front, back) = match front.get(skip..) {
                Some(rest) => (rest, back),
                None => (&[][..], back.get(skip - front.len()..).unwrap_or_default()),
            };
            for slice in [front, back] {
                take_within(slice, &mut entries, &mut bytes, (count_wanted, bytes_max));
            }
        }
        if entries.is_empty() {
            return Err(Missing(first));
        }
        Ok(entries)
    }

    /// Append one entry right after `last` (a leader's proposal).
    pub fn push(&mut self, entry: Entry) {
        assert!(
            entry.index() == self.last.index.next() && entry.term() >= self.last.term,
            "log push: entry {} does not follow last {}",
            entry.id,
            self.last
        );
        if entry.term() != self.last.term || self.term_runs.is_empty() {
            self.term_runs.push(entry.id);
        }
        self.last = entry.id;
        self.tail_bytes += entry.size_bytes();
        self.tail.push_back(entry);
    }

    /// Remove every entry from `index` on (a follower's conflicting suffix, §5.3).
    pub fn truncate_from(&mut self, index: LogIndex) {
        assert!(
            index > self.before_first.index && index <= self.last.index,
            "log truncate: index {index} outside ({}, {}]",
            self.before_first.index,
            self.last.index
        );
        let keep_last = LogIndex(index.get() - 1);
        while self
            .tail
            .back()
            .is_some_and(|entry| entry.index() > keep_last)
        {
            if let Some(entry) = self.tail.pop_back() {
                self.tail_bytes -= entry.size_bytes();
            }
        }
        while self
            .term_runs
            .last()
            .is_some_and(|run| run.index > keep_last)
        {
            self.term_runs.pop();
        }
        self.window.retain(|entry| entry.index() <= keep_last);
        let keep_term = self.term_at_after_truncate(keep_last);
        self.last = EntryId::new(keep_term, keep_last);
        // Entries past keep_last that were written or even durable are replaced.
        self.written = self.written.min(keep_last);
        self.persisted = self.persisted.min(keep_last);
        for (_, reach) in &mut self.in_flight {
            *reach = (*reach).min(keep_last);
        }
        if self.tail.is_empty() {
            self.tail_bytes = 0;
        }
    }

    fn term_at_after_truncate(&self, index: LogIndex) -> Term {
        if index == self.before_first.index {
            return self.before_first.term;
        }
        self.term_runs
            .last()
            .map_or(self.before_first.term, |run| run.term)
    }

    /// Entries not yet handed out to be written, and the last index they reach.
    pub fn take_unwritten(&mut self) -> Vec<Entry> {
        if self.written >= self.last.index {
            return Vec::new();
        }
        let first = self.written.next();
        assert!(
            first >= self.tail_first(),
            "log: unwritten entry {first} not in the tail (tail starts at {})",
            self.tail_first()
        );
        let skip = first.distance_from(self.tail_first()) as usize;
        let entries: Vec<Entry> = self.tail.range(skip..).cloned().collect();
        self.written = self.last.index;
        entries
    }

    /// Record that a persist at `position` brings the durable log to `last`.
    pub fn persist_sent(&mut self, position: PersistPosition) {
        if let Some(&(previous, _)) = self.in_flight.back() {
            assert!(
                previous < position,
                "log: persist position {position:?} after {previous:?}"
            );
        }
        self.in_flight.push_back((position, self.written));
    }

    /// Everything up to `position` is durable.
    pub fn persisted_to(&mut self, position: PersistPosition) {
        while let Some(&(front, reach)) = self.in_flight.front() {
            if front > position {
                break;
            }
            self.persisted = self.persisted.max(reach).min(self.written);
            self.in_flight.pop_front();
        }
    }

    /// Drop tail entries up to `needed_from - 1` that are durable, and further durable ones
    /// while the tail is over `bytes_max`. Returns the entries dropped, for accounting.
    pub fn trim_tail(
        &mut self,
        needed_from: LogIndex,
        bytes_max: u64,
        mut on_drop: impl FnMut(&Entry),
    ) {
        while let Some(front) = self.tail.front() {
            let index = front.index();
            let durable = index <= self.persisted;
            let unneeded = index < needed_from;
            if !(durable && (unneeded || self.tail_bytes > bytes_max)) {
                break;
            }
            if let Some(entry) = self.tail.pop_front() {
                self.tail_bytes -= entry.size_bytes();
                on_drop(&entry);
            }
        }
    }

    /// The fetched window ends here (None when empty).
    pub fn window_last(&self) -> Option<LogIndex> {
        self.window.last().map(Entry::index)
    }

    pub fn clear_window(&mut self) {
        self.window = Vec::new();
    }

    /// Keep fetched entries as the window if they are contiguous and match this log's terms;
    /// returns whether any were kept. Entries a compaction folded into the snapshot since the
    /// fetch was asked for are skipped.
    pub fn set_window(&mut self, mut entries: Vec<Entry>) -> bool {
        let compacted = self.before_first.index;
        entries.retain(|entry| entry.index() > compacted);
        let contiguous = entries
            .windows(2)
            .all(|pair| pair[1].index() == pair[0].index().next());
        let matching = entries.iter().all(|entry| self.matches(entry.id));
        if entries.is_empty() || !contiguous || !matching {
            return false;
        }
        self.window = entries;
        true
    }
}

impl RaftLog {
    /// Fold every entry up to `index` into a snapshot the caller holds durably (thesis §5):
    /// their terms, tail and window entries are forgotten, the term of `index` itself is
    /// kept, and nothing at or below it is ever asked for again. The entries after it stay.
    pub fn compact(&mut self, index: LogIndex) {
        assert!(
            index > self.before_first.index && index <= self.written,
            "log compact: index {index} outside ({}, written {}]",
            self.before_first.index,
            self.written
        );
        let Some(term) = self.term_at(index) else {
            panic!(
                "log compact: no term for {index} in ({}, {}]",
                self.before_first, self.last
            )
        };
        self.fold_into_snapshot(EntryId::new(term, index));
        // The snapshot is durable, so everything it covers is.
        self.persisted = self.persisted.max(index);
    }

    /// Install a snapshot ending at `last` received from the leader (thesis §5.1): if this
    /// log holds `last`, the entries after it are kept; otherwise the whole log is
    /// discarded. Entries after `commit` that were written or durable count as replaced.
    /// The snapshot becomes durable with the next persist, whose reach covers `last`.
    pub fn install_snapshot(&mut self, last: EntryId, commit: LogIndex) {
        assert!(
            last.index > commit && commit >= self.before_first.index,
            "log install: snapshot {last} not past commit {commit} (log starts after {})",
            self.before_first
        );
        if self.matches(last) {
            self.fold_into_snapshot(last);
            self.written = self.written.max(last.index);
            return;
        }
        self.term_runs.clear();
        self.tail.clear();
        self.tail_bytes = 0;
        self.window = Vec::new();
        self.before_first = last;
        self.last = last;
        // Nothing after the commit index of the old log survives; what was durable of it is
        // superseded, and the snapshot's own persist reaches `last`.
        self.persisted = self.persisted.min(commit);
        for (_, reach) in &mut self.in_flight {
            *reach = (*reach).min(commit);
        }
        self.written = last.index;
    }

    /// Forget every entry up to `new_first` (which this log holds) and start after it.
    fn fold_into_snapshot(&mut self, new_first: EntryId) {
        let index = new_first.index;
        let kept_from = self.term_runs.partition_point(|run| run.index <= index);
        let next_term = self.term_at(index.next());
        self.term_runs.drain(..kept_from);
        if let Some(term) = next_term
            && self
                .term_runs
                .first()
                .is_none_or(|run| run.index > index.next())
        {
            self.term_runs.insert(0, EntryId::new(term, index.next()));
        }
        while self
            .tail
            .front()
            .is_some_and(|entry| entry.index() <= index)
        {
            if let Some(entry) = self.tail.pop_front() {
                self.tail_bytes -= entry.size_bytes();
            }
        }
        self.window.retain(|entry| entry.index() > index);
        self.before_first = new_first;
        let expected_first = (self.last.index > index).then(|| index.next());
        assert!(
            self.term_runs.first().map(|run| run.index) == expected_first,
            "log: runs {:?} do not start right after the snapshot {new_first} (last {})",
            self.term_runs.first(),
            self.last
        );
    }
}

/// Clone entries from `slice` into `entries` while under the count and byte limits (at
/// least one entry in total). Returns the index after the last entry taken, if any.
fn take_within(
    slice: &[Entry],
    entries: &mut Vec<Entry>,
    bytes: &mut u64,
    limits: (usize, u64),
) -> Option<LogIndex> {
    let (count_max, bytes_max) = limits;
    let mut after = None;
    for entry in slice {
        if entries.len() >= count_max {
            break;
        }
        let size = entry.size_bytes();
        if !entries.is_empty() && *bytes + size > bytes_max {
            // Mark the limit as reached so later slices add nothing either.
            *bytes = bytes_max.saturating_add(1);
            break;
        }
        *bytes += size;
        entries.push(entry.clone());
        after = Some(entry.index().next());
    }
    after
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::EntryKind;
    use bytes::Bytes;

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            kind: EntryKind::Command,
            data: Bytes::from_static(b"x"),
        }
    }

    fn log_with_terms(terms: &[u64]) -> RaftLog {
        let mut log = RaftLog::restore(EntryId::ZERO, Vec::new(), LogIndex::ZERO);
        for (position, &term) in terms.iter().enumerate() {
            log.push(entry(term, position as u64 + 1));
        }
        log
    }

    #[test]
    fn term_runs_answer_every_index() {
        // Terms of all indexes come from runs of (first index, term) (DESIGN §4).
        let log = log_with_terms(&[1, 1, 2, 2, 2, 5]);
        let terms: Vec<Option<Term>> = (0..=7).map(|i| log.term_at(LogIndex(i))).collect();
        let expected = [
            Some(0),
            Some(1),
            Some(1),
            Some(2),
            Some(2),
            Some(2),
            Some(5),
            None,
        ];
        assert_eq!(terms, expected.map(|t| t.map(Term)));
    }

    #[test]
    fn conflict_by_term_skips_whole_runs() {
        // Fast backtracking (§5.3): the last entry at or below an index with term <= a term.
        let log = log_with_terms(&[1, 1, 2, 2, 4, 4, 6]);
        assert_eq!(
            log.find_conflict_by_term(LogIndex(7), Term(5)),
            EntryId::new(Term(4), LogIndex(6))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(6), Term(3)),
            EntryId::new(Term(2), LogIndex(4))
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(3), Term(0)),
            EntryId::ZERO
        );
        assert_eq!(
            log.find_conflict_by_term(LogIndex(99), Term(9)),
            EntryId::new(Term(6), LogIndex(7))
        );
    }

    #[test]
    fn truncate_clamps_durability_and_runs() {
        // A conflicting suffix (§5.3) is removed even when durable: persisted falls back.
        let mut log = log_with_terms(&[1, 1, 2, 2]);
        let written = log.take_unwritten();
        assert_eq!(written.len(), 4);
        log.persist_sent(PersistPosition(1));
        log.persisted_to(PersistPosition(1));
        assert_eq!(log.persisted(), LogIndex(4));
        log.truncate_from(LogIndex(3));
        assert_eq!(log.last(), EntryId::new(Term(1), LogIndex(2)));
        assert_eq!(log.persisted(), LogIndex(2));
        log.push(entry(3, 3));
        assert_eq!(log.term_at(LogIndex(3)), Some(Term(3)));
        assert_eq!(log.take_unwritten().len(), 1);
    }

    #[test]
    fn compaction_keeps_the_term_of_its_index_and_later_runs() {
        // Thesis §5: entries up to the snapshot are forgotten, but term_at(index) still
        // answers, and the runs after it start right after the snapshot.
        let mut log = log_with_terms(&[1, 1, 2, 2, 2, 5]);
        log.take_unwritten();
        log.compact(LogIndex(4));
        assert_eq!(log.before_first(), EntryId::new(Term(2), LogIndex(4)));
        assert_eq!(log.term_at(LogIndex(4)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(3)), None);
        assert_eq!(log.term_at(LogIndex(5)), Some(Term(2)));
        assert_eq!(log.term_at(LogIndex(6)), Some(Term(5)));
        assert_eq!(log.entry(LogIndex(4)), None);
        assert_eq!(
            log.entries(LogIndex(4), LogIndex(6), (10, 100)),
            Err(Missing(LogIndex(4)))
        );
        assert_eq!(
            log.entries(LogIndex(5), LogIndex(6), (10, 100))
                .map(|e| e.len()),
            Ok(2)
        );
        assert_eq!(log.persisted(), LogIndex(4));
        log.compact(LogIndex(6));
        assert_eq!(log.term_at(LogIndex(6)), Some(Term(5)));
        assert_eq!(log.last(), EntryId::new(Term(5), LogIndex(6)));
        // A fetched window of entries compaction folded in is not kept.
        assert!(!log.set_window(vec![entry(2, 5)]));
    }

    #[test]
    fn install_keeps_a_matching_suffix_and_discards_a_conflicting_log() {
        // Thesis §5.1: a log holding the snapshot's last entry keeps what follows it; a log
        // that conflicts there is discarded, durable suffix included.
        let mut matching = log_with_terms(&[1, 1, 2, 2]);
        matching.take_unwritten();
        matching.install_snapshot(EntryId::new(Term(1), LogIndex(2)), LogIndex(1));
        assert_eq!(matching.last(), EntryId::new(Term(2), LogIndex(4)));
        assert_eq!(matching.term_at(LogIndex(3)), Some(Term(2)));
        assert_eq!(matching.before_first(), EntryId::new(Term(1), LogIndex(2)));

        let mut conflicting = log_with_terms(&[1, 1, 2, 2]);
        conflicting.take_unwritten();
        conflicting.persist_sent(PersistPosition(1));
        conflicting.persisted_to(PersistPosition(1));
        conflicting.install_snapshot(EntryId::new(Term(3), LogIndex(3)), LogIndex(1));
        assert_eq!(conflicting.last(), EntryId::new(Term(3), LogIndex(3)));
        assert_eq!(conflicting.term_at(LogIndex(4)), None);
        assert_eq!(conflicting.persisted(), LogIndex(1));
        assert_eq!(conflicting.written(), LogIndex(3));
        assert!(conflicting.take_unwritten().is_empty());
        conflicting.push(entry(3, 4));
        assert_eq!(conflicting.take_unwritten().len(), 1);
    }
}
