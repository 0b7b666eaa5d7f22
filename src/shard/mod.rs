//! The per-core Multi-Raft orchestrator (DESIGN §5): the groups of one core, one tick for
//! all, one batch per destination node per round with coalesced heartbeats, and one
//! persistence list per round for a single WAL write.
//!
//! Pure like the Raft core: this room must not import glommio, read real time, or do I/O.

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
