//! Crash consistency of the WAL with real processes and SIGKILL: a child process appends
//! batches with sync to a WAL on `DmaDisk` and reports each completed sync on stdout; the
//! parent kills it at seeded random moments, reopens the WAL and checks that every entry whose
//! sync completed is there byte for byte, and that everything returned is exactly what was
//! appended (nothing past the first torn record comes back). Several rounds run on the same
//! directory, with small segments so that roll-over, purge and recycling happen under the
//! kills. A second test reads fetched entries back through DMA reads after the first-open
//! probe.
//!
//! The binary has `harness = false`: when `RINGRAFT_WAL_CHILD_ROLE` is set it runs as a child.

mod wal_support;

use std::path::Path;
use std::process::Child;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::ids::{EntryId, GroupId, LogIndex, Term};
use ringraft::log::{Disk, Log, SegmentSeq, WalConfig};
use ringraft::prng::Prng;
use ringraft::raft::types::{Entry, EntryKind, HardState, Persist, PersistPosition};
use ringraft::reactor::disk::DmaDisk;
use ringraft::reactor::executor::{ExecutorConfig, run_executor, spawn_executor};

use wal_support::{
    CHILD_ROLE_ENV, TestCase, child_path_arg, child_u64_arg, line_channel, run_tests, seed,
    spawn_child, temp_dir, wait_with_deadline,
};

const ROLE_WRITER: &str = "crash-writer";
const GROUP: GroupId = GroupId(3);
/// Small segments, so that a few dozen batches roll over, purge and recycle.
const SEGMENT_BYTES: u64 = 64 * 1024;
const SPARE_SEGMENTS: usize = 2;
/// Entries per batch: 1 to this many.
const BATCH_ENTRIES_MAX: u64 = 12;
/// Payload bytes per entry: 1 to this many.
const ENTRY_BYTES_MAX: u64 = 700;
/// Entries kept behind the last one when the writer compacts before a purge.
const KEEP_ENTRIES: u64 = 150;
/// A writer left alone stops after this many batches.
const WRITER_BATCHES_MAX: u64 = 100_000;
const ROUNDS: usize = 24;
/// The kill comes after 1 to this many reported syncs (plus a random delay).
const KILL_AFTER_SYNCS_MAX: u64 = 60;
const FETCH_BYTES_MAX: u64 = 256 * 1024;
/// Bytes after the last reported durable end in which a tear may flip bits.
const TEAR_SPAN_BYTES: u64 = 8 * 1024;

fn main() {
    match std::env::var(CHILD_ROLE_ENV) {
        Ok(role) if role == ROLE_WRITER => child_writer(),
        Ok(role) => panic!("unknown child role {role:?}"),
        Err(_) => {
            let tests: &[TestCase] = &[
                (
                    "synced_batches_survive_sigkill_and_nothing_torn_returns",
                    synced_batches_survive_sigkill_and_nothing_torn_returns,
                ),
                (
                    "fetched_entries_round_trip_through_dma_reads",
                    fetched_entries_round_trip_through_dma_reads,
                ),
            ];
            run_tests(tests);
        }
    }
}

fn wal_config() -> WalConfig {
    WalConfig {
        segment_bytes: SEGMENT_BYTES,
        spare_segments: SPARE_SEGMENTS,
    }
}

/// The entry at `index` of a run with `data_seed`: its payload length and bytes depend on
/// both, so the parent can rebuild every entry the child may have written.
fn expected_entry(data_seed: u64, index: LogIndex) -> Entry {
    let mut prng = Prng::new(data_seed ^ index.get().wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let len = prng.range_inclusive(1, ENTRY_BYTES_MAX) as usize;
    let mut data = vec![0u8; len];
    prng.fill_bytes(&mut data);
    Entry {
        id: EntryId {
            term: Term(1),
            index,
        },
        kind: EntryKind::Command,
        data: Bytes::from(data),
    }
}

/// The batch that starts right after `last_index`: 1 to `BATCH_ENTRIES_MAX` entries, with a
/// hard state whose commit is the previous batch's end.
fn batch_after(data_seed: u64, last_index: LogIndex, position: u64) -> Persist {
    let mut prng = Prng::new(data_seed.rotate_left(17) ^ last_index.get());
    let count = prng.range_inclusive(1, BATCH_ENTRIES_MAX);
    Persist {
        position: PersistPosition(position),
        entries: (1..=count)
            .map(|offset| expected_entry(data_seed, last_index.plus(offset)))
            .collect(),
        hard_state: Some(HardState {
            term: Term(1),
            vote: None,
            commit: last_index,
            vote_floor: LogIndex::ZERO,
        }),
        snapshot: None,
    }
}

/// Child: open (or recover) the WAL, report `ready <last index>`, then append batches with
/// sync, reporting `synced <last index>` after each, until killed.
fn child_writer() {
    let dir = child_path_arg(1);
    let data_seed = child_u64_arg(2);
    let outcome = run_executor(&ExecutorConfig::new("crash-writer"), async move {
        println!("opening");
        let disk = DmaDisk::open(&dir)
            .await
            .map_err(|error| error.to_string())?;
        let (mut log, _) = Log::open(disk, wal_config())
            .await
            .map_err(|error| error.to_string())?;
        let mut last_index = log
            .restored(GROUP)
            .map_or(LogIndex::ZERO, |restored| restored.last_index);
        println!("ready {last_index}");
        let mut active = log.wal().active_segment();
        for position in 1..=WRITER_BATCHES_MAX {
            let persist = batch_after(data_seed, last_index, position);
            let durable = log
                .append(&[(GROUP, &persist)])
                .await
                .map_err(|error| error.to_string())?;
            last_index = persist.entries.last().map_or(last_index, Entry::index);
            let commit = persist
                .hard_state
                .map_or(LogIndex::ZERO, |hard_state| hard_state.commit);
            println!(
                "synced {last_index} {} {} {commit}",
                durable.segment.get(),
                durable.offset
            );
            if log.wal().active_segment() != active {
                active = log.wal().active_segment();
                let keep_from = last_index.get().saturating_sub(KEEP_ENTRIES);
                log.compact(GROUP, LogIndex(keep_from));
                log.purge().await.map_err(|error| error.to_string())?;
                log.prepare_spares()
                    .await
                    .map_err(|error| error.to_string())?;
                // Purge may append (hard states it rewrites); report where the log ends now.
                let end = log.wal().position();
                println!("at {} {}", end.segment.get(), end.offset);
            }
        }
        Ok::<(), String>(())
    });
    match outcome {
        Ok(Ok(())) => println!("done"),
        Ok(Err(message)) => {
            eprintln!("crash-writer: {message}");
            std::process::exit(2);
        }
        Err(error) => {
            eprintln!("crash-writer: {error}");
            std::process::exit(3);
        }
    }
}

/// What the parent found after reopening the WAL.
struct Reopened {
    first_index: Option<LogIndex>,
    last_index: LogIndex,
    commit: LogIndex,
    entries: Vec<Entry>,
}

/// Reopens the WAL in `dir` (recovery included) and fetches every entry it still holds, on
/// an executor on a new thread: glommio's per-thread device cache starts empty there, so the
/// first-open probe really runs before these DMA reads.
fn reopen_and_fetch(dir: &Path) -> Reopened {
    let dir = dir.to_path_buf();
    spawn_executor(&ExecutorConfig::new("crash-checker"), move || async move {
        let disk = DmaDisk::open(&dir).await.expect("open WAL directory");
        let (log, summary) = Log::open(disk, wal_config())
            .await
            .unwrap_or_else(|error| panic!("reopening the WAL after a kill failed: {error}"));
        let Some(restored) = log.restored(GROUP) else {
            return Reopened {
                first_index: None,
                last_index: LogIndex::ZERO,
                commit: LogIndex::ZERO,
                entries: Vec::new(),
            };
        };
        let mut entries = Vec::new();
        if let Some(first_index) = restored.first_index {
            let mut next = first_index;
            while next <= restored.last_index {
                let fetched = log
                    .fetch(GROUP, next, restored.last_index, FETCH_BYTES_MAX)
                    .await
                    .unwrap_or_else(|error| panic!("fetch from {next}: {error}"));
                assert!(!fetched.is_empty(), "fetch from {next} returned nothing");
                next = fetched.last().map_or(next, Entry::index).next();
                entries.extend(fetched);
            }
        }
        println!(
            "  reopened: entries {:?}..={}, torn tail {:?}",
            restored.first_index, restored.last_index, summary.torn_tail
        );
        Reopened {
            first_index: restored.first_index,
            last_index: restored.last_index,
            commit: restored
                .hard_state
                .map_or(LogIndex::ZERO, |state| state.commit),
            entries,
        }
    })
    .expect("checker executor starts")
    .join()
    .unwrap_or_else(|error| panic!("checker: {error}"))
}

/// Checks a reopened WAL against what the writer reported: every synced entry is there,
/// every entry returned is exactly the one appended at its index, and nothing else.
fn check_reopened(reopened: &Reopened, data_seed: u64, synced: LogIndex, round: usize) {
    assert!(
        reopened.last_index >= synced,
        "round {round}: last index {} after reopening, but {synced} was reported synced",
        reopened.last_index
    );
    assert!(
        reopened.commit <= reopened.last_index,
        "round {round}: commit {} past last index {}",
        reopened.commit,
        reopened.last_index
    );
    let Some(first_index) = reopened.first_index else {
        assert_eq!(synced, LogIndex::ZERO, "round {round}: entries lost");
        return;
    };
    assert!(
        first_index <= synced.next() || synced == LogIndex::ZERO,
        "round {round}: first index {first_index} leaves a gap before synced {synced}"
    );
    let expected_count = reopened.last_index.get() + 1 - first_index.get();
    assert_eq!(
        reopened.entries.len() as u64,
        expected_count,
        "round {round}: fetched {} entries for {first_index}..={}",
        reopened.entries.len(),
        reopened.last_index
    );
    for (offset, entry) in reopened.entries.iter().enumerate() {
        let index = first_index.plus(offset as u64);
        let expected = expected_entry(data_seed, index);
        assert_eq!(
            entry, &expected,
            "round {round}: entry {index} differs from the one appended"
        );
    }
}

/// What the writer reported: the last synced index and commit, where the log durably ended
/// at its last report, and the index it recovered to when it opened.
#[derive(Clone, Copy, Debug)]
struct Reports {
    synced: LogIndex,
    /// The commit index in the hard state of the last batch reported synced.
    synced_commit: LogIndex,
    durable_end: Option<(SegmentSeq, u64)>,
    ready: Option<LogIndex>,
}

impl Reports {
    /// Folds one line of the writer in.
    fn track(&mut self, line: &str) {
        let fields: Vec<&str> = line.split(' ').collect();
        let number = |position: usize| -> u64 {
            fields
                .get(position)
                .and_then(|field| field.parse().ok())
                .unwrap_or_else(|| panic!("writer line {line:?}: field {position} missing"))
        };
        match fields.first().copied() {
            Some("synced") => {
                let index = LogIndex(number(1));
                assert!(
                    index > self.synced,
                    "syncs reported out of order: {index} after {}",
                    self.synced
                );
                self.synced = index;
                self.durable_end = Some((SegmentSeq(number(2)), number(3)));
                self.synced_commit = LogIndex(number(4));
            }
            Some("at") => self.durable_end = Some((SegmentSeq(number(1)), number(2))),
            Some("ready") => self.ready = Some(LogIndex(number(1))),
            Some("opening") => {}
            _ => panic!("unexpected writer line {line:?}"),
        }
    }
}

/// Tears the write that may have been in flight at the kill: flips a few bits after the last
/// durable end the writer reported, in the same segment. Whatever lies there was never
/// reported durable, so a correct WAL may lose it but must cut it cleanly. The bytes are
/// rewritten with direct I/O, like everything else in the file (mixing in buffered writes
/// makes the kernel report stale page cache as EIO).
fn tear_unreported_tail(wal_dir: &Path, end: (SegmentSeq, u64), prng: &mut Prng) -> usize {
    let (segment, offset) = end;
    let flip_count = prng.range_inclusive(1, 4);
    let flips: Vec<(u64, u8)> = (0..flip_count)
        .map(|_| (prng.below(TEAR_SPAN_BYTES), 1u8 << prng.below(8)))
        .collect();
    let dir = wal_dir.to_path_buf();
    run_executor(&ExecutorConfig::new("crash-tearer"), async move {
        let disk = DmaDisk::open(&dir)
            .await
            .expect("open WAL directory to tear");
        let listed = disk.list_segments().await.expect("list segments");
        if !listed.contains(&segment) {
            return 0;
        }
        let alignment = disk.alignment() as u64;
        let start = offset - offset % alignment;
        let end = (offset + TEAR_SPAN_BYTES)
            .next_multiple_of(alignment)
            .min(SEGMENT_BYTES);
        if start >= end {
            return 0;
        }
        let len = (end - start) as usize;
        let old = disk.read(segment, start, len).await.expect("read the tail");
        let mut buffer = disk.alloc(len);
        buffer.as_mut().copy_from_slice(old.as_ref());
        let mut flipped = 0;
        for (distance, bit) in &flips {
            let at = offset + distance;
            if at < end {
                buffer.as_mut()[(at - start) as usize] ^= bit;
                flipped += 1;
            }
        }
        disk.write(segment, start, buffer)
            .await
            .expect("write the torn tail");
        disk.sync(segment).await.expect("sync the torn tail");
        flipped
    })
    .expect("tearing executor starts")
}

/// Kills `child` with SIGKILL and waits for it; returns every line it printed.
fn kill_and_drain(child: &mut Child, lines: &mpsc::Receiver<String>) -> Vec<String> {
    child.kill().expect("SIGKILL the writer");
    let status = wait_with_deadline(
        child,
        Instant::now() + Duration::from_secs(30),
        "killed writer",
    );
    assert!(
        !status.success(),
        "writer exited cleanly instead of being killed: {status}"
    );
    wal_support::collect_lines(lines, Instant::now() + Duration::from_secs(30))
}

/// How one round's writer was stopped, and what it reported before.
struct KilledWriter {
    reports: Reports,
    syncs_seen: u64,
    kill_during_open: bool,
}

/// Starts a writer on `wal_dir` and SIGKILLs it at a seeded moment: one round in six while it
/// opens and recovers (after it says it is opening), the others after a seeded number of
/// syncs; either way after a further seeded pause of up to 2 ms.
fn run_writer_and_kill(
    round: usize,
    wal_dir: &Path,
    data_seed: u64,
    synced_so_far: LogIndex,
    prng: &mut Prng,
) -> KilledWriter {
    let mut child = spawn_child(
        ROLE_WRITER,
        &[wal_dir.display().to_string(), data_seed.to_string()],
    );
    let lines = line_channel(child.stdout.take().expect("piped stdout"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reports = Reports {
        synced: synced_so_far,
        synced_commit: LogIndex::ZERO,
        durable_end: None,
        ready: None,
    };
    let mut seen = Vec::new();
    let kill_during_open = prng.chance(1, 6);
    let kill_after = prng.range_inclusive(1, KILL_AFTER_SYNCS_MAX);
    let mut syncs_seen = 0;
    let mut opening_seen = false;
    while (kill_during_open && !opening_seen) || (!kill_during_open && syncs_seen < kill_after) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|error| panic!("round {round}: writer silent ({error}): {seen:?}"));
        reports.track(&line);
        if line.starts_with("synced ") {
            syncs_seen += 1;
        }
        opening_seen |= line == "opening";
        seen.push(line);
    }
    // The fault: a seeded pause of up to 2 ms lands the kill anywhere in the next write,
    // sync, roll-over, purge or (in open rounds) recovery. Not a wait for state.
    thread::sleep(Duration::from_micros(prng.below(2_000)));
    for line in kill_and_drain(&mut child, &lines) {
        reports.track(&line);
    }
    KilledWriter {
        reports,
        syncs_seen,
        kill_during_open,
    }
}

// Kill a writing child at seeded random moments, 24 rounds on one directory, tearing what may
// have been in flight in half of them; after each kill every entry reported synced is
// recovered byte for byte, no entry that was never appended (a torn or stale record) is
// returned, and after a plain kill the last synced hard state is there too.
fn synced_batches_survive_sigkill_and_nothing_torn_returns() {
    let seed = seed("synced_batches_survive_sigkill_and_nothing_torn_returns");
    let mut prng = Prng::new(seed);
    let data_seed = prng.next_u64();
    let dir = temp_dir("ringraft-wal-crash-");
    let wal_dir = dir.path().join("core-0");
    let mut synced_so_far = LogIndex::ZERO;
    for round in 0..ROUNDS {
        let killed = run_writer_and_kill(round, &wal_dir, data_seed, synced_so_far, &mut prng);
        let reports = killed.reports;
        let synced = reports.synced;
        let torn_bytes = match reports.durable_end {
            Some(end) if prng.chance(1, 2) => tear_unreported_tail(&wal_dir, end, &mut prng),
            _ => 0,
        };
        if let Some(ready) = reports.ready {
            assert!(
                ready >= synced_so_far,
                "round {round}: writer recovered to {ready}, below the synced {synced_so_far}"
            );
        }
        println!(
            "  round {round}: killed after {} syncs (open-kill {}), synced through {synced} \
             (commit {}), {torn_bytes} bytes torn",
            killed.syncs_seen, killed.kill_during_open, reports.synced_commit
        );
        let reopened = reopen_and_fetch(&wal_dir);
        check_reopened(&reopened, data_seed, synced, round);
        // Without a tear this was a plain crash: the hard state synced with the last reported
        // batch is durable too. (A tear may hit a hard-state rewrite of purge that was synced
        // but not yet reported, which no real crash could undo, so it is not checked then.)
        if torn_bytes == 0 {
            assert!(
                reopened.commit >= reports.synced_commit,
                "round {round}: commit {} after reopening, but a hard state with commit {} was \
                 reported synced",
                reopened.commit,
                reports.synced_commit
            );
        }
        synced_so_far = reopened.last_index.max(synced);
    }
    assert!(
        synced_so_far > LogIndex::ZERO,
        "no round wrote anything; the test exercised nothing"
    );
}

// Entries appended on one executor thread, rolling over several segments, are fetched back
// on a new executor thread (DMA reads after that thread's first-open probe) equal to what was
// appended.
fn fetched_entries_round_trip_through_dma_reads() {
    let dir = temp_dir("ringraft-wal-fetch-");
    let wal_dir = dir.path().join("core-0");
    let data_seed = 0x5EED_F00D;
    let written_dir = wal_dir.clone();
    let last_index = spawn_executor(&ExecutorConfig::new("fetch-writer"), move || async move {
        let disk = DmaDisk::open(&written_dir).await.expect("open");
        let (mut log, _) = Log::open(disk, wal_config()).await.expect("create WAL");
        let mut last_index = LogIndex::ZERO;
        for position in 1..=200 {
            let persist = batch_after(data_seed, last_index, position);
            log.append(&[(GROUP, &persist)]).await.expect("append");
            last_index = persist.entries.last().map_or(last_index, Entry::index);
        }
        // Fetch on the same executor too: reads after writes on a probed device.
        let fetched = log
            .fetch(GROUP, LogIndex(1), LogIndex(5), FETCH_BYTES_MAX)
            .await
            .expect("fetch on the writing executor");
        for entry in &fetched {
            assert_eq!(entry, &expected_entry(data_seed, entry.index()));
        }
        assert!(
            log.wal().segments().len() > 3,
            "200 batches should fill several {SEGMENT_BYTES}-byte segments"
        );
        assert!(
            log.disk().stats().read_count > 0,
            "fetch issued no DMA read"
        );
        last_index
    })
    .expect("executor starts")
    .join()
    .unwrap_or_else(|error| panic!("writer: {error}"));
    let reopened = reopen_and_fetch(&wal_dir);
    assert_eq!(reopened.last_index, last_index);
    assert_eq!(reopened.first_index, Some(LogIndex(1)));
    check_reopened(&reopened, data_seed, last_index, 0);
}
