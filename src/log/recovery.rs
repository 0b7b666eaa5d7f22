//! The recovery scan: reads each segment once, in order, and rebuilds the planner (per-group
//! index, hard states, snapshot marks, where to append next). It tells a crash's torn tail,
//! which it cuts and reports, from corruption, which refuses start-up naming file and offset.
//!
//! The rules, given that the driver writes then syncs one batch at a time and that a later
//! segment is written only after the earlier one is synced:
//! - the newest segment holding a complete batch is the active one; a damaged or partial batch
//!   at its end is a torn write, cut whole;
//! - anywhere, a valid batch header after the first bad spot means a write happened after
//!   the damaged one, so the damage is corruption;
//! - a sealed segment must end exactly where its successor's first batch says, and batch write
//!   numbers must follow each other, so a lost batch or a cut-short segment is noticed;
//! - segments after the active one hold no complete batch; a bad header there is a spare whose
//!   initialisation a crash interrupted, and is written again;
//! - valid records left behind a cut tail are zeroed by the repair before any append, so they
//!   are neither reported again nor mistaken for a later write.
//!
//! This file never panics on segment bytes and performs no I/O.

use std::collections::BTreeMap;

use crate::constants::WAL_HEADER_BLOCK_BYTES;
use crate::ids::{EntryId, GroupId, LogIndex};
use crate::log::LogError;
use crate::log::disk::SegmentSeq;
use crate::log::index::{GroupIndex, Location};
use crate::log::record::{
    self, BatchHeader, HeaderError, RECORD_ALIGN_BYTES, RECORD_HEADER_BYTES, RecordView, align_down,
};
use crate::log::wal::{Wal, WalConfig, WalOp, WalPosition};
use crate::raft::types::{HardState, SnapshotMeta};

/// What the Raft core of one group needs to restart, as the WAL knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredGroup {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<SnapshotMeta>,
    /// The first entry of each run of equal terms, in index order.
    pub term_runs: Vec<EntryId>,
    /// The first entry the WAL can still return, if any.
    pub first_index: Option<LogIndex>,
    /// The last entry written (or covered by the snapshot mark); zero if none.
    pub last_index: LogIndex,
}

impl Wal {
    /// The restart state of `group`, if the WAL holds anything of it.
    pub fn restored(&self, group: GroupId) -> Option<RestoredGroup> {
        self.group(group).map(|index| RestoredGroup {
            hard_state: index.hard_state(),
            snapshot: index.snapshot().cloned(),
            term_runs: index.term_runs(),
            first_index: index.first_index(),
            last_index: index.last_index(),
        })
    }
}

/// A torn write cut from the end of the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: SegmentSeq,
    /// Where the log now ends; bytes from here on were an unfinished write.
    pub offset: u64,
    pub reason: String,
}

/// What recovery found, for the caller to log with the time it took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoverySummary {
    pub segment_count: usize,
    pub batch_count: u64,
    /// Records of complete batches, batch headers included.
    pub record_count: u64,
    pub bytes_scanned: u64,
    pub group_count: usize,
    pub torn_tail: Option<TornTail>,
    /// Spare segments whose header was written again.
    pub reinitialised_segments: usize,
    /// Where the log ends.
    pub position: WalPosition,
}

/// The result of recovery: the planner, the operations that repair spares (to run before
/// anything else), and the summary.
#[derive(Debug)]
pub struct Recovered<B> {
    pub wal: Wal,
    pub repair: Vec<WalOp<B>>,
    pub summary: RecoverySummary,
}

/// Where and why the scan of a segment stopped before its end.
#[derive(Clone, Debug)]
struct Stop {
    offset: u64,
    reason: String,
}

#[derive(Clone, Debug)]
struct SegmentScan {
    seq: SegmentSeq,
    header: Result<(), HeaderError>,
    batch_count: u64,
    first_batch: Option<BatchHeader>,
    /// Where the complete batches end.
    end: u64,
    stop: Option<Stop>,
    /// Where the last valid record of this segment at or after `end` ends: the remains of a
    /// torn write, zeroed by the repair so they are not reported again.
    remnant_end: Option<u64>,
    /// A valid batch header lies after `end`: a later write exists.
    later_batch: Option<u64>,
    /// Bytes `[align_down(end), end)`.
    tail_block: Vec<u8>,
}

/// The recovery scan in progress. Feed it every segment with `scan_segment`, in order, then
/// call `finish`.
#[derive(Debug)]
pub struct Recovery {
    config: WalConfig,
    alignment: u64,
    segments: Vec<SegmentSeq>,
    scans: Vec<SegmentScan>,
    groups: BTreeMap<GroupId, GroupIndex>,
    last_write_number: Option<u64>,
    record_count: u64,
    bytes_scanned: u64,
}

impl Recovery {
    /// Starts recovery of the listed segments (any order; they must be contiguous).
    pub fn new(
        config: WalConfig,
        alignment: usize,
        mut segments: Vec<SegmentSeq>,
    ) -> Result<Recovery, LogError> {
        config.validate(alignment)?;
        segments.sort_unstable();
        segments.dedup();
        for pair in segments.windows(2) {
            if pair[1] != pair[0].next() {
                return Err(LogError::MissingSegment {
                    previous: pair[0],
                    expected: pair[0].next(),
                    found: pair[1],
                });
            }
        }
        Ok(Recovery {
            config,
            alignment: alignment as u64,
            segments,
            scans: Vec::new(),
            groups: BTreeMap::new(),
            last_write_number: None,
            record_count: 0,
            bytes_scanned: 0,
        })
    }

    /// The segments to scan, in the order `scan_segment` expects them.
    pub fn segments(&self) -> &[SegmentSeq] {
        &self.segments
    }

    /// Scans the whole contents of the next segment.
    pub fn scan_segment(&mut self, seq: SegmentSeq, bytes: &[u8]) -> Result<(), LogError> {
        let expected = self.segments.get(self.scans.len()).copied();
        assert!(
            expected == Some(seq),
            "scan_segment: got segment {seq}, expected {expected:?}"
        );
        if bytes.len() as u64 != self.config.segment_bytes {
            return Err(LogError::corrupt(
                seq,
                bytes.len() as u64,
                format!(
                    "segment is {} bytes, configured segments are {}",
                    bytes.len(),
                    self.config.segment_bytes
                ),
            ));
        }
        self.bytes_scanned += bytes.len() as u64;
        let mut scan = SegmentScan {
            seq,
            header: record::decode_segment_header(bytes, seq, self.config.segment_bytes),
            batch_count: 0,
            first_batch: None,
            end: WAL_HEADER_BLOCK_BYTES,
            stop: None,
            remnant_end: None,
            later_batch: None,
            tail_block: Vec::new(),
        };
        loop {
            match scan_batch(bytes, seq, scan.end) {
                Ok((header, records)) => {
                    self.check_batch(&scan, header)?;
                    self.apply(&records);
                    scan.first_batch.get_or_insert(header);
                    scan.batch_count += 1;
                    scan.end += header.batch_bytes;
                }
                Err(stop) => {
                    scan.stop = Some(stop);
                    break;
                }
            }
        }
        scan_after_end(bytes, &mut scan);
        let tail_start = align_down(scan.end, self.alignment) as usize;
        scan.tail_block = bytes
            .get(tail_start..scan.end as usize)
            .unwrap_or_default()
            .to_vec();
        self.scans.push(scan);
        Ok(())
    }

    /// Checks a complete batch against what came before: the first batch of a segment says
    /// where the previous segment's records end (checked first, so that a segment cut short is
    /// named as such), and write numbers follow each other.
    fn check_batch(&mut self, scan: &SegmentScan, header: BatchHeader) -> Result<(), LogError> {
        if scan.batch_count == 0
            && let Some(previous) = self.scans.last()
            && previous.end != header.previous_segment_end
        {
            let (offset, reason) = match &previous.stop {
                Some(stop) if previous.end < header.previous_segment_end => {
                    (stop.offset, stop.reason.clone())
                }
                _ => (
                    previous.end,
                    "records continue past the recorded end".to_string(),
                ),
            };
            return Err(LogError::corrupt(
                previous.seq,
                offset,
                format!(
                    "{reason}; the segment's records end at {} but segment {} says they end at {}",
                    previous.end, scan.seq, header.previous_segment_end
                ),
            ));
        }
        if let Some(last) = self.last_write_number
            && header.write_number != last + 1
        {
            return Err(LogError::corrupt(
                scan.seq,
                scan.end,
                format!(
                    "batch has write number {}, expected {} (a batch is missing or stale)",
                    header.write_number,
                    last + 1
                ),
            ));
        }
        self.last_write_number = Some(header.write_number);
        Ok(())
    }

    fn apply(&mut self, records: &[(RecordView<'_>, Location)]) {
        self.record_count += records.len() as u64 + 1;
        for (view, location) in records {
            match view {
                RecordView::Batch(_) => {}
                RecordView::Entry { group, id, .. } => {
                    self.groups
                        .entry(*group)
                        .or_default()
                        .append(*id, *location);
                }
                RecordView::HardState { group, hard_state } => {
                    self.groups
                        .entry(*group)
                        .or_default()
                        .set_hard_state(*hard_state, location.segment);
                }
                RecordView::SnapshotMark { group, snapshot } => {
                    self.groups
                        .entry(*group)
                        .or_default()
                        .set_snapshot(snapshot.clone(), location.segment);
                }
            }
        }
    }

    /// Classifies the segments, refuses corruption, and builds the planner.
    pub fn finish<B: AsMut<[u8]>>(
        self,
        mut alloc: impl FnMut(usize) -> B,
    ) -> Result<Recovered<B>, LogError> {
        assert!(
            self.scans.len() == self.segments.len() && !self.scans.is_empty(),
            "finish: scanned {} of {} segments",
            self.scans.len(),
            self.segments.len()
        );
        let active_position = self
            .scans
            .iter()
            .rposition(|scan| scan.batch_count > 0)
            .unwrap_or(0);
        for (position, scan) in self.scans.iter().enumerate() {
            check_scan(scan, position.cmp(&active_position))?;
        }
        let active = &self.scans[active_position];
        let torn_tail = find_torn_tail(&self.scans[active_position..]);
        let mut wal = Wal {
            config: self.config,
            alignment: self.alignment,
            groups: self.groups,
            sealed: self.segments[..active_position].iter().copied().collect(),
            active: active.seq,
            tail_offset: active.end,
            tail_block: active.tail_block.clone(),
            previous_segment_end: active
                .first_batch
                .map_or(0, |batch| batch.previous_segment_end),
            spares: self.segments[active_position + 1..]
                .iter()
                .copied()
                .collect(),
            filling: None,
            next_write_number: self.last_write_number.map_or(1, |last| last + 1),
        };
        let (repair, reinitialised_segments) =
            repair_ops(&wal, &self.scans[active_position..], &mut alloc);
        wal.groups.retain(|_, index| {
            index.entry_count() > 0 || index.hard_state().is_some() || index.snapshot().is_some()
        });
        let summary = RecoverySummary {
            segment_count: self.scans.len(),
            batch_count: self.scans.iter().map(|scan| scan.batch_count).sum(),
            record_count: self.record_count,
            bytes_scanned: self.bytes_scanned,
            group_count: wal.groups.len(),
            torn_tail,
            reinitialised_segments,
            position: wal.position(),
        };
        Ok(Recovered {
            wal,
            repair,
            summary,
        })
    }
}

/// The first torn write at or after the active segment: it is cut, not refused.
/// Not logged here: the caller logs it with node, core and the time recovery took.
fn find_torn_tail(scans: &[SegmentScan]) -> Option<TornTail> {
    scans
        .iter()
        .find(|scan| scan.remnant_end.is_some())
        .map(|scan| TornTail {
            segment: scan.seq,
            offset: scan.end,
            reason: scan.stop.as_ref().map_or_else(String::new, |stop| {
                format!("at {}: {}", stop.offset, stop.reason)
            }),
        })
}

/// Repairs for the active segment and the spares: a header written again where a crash
/// interrupted a spare's initialisation, and the remains of a torn write zeroed. Returns the
/// operations and how many headers are rewritten.
fn repair_ops<B: AsMut<[u8]>>(
    wal: &Wal,
    scans: &[SegmentScan],
    alloc: &mut impl FnMut(usize) -> B,
) -> (Vec<WalOp<B>>, usize) {
    let mut repair = Vec::new();
    let mut reinitialised_segments = 0;
    for scan in scans {
        let mut dirty = false;
        if scan.header.is_err() {
            repair.push(wal.header_write(scan.seq, &mut *alloc));
            reinitialised_segments += 1;
            dirty = true;
        }
        if let Some(remnant_end) = scan.remnant_end {
            repair.push(zero_remnants(scan, remnant_end, wal.alignment, &mut *alloc));
            dirty = true;
        }
        if dirty {
            repair.push(WalOp::Sync { segment: scan.seq });
        }
    }
    (repair, reinitialised_segments)
}

/// A write that keeps the bytes before `scan.end` in its block and zeroes everything up to
/// the end of the torn write's last surviving record, so that those records never count again.
fn zero_remnants<B: AsMut<[u8]>>(
    scan: &SegmentScan,
    remnant_end: u64,
    alignment: u64,
    alloc: &mut impl FnMut(usize) -> B,
) -> WalOp<B> {
    let offset = align_down(scan.end, alignment);
    let len = (record::align_up(remnant_end, alignment) - offset) as usize;
    let mut buffer = alloc(len);
    let out = buffer.as_mut();
    assert!(
        out.len() == len && scan.tail_block.len() as u64 == scan.end - offset,
        "zero_remnants: buffer {} for {len}, tail block {} for {}..{}",
        out.len(),
        scan.tail_block.len(),
        offset,
        scan.end
    );
    out[..scan.tail_block.len()].copy_from_slice(&scan.tail_block);
    out[scan.tail_block.len()..].fill(0);
    WalOp::Write {
        segment: scan.seq,
        offset,
        buffer,
    }
}

/// Checks one segment against its place: before the active one (sealed), the active one, or
/// after it (spare).
fn check_scan(scan: &SegmentScan, place: std::cmp::Ordering) -> Result<(), LogError> {
    let stop_offset = scan.stop.as_ref().map_or(scan.end, |stop| stop.offset);
    let stop_reason = scan
        .stop
        .as_ref()
        .map_or_else(String::new, |stop| stop.reason.clone());
    if let Some(later) = scan.later_batch {
        return Err(LogError::corrupt(
            scan.seq,
            stop_offset,
            format!("{stop_reason}; yet a later batch follows at offset {later}"),
        ));
    }
    if let Err(error) = &scan.header
        && scan.batch_count > 0
    {
        return Err(LogError::corrupt(
            scan.seq,
            0,
            format!("segment header is damaged ({error}) but the segment holds records"),
        ));
    }
    if place == std::cmp::Ordering::Less && scan.batch_count == 0 {
        return Err(LogError::corrupt(
            scan.seq,
            stop_offset,
            format!("{stop_reason}; this segment holds no records but a later one does"),
        ));
    }
    Ok(())
}

/// Decodes the batch at `offset` with all its records, or says why it is not complete.
fn scan_batch(
    bytes: &[u8],
    seq: SegmentSeq,
    offset: u64,
) -> Result<(BatchHeader, Vec<(RecordView<'_>, Location)>), Stop> {
    let stop = |at: u64, reason: String| Stop { offset: at, reason };
    let slice = |at: u64| bytes.get(at as usize..).unwrap_or_default();
    let (view, header_bytes) = record::decode(slice(offset), seq, offset)
        .map_err(|error| stop(offset, error.to_string()))?;
    let RecordView::Batch(header) = view else {
        return Err(stop(
            offset,
            format!("expected a batch header, found {view:?}"),
        ));
    };
    let end = offset.checked_add(header.batch_bytes);
    if header.batch_bytes < header_bytes as u64
        || header.batch_bytes % RECORD_ALIGN_BYTES as u64 != 0
        || end.is_none_or(|end| end > bytes.len() as u64)
    {
        return Err(stop(
            offset,
            format!("batch length {} is impossible", header.batch_bytes),
        ));
    }
    let end = offset + header.batch_bytes;
    let mut records = Vec::new();
    let mut at = offset + header_bytes as u64;
    for _ in 0..header.record_count {
        if at >= end {
            return Err(stop(at, "batch ends before its last record".to_string()));
        }
        let (view, used) = record::decode(slice(at), seq, at).map_err(|error| {
            stop(
                at,
                format!("record of batch {}: {error}", header.write_number),
            )
        })?;
        if matches!(view, RecordView::Batch(_)) {
            return Err(stop(at, "batch header inside a batch".to_string()));
        }
        records.push((
            view,
            Location {
                segment: seq,
                offset: at,
                record_bytes: used as u32,
            },
        ));
        at += used as u64;
    }
    if at != end {
        return Err(stop(
            at,
            format!("batch records end at {at}, its header says {end}"),
        ));
    }
    Ok((header, records))
}

/// Looks at every record position from `scan.end` to the end of the segment for valid
/// records of this segment: remains of a torn write, or a later batch (corruption).
fn scan_after_end(bytes: &[u8], scan: &mut SegmentScan) {
    let mut at = scan.end as usize;
    while at + RECORD_HEADER_BYTES <= bytes.len() {
        let rest = bytes.get(at..).unwrap_or_default();
        let zero_header = rest
            .get(..RECORD_HEADER_BYTES)
            .is_some_and(|header| header.iter().all(|&b| b == 0));
        if !zero_header && let Ok((view, used)) = record::decode(rest, scan.seq, at as u64) {
            match view {
                RecordView::Batch(_) if at as u64 > scan.end => {
                    scan.later_batch = Some(at as u64);
                    return;
                }
                _ => scan.remnant_end = Some((at + used) as u64),
            }
        }
        at += RECORD_ALIGN_BYTES;
    }
}
