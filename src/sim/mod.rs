//! The deterministic cluster simulator (TigerBeetle's VOPR, FoundationDB's simulation): from
//! one seed, N nodes by G Raft groups run the real `RaftNode` over a simulated durable log,
//! network and clock, under faults a correct cluster survives, while checkers judge every
//! step; a liveness phase on the healed cluster follows.
//!
//! `run_seed` replays one seed exactly; `run_seeds` sweeps many, on several threads.
//! From the command line:
//! - replay one seed, with every event printed: `ringraft sim --seed N [--nodes 5] --trace`
//! - a long run: `ringraft sim --seeds 1000000 --first-seed 0 --nodes 3 --jobs 2`, then the
//!   same with `--nodes 5`, and with `--churn` (every seed in the term-churn profile).
//!   A failing seed is printed with the command that replays it.
//! - snapshots: each seed draws how many applied entries a node lets pass before it takes a
//!   snapshot and compacts (or never does); `--snapshot-every N` fixes it (0: never), e.g.
//!   `ringraft sim --seeds 2000 --churn --snapshot-every 3 --jobs 2`.
//!
//! `shards` runs whole nodes (the production `Shard` over the production WAL on simulated
//! disks). This room must not import `reactor/` or glommio, and must not read real time or any RNG
//! but the seeded `Prng`.

mod checker;
mod cluster;
pub mod disk;
mod network;
pub mod shards;
mod storage;
mod transfer;

#[cfg(test)]
mod tests;

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::constants::SIM_SAFETY_TICKS_DEFAULT;
use crate::ids::GroupId;

pub use network::NetworkStats;

/// What one simulated run does.
#[derive(Clone, Copy, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub node_count: usize,
    pub group_count: usize,
    /// Ticks of the fault-injecting safety phase.
    pub safety_ticks: u64,
    /// Print every event to stdout (for replaying one failing seed).
    pub trace: bool,
    /// Draw every seed's faults from the term-churn profile (frequent leader crashes, short
    /// partitions, small appends, slow syncs) instead of the mix.
    pub churn: bool,
    /// Applied entries after which a node takes a snapshot and compacts its log; `Some(0)`
    /// never does, `None` lets each seed draw the threshold (mostly small, so that lagging
    /// followers need snapshots).
    pub snapshot_every: Option<u64>,
    /// A rule the core deliberately breaks, to show the checkers catch it.
    #[cfg(test)]
    pub canary: Option<crate::raft::Canary>,
    /// Check, as each vote grant or append acknowledgement leaves, that what it promises is
    /// durable. Tests turn it off to show the end-to-end checkers catch the same bugs.
    #[cfg(test)]
    pub release_checks: bool,
}

impl SimConfig {
    pub fn new(seed: u64, node_count: usize, group_count: usize) -> SimConfig {
        SimConfig {
            seed,
            node_count,
            group_count,
            safety_ticks: SIM_SAFETY_TICKS_DEFAULT,
            trace: false,
            churn: false,
            snapshot_every: None,
            #[cfg(test)]
            canary: None,
            #[cfg(test)]
            release_checks: true,
        }
    }
}

/// Why a seed failed. Every variant names the seed, so it can be replayed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SimError {
    #[error("seed {seed}: violation at tick {tick} in group {group}: {detail}")]
    Violation {
        seed: u64,
        tick: u64,
        group: GroupId,
        detail: String,
    },
    #[error("seed {seed}: no progress in group {group} after healing: {detail}")]
    Liveness {
        seed: u64,
        group: GroupId,
        detail: String,
    },
    #[error("seed {seed}: panicked: {message}")]
    Panicked { seed: u64, message: String },
}

impl SimError {
    pub fn seed(&self) -> u64 {
        match self {
            SimError::Violation { seed, .. }
            | SimError::Liveness { seed, .. }
            | SimError::Panicked { seed, .. } => *seed,
        }
    }
}

/// What a passing run did, so that a run that exercised nothing shows up as such.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    pub seed: u64,
    pub node_count: usize,
    pub group_count: usize,
    pub ticks: u64,
    pub liveness_ticks: u64,
    pub elections: u64,
    pub leaders: u64,
    pub committed_entries: u64,
    pub applied_entries: u64,
    pub proposals_accepted: u64,
    pub proposals_refused: u64,
    pub reads_requested: u64,
    pub reads_checked: u64,
    pub transfers: u64,
    pub partitions: u64,
    pub crashes: u64,
    pub restarts: u64,
    pub fetches: u64,
    pub snapshots_taken: u64,
    pub snapshot_transfers: u64,
    pub snapshot_transfers_failed: u64,
    pub snapshots_installed: u64,
    pub snapshot_crashes: u64,
    pub network: NetworkStats,
}

impl SimReport {
    fn new(config: &SimConfig) -> SimReport {
        SimReport {
            seed: config.seed,
            node_count: config.node_count,
            group_count: config.group_count,
            ..SimReport::default()
        }
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({} nodes x {} groups): {} ticks + {} to heal; {} leaders, {} committed, \
             {} applied, proposals {} ok / {} refused, reads {} checked of {}, {} transfers, \
             {} partitions, {} crashes, {} restarts, {} fetches; snapshots {} taken, {} \
             sent ({} failed), {} installed, {} crashes around them; messages {} \
             sent, {} lost, {} duplicated, {} cut",
            self.seed,
            self.node_count,
            self.group_count,
            self.ticks,
            self.liveness_ticks,
            self.leaders,
            self.committed_entries,
            self.applied_entries,
            self.proposals_accepted,
            self.proposals_refused,
            self.reads_checked,
            self.reads_requested,
            self.transfers,
            self.partitions,
            self.crashes,
            self.restarts,
            self.fetches,
            self.snapshots_taken,
            self.snapshot_transfers,
            self.snapshot_transfers_failed,
            self.snapshots_installed,
            self.snapshot_crashes,
            self.network.sent,
            self.network.lost,
            self.network.duplicated,
            self.network.cut,
        )
    }
}

/// Run one seed: the same config gives the same run, bit for bit. A panic inside the core
/// or the simulator is caught and reported as a failure of this seed.
pub fn run_seed(config: SimConfig) -> Result<SimReport, SimError> {
    let outcome = catch_unwind(AssertUnwindSafe(|| cluster::Cluster::new(config).run()));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a panic without a message".to_string());
            Err(SimError::Panicked {
                seed: config.seed,
                message,
            })
        }
    }
}

/// A sweep over consecutive seeds.
#[derive(Clone, Copy, Debug)]
pub struct Sweep {
    pub first_seed: u64,
    pub seed_count: u64,
    /// Threads to run seeds on; at least one.
    pub jobs: usize,
    /// Stop handing out new seeds after this many failures.
    pub failures_max: usize,
}

/// The outcome of a sweep.
#[derive(Clone, Debug, Default)]
pub struct SweepSummary {
    pub seeds_run: u64,
    pub committed_entries: u64,
    pub elections: u64,
    pub crashes: u64,
    pub snapshots_installed: u64,
    /// Failures, ordered by seed.
    pub failures: Vec<SimError>,
}

/// Run `sweep.seed_count` seeds from `sweep.first_seed`, each with `template` but its own
/// seed. `on_failure` sees each failure as it happens (to print it at once).
pub fn run_seeds(
    template: SimConfig,
    sweep: Sweep,
    on_failure: &(dyn Fn(&SimError) + Sync),
) -> SweepSummary {
    let next = AtomicU64::new(0);
    let summary = Mutex::new(SweepSummary::default());
    let jobs = sweep.jobs.max(1);
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                loop {
                    let offset = next.fetch_add(1, Ordering::Relaxed);
                    if offset >= sweep.seed_count {
                        return;
                    }
                    let failures_so_far = summary
                        .lock()
                        .map(|summary| summary.failures.len())
                        .unwrap_or(usize::MAX);
                    if failures_so_far >= sweep.failures_max {
                        return;
                    }
                    let config = SimConfig {
                        seed: sweep.first_seed.wrapping_add(offset),
                        ..template
                    };
                    let result = run_seed(config);
                    if let Err(error) = &result {
                        on_failure(error);
                    }
                    let Ok(mut summary) = summary.lock() else {
                        return;
                    };
                    summary.seeds_run += 1;
                    match result {
                        Ok(report) => {
                            summary.committed_entries += report.committed_entries;
                            summary.elections += report.elections;
                            summary.crashes += report.crashes;
                            summary.snapshots_installed += report.snapshots_installed;
                        }
                        Err(error) => summary.failures.push(error),
                    }
                }
            });
        }
    });
    let mut summary = summary.into_inner().unwrap_or_default();
    summary.failures.sort_by_key(SimError::seed);
    summary
}
