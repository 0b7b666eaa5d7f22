//! Fuzzes the WAL recovery scan end to end on the simulated disk: the input is cut into
//! segment images (1..=4 segments of the smallest size), recovery runs over them, and must
//! refuse or accept without panicking; what it accepts must read back through fetch.
//! Run with `cargo fuzz run recovery` from the repository root (nightly toolchain).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringraft::constants::WAL_SEGMENT_BYTES_MIN;
use ringraft::log::{Log, SegmentSeq, WalConfig};
use ringraft::prng::Prng;
use ringraft::sim::disk::{SimDisk, block_on};

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let alignment = if control & 1 == 0 { 512 } else { 4096 };
    let segment_count = usize::from(control >> 1) % 4 + 1;
    let segment_bytes = WAL_SEGMENT_BYTES_MIN as usize;
    let disk = SimDisk::new(Prng::new(u64::from(control)), alignment);
    for position in 0..segment_count {
        let mut bytes = vec![0u8; segment_bytes];
        let start = (position * segment_bytes).min(rest.len());
        let end = ((position + 1) * segment_bytes).min(rest.len());
        bytes[..end - start].copy_from_slice(&rest[start..end]);
        disk.set_contents(SegmentSeq(position as u64 + 1), bytes);
    }
    let config = WalConfig {
        segment_bytes: segment_bytes as u64,
        spare_segments: 1,
    };
    let Ok((log, _)) = block_on(Log::open(disk, config)) else {
        return;
    };
    for group in log.group_ids() {
        let Some(restored) = log.restored(group) else {
            continue;
        };
        let Some(first) = restored.first_index else {
            continue;
        };
        let fetched = block_on(log.fetch(group, first, restored.last_index, u64::MAX));
        assert!(fetched.is_ok(), "accepted WAL fails to fetch: {fetched:?}");
    }
});
