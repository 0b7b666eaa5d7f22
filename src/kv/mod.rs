//! The replicated key-value state machine of one group: the command format carried in Raft
//! entries, apply, reads, a consistent view for snapshots, the snapshot byte format, and the
//! trait of the store snapshot files live in. Pure: no I/O, no clock.

pub mod command;
pub mod machine;
pub mod snapshot;
pub mod store;

pub use command::{Command, CommandError, PutCondition};
pub use machine::{CounterError, FrozenState, KvMachine, Outcome, WalkStatus};
