//! Snapshots of the core's groups (thesis chapter 5) as the shard decides them: when a group
//! takes one (after `SnapshotPolicy::entries` applied entries), its bytes produced in steps
//! from a frozen view of the state machine while apply goes on, the Raft log and the WAL
//! compacted once the file is durable; a leader's offers of a snapshot to a follower (the
//! reactor streams the file); a follower installing a snapshot the reactor staged, or giving
//! up its file when the group does not take it; and how a group restarts from its newest
//! snapshot and the WAL's tail.
//!
//! Compaction goes to the OLDER of the snapshots kept (`SNAPSHOTS_KEPT`), not the newest:
//! the log keeps the entries after it, so a newest file found corrupt at restart is replaced
//! by the older one and the log replayed from there. The log holds between one and two
//! thresholds of entries, three while a leader holds its next snapshot for a follower that
//! is still catching up (`maybe_start_snapshot`).
//!
//! Pure like the rest of the shard: files, streaming and timing are the reactor's.

use std::collections::VecDeque;

use thiserror::Error;

use super::{Shard, ShardEvent, ShardOutput};
use crate::constants::SNAPSHOTS_KEPT;
use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::kv::KvMachine;
use crate::kv::snapshot::{EncodeStatus, Restored, SnapshotEncoder};
use crate::kv::store::SnapshotId;
use crate::log::RestoredGroup;
use crate::raft::{Membership, Message, MessageBody, RestoredState, SnapshotMeta, SnapshotStatus};

/// Ticks a group waits before it tries again after a snapshot failed.
pub const SNAPSHOT_RETRY_TICKS: u64 = 100;
/// Chunks of a snapshot handed to the writer and not yet written, per group: enough to keep
/// the disk busy, few enough that memory stays at a few steps.
pub const SNAPSHOT_CHUNKS_AHEAD_MAX: usize = 2;

/// How the core's groups take snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// A group takes a snapshot once it has applied this many entries since its last one;
    /// 0: never (the log grows without bound).
    pub entries: u64,
    /// The direct-I/O alignment snapshot files are padded to.
    pub alignment: usize,
}

/// One step of writing a snapshot this core takes, for the reactor's snapshot writer.
#[derive(Debug)]
pub enum SnapshotWrite {
    /// Append `chunk` to the file of `id` (the first chunk creates it). `last`: the file is
    /// complete; make it durable, then report `on_snapshot_written`. Every chunk is answered
    /// with `on_snapshot_chunk_written`.
    Chunk {
        id: SnapshotId,
        chunk: Vec<u8>,
        last: bool,
    },
    /// Give the file up and remove it: the group's state was replaced meanwhile.
    Abort { id: SnapshotId },
    /// Remove the complete file of `id`: a snapshot received from a leader that the group
    /// did not take (it would otherwise count among the files kept).
    Discard { id: SnapshotId },
}

/// What a group restarts from.
#[derive(Debug, Default)]
pub struct GroupRestart {
    /// What the WAL holds of the group.
    pub wal: Option<RestoredGroup>,
    /// The newest snapshot file of the group that loaded.
    pub snapshot: Option<Restored>,
    /// The indices of the group's snapshot files at or below the loaded one, oldest first.
    pub kept: Vec<LogIndex>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateLoss {
    #[error(
        "group {group}: the WAL records a snapshot installed at index {mark}, but no snapshot \
         file at or past it loads (newest that loads: {loaded})"
    )]
    SnapshotMissing {
        group: GroupId,
        mark: LogIndex,
        loaded: LogIndex,
    },
    #[error(
        "group {group}: the WAL holds entries from index {first}, but the newest snapshot file \
         that loads ends at {loaded}: the entries in between are gone"
    )]
    Gap {
        group: GroupId,
        first: LogIndex,
        loaded: LogIndex,
    },
}

/// A group's restart state, its state machine, the snapshots it keeps and the point its WAL
/// compacts to.
#[derive(Debug)]
pub struct Restart {
    pub state: RestoredState,
    pub machine: KvMachine,
    pub kept: VecDeque<LogIndex>,
    pub wal_compaction: Option<LogIndex>,
    /// The term of the last entry the machine applied.
    pub applied_term: Term,
    /// Why the group lost its state and starts empty, waiting for its leader's snapshot
    /// (`RestoredState::vote_floor` keeps it from voting meanwhile); `None` normally.
    pub lost: Option<StateLoss>,
}

/// Combines the WAL's view of a group with its newest loadable snapshot (thesis §5.1): the
/// state machine starts from the snapshot, the log holds the WAL's entries after it. WAL
/// entries that disagree with the snapshot (an uncommitted suffix of an older term) are
/// dropped. A WAL that no loadable snapshot can continue (the one it needs is corrupt or
/// gone) leaves the group empty, to be rebuilt from its leader's snapshot, with `lost`
/// saying why and a vote floor at everything it may have acknowledged.
pub fn restart_state(group: GroupId, restart: GroupRestart, membership: Membership) -> Restart {
    let GroupRestart {
        wal,
        snapshot,
        kept,
    } = restart;
    let wal = wal.unwrap_or_default();
    let Some(restored) = snapshot else {
        // Without a snapshot the WAL must hold the log from its first entry. When it does, a
        // mark an older install left does not matter: the entries were appended after it
        // (a mark drops those before it), as when a group that lost its state was rebuilt
        // by appends.
        let first = wal.first_index.unwrap_or(wal.last_index.next());
        if first > LogIndex(1) {
            let lost = match &wal.snapshot {
                Some(mark) => StateLoss::SnapshotMissing {
                    group,
                    mark: mark.last.index,
                    loaded: LogIndex::ZERO,
                },
                None => StateLoss::Gap {
                    group,
                    first,
                    loaded: LogIndex::ZERO,
                },
            };
            return lost_restart(wal, membership, lost);
        }
        let state = RestoredState {
            hard_state: wal.hard_state.unwrap_or_default(),
            membership,
            snapshot: None,
            term_runs: wal.term_runs,
            last_index: wal.last_index,
            applied: LogIndex::ZERO,
            vote_floor: LogIndex::ZERO,
        };
        return Restart {
            state,
            machine: KvMachine::new(),
            kept: VecDeque::new(),
            wal_compaction: None,
            applied_term: Term(0),
            lost: None,
        };
    };
    let meta = restored.header.meta;
    let loaded = meta.last.index;
    let applied_term = meta.last.term;
    if let Some(mark) = &wal.snapshot
        && mark.last.index > loaded
    {
        let lost = StateLoss::SnapshotMissing {
            group,
            mark: mark.last.index,
            loaded,
        };
        return lost_restart(wal, meta.membership, lost);
    }
    let first = wal.first_index.unwrap_or(wal.last_index.next());
    if first > loaded.next() && wal.last_index > loaded {
        let lost = StateLoss::Gap {
            group,
            first,
            loaded,
        };
        return lost_restart(wal, meta.membership, lost);
    }
    // The WAL's term at the snapshot's index: the run holding it.
    let term_at_snapshot = wal
        .term_runs
        .iter()
        .rev()
        .find(|run| run.index <= loaded)
        .map(|run| run.term);
    // A WAL whose first entry is the one right after the snapshot continues it too: an
    // installed snapshot's mark dropped the entries up to it, or purge freed them.
    let continues = term_at_snapshot == Some(meta.last.term)
        || (term_at_snapshot.is_none() && wal.first_index == Some(loaded.next()));
    let agrees = wal.last_index > loaded && continues;
    let (term_runs, last_index) = if agrees {
        (runs_after(&wal.term_runs, meta.last), wal.last_index)
    } else {
        (Vec::new(), loaded)
    };
    let mut hard_state = wal.hard_state.unwrap_or_default();
    hard_state.commit = hard_state.commit.max(loaded).min(last_index);
    let kept: VecDeque<LogIndex> = kept.into_iter().filter(|&k| k <= loaded).collect();
    // The log keeps the entries after the oldest kept snapshot, unless it cannot continue the
    // loaded one: then everything up to it goes.
    let wal_compaction = if agrees {
        kept.front().copied().or(Some(loaded))
    } else {
        Some(loaded)
    };
    let state = RestoredState {
        hard_state,
        membership: meta.membership.clone(),
        snapshot: Some(meta),
        term_runs,
        last_index,
        applied: loaded,
        vote_floor: LogIndex::ZERO,
    };
    Restart {
        state,
        machine: restored.machine,
        kept,
        wal_compaction,
        applied_term,
        lost: None,
    }
}

/// A group that lost its state: an empty log and machine, its term and vote kept (a vote
/// given stays given, paper §5.2), and a vote floor at the highest index the WAL says it may
/// have acknowledged. The leader finds its log empty and sends its snapshot; the WAL's old
/// records of the group give way to that snapshot's mark.
fn lost_restart(wal: RestoredGroup, membership: Membership, lost: StateLoss) -> Restart {
    let mut hard_state = wal.hard_state.unwrap_or_default();
    let mark = wal
        .snapshot
        .as_ref()
        .map_or(LogIndex::ZERO, |m| m.last.index);
    let vote_floor = wal
        .last_index
        .max(mark)
        .max(hard_state.commit)
        .max(hard_state.vote_floor);
    hard_state.commit = LogIndex::ZERO;
    let state = RestoredState {
        hard_state,
        membership,
        snapshot: None,
        term_runs: Vec::new(),
        last_index: LogIndex::ZERO,
        applied: LogIndex::ZERO,
        vote_floor,
    };
    Restart {
        state,
        machine: KvMachine::new(),
        kept: VecDeque::new(),
        wal_compaction: None,
        applied_term: Term(0),
        lost: Some(lost),
    }
}

/// The runs of equal terms after `last`: the run holding `last.index + 1` restarts there.
fn runs_after(runs: &[EntryId], last: EntryId) -> Vec<EntryId> {
    let next = last.index.next();
    let mut after = Vec::with_capacity(runs.len());
    if let Some(run) = runs.iter().rev().find(|run| run.index <= next) {
        after.push(EntryId::new(run.term, next));
    }
    after.extend(runs.iter().filter(|run| run.index > next).copied());
    after
}

/// A snapshot being written: the encoder walks the group's frozen view.
#[derive(Debug)]
pub(super) struct Taking {
    pub(super) id: SnapshotId,
    encoder: SnapshotEncoder,
    chunks_unwritten: usize,
    encoded_all: bool,
}

/// Per group: what the shard knows of its snapshots.
#[derive(Debug, Default)]
pub(super) struct GroupSnapshots {
    /// The indices of the snapshot files the group keeps, oldest first.
    pub kept: VecDeque<LogIndex>,
    pub taking: Option<Taking>,
    /// No snapshot starts before this tick (after a failure).
    pub retry_tick: u64,
    /// The term of the last applied entry.
    pub applied_term: Term,
    /// A snapshot the reactor staged, whose offer was stepped this round: it becomes the
    /// state machine if the group's next persist carries it.
    pub staged: Option<(SnapshotMeta, KvMachine)>,
}

impl GroupSnapshots {
    pub fn newest(&self) -> LogIndex {
        self.kept.back().copied().unwrap_or(LogIndex::ZERO)
    }
}

impl Shard {
    /// The snapshot writer wrote one chunk of `id`.
    pub fn on_snapshot_chunk_written(&mut self, id: SnapshotId) {
        let snapshots = &mut self.group_state(id.group).snapshots;
        if let Some(taking) = snapshots.taking.as_mut()
            && taking.id == id
        {
            taking.chunks_unwritten = taking.chunks_unwritten.saturating_sub(1);
        }
    }

    /// The snapshot file of `id` is durable under its name (`Ok`), or could not be written:
    /// the Raft log and the WAL compact to the older kept snapshot; a failure is retried
    /// later.
    pub fn on_snapshot_written(&mut self, id: SnapshotId, result: Result<(), String>) {
        let group = id.group;
        let now = self.now_ticks;
        let state = self.group_state(group);
        let term = state.soft.term;
        if state
            .snapshots
            .taking
            .take_if(|taking| taking.id == id)
            .is_none()
        {
            return;
        }
        self.taking_count -= 1;
        let index = id.last.index;
        match result {
            Ok(()) => {
                self.keep_snapshot(group, index);
                self.events
                    .push(ShardEvent::SnapshotTaken { group, term, index });
            }
            Err(reason) => {
                let state = self.group_state(group);
                if state.machine.snapshot_open() {
                    state.machine.abort_snapshot();
                }
                state.snapshots.retry_tick = now + SNAPSHOT_RETRY_TICKS;
                let event = ShardEvent::SnapshotFailed {
                    group,
                    term,
                    index,
                    reason,
                };
                self.events.push(event);
            }
        }
    }

    /// The indexes of the snapshots `group` keeps (oldest first); empty for a group this
    /// core does not run.
    pub fn kept_snapshots(&self, group: GroupId) -> Vec<LogIndex> {
        self.groups
            .get(self.config.local_index(group))
            .filter(|_| self.config.groups().any(|g| g == group))
            .map_or_else(Vec::new, |state| {
                state.snapshots.kept.iter().copied().collect()
            })
    }

    /// The reactor staged every byte of a snapshot a leader streamed (`offer` is its
    /// `InstallSnapshot`, the file is durable) and decoded it into `machine`: the offer is
    /// stepped; if the group takes it, the next persist carries it and the machine becomes the
    /// group's state (thesis §5.1).
    pub fn on_snapshot_staged(&mut self, group: GroupId, offer: Message, machine: KvMachine) {
        let MessageBody::InstallSnapshot { snapshot } = &offer.body else {
            panic!(
                "shard: staged snapshot of group {group} with a {:?}",
                offer.body
            );
        };
        let meta = snapshot.clone();
        let Some(state) = self.groups.get_mut(self.config.local_index(group)) else {
            return;
        };
        let term = state.soft.term;
        let index = meta.last.index;
        self.staged_ids.push(SnapshotId {
            group,
            last: meta.last,
        });
        state.snapshots.staged = Some((meta, machine));
        match self.multi.with_group(group, |raft| raft.step(offer)) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => self.events.push(ShardEvent::SnapshotRefused {
                group,
                term,
                index,
                reason: error.to_string(),
            }),
            Err(_) => {}
        }
    }

    /// The reactor's transfer of a snapshot to `to` ended (etcd's ReportSnapshot).
    pub fn on_snapshot_sent(&mut self, group: GroupId, to: NodeId, status: SnapshotStatus) {
        // A group this core does not run cannot have offered; nothing to report.
        let _ = self
            .multi
            .with_group(group, |raft| raft.report_snapshot(to, status));
    }

    /// A persist of `group` carries a received snapshot: its staged machine becomes the
    /// group's state, and a snapshot this node was taking is given up.
    pub(super) fn install_staged(
        &mut self,
        group: GroupId,
        meta: &SnapshotMeta,
        out: &mut ShardOutput,
    ) {
        let term = self.group_state(group).soft.term;
        let state = self.group_state(group);
        let staged = state.snapshots.staged.take();
        let Some((staged_meta, machine)) = staged else {
            panic!(
                "shard: group {group} installs snapshot {} with none staged",
                meta.last
            );
        };
        assert_eq!(
            staged_meta.last, meta.last,
            "shard: group {group} installs snapshot {} but {} is staged",
            meta.last, staged_meta.last
        );
        state.machine = machine;
        state.snapshots.applied_term = meta.last.term;
        if let Some(taking) = state.snapshots.taking.take() {
            out.snapshot_writes
                .push(SnapshotWrite::Abort { id: taking.id });
            self.taking_count -= 1;
        }
        self.keep_snapshot(group, meta.last.index);
        self.events.push(ShardEvent::SnapshotInstalled {
            group,
            term,
            index: meta.last.index,
        });
    }

    /// Records a durable snapshot at `index` and compacts to the oldest one kept.
    fn keep_snapshot(&mut self, group: GroupId, index: LogIndex) {
        let snapshots = &mut self.group_state(group).snapshots;
        if snapshots.kept.back().is_some_and(|&newest| newest >= index) {
            return;
        }
        snapshots.kept.push_back(index);
        while snapshots.kept.len() > SNAPSHOTS_KEPT {
            snapshots.kept.pop_front();
        }
        let Some(&oldest) = snapshots.kept.front() else {
            return;
        };
        // The log starts at the oldest kept snapshot (the fallback should the newest turn out
        // corrupt); followers that need a snapshot get the newest.
        // A snapshot just installed from the leader is beyond the core's applied index until
        // its persist is durable, and the core's log already starts there: the core refuses
        // that compaction (and that note), which leaves nothing undone.
        let compacted = self.multi.with_group(group, |raft| {
            let _ = raft.compact(oldest);
            raft.note_snapshot(index);
        });
        if let Err(error) = compacted {
            panic!("shard: compacting group {group} to {oldest}: {error}");
        }
        self.wal_compactions.push((group, oldest));
    }

    /// After apply: starts a snapshot of `group` if it applied enough entries since its last.
    pub(super) fn maybe_start_snapshot(&mut self, group: GroupId) {
        let threshold = self.config.snapshot.entries;
        let now = self.now_ticks;
        let alignment = self.config.snapshot.alignment;
        let state = self.group_state(group);
        let applied = state.machine.applied();
        if threshold == 0
            || state.snapshots.taking.is_some()
            || state.snapshots.staged.is_some()
            || now < state.snapshots.retry_tick
            || applied.get() < state.snapshots.newest().get().saturating_add(threshold)
        {
            return;
        }
        let newest = state.snapshots.newest();
        let (membership, lagging) = match self.multi.group(group) {
            Some(raft) => (raft.membership().clone(), raft.active_follower_match_min()),
            None => return,
        };
        // A leader holds its next snapshot (and so the compaction to its current newest)
        // while a live follower has not reached the newest yet: it is receiving a snapshot or
        // catching up after one, and compacting now would make it need another one, forever
        // if transfers are slower than the group's writes. Held for one more threshold at
        // most, so the log stays within three thresholds.
        let held = lagging.is_some_and(|matched| matched < newest)
            && applied.get() < newest.get().saturating_add(threshold.saturating_mul(2));
        if held {
            return;
        }
        let state = self.group_state(group);
        let frozen = state
            .machine
            .begin_snapshot(state.snapshots.applied_term, membership);
        let id = SnapshotId {
            group,
            last: frozen.meta.last,
        };
        match SnapshotEncoder::new(group, frozen, alignment) {
            Ok(encoder) => {
                state.snapshots.taking = Some(Taking {
                    id,
                    encoder,
                    chunks_unwritten: 0,
                    encoded_all: false,
                });
                self.taking_count += 1;
            }
            Err(error) => {
                state.machine.abort_snapshot();
                state.snapshots.retry_tick = now + SNAPSHOT_RETRY_TICKS;
                let term = state.soft.term;
                self.events.push(ShardEvent::SnapshotFailed {
                    group,
                    term,
                    index: applied,
                    reason: error.to_string(),
                });
            }
        }
    }

    /// One encoding step of every snapshot in progress whose writer keeps up.
    pub(super) fn snapshot_steps(&mut self, out: &mut ShardOutput) {
        if self.taking_count == 0 {
            return;
        }
        for state in &mut self.groups {
            let Some(taking) = state.snapshots.taking.as_mut() else {
                continue;
            };
            if taking.encoded_all || taking.chunks_unwritten >= SNAPSHOT_CHUNKS_AHEAD_MAX {
                continue;
            }
            let mut chunk = Vec::new();
            let status = taking.encoder.next_chunk(&mut state.machine, &mut chunk);
            let last = status == EncodeStatus::Done;
            taking.encoded_all = last;
            taking.chunks_unwritten += 1;
            out.snapshot_writes.push(SnapshotWrite::Chunk {
                id: taking.id,
                chunk,
                last,
            });
        }
    }

    /// Whether a snapshot step could run now.
    pub(super) fn snapshot_has_work(&self) -> bool {
        self.taking_count > 0
            && self.groups.iter().any(|state| {
                state.snapshots.taking.as_ref().is_some_and(|taking| {
                    !taking.encoded_all && taking.chunks_unwritten < SNAPSHOT_CHUNKS_AHEAD_MAX
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NodeId;
    use crate::kv::snapshot::{decode_all, encode_all};
    use crate::raft::HardState;

    fn membership() -> Membership {
        Membership::new(vec![NodeId(1), NodeId(2), NodeId(3)])
    }

    fn snapshot_at(term: u64, index: u64) -> Restored {
        let mut machine = KvMachine::new();
        for i in 1..=index {
            machine.skip(LogIndex(i));
        }
        let bytes =
            encode_all(&mut machine, GroupId(0), Term(term), membership(), 4096).expect("encodes");
        decode_all(&bytes).expect("decodes")
    }

    fn wal(first: u64, runs: &[(u64, u64)], last: u64, commit: u64) -> RestoredGroup {
        RestoredGroup {
            hard_state: Some(HardState {
                term: Term(runs.last().map_or(1, |r| r.0)),
                vote: None,
                commit: LogIndex(commit),
                vote_floor: LogIndex::ZERO,
            }),
            snapshot: None,
            term_runs: runs
                .iter()
                .map(|&(term, index)| EntryId::new(Term(term), LogIndex(index)))
                .collect(),
            first_index: Some(LogIndex(first)),
            last_index: LogIndex(last),
        }
    }

    #[test]
    fn restart_replays_the_wal_after_the_snapshot() {
        // The log restarts right after the snapshot, in the term run that holds that index;
        // the WAL compacts to the oldest kept snapshot.
        let restart = GroupRestart {
            wal: Some(wal(11, &[(1, 11), (2, 40), (3, 70)], 90, 85)),
            snapshot: Some(snapshot_at(2, 50)),
            kept: vec![LogIndex(20), LogIndex(50)],
        };
        let found = restart_state(GroupId(0), restart, membership());
        assert_eq!(found.state.applied, LogIndex(50));
        assert_eq!(
            found.state.term_runs,
            vec![
                EntryId::new(Term(2), LogIndex(51)),
                EntryId::new(Term(3), LogIndex(70))
            ]
        );
        assert_eq!(found.state.last_index, LogIndex(90));
        assert_eq!(found.state.hard_state.commit, LogIndex(85));
        assert_eq!(found.machine.applied(), LogIndex(50));
        assert_eq!(found.wal_compaction, Some(LogIndex(20)));
        assert_eq!(found.kept, VecDeque::from(vec![LogIndex(20), LogIndex(50)]));
    }

    #[test]
    fn restart_drops_a_wal_suffix_that_disagrees_with_the_snapshot() {
        // A WAL entry at the snapshot's index of another term is uncommitted: the log is
        // empty after the snapshot, and commit reaches the snapshot.
        let restart = GroupRestart {
            wal: Some(wal(1, &[(1, 1), (4, 45)], 60, 10)),
            snapshot: Some(snapshot_at(5, 50)),
            kept: vec![LogIndex(50)],
        };
        let found = restart_state(GroupId(0), restart, membership());
        assert!(found.state.term_runs.is_empty());
        assert_eq!(found.state.last_index, LogIndex(50));
        assert_eq!(found.state.hard_state.commit, LogIndex(50));
        assert_eq!(found.wal_compaction, Some(LogIndex(50)));
    }

    #[test]
    fn a_gap_or_a_missing_installed_snapshot_leaves_the_group_empty_below_a_vote_floor() {
        // Entries between the loaded snapshot and the WAL's first are gone, or a snapshot the
        // WAL says was installed does not load: the group starts empty, keeps term and vote,
        // and may not vote until its log again reaches what it may have acknowledged.
        let gap = GroupRestart {
            wal: Some(wal(80, &[(3, 80)], 90, 85)),
            snapshot: Some(snapshot_at(2, 50)),
            kept: vec![LogIndex(50)],
        };
        let found = restart_state(GroupId(0), gap, membership());
        assert_eq!(
            found.lost,
            Some(StateLoss::Gap {
                group: GroupId(0),
                first: LogIndex(80),
                loaded: LogIndex(50)
            })
        );
        assert_eq!(found.state.vote_floor, LogIndex(90));
        assert_eq!(found.state.last_index, LogIndex::ZERO);
        assert_eq!(found.state.hard_state.commit, LogIndex::ZERO);
        assert_eq!(found.state.hard_state.term, Term(3));
        assert!(found.state.snapshot.is_none() && found.machine.key_count() == 0);
        let mut marked = wal(61, &[(3, 61)], 70, 65);
        marked.snapshot = Some(SnapshotMeta {
            last: EntryId::new(Term(3), LogIndex(60)),
            membership: membership(),
        });
        let missing = GroupRestart {
            wal: Some(marked),
            snapshot: Some(snapshot_at(2, 50)),
            kept: vec![LogIndex(50)],
        };
        let found = restart_state(GroupId(0), missing, membership());
        assert!(
            matches!(found.lost, Some(StateLoss::SnapshotMissing { mark, .. }) if mark == LogIndex(60))
        );
        assert_eq!(found.state.vote_floor, LogIndex(70));
    }

    #[test]
    fn restart_past_the_wal_end_starts_the_log_at_the_snapshot() {
        // A snapshot newer than everything the WAL holds (received, then a crash): the log is
        // empty after it and the WAL compacts up to it.
        let restart = GroupRestart {
            wal: Some(wal(1, &[(1, 1)], 30, 30)),
            snapshot: Some(snapshot_at(2, 50)),
            kept: vec![LogIndex(50)],
        };
        let found = restart_state(GroupId(0), restart, membership());
        assert_eq!(found.state.last_index, LogIndex(50));
        assert!(found.state.term_runs.is_empty());
        assert_eq!(found.wal_compaction, Some(LogIndex(50)));
    }

    #[test]
    fn without_a_snapshot_the_wal_must_hold_the_log_from_its_first_entry() {
        // No snapshot loads: a WAL whose entries start past index 1 (compacted, or an
        // install's mark with nothing after it) cannot rebuild the group, which restarts
        // empty below a vote floor; a WAL holding the log from index 1 rebuilds it even when
        // an older install left a mark (the entries were appended after it).
        let mark = SnapshotMeta {
            last: EntryId::new(Term(2), LogIndex(40)),
            membership: membership(),
        };
        let restart = |wal: RestoredGroup| {
            restart_state(
                GroupId(0),
                GroupRestart {
                    wal: Some(wal),
                    snapshot: None,
                    kept: Vec::new(),
                },
                membership(),
            )
        };
        let compacted = restart(wal(30, &[(2, 30)], 45, 44));
        assert!(
            matches!(compacted.lost, Some(StateLoss::Gap { first, .. }) if first == LogIndex(30))
        );
        assert_eq!(compacted.state.vote_floor, LogIndex(45));
        let mut only_mark = wal(1, &[], 40, 40);
        only_mark.first_index = None;
        only_mark.snapshot = Some(mark.clone());
        let found = restart(only_mark);
        assert!(
            matches!(found.lost, Some(StateLoss::SnapshotMissing { mark, .. }) if mark == LogIndex(40))
        );
        assert_eq!(found.state.vote_floor, LogIndex(40));
        let mut rebuilt = wal(1, &[(3, 1)], 12, 12);
        rebuilt.snapshot = Some(mark);
        let found = restart(rebuilt);
        assert_eq!(found.lost, None);
        assert_eq!(found.state.last_index, LogIndex(12));
        assert_eq!(found.state.vote_floor, LogIndex::ZERO);
        let mut idle = wal(1, &[], 25, 25);
        idle.first_index = None;
        let found = restart(idle);
        assert!(matches!(found.lost, Some(StateLoss::Gap { first, .. }) if first == LogIndex(26)));
    }
}

#[cfg(test)]
mod staged_tests {
    use super::*;
    use crate::ids::Ticks;
    use crate::kv::snapshot::{decode_all, encode_all};
    use crate::shard::core::{ShardConfig, WalTicket};

    const GROUP: GroupId = GroupId(0);

    fn membership() -> Membership {
        Membership::new(vec![NodeId(1), NodeId(2), NodeId(3)])
    }

    /// Node 2's only core, running group 0 from empty storage and taking a snapshot every
    /// `entries` applied entries (0: never).
    fn follower(entries: u64) -> Shard {
        let config = ShardConfig {
            node: NodeId(2),
            core: crate::ids::CoreId(0),
            cores: 1,
            groups_total: 1,
            nodes: vec![NodeId(1), NodeId(2), NodeId(3)],
            election_timeout_ticks: Ticks(10),
            heartbeat_interval_ticks: Ticks(2),
            request_timeout_ticks: Ticks(100),
            seed: 7,
            snapshot: SnapshotPolicy {
                entries,
                alignment: 4096,
            },
            wal_record_capacity_bytes: 1 << 20,
        };
        Shard::new(config, &mut |_| GroupRestart::default())
    }

    /// The machine a leader's snapshot through `index` decodes into.
    fn machine_at(term: u64, index: u64) -> KvMachine {
        let mut machine = KvMachine::new();
        for i in 1..=index {
            machine.skip(LogIndex(i));
        }
        let bytes =
            encode_all(&mut machine, GROUP, Term(term), membership(), 4096).expect("encodes");
        decode_all(&bytes).expect("decodes").machine
    }

    fn id(term: u64, index: u64) -> SnapshotId {
        SnapshotId {
            group: GROUP,
            last: EntryId::new(Term(term), LogIndex(index)),
        }
    }

    /// Runs one round and makes its WAL append durable.
    fn round(shard: &mut Shard) -> ShardOutput {
        let mut out = ShardOutput::default();
        shard.round(&mut out);
        if let Some((ticket, _)) = &out.wal_append {
            let ticket: WalTicket = *ticket;
            shard.on_wal_durable(ticket);
        }
        out
    }

    /// Stages node 1's offer (in `message_term`) of the snapshot `id`, runs one round and
    /// makes its WAL append durable; returns the round's output.
    fn stage(shard: &mut Shard, message_term: u64, id: SnapshotId) -> ShardOutput {
        let offer = Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(message_term),
            body: MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    last: id.last,
                    membership: membership(),
                },
            },
        };
        let machine = machine_at(id.last.term.0, id.last.index.get());
        shard.on_snapshot_staged(GROUP, offer, machine);
        round(shard)
    }

    fn discards(out: &ShardOutput) -> Vec<SnapshotId> {
        out.snapshot_writes
            .iter()
            .filter_map(|write| match write {
                SnapshotWrite::Discard { id } => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_staged_snapshot_the_group_refuses_has_its_file_discarded() {
        // An offer the group takes keeps its file; one at or below its commit index, or one
        // the core rejects as malformed, is not taken and its file is removed, unless it is
        // the very snapshot the group keeps.
        let mut shard = follower(0);
        let taken = stage(&mut shard, 1, id(1, 5));
        assert!(
            taken.events.iter().any(|event| matches!(event,
                ShardEvent::SnapshotInstalled { index, .. } if *index == LogIndex(5))),
            "the offer of 5 was not installed: {:?}",
            taken.events
        );
        assert_eq!(
            discards(&taken),
            Vec::new(),
            "a taken snapshot was discarded"
        );
        assert_eq!(shard.kept_snapshots(GROUP), vec![LogIndex(5)]);

        let stale = stage(&mut shard, 1, id(1, 3));
        assert_eq!(
            discards(&stale),
            vec![id(1, 3)],
            "a snapshot below the commit index kept its file: {:?}",
            stale.snapshot_writes
        );

        let again = stage(&mut shard, 1, id(1, 5));
        assert_eq!(
            discards(&again),
            Vec::new(),
            "the file of the snapshot the group keeps was discarded"
        );

        let malformed = stage(&mut shard, 1, id(2, 9));
        assert!(
            malformed
                .events
                .iter()
                .any(|event| matches!(event, ShardEvent::SnapshotRefused { .. })),
            "an offer of a later term than its message was not refused: {:?}",
            malformed.events
        );
        assert_eq!(discards(&malformed), vec![id(2, 9)]);
        assert_eq!(shard.kept_snapshots(GROUP), vec![LogIndex(5)]);
        assert_eq!(shard.kept_snapshots(GroupId(1)), Vec::new());
    }

    #[test]
    fn a_refused_snapshot_the_group_is_taking_itself_keeps_its_file() {
        // The follower caught up by appends and is taking its own snapshot of the very entry
        // a leader's refused offer ends at: same id, same file, which must stay.
        let mut shard = follower(3);
        stage(&mut shard, 1, id(1, 5));
        let entries = (6..=8)
            .map(|i| crate::raft::Entry {
                id: EntryId::new(Term(1), LogIndex(i)),
                kind: crate::raft::EntryKind::Empty,
                data: bytes::Bytes::new(),
            })
            .collect();
        let mut batch = crate::shard::Batch::new(NodeId(1), NodeId(2));
        batch.messages.push(crate::shard::GroupMessage {
            group: GROUP,
            term: Term(1),
            body: MessageBody::Append {
                prev: EntryId::new(Term(1), LogIndex(5)),
                entries,
                commit: LogIndex(8),
            },
        });
        shard.on_peer_batch(batch).expect("the append steps");
        let mut taking = false;
        for _ in 0..4 {
            let out = round(&mut shard);
            taking |= out.snapshot_writes.iter().any(|write| {
                matches!(write, SnapshotWrite::Chunk { id: written, .. } if *written == id(1, 8))
            });
        }
        assert!(taking, "the follower did not start its own snapshot at 8");
        assert_eq!(shard.kept_snapshots(GROUP), vec![LogIndex(5)]);
        let refused = stage(&mut shard, 1, id(1, 8));
        assert_eq!(
            discards(&refused),
            Vec::new(),
            "the file of the snapshot the group is taking was discarded"
        );
        let stale = stage(&mut shard, 1, id(1, 7));
        assert_eq!(discards(&stale), vec![id(1, 7)]);
    }

    #[test]
    fn a_staged_snapshot_replaced_before_the_round_has_its_file_discarded() {
        // Two snapshots staged before one round: the group takes the newer, and the file of
        // the older one, which it never installs, is removed.
        let mut shard = follower(0);
        let offer = |index: u64| Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(1),
            body: MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta {
                    last: EntryId::new(Term(1), LogIndex(index)),
                    membership: membership(),
                },
            },
        };
        shard.on_snapshot_staged(GROUP, offer(4), machine_at(1, 4));
        shard.on_snapshot_staged(GROUP, offer(6), machine_at(1, 6));
        let out = round(&mut shard);
        assert_eq!(discards(&out), vec![id(1, 4)]);
        assert_eq!(shard.kept_snapshots(GROUP), vec![LogIndex(6)]);
    }
}
