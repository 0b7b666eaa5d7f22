//! One Raft group, pure: `RaftNode` takes ticks, messages, proposals and the caller's two
//! cursors (`on_persisted`, `on_applied`) and returns what to persist, send and apply as a
//! `Ready`. It performs no I/O, reads no clock, owns no global RNG and is not async; time
//! arrives as `tick()`, randomness as a seeded `Prng`.
//!
//! Snapshots carry metadata only (thesis §5, see `snapshot.rs`): the state machine's bytes
//! are the caller's. Membership change has its place in the types but is a later issue:
//! membership entries received from a leader are stored and applied like any other entry
//! without changing the configuration.

pub mod config;
mod election;
pub mod errors;
mod log;
pub mod node;
mod progress;
pub mod quorum;
mod read_index;
mod replication;
mod snapshot;
#[cfg(test)]
mod tests;
pub mod types;

pub use config::*;
pub use errors::*;
pub use node::{RaftNode, Status};
pub use types::*;
