//! The replicated key-value state machine of one group: the command format carried in Raft
//! entries, apply, and reads. Pure: no I/O, no clock; snapshot and restore arrive with
//! log compaction.

pub mod command;
pub mod machine;

pub use command::{Command, CommandError, PutCondition};
pub use machine::{CounterError, KvMachine, Outcome};
