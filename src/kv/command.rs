//! The binary form of a key-value command inside a Raft entry. A command is decoded from
//! bytes that were checked when the client sent them, but every decode is still checked:
//! an entry read back from disk or a peer must never make the state machine panic.
//!
//! Layout (little endian): `op: u8`, then per op:
//! - Put:    `key_len: u32, key, value_len: u32, value`
//! - Delete: `key_len: u32, key`
//! - Cas:    `key_len: u32, key, flags: u8 (bit 0: expected present, bit 1: new present),
//!            [expected_len: u32, expected], [new_len: u32, new]`
//! - PutIf:  `key_len: u32, key, value_len: u32, value, condition: u8 (1 absent, 2 present)`
//! - Incr:   `key_len: u32, key, delta: i64`
//! - MultiPut: `pair_count: u32`, then per pair `key_len: u32, key, value_len: u32, value`
//!
//! Ops are only ever appended; a node that meets an op it does not know rejects the entry
//! (the same way on every node), it never panics.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::constants::MULTI_PUT_KEYS_MAX;

/// Longest key accepted, in bytes.
pub const KEY_BYTES_MAX: usize = 16 * 1024;
/// Longest value accepted, in bytes.
pub const VALUE_BYTES_MAX: usize = 480 * 1024;

const _: () = assert!(
    KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX + 16 <= crate::constants::COMMAND_BYTES_MAX as usize
);

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_CAS: u8 = 3;
const OP_PUT_IF: u8 = 4;
const OP_INCR: u8 = 5;
const OP_MULTI_PUT: u8 = 6;
const CAS_EXPECTED: u8 = 1;
const CAS_NEW: u8 = 2;
const CONDITION_IF_ABSENT: u8 = 1;
const CONDITION_IF_PRESENT: u8 = 2;

/// The key of a command that has none (an empty `MultiPut`), refused by validation.
static NO_KEY: Bytes = Bytes::new();

/// When a conditional put takes effect (Redis `SET NX` / `SET XX`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutCondition {
    /// Only if the key does not exist.
    IfAbsent,
    /// Only if the key exists.
    IfPresent,
}

/// A write to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Sets `key` to `new` (or deletes it when `new` is `None`) only if its current value is
    /// `expected` (`None`: the key must be absent).
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    },
    /// Sets `key` to `value` only if `condition` holds; otherwise changes nothing.
    PutIf {
        key: Bytes,
        value: Bytes,
        condition: PutCondition,
    },
    /// Adds `delta` to the decimal integer stored at `key` (absent: 0) and stores the sum
    /// (Redis `INCRBY`). Refused, changing nothing, if the value is not an integer or the sum
    /// overflows.
    Incr {
        key: Bytes,
        delta: i64,
    },
    /// Sets every key to its value, all or none (one entry). Every key must belong to the
    /// same group; the gateway checks it, as only it knows the placement.
    MultiPut {
        pairs: Vec<(Bytes, Bytes)>,
    },
}

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CommandError {
    #[error("command is truncated: needed {needed_bytes} bytes at offset {offset}")]
    Truncated { offset: usize, needed_bytes: usize },
    #[error("unknown command op {0}")]
    UnknownOp(u8),
    #[error("unknown cas flags {0:#x}")]
    UnknownFlags(u8),
    #[error("{what} of {length_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    TooLong {
        what: &'static str,
        length_bytes: usize,
        limit_bytes: usize,
    },
    #[error("{extra_bytes} bytes after the end of the command")]
    TrailingBytes { extra_bytes: usize },
    #[error("empty key")]
    EmptyKey,
    #[error("unknown put condition {0}")]
    UnknownCondition(u8),
    #[error("a multi-put needs at least one key")]
    NoPairs,
    #[error("a multi-put of {pair_count} keys exceeds the limit of {limit} keys")]
    TooManyPairs { pair_count: usize, limit: usize },
}

impl Command {
    /// The key that places the command (a multi-put's first key; every other key must be in
    /// the same group). Empty only for an empty multi-put, which validation refuses.
    pub fn key(&self) -> &Bytes {
        match self {
            Command::Put { key, .. }
            | Command::Delete { key }
            | Command::Cas { key, .. }
            | Command::PutIf { key, .. }
            | Command::Incr { key, .. } => key,
            Command::MultiPut { pairs } => pairs.first().map_or(&NO_KEY, |(key, _)| key),
        }
    }

    /// Every key the command writes, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Bytes> {
        let (single, pairs) = match self {
            Command::MultiPut { pairs } => (None, &pairs[..]),
            _ => (Some(self.key()), &[][..]),
        };
        single.into_iter().chain(pairs.iter().map(|(key, _)| key))
    }

    /// Checks the limits a command must meet before it is proposed.
    pub fn validate(&self) -> Result<(), CommandError> {
        if let Command::MultiPut { pairs } = self {
            return validate_pairs(pairs);
        }
        validate_key(self.key())?;
        let values: [Option<&Bytes>; 2] = match self {
            Command::Put { value, .. } | Command::PutIf { value, .. } => [Some(value), None],
            Command::Delete { .. } | Command::Incr { .. } | Command::MultiPut { .. } => {
                [None, None]
            }
            Command::Cas { expected, new, .. } => [expected.as_ref(), new.as_ref()],
        };
        for value in values.into_iter().flatten() {
            check_length("value", value.len(), VALUE_BYTES_MAX)?;
        }
        Ok(())
    }

    pub fn encoded_bytes(&self) -> usize {
        let field = |b: &Bytes| 4 + b.len();
        match self {
            Command::Put { key, value } => 1 + field(key) + field(value),
            Command::Delete { key } => 1 + field(key),
            Command::Cas { key, expected, new } => {
                2 + field(key) + expected.as_ref().map_or(0, field) + new.as_ref().map_or(0, field)
            }
            Command::PutIf { key, value, .. } => 2 + field(key) + field(value),
            Command::Incr { key, .. } => 1 + field(key) + 8,
            Command::MultiPut { pairs } => {
                5 + pairs
                    .iter()
                    .map(|(key, value)| field(key) + field(value))
                    .sum::<usize>()
            }
        }
    }

    /// Appends the encoded command to `out`.
    pub fn encode_into(&self, out: &mut BytesMut) {
        out.reserve(self.encoded_bytes());
        let put_field = |out: &mut BytesMut, b: &Bytes| {
            let length =
                u32::try_from(b.len()).unwrap_or_else(|_| panic!("field of {} bytes", b.len()));
            out.put_u32_le(length);
            out.put_slice(b);
        };
        match self {
            Command::Put { key, value } => {
                out.put_u8(OP_PUT);
                put_field(out, key);
                put_field(out, value);
            }
            Command::Delete { key } => {
                out.put_u8(OP_DELETE);
                put_field(out, key);
            }
            Command::Cas { key, expected, new } => {
                out.put_u8(OP_CAS);
                put_field(out, key);
                let flags = if expected.is_some() { CAS_EXPECTED } else { 0 }
                    | if new.is_some() { CAS_NEW } else { 0 };
                out.put_u8(flags);
                for value in [expected, new].into_iter().flatten() {
                    put_field(out, value);
                }
            }
            Command::PutIf {
                key,
                value,
                condition,
            } => {
                out.put_u8(OP_PUT_IF);
                put_field(out, key);
                put_field(out, value);
                out.put_u8(match condition {
                    PutCondition::IfAbsent => CONDITION_IF_ABSENT,
                    PutCondition::IfPresent => CONDITION_IF_PRESENT,
                });
            }
            Command::Incr { key, delta } => {
                out.put_u8(OP_INCR);
                put_field(out, key);
                out.put_i64_le(*delta);
            }
            Command::MultiPut { pairs } => {
                out.put_u8(OP_MULTI_PUT);
                let count = u32::try_from(pairs.len())
                    .unwrap_or_else(|_| panic!("multi-put of {} pairs", pairs.len()));
                out.put_u32_le(count);
                for (key, value) in pairs {
                    put_field(out, key);
                    put_field(out, value);
                }
            }
        }
    }

    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.encoded_bytes());
        self.encode_into(&mut out);
        out.freeze()
    }

    /// Decodes a command; fields share `bytes`' buffer (no copy).
    pub fn decode(bytes: &Bytes) -> Result<Command, CommandError> {
        let mut reader = Reader { bytes, offset: 0 };
        let op = reader.u8()?;
        let command = match op {
            OP_PUT => {
                let key = reader.field("key", KEY_BYTES_MAX)?;
                Command::Put {
                    key,
                    value: reader.field("value", VALUE_BYTES_MAX)?,
                }
            }
            OP_DELETE => Command::Delete {
                key: reader.field("key", KEY_BYTES_MAX)?,
            },
            OP_CAS => {
                let key = reader.field("key", KEY_BYTES_MAX)?;
                let flags = reader.u8()?;
                if flags & !(CAS_EXPECTED | CAS_NEW) != 0 {
                    return Err(CommandError::UnknownFlags(flags));
                }
                let expected = if flags & CAS_EXPECTED != 0 {
                    Some(reader.field("value", VALUE_BYTES_MAX)?)
                } else {
                    None
                };
                let new = if flags & CAS_NEW != 0 {
                    Some(reader.field("value", VALUE_BYTES_MAX)?)
                } else {
                    None
                };
                Command::Cas { key, expected, new }
            }
            OP_PUT_IF => {
                let key = reader.field("key", KEY_BYTES_MAX)?;
                let value = reader.field("value", VALUE_BYTES_MAX)?;
                let condition = match reader.u8()? {
                    CONDITION_IF_ABSENT => PutCondition::IfAbsent,
                    CONDITION_IF_PRESENT => PutCondition::IfPresent,
                    other => return Err(CommandError::UnknownCondition(other)),
                };
                Command::PutIf {
                    key,
                    value,
                    condition,
                }
            }
            OP_INCR => {
                let key = reader.field("key", KEY_BYTES_MAX)?;
                Command::Incr {
                    key,
                    delta: reader.i64()?,
                }
            }
            OP_MULTI_PUT => {
                let pair_count = reader.u32()? as usize;
                if pair_count > MULTI_PUT_KEYS_MAX {
                    return Err(CommandError::TooManyPairs {
                        pair_count,
                        limit: MULTI_PUT_KEYS_MAX,
                    });
                }
                let mut pairs = Vec::with_capacity(pair_count);
                for _ in 0..pair_count {
                    let key = reader.field("key", KEY_BYTES_MAX)?;
                    pairs.push((key, reader.field("value", VALUE_BYTES_MAX)?));
                }
                Command::MultiPut { pairs }
            }
            other => return Err(CommandError::UnknownOp(other)),
        };
        if reader.offset != bytes.len() {
            return Err(CommandError::TrailingBytes {
                extra_bytes: bytes.len() - reader.offset,
            });
        }
        command.validate()?;
        Ok(command)
    }
}

/// A multi-put: one to `MULTI_PUT_KEYS_MAX` pairs of valid keys and values, one command in
/// size.
fn validate_pairs(pairs: &[(Bytes, Bytes)]) -> Result<(), CommandError> {
    if pairs.is_empty() {
        return Err(CommandError::NoPairs);
    }
    if pairs.len() > MULTI_PUT_KEYS_MAX {
        return Err(CommandError::TooManyPairs {
            pair_count: pairs.len(),
            limit: MULTI_PUT_KEYS_MAX,
        });
    }
    let mut encoded_bytes = 5usize;
    for (key, value) in pairs {
        validate_key(key)?;
        check_length("value", value.len(), VALUE_BYTES_MAX)?;
        encoded_bytes += 8 + key.len() + value.len();
    }
    check_length(
        "multi-put",
        encoded_bytes,
        crate::constants::COMMAND_BYTES_MAX as usize,
    )
}

pub fn validate_key(key: &Bytes) -> Result<(), CommandError> {
    if key.is_empty() {
        return Err(CommandError::EmptyKey);
    }
    check_length("key", key.len(), KEY_BYTES_MAX)
}

fn check_length(
    what: &'static str,
    length_bytes: usize,
    limit_bytes: usize,
) -> Result<(), CommandError> {
    if length_bytes > limit_bytes {
        return Err(CommandError::TooLong {
            what,
            length_bytes,
            limit_bytes,
        });
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a Bytes,
    offset: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<std::ops::Range<usize>, CommandError> {
        let end = self
            .offset
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len());
        let Some(end) = end else {
            return Err(CommandError::Truncated {
                offset: self.offset,
                needed_bytes: count,
            });
        };
        let range = self.offset..end;
        self.offset = end;
        Ok(range)
    }

    fn u8(&mut self) -> Result<u8, CommandError> {
        let range = self.take(1)?;
        Ok(self.bytes.get(range.start).copied().unwrap_or_default())
    }

    fn u32(&mut self) -> Result<u32, CommandError> {
        let range = self.take(4)?;
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(self.bytes.get(range).unwrap_or(&[0; 4]));
        Ok(u32::from_le_bytes(bytes))
    }

    fn i64(&mut self) -> Result<i64, CommandError> {
        let range = self.take(8)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.bytes.get(range).unwrap_or(&[0; 8]));
        Ok(i64::from_le_bytes(bytes))
    }

    fn field(&mut self, what: &'static str, limit_bytes: usize) -> Result<Bytes, CommandError> {
        let length_bytes = self.u32()? as usize;
        check_length(what, length_bytes, limit_bytes)?;
        let range = self.take(length_bytes)?;
        Ok(self.bytes.slice(range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn sample_commands() -> Vec<Command> {
        vec![
            Command::Put {
                key: b("k"),
                value: b("v"),
            },
            Command::Put {
                key: b("k"),
                value: Bytes::new(),
            },
            Command::Delete { key: b("key") },
            Command::Cas {
                key: b("k"),
                expected: None,
                new: None,
            },
            Command::Cas {
                key: b("k"),
                expected: Some(b("a")),
                new: None,
            },
            Command::Cas {
                key: b("k"),
                expected: None,
                new: Some(b("b")),
            },
            Command::Cas {
                key: b("k"),
                expected: Some(b("a")),
                new: Some(b("b")),
            },
            Command::PutIf {
                key: b("k"),
                value: b("v"),
                condition: PutCondition::IfAbsent,
            },
            Command::PutIf {
                key: b("k"),
                value: Bytes::new(),
                condition: PutCondition::IfPresent,
            },
            Command::Incr {
                key: b("n"),
                delta: i64::MIN,
            },
            Command::Incr {
                key: b("n"),
                delta: 1,
            },
            Command::MultiPut {
                pairs: vec![(b("a"), b("1")), (b("b"), Bytes::new())],
            },
        ]
    }

    #[test]
    fn every_command_round_trips() {
        // Each op, including every combination of cas flags, decodes to itself.
        for command in sample_commands() {
            let encoded = command.encode();
            assert_eq!(encoded.len(), command.encoded_bytes());
            assert_eq!(Command::decode(&encoded), Ok(command));
        }
    }

    #[test]
    fn malformed_commands_are_errors() {
        // Truncation, trailing bytes, unknown ops and empty keys are refused, not panics.
        let encoded = Command::Put {
            key: b("k"),
            value: b("value"),
        }
        .encode();
        assert!(matches!(
            Command::decode(&encoded.slice(..encoded.len() - 1)),
            Err(CommandError::Truncated { .. })
        ));
        let mut long = BytesMut::from(&encoded[..]);
        long.put_u8(0);
        assert_eq!(
            Command::decode(&long.freeze()),
            Err(CommandError::TrailingBytes { extra_bytes: 1 })
        );
        assert_eq!(
            Command::decode(&Bytes::from_static(&[9])),
            Err(CommandError::UnknownOp(9))
        );
        assert_eq!(
            Command::Delete { key: Bytes::new() }.validate(),
            Err(CommandError::EmptyKey)
        );
        let huge = Bytes::from(vec![0u8; KEY_BYTES_MAX + 1]);
        assert!(matches!(
            Command::Delete { key: huge }.validate(),
            Err(CommandError::TooLong { what: "key", .. })
        ));
    }

    #[test]
    fn multi_puts_are_bounded_and_never_empty() {
        // An empty multi-put, one over the key limit, one with an empty key and a bad
        // condition byte are all refused; keys() lists every key in order.
        assert_eq!(
            Command::MultiPut { pairs: Vec::new() }.validate(),
            Err(CommandError::NoPairs)
        );
        let too_many = Command::MultiPut {
            pairs: (0..=MULTI_PUT_KEYS_MAX)
                .map(|i| (Bytes::from(i.to_string()), Bytes::new()))
                .collect(),
        };
        assert!(matches!(
            too_many.validate(),
            Err(CommandError::TooManyPairs { pair_count, .. }) if pair_count == MULTI_PUT_KEYS_MAX + 1
        ));
        assert!(matches!(
            Command::decode(&too_many.encode()),
            Err(CommandError::TooManyPairs { .. })
        ));
        let empty_key = Command::MultiPut {
            pairs: vec![(b("a"), b("1")), (Bytes::new(), b("2"))],
        };
        assert_eq!(empty_key.validate(), Err(CommandError::EmptyKey));
        assert_eq!(
            Command::decode(&empty_key.encode()),
            Err(CommandError::EmptyKey)
        );
        let two = Command::MultiPut {
            pairs: vec![(b("a"), b("1")), (b("b"), b("2"))],
        };
        assert_eq!(two.keys().collect::<Vec<_>>(), [&b("a"), &b("b")]);
        assert_eq!(two.key(), &b("a"));
        let mut bad_condition = BytesMut::from(
            &Command::PutIf {
                key: b("k"),
                value: b("v"),
                condition: PutCondition::IfAbsent,
            }
            .encode()[..],
        );
        let last = bad_condition.len() - 1;
        bad_condition[last] = 7;
        assert_eq!(
            Command::decode(&bad_condition.freeze()),
            Err(CommandError::UnknownCondition(7))
        );
    }

    #[test]
    fn a_multi_put_larger_than_one_command_is_refused() {
        // Pairs within the key count limit but over the command byte limit are refused.
        let value = Bytes::from(vec![b'x'; VALUE_BYTES_MAX]);
        let pairs = (0..3)
            .map(|i| (Bytes::from(format!("k{i}")), value.clone()))
            .collect();
        assert!(matches!(
            Command::MultiPut { pairs }.validate(),
            Err(CommandError::TooLong {
                what: "multi-put",
                ..
            })
        ));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Any entry payload decodes or errs.
            let _ = Command::decode(&Bytes::from(bytes));
        }

        #[test]
        fn corrupted_commands_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            // Every op's encoding with a few bytes overwritten decodes or errs.
            for command in sample_commands() {
                let mut encoded = command.encode().to_vec();
                for &(position, value) in &flips {
                    let at = position % encoded.len();
                    encoded[at] = value;
                }
                if let Ok(decoded) = Command::decode(&Bytes::from(encoded)) {
                    prop_assert!(decoded.validate().is_ok(), "{decoded:?}");
                }
            }
        }
    }
}
