//! ringraft: a replicated, strongly consistent key-value server. Multi-Raft, thread-per-core.
//!
//! Rooms and the direction of their dependencies (DESIGN §3):
//! `ids`, `constants`, `prng` <- `raft`, `log`, `kv` <- `wire` <- `shard` <- `reactor`, `sim`.

pub mod bench;
pub mod client;
pub mod constants;
pub mod ids;
pub mod kv;
pub mod log;
pub mod prng;
pub mod raft;
pub mod reactor;
pub mod server;
pub mod shard;
pub mod sim;
pub mod wire;
