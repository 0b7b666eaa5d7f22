//! The per-core write-ahead log (DESIGN §6): record format, segment allocation and reuse,
//! packing many groups' records into one aligned write, the recovery scan, the per-group index
//! and purge.
//!
//! Everything here plans; nothing performs I/O. The `Disk` trait executes plans, and the small
//! async driver (`driver.rs`) runs a plan against any `Disk`, so the simulator and the reactor
//! share one code path. This room must not know Raft roles or votes.
//!
//! Choices, and why:
//! - One write per append (per segment touched), then one sync. The last, partial block of the
//!   previous append is kept in memory and re-emitted at the start of the next write, rather
//!   than padding every append to a block: both write the same number of blocks per sync, but
//!   padding would fill a segment with mostly zeros when batches are small (a 100-byte batch
//!   would use 4 KiB), multiplying segment churn and recovery reads. Rewriting the block is
//!   safe under a torn write because its old bytes are rewritten unchanged: any mix of old and
//!   new bytes leaves them intact.
//! - Every write opens with a batch header (write number, byte length, record count); a batch
//!   is kept whole or cut whole, so one group's entries and hard state of one append are
//!   atomic.
//! - Checksums are seeded with the segment's sequence number and the record's offset, so stale
//!   bytes of a recycled segment never validate.
//! - Segments are zero-filled and synced before use, ahead of need (spares). A spare can be
//!   reserved (`Log::reserve_spare`) and created by another task while appends go on: filling
//!   64 MiB takes tens of milliseconds, which appends would otherwise wait for. Only an append
//!   that needs the reserved segment itself waits (`LogError::SpareNotReady`, nothing
//!   written); a crash before it is adopted leaves a headerless spare, which recovery repairs.

pub mod disk;
pub mod driver;
pub mod fold;
pub mod index;
pub mod record;
pub mod recovery;
pub mod wal;

#[cfg(test)]
mod tests;

use thiserror::Error;

use crate::ids::{GroupId, LogIndex};

pub use disk::{Disk, DiskError, DiskOp, SegmentSeq, parse_segment_file_name, segment_file_name};
pub use driver::Log;
pub use fold::fold_appends;
pub use index::{GroupIndex, Location};
pub use recovery::{Recovered, Recovery, RecoverySummary, RestoredGroup, TornTail};
pub use wal::{AppendPlan, FetchPlan, ReadOp, Wal, WalConfig, WalOp, WalPosition};

/// Everything that can go wrong in the WAL.
#[derive(Debug, Error)]
pub enum LogError {
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// Bytes on disk that cannot be a crash's torn tail. Start-up must stop: continuing could
    /// lose acknowledged writes or replay stale ones.
    #[error(
        "WAL corruption in {file} at offset {offset}: {reason}. This node's log cannot be \
         trusted; move the data directory aside and let the node rejoin from its peers (or \
         restore the file from a backup), then start it again"
    )]
    Corrupt {
        file: String,
        segment: SegmentSeq,
        offset: u64,
        reason: String,
    },
    #[error(
        "WAL segments are not contiguous: expected segment {expected} after {previous}, found \
         {found}; a segment file was removed or renamed by hand"
    )]
    MissingSegment {
        previous: SegmentSeq,
        expected: SegmentSeq,
        found: SegmentSeq,
    },
    #[error("invalid WAL configuration: {0}")]
    BadConfig(String),
    /// The append needs the spare segment reserved for creation beside the appends: adopt it
    /// (`Log::adopt_spare`) and append again. Nothing was written.
    #[error("the append needs spare segment {segment}, which is still being created")]
    SpareNotReady { segment: SegmentSeq },
    #[error("group {group}: a record cannot be written: {reason}")]
    RecordTooLarge {
        group: GroupId,
        reason: &'static str,
    },
    #[error(
        "group {group}: one append of {bytes} bytes does not fit a segment of {capacity} bytes"
    )]
    PersistTooLarge {
        group: GroupId,
        bytes: u64,
        capacity: u64,
    },
    #[error("group {group}: entries {first}..={last} are not in the WAL (it holds {available})")]
    FetchOutOfRange {
        group: GroupId,
        first: LogIndex,
        last: LogIndex,
        available: String,
    },
}

impl LogError {
    pub(crate) fn corrupt(segment: SegmentSeq, offset: u64, reason: impl Into<String>) -> LogError {
        LogError::Corrupt {
            file: segment_file_name(segment),
            segment,
            offset,
            reason: reason.into(),
        }
    }
}
