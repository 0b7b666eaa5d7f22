//! Fuzzes the WAL record and segment-header decoders: any bytes, at any segment and offset,
//! are refused or decoded, never a panic; what decodes re-encodes to the same bytes.
//! Run with `cargo fuzz run decode_record` from the repository root (nightly toolchain).

#![no_main]

use libfuzzer_sys::fuzz_target;
use ringraft::log::SegmentSeq;
use ringraft::log::record::{self, RecordRef, RecordView};

fuzz_target!(|data: &[u8]| {
    let Some((prefix, bytes)) = data.split_first_chunk::<16>() else {
        return;
    };
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&prefix[..8]);
    let mut offset_bytes = [0u8; 8];
    offset_bytes.copy_from_slice(&prefix[8..]);
    let seq = SegmentSeq(u64::from_le_bytes(seq_bytes));
    // Records sit at multiples of 8.
    let offset = u64::from_le_bytes(offset_bytes) & !7;
    let _ = record::decode_segment_header(bytes, seq, 1 << 20);
    let Ok((view, used)) = record::decode(bytes, seq, offset) else {
        return;
    };
    // A record that decodes must encode back to the same bytes (the padding aside).
    let entry = view.to_entry();
    let reference = match (&view, &entry) {
        (RecordView::Batch(batch), _) => RecordRef::Batch(*batch),
        (RecordView::Entry { group, .. }, Some(entry)) => RecordRef::Entry(*group, entry),
        (RecordView::HardState { group, hard_state }, _) => RecordRef::HardState(*group, hard_state),
        (RecordView::SnapshotMark { group, snapshot }, _) => RecordRef::SnapshotMark(*group, snapshot),
        (RecordView::Entry { .. }, None) => unreachable!("an entry view always yields an entry"),
    };
    let mut out = vec![0u8; record::encoded_bytes(&reference)];
    let written = record::encode(&mut out, seq, offset, &reference);
    assert_eq!(written, used, "re-encoded size differs");
    let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    assert_eq!(&out[..length], &bytes[..length], "re-encoded bytes differ");
});
