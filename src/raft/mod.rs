//! One Raft group, pure: `RaftNode` takes ticks, messages, proposals and the caller's two
//! cursors (`on_persisted`, `on_applied`) and returns what to persist, send and apply as a
//! `Ready`. It performs no I/O, reads no clock, owns no global RNG and is not async; time
//! arrives as `tick()`, randomness as a seeded `Prng`.

pub mod types;

pub use types::*;
