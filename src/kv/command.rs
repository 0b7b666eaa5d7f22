//! The binary form of a key-value command inside a Raft entry. A command is decoded from
//! bytes that were checked when the client sent them, but every decode is still checked:
//! an entry read back from disk or a peer must never make the state machine panic.
//!
//! Layout (little endian): `op: u8`, then per op:
//! - Put:    `key_len: u32, key, value_len: u32, value`
//! - Delete: `key_len: u32, key`
//! - Cas:    `key_len: u32, key, flags: u8 (bit 0: expected present, bit 1: new present),
//!            [expected_len: u32, expected], [new_len: u32, new]`

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

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
const CAS_EXPECTED: u8 = 1;
const CAS_NEW: u8 = 2;

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
}

impl Command {
    pub fn key(&self) -> &Bytes {
        match self {
            Command::Put { key, .. } | Command::Delete { key } | Command::Cas { key, .. } => key,
        }
    }

    /// Checks the limits a command must meet before it is proposed.
    pub fn validate(&self) -> Result<(), CommandError> {
        validate_key(self.key())?;
        let values: [Option<&Bytes>; 2] = match self {
            Command::Put { value, .. } => [Some(value), None],
            Command::Delete { .. } => [None, None],
            Command::Cas { expected, new, .. } => [expected.as_ref(), new.as_ref()],
        };
        for value in values.into_iter().flatten() {
            check_length("value", value.len(), VALUE_BYTES_MAX)?;
        }
        Ok(())
    }

    pub fn encoded_bytes(&self) -> usize {
        let field = |b: &Bytes| 4 + b.len();
        1 + field(self.key())
            + match self {
                Command::Put { value, .. } => field(value),
                Command::Delete { .. } => 0,
                Command::Cas { expected, new, .. } => {
                    1 + expected.as_ref().map_or(0, field) + new.as_ref().map_or(0, field)
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
            other => return Err(CommandError::UnknownOp(other)),
        };
        if reader.offset != bytes.len() {
            return Err(CommandError::TrailingBytes {
                extra_bytes: bytes.len() - reader.offset,
            });
        }
        validate_key(command.key())?;
        Ok(command)
    }
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

    fn field(&mut self, what: &'static str, limit_bytes: usize) -> Result<Bytes, CommandError> {
        let range = self.take(4)?;
        let mut length = [0u8; 4];
        length.copy_from_slice(self.bytes.get(range).unwrap_or(&[0; 4]));
        let length_bytes = u32::from_le_bytes(length) as usize;
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

    #[test]
    fn every_command_round_trips() {
        // Each op, including every combination of cas flags, decodes to itself.
        let commands = [
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
        ];
        for command in commands {
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

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            // Any entry payload decodes or errs.
            let _ = Command::decode(&Bytes::from(bytes));
        }
    }
}
