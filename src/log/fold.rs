//! Folding queued appends into one (group commit across rounds): while one write and sync
//! run, the rounds that follow queue their appends; when the sync completes, everything
//! queued goes out as one write and one sync instead of one each. Folding keeps what the
//! separate appends would have left on disk: for each group, later entries replace earlier
//! ones from their first index on (as an append at or below the last index does), and the
//! latest hard state wins.
//!
//! It must not reorder groups' state: an append carrying a snapshot mark is never folded (it
//! resets the group's log, and the planner expects it first).

use std::collections::HashMap;

use crate::ids::GroupId;
use crate::raft::types::Persist;

/// Folds `next` into `into`. Returns `next` untouched when it cannot be folded (it carries a
/// snapshot mark); the caller then appends it on its own, after `into`.
pub fn fold_appends(
    into: &mut Vec<(GroupId, Persist)>,
    next: Vec<(GroupId, Persist)>,
) -> Result<(), Vec<(GroupId, Persist)>> {
    if next.iter().any(|(_, persist)| persist.snapshot.is_some()) {
        return Err(next);
    }
    let mut slots: HashMap<GroupId, usize> = into
        .iter()
        .enumerate()
        .map(|(slot, (group, _))| (*group, slot))
        .collect();
    for (group, persist) in next {
        match slots.get(&group) {
            Some(&slot) => fold_one(group, &mut into[slot].1, persist),
            None => {
                slots.insert(group, into.len());
                into.push((group, persist));
            }
        }
    }
    Ok(())
}

/// One group: `next` was produced after `into` by the same Raft core.
fn fold_one(group: GroupId, into: &mut Persist, next: Persist) {
    debug_assert!(next.snapshot.is_none(), "group {group}: folding a snapshot");
    if let Some(first) = next.entries.first() {
        let first = first.id.index;
        if let Some(last) = into.entries.last() {
            assert!(
                first <= last.id.index.next(),
                "group {group}: folded append starts at {first} after {} (gap)",
                last.id
            );
        }
        // Entries from `first` on are replaced, as the WAL replaces a conflicting suffix.
        into.entries.retain(|entry| entry.id.index < first);
        into.entries.extend(next.entries);
    }
    if next.hard_state.is_some() {
        into.hard_state = next.hard_state;
    }
    into.position = into.position.max(next.position);
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ids::{EntryId, LogIndex, NodeId, Term};
    use crate::raft::types::{Entry, EntryKind, HardState, PersistPosition, SnapshotMeta};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            id: EntryId {
                index: LogIndex(index),
                term: Term(term),
            },
            kind: EntryKind::Command,
            data: Bytes::from(format!("{index}/{term}")),
        }
    }

    fn persist(position: u64, entries: &[(u64, u64)], commit: Option<u64>) -> Persist {
        Persist {
            position: PersistPosition(position),
            entries: entries.iter().map(|&(i, t)| entry(i, t)).collect(),
            hard_state: commit.map(|commit| HardState {
                term: Term(1),
                vote: Some(NodeId(1)),
                commit: LogIndex(commit),
                vote_floor: LogIndex::ZERO,
            }),
            snapshot: None,
        }
    }

    fn ids(persist: &Persist) -> Vec<(u64, u64)> {
        persist
            .entries
            .iter()
            .map(|entry| (entry.id.index.0, entry.id.term.0))
            .collect()
    }

    #[test]
    fn consecutive_appends_of_a_group_become_one() {
        // Two rounds' appends of one group fold into one run of entries with the latest state.
        let mut into = vec![(GroupId(1), persist(1, &[(1, 1), (2, 1)], Some(0)))];
        let next = vec![
            (GroupId(1), persist(2, &[(3, 1)], Some(2))),
            (GroupId(2), persist(1, &[(1, 1)], None)),
        ];
        fold_appends(&mut into, next).expect("foldable");
        assert_eq!(into.len(), 2);
        assert_eq!(ids(&into[0].1), vec![(1, 1), (2, 1), (3, 1)]);
        assert_eq!(into[0].1.position, PersistPosition(2));
        assert_eq!(
            into[0].1.hard_state.map(|state| state.commit),
            Some(LogIndex(2))
        );
        assert_eq!(into[1].0, GroupId(2));
    }

    #[test]
    fn a_later_conflicting_append_replaces_the_suffix() {
        // A follower's second append that truncates (new leader) replaces entries from its
        // first index on; an earlier hard state survives when the later append has none.
        let mut into = vec![(GroupId(1), persist(4, &[(5, 1), (6, 1), (7, 1)], Some(4)))];
        fold_appends(&mut into, vec![(GroupId(1), persist(5, &[(6, 2)], None))]).expect("foldable");
        assert_eq!(ids(&into[0].1), vec![(5, 1), (6, 2)]);
        assert_eq!(
            into[0].1.hard_state.map(|state| state.commit),
            Some(LogIndex(4))
        );
        // Replacing everything, from below the first entry held.
        fold_appends(&mut into, vec![(GroupId(1), persist(6, &[(3, 3)], None))]).expect("foldable");
        assert_eq!(ids(&into[0].1), vec![(3, 3)]);
    }

    #[test]
    fn a_snapshot_mark_is_never_folded() {
        // An append with a snapshot mark comes back untouched, and `into` is unchanged.
        let mut into = vec![(GroupId(1), persist(1, &[(1, 1)], None))];
        let mut marked = persist(2, &[], None);
        marked.snapshot = Some(SnapshotMeta::default());
        let next = vec![
            (GroupId(2), persist(1, &[(1, 1)], None)),
            (GroupId(1), marked),
        ];
        let back = fold_appends(&mut into, next.clone()).expect_err("not foldable");
        assert_eq!(back, next);
        assert_eq!(into.len(), 1);
    }

    #[test]
    #[should_panic(expected = "gap")]
    fn a_gap_between_folded_appends_is_a_bug() {
        // Entries that do not continue the queued ones mean the caller lost an append.
        let mut into = vec![(GroupId(1), persist(1, &[(1, 1)], None))];
        let _ = fold_appends(&mut into, vec![(GroupId(1), persist(2, &[(3, 1)], None))]);
    }
}
