//! Real processes doing WAL I/O at the same time: three processes, each with two glommio
//! executors, each executor with its own WAL directory, all start, append with sync through
//! the WAL, fetch back and succeed. This shows executor start-up (rings, locked memory, placement) and the first-open
//! probe hold up when several processes do direct I/O together.
//!
//! The binary has `harness = false`: when `RINGRAFT_WAL_CHILD_ROLE` is set it runs as a child.

mod wal_support;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::ids::{EntryId, GroupId, LogIndex, Term};
use ringraft::log::{Log, WalConfig};
use ringraft::raft::types::{Entry, EntryKind, Persist, PersistPosition};
use ringraft::reactor::disk::DmaDisk;
use ringraft::reactor::executor::{ExecutorConfig, spawn_executor};

use wal_support::{
    CHILD_ROLE_ENV, TestCase, child_path_arg, collect_lines, line_channel, run_tests, spawn_child,
    temp_dir, wait_with_deadline,
};

const ROLE_TWO_EXECUTORS: &str = "two-executors";
const PROCESS_COUNT: usize = 3;
const EXECUTORS_PER_PROCESS: usize = 2;
const BATCHES_PER_EXECUTOR: u64 = 100;
const ENTRIES_PER_BATCH: u64 = 8;
const SEGMENT_BYTES: u64 = 128 * 1024;
const GROUP: GroupId = GroupId(1);

fn main() {
    match std::env::var(CHILD_ROLE_ENV) {
        Ok(role) if role == ROLE_TWO_EXECUTORS => child_two_executors(),
        Ok(role) => panic!("unknown child role {role:?}"),
        Err(_) => {
            let tests: &[TestCase] = &[(
                "three_processes_with_two_executors_each_do_wal_io",
                three_processes_with_two_executors_each_do_wal_io,
            )];
            run_tests(tests);
        }
    }
}

/// The entry at `index` written by `executor`: payload bytes depend on both.
fn entry_of(executor: usize, index: LogIndex) -> Entry {
    let len = 1 + (index.get() as usize * 37 + executor * 11) % 300;
    let data: Vec<u8> = (0..len)
        .map(|position| (executor as u64 * 131 + index.get() * 7 + position as u64) as u8)
        .collect();
    Entry {
        id: EntryId {
            term: Term(1),
            index,
        },
        kind: EntryKind::Command,
        data: Bytes::from(data),
    }
}

/// One executor's work: open its own WAL directory, append batches with sync (rolling over
/// small segments), then fetch every entry back with DMA reads and compare.
async fn executor_work(dir: &Path, executor: usize) -> Result<u64, String> {
    let disk = DmaDisk::open(dir)
        .await
        .map_err(|error| error.to_string())?;
    let config = WalConfig {
        segment_bytes: SEGMENT_BYTES,
        spare_segments: 1,
    };
    let (mut log, _) = Log::open(disk, config)
        .await
        .map_err(|error| error.to_string())?;
    let mut last_index = LogIndex::ZERO;
    for batch in 1..=BATCHES_PER_EXECUTOR {
        let persist = Persist {
            position: PersistPosition(batch),
            entries: (1..=ENTRIES_PER_BATCH)
                .map(|offset| entry_of(executor, last_index.plus(offset)))
                .collect(),
            hard_state: None,
            snapshot: None,
        };
        log.append(&[(GROUP, &persist)])
            .await
            .map_err(|error| error.to_string())?;
        log.prepare_spares()
            .await
            .map_err(|error| error.to_string())?;
        last_index = last_index.plus(ENTRIES_PER_BATCH);
    }
    let mut next = LogIndex(1);
    while next <= last_index {
        let fetched = log
            .fetch(GROUP, next, last_index, 64 * 1024)
            .await
            .map_err(|error| error.to_string())?;
        if fetched.is_empty() {
            return Err(format!("fetch from {next} returned nothing"));
        }
        for entry in &fetched {
            if entry != &entry_of(executor, entry.index()) {
                return Err(format!("entry {} read back differs", entry.index()));
            }
        }
        next = fetched.last().map_or(next, Entry::index).next();
    }
    Ok(last_index.get())
}

/// Child: two executors, each on its own WAL directory under the given one; prints one
/// `ok <executor> <entries>` line per executor, or exits non-zero.
fn child_two_executors() {
    let base = child_path_arg(1);
    let handles: Vec<_> = (0..EXECUTORS_PER_PROCESS)
        .map(|executor| {
            let dir = base.join(format!("core-{executor}"));
            let config = ExecutorConfig::new(&format!("wal-child-{executor}"));
            spawn_executor(&config, move || async move {
                executor_work(&dir, executor).await
            })
            .unwrap_or_else(|error| panic!("executor {executor} did not start: {error}"))
        })
        .collect();
    for (executor, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(entries)) => println!("ok {executor} {entries}"),
            Ok(Err(message)) => {
                eprintln!("executor {executor}: {message}");
                std::process::exit(2);
            }
            Err(error) => {
                eprintln!("executor {executor}: {error}");
                std::process::exit(3);
            }
        }
    }
}

// Three processes, each with two executors on their own WAL directories, start at once and
// all report every entry appended with sync and fetched back intact.
fn three_processes_with_two_executors_each_do_wal_io() {
    let dir = temp_dir("ringraft-wal-processes-");
    let mut children: Vec<_> = (0..PROCESS_COUNT)
        .map(|process| {
            let process_dir = dir.path().join(format!("process-{process}"));
            spawn_child(ROLE_TWO_EXECUTORS, &[process_dir.display().to_string()])
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (process, child) in children.iter_mut().enumerate() {
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = line_channel(stdout);
        let status = wait_with_deadline(child, deadline, "two-executor child");
        assert!(status.success(), "process {process} failed: {status}");
        let reported = collect_lines(&lines, deadline);
        let expected: Vec<String> = (0..EXECUTORS_PER_PROCESS)
            .map(|executor| format!("ok {executor} {}", BATCHES_PER_EXECUTOR * ENTRIES_PER_BATCH))
            .collect();
        assert_eq!(
            reported, expected,
            "process {process} reported {reported:?}"
        );
    }
}
