//! Seed sweeps of the simulator, its replay, and the canaries that prove its checkers can
//! fail. `RINGRAFT_SEED=N cargo test --release sim` replays seed N (3 and 5 nodes).

use super::*;
use crate::raft::Canary;

/// Seeds per node count in the CI sweep (3 and 5 nodes: 2,000 runs in all).
const SWEEP_SEEDS_PER_SIZE: u64 = 1000;
/// Seeds of the snapshot-heavy sweep (compaction every few entries, term churn).
const SNAPSHOT_SWEEP_SEEDS: u64 = 400;
/// Seeds a canary gets to show its violation.
const CANARY_SEEDS_MAX: u64 = 2000;

fn seed_from_env() -> Option<u64> {
    std::env::var("RINGRAFT_SEED").ok()?.trim().parse().ok()
}

fn jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(2))
}

fn sweep(
    template: SimConfig,
    first_seed: u64,
    seed_count: u64,
    failures_max: usize,
) -> SweepSummary {
    let sweep = Sweep {
        first_seed,
        seed_count,
        jobs: jobs(),
        failures_max,
    };
    run_seeds(template, sweep, &|_| {})
}

#[test]
fn sim_replays_a_seed_exactly() {
    // Two runs of one seed produce the same report, so a printed seed is a full replay.
    let seed = seed_from_env().unwrap_or(7);
    println!("seed {seed}");
    for node_count in [3, 5] {
        let config = SimConfig::new(seed, node_count, 2);
        let first = run_seed(config);
        let second = run_seed(config);
        assert_eq!(format!("{first:?}"), format!("{second:?}"), "seed {seed}");
        match first {
            Ok(report) => println!("{report}"),
            Err(error) => panic!("{error}"),
        }
    }
}

#[test]
fn sim_sweep_three_and_five_nodes() {
    // Thousands of seeds of faults (loss, duplication, reordering, partitions, crashes)
    // keep every safety checker quiet and every healed cluster live.
    let (first_seed, seed_count) = match seed_from_env() {
        Some(seed) => (seed, 1),
        None => (0, SWEEP_SEEDS_PER_SIZE),
    };
    println!("seed {first_seed} (sweeping {seed_count} seeds per cluster size)");
    let mut seeds_run = 0;
    for (node_count, group_count) in [(3, 2), (5, 2)] {
        let template = SimConfig::new(first_seed, node_count, group_count);
        let summary = sweep(template, first_seed, seed_count, 5);
        for failure in &summary.failures {
            println!("FAILED: {failure}");
        }
        assert!(
            summary.failures.is_empty(),
            "{node_count} nodes: {} of {} seeds failed; first: {}",
            summary.failures.len(),
            summary.seeds_run,
            summary.failures[0]
        );
        assert!(
            summary.committed_entries > summary.seeds_run,
            "{node_count} nodes: only {} entries committed in {} seeds: the sweep exercised nothing",
            summary.committed_entries,
            summary.seeds_run
        );
        assert!(
            seed_count < 100 || summary.snapshots_installed > 0,
            "{node_count} nodes: no snapshot was installed in {} seeds",
            summary.seeds_run
        );
        println!(
            "{node_count} nodes x {group_count} groups: {} seeds passed, {} entries committed, \
             {} elections, {} crashes, {} snapshots installed",
            summary.seeds_run,
            summary.committed_entries,
            summary.elections,
            summary.crashes,
            summary.snapshots_installed
        );
        seeds_run += summary.seeds_run;
    }
    println!("{seeds_run} seeds run");
}

#[test]
fn sim_sweep_with_snapshots_every_few_entries() {
    // Thesis §5 under faults: logs compacted every three applied entries, so lagging and
    // restarted followers keep needing snapshots streamed in lost, reordered chunks, with
    // crashes while they are staged and installed and compaction racing WAL reads; every
    // checker stays quiet (nothing acknowledged is lost, state machines agree) and the
    // healed cluster is live.
    let (first_seed, seed_count) = match seed_from_env() {
        Some(seed) => (seed, 1),
        None => (0, SNAPSHOT_SWEEP_SEEDS),
    };
    println!("seed {first_seed} (sweeping {seed_count} seeds, snapshot every 3 entries)");
    for (node_count, churn) in [(3, true), (5, false)] {
        let mut template = SimConfig::new(first_seed, node_count, 2);
        template.snapshot_every = Some(3);
        template.churn = churn;
        let summary = sweep(template, first_seed, seed_count, 5);
        for failure in &summary.failures {
            println!("FAILED: {failure}");
        }
        assert!(
            summary.failures.is_empty(),
            "{node_count} nodes: {} of {} seeds failed; first: {}",
            summary.failures.len(),
            summary.seeds_run,
            summary.failures[0]
        );
        assert!(
            seed_count < 10 || summary.snapshots_installed > seed_count,
            "{node_count} nodes: only {} snapshots installed in {} seeds",
            summary.snapshots_installed,
            summary.seeds_run
        );
        println!(
            "{node_count} nodes (churn {churn}): {} seeds passed, {} snapshots installed, {} \
             entries committed",
            summary.seeds_run, summary.snapshots_installed, summary.committed_entries
        );
    }
}

fn canary_finds_violation(canary: Canary, release_checks: bool) {
    let first_seed = seed_from_env().unwrap_or(0);
    println!(
        "seed {first_seed} (canary {canary:?}, release checks {release_checks}, up to \
         {CANARY_SEEDS_MAX} seeds)"
    );
    // Term churn (frequent leader crashes and isolations, small appends, slow syncs) is where
    // Figure 8 and lost votes show; four groups give each seed four chances.
    let mut template = SimConfig::new(first_seed, 3, 4);
    template.canary = Some(canary);
    if canary == Canary::SnapshotAckedBeforePersist {
        // Snapshots must be frequent for the broken rule to matter.
        template.snapshot_every = Some(3);
    }
    template.release_checks = release_checks;
    template.churn = true;
    // A canary may also stall a healed cluster; only a safety violation counts as caught.
    let mut liveness_failures = 0;
    let mut found = None;
    for seed in first_seed..first_seed + CANARY_SEEDS_MAX {
        match run_seed(SimConfig { seed, ..template }) {
            Ok(_) => {}
            Err(SimError::Liveness { .. }) => liveness_failures += 1,
            Err(failure) => {
                found = Some(failure);
                break;
            }
        }
    }
    let Some(first) = found else {
        panic!(
            "canary {canary:?}: no safety violation found in {CANARY_SEEDS_MAX} seeds \
             ({liveness_failures} liveness failures)"
        );
    };
    println!(
        "canary {canary:?}: first failing seed {} after {} seeds ({liveness_failures} liveness \
         failures before it): {first}",
        first.seed(),
        first.seed() - first_seed + 1
    );
    assert!(
        matches!(first, SimError::Violation { .. }),
        "canary {canary:?}: the checkers must find the violation, not a panic: {first}"
    );
}

#[test]
fn sim_canary_commit_old_term_entries_is_caught() {
    // A core that commits entries of older terms by counting replicas (paper Figure 8) is
    // caught by the checkers within a bounded number of seeds.
    canary_finds_violation(Canary::CommitOldTermEntries, true);
}

#[test]
fn sim_canary_vote_not_persisted_is_caught() {
    // A core that grants votes without persisting them (§5.2, Figure 2) is caught as the
    // grant leaves before the vote is durable.
    canary_finds_violation(Canary::VoteNotPersisted, true);
}

#[test]
fn sim_canary_snapshot_acked_before_persist_is_caught() {
    // A follower that acknowledges an installed snapshot before it is durable (thesis §5)
    // is caught as the acknowledgement leaves ahead of the durable log.
    canary_finds_violation(Canary::SnapshotAckedBeforePersist, true);
}

#[test]
fn sim_canary_snapshot_acked_before_persist_is_caught_through_crashes() {
    // Without the check on messages as they leave, the same bug is caught end to end: a
    // follower crashes with its acknowledged snapshot undurable, and a committed entry ends
    // up on fewer than a quorum of durable logs, or a new leader lacks it.
    canary_finds_violation(Canary::SnapshotAckedBeforePersist, false);
}

#[test]
fn sim_canary_vote_not_persisted_is_caught_through_crashes() {
    // Without the check on messages as they leave, the same bug is still caught end to end:
    // a node that crashes after an unpersisted grant votes again in the same term, for
    // another candidate (one vote per term, §5.2), or two leaders share a term.
    canary_finds_violation(Canary::VoteNotPersisted, false);
}
