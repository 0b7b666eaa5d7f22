//! Real processes doing WAL I/O at the same time: three processes, each with two glommio
//! executors, each executor with its own WAL directory, all start, write, sync, read back and
//! succeed. This shows executor start-up (rings, locked memory, placement) and the first-open
//! probe hold up when several processes do direct I/O together.
//!
//! The binary has `harness = false`: when `RINGRAFT_WAL_CHILD_ROLE` is set it runs as a child.

mod wal_support;

use std::path::Path;
use std::time::{Duration, Instant};

use ringraft::log::disk::{Disk, SegmentSeq};
use ringraft::reactor::disk::DmaDisk;
use ringraft::reactor::executor::{ExecutorConfig, spawn_executor};

use wal_support::{
    CHILD_ROLE_ENV, TestCase, child_path_arg, collect_lines, line_channel, run_tests, spawn_child,
    temp_dir, wait_with_deadline,
};

const ROLE_TWO_EXECUTORS: &str = "two-executors";
const PROCESS_COUNT: usize = 3;
const EXECUTORS_PER_PROCESS: usize = 2;
const BLOCKS_PER_EXECUTOR: u64 = 64;
const SEGMENT_BYTES: u64 = 1024 * 1024;

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

/// The byte at `position` of block `block` written by executor `executor`.
fn pattern_byte(executor: usize, block: u64, position: usize) -> u8 {
    (executor as u64 * 131 + block * 7 + position as u64 % 253) as u8
}

/// One executor's work: open its own WAL directory, create a segment, write and sync blocks,
/// read every block back and compare.
async fn executor_work(dir: &Path, executor: usize) -> Result<u64, String> {
    let disk = DmaDisk::open(dir)
        .await
        .map_err(|error| error.to_string())?;
    let seq = SegmentSeq::FIRST;
    disk.create_segment(seq, SEGMENT_BYTES)
        .await
        .map_err(|error| error.to_string())?;
    let block_len = disk.alignment();
    for block in 0..BLOCKS_PER_EXECUTOR {
        let mut buffer = disk.alloc(block_len);
        for (position, byte) in buffer.as_mut().iter_mut().enumerate() {
            *byte = pattern_byte(executor, block, position);
        }
        disk.write(seq, block * block_len as u64, buffer)
            .await
            .map_err(|error| error.to_string())?;
        disk.sync(seq).await.map_err(|error| error.to_string())?;
    }
    for block in 0..BLOCKS_PER_EXECUTOR {
        let bytes = disk
            .read(seq, block * block_len as u64, block_len)
            .await
            .map_err(|error| error.to_string())?;
        for (position, &byte) in bytes.as_ref().iter().enumerate() {
            let expected = pattern_byte(executor, block, position);
            if byte != expected {
                return Err(format!(
                    "block {block} byte {position}: read {byte}, wrote {expected}"
                ));
            }
        }
    }
    Ok(disk.stats().sync_count)
}

/// Child: two executors, each on its own WAL directory under the given one; prints one
/// `ok <executor> <syncs>` line per executor, or exits non-zero.
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
            Ok(Ok(syncs)) => println!("ok {executor} {syncs}"),
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
// all report every block written, synced and read back intact.
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
            .map(|executor| format!("ok {executor} {BLOCKS_PER_EXECUTOR}"))
            .collect();
        assert_eq!(
            reported, expected,
            "process {process} reported {reported:?}"
        );
    }
}
