//! The real-world driver of a shard: glommio executors (one per core), the WAL's `Disk` on
//! `DmaFile` (O_DIRECT, fdatasync), the peer transport, the client listeners, the channel
//! mesh between cores, signal handling and the server that ties them together.
//!
//! This room is the only importer of glommio and the only reader of real time; it must not
//! contain decisions the simulator would miss: it executes what the pure rooms plan.

pub mod client;
pub mod context;
pub mod disk;
pub mod driver;
pub mod events;
pub mod executor;
pub mod gather;
pub mod peer;
pub mod rawdisk;
pub mod resp;
pub mod server;
pub mod shard_api;
pub mod signals;
pub mod snapshots;
pub mod snapstore;
