//! The `Disk` trait: the only way the WAL touches storage. The pure planner in `log/` decides
//! which bytes go where; a `Disk` executes those decisions. Two implementations exist: the
//! direct-I/O `DmaFile` one in `reactor/` and the deterministic simulated one in `sim/disk.rs`.
//!
//! This file owns the trait, the segment sequence number and `DiskError`. It must not know
//! the record format, and holds no `io::Error` (implementations render theirs into a message).

use std::fmt;

use thiserror::Error;

/// The sequence number of a WAL segment file. Sequence numbers only grow: a recycled file
/// takes a new, higher number, so a number is never reused for different contents. The
/// first segment of a fresh WAL is 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SegmentSeq(pub u64);

impl SegmentSeq {
    pub const FIRST: SegmentSeq = SegmentSeq(1);

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The next sequence number; panics on overflow, which no real workload reaches.
    #[must_use]
    pub fn next(self) -> SegmentSeq {
        SegmentSeq(self.0 + 1)
    }
}

impl fmt::Display for SegmentSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The file name of a segment inside its core directory (`<data-dir>/core-<n>/`). Zero-padded
/// so that a directory listing sorts in sequence order.
pub fn segment_file_name(seq: SegmentSeq) -> String {
    format!("{:020}.wal", seq.0)
}

/// Parses a name made by `segment_file_name`; anything else is not a segment.
pub fn parse_segment_file_name(name: &str) -> Option<SegmentSeq> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok().map(SegmentSeq)
}

/// The operation a `DiskError` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskOp {
    List,
    Create,
    Write,
    Sync,
    Read,
    Recycle,
    Remove,
}

impl fmt::Display for DiskOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            DiskOp::List => "list",
            DiskOp::Create => "create",
            DiskOp::Write => "write",
            DiskOp::Sync => "sync",
            DiskOp::Read => "read",
            DiskOp::Recycle => "recycle",
            DiskOp::Remove => "remove",
        };
        f.write_str(name)
    }
}

/// A failed disk operation. A failed write or sync is fatal to the process (DESIGN §6): the
/// WAL never retries, it crashes and recovers from checksums.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("disk {op} failed for {}: {message}", describe_segment(*.segment))]
pub struct DiskError {
    pub op: DiskOp,
    pub segment: Option<SegmentSeq>,
    pub message: String,
}

fn describe_segment(segment: Option<SegmentSeq>) -> String {
    match segment {
        Some(seq) => format!("segment {}", segment_file_name(seq)),
        None => "the WAL directory".to_string(),
    }
}

impl DiskError {
    pub fn new(op: DiskOp, segment: Option<SegmentSeq>, message: impl Into<String>) -> DiskError {
        DiskError {
            op,
            segment,
            message: message.into(),
        }
    }
}

/// Storage for one core's WAL: a directory of fixed-size segment files.
///
/// Contract, which the planner relies on and both implementations keep:
/// - `offset` and buffer lengths of `write` and `read` are multiples of `alignment()`.
/// - `create_segment` leaves a file of exactly `size_bytes` zero bytes, durable together with
///   its directory entry, so later writes overwrite allocated blocks and `sync` carries no
///   metadata.
/// - `write` may be lost or torn by a crash until `sync` of that segment returns; after it
///   returns, every write to that segment issued before it is durable.
/// - `recycle(from, to)` renames segment `from` to `to` durably (directory synced); the
///   contents are left as they were (the planner rewrites the header).
/// - Methods take `&self`: the executor is single-threaded and implementations use interior
///   mutability; futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait Disk {
    /// A buffer the planner encodes straight into, aligned as the disk needs for direct I/O.
    type Buffer: AsRef<[u8]> + AsMut<[u8]>;
    /// Bytes read back.
    type ReadBuffer: AsRef<[u8]>;

    /// The direct-I/O alignment of this disk's files: a power of two, 512 or 4096.
    fn alignment(&self) -> usize;

    /// A buffer of exactly `len` bytes (a multiple of `alignment()`); its contents are
    /// unspecified, the planner writes every byte.
    fn alloc(&self, len: usize) -> Self::Buffer;

    /// The path of a segment, for error messages and logs.
    fn segment_path(&self, seq: SegmentSeq) -> String;

    /// The segments present, in any order.
    async fn list_segments(&self) -> Result<Vec<SegmentSeq>, DiskError>;

    /// Creates a zero-filled segment of `size_bytes` and makes it and its name durable.
    async fn create_segment(&self, seq: SegmentSeq, size_bytes: u64) -> Result<(), DiskError>;

    /// Writes all of `buffer` at `offset`. Not durable until `sync(seq)`.
    async fn write(
        &self,
        seq: SegmentSeq,
        offset: u64,
        buffer: Self::Buffer,
    ) -> Result<(), DiskError>;

    /// Makes every completed write to `seq` durable (fdatasync).
    async fn sync(&self, seq: SegmentSeq) -> Result<(), DiskError>;

    /// Reads exactly `len` bytes at `offset`.
    async fn read(
        &self,
        seq: SegmentSeq,
        offset: u64,
        len: usize,
    ) -> Result<Self::ReadBuffer, DiskError>;

    /// Renames segment `from` to `to` and makes the rename durable.
    async fn recycle(&self, from: SegmentSeq, to: SegmentSeq) -> Result<(), DiskError>;

    /// Deletes a segment.
    async fn remove(&self, seq: SegmentSeq) -> Result<(), DiskError>;
}

/// A disk shared by handles on one executor: the WAL's, and a task's that creates a spare
/// segment beside the appends (`Log::reserve_spare`).
impl<D: Disk> Disk for std::rc::Rc<D> {
    type Buffer = D::Buffer;
    type ReadBuffer = D::ReadBuffer;

    fn alignment(&self) -> usize {
        (**self).alignment()
    }

    fn alloc(&self, len: usize) -> Self::Buffer {
        (**self).alloc(len)
    }

    fn segment_path(&self, seq: SegmentSeq) -> String {
        (**self).segment_path(seq)
    }

    async fn list_segments(&self) -> Result<Vec<SegmentSeq>, DiskError> {
        (**self).list_segments().await
    }

    async fn create_segment(&self, seq: SegmentSeq, size_bytes: u64) -> Result<(), DiskError> {
        (**self).create_segment(seq, size_bytes).await
    }

    async fn write(
        &self,
        seq: SegmentSeq,
        offset: u64,
        buffer: Self::Buffer,
    ) -> Result<(), DiskError> {
        (**self).write(seq, offset, buffer).await
    }

    async fn sync(&self, seq: SegmentSeq) -> Result<(), DiskError> {
        (**self).sync(seq).await
    }

    async fn read(
        &self,
        seq: SegmentSeq,
        offset: u64,
        len: usize,
    ) -> Result<Self::ReadBuffer, DiskError> {
        (**self).read(seq, offset, len).await
    }

    async fn recycle(&self, from: SegmentSeq, to: SegmentSeq) -> Result<(), DiskError> {
        (**self).recycle(from, to).await
    }

    async fn remove(&self, seq: SegmentSeq) -> Result<(), DiskError> {
        (**self).remove(seq).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_sort() {
        // Names parse back to their number, sort in sequence order, and strangers are refused.
        let names: Vec<String> = [1u64, 9, 10, u64::MAX]
            .iter()
            .map(|&n| segment_file_name(SegmentSeq(n)))
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for (name, n) in names.iter().zip([1u64, 9, 10, u64::MAX]) {
            assert_eq!(parse_segment_file_name(name), Some(SegmentSeq(n)));
        }
        assert_eq!(parse_segment_file_name("00000000000000000001.tmp"), None);
        assert_eq!(parse_segment_file_name("1.wal"), None);
        assert_eq!(parse_segment_file_name("0000000000000000000x.wal"), None);
    }
}
