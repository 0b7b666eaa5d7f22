//! Tests of the whole WAL through the driver on the simulated disk: round trips, torn tails,
//! corruption, recycling, a model-based property test with crashes, and the recovery scan fed
//! random and mutated bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

use crate::constants::WAL_HEADER_BLOCK_BYTES;
use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::log::record::align_down;
use crate::log::{Log, LogError, Recovery, RecoverySummary, SegmentSeq, WalConfig};
use crate::prng::Prng;
use crate::raft::types::{Entry, EntryKind, HardState, Membership, Persist, SnapshotMeta};
use crate::sim::disk::{SimDisk, block_on};

/// The seed of a randomized test: `RINGRAFT_SEED` if set, else a fixed default. Printed first
/// so that a failure can be replayed.
fn test_seed(name: &str) -> u64 {
    let seed = std::env::var("RINGRAFT_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0x5EED_0000_0000_0001);
    println!("{name}: seed {seed} (replay with RINGRAFT_SEED={seed})");
    seed
}

fn proptest_config(name: &str, cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(test_seed(name)),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn small_config() -> WalConfig {
    WalConfig {
        segment_bytes: 16 * 1024,
        spare_segments: 1,
    }
}

fn open(disk: &SimDisk, config: WalConfig) -> Result<(Log<SimDisk>, RecoverySummary), LogError> {
    block_on(Log::open(disk.clone(), config))
}

fn entries(term: u64, first: u64, count: u64, data_bytes: usize) -> Vec<Entry> {
    (first..first + count)
        .map(|index| Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            kind: EntryKind::Command,
            data: Bytes::from(vec![(index % 251) as u8; data_bytes]),
        })
        .collect()
}

fn persist(entries: Vec<Entry>, hard_state: Option<HardState>) -> Persist {
    Persist {
        position: Default::default(),
        entries,
        hard_state,
        snapshot: None,
    }
}

fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

fn append(log: &mut Log<SimDisk>, batch: &[(u32, &Persist)]) {
    let batch: Vec<(GroupId, &Persist)> = batch.iter().map(|(g, p)| (GroupId(*g), *p)).collect();
    block_on(log.append(&batch)).expect("append succeeds on the simulated disk");
}

fn fetch_all(log: &Log<SimDisk>, group: u32) -> Vec<Entry> {
    let Some(restored) = log.restored(GroupId(group)) else {
        return Vec::new();
    };
    let Some(first) = restored.first_index else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut next = first;
    while next <= restored.last_index {
        let got = block_on(log.fetch(GroupId(group), next, restored.last_index, 4096))
            .expect("fetch of indexed entries succeeds");
        assert!(!got.is_empty(), "fetch of {next}.. returned nothing");
        next = got.last().map_or(next, |entry| entry.index().next());
        out.extend(got);
    }
    out
}

#[test]
fn append_and_reopen_restore_every_group() {
    // Entries and hard states of several groups written in one append come back after a
    // restart: same hard states, term runs, last index and entry bytes.
    let disk = SimDisk::new(Prng::new(1), 4096);
    let (mut log, summary) = open(&disk, small_config()).expect("fresh open");
    assert_eq!(summary.segment_count, 0);
    let a = persist(entries(1, 1, 3, 100), Some(hard_state(1, Some(1), 2)));
    let b = persist(entries(2, 1, 2, 0), Some(hard_state(2, None, 0)));
    append(&mut log, &[(1, &a), (2, &b)]);
    let a2 = persist(entries(3, 4, 2, 10), None);
    append(&mut log, &[(1, &a2)]);
    let expected_a: Vec<Entry> = a.entries.iter().chain(&a2.entries).cloned().collect();
    assert_eq!(fetch_all(&log, 1), expected_a);
    drop(log);

    let (log, summary) = open(&disk, small_config()).expect("reopen");
    assert_eq!(summary.group_count, 2);
    assert_eq!(summary.batch_count, 2);
    assert_eq!(summary.torn_tail, None);
    let restored = log.restored(GroupId(1)).expect("group 1 restored");
    assert_eq!(restored.hard_state, Some(hard_state(1, Some(1), 2)));
    assert_eq!(restored.last_index, LogIndex(5));
    assert_eq!(
        restored.term_runs,
        vec![
            EntryId::new(Term(1), LogIndex(1)),
            EntryId::new(Term(3), LogIndex(4))
        ]
    );
    assert_eq!(fetch_all(&log, 1), expected_a);
    assert_eq!(fetch_all(&log, 2), b.entries);
}

#[test]
fn one_append_of_many_groups_is_one_write_and_one_sync() {
    // Group commit: twenty groups' records go out as one aligned write and one sync.
    let disk = SimDisk::new(Prng::new(2), 512);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    let persists: Vec<Persist> = (0..20)
        .map(|g| persist(entries(1, 1, 2, 20), Some(hard_state(1, Some(g), 0))))
        .collect();
    let batch: Vec<(u32, &Persist)> = persists
        .iter()
        .enumerate()
        .map(|(g, p)| (g as u32, p))
        .collect();
    let before = disk.stats();
    append(&mut log, &batch);
    let after = disk.stats();
    assert_eq!(after.writes - before.writes, 1);
    assert_eq!(after.syncs - before.syncs, 1);
    // The next small append rewrites the partial tail block rather than padding it.
    append(&mut log, &[(0, &persist(entries(1, 3, 1, 1), None))]);
    let last = disk.stats();
    assert_eq!(last.writes - after.writes, 1);
    assert!(
        last.bytes_written - after.bytes_written <= 1024,
        "small append wrote {} bytes",
        last.bytes_written - after.bytes_written
    );
}

#[test]
fn conflicting_suffix_is_replaced_and_stays_replaced_after_restart() {
    // Paper §5.3: appending index 3 in a new term drops the old 3..5, in memory and on replay.
    let disk = SimDisk::new(Prng::new(3), 4096);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    append(&mut log, &[(7, &persist(entries(1, 1, 5, 8), None))]);
    append(&mut log, &[(7, &persist(entries(2, 3, 1, 9), None))]);
    let check = |log: &Log<SimDisk>| {
        let restored = log.restored(GroupId(7)).expect("group 7");
        assert_eq!(restored.last_index, LogIndex(3));
        let fetched = fetch_all(log, 7);
        assert_eq!(fetched.len(), 3);
        assert_eq!(fetched[2].id, EntryId::new(Term(2), LogIndex(3)));
    };
    check(&log);
    drop(log);
    let (log, _) = open(&disk, small_config()).expect("reopen");
    check(&log);
}

#[test]
fn torn_tail_is_cut_and_reported() {
    // A crash in the middle of an unsynced write leaves a damaged last batch: recovery cuts it,
    // reports where, keeps everything before it, and the log accepts appends again.
    let disk = SimDisk::new(Prng::new(4), 512);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    let first = persist(entries(1, 1, 2, 50), Some(hard_state(1, None, 1)));
    append(&mut log, &[(1, &first)]);
    let tail = log.wal().position();
    let torn = persist(entries(1, 3, 4, 600), None);
    let syncs = block_on(log.append_interrupted(&[(GroupId(1), &torn)], 0)).expect("write");
    assert_eq!(syncs, 1);
    drop(log);
    // Tear it: the block holding the end of the unsynced batch is lost (old zeros back).
    let mut bytes = disk.contents(tail.segment).expect("active segment exists");
    let end = tail.offset as usize + 4 * 700;
    let block = align_down(end as u64 - 100, 512) as usize;
    bytes[block..block + 512].fill(0);
    disk.set_contents(tail.segment, bytes);

    let (mut log, summary) = open(&disk, small_config()).expect("torn tail is not corruption");
    let torn_tail = summary.torn_tail.expect("the cut is reported");
    assert_eq!(
        (torn_tail.segment, torn_tail.offset),
        (tail.segment, tail.offset)
    );
    assert_eq!(
        log.restored(GroupId(1)).map(|r| r.last_index),
        Some(LogIndex(2))
    );
    let next = persist(entries(2, 3, 1, 5), None);
    append(&mut log, &[(1, &next)]);
    drop(log);
    let (log, summary) = open(&disk, small_config()).expect("reopen after the cut");
    assert_eq!(summary.torn_tail, None);
    let fetched = fetch_all(&log, 1);
    assert_eq!(fetched.len(), 3);
    assert_eq!(fetched[2], next.entries[0]);
}

/// Writes enough that the WAL spans several segments; returns the log.
fn fill_segments(disk: &SimDisk, appends: u64) -> Log<SimDisk> {
    let (mut log, _) = open(disk, small_config()).expect("fresh open");
    for round in 0..appends {
        let p = persist(
            entries(1, round * 4 + 1, 4, 700),
            Some(hard_state(1, None, round * 4)),
        );
        append(&mut log, &[(1, &p)]);
    }
    log
}

#[test]
fn corruption_in_a_sealed_segment_refuses_start_naming_file_and_offset() {
    // A flipped byte inside a synced record followed by more data is corruption, not a torn
    // tail: opening fails and names the file and the record's offset.
    let disk = SimDisk::new(Prng::new(5), 4096);
    let log = fill_segments(&disk, 12);
    let first_segment = log.wal().segments()[0];
    assert!(
        log.wal().active_segment() > first_segment.next(),
        "test needs sealed segments"
    );
    drop(log);
    let record_offset = WAL_HEADER_BLOCK_BYTES + 48;
    disk.corrupt(first_segment, record_offset + 100, 0x40);
    match open(&disk, small_config()) {
        Err(LogError::Corrupt { file, offset, .. }) => {
            assert_eq!(
                file,
                format!("sim/{}", crate::log::segment_file_name(first_segment))
            );
            assert_eq!(offset, record_offset);
        }
        other => panic!("expected corruption, got {:?}", other.map(|(_, s)| s)),
    }
}

#[test]
fn corruption_in_the_middle_of_the_active_segment_refuses_start() {
    // In the newest segment, a bad record followed by a later valid batch is corruption too.
    let disk = SimDisk::new(Prng::new(6), 512);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    append(&mut log, &[(1, &persist(entries(1, 1, 1, 10), None))]);
    let second = log.wal().position();
    append(&mut log, &[(1, &persist(entries(1, 2, 1, 10), None))]);
    append(&mut log, &[(1, &persist(entries(1, 3, 1, 10), None))]);
    drop(log);
    disk.corrupt(second.segment, second.offset + 50, 0x01);
    match open(&disk, small_config()) {
        Err(LogError::Corrupt { offset, reason, .. }) => {
            assert_eq!(offset, second.offset + 48, "reason: {reason}");
            assert!(reason.contains("later batch"), "reason: {reason}");
        }
        other => panic!("expected corruption, got {:?}", other.map(|(_, s)| s)),
    }
}

#[test]
fn a_missing_segment_refuses_start() {
    // A hole in the sequence of segments means a file went missing: refuse, naming the gap.
    let disk = SimDisk::new(Prng::new(7), 4096);
    let log = fill_segments(&disk, 12);
    let segments = log.wal().segments();
    drop(log);
    block_on(crate::log::Disk::remove(&disk, segments[1])).expect("remove");
    assert!(matches!(
        open(&disk, small_config()),
        Err(LogError::MissingSegment { .. })
    ));
}

#[test]
fn recycled_segment_never_yields_stale_records() {
    // Purge recycles segments that still hold old records; reused under a new sequence number
    // they read as empty, and only the new records come back after a restart.
    let disk = SimDisk::new(Prng::new(8), 4096);
    let mut log = fill_segments(&disk, 12);
    let restored = log.restored(GroupId(1)).expect("group 1");
    log.compact(
        GroupId(1),
        restored.last_index.prev().expect("entries exist"),
    );
    let old_segments = log.wal().segments();
    let freed = block_on(log.purge()).expect("purge");
    assert!(freed >= 2, "purge freed {freed} segments");
    let recycles = disk.stats().recycles;
    assert!(recycles >= 1, "no segment was recycled");
    // Fill into the recycled spares.
    let mut last = restored.last_index.get();
    for _ in 0..6 {
        let p = persist(entries(2, last + 1, 2, 900), None);
        append(&mut log, &[(1, &p)]);
        last += 2;
    }
    let new_segments = log.wal().segments();
    let reused = new_segments
        .iter()
        .find(|seq| !old_segments.contains(seq) && disk.stats().recycles > 0)
        .copied()
        .expect("a new sequence number is in use");
    let bytes = disk.contents(reused).expect("segment exists");
    assert!(
        bytes[WAL_HEADER_BLOCK_BYTES as usize..]
            .iter()
            .any(|&b| b != 0)
    );
    let expected = fetch_all(&log, 1);
    drop(log);
    let (log, summary) = open(&disk, small_config()).expect("reopen");
    assert_eq!(summary.torn_tail, None);
    assert_eq!(
        log.restored(GroupId(1)).map(|r| r.last_index),
        Some(LogIndex(last))
    );
    let fetched = fetch_all(&log, 1);
    assert!(
        fetched.ends_with(&expected),
        "restart lost entries the live log held"
    );
    assert!(
        fetched
            .iter()
            .all(|entry| entry.term() == Term(2) || entry.index() <= restored.last_index)
    );
}

#[test]
fn interrupted_spare_initialisation_is_repaired() {
    // A crash between creating a spare and writing its header leaves a headerless file after
    // the active segment: recovery writes the header again instead of refusing to start.
    let disk = SimDisk::new(Prng::new(9), 4096);
    let mut log = fill_segments(&disk, 2);
    let spare = *log.wal().segments().last().expect("segments");
    assert!(spare > log.wal().active_segment());
    append(&mut log, &[(2, &persist(entries(1, 1, 1, 1), None))]);
    drop(log);
    disk.corrupt(spare, 0, 0xFF);
    let (_, summary) = open(&disk, small_config()).expect("spare is repaired");
    assert_eq!(summary.reinitialised_segments, 1);
    let (_, summary) = open(&disk, small_config()).expect("reopen");
    assert_eq!(summary.reinitialised_segments, 0);
}

#[test]
fn snapshot_mark_discards_the_log_and_survives_restart() {
    // Thesis §5: a snapshot mark past the log discards it; later entries continue after it.
    let disk = SimDisk::new(Prng::new(10), 512);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    append(&mut log, &[(3, &persist(entries(1, 1, 4, 10), None))]);
    let snapshot = SnapshotMeta {
        last: EntryId::new(Term(5), LogIndex(20)),
        membership: Membership::new(vec![NodeId(1), NodeId(2), NodeId(3)]),
    };
    let install = Persist {
        snapshot: Some(snapshot.clone()),
        ..persist(entries(5, 21, 2, 3), Some(hard_state(5, None, 20)))
    };
    append(&mut log, &[(3, &install)]);
    drop(log);
    let (log, _) = open(&disk, small_config()).expect("reopen");
    let restored = log.restored(GroupId(3)).expect("group 3");
    assert_eq!(restored.snapshot, Some(snapshot));
    assert_eq!(restored.first_index, Some(LogIndex(21)));
    assert_eq!(restored.last_index, LogIndex(22));
    assert_eq!(
        restored.term_runs,
        vec![EntryId::new(Term(5), LogIndex(21))]
    );
}
