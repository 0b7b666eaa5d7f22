//! The WAL planner: given many groups' `Persist`s, it packs their records into aligned write
//! buffers and returns the operations to execute (write, sync, create, recycle, remove); it
//! keeps each group's index, plans fetch reads and decodes them, and decides which segments
//! purge may recycle.
//!
//! It performs no I/O and never waits: a `Disk`, through `driver.rs`, executes its plans, in
//! order, one plan at a time. The index is updated when a write is planned; a failed write or
//! sync is fatal (DESIGN §6), so there is nothing to roll back.
//!
//! Executors must not overlap writes: a write is issued only after every earlier write's sync
//! has returned. Recovery relies on it to tell a torn tail (only the last write can be damaged)
//! from corruption (damage followed by a later write).

use std::collections::{BTreeMap, VecDeque};

use crate::constants::{
    WAL_HEADER_BLOCK_BYTES, WAL_READ_BYTES_MAX, WAL_SEGMENT_BYTES_DEFAULT, WAL_SEGMENT_BYTES_MAX,
    WAL_SEGMENT_BYTES_MIN, WAL_SPARE_SEGMENTS_DEFAULT,
};
use crate::ids::{EntryId, GroupId, LogIndex};
use crate::log::LogError;
use crate::log::disk::SegmentSeq;
use crate::log::index::{GroupIndex, Location};
use crate::log::record::{
    self, BatchHeader, RecordRef, RecordView, align_down, align_up, encode_segment_header,
};
use crate::raft::types::{Entry, Persist};

/// How the WAL lays out its segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Bytes of every segment file; a multiple of `WAL_HEADER_BLOCK_BYTES`.
    pub segment_bytes: u64,
    /// Zero-filled segments kept ready beyond the one being written.
    pub spare_segments: usize,
}

impl Default for WalConfig {
    fn default() -> WalConfig {
        WalConfig {
            segment_bytes: WAL_SEGMENT_BYTES_DEFAULT,
            spare_segments: WAL_SPARE_SEGMENTS_DEFAULT,
        }
    }
}

impl WalConfig {
    /// Checks the configuration against the limits and the disk's alignment.
    pub fn validate(&self, alignment: usize) -> Result<(), LogError> {
        let alignment = alignment as u64;
        if !alignment.is_power_of_two() || !(8..=WAL_HEADER_BLOCK_BYTES).contains(&alignment) {
            return Err(LogError::BadConfig(format!(
                "disk alignment {alignment} must be a power of two in 8..={WAL_HEADER_BLOCK_BYTES}"
            )));
        }
        if self.segment_bytes < WAL_SEGMENT_BYTES_MIN
            || self.segment_bytes > WAL_SEGMENT_BYTES_MAX
            || !self.segment_bytes.is_multiple_of(WAL_HEADER_BLOCK_BYTES)
        {
            return Err(LogError::BadConfig(format!(
                "segment_bytes {} must be a multiple of {WAL_HEADER_BLOCK_BYTES} in \
                 {WAL_SEGMENT_BYTES_MIN}..={WAL_SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        Ok(())
    }

    /// Bytes of a segment available to records.
    pub fn record_capacity_bytes(&self) -> u64 {
        self.segment_bytes - WAL_HEADER_BLOCK_BYTES
    }
}

/// One step of a plan, executed in order by the driver.
#[derive(Debug)]
pub enum WalOp<B> {
    /// Create a zero-filled segment (durable with its name).
    Create {
        segment: SegmentSeq,
        size_bytes: u64,
    },
    /// Rename a freed segment to a new, higher sequence number.
    Recycle {
        from: SegmentSeq,
        to: SegmentSeq,
    },
    Remove {
        segment: SegmentSeq,
    },
    Write {
        segment: SegmentSeq,
        offset: u64,
        buffer: B,
    },
    Sync {
        segment: SegmentSeq,
    },
}

/// A position in the WAL: the end of the `write_number`th write. Ordered by write number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition {
    pub write_number: u64,
    pub segment: SegmentSeq,
    pub offset: u64,
}

/// The operations of one append and the position they reach once all have run.
#[derive(Debug)]
pub struct AppendPlan<B> {
    pub ops: Vec<WalOp<B>>,
    pub position: WalPosition,
    pub record_count: usize,
    /// Bytes of records appended (the writes themselves cover whole blocks).
    pub record_bytes: u64,
}

/// One aligned read of a fetch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadOp {
    pub segment: SegmentSeq,
    pub offset: u64,
    pub len: usize,
}

/// The reads that bring a range of one group's entries back, and where each entry sits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchPlan {
    pub group: GroupId,
    pub reads: Vec<ReadOp>,
    entries: Vec<(EntryId, Location, usize)>,
}

/// The planner's whole state.
#[derive(Debug)]
pub struct Wal {
    pub(crate) config: WalConfig,
    pub(crate) alignment: u64,
    pub(crate) groups: BTreeMap<GroupId, GroupIndex>,
    /// Segments before `active`, oldest first, contiguous.
    pub(crate) sealed: VecDeque<SegmentSeq>,
    /// The segment appends go to.
    pub(crate) active: SegmentSeq,
    /// Where the next batch starts in `active`; a multiple of 8.
    pub(crate) tail_offset: u64,
    /// The bytes `[align_down(tail_offset), tail_offset)` of `active`, re-emitted by the next
    /// write so that it starts on a block boundary.
    pub(crate) tail_block: Vec<u8>,
    /// Where records of the segment before `active` end (0 if there is none); written in the
    /// first batch of `active`.
    pub(crate) previous_segment_end: u64,
    /// Initialised segments after `active`, in order: `active + 1`, `active + 2`, ...
    pub(crate) spares: VecDeque<SegmentSeq>,
    /// The segment after the last spare, reserved for a caller that creates it beside the
    /// appends (`reserve_spare`) until it is adopted (`adopt_spare_ops`).
    pub(crate) filling: Option<SegmentSeq>,
    /// The write number of the next batch.
    pub(crate) next_write_number: u64,
}

/// One group's records of one append, ready to encode.
struct Chunk<'a> {
    records: Vec<RecordRef<'a>>,
    bytes: u64,
}

/// The chunks that go into one segment write.
struct PlannedBatch {
    segment: SegmentSeq,
    start: u64,
    chunks: Vec<usize>,
    bytes: u64,
    record_count: u32,
}

const BATCH_HEADER_BYTES: u64 = 48;
const _: () = assert!(BATCH_HEADER_BYTES as usize == record::RECORD_HEADER_BYTES + 32);

impl Wal {
    /// A planner for an empty WAL whose first segment, `SegmentSeq::FIRST`, is yet to be
    /// created; returns it with the operations that create and initialise that segment.
    pub fn create<B: AsMut<[u8]>>(
        config: WalConfig,
        alignment: usize,
        alloc: impl FnMut(usize) -> B,
    ) -> Result<(Wal, Vec<WalOp<B>>), LogError> {
        config.validate(alignment)?;
        let wal = Wal {
            config,
            alignment: alignment as u64,
            groups: BTreeMap::new(),
            sealed: VecDeque::new(),
            active: SegmentSeq::FIRST,
            tail_offset: WAL_HEADER_BLOCK_BYTES,
            tail_block: Vec::new(),
            previous_segment_end: 0,
            spares: VecDeque::new(),
            filling: None,
            next_write_number: 1,
        };
        let ops = wal.initialise_segment_ops(SegmentSeq::FIRST, None, alloc);
        Ok((wal, ops))
    }

    pub fn config(&self) -> WalConfig {
        self.config
    }

    pub fn alignment(&self) -> usize {
        self.alignment as usize
    }

    /// The segment appends go to.
    pub fn active_segment(&self) -> SegmentSeq {
        self.active
    }

    /// Every segment the WAL holds, oldest first: sealed, active, spares.
    pub fn segments(&self) -> Vec<SegmentSeq> {
        let mut all: Vec<SegmentSeq> = self.sealed.iter().copied().collect();
        all.push(self.active);
        all.extend(self.spares.iter().copied());
        all
    }

    /// The position the last planned write reaches.
    pub fn position(&self) -> WalPosition {
        WalPosition {
            write_number: self.next_write_number - 1,
            segment: self.active,
            offset: self.tail_offset,
        }
    }

    pub fn group(&self, group: GroupId) -> Option<&GroupIndex> {
        self.groups.get(&group)
    }

    pub fn group_ids(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.groups.keys().copied()
    }

    /// Plans one append of many groups' `Persist`s: normally one write to the active segment
    /// and one sync. If the active segment is full the append continues in the next segment
    /// (write, sync, then write, sync, so a later segment never holds data while an earlier
    /// one may still tear). One group's records of one append never span segments.
    pub fn plan_append<B: AsMut<[u8]>>(
        &mut self,
        batch: &[(GroupId, &Persist)],
        mut alloc: impl FnMut(usize) -> B,
    ) -> Result<AppendPlan<B>, LogError> {
        let chunks = self.chunks(batch)?;
        let planned = self.partition(&chunks);
        // Segments past the spares would be created here; the one reserved for a caller
        // filling it must be adopted first (nothing has changed yet).
        if let (Some(last), Some(segment)) = (planned.last(), self.filling) {
            let needed = last.segment.0 - self.active.0;
            if needed > self.spares.len() as u64 {
                return Err(LogError::SpareNotReady { segment });
            }
        }
        let mut ops = Vec::new();
        let mut record_count = 0usize;
        let mut record_bytes = 0u64;
        for batch in &planned {
            if batch.segment != self.active {
                self.roll(batch.segment, &mut ops, &mut alloc);
            }
            record_count += batch.record_count as usize + 1;
            record_bytes += batch.bytes;
            let (offset, buffer) = self.encode_batch(batch, &chunks, &mut alloc);
            ops.push(WalOp::Write {
                segment: batch.segment,
                offset,
                buffer,
            });
            ops.push(WalOp::Sync {
                segment: batch.segment,
            });
        }
        Ok(AppendPlan {
            ops,
            position: self.position(),
            record_count,
            record_bytes,
        })
    }

    /// Validates and sizes each group's records: snapshot mark, then entries, then hard
    /// state, so the index replays them in the order the Raft core produced them.
    fn chunks<'a>(&self, batch: &'a [(GroupId, &'a Persist)]) -> Result<Vec<Chunk<'a>>, LogError> {
        let mut chunks = Vec::with_capacity(batch.len());
        for (group, persist) in batch {
            let records = persist_records(*group, persist);
            if records.is_empty() {
                continue;
            }
            self.check_contiguous(*group, persist);
            let mut bytes = 0u64;
            for record in &records {
                record::check_encodable(record).map_err(|reason| LogError::RecordTooLarge {
                    group: *group,
                    reason,
                })?;
                bytes += record::encoded_bytes(record) as u64;
            }
            let capacity = self.config.record_capacity_bytes();
            if bytes + BATCH_HEADER_BYTES > capacity {
                return Err(LogError::PersistTooLarge {
                    group: *group,
                    bytes,
                    capacity,
                });
            }
            chunks.push(Chunk { records, bytes });
        }
        Ok(chunks)
    }

    /// Entries of one persist must be consecutive and must continue the group's log (an
    /// index at or below the last one truncates; a gap is a caller bug).
    fn check_contiguous(&self, group: GroupId, persist: &Persist) {
        for pair in persist.entries.windows(2) {
            assert!(
                pair[1].id.index == pair[0].id.index.next(),
                "group {group}: entries {} then {} are not consecutive",
                pair[0].id,
                pair[1].id
            );
        }
        let Some(first) = persist.entries.first() else {
            return;
        };
        let last_index = match &persist.snapshot {
            Some(snapshot) => snapshot.last.index,
            None => self
                .groups
                .get(&group)
                .map_or(LogIndex::ZERO, GroupIndex::last_index),
        };
        let fresh = persist.snapshot.is_none()
            && self
                .groups
                .get(&group)
                .is_none_or(|index| index.last_index() == LogIndex::ZERO);
        assert!(
            fresh || first.id.index <= last_index.next(),
            "group {group}: append starts at {} after last index {last_index} (gap)",
            first.id
        );
    }

    /// Splits the chunks into per-segment batches, filling the active segment first. Only the
    /// last batch is open; a chunk that does not fit it starts a batch in the next segment.
    fn partition(&self, chunks: &[Chunk<'_>]) -> Vec<PlannedBatch> {
        let segment_bytes = self.config.segment_bytes;
        let mut planned: Vec<PlannedBatch> = Vec::new();
        for (position, chunk) in chunks.iter().enumerate() {
            let (segment, start) = match planned.last() {
                Some(batch) if batch.start + batch.bytes + chunk.bytes <= segment_bytes => {
                    (batch.segment, None)
                }
                Some(batch) => (batch.segment.next(), Some(WAL_HEADER_BLOCK_BYTES)),
                None if self.tail_offset + BATCH_HEADER_BYTES + chunk.bytes <= segment_bytes => {
                    (self.active, Some(self.tail_offset))
                }
                None => (self.active.next(), Some(WAL_HEADER_BLOCK_BYTES)),
            };
            if let Some(start) = start {
                planned.push(PlannedBatch {
                    segment,
                    start,
                    chunks: Vec::new(),
                    bytes: BATCH_HEADER_BYTES,
                    record_count: 0,
                });
            }
            let Some(batch) = planned.last_mut() else {
                unreachable!("partition: a batch exists once a chunk is placed");
            };
            batch.chunks.push(position);
            batch.bytes += chunk.bytes;
            batch.record_count += chunk.records.len() as u32;
            assert!(
                batch.start + batch.bytes <= segment_bytes,
                "partition: batch at {}:{} of {} bytes overflows segment of {segment_bytes}",
                batch.segment,
                batch.start,
                batch.bytes
            );
        }
        planned
    }

    /// Moves appends to `segment` (the next one), creating it first if no spare is ready.
    fn roll<B: AsMut<[u8]>>(
        &mut self,
        segment: SegmentSeq,
        ops: &mut Vec<WalOp<B>>,
        alloc: &mut impl FnMut(usize) -> B,
    ) {
        assert!(
            segment == self.active.next(),
            "roll: from {} to {segment}, not the next segment",
            self.active
        );
        match self.spares.pop_front() {
            Some(spare) => assert!(
                spare == segment,
                "roll: next spare is {spare}, expected {segment}"
            ),
            None => ops.extend(self.initialise_segment_ops(segment, None, &mut *alloc)),
        }
        self.sealed.push_back(self.active);
        self.previous_segment_end = self.tail_offset;
        self.active = segment;
        self.tail_offset = WAL_HEADER_BLOCK_BYTES;
        self.tail_block.clear();
    }

    /// Creates (or, with `recycled_from`, renames) a segment and writes and syncs its header.
    pub(crate) fn initialise_segment_ops<B: AsMut<[u8]>>(
        &self,
        segment: SegmentSeq,
        recycled_from: Option<SegmentSeq>,
        mut alloc: impl FnMut(usize) -> B,
    ) -> Vec<WalOp<B>> {
        let mut ops = Vec::with_capacity(3);
        match recycled_from {
            Some(from) => ops.push(WalOp::Recycle { from, to: segment }),
            None => ops.push(WalOp::Create {
                segment,
                size_bytes: self.config.segment_bytes,
            }),
        }
        ops.push(self.header_write(segment, &mut alloc));
        ops.push(WalOp::Sync { segment });
        ops
    }

    pub(crate) fn header_write<B: AsMut<[u8]>>(
        &self,
        segment: SegmentSeq,
        alloc: &mut impl FnMut(usize) -> B,
    ) -> WalOp<B> {
        let mut buffer = alloc(WAL_HEADER_BLOCK_BYTES as usize);
        encode_segment_header(buffer.as_mut(), segment, self.config.segment_bytes);
        WalOp::Write {
            segment,
            offset: 0,
            buffer,
        }
    }

    /// Encodes one batch into a fresh aligned buffer starting with the kept tail block, and
    /// records every record's location in its group's index.
    fn encode_batch<B: AsMut<[u8]>>(
        &mut self,
        batch: &PlannedBatch,
        chunks: &[Chunk<'_>],
        alloc: &mut impl FnMut(usize) -> B,
    ) -> (u64, B) {
        assert!(
            batch.segment == self.active && batch.start == self.tail_offset,
            "encode_batch: batch at {}:{} but tail is {}:{}",
            batch.segment,
            batch.start,
            self.active,
            self.tail_offset
        );
        let write_offset = align_down(batch.start, self.alignment);
        let end = batch.start + batch.bytes;
        let write_len = (align_up(end, self.alignment) - write_offset) as usize;
        let mut buffer = alloc(write_len);
        let out = buffer.as_mut();
        assert!(
            out.len() == write_len,
            "encode_batch: allocator gave {} bytes for {write_len}",
            out.len()
        );
        let prefix = (batch.start - write_offset) as usize;
        assert!(
            self.tail_block.len() == prefix,
            "encode_batch: kept tail block of {} bytes, write starts {prefix} before the tail",
            self.tail_block.len()
        );
        out[..prefix].copy_from_slice(&self.tail_block);
        let header = BatchHeader {
            write_number: self.next_write_number,
            previous_segment_end: if batch.start == WAL_HEADER_BLOCK_BYTES {
                self.previous_segment_end
            } else {
                0
            },
            batch_bytes: batch.bytes,
            record_count: batch.record_count,
        };
        let mut at = prefix;
        at += record::encode(
            &mut out[at..],
            batch.segment,
            batch.start,
            &RecordRef::Batch(header),
        );
        for &position in &batch.chunks {
            let records = &chunks[position].records;
            at = self.encode_records(out, at, batch.segment, write_offset, records);
        }
        assert!(
            write_offset + at as u64 == end,
            "encode_batch: encoded up to {} but the batch ends at {end}",
            write_offset + at as u64
        );
        out[at..].fill(0);
        check_batch_header(out, prefix, batch.segment, batch.start, header);
        let tail_start = (align_down(end, self.alignment) - write_offset) as usize;
        self.tail_block.clear();
        self.tail_block.extend_from_slice(&out[tail_start..at]);
        self.tail_offset = end;
        self.next_write_number += 1;
        (write_offset, buffer)
    }

    /// Encodes `records` into `out` from byte `at` (the write starts at `write_offset` of
    /// `segment`), indexes each, and returns where the next record goes.
    fn encode_records(
        &mut self,
        out: &mut [u8],
        mut at: usize,
        segment: SegmentSeq,
        write_offset: u64,
        records: &[RecordRef<'_>],
    ) -> usize {
        for record in records {
            let offset = write_offset + at as u64;
            let used = record::encode(&mut out[at..], segment, offset, record);
            let location = Location {
                segment,
                offset,
                record_bytes: used as u32,
            };
            self.index_record(record, location);
            at += used;
        }
        at
    }

    fn index_record(&mut self, record: &RecordRef<'_>, location: Location) {
        match record {
            RecordRef::Batch(_) => {}
            RecordRef::Entry(group, entry) => {
                self.groups
                    .entry(*group)
                    .or_default()
                    .append(entry.id, location);
            }
            RecordRef::HardState(group, hard_state) => {
                self.groups
                    .entry(*group)
                    .or_default()
                    .set_hard_state(**hard_state, location.segment);
            }
            RecordRef::SnapshotMark(group, snapshot) => {
                self.groups
                    .entry(*group)
                    .or_default()
                    .set_snapshot((*snapshot).clone(), location.segment);
            }
        }
    }

    /// Plans the reads that bring back entries `first..=last` of `group`, stopping once
    /// `bytes_max` payload bytes are covered (at least one entry is always returned).
    pub fn plan_fetch(
        &self,
        group: GroupId,
        first: LogIndex,
        last: LogIndex,
        bytes_max: u64,
    ) -> Result<FetchPlan, LogError> {
        let out_of_range = || LogError::FetchOutOfRange {
            group,
            first,
            last,
            available: self
                .groups
                .get(&group)
                .map_or("nothing".to_string(), |index| {
                    format!("{:?}..={}", index.first_index(), index.last_index())
                }),
        };
        let index = self.groups.get(&group).ok_or_else(out_of_range)?;
        if first > last || index.get(first).is_none() || index.get(last).is_none() {
            return Err(out_of_range());
        }
        let mut plan = FetchPlan {
            group,
            reads: Vec::new(),
            entries: Vec::new(),
        };
        let mut payload_bytes = 0u64;
        let mut position = first;
        while position <= last {
            let (term, location) = index.get(position).ok_or_else(out_of_range)?;
            let size = u64::from(location.record_bytes);
            if !plan.entries.is_empty() && payload_bytes + size > bytes_max {
                break;
            }
            payload_bytes += size;
            let read = self.cover(&mut plan.reads, location);
            plan.entries
                .push((EntryId::new(term, position), location, read));
            position = position.next();
        }
        Ok(plan)
    }

    /// Extends the last read to cover `location` if it is close enough, or starts a new one;
    /// returns the read's position in `reads`.
    fn cover(&self, reads: &mut Vec<ReadOp>, location: Location) -> usize {
        let start = align_down(location.offset, self.alignment);
        let end = align_up(
            location.offset + u64::from(location.record_bytes),
            self.alignment,
        );
        if let Some(read) = reads.last_mut() {
            let read_end = read.offset + read.len as u64;
            if read.segment == location.segment
                && start >= read.offset
                && start <= read_end
                && end - read.offset <= WAL_READ_BYTES_MAX.max(end - start)
            {
                read.len = (end.max(read_end) - read.offset) as usize;
                return reads.len() - 1;
            }
        }
        reads.push(ReadOp {
            segment: location.segment,
            offset: start,
            len: (end - start) as usize,
        });
        reads.len() - 1
    }

    /// Decodes the entries of `plan` from the bytes its reads returned (one per read, in
    /// order). A record that is not the expected entry is corruption.
    pub fn decode_fetch<R: AsRef<[u8]>>(
        &self,
        plan: &FetchPlan,
        reads: &[R],
    ) -> Result<Vec<Entry>, LogError> {
        assert!(
            reads.len() == plan.reads.len(),
            "decode_fetch: {} buffers for {} reads",
            reads.len(),
            plan.reads.len()
        );
        let mut entries = Vec::with_capacity(plan.entries.len());
        for (id, location, read_position) in &plan.entries {
            let read = plan.reads[*read_position];
            let bytes = reads[*read_position].as_ref();
            let corrupt =
                |reason: String| LogError::corrupt(location.segment, location.offset, reason);
            let start = usize::try_from(location.offset - read.offset)
                .map_err(|_| corrupt("entry offset outside its read".to_string()))?;
            let slice = bytes
                .get(start..)
                .ok_or_else(|| corrupt(format!("read returned {} bytes", bytes.len())))?;
            let (view, _) = record::decode(slice, location.segment, location.offset)
                .map_err(|error| corrupt(format!("entry {id} of group {}: {error}", plan.group)))?;
            match view {
                RecordView::Entry {
                    group, id: found, ..
                } if group == plan.group && found == *id => {
                    entries.extend(view.to_entry());
                }
                other => {
                    return Err(corrupt(format!(
                        "expected entry {id} of group {}, found {other:?}",
                        plan.group
                    )));
                }
            }
        }
        Ok(entries)
    }

    /// Marks entries of `group` up to `index` as no longer needed (folded into a snapshot).
    pub fn compact(&mut self, group: GroupId, index: LogIndex) {
        if index > LogIndex::ZERO {
            self.groups.entry(group).or_default().compact(index);
        }
    }

    /// The first segment that still holds a live entry of some group, or the active one.
    fn entry_bound(&self) -> SegmentSeq {
        self.groups
            .values()
            .filter_map(GroupIndex::first_entry_segment)
            .fold(self.active, SegmentSeq::min)
    }

    /// The hard states and snapshot marks that live in segments purge could otherwise free:
    /// appending them again (as a `Persist` without entries) lets those segments go.
    pub fn states_to_rewrite(&self) -> Vec<(GroupId, Persist)> {
        let bound = self.entry_bound();
        let mut rewrites = Vec::new();
        for (group, index) in &self.groups {
            let (hard_state_segment, snapshot_segment) = index.state_segments();
            let stale = hard_state_segment.is_some_and(|seq| seq < bound)
                || snapshot_segment.is_some_and(|seq| seq < bound);
            if stale {
                rewrites.push((
                    *group,
                    Persist {
                        position: Default::default(),
                        entries: Vec::new(),
                        hard_state: index.hard_state(),
                        snapshot: index.snapshot().cloned(),
                    },
                ));
            }
        }
        rewrites
    }

    /// Plans the release of every sealed segment that holds nothing live: each is recycled into
    /// a spare if spares are short, or removed.
    pub fn plan_purge<B: AsMut<[u8]>>(
        &mut self,
        mut alloc: impl FnMut(usize) -> B,
    ) -> Vec<WalOp<B>> {
        let mut bound = self.entry_bound();
        for index in self.groups.values() {
            let (hard_state_segment, snapshot_segment) = index.state_segments();
            for seq in [hard_state_segment, snapshot_segment].into_iter().flatten() {
                bound = bound.min(seq);
            }
        }
        let mut ops = Vec::new();
        while let Some(&oldest) = self.sealed.front() {
            if oldest >= bound {
                break;
            }
            self.sealed.pop_front();
            // Not while a spare is being filled: it is the next in line.
            if self.filling.is_none() && self.spares.len() < self.config.spare_segments {
                let to = self.next_spare_seq();
                ops.extend(self.initialise_segment_ops(to, Some(oldest), &mut alloc));
                self.spares.push_back(to);
            } else {
                ops.push(WalOp::Remove { segment: oldest });
            }
        }
        ops
    }

    /// Plans the creation of spares until `config.spare_segments` are ready (none while one
    /// is being filled: it comes first).
    pub fn plan_spares<B: AsMut<[u8]>>(
        &mut self,
        mut alloc: impl FnMut(usize) -> B,
    ) -> Vec<WalOp<B>> {
        let mut ops = Vec::new();
        while self.filling.is_none() && self.spares.len() < self.config.spare_segments {
            let segment = self.next_spare_seq();
            ops.extend(self.initialise_segment_ops(segment, None, &mut alloc));
            self.spares.push_back(segment);
        }
        ops
    }

    /// Whether fewer spares are ready or being filled than configured (after an append
    /// rolled into one).
    pub fn spares_short(&self) -> bool {
        self.spares.len() + usize::from(self.filling.is_some()) < self.config.spare_segments
    }

    /// Reserves the next spare for a caller that creates it (`Disk::create_segment`) beside
    /// the appends and then adopts it: returns its number, or `None` if no spare is short
    /// or one is being filled already. Until adopted, an append that needs it fails with
    /// `SpareNotReady` and purge removes freed segments instead of recycling them.
    pub fn reserve_spare(&mut self) -> Option<SegmentSeq> {
        if self.filling.is_some() || !self.spares_short() {
            return None;
        }
        let segment = self.next_spare_seq();
        self.filling = Some(segment);
        Some(segment)
    }

    /// The reserved spare `segment` exists, zero-filled and durable: plans its header and
    /// makes it the last spare.
    pub fn adopt_spare_ops<B: AsMut<[u8]>>(
        &mut self,
        segment: SegmentSeq,
        mut alloc: impl FnMut(usize) -> B,
    ) -> Vec<WalOp<B>> {
        assert_eq!(
            self.filling,
            Some(segment),
            "adopt_spare: segment {segment} is not the one reserved"
        );
        self.filling = None;
        assert_eq!(
            segment,
            self.next_spare_seq(),
            "adopt_spare: segment {segment} does not follow the spares (active {})",
            self.active
        );
        let ops = vec![
            self.header_write(segment, &mut alloc),
            WalOp::Sync { segment },
        ];
        self.spares.push_back(segment);
        ops
    }

    /// Gives up the reservation of a spare whose creation failed.
    pub fn release_spare(&mut self, segment: SegmentSeq) {
        if self.filling == Some(segment) {
            self.filling = None;
        }
    }

    fn next_spare_seq(&self) -> SegmentSeq {
        self.spares.back().copied().unwrap_or(self.active).next()
    }
}

/// The records of one group's `Persist`, in write order.
fn persist_records(group: GroupId, persist: &Persist) -> Vec<RecordRef<'_>> {
    let mut records = Vec::with_capacity(persist.entries.len() + 2);
    if let Some(snapshot) = &persist.snapshot {
        records.push(RecordRef::SnapshotMark(group, snapshot));
    }
    records.extend(
        persist
            .entries
            .iter()
            .map(|entry| RecordRef::Entry(group, entry)),
    );
    if let Some(hard_state) = &persist.hard_state {
        records.push(RecordRef::HardState(group, hard_state));
    }
    records
}

/// Reads back the batch header just encoded: the write's bytes are checked before they leave.
fn check_batch_header(
    out: &[u8],
    at: usize,
    segment: SegmentSeq,
    offset: u64,
    header: BatchHeader,
) {
    let decoded = out
        .get(at..)
        .map(|bytes| record::decode(bytes, segment, offset));
    assert!(
        matches!(decoded, Some(Ok((RecordView::Batch(found), _))) if found == header),
        "encode_batch: batch header at {segment}:{offset} reads back as {decoded:?}"
    );
}
