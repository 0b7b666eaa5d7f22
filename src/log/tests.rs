//! Tests of the whole WAL through the driver on the simulated disk: round trips, torn tails,
//! corruption, recycling, a model-based property test with crashes, and the recovery scan fed
//! random and mutated bytes.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

use crate::constants::WAL_HEADER_BLOCK_BYTES;
use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::log::disk::{Disk, DiskError, DiskOp};
use crate::log::record::align_down;
use crate::log::{Log, LogError, RecoverySummary, SegmentSeq, WalConfig};
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
        vote_floor: LogIndex::ZERO,
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
fn roll_over_moves_into_a_ready_spare_without_creating_files() {
    // Segments are allocated ahead of need: an append that fills the active segment continues
    // in the prepared spare (write, sync, write, sync), and creates no file on that path.
    let disk = SimDisk::new(Prng::new(12), 4096);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    let first_active = log.wal().active_segment();
    let mut next_index = 1;
    while log.wal().active_segment() == first_active {
        let creates = disk.stats().creates;
        let before = disk.stats();
        append(
            &mut log,
            &[
                (1, &persist(entries(1, next_index, 2, 1000), None)),
                (2, &persist(entries(1, next_index, 2, 1000), None)),
            ],
        );
        next_index += 2;
        assert_eq!(
            disk.stats().creates,
            creates,
            "a file was created on the append path"
        );
        let writes = disk.stats().writes - before.writes;
        assert!(writes == 1 || writes == 2, "{writes} writes for one append");
        assert_eq!(disk.stats().syncs - before.syncs, writes);
    }
    assert!(log.spares_short());
    block_on(log.prepare_spares()).expect("spares");
    assert!(!log.spares_short());
    assert_eq!(fetch_all(&log, 1).len() as u64, next_index - 1);
}

#[test]
fn a_spare_created_beside_the_appends_is_waited_for_only_when_an_append_needs_it() {
    // With the next spare reserved for creation elsewhere, appends go on into the ready
    // spare; the one that needs the reserved segment fails with `SpareNotReady` and writes
    // nothing; purge meanwhile removes freed segments instead of recycling them; once the
    // segment is created and adopted the append goes through and a restart keeps it all.
    let disk = SimDisk::new(Prng::new(21), 4096);
    let config = WalConfig {
        segment_bytes: 16 * 1024,
        spare_segments: 2,
    };
    let (mut log, _) = open(&disk, config).expect("fresh open");
    let mut next_index = 1;
    let mut append_next = |log: &mut Log<SimDisk>| {
        let p = persist(entries(1, next_index, 2, 1500), None);
        let result = block_on(log.append(&[(GroupId(1), &p)]));
        if result.is_ok() {
            next_index += 2;
        }
        result
    };
    let first_active = log.wal().active_segment();
    while log.wal().active_segment() == first_active {
        append_next(&mut log).expect("append into the first segment");
    }
    assert!(log.spares_short(), "a roll used a spare");
    let (reserved, size_bytes) = log.reserve_spare().expect("a spare is short");
    assert_eq!(reserved, log.wal().active_segment().next().next());
    assert_eq!(log.reserve_spare(), None, "one reservation at a time");
    assert!(!log.spares_short(), "the reserved spare counts as coming");
    // Free the first segment while the reservation stands: it is removed, not recycled.
    let last = log.restored(GroupId(1)).expect("group 1").last_index;
    log.compact(GroupId(1), last);
    let recycles = disk.stats().recycles;
    let freed = block_on(log.purge()).expect("purge");
    assert!(freed >= 1, "purge freed {freed} segments");
    assert_eq!(
        disk.stats().recycles,
        recycles,
        "recycled into the reserved number"
    );
    // Appends fill the active segment and the ready spare, then stop at the reserved one.
    let refused = loop {
        let before = disk.stats();
        match append_next(&mut log) {
            Ok(_) => assert!(log.wal().active_segment() < reserved),
            Err(error) => break (error, before),
        }
    };
    let (error, before) = refused;
    assert!(
        matches!(error, LogError::SpareNotReady { segment } if segment == reserved),
        "{error}"
    );
    assert_eq!(disk.stats(), before, "a refused append touched the disk");
    block_on(disk.create_segment(reserved, size_bytes)).expect("create the reserved spare");
    block_on(log.adopt_spare(reserved, Ok(()))).expect("adopt");
    append_next(&mut log).expect("the append goes on into the adopted spare");
    assert_eq!(log.wal().active_segment(), reserved);
    let expected = fetch_all(&log, 1);
    assert_eq!(
        expected.last().map(|e| e.id.index),
        Some(LogIndex(next_index - 1))
    );
    drop(log);
    let (log, summary) = open(&disk, config).expect("reopen");
    assert_eq!(summary.torn_tail, None);
    // Compaction points are not in the WAL: entries compacted but still on disk come back.
    let fetched = fetch_all(&log, 1);
    assert!(
        fetched.ends_with(&expected),
        "restart lost entries: {} fetched, the live log held {} up to {:?}",
        fetched.len(),
        expected.len(),
        expected.last().map(|e| e.id)
    );
}

#[test]
fn a_failed_spare_creation_releases_the_reservation() {
    // A creation that failed is reported, and the spare can be created again in place.
    let disk = SimDisk::new(Prng::new(22), 4096);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    let mut next_index = 1;
    let first_active = log.wal().active_segment();
    while log.wal().active_segment() == first_active {
        append(
            &mut log,
            &[(1, &persist(entries(1, next_index, 2, 1500), None))],
        );
        next_index += 2;
    }
    let (reserved, _) = log.reserve_spare().expect("a spare is short");
    let failure = DiskError::new(DiskOp::Create, Some(reserved), "no space left on device");
    let error = block_on(log.adopt_spare(reserved, Err(failure))).expect_err("reported");
    assert!(error.to_string().contains("no space left"), "{error}");
    assert!(log.spares_short());
    block_on(log.prepare_spares()).expect("created in place");
    assert!(!log.spares_short());
    assert_eq!(log.wal().segments().last(), Some(&reserved));
}

#[test]
fn failed_sync_is_returned_and_recovery_keeps_what_was_durable() {
    // DESIGN §6: a failed sync is reported, never retried; after the crash that follows,
    // recovery returns at least everything durable before it.
    let disk = SimDisk::new(Prng::new(14), 4096);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    append(&mut log, &[(1, &persist(entries(1, 1, 2, 10), None))]);
    disk.fail_next(crate::log::DiskOp::Sync);
    let failed = block_on(log.append(&[(GroupId(1), &persist(entries(1, 3, 1, 10), None))]));
    assert!(matches!(failed, Err(LogError::Disk(_))), "got {failed:?}");
    drop(log);
    disk.crash();
    let (log, _) = open(&disk, small_config()).expect("reopen");
    let last = log.restored(GroupId(1)).map(|r| r.last_index);
    assert!(
        last == Some(LogIndex(2)) || last == Some(LogIndex(3)),
        "last {last:?}"
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
fn damaged_end_of_a_sealed_segment_is_corruption_not_a_torn_tail() {
    // Only the newest segment may end in a torn write: zeroing the last batch of a sealed
    // segment is caught because its successor records where it must end.
    let disk = SimDisk::new(Prng::new(13), 4096);
    let log = fill_segments(&disk, 12);
    let first_segment = log.wal().segments()[0];
    assert!(
        log.wal().active_segment() > first_segment.next(),
        "test needs sealed segments"
    );
    drop(log);
    let mut bytes = disk.contents(first_segment).expect("segment exists");
    let data_end = bytes
        .iter()
        .rposition(|&b| b != 0)
        .expect("segment holds records");
    let last_block = align_down(data_end as u64, 4096) as usize;
    bytes[last_block..].fill(0);
    disk.set_contents(first_segment, bytes);
    match open(&disk, small_config()) {
        Err(LogError::Corrupt {
            segment, reason, ..
        }) => {
            assert_eq!(segment, first_segment, "reason: {reason}");
            assert!(reason.contains("says they end at"), "reason: {reason}");
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

/// The in-memory model of one group's log, as the WAL must return it.
#[derive(Clone, Debug, Default, PartialEq)]
struct ModelGroup {
    entries: BTreeMap<u64, Entry>,
    last_index: u64,
    hard_state: Option<HardState>,
    snapshot: Option<SnapshotMeta>,
    compacted: u64,
    term: u64,
}

impl ModelGroup {
    fn apply(&mut self, persist: &Persist) {
        if let Some(snapshot) = &persist.snapshot {
            self.entries.clear();
            self.last_index = snapshot.last.index.get();
            self.snapshot = Some(snapshot.clone());
        }
        for entry in &persist.entries {
            self.entries.split_off(&entry.index().get());
            self.entries.insert(entry.index().get(), entry.clone());
            self.last_index = entry.index().get();
        }
        if let Some(hard_state) = persist.hard_state {
            self.hard_state = Some(hard_state);
        }
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.hard_state.is_none() && self.snapshot.is_none()
    }

    /// A random persist continuing this log: may truncate a suffix above the compaction
    /// point, install a snapshot past the end, and set a hard state.
    fn random_persist(&mut self, prng: &mut Prng) -> Persist {
        let mut persist = persist(Vec::new(), None);
        if prng.chance(1, 20) {
            let last = self.last_index + prng.range_inclusive(1, 10);
            self.term += 1;
            persist.snapshot = Some(SnapshotMeta {
                last: EntryId::new(Term(self.term), LogIndex(last)),
                membership: Membership::new(vec![NodeId(1), NodeId(2)]),
            });
        }
        let count = prng.below(6);
        if count > 0 {
            let next = persist
                .snapshot
                .as_ref()
                .map_or(self.last_index + 1, |s| s.last.index.get() + 1);
            // Raft never truncates committed entries: not below the compaction point or the
            // snapshot.
            let floor = self
                .snapshot
                .as_ref()
                .map_or(self.compacted, |s| s.last.index.get().max(self.compacted))
                + 1;
            let first = if persist.snapshot.is_none() && prng.chance(1, 5) {
                prng.range_inclusive(floor.min(next), next)
            } else {
                next
            };
            if prng.chance(1, 3) {
                self.term += 1;
            }
            let data_bytes = if prng.chance(1, 10) {
                1500
            } else {
                prng.below(200) as usize
            };
            persist.entries = (first..first + count)
                .map(|index| {
                    let mut data = vec![0u8; data_bytes];
                    prng.fill_bytes(&mut data);
                    Entry {
                        id: EntryId::new(Term(self.term), LogIndex(index)),
                        kind: EntryKind::Command,
                        data: Bytes::from(data),
                    }
                })
                .collect();
        }
        if prng.chance(1, 2) || (persist.entries.is_empty() && persist.snapshot.is_none()) {
            persist.hard_state = Some(HardState {
                term: Term(self.term),
                vote: prng
                    .chance(1, 2)
                    .then(|| NodeId(prng.range_inclusive(1, 5))),
                commit: LogIndex(prng.below(self.last_index + 1)),
                vote_floor: LogIndex::ZERO,
            });
        }
        persist
    }
}

/// Compares what the WAL returns for `group` with the model; the WAL may hold entries at or
/// below the compaction point (their segment was not purged yet), never fewer above it.
fn compare_group(log: &Log<SimDisk>, group: u32, model: &ModelGroup) -> Result<(), String> {
    // Once every entry is compacted (folded into a snapshot the caller keeps), purge may
    // recycle all of them: the WAL then need not remember the group's last index.
    let all_compacted = model.last_index <= model.compacted;
    let restored = log.restored(GroupId(group));
    let Some(restored) = restored else {
        return if model.is_empty()
            || (all_compacted && model.hard_state.is_none() && model.snapshot.is_none())
        {
            Ok(())
        } else {
            Err(format!("group {group} missing, model {model:?}"))
        };
    };
    if restored.hard_state != model.hard_state || restored.snapshot != model.snapshot {
        return Err(format!(
            "group {group}: hard state {:?} snapshot {:?}, model {:?} {:?}",
            restored.hard_state, restored.snapshot, model.hard_state, model.snapshot
        ));
    }
    let last_matches = restored.last_index.get() == model.last_index
        || (all_compacted && restored.last_index.get() < model.last_index);
    if !last_matches {
        return Err(format!(
            "group {group}: last index {} model {}",
            restored.last_index, model.last_index
        ));
    }
    let model_first_live = model
        .entries
        .range(model.compacted + 1..)
        .next()
        .map(|(index, _)| *index);
    if let Some(first_live) = model_first_live
        && restored
            .first_index
            .is_none_or(|first| first.get() > first_live)
    {
        return Err(format!(
            "group {group}: first index {:?} but {first_live} is live",
            restored.first_index
        ));
    }
    let fetched = fetch_all(log, group);
    for entry in &fetched {
        if model.entries.get(&entry.index().get()) != Some(entry) {
            return Err(format!(
                "group {group}: fetched {} differs from the model",
                entry.id
            ));
        }
    }
    let mut runs: Vec<EntryId> = Vec::new();
    for entry in &fetched {
        if runs.last().is_none_or(|run| run.term != entry.term()) {
            runs.push(entry.id);
        }
    }
    if runs != restored.term_runs {
        return Err(format!(
            "group {group}: term runs {:?}, expected {runs:?}",
            restored.term_runs
        ));
    }
    Ok(())
}

const MODEL_GROUPS: u32 = 5;

fn run_model(ops: &[(u8, u64)], alignment: usize, disk_seed: u64) -> Result<(), TestCaseError> {
    let disk = SimDisk::new(Prng::new(disk_seed), alignment);
    let config = small_config();
    let (mut log, _) = open(&disk, config).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut model: BTreeMap<u32, ModelGroup> = BTreeMap::new();
    for &(kind, seed) in ops {
        let mut prng = Prng::new(seed);
        match kind % 10 {
            0..=4 => {
                let (persists, after) = random_append(&model, &mut prng);
                let batch: Vec<(GroupId, &Persist)> =
                    persists.iter().map(|(g, p)| (GroupId(*g), p)).collect();
                block_on(log.append(&batch)).map_err(|e| TestCaseError::fail(e.to_string()))?;
                model = after;
            }
            5 | 6 => {
                let (persists, after) = random_append(&model, &mut prng);
                let batch: Vec<(GroupId, &Persist)> =
                    persists.iter().map(|(g, p)| (GroupId(*g), p)).collect();
                let syncs_to_run = prng.below(3) as usize;
                let sync_count = block_on(log.append_interrupted(&batch, syncs_to_run))
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                drop(log);
                disk.crash();
                log = reopen(&disk, config, &model)?;
                for (group, _) in &persists {
                    let before = model.get(group).cloned().unwrap_or_default();
                    let after_group = after.get(group).cloned().unwrap_or_default();
                    let all_synced = syncs_to_run >= sync_count;
                    match (compare_group(&log, *group, &after_group), all_synced) {
                        (Ok(()), _) => {
                            model.insert(*group, after_group);
                        }
                        (Err(error), true) => {
                            return Err(TestCaseError::fail(format!(
                                "synced append lost: {error}"
                            )));
                        }
                        (Err(after_error), false) => {
                            compare_group(&log, *group, &before).map_err(|before_error| {
                                TestCaseError::fail(format!(
                                    "group {group} is neither before ({before_error}) nor after ({after_error})"
                                ))
                            })?;
                        }
                    }
                }
            }
            7 => {
                drop(log);
                disk.crash();
                log = reopen(&disk, config, &model)?;
            }
            8 => {
                for (group, state) in model.iter_mut() {
                    if state.last_index > 0 && prng.chance(1, 2) {
                        let upto = prng.range_inclusive(state.compacted, state.last_index);
                        let upto = upto.max(state.compacted);
                        state.compacted = upto;
                        log.compact(GroupId(*group), LogIndex(upto));
                    }
                }
                block_on(log.purge()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            _ => {}
        }
        for (group, state) in &model {
            compare_group(&log, *group, state).map_err(TestCaseError::fail)?;
        }
    }
    Ok(())
}

/// Reopens the WAL after a crash and applies the model's compaction points again, as the
/// shard would from its snapshots.
fn reopen(
    disk: &SimDisk,
    config: WalConfig,
    model: &BTreeMap<u32, ModelGroup>,
) -> Result<Log<SimDisk>, TestCaseError> {
    let (mut log, _) =
        open(disk, config).map_err(|e| TestCaseError::fail(format!("reopen: {e}")))?;
    for (group, state) in model {
        log.compact(GroupId(*group), LogIndex(state.compacted));
    }
    Ok(log)
}

fn random_append(
    model: &BTreeMap<u32, ModelGroup>,
    prng: &mut Prng,
) -> (Vec<(u32, Persist)>, BTreeMap<u32, ModelGroup>) {
    let mut after = model.clone();
    let mut persists = Vec::new();
    let group_count = prng.range_inclusive(1, 4);
    let mut groups: Vec<u32> = (0..MODEL_GROUPS).collect();
    for _ in 0..group_count {
        let position = prng.below(groups.len() as u64) as usize;
        let group = groups.swap_remove(position);
        let state = after.entry(group).or_default();
        let persist = state.random_persist(prng);
        state.apply(&persist);
        persists.push((group, persist));
    }
    (persists, after)
}

proptest! {
    #![proptest_config(proptest_config("wal_matches_model_across_crashes", 64))]

    #[test]
    fn wal_matches_model_across_crashes(
        ops in proptest::collection::vec((any::<u8>(), any::<u64>()), 1..60),
        large_alignment in any::<bool>(),
        disk_seed in any::<u64>(),
    ) {
        // Random appends of several groups (with truncations and snapshots), appends cut short
        // by a crash that tears unsynced blocks, restarts, compaction and purge: after every
        // step the WAL returns exactly the model's logs, and an interrupted append is either
        // wholly there or wholly absent for each group.
        let alignment = if large_alignment { 4096 } else { 512 };
        run_model(&ops, alignment, disk_seed)?;
    }
}

/// Segment images of a small valid WAL: three groups over several segments, with a torn-free
/// tail. Built once per call from a fixed seed, so the fuzz cases mutate the same start.
fn valid_image(alignment: usize) -> Vec<(SegmentSeq, Vec<u8>)> {
    let disk = SimDisk::new(Prng::new(11), alignment);
    let (mut log, _) = open(&disk, small_config()).expect("fresh open");
    let mut model: BTreeMap<u32, ModelGroup> = BTreeMap::new();
    let mut prng = Prng::new(12);
    for _ in 0..12 {
        let (persists, after) = random_append(&model, &mut prng);
        let batch: Vec<(GroupId, &Persist)> =
            persists.iter().map(|(g, p)| (GroupId(*g), p)).collect();
        block_on(log.append(&batch)).expect("append");
        model = after;
    }
    log.wal()
        .segments()
        .into_iter()
        .map(|seq| (seq, disk.contents(seq).expect("segment exists")))
        .collect()
}

/// Runs recovery over segment images: it may refuse, but never panics, and if it accepts,
/// every entry it indexed can be fetched back.
fn recover_image(image: &[(SegmentSeq, Vec<u8>)], alignment: usize) -> Result<(), TestCaseError> {
    let disk = SimDisk::new(Prng::new(13), alignment);
    for (seq, bytes) in image {
        disk.set_contents(*seq, bytes.clone());
    }
    let Ok((log, _)) = open(&disk, small_config()) else {
        return Ok(());
    };
    for group in log.group_ids() {
        let Some(restored) = log.restored(group) else {
            continue;
        };
        let Some(first) = restored.first_index else {
            continue;
        };
        let fetched = block_on(log.fetch(group, first, restored.last_index, u64::MAX))
            .map_err(|e| TestCaseError::fail(format!("accepted WAL fails to fetch: {e}")))?;
        prop_assert_eq!(
            fetched.len() as u64,
            restored.last_index.distance_from(first) + 1
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(proptest_config("recovery_survives_mutated_segments", 256))]

    #[test]
    fn recovery_survives_mutated_segments(
        mutations in proptest::collection::vec((any::<usize>(), any::<usize>(), any::<u8>(), 0usize..64), 1..8),
        large_alignment in any::<bool>(),
    ) {
        // Bytes flipped or zeroed anywhere in a valid WAL (headers, batch headers, records,
        // the tail): recovery refuses or accepts, never panics, and what it accepts reads back.
        let alignment = if large_alignment { 4096 } else { 512 };
        let mut image = valid_image(alignment);
        for (segment, offset, xor, zero_len) in mutations {
            let position = segment % image.len();
            let bytes = &mut image[position].1;
            let at = offset % bytes.len();
            if zero_len > 0 {
                let end = (at + zero_len).min(bytes.len());
                bytes[at..end].fill(0);
            } else {
                bytes[at] ^= xor.max(1);
            }
        }
        recover_image(&image, alignment)?;
    }

    #[test]
    fn recovery_survives_random_segments(
        patches in proptest::collection::vec((any::<u8>(), any::<u16>(), proptest::collection::vec(any::<u8>(), 1..64)), 0..16),
        segment_count in 1usize..4,
    ) {
        // Segments of zeros patched with random bytes, random headers included: no panic.
        let segment_bytes = small_config().segment_bytes as usize;
        let mut image: Vec<(SegmentSeq, Vec<u8>)> = (1..=segment_count as u64)
            .map(|seq| (SegmentSeq(seq), vec![0u8; segment_bytes]))
            .collect();
        for (segment, offset, bytes) in patches {
            let position = segment as usize % image.len();
            let at = offset as usize % segment_bytes;
            let end = (at + bytes.len()).min(segment_bytes);
            image[position].1[at..end].copy_from_slice(&bytes[..end - at]);
        }
        recover_image(&image, 512)?;
    }
}
