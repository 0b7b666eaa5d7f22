//! The per-core write-ahead log (DESIGN §6): record format, segment allocation and reuse,
//! packing many groups' records into one aligned write, the recovery scan, the per-group index
//! and purge.
//!
//! Everything here plans; nothing performs I/O. The `Disk` trait executes plans, and the small
//! async driver (`driver.rs`) runs a plan against any `Disk`, so the simulator and the reactor
//! share one code path. This room must not know Raft roles or votes.

pub mod disk;

pub use disk::{Disk, DiskError, DiskOp, SegmentSeq, parse_segment_file_name, segment_file_name};
