//! The simulated disk: a deterministic, in-memory `Disk` for tests and the cluster simulator.
//! Each segment keeps its durable bytes and its current (written, maybe unsynced) bytes;
//! `crash()` decides, from the disk's own `Prng`, what each unsynced block becomes: written,
//! lost, or torn (partly new, partly old bytes). Directory operations are durable at once, as
//! the `Disk` contract says.
//!
//! It must not import `reactor/` or glommio, read the clock, or use any randomness other than
//! the seeded `Prng` it is given. `block_on` runs the WAL driver's futures, which never wait
//! on this disk.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::log::disk::{Disk, DiskError, DiskOp, SegmentSeq, segment_file_name};
use crate::prng::Prng;

/// A buffer of the simulated disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimBuffer(pub Vec<u8>);

impl AsRef<[u8]> for SimBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl AsMut<[u8]> for SimBuffer {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

#[derive(Clone, Debug)]
struct SimFile {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Blocks written since the last sync.
    dirty_blocks: BTreeSet<u64>,
}

/// Counts of operations, for tests that check how many writes and syncs an append costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimDiskStats {
    pub writes: u64,
    pub syncs: u64,
    pub reads: u64,
    pub creates: u64,
    pub recycles: u64,
    pub removes: u64,
    pub bytes_written: u64,
}

/// What a crash did, for tests to report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    pub blocks_kept: u64,
    pub blocks_lost: u64,
    pub blocks_torn: u64,
}

#[derive(Debug)]
struct State {
    alignment: usize,
    prng: Prng,
    files: BTreeMap<SegmentSeq, SimFile>,
    stats: SimDiskStats,
    /// Operations that fail the next time they run (fault injection).
    failing: Vec<DiskOp>,
}

/// The simulated disk. Clones share the same files, so a test can keep a handle to crash or
/// corrupt the disk while a `Log` owns another.
#[derive(Clone, Debug)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
}

impl SimDisk {
    /// An empty disk with direct-I/O `alignment` (512 or 4096) whose crashes draw from `prng`.
    pub fn new(prng: Prng, alignment: usize) -> SimDisk {
        assert!(
            alignment == 512 || alignment == 4096,
            "sim disk: alignment {alignment} is neither 512 nor 4096"
        );
        SimDisk {
            state: Rc::new(RefCell::new(State {
                alignment,
                prng,
                files: BTreeMap::new(),
                stats: SimDiskStats::default(),
                failing: Vec::new(),
            })),
        }
    }

    pub fn stats(&self) -> SimDiskStats {
        self.state.borrow().stats
    }

    /// Loses power: every unsynced block independently keeps its new bytes, loses them, or is
    /// torn at a random byte (new bytes before it, old after, or the reverse).
    pub fn crash(&self) -> CrashReport {
        let mut state = self.state.borrow_mut();
        let State {
            alignment,
            prng,
            files,
            ..
        } = &mut *state;
        let block = *alignment;
        let mut report = CrashReport::default();
        for file in files.values_mut() {
            for &block_number in &file.dirty_blocks {
                let start = block_number as usize * block;
                let end = start + block;
                match prng.below(3) {
                    0 => {
                        report.blocks_kept += 1;
                    }
                    1 => {
                        report.blocks_lost += 1;
                        let old = file.durable[start..end].to_vec();
                        file.current[start..end].copy_from_slice(&old);
                    }
                    _ => {
                        report.blocks_torn += 1;
                        let split = start + prng.range_inclusive(1, block as u64 - 1) as usize;
                        let old_first = prng.chance(1, 2);
                        let (old_range, _) = if old_first {
                            (start..split, split..end)
                        } else {
                            (split..end, start..split)
                        };
                        let old = file.durable[old_range.clone()].to_vec();
                        file.current[old_range].copy_from_slice(&old);
                    }
                }
            }
            file.dirty_blocks.clear();
            file.durable = file.current.clone();
        }
        report
    }

    /// Makes the next `op` fail with a `DiskError` (a dying device). The WAL must treat a
    /// failed write or sync as fatal; the simulator then crashes the node.
    pub fn fail_next(&self, op: DiskOp) {
        self.state.borrow_mut().failing.push(op);
    }

    /// Consumes an injected failure of `op`, if one is pending.
    fn injected_failure(&self, op: DiskOp, seq: Option<SegmentSeq>) -> Result<(), DiskError> {
        let mut state = self.state.borrow_mut();
        match state.failing.iter().position(|&failing| failing == op) {
            Some(position) => {
                state.failing.swap_remove(position);
                Err(DiskError::new(op, seq, "injected failure"))
            }
            None => Ok(()),
        }
    }

    /// Flips bits of one durable byte (and its current copy): disk corruption.
    pub fn corrupt(&self, seq: SegmentSeq, offset: u64, xor: u8) {
        assert!(xor != 0, "sim disk: corrupt with xor 0 changes nothing");
        let mut state = self.state.borrow_mut();
        let file = state
            .files
            .get_mut(&seq)
            .unwrap_or_else(|| panic!("sim disk: corrupt of missing segment {seq}"));
        let at = offset as usize;
        assert!(
            at < file.current.len(),
            "sim disk: corrupt at {offset} past segment {seq} of {} bytes",
            file.current.len()
        );
        file.current[at] ^= xor;
        file.durable[at] ^= xor;
    }

    /// The current bytes of a segment, if it exists.
    pub fn contents(&self, seq: SegmentSeq) -> Option<Vec<u8>> {
        self.state
            .borrow()
            .files
            .get(&seq)
            .map(|file| file.current.clone())
    }

    /// Replaces a segment's bytes, durably (to plant old records in tests).
    pub fn set_contents(&self, seq: SegmentSeq, bytes: Vec<u8>) {
        let mut state = self.state.borrow_mut();
        state.files.insert(
            seq,
            SimFile {
                durable: bytes.clone(),
                current: bytes,
                dirty_blocks: BTreeSet::new(),
            },
        );
    }

    fn check_aligned(
        &self,
        op: DiskOp,
        seq: SegmentSeq,
        offset: u64,
        len: usize,
    ) -> Result<(), DiskError> {
        let alignment = self.state.borrow().alignment;
        if !offset.is_multiple_of(alignment as u64) || !len.is_multiple_of(alignment) {
            return Err(DiskError::new(
                op,
                Some(seq),
                format!("offset {offset} or length {len} not aligned to {alignment}"),
            ));
        }
        Ok(())
    }

    fn with_file<T>(
        &self,
        op: DiskOp,
        seq: SegmentSeq,
        action: impl FnOnce(&mut SimFile, &mut SimDiskStats, usize) -> Result<T, String>,
    ) -> Result<T, DiskError> {
        let mut state = self.state.borrow_mut();
        let State {
            files,
            stats,
            alignment,
            ..
        } = &mut *state;
        let file = files
            .get_mut(&seq)
            .ok_or_else(|| DiskError::new(op, Some(seq), "no such segment"))?;
        action(file, stats, *alignment).map_err(|message| DiskError::new(op, Some(seq), message))
    }
}

impl Disk for SimDisk {
    type Buffer = SimBuffer;
    type ReadBuffer = SimBuffer;

    fn alignment(&self) -> usize {
        self.state.borrow().alignment
    }

    fn alloc(&self, len: usize) -> SimBuffer {
        let alignment = self.alignment();
        assert!(
            len.is_multiple_of(alignment),
            "sim disk: buffer of {len} bytes is not a multiple of {alignment}"
        );
        SimBuffer(vec![0xA5; len])
    }

    fn segment_path(&self, seq: SegmentSeq) -> String {
        format!("sim/{}", segment_file_name(seq))
    }

    async fn list_segments(&self) -> Result<Vec<SegmentSeq>, DiskError> {
        self.injected_failure(DiskOp::List, None)?;
        Ok(self.state.borrow().files.keys().copied().collect())
    }

    async fn create_segment(&self, seq: SegmentSeq, size_bytes: u64) -> Result<(), DiskError> {
        self.injected_failure(DiskOp::Create, Some(seq))?;
        let mut state = self.state.borrow_mut();
        if state.files.contains_key(&seq) {
            return Err(DiskError::new(DiskOp::Create, Some(seq), "segment exists"));
        }
        state.stats.creates += 1;
        state.files.insert(
            seq,
            SimFile {
                durable: vec![0; size_bytes as usize],
                current: vec![0; size_bytes as usize],
                dirty_blocks: BTreeSet::new(),
            },
        );
        Ok(())
    }

    async fn write(
        &self,
        seq: SegmentSeq,
        offset: u64,
        buffer: SimBuffer,
    ) -> Result<(), DiskError> {
        self.injected_failure(DiskOp::Write, Some(seq))?;
        self.check_aligned(DiskOp::Write, seq, offset, buffer.0.len())?;
        self.with_file(DiskOp::Write, seq, |file, stats, alignment| {
            let start = offset as usize;
            let end = start + buffer.0.len();
            if end > file.current.len() {
                return Err(format!(
                    "write of {start}..{end} past the end {}",
                    file.current.len()
                ));
            }
            file.current[start..end].copy_from_slice(&buffer.0);
            for block in start / alignment..end / alignment {
                file.dirty_blocks.insert(block as u64);
            }
            stats.writes += 1;
            stats.bytes_written += buffer.0.len() as u64;
            Ok(())
        })
    }

    async fn sync(&self, seq: SegmentSeq) -> Result<(), DiskError> {
        self.injected_failure(DiskOp::Sync, Some(seq))?;
        self.with_file(DiskOp::Sync, seq, |file, stats, alignment| {
            for &block in &file.dirty_blocks {
                let start = block as usize * alignment;
                let end = start + alignment;
                let fresh = file.current[start..end].to_vec();
                file.durable[start..end].copy_from_slice(&fresh);
            }
            file.dirty_blocks.clear();
            stats.syncs += 1;
            Ok(())
        })
    }

    async fn read(&self, seq: SegmentSeq, offset: u64, len: usize) -> Result<SimBuffer, DiskError> {
        self.injected_failure(DiskOp::Read, Some(seq))?;
        self.check_aligned(DiskOp::Read, seq, offset, len)?;
        self.with_file(DiskOp::Read, seq, |file, stats, _| {
            let start = offset as usize;
            let bytes = file
                .current
                .get(start..start + len)
                .ok_or_else(|| format!("read of {len} bytes at {offset} past the end"))?;
            stats.reads += 1;
            Ok(SimBuffer(bytes.to_vec()))
        })
    }

    async fn recycle(&self, from: SegmentSeq, to: SegmentSeq) -> Result<(), DiskError> {
        self.injected_failure(DiskOp::Recycle, Some(from))?;
        let mut state = self.state.borrow_mut();
        if state.files.contains_key(&to) {
            return Err(DiskError::new(
                DiskOp::Recycle,
                Some(to),
                "target segment exists",
            ));
        }
        let file = state
            .files
            .remove(&from)
            .ok_or_else(|| DiskError::new(DiskOp::Recycle, Some(from), "no such segment"))?;
        state.stats.recycles += 1;
        state.files.insert(to, file);
        Ok(())
    }

    async fn remove(&self, seq: SegmentSeq) -> Result<(), DiskError> {
        self.injected_failure(DiskOp::Remove, Some(seq))?;
        let mut state = self.state.borrow_mut();
        state
            .files
            .remove(&seq)
            .ok_or_else(|| DiskError::new(DiskOp::Remove, Some(seq), "no such segment"))?;
        state.stats.removes += 1;
        Ok(())
    }
}

/// Runs a future to completion on this thread. Futures over `SimDisk` never wait, so one
/// poll suffices; a future that returns `Pending` has nothing to wake it, which is a bug.
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut context) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("block_on: a future over the simulated disk returned Pending"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_synced_bytes_and_decides_unsynced_blocks_from_the_seed() {
        // Synced blocks survive a crash unchanged; unsynced ones are kept, lost or torn, and
        // the same seed makes the same choices.
        let run = |seed: u64| {
            let disk = SimDisk::new(Prng::new(seed), 512);
            block_on(disk.create_segment(SegmentSeq(1), 8192)).expect("create");
            block_on(disk.write(SegmentSeq(1), 0, SimBuffer(vec![1; 512]))).expect("write");
            block_on(disk.sync(SegmentSeq(1))).expect("sync");
            block_on(disk.write(SegmentSeq(1), 512, SimBuffer(vec![2; 4096]))).expect("write");
            let report = disk.crash();
            assert_eq!(
                report.blocks_kept + report.blocks_lost + report.blocks_torn,
                8
            );
            let bytes = disk.contents(SegmentSeq(1)).expect("segment");
            assert!(bytes[..512].iter().all(|&b| b == 1), "synced block changed");
            assert!(bytes[512..4608].iter().all(|&b| b == 0 || b == 2));
            (report, bytes)
        };
        assert_eq!(run(5), run(5));
        let torn_somewhere = (0..20).any(|seed| run(seed).0.blocks_torn > 0);
        assert!(torn_somewhere, "no seed tore a block");
    }

    #[test]
    fn injected_failure_hits_the_next_operation_once() {
        // A failure injected for sync fails exactly one sync and names the segment.
        let disk = SimDisk::new(Prng::new(1), 4096);
        block_on(disk.create_segment(SegmentSeq(3), 8192)).expect("create");
        disk.fail_next(DiskOp::Sync);
        let error = block_on(disk.sync(SegmentSeq(3))).expect_err("injected");
        assert_eq!(
            (error.op, error.segment),
            (DiskOp::Sync, Some(SegmentSeq(3)))
        );
        block_on(disk.sync(SegmentSeq(3))).expect("only once");
        let misaligned = block_on(disk.write(SegmentSeq(3), 100, SimBuffer(vec![0; 4096])));
        assert!(misaligned.is_err(), "misaligned write accepted");
    }
}
