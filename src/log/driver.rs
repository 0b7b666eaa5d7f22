//! The async driver: runs the planner's operations against any `Disk`, so the simulator and
//! the reactor share one code path. `Log` owns a `Disk` and a `Wal` and offers open (create or
//! recover), append (write then sync, returning the durable position), fetch, compact, purge
//! and spare preparation (in place, or by a caller that creates the file beside the appends).
//!
//! It decides nothing the planner does not: it only executes plans in order, one at a time,
//! and turns disk errors into `LogError`. A failed write or sync is returned to the caller,
//! which must treat it as fatal (DESIGN §6); the driver never retries.

use crate::constants::WAL_RECOVERY_READ_BYTES;
use crate::ids::{GroupId, LogIndex};
use crate::log::LogError;
use crate::log::disk::{Disk, DiskError, SegmentSeq};
use crate::log::recovery::{Recovery, RecoverySummary, RestoredGroup};
use crate::log::wal::{Wal, WalConfig, WalOp, WalPosition};
use crate::raft::types::{Entry, Fetch, Persist};

/// One core's WAL on a `Disk`.
pub struct Log<D: Disk> {
    disk: D,
    wal: Wal,
}

impl<D: Disk> Log<D> {
    /// Opens the WAL on `disk`: creates it if the directory holds no segment, otherwise
    /// recovers it (reading every segment once), repairs interrupted spares, and prepares
    /// spares. Corruption refuses to open, naming file and offset.
    pub async fn open(disk: D, config: WalConfig) -> Result<(Log<D>, RecoverySummary), LogError> {
        let alignment = disk.alignment();
        config.validate(alignment)?;
        let segments = disk.list_segments().await?;
        let (wal, ops, summary) = if segments.is_empty() {
            let (wal, ops) = Wal::create(config, alignment, |len| disk.alloc(len))?;
            let summary = RecoverySummary {
                position: wal.position(),
                ..RecoverySummary::default()
            };
            (wal, ops, summary)
        } else {
            let recovered = recover(&disk, config, segments).await?;
            (recovered.wal, recovered.repair, recovered.summary)
        };
        let mut log = Log { disk, wal };
        log.execute(ops).await?;
        log.prepare_spares().await?;
        Ok((log, summary))
    }

    pub fn disk(&self) -> &D {
        &self.disk
    }

    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The groups the WAL holds anything of.
    pub fn group_ids(&self) -> Vec<GroupId> {
        self.wal.group_ids().collect()
    }

    /// What `group` needs to restart.
    pub fn restored(&self, group: GroupId) -> Option<RestoredGroup> {
        self.wal.restored(group)
    }

    /// Appends many groups' persists as one write and one sync (more only when a segment
    /// fills), and returns the position that is now durable. An append that fills a segment
    /// moves into a ready spare; call `prepare_spares` off the latency path when
    /// `spares_short()` says so (an append with no spare ready creates one itself, slowly).
    pub async fn append(&mut self, batch: &[(GroupId, &Persist)]) -> Result<WalPosition, LogError> {
        let disk = &self.disk;
        let plan = self.wal.plan_append(batch, |len| disk.alloc(len))?;
        let position = plan.position;
        self.execute(plan.ops).await?;
        Ok(position)
    }

    /// Reads entries `first..=last` of `group` back (up to about `bytes_max` bytes, at least
    /// one entry): the answer to the Raft core's `Ready::fetch`.
    pub async fn fetch(
        &self,
        group: GroupId,
        first: LogIndex,
        last: LogIndex,
        bytes_max: u64,
    ) -> Result<Vec<Entry>, LogError> {
        let plan = self.wal.plan_fetch(group, first, last, bytes_max)?;
        let mut buffers = Vec::with_capacity(plan.reads.len());
        for read in &plan.reads {
            buffers.push(self.disk.read(read.segment, read.offset, read.len).await?);
        }
        self.wal
            .decode_fetch(&plan, &buffers)
            .map_err(|error| self.name_file(error))
    }

    /// Answers a Raft core's `Ready::fetch` for `group`.
    pub async fn fetch_for(&self, group: GroupId, fetch: &Fetch) -> Result<Vec<Entry>, LogError> {
        self.fetch(group, fetch.first, fetch.last, fetch.bytes_max)
            .await
    }

    /// Whether fewer spare segments are ready than configured.
    pub fn spares_short(&self) -> bool {
        self.wal.spares_short()
    }

    /// Marks entries of `group` up to `index` as no longer needed (folded into a snapshot the
    /// caller keeps). Compaction points are not written to the WAL: after a restart the caller
    /// calls `compact` again with each group's snapshot index, before appending. A point past
    /// the WAL's last index (purge recycled every entry of that group) becomes its last index.
    pub fn compact(&mut self, group: GroupId, index: LogIndex) {
        self.wal.compact(group, index);
    }

    /// Frees every sealed segment that holds nothing live, then creates the spares still
    /// short. Hard states and snapshot marks that alone keep an old segment alive are
    /// appended again first. Returns the segments freed.
    pub async fn purge(&mut self) -> Result<usize, LogError> {
        let freed = self.release_freed().await?;
        self.prepare_spares().await?;
        Ok(freed)
    }

    /// `purge` without creating spares afterwards: freed segments are recycled into spares
    /// that are short (unless one is reserved, see `reserve_spare`) or removed. Returns the
    /// segments freed.
    pub async fn release_freed(&mut self) -> Result<usize, LogError> {
        let rewrites = self.wal.states_to_rewrite();
        if !rewrites.is_empty() {
            let batch: Vec<(GroupId, &Persist)> = rewrites
                .iter()
                .map(|(group, persist)| (*group, persist))
                .collect();
            self.append(&batch).await?;
        }
        let before = self.wal.segments().len() - self.wal.spares.len();
        let disk = &self.disk;
        let ops = self.wal.plan_purge(|len| disk.alloc(len));
        self.execute(ops).await?;
        let after = self.wal.segments().len() - self.wal.spares.len();
        Ok(before - after)
    }

    /// Creates spare segments until the configured number are ready. Cheap when they are;
    /// call it off the latency path after appends that rolled into a new segment.
    pub async fn prepare_spares(&mut self) -> Result<(), LogError> {
        let disk = &self.disk;
        let ops = self.wal.plan_spares(|len| disk.alloc(len));
        self.execute(ops).await
    }

    /// Reserves the next spare segment for the caller to create beside the appends, with
    /// `Disk::create_segment(seq, size_bytes)` on a handle of this log's disk, then hand to
    /// `adopt_spare`. Returns `(seq, size_bytes)`, or `None` when no spare is short or one
    /// is reserved already. Until then an append that needs that segment fails with
    /// `LogError::SpareNotReady` and writes nothing.
    pub fn reserve_spare(&mut self) -> Option<(SegmentSeq, u64)> {
        let segment = self.wal.reserve_spare()?;
        Some((segment, self.wal.config().segment_bytes))
    }

    /// The reserved spare `seq` was created (`created` says how it went): writes its header
    /// and makes it ready. On a failed creation the reservation is released and the error
    /// returned; a later `prepare_spares` or append creates the segment itself.
    pub async fn adopt_spare(
        &mut self,
        seq: SegmentSeq,
        created: Result<(), DiskError>,
    ) -> Result<(), LogError> {
        if let Err(error) = created {
            self.wal.release_spare(seq);
            return Err(error.into());
        }
        let disk = &self.disk;
        let ops = self.wal.adopt_spare_ops(seq, |len| disk.alloc(len));
        self.execute(ops).await
    }

    /// Runs an append's plan but stops before its sync number `syncs_to_run` (counting from
    /// zero), as a crash in the middle of the append would; returns how many syncs the plan
    /// had. The caller then crashes the disk.
    #[cfg(test)]
    pub(crate) async fn append_interrupted(
        &mut self,
        batch: &[(GroupId, &Persist)],
        syncs_to_run: usize,
    ) -> Result<usize, LogError> {
        let disk = &self.disk;
        let plan = self.wal.plan_append(batch, |len| disk.alloc(len))?;
        let sync_count = plan
            .ops
            .iter()
            .filter(|op| matches!(op, WalOp::Sync { .. }))
            .count();
        let mut syncs_run = 0;
        let mut ops = Vec::new();
        for op in plan.ops {
            if matches!(op, WalOp::Sync { .. }) {
                if syncs_run == syncs_to_run {
                    break;
                }
                syncs_run += 1;
            }
            ops.push(op);
        }
        self.execute(ops).await?;
        Ok(sync_count)
    }

    /// Runs operations in order; stops at the first failure.
    async fn execute(&self, ops: Vec<WalOp<D::Buffer>>) -> Result<(), LogError> {
        for op in ops {
            match op {
                WalOp::Create {
                    segment,
                    size_bytes,
                } => self.disk.create_segment(segment, size_bytes).await?,
                WalOp::Recycle { from, to } => self.disk.recycle(from, to).await?,
                WalOp::Remove { segment } => self.disk.remove(segment).await?,
                WalOp::Write {
                    segment,
                    offset,
                    buffer,
                } => self.disk.write(segment, offset, buffer).await?,
                WalOp::Sync { segment } => self.disk.sync(segment).await?,
            }
        }
        Ok(())
    }

    fn name_file(&self, error: LogError) -> LogError {
        name_file(&self.disk, error)
    }
}

/// Replaces the bare file name in a corruption error with the disk's full path.
fn name_file<D: Disk>(disk: &D, error: LogError) -> LogError {
    match error {
        LogError::Corrupt {
            segment,
            offset,
            reason,
            ..
        } => LogError::Corrupt {
            file: disk.segment_path(segment),
            segment,
            offset,
            reason,
        },
        other => other,
    }
}

/// Reads every segment once, in chunks, and runs the recovery scan over it.
async fn recover<D: Disk>(
    disk: &D,
    config: WalConfig,
    segments: Vec<SegmentSeq>,
) -> Result<crate::log::recovery::Recovered<D::Buffer>, LogError> {
    let mut recovery = Recovery::new(config, disk.alignment(), segments)?;
    let order = recovery.segments().to_vec();
    let mut bytes = Vec::with_capacity(config.segment_bytes as usize);
    for seq in order {
        bytes.clear();
        let mut offset = 0u64;
        while offset < config.segment_bytes {
            let len = WAL_RECOVERY_READ_BYTES.min(config.segment_bytes - offset);
            let chunk = disk.read(seq, offset, len as usize).await?;
            bytes.extend_from_slice(chunk.as_ref());
            offset += len;
        }
        recovery
            .scan_segment(seq, &bytes)
            .map_err(|error| name_file(disk, error))?;
    }
    recovery
        .finish(|len| disk.alloc(len))
        .map_err(|error| name_file(disk, error))
}
