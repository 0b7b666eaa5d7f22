//! Snapshots survive a process killed at any moment: a child process takes snapshot after
//! snapshot of a machine that changes between them (direct I/O, write, sync, rename, sync
//! the directory, prune), printing each one installed; the parent kills it with SIGKILL at a
//! random point, then opens the store as a restart would. The newest snapshot must be at
//! least the last one reported, decode completely, and hold exactly the state that was
//! frozen (recomputed from the seed); no temporary file may survive the open. The child then
//! restarts from that snapshot and the cycle repeats.
//!
//! The binary has `harness = false`: when `RINGRAFT_WAL_CHILD_ROLE` is set it runs as a child.
//! Randomized: prints its seed; replay with `RINGRAFT_SEED=<seed>`.

#[path = "wal_support/mod.rs"]
mod wal_support;

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::constants::SNAPSHOTS_KEPT;
use ringraft::ids::{GroupId, LogIndex, NodeId, Term};
use ringraft::kv::store::{remove_old, write_snapshot};
use ringraft::kv::{Command, KvMachine};
use ringraft::prng::Prng;
use ringraft::raft::types::Membership;
use ringraft::reactor::executor::{ExecutorConfig, run_executor};
use ringraft::reactor::snapstore::{DmaSnapshotStore, restore_newest};

use wal_support::{
    CHILD_ROLE_ENV, TestCase, child_path_arg, child_u64_arg, line_channel, run_tests, seed,
    spawn_child, temp_dir, wait_with_deadline,
};

const ROLE_SNAPSHOTTER: &str = "snapshotter";
const GROUP: GroupId = GroupId(2);
/// Commands applied between two snapshots; each takes one log index.
const COMMANDS_PER_ROUND: u64 = 3000;
const KEY_SPACE: u64 = 30_000;
/// Rounds a child runs if nobody kills it.
const ROUNDS_MAX: u64 = 400;
const KILL_CYCLES: usize = 5;

fn main() {
    match std::env::var(CHILD_ROLE_ENV) {
        Ok(role) if role == ROLE_SNAPSHOTTER => child_snapshotter(),
        Ok(role) => panic!("unknown child role {role:?}"),
        Err(_) => {
            let tests: &[TestCase] = &[(
                "killed_while_snapshotting_the_newest_installed_snapshot_is_intact",
                killed_while_snapshotting_the_newest_installed_snapshot_is_intact,
            )];
            run_tests(tests);
        }
    }
}

/// Applies round `round`'s commands (drawn from the seed and the round alone) to `machine`.
fn apply_round(machine: &mut KvMachine, seed: u64, round: u64) {
    let mut prng = Prng::new(seed ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    for _ in 0..COMMANDS_PER_ROUND {
        let key = Bytes::from(format!("key-{:06}", prng.below(KEY_SPACE)));
        let command = if prng.chance(1, 8) {
            Command::Delete { key }
        } else {
            let mut value = vec![0u8; prng.range_inclusive(64, 192) as usize];
            prng.fill_bytes(&mut value);
            Command::Put {
                key,
                value: Bytes::from(value),
            }
        };
        let index = machine.applied().next();
        machine.apply(index, &command.encode());
    }
}

/// The machine after `rounds` rounds, as the snapshot of that round must hold it.
fn expected_after(seed: u64, rounds: u64) -> KvMachine {
    let mut machine = KvMachine::new();
    for round in 1..=rounds {
        apply_round(&mut machine, seed, round);
    }
    machine
}

fn round_of(index: LogIndex) -> u64 {
    assert!(
        index.get().is_multiple_of(COMMANDS_PER_ROUND),
        "snapshot at index {index} is not at the end of a round"
    );
    index.get() / COMMANDS_PER_ROUND
}

fn membership() -> Membership {
    Membership::new(vec![NodeId(1), NodeId(2), NodeId(3)])
}

/// The child: restores the newest snapshot (if any), then applies a round and snapshots,
/// printing `installed <round>` after each snapshot is durable, until killed.
fn child_snapshotter() {
    let dir = child_path_arg(1);
    let seed = child_u64_arg(2);
    run_executor(&ExecutorConfig::new("snapshot-child"), async move {
        let store = DmaSnapshotStore::open(&dir)
            .await
            .expect("child opens the store");
        let loaded = restore_newest(&store, GROUP).await.expect("child restores");
        let machine = match loaded.restored {
            Some((_, restored)) => restored.machine,
            None => KvMachine::new(),
        };
        let first_round = round_of(machine.applied()) + 1;
        let machine = RefCell::new(machine);
        for round in first_round..=ROUNDS_MAX {
            apply_round(&mut machine.borrow_mut(), seed, round);
            write_snapshot(&store, GROUP, &machine, Term(round), membership())
                .await
                .expect("child writes a snapshot");
            println!("installed {round}");
            remove_old(&store, GROUP, SNAPSHOTS_KEPT)
                .await
                .expect("child prunes");
        }
    })
    .expect("child executor starts");
}

/// Names of temporary (unfinished) snapshot files in `dir`.
fn temp_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read snapshot dir")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".tmp"))
        .collect()
}

/// Opens the store as a restart does and checks the newest snapshot against the seed.
fn check_after_kill(dir: &Path, seed: u64, installed_round: u64) -> u64 {
    let temp_before = temp_files(dir).len();
    println!("  unfinished snapshot files left by the kill: {temp_before}");
    let path = dir.to_path_buf();
    let loaded = run_executor(&ExecutorConfig::new("snapshot-check"), async move {
        let store = DmaSnapshotStore::open(&path)
            .await
            .expect("open after kill");
        restore_newest(&store, GROUP)
            .await
            .expect("restore after kill")
    })
    .expect("executor starts");
    assert!(
        loaded.skipped.is_empty(),
        "a killed process left an installed snapshot that does not decode: {:?}",
        loaded.skipped
    );
    let temp_left = temp_files(dir);
    assert!(
        temp_left.is_empty(),
        "temporary files survived the open: {temp_left:?}"
    );
    let Some((id, restored)) = loaded.restored else {
        assert_eq!(
            installed_round, 0,
            "round {installed_round} installed, none found"
        );
        return 0;
    };
    let round = round_of(id.last.index);
    assert!(
        round >= installed_round,
        "newest snapshot is of round {round}, but round {installed_round} was reported installed"
    );
    assert_eq!(id.last.term, Term(round), "snapshot term");
    assert_eq!(restored.header.meta.membership, membership());
    let expected = expected_after(seed, round);
    assert!(
        restored.machine.applied() == expected.applied()
            && restored
                .machine
                .entries_in_order()
                .eq(expected.entries_in_order()),
        "snapshot of round {round} differs from the state frozen at that round"
    );
    round
}

fn killed_while_snapshotting_the_newest_installed_snapshot_is_intact() {
    // SIGKILL at random points of writing and installing snapshots, five times over, never
    // leaves an installed snapshot torn or older than the last one reported.
    let seed = seed("killed_while_snapshotting_the_newest_installed_snapshot_is_intact");
    let mut prng = Prng::new(seed);
    let root = temp_dir("ringraft-snapshot-crash-");
    let dir: PathBuf = root.path().join("core-0").join("snap");
    let mut installed_round = 0u64;
    for cycle in 0..KILL_CYCLES {
        let mut child = spawn_child(
            ROLE_SNAPSHOTTER,
            &[dir.display().to_string(), seed.to_string()],
        );
        let lines = line_channel(child.stdout.take().expect("child stdout"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let lines_before_kill = prng.range_inclusive(1, 4);
        let mut seen = 0u64;
        while seen < lines_before_kill {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .unwrap_or_else(|error| panic!("cycle {cycle}: child went quiet: {error}"));
            if let Some(round) = line.strip_prefix("installed ") {
                installed_round = round.parse().expect("round number");
                seen += 1;
            }
        }
        // Not a wait for state: a random pause moves the kill to a random point of the
        // next snapshot (encoding, writing, syncing, renaming or pruning).
        std::thread::sleep(Duration::from_micros(prng.below(20_000)));
        child.kill().expect("SIGKILL the child");
        let status = wait_with_deadline(&mut child, deadline, "killed snapshotter");
        assert!(!status.success(), "cycle {cycle}: child was not killed");
        // Rounds reported between the last line read and the kill count as installed too.
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
            if let Some(round) = line.strip_prefix("installed ") {
                installed_round = round.parse().expect("round number");
            }
        }
        let found_round = check_after_kill(&dir, seed, installed_round);
        println!("cycle {cycle}: reported round {installed_round}, restored round {found_round}");
        installed_round = found_round;
    }
}
