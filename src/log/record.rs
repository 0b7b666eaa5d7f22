//! The on-disk format of WAL records and segment headers, and nothing else: encoding into a
//! caller's buffer and validating decoding from untrusted bytes.
//!
//! A record is `length u32 | crc32c u32 | kind u8 | 3 zero bytes | group u32 | payload`, all
//! little-endian, padded with zeros to a multiple of 8 bytes (`length` excludes the padding).
//! The checksum covers bytes 8..length and is seeded with the segment's sequence number and
//! the record's offset in the segment, so a record left over in a recycled segment, or a copy
//! of a record at another offset, never validates as new.
//!
//! This file must not panic on any input bytes and must not know where records live beyond
//! the (segment, offset) pair that seeds the checksum.

use thiserror::Error;

use crate::constants::{WAL_HEADER_BLOCK_BYTES, WAL_MEMBERS_MAX, WAL_RECORD_PAYLOAD_BYTES_MAX};
use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::log::disk::SegmentSeq;
use crate::raft::types::{Entry, EntryKind, HardState, Membership, SnapshotMeta};

/// Bytes of a record's fixed header.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Records start at multiples of this, so a scan for stray records can step by it.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// The largest `length` field a valid record can carry.
pub const RECORD_BYTES_MAX: usize = RECORD_HEADER_BYTES + WAL_RECORD_PAYLOAD_BYTES_MAX as usize;

const BATCH_PAYLOAD_BYTES: usize = 32;
const ENTRY_FIXED_BYTES: usize = 24;
const HARD_STATE_PAYLOAD_BYTES: usize = 40;
const SNAPSHOT_FIXED_BYTES: usize = 24;

/// Segment header magic: "RRWALSEG".
pub const SEGMENT_MAGIC: [u8; 8] = *b"RRWALSEG";
/// Version of the segment and record format.
pub const SEGMENT_VERSION: u32 = 1;
const SEGMENT_HEADER_BYTES: usize = 36;

const _: () = assert!(RECORD_HEADER_BYTES.is_multiple_of(RECORD_ALIGN_BYTES));
const _: () = assert!(SEGMENT_HEADER_BYTES <= WAL_HEADER_BLOCK_BYTES as usize);
const _: () = assert!(RECORD_BYTES_MAX < u32::MAX as usize);

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// Opens every write: see `BatchHeader`.
    Batch = 1,
    Entry = 2,
    HardState = 3,
    SnapshotMark = 4,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<RecordKind> {
        match byte {
            1 => Some(RecordKind::Batch),
            2 => Some(RecordKind::Entry),
            3 => Some(RecordKind::HardState),
            4 => Some(RecordKind::SnapshotMark),
            _ => None,
        }
    }
}

/// The first record of every write. A batch is atomic: recovery keeps it whole or cuts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    /// Counts writes over the life of the WAL; consecutive batches differ by one, across
    /// segments too, so a lost batch is noticed.
    pub write_number: u64,
    /// In the first batch of a segment: where the records of the previous segment end (0 in
    /// the very first segment). Elsewhere 0. Lets recovery check a sealed segment's end.
    pub previous_segment_end: u64,
    /// Bytes of the batch from its header to the end of its last record's padding.
    pub batch_bytes: u64,
    /// Records of the batch after this header.
    pub record_count: u32,
}

/// A record to encode, borrowing its contents.
#[derive(Clone, Copy, Debug)]
pub enum RecordRef<'a> {
    Batch(BatchHeader),
    Entry(GroupId, &'a Entry),
    HardState(GroupId, &'a HardState),
    SnapshotMark(GroupId, &'a SnapshotMeta),
}

/// A decoded record; an entry's data is borrowed from the read bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordView<'a> {
    Batch(BatchHeader),
    Entry {
        group: GroupId,
        id: EntryId,
        kind: EntryKind,
        data: &'a [u8],
    },
    HardState {
        group: GroupId,
        hard_state: HardState,
    },
    SnapshotMark {
        group: GroupId,
        snapshot: SnapshotMeta,
    },
}

impl RecordView<'_> {
    /// The entry this view holds, with its data copied out.
    pub fn to_entry(&self) -> Option<Entry> {
        match self {
            RecordView::Entry { id, kind, data, .. } => Some(Entry {
                id: *id,
                kind: *kind,
                data: bytes::Bytes::copy_from_slice(data),
            }),
            _ => None,
        }
    }
}

/// Why bytes are not a valid record at their place.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("all-zero header (no record here)")]
    Zero,
    #[error("only {available} bytes left, a record header needs {RECORD_HEADER_BYTES}")]
    Truncated { available: usize },
    #[error(
        "length {length} is out of range (header {RECORD_HEADER_BYTES}, max {RECORD_BYTES_MAX}, available {available})"
    )]
    BadLength { length: usize, available: usize },
    #[error("checksum {stored:#010x} does not match computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("unknown record kind {kind}")]
    UnknownKind { kind: u8 },
    #[error("malformed {kind:?} payload: {reason}")]
    BadPayload {
        kind: RecordKind,
        reason: &'static str,
    },
}

/// Why bytes are not a valid segment header for the segment they were read from.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("header block is {available} bytes, needs {SEGMENT_HEADER_BYTES}")]
    Truncated { available: usize },
    #[error("bad magic (not a ringraft segment, or never initialised)")]
    BadMagic,
    #[error("header checksum {stored:#010x} does not match computed {computed:#010x}")]
    BadChecksum { stored: u32, computed: u32 },
    #[error("format version {version}, this build reads {SEGMENT_VERSION}")]
    BadVersion { version: u32 },
    #[error("header names segment {found}, the file is segment {expected}")]
    WrongSequence { found: u64, expected: u64 },
    #[error("header says {found} bytes per segment, configured {expected}")]
    WrongSize { found: u64, expected: u64 },
}

/// Rounds `value` up to a multiple of `align` (a power of two).
pub fn align_up(value: u64, align: u64) -> u64 {
    assert!(
        align.is_power_of_two(),
        "align_up: alignment {align} is not a power of two"
    );
    value.div_ceil(align) * align
}

/// Rounds `value` down to a multiple of `align` (a power of two).
pub fn align_down(value: u64, align: u64) -> u64 {
    assert!(
        align.is_power_of_two(),
        "align_down: alignment {align} is not a power of two"
    );
    value / align * align
}

/// Bytes a record occupies in the segment, padding included.
pub fn encoded_bytes(record: &RecordRef<'_>) -> usize {
    let length = RECORD_HEADER_BYTES + payload_bytes(record);
    align_up(length as u64, RECORD_ALIGN_BYTES as u64) as usize
}

fn payload_bytes(record: &RecordRef<'_>) -> usize {
    match record {
        RecordRef::Batch(_) => BATCH_PAYLOAD_BYTES,
        RecordRef::Entry(_, entry) => ENTRY_FIXED_BYTES + entry.data.len(),
        RecordRef::HardState(..) => HARD_STATE_PAYLOAD_BYTES,
        RecordRef::SnapshotMark(_, snapshot) => {
            SNAPSHOT_FIXED_BYTES
                + 8 * (snapshot.membership.voters.len() + snapshot.membership.learners.len())
        }
    }
}

/// Whether `record` may be written: its payload and membership fit the limits.
pub fn check_encodable(record: &RecordRef<'_>) -> Result<(), &'static str> {
    if payload_bytes(record) > WAL_RECORD_PAYLOAD_BYTES_MAX as usize {
        return Err("record payload exceeds WAL_RECORD_PAYLOAD_BYTES_MAX");
    }
    if let RecordRef::SnapshotMark(_, snapshot) = record {
        let members = snapshot.membership.voters.len() + snapshot.membership.learners.len();
        if members > WAL_MEMBERS_MAX {
            return Err("snapshot membership exceeds WAL_MEMBERS_MAX");
        }
    }
    if let RecordRef::Entry(_, entry) = record
        && entry.id.index == LogIndex::ZERO
    {
        return Err("entry index 0 is not a log position");
    }
    Ok(())
}

fn checksum(seq: SegmentSeq, offset: u64, covered: &[u8]) -> u32 {
    let mut seed = [0u8; 16];
    seed[..8].copy_from_slice(&seq.0.to_le_bytes());
    seed[8..].copy_from_slice(&offset.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c(&seed), covered)
}

/// Encodes `record` at the start of `out` (which must hold `encoded_bytes(record)`), to be
/// placed at `offset` of segment `seq`. Returns the bytes used, padding included.
pub fn encode(out: &mut [u8], seq: SegmentSeq, offset: u64, record: &RecordRef<'_>) -> usize {
    let total = encoded_bytes(record);
    let length = RECORD_HEADER_BYTES + payload_bytes(record);
    assert!(
        out.len() >= total,
        "encode: buffer of {} bytes for a record of {total}",
        out.len()
    );
    assert!(
        offset.is_multiple_of(RECORD_ALIGN_BYTES as u64),
        "encode: offset {offset} not aligned to {RECORD_ALIGN_BYTES}"
    );
    assert!(
        check_encodable(record).is_ok(),
        "encode: record not encodable: {:?}",
        check_encodable(record)
    );
    let (kind, group) = match record {
        RecordRef::Batch(_) => (RecordKind::Batch, GroupId::ZERO),
        RecordRef::Entry(group, _) => (RecordKind::Entry, *group),
        RecordRef::HardState(group, _) => (RecordKind::HardState, *group),
        RecordRef::SnapshotMark(group, _) => (RecordKind::SnapshotMark, *group),
    };
    let out = &mut out[..total];
    out.fill(0);
    out[0..4].copy_from_slice(&(length as u32).to_le_bytes());
    out[8] = kind as u8;
    out[12..16].copy_from_slice(&group.0.to_le_bytes());
    let mut writer = Writer {
        bytes: &mut out[RECORD_HEADER_BYTES..length],
        at: 0,
    };
    encode_payload(&mut writer, record);
    assert!(
        writer.at == length - RECORD_HEADER_BYTES,
        "encode: payload wrote {} bytes, expected {}",
        writer.at,
        length - RECORD_HEADER_BYTES
    );
    let crc = checksum(seq, offset, &out[8..length]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    total
}

fn encode_payload(writer: &mut Writer<'_>, record: &RecordRef<'_>) {
    match record {
        RecordRef::Batch(batch) => {
            writer.u64(batch.write_number);
            writer.u64(batch.previous_segment_end);
            writer.u64(batch.batch_bytes);
            writer.u32(batch.record_count);
            writer.u32(0);
        }
        RecordRef::Entry(_, entry) => {
            writer.u64(entry.id.term.0);
            writer.u64(entry.id.index.0);
            writer.u64(entry_kind_byte(entry.kind));
            writer.bytes(&entry.data);
        }
        RecordRef::HardState(_, hard_state) => {
            writer.u64(hard_state.term.0);
            writer.u64(hard_state.commit.0);
            writer.u64(u64::from(hard_state.vote.is_some()));
            writer.u64(hard_state.vote.map_or(0, |node| node.0));
            writer.u64(hard_state.vote_floor.0);
        }
        RecordRef::SnapshotMark(_, snapshot) => {
            writer.u64(snapshot.last.term.0);
            writer.u64(snapshot.last.index.0);
            writer.u32(snapshot.membership.voters.len() as u32);
            writer.u32(snapshot.membership.learners.len() as u32);
            for node in snapshot
                .membership
                .voters
                .iter()
                .chain(&snapshot.membership.learners)
            {
                writer.u64(node.0);
            }
        }
    }
}

fn entry_kind_byte(kind: EntryKind) -> u64 {
    match kind {
        EntryKind::Command => 1,
        EntryKind::Empty => 2,
        EntryKind::Membership => 3,
    }
}

/// Decodes the record at the start of `bytes`, which sit at `offset` of segment `seq`.
/// Returns the record and the bytes it occupies (padding included, possibly past the end of
/// `bytes` when the padding is cut off). Never panics.
pub fn decode(
    bytes: &[u8],
    seq: SegmentSeq,
    offset: u64,
) -> Result<(RecordView<'_>, usize), RecordError> {
    let header = bytes
        .get(..RECORD_HEADER_BYTES)
        .ok_or(RecordError::Truncated {
            available: bytes.len(),
        })?;
    if header.iter().all(|&b| b == 0) {
        return Err(RecordError::Zero);
    }
    let length = read_u32(header, 0) as usize;
    if !(RECORD_HEADER_BYTES..=RECORD_BYTES_MAX).contains(&length) || length > bytes.len() {
        return Err(RecordError::BadLength {
            length,
            available: bytes.len(),
        });
    }
    let record = bytes.get(..length).ok_or(RecordError::BadLength {
        length,
        available: bytes.len(),
    })?;
    // Cheap checks first: a recovery scan tries every 8-byte position of stale bytes, and
    // most fail here without paying for a checksum over a long claimed length.
    let kind_byte = header.get(8).copied().unwrap_or_default();
    let kind =
        RecordKind::from_byte(kind_byte).ok_or(RecordError::UnknownKind { kind: kind_byte })?;
    if header.get(9..12) != Some(&[0u8; 3][..]) {
        return Err(RecordError::BadPayload {
            kind,
            reason: "reserved header bytes are not zero",
        });
    }
    let stored = read_u32(header, 4);
    let computed = checksum(seq, offset, record.get(8..).unwrap_or_default());
    if stored != computed {
        return Err(RecordError::BadChecksum { stored, computed });
    }
    let group = GroupId(read_u32(header, 12));
    let payload = record.get(RECORD_HEADER_BYTES..).unwrap_or_default();
    let view = decode_payload(kind, group, payload)?;
    let total = align_up(length as u64, RECORD_ALIGN_BYTES as u64) as usize;
    Ok((view, total))
}

fn decode_payload(
    kind: RecordKind,
    group: GroupId,
    payload: &[u8],
) -> Result<RecordView<'_>, RecordError> {
    let bad = |reason| RecordError::BadPayload { kind, reason };
    let mut reader = Reader {
        bytes: payload,
        at: 0,
    };
    let view = match kind {
        RecordKind::Batch => {
            if group != GroupId::ZERO {
                return Err(bad("batch header names a group"));
            }
            let write_number = reader.u64().ok_or(bad("short"))?;
            let previous_segment_end = reader.u64().ok_or(bad("short"))?;
            let batch_bytes = reader.u64().ok_or(bad("short"))?;
            let record_count = reader.u32().ok_or(bad("short"))?;
            let _reserved = reader.u32().ok_or(bad("short"))?;
            RecordView::Batch(BatchHeader {
                write_number,
                previous_segment_end,
                batch_bytes,
                record_count,
            })
        }
        RecordKind::Entry => {
            let term = Term(reader.u64().ok_or(bad("short"))?);
            let index = LogIndex(reader.u64().ok_or(bad("short"))?);
            if index == LogIndex::ZERO {
                return Err(bad("entry index 0"));
            }
            let kind = match reader.u64().ok_or(bad("short"))? {
                1 => EntryKind::Command,
                2 => EntryKind::Empty,
                3 => EntryKind::Membership,
                _ => return Err(bad("unknown entry kind")),
            };
            let data = reader.rest();
            return Ok(RecordView::Entry {
                group,
                id: EntryId::new(term, index),
                kind,
                data,
            });
        }
        RecordKind::HardState => {
            let term = Term(reader.u64().ok_or(bad("short"))?);
            let commit = LogIndex(reader.u64().ok_or(bad("short"))?);
            let has_vote = reader.u64().ok_or(bad("short"))?;
            let vote_node = NodeId(reader.u64().ok_or(bad("short"))?);
            let vote_floor = LogIndex(reader.u64().ok_or(bad("short"))?);
            let vote = match has_vote {
                0 if vote_node == NodeId::ZERO => None,
                1 => Some(vote_node),
                _ => return Err(bad("vote flag is neither 0 nor 1")),
            };
            RecordView::HardState {
                group,
                hard_state: HardState {
                    term,
                    vote,
                    commit,
                    vote_floor,
                },
            }
        }
        RecordKind::SnapshotMark => decode_snapshot(group, &mut reader).ok_or(bad("malformed"))?,
    };
    if !reader.rest().is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(view)
}

fn decode_snapshot<'a>(group: GroupId, reader: &mut Reader<'a>) -> Option<RecordView<'a>> {
    let term = Term(reader.u64()?);
    let index = LogIndex(reader.u64()?);
    let voter_count = reader.u32()? as usize;
    let learner_count = reader.u32()? as usize;
    if voter_count.checked_add(learner_count)? > WAL_MEMBERS_MAX {
        return None;
    }
    let mut voters = Vec::with_capacity(voter_count);
    for _ in 0..voter_count {
        voters.push(NodeId(reader.u64()?));
    }
    let mut learners = Vec::with_capacity(learner_count);
    for _ in 0..learner_count {
        learners.push(NodeId(reader.u64()?));
    }
    Some(RecordView::SnapshotMark {
        group,
        snapshot: SnapshotMeta {
            last: EntryId::new(term, index),
            membership: Membership { voters, learners },
        },
    })
}

/// Encodes the header block of segment `seq` into `out` (at least `WAL_HEADER_BLOCK_BYTES`).
pub fn encode_segment_header(out: &mut [u8], seq: SegmentSeq, segment_bytes: u64) {
    let block = WAL_HEADER_BLOCK_BYTES as usize;
    assert!(
        out.len() >= block,
        "encode_segment_header: buffer of {} bytes, header block is {block}",
        out.len()
    );
    let out = &mut out[..block];
    out.fill(0);
    out[0..8].copy_from_slice(&SEGMENT_MAGIC);
    out[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    out[16..24].copy_from_slice(&seq.0.to_le_bytes());
    out[24..32].copy_from_slice(&segment_bytes.to_le_bytes());
    let crc = crc32c::crc32c(&out[..32]);
    out[32..36].copy_from_slice(&crc.to_le_bytes());
}

/// Checks that `bytes` (the start of a segment file) is the header of segment `seq` of
/// `segment_bytes`. Never panics.
pub fn decode_segment_header(
    bytes: &[u8],
    seq: SegmentSeq,
    segment_bytes: u64,
) -> Result<(), HeaderError> {
    let header = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .ok_or(HeaderError::Truncated {
            available: bytes.len(),
        })?;
    if header.get(0..8) != Some(&SEGMENT_MAGIC[..]) {
        return Err(HeaderError::BadMagic);
    }
    let stored = read_u32(header, 32);
    let computed = crc32c::crc32c(header.get(..32).unwrap_or_default());
    if stored != computed {
        return Err(HeaderError::BadChecksum { stored, computed });
    }
    let version = read_u32(header, 8);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::BadVersion { version });
    }
    let found = read_u64(header, 16);
    if found != seq.0 {
        return Err(HeaderError::WrongSequence {
            found,
            expected: seq.0,
        });
    }
    let found_bytes = read_u64(header, 24);
    if found_bytes != segment_bytes {
        return Err(HeaderError::WrongSize {
            found: found_bytes,
            expected: segment_bytes,
        });
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    if let Some(slice) = bytes.get(at..at + 4) {
        word.copy_from_slice(slice);
    }
    u32::from_le_bytes(word)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    if let Some(slice) = bytes.get(at..at + 8) {
        word.copy_from_slice(slice);
    }
    u64::from_le_bytes(word)
}

struct Writer<'a> {
    bytes: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn bytes(&mut self, data: &[u8]) {
        let end = self.at + data.len();
        assert!(
            end <= self.bytes.len(),
            "record writer: {end} bytes past a payload of {}",
            self.bytes.len()
        );
        self.bytes[self.at..end].copy_from_slice(data);
        self.at = end;
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        let slice = self.bytes.get(self.at..self.at.checked_add(count)?)?;
        self.at += count;
        Some(slice)
    }

    fn u64(&mut self) -> Option<u64> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(word))
    }

    fn u32(&mut self) -> Option<u32> {
        let mut word = [0u8; 4];
        word.copy_from_slice(self.take(4)?);
        Some(u32::from_le_bytes(word))
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.at..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;

    fn entry(term: u64, index: u64, kind: EntryKind, data: &[u8]) -> Entry {
        Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            kind,
            data: Bytes::copy_from_slice(data),
        }
    }

    fn encode_to_vec(seq: SegmentSeq, offset: u64, record: &RecordRef<'_>) -> Vec<u8> {
        let mut out = vec![0xEE; encoded_bytes(record)];
        let used = encode(&mut out, seq, offset, record);
        assert_eq!(used, out.len());
        out
    }

    #[test]
    fn every_record_kind_round_trips() {
        // Each record kind decodes back to what was encoded, at its segment and offset.
        let seq = SegmentSeq(7);
        let group = GroupId(3);
        let entries = [
            entry(2, 9, EntryKind::Command, b"hello, wal"),
            entry(1, 1, EntryKind::Empty, b""),
            entry(u64::MAX, u64::MAX, EntryKind::Membership, &[0u8; 13]),
        ];
        for entry in &entries {
            let bytes = encode_to_vec(seq, 4096, &RecordRef::Entry(group, entry));
            let (view, used) = decode(&bytes, seq, 4096).expect("entry decodes");
            assert_eq!(used, bytes.len());
            assert_eq!(view.to_entry().as_ref(), Some(entry));
            assert!(matches!(view, RecordView::Entry { group: g, .. } if g == group));
        }
        for hard_state in [
            HardState::default(),
            HardState {
                term: Term(5),
                vote: Some(NodeId(2)),
                commit: LogIndex(40),
                vote_floor: LogIndex::ZERO,
            },
            HardState {
                term: Term(7),
                vote: None,
                commit: LogIndex::ZERO,
                vote_floor: LogIndex(93),
            },
        ] {
            let bytes = encode_to_vec(seq, 8, &RecordRef::HardState(group, &hard_state));
            let (view, _) = decode(&bytes, seq, 8).expect("hard state decodes");
            assert_eq!(view, RecordView::HardState { group, hard_state });
        }
        let snapshot = SnapshotMeta {
            last: EntryId::new(Term(4), LogIndex(100)),
            membership: Membership {
                voters: vec![NodeId(1), NodeId(2), NodeId(3)],
                learners: vec![NodeId(9)],
            },
        };
        let bytes = encode_to_vec(seq, 16, &RecordRef::SnapshotMark(group, &snapshot));
        let (view, _) = decode(&bytes, seq, 16).expect("snapshot mark decodes");
        assert_eq!(view, RecordView::SnapshotMark { group, snapshot });
        let batch = BatchHeader {
            write_number: 77,
            previous_segment_end: 123_456,
            batch_bytes: 4096,
            record_count: 12,
        };
        let bytes = encode_to_vec(seq, 24, &RecordRef::Batch(batch));
        assert_eq!(
            decode(&bytes, seq, 24).map(|(view, _)| view),
            Ok(RecordView::Batch(batch))
        );
    }

    #[test]
    fn checksum_binds_segment_and_offset() {
        // The same bytes are refused in another segment (a recycled file) or at another offset.
        let entry = entry(1, 1, EntryKind::Command, b"x");
        let bytes = encode_to_vec(SegmentSeq(3), 4096, &RecordRef::Entry(GroupId(1), &entry));
        assert!(decode(&bytes, SegmentSeq(3), 4096).is_ok());
        assert!(matches!(
            decode(&bytes, SegmentSeq(4), 4096),
            Err(RecordError::BadChecksum { .. })
        ));
        assert!(matches!(
            decode(&bytes, SegmentSeq(3), 4104),
            Err(RecordError::BadChecksum { .. })
        ));
        assert_eq!(decode(&[0u8; 64], SegmentSeq(3), 0), Err(RecordError::Zero));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_strangers() {
        // A header validates only for its own sequence number and size.
        let mut block = vec![0u8; WAL_HEADER_BLOCK_BYTES as usize];
        encode_segment_header(&mut block, SegmentSeq(5), 65536);
        assert_eq!(decode_segment_header(&block, SegmentSeq(5), 65536), Ok(()));
        assert!(matches!(
            decode_segment_header(&block, SegmentSeq(6), 65536),
            Err(HeaderError::WrongSequence {
                found: 5,
                expected: 6
            })
        ));
        assert!(matches!(
            decode_segment_header(&block, SegmentSeq(5), 8192),
            Err(HeaderError::WrongSize { .. })
        ));
        block[20] ^= 1;
        assert!(matches!(
            decode_segment_header(&block, SegmentSeq(5), 65536),
            Err(HeaderError::BadChecksum { .. })
        ));
        assert_eq!(
            decode_segment_header(&[0u8; 10], SegmentSeq(5), 65536),
            Err(HeaderError::Truncated { available: 10 })
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn decode_never_panics_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..256), offset in 0u64..1 << 20) {
            // Random bytes are refused or accepted, never a panic.
            let _ = decode(&bytes, SegmentSeq(1), offset);
            let _ = decode_segment_header(&bytes, SegmentSeq(1), 65536);
        }

        #[test]
        fn decode_refuses_mutated_records(data in proptest::collection::vec(any::<u8>(), 0..200), position in any::<usize>(), xor in 1u8..=255) {
            // Any single-byte change inside a record's covered bytes is caught by the checksum.
            let entry = entry(3, 17, EntryKind::Command, &data);
            let mut bytes = encode_to_vec(SegmentSeq(2), 4096, &RecordRef::Entry(GroupId(5), &entry));
            let length = RECORD_HEADER_BYTES + ENTRY_FIXED_BYTES + data.len();
            let at = position % length;
            bytes[at] ^= xor;
            prop_assert!(decode(&bytes, SegmentSeq(2), 4096).is_err());
        }
    }
}
