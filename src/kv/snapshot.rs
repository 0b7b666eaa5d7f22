//! The byte format of a group's key-value snapshot, a streaming encoder that produces it in
//! chunks from a `KvMachine`'s frozen view, and a streaming decoder that rebuilds a
//! `KvMachine` from chunks, checking every length, count, order and the checksum.
//!
//! Layout (little endian):
//! - header: `magic "RRKVSNAP"`, `version: u32`, `header_bytes: u32`, `group: u32`,
//!   `reserved: u32 (0)`, `last_index: u64`, `last_term: u64`, `voter_count: u32`,
//!   `learner_count: u32`, `key_count: u64`, `data_bytes: u64`, voters (`u64` each),
//!   learners (`u64` each), `header_crc: u32` (crc32c of the header before it);
//! - `key_count` records: `key_len: u32, value_len: u32, key, value`, keys strictly
//!   increasing;
//! - trailer: `magic "RRSNAPND"`, `record_count: u64`, `padding_bytes: u32`,
//!   `crc: u32` (crc32c of every byte of the file before it);
//! - `padding_bytes` zero bytes, so that the file is a whole number of direct-I/O blocks;
//!   the trailer says how many, so a reader knows the real length.
//!
//! This file must not do I/O, and the decoder must never panic on any input: bytes read from
//! disk or a peer become a `Restored` or a `SnapshotError`.

use bytes::Bytes;
use thiserror::Error;

use super::command::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use super::machine::{FrozenState, KvMachine, WalkStatus};
use crate::constants::WAL_MEMBERS_MAX;
use crate::constants::{SNAPSHOT_PADDING_BYTES_MAX, SNAPSHOT_STEP_BYTES, VOTERS_MAX};
use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::raft::types::{Membership, SnapshotMeta};

pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RRKVSNAP";
pub const SNAPSHOT_TRAILER_MAGIC: [u8; 8] = *b"RRSNAPND";
pub const SNAPSHOT_VERSION: u32 = 1;
/// Header bytes before the member ids.
const HEADER_FIXED_BYTES: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8 + 4 + 4 + 8 + 8;
/// Bytes of a record before its key.
const RECORD_PREFIX_BYTES: usize = 8;
const TRAILER_BYTES: usize = 8 + 8 + 4 + 4;

const _: () = assert!(HEADER_FIXED_BYTES == 64);
// Record lengths are stored as u32; keys are the shorter of the two.
const _: () = assert!(KEY_BYTES_MAX <= VALUE_BYTES_MAX && VALUE_BYTES_MAX <= u32::MAX as usize);

/// What a snapshot file says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub group: GroupId,
    pub meta: SnapshotMeta,
    pub key_count: u64,
    pub data_bytes: u64,
}

/// A decoded snapshot: its header and the state machine it rebuilds.
#[derive(Debug)]
pub struct Restored {
    pub header: SnapshotHeader,
    pub machine: KvMachine,
}

/// Why bytes are not a valid snapshot. Offsets count from the start of the file.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not a snapshot: bad magic at offset 0")]
    BadMagic,
    #[error("snapshot version {0} is not supported (this build reads {SNAPSHOT_VERSION})")]
    UnsupportedVersion(u32),
    #[error(
        "snapshot header has {voter_count} voters and {learner_count} learners: over the limit"
    )]
    TooManyMembers {
        voter_count: u32,
        learner_count: u32,
    },
    #[error("snapshot header length {stated_bytes} does not match its {expected_bytes} bytes")]
    HeaderLength {
        stated_bytes: u32,
        expected_bytes: usize,
    },
    #[error("snapshot header field {what} is invalid")]
    HeaderField { what: &'static str },
    #[error("snapshot header checksum {stored:#010x} does not match {computed:#010x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("{what} of {length_bytes} bytes at offset {offset} is outside 1..={limit_bytes}")]
    RecordLength {
        what: &'static str,
        offset: u64,
        length_bytes: u64,
        limit_bytes: usize,
    },
    #[error("key at offset {offset} does not sort after the key before it")]
    KeysOutOfOrder { offset: u64 },
    #[error("records hold {found_bytes} bytes by offset {offset}, the header says {stated_bytes}")]
    DataBytes {
        offset: u64,
        found_bytes: u64,
        stated_bytes: u64,
    },
    #[error("bad trailer magic at offset {offset}")]
    TrailerMagic { offset: u64 },
    #[error("trailer counts {trailer_count} records, the header {header_count}")]
    RecordCount {
        header_count: u64,
        trailer_count: u64,
    },
    #[error("snapshot checksum {stored:#010x} does not match {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("trailer padding of {padding_bytes} bytes is over the limit")]
    PaddingLength { padding_bytes: u32 },
    #[error("padding byte at offset {offset} is not zero")]
    PaddingNotZero { offset: u64 },
    #[error("{extra_bytes} bytes after the end of the snapshot at offset {offset}")]
    TrailingBytes { offset: u64, extra_bytes: usize },
    #[error("snapshot ends at offset {offset} inside the {expected}")]
    Truncated { offset: u64, expected: &'static str },
    #[error("membership of {member_count} nodes cannot be stored in a snapshot")]
    MembershipTooLarge { member_count: usize },
}

/// Whether the encoder has produced its last chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeStatus {
    More,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EncodePhase {
    Header,
    Records,
    Done,
}

/// Produces a snapshot's bytes in chunks from a machine's open view (`begin_snapshot`).
/// Each chunk holds at most one walk step (`SNAPSHOT_STEP_BYTES` of keys and values plus one
/// record), so the caller can yield between chunks while the machine keeps applying.
#[derive(Debug)]
pub struct SnapshotEncoder {
    header: SnapshotHeader,
    alignment: usize,
    phase: EncodePhase,
    crc: u32,
    encoded_bytes: u64,
    record_count: u64,
}

impl SnapshotEncoder {
    /// An encoder of the view `frozen` of `group`, padding the file to `alignment`
    /// (a power of two, at most `SNAPSHOT_PADDING_BYTES_MAX`).
    pub fn new(
        group: GroupId,
        frozen: FrozenState,
        alignment: usize,
    ) -> Result<SnapshotEncoder, SnapshotError> {
        assert!(
            alignment.is_power_of_two() && alignment <= SNAPSHOT_PADDING_BYTES_MAX,
            "snapshot alignment {alignment} is not a power of two <= {SNAPSHOT_PADDING_BYTES_MAX}"
        );
        let membership = &frozen.meta.membership;
        let member_count = membership.voters.len() + membership.learners.len();
        if membership.voters.len() > VOTERS_MAX || member_count > WAL_MEMBERS_MAX {
            return Err(SnapshotError::MembershipTooLarge { member_count });
        }
        Ok(SnapshotEncoder {
            header: SnapshotHeader {
                group,
                meta: frozen.meta,
                key_count: frozen.key_count,
                data_bytes: frozen.data_bytes,
            },
            alignment,
            phase: EncodePhase::Header,
            crc: 0,
            encoded_bytes: 0,
            record_count: 0,
        })
    }

    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// Bytes produced so far.
    pub fn encoded_bytes(&self) -> u64 {
        self.encoded_bytes
    }

    /// Clears `chunk` and fills it with the next bytes of the snapshot: the header first, then
    /// one walk step of records; the last chunk ends with the trailer and the padding.
    pub fn next_chunk(&mut self, machine: &mut KvMachine, chunk: &mut Vec<u8>) -> EncodeStatus {
        chunk.clear();
        match self.phase {
            EncodePhase::Done => panic!(
                "snapshot encoder of group {} asked for a chunk after its last",
                self.header.group
            ),
            EncodePhase::Header => {
                encode_header(&self.header, chunk);
                self.phase = EncodePhase::Records;
                self.crc = crc32c::crc32c_append(self.crc, chunk);
                self.encoded_bytes += chunk.len() as u64;
                return EncodeStatus::More;
            }
            EncodePhase::Records => {}
        }
        let mut record_count = 0u64;
        let status = machine.snapshot_step(SNAPSHOT_STEP_BYTES, &mut |key, value| {
            put_u32(chunk, key.len() as u32);
            put_u32(chunk, value.len() as u32);
            chunk.extend_from_slice(key);
            chunk.extend_from_slice(value);
            record_count += 1;
        });
        self.record_count += record_count;
        if status == WalkStatus::More {
            self.crc = crc32c::crc32c_append(self.crc, chunk);
            self.encoded_bytes += chunk.len() as u64;
            return EncodeStatus::More;
        }
        assert_eq!(
            self.record_count, self.header.key_count,
            "snapshot of group {} emitted {} records for {} keys",
            self.header.group, self.record_count, self.header.key_count
        );
        let end_bytes = self.encoded_bytes + (chunk.len() + TRAILER_BYTES) as u64;
        let padding_bytes =
            (self.alignment as u64 - end_bytes % self.alignment as u64) % self.alignment as u64;
        chunk.extend_from_slice(&SNAPSHOT_TRAILER_MAGIC);
        put_u64(chunk, self.record_count);
        put_u32(chunk, padding_bytes as u32);
        self.crc = crc32c::crc32c_append(self.crc, chunk);
        put_u32(chunk, self.crc);
        chunk.resize(chunk.len() + padding_bytes as usize, 0);
        self.encoded_bytes += chunk.len() as u64;
        assert!(
            self.encoded_bytes.is_multiple_of(self.alignment as u64),
            "snapshot of {} bytes not padded to {}",
            self.encoded_bytes,
            self.alignment
        );
        self.phase = EncodePhase::Done;
        EncodeStatus::Done
    }
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn header_bytes_of(member_count: usize) -> usize {
    HEADER_FIXED_BYTES + 8 * member_count + 4
}

fn encode_header(header: &SnapshotHeader, out: &mut Vec<u8>) {
    let membership = &header.meta.membership;
    let member_count = membership.voters.len() + membership.learners.len();
    let start = out.len();
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    put_u32(out, SNAPSHOT_VERSION);
    put_u32(out, header_bytes_of(member_count) as u32);
    put_u32(out, header.group.get());
    put_u32(out, 0);
    put_u64(out, header.meta.last.index.get());
    put_u64(out, header.meta.last.term.get());
    put_u32(out, membership.voters.len() as u32);
    put_u32(out, membership.learners.len() as u32);
    put_u64(out, header.key_count);
    put_u64(out, header.data_bytes);
    for node in membership.voters.iter().chain(&membership.learners) {
        put_u64(out, node.get());
    }
    let crc = crc32c::crc32c(&out[start..]);
    put_u32(out, crc);
    assert_eq!(
        out.len() - start,
        header_bytes_of(member_count),
        "snapshot header length"
    );
}

/// Little-endian reads from a slice that is known to be long enough.
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Node ids strictly increasing and not zero, as `Membership` keeps them.
fn valid_members(nodes: &[NodeId]) -> bool {
    nodes.first().is_none_or(|first| first.get() > 0) && nodes.windows(2).all(|w| w[0] < w[1])
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodePhase {
    Header,
    Records,
    Trailer,
    Padding { left_bytes: u32 },
    Done,
    Failed,
}

/// Rebuilds a `KvMachine` from a snapshot's bytes fed in chunks of any size.
#[derive(Debug)]
pub struct SnapshotDecoder {
    /// Bytes received and not yet consumed (less than one item).
    pending: Vec<u8>,
    phase: DecodePhase,
    header: Option<SnapshotHeader>,
    /// crc32c of every consumed byte (up to the trailer's checksum field).
    crc: u32,
    consumed_bytes: u64,
    entries: Vec<(Bytes, Bytes)>,
    data_bytes: u64,
}

impl Default for SnapshotDecoder {
    fn default() -> Self {
        SnapshotDecoder::new()
    }
}

impl SnapshotDecoder {
    pub fn new() -> SnapshotDecoder {
        SnapshotDecoder {
            pending: Vec::new(),
            phase: DecodePhase::Header,
            header: None,
            crc: 0,
            consumed_bytes: 0,
            entries: Vec::new(),
            data_bytes: 0,
        }
    }

    /// The header, once its bytes have arrived and checked out.
    pub fn header(&self) -> Option<&SnapshotHeader> {
        self.header.as_ref()
    }

    /// Consumes the next bytes of the snapshot. After an error, every later call fails too.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        if self.phase == DecodePhase::Failed {
            return Err(SnapshotError::Truncated {
                offset: self.consumed_bytes,
                expected: "snapshot after an earlier error",
            });
        }
        let result = self.complete_pending(bytes).and_then(|taken| {
            let rest = &bytes[taken..];
            self.consume(rest).map(|used| {
                self.pending.extend_from_slice(&rest[used..]);
            })
        });
        if result.is_err() {
            self.phase = DecodePhase::Failed;
        }
        result
    }

    /// Completes the item held in `pending` (less than one item) from the front of `bytes`,
    /// copying twice as much each try, so a chunk costs about one item of copying rather than
    /// all of it. Returns how much of `bytes` is left for `consume` to read in place: none
    /// while the item is still incomplete (all of `bytes` is then pending).
    fn complete_pending(&mut self, bytes: &[u8]) -> Result<usize, SnapshotError> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let mut pending = std::mem::take(&mut self.pending);
        let mut taken = 0usize;
        let mut step = pending.len().max(RECORD_PREFIX_BYTES);
        while taken < bytes.len() {
            let add = step.min(bytes.len() - taken);
            pending.extend_from_slice(&bytes[taken..taken + add]);
            taken += add;
            let used = self.consume(&pending)?;
            if used > 0 {
                // Items start where the pending one did and it was incomplete before this
                // call, so what `consume` left unread came from `bytes`: read it in place.
                let unread = pending.len() - used;
                pending.clear();
                self.pending = pending;
                return taken.checked_sub(unread).ok_or(SnapshotError::Truncated {
                    offset: self.consumed_bytes,
                    expected: "a whole item after the pending bytes",
                });
            }
            step = step.saturating_mul(2);
        }
        self.pending = pending;
        Ok(taken)
    }

    /// Ends the input: the snapshot must be complete, with nothing after its padding.
    pub fn finish(self) -> Result<Restored, SnapshotError> {
        let offset = self.consumed_bytes;
        let expected = match self.phase {
            DecodePhase::Done => "",
            DecodePhase::Header => "header",
            DecodePhase::Records => "records",
            DecodePhase::Trailer => "trailer",
            DecodePhase::Padding { .. } => "padding",
            DecodePhase::Failed => "snapshot after an earlier error",
        };
        let Some(header) = self.header.filter(|_| self.phase == DecodePhase::Done) else {
            return Err(SnapshotError::Truncated { offset, expected });
        };
        let machine = KvMachine::from_sorted(header.meta.last.index, self.entries);
        assert_eq!(
            (machine.key_count() as u64, machine.data_bytes()),
            (header.key_count, header.data_bytes),
            "restored machine of group {} disagrees with its checked header",
            header.group
        );
        Ok(Restored { header, machine })
    }

    /// Parses as many whole items of `bytes` as the phase allows; returns the bytes used.
    fn consume(&mut self, bytes: &[u8]) -> Result<usize, SnapshotError> {
        let mut used = 0usize;
        loop {
            let rest = &bytes[used..];
            let step = match self.phase {
                DecodePhase::Header => self.consume_header(rest)?,
                DecodePhase::Records => self.consume_records(rest)?,
                DecodePhase::Trailer => self.consume_trailer(rest)?,
                DecodePhase::Padding { left_bytes } => self.consume_padding(rest, left_bytes)?,
                DecodePhase::Done => {
                    if rest.is_empty() {
                        0
                    } else {
                        return Err(SnapshotError::TrailingBytes {
                            offset: self.consumed_bytes,
                            extra_bytes: rest.len(),
                        });
                    }
                }
                DecodePhase::Failed => 0,
            };
            if step == 0 {
                return Ok(used);
            }
            used += step;
            self.consumed_bytes += step as u64;
        }
    }

    fn consume_header(&mut self, bytes: &[u8]) -> Result<usize, SnapshotError> {
        if bytes.len() < 8 + 4 + 4 {
            return Ok(0);
        }
        if bytes[..8] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let version = u32_at(bytes, 8);
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::UnsupportedVersion(version));
        }
        if bytes.len() < HEADER_FIXED_BYTES {
            return Ok(0);
        }
        let stated_bytes = u32_at(bytes, 12);
        let voter_count = u32_at(bytes, 40);
        let learner_count = u32_at(bytes, 44);
        let member_count = voter_count as usize + learner_count as usize;
        if voter_count as usize > VOTERS_MAX || member_count > WAL_MEMBERS_MAX {
            return Err(SnapshotError::TooManyMembers {
                voter_count,
                learner_count,
            });
        }
        let expected_bytes = header_bytes_of(member_count);
        if stated_bytes as usize != expected_bytes {
            return Err(SnapshotError::HeaderLength {
                stated_bytes,
                expected_bytes,
            });
        }
        if bytes.len() < expected_bytes {
            return Ok(0);
        }
        let computed = crc32c::crc32c(&bytes[..expected_bytes - 4]);
        let stored = u32_at(bytes, expected_bytes - 4);
        if stored != computed {
            return Err(SnapshotError::HeaderChecksum { stored, computed });
        }
        if u32_at(bytes, 20) != 0 {
            return Err(SnapshotError::HeaderField { what: "reserved" });
        }
        let node_at = |position: usize| NodeId(u64_at(bytes, HEADER_FIXED_BYTES + 8 * position));
        let voters: Vec<NodeId> = (0..voter_count as usize).map(node_at).collect();
        let learners: Vec<NodeId> = (voter_count as usize..member_count).map(node_at).collect();
        if !valid_members(&voters) || !valid_members(&learners) {
            return Err(SnapshotError::HeaderField { what: "membership" });
        }
        let header = SnapshotHeader {
            group: GroupId(u32_at(bytes, 16)),
            meta: SnapshotMeta {
                last: EntryId {
                    term: Term(u64_at(bytes, 32)),
                    index: LogIndex(u64_at(bytes, 24)),
                },
                membership: Membership { voters, learners },
            },
            key_count: u64_at(bytes, 48),
            data_bytes: u64_at(bytes, 56),
        };
        // Space for the records is reserved up to a bound: the count is not yet proven.
        self.entries
            .reserve(header.key_count.min(SNAPSHOT_RESERVE_KEYS_MAX) as usize);
        self.phase = if header.key_count == 0 {
            DecodePhase::Trailer
        } else {
            DecodePhase::Records
        };
        self.header = Some(header);
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..expected_bytes]);
        Ok(expected_bytes)
    }

    fn consume_records(&mut self, bytes: &[u8]) -> Result<usize, SnapshotError> {
        let Some(header) = self.header.as_ref() else {
            return Err(SnapshotError::Truncated {
                offset: self.consumed_bytes,
                expected: "header",
            });
        };
        let (key_count, stated_bytes) = (header.key_count, header.data_bytes);
        let mut used = 0usize;
        while (self.entries.len() as u64) < key_count {
            let rest = &bytes[used..];
            if rest.len() < RECORD_PREFIX_BYTES {
                break;
            }
            let offset = self.consumed_bytes + used as u64;
            let key_len = u32_at(rest, 0) as usize;
            let value_len = u32_at(rest, 4) as usize;
            if key_len == 0 || key_len > KEY_BYTES_MAX {
                return Err(record_length("key", offset, key_len, KEY_BYTES_MAX));
            }
            if value_len > VALUE_BYTES_MAX {
                return Err(record_length("value", offset, value_len, VALUE_BYTES_MAX));
            }
            let record_bytes = RECORD_PREFIX_BYTES + key_len + value_len;
            if rest.len() < record_bytes {
                break;
            }
            let key = &rest[RECORD_PREFIX_BYTES..RECORD_PREFIX_BYTES + key_len];
            if self
                .entries
                .last()
                .is_some_and(|(last_key, _)| last_key.as_ref() >= key)
            {
                return Err(SnapshotError::KeysOutOfOrder { offset });
            }
            self.data_bytes += (key_len + value_len) as u64;
            if self.data_bytes > stated_bytes {
                return Err(SnapshotError::DataBytes {
                    offset,
                    found_bytes: self.data_bytes,
                    stated_bytes,
                });
            }
            let value = &rest[RECORD_PREFIX_BYTES + key_len..record_bytes];
            self.entries
                .push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
            used += record_bytes;
        }
        self.crc = crc32c::crc32c_append(self.crc, &bytes[..used]);
        if self.entries.len() as u64 == key_count {
            if self.data_bytes != stated_bytes {
                return Err(SnapshotError::DataBytes {
                    offset: self.consumed_bytes + used as u64,
                    found_bytes: self.data_bytes,
                    stated_bytes,
                });
            }
            self.phase = DecodePhase::Trailer;
        }
        Ok(used)
    }

    fn consume_trailer(&mut self, bytes: &[u8]) -> Result<usize, SnapshotError> {
        if bytes.len() < TRAILER_BYTES {
            return Ok(0);
        }
        if bytes[..8] != SNAPSHOT_TRAILER_MAGIC {
            return Err(SnapshotError::TrailerMagic {
                offset: self.consumed_bytes,
            });
        }
        let header_count = self.header.as_ref().map_or(0, |header| header.key_count);
        let trailer_count = u64_at(bytes, 8);
        if trailer_count != header_count {
            return Err(SnapshotError::RecordCount {
                header_count,
                trailer_count,
            });
        }
        let padding_bytes = u32_at(bytes, 16);
        if padding_bytes as usize >= SNAPSHOT_PADDING_BYTES_MAX {
            return Err(SnapshotError::PaddingLength { padding_bytes });
        }
        let computed = crc32c::crc32c_append(self.crc, &bytes[..TRAILER_BYTES - 4]);
        let stored = u32_at(bytes, TRAILER_BYTES - 4);
        if stored != computed {
            return Err(SnapshotError::Checksum { stored, computed });
        }
        self.phase = if padding_bytes == 0 {
            DecodePhase::Done
        } else {
            DecodePhase::Padding {
                left_bytes: padding_bytes,
            }
        };
        Ok(TRAILER_BYTES)
    }

    fn consume_padding(&mut self, bytes: &[u8], left_bytes: u32) -> Result<usize, SnapshotError> {
        let take = bytes.len().min(left_bytes as usize);
        if let Some(position) = bytes[..take].iter().position(|&byte| byte != 0) {
            return Err(SnapshotError::PaddingNotZero {
                offset: self.consumed_bytes + position as u64,
            });
        }
        let left_bytes = left_bytes - take as u32;
        self.phase = if left_bytes == 0 {
            DecodePhase::Done
        } else {
            DecodePhase::Padding { left_bytes }
        };
        Ok(take)
    }
}

/// Records reserved ahead from an unproven header count.
const SNAPSHOT_RESERVE_KEYS_MAX: u64 = 1 << 20;

fn record_length(what: &'static str, offset: u64, length: usize, limit: usize) -> SnapshotError {
    SnapshotError::RecordLength {
        what,
        offset,
        length_bytes: length as u64,
        limit_bytes: limit,
    }
}

/// Encodes a whole snapshot of `machine` at its applied index into one buffer (tests, and
/// snapshots small enough not to need steps).
pub fn encode_all(
    machine: &mut KvMachine,
    group: GroupId,
    term: Term,
    membership: Membership,
    alignment: usize,
) -> Result<Vec<u8>, SnapshotError> {
    let frozen = machine.begin_snapshot(term, membership);
    let mut encoder = match SnapshotEncoder::new(group, frozen, alignment) {
        Ok(encoder) => encoder,
        Err(error) => {
            machine.abort_snapshot();
            return Err(error);
        }
    };
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    loop {
        let status = encoder.next_chunk(machine, &mut chunk);
        out.extend_from_slice(&chunk);
        if status == EncodeStatus::Done {
            return Ok(out);
        }
    }
}

/// Decodes a whole snapshot held in one buffer.
pub fn decode_all(bytes: &[u8]) -> Result<Restored, SnapshotError> {
    let mut decoder = SnapshotDecoder::new();
    decoder.feed(bytes)?;
    decoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::command::Command;
    use proptest::prelude::*;

    /// A machine with `key_count` keys whose values have assorted lengths (some empty).
    fn machine_with(key_count: u64) -> KvMachine {
        let mut machine = KvMachine::new();
        for number in 0..key_count {
            let command = Command::Put {
                key: Bytes::from(format!("k{number:05}")),
                value: Bytes::from(vec![number as u8; (number as usize * 13) % 200]),
            };
            machine.apply(LogIndex(number + 1), &command.encode());
        }
        machine
    }

    fn membership() -> Membership {
        Membership {
            voters: vec![NodeId(1), NodeId(2), NodeId(3)],
            learners: vec![NodeId(9)],
        }
    }

    fn encoded(key_count: u64, alignment: usize) -> Vec<u8> {
        let mut machine = machine_with(key_count);
        encode_all(&mut machine, GroupId(5), Term(4), membership(), alignment).expect("encodes")
    }

    fn same_state(a: &KvMachine, b: &KvMachine) -> bool {
        a.applied() == b.applied()
            && a.key_count() == b.key_count()
            && a.data_bytes() == b.data_bytes()
            && a.entries_in_order().eq(b.entries_in_order())
    }

    #[test]
    fn round_trip_restores_the_same_state_and_header() {
        // Encode then decode gives the same keys, values, applied index, counts and
        // membership, for an empty machine and a large one, padded to the alignment.
        for (key_count, alignment) in [(0u64, 512usize), (1, 4096), (3000, 512)] {
            let bytes = encoded(key_count, alignment);
            assert_eq!(bytes.len() % alignment, 0, "{key_count} keys not padded");
            let restored = decode_all(&bytes).expect("decodes");
            let original = machine_with(key_count);
            assert!(
                same_state(&restored.machine, &original),
                "{key_count} keys differ"
            );
            assert_eq!(restored.header.group, GroupId(5));
            assert_eq!(
                restored.header.meta.last,
                EntryId {
                    term: Term(4),
                    index: LogIndex(key_count)
                }
            );
            assert_eq!(restored.header.meta.membership, membership());
            assert_eq!(restored.header.key_count, key_count);
        }
    }

    #[test]
    fn chunks_of_any_size_decode_alike() {
        // Feeding the bytes in pieces of 1, 7, 4096 bytes, or of sizes that change from piece
        // to piece (an item split across several), gives the same result as at once.
        let bytes = encoded(500, 512);
        let sizes: [&[usize]; 4] = [&[1], &[7], &[4096], &[3, 250, 1, 64, 999, 2, 17]];
        for cycle in sizes {
            let mut decoder = SnapshotDecoder::new();
            let mut at = 0;
            for &piece in cycle.iter().cycle() {
                if at == bytes.len() {
                    break;
                }
                let end = (at + piece).min(bytes.len());
                decoder.feed(&bytes[at..end]).expect("feeds");
                at = end;
            }
            let restored = decoder.finish().expect("complete");
            assert!(
                same_state(&restored.machine, &machine_with(500)),
                "pieces {cycle:?}"
            );
        }
    }

    #[test]
    fn oversized_membership_is_refused_by_the_encoder() {
        // A configuration over the voter limit cannot be written, and the view is closed.
        let mut machine = machine_with(3);
        let voters = (1..=VOTERS_MAX as u64 + 1).map(NodeId).collect();
        let error = encode_all(
            &mut machine,
            GroupId(1),
            Term(1),
            Membership::new(voters),
            512,
        )
        .expect_err("too many voters");
        assert!(
            matches!(error, SnapshotError::MembershipTooLarge { .. }),
            "{error}"
        );
        assert!(!machine.snapshot_open());
    }

    #[test]
    fn named_corruptions_give_their_errors() {
        // A wrong magic, version, record length, key order or checksum is reported as such.
        let bytes = encoded(20, 512);
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(decode_all(&bad).unwrap_err(), SnapshotError::BadMagic);
        let mut bad = bytes.clone();
        bad[8] = 2;
        assert_eq!(
            decode_all(&bad).unwrap_err(),
            SnapshotError::UnsupportedVersion(2)
        );
        let header_bytes = header_bytes_of(4);
        let mut bad = bytes.clone();
        bad[header_bytes..header_bytes + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(
            decode_all(&bad).unwrap_err(),
            SnapshotError::RecordLength { what: "key", .. }
        ));
        let mut bad = bytes.clone();
        bad[header_bytes + 4..header_bytes + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_all(&bad).unwrap_err(),
            SnapshotError::RecordLength { what: "value", .. }
        ));
        // The second key ("k00001") made equal to the first ("k00000").
        let second_key = header_bytes + RECORD_PREFIX_BYTES + 6 + RECORD_PREFIX_BYTES;
        let mut bad = bytes.clone();
        bad[second_key + 5] = b'0';
        assert!(matches!(
            decode_all(&bad).unwrap_err(),
            SnapshotError::KeysOutOfOrder { .. }
        ));
        let mut bad = bytes.clone();
        bad[header_bytes + RECORD_PREFIX_BYTES + 1] ^= 0x10;
        assert!(matches!(
            decode_all(&bad).unwrap_err(),
            SnapshotError::Checksum { .. }
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_all(&longer).unwrap_err(),
            SnapshotError::TrailingBytes { .. }
        ));
    }

    proptest! {
        #[test]
        fn any_flipped_byte_is_an_error_never_a_panic(
            position in any::<proptest::sample::Index>(),
            xor in 1u8..=255,
            piece in 1usize..5000,
        ) {
            // Every byte of a snapshot (header, records, trailer, padding) is covered by a
            // checksum or a check: flipping any bits of one byte is always detected.
            let mut bytes = encoded(40, 512);
            let at = position.index(bytes.len());
            bytes[at] ^= xor;
            let mut decoder = SnapshotDecoder::new();
            let fed = bytes.chunks(piece).try_for_each(|chunk| decoder.feed(chunk));
            let result = fed.and_then(|()| decoder.finish());
            prop_assert!(result.is_err(), "flip of {xor:#x} at {at} went unnoticed");
        }

        #[test]
        fn any_truncation_is_an_error(cut in any::<proptest::sample::Index>()) {
            // A snapshot cut short anywhere (a torn file) never decodes.
            let bytes = encoded(40, 512);
            let end = cut.index(bytes.len());
            prop_assert!(decode_all(&bytes[..end]).is_err(), "cut at {end} decoded");
        }

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
            keep_magic in any::<bool>(),
        ) {
            // Garbage, with or without a valid magic and version in front, is an error.
            let mut bytes = bytes;
            if keep_magic && bytes.len() >= 12 {
                bytes[..8].copy_from_slice(&SNAPSHOT_MAGIC);
                bytes[8..12].copy_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
            }
            prop_assert!(decode_all(&bytes).is_err());
        }
    }
}
