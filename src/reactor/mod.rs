//! The real-world driver of a shard: glommio executors (one per core), the WAL's `Disk` on
//! `DmaFile` (O_DIRECT, fdatasync), and later transport, listeners and the channel mesh.
//!
//! This room is the only importer of glommio and the only reader of real time; it must not
//! contain decisions the simulator would miss: it executes what the pure rooms plan.

pub mod disk;
pub mod executor;
pub mod rawdisk;
