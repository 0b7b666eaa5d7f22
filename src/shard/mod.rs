//! The per-core Multi-Raft orchestrator (DESIGN §5): the groups of one core, one tick for
//! all, one batch per destination node per round with coalesced heartbeats, and one
//! persistence list per round for a single WAL write.
//!
//! Pure like the Raft core: this room must not import the async runtime, read real time,
//! or do I/O.

pub mod batch;
pub mod core;
pub mod group;
pub mod local;
pub mod multi;

pub use batch::{
    Batch, BatchAssembler, BatchError, GroupMessage, HeartbeatEntry, HeartbeatResponseEntry,
};
pub use group::RaftGroup;
pub use multi::{
    GroupEntries, GroupPersist, MultiRaft, MultiRaftError, MultiRaftStats, RoundOutput, StepSummary,
};

#[cfg(test)]
mod cluster_tests;
#[cfg(test)]
mod multi_tests;

/// The seed of a randomized test: `RINGRAFT_SEED` if set, else a fixed default. Printed
/// first so that a failure replays.
#[cfg(test)]
fn test_seed() -> u64 {
    let seed = match std::env::var("RINGRAFT_SEED") {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("RINGRAFT_SEED={text} is not a number")),
        Err(_) => 0x5eed_0001,
    };
    println!("seed {seed} (replay with RINGRAFT_SEED={seed})");
    seed
}
