//! One group's key-value state: applies committed commands in log order and serves reads.
//! Apply is deterministic: the same entries in the same order give the same state and the
//! same outcomes on every node, including for a malformed command (rejected, not a panic).

use std::collections::HashMap;

use bytes::Bytes;

use super::command::{Command, CommandError};
use crate::ids::LogIndex;

/// What applying one command did, for the client that proposed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Written,
    Deleted {
        existed: bool,
    },
    /// Whether the compare-and-set took effect, and the key's value after it.
    Cas {
        succeeded: bool,
        current: Option<Bytes>,
    },
    /// The entry's payload is not a valid command; the state is unchanged.
    Rejected(CommandError),
}

#[derive(Debug, Default)]
pub struct KvMachine {
    entries: HashMap<Bytes, Bytes>,
    /// Payload bytes of keys and values held.
    data_bytes: u64,
    applied: LogIndex,
}

impl KvMachine {
    pub fn new() -> KvMachine {
        KvMachine::default()
    }

    pub fn applied(&self) -> LogIndex {
        self.applied
    }

    pub fn key_count(&self) -> usize {
        self.entries.len()
    }

    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.entries.get(key)
    }

    /// Marks `index` applied without a command (empty and membership entries).
    pub fn skip(&mut self, index: LogIndex) {
        self.advance(index);
    }

    /// Applies the command payload of the entry at `index`.
    pub fn apply(&mut self, index: LogIndex, payload: &Bytes) -> Outcome {
        self.advance(index);
        match Command::decode(payload) {
            Ok(command) => self.apply_command(command),
            Err(error) => Outcome::Rejected(error),
        }
    }

    fn advance(&mut self, index: LogIndex) {
        assert!(
            index > self.applied,
            "kv: apply of index {index} after applied {}",
            self.applied
        );
        self.applied = index;
    }

    fn apply_command(&mut self, command: Command) -> Outcome {
        match command {
            Command::Put { key, value } => {
                self.set(key, Some(value));
                Outcome::Written
            }
            Command::Delete { key } => Outcome::Deleted {
                existed: self.set(key, None),
            },
            Command::Cas { key, expected, new } => {
                if self.entries.get(&key) != expected.as_ref() {
                    let current = self.entries.get(&key).cloned();
                    return Outcome::Cas {
                        succeeded: false,
                        current,
                    };
                }
                self.set(key, new.clone());
                Outcome::Cas {
                    succeeded: true,
                    current: new,
                }
            }
        }
    }

    /// Sets or removes `key`; returns whether it existed.
    fn set(&mut self, key: Bytes, value: Option<Bytes>) -> bool {
        let key_bytes = key.len() as u64;
        let inserting = value.is_some();
        let old = match value {
            Some(value) => {
                self.data_bytes += value.len() as u64;
                self.entries.insert(key, value)
            }
            None => self.entries.remove(&key),
        };
        match (&old, inserting) {
            (None, true) => self.data_bytes += key_bytes,
            (Some(old_value), true) => self.data_bytes -= old_value.len() as u64,
            (Some(old_value), false) => self.data_bytes -= key_bytes + old_value.len() as u64,
            (None, false) => {}
        }
        old.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn apply(machine: &mut KvMachine, command: Command) -> Outcome {
        let index = machine.applied().next();
        machine.apply(index, &command.encode())
    }

    #[test]
    fn put_get_delete_and_byte_accounting() {
        // Writes are visible to reads, deletes report whether the key existed, and the byte
        // count follows every change back to zero.
        let mut machine = KvMachine::new();
        assert_eq!(
            apply(
                &mut machine,
                Command::Put {
                    key: b("k"),
                    value: b("v1")
                }
            ),
            Outcome::Written
        );
        assert_eq!(machine.get(b"k"), Some(&b("v1")));
        assert_eq!(machine.data_bytes(), 3);
        apply(
            &mut machine,
            Command::Put {
                key: b("k"),
                value: b("value2"),
            },
        );
        assert_eq!(machine.data_bytes(), 7);
        assert_eq!(
            apply(&mut machine, Command::Delete { key: b("k") }),
            Outcome::Deleted { existed: true }
        );
        assert_eq!(
            apply(&mut machine, Command::Delete { key: b("k") }),
            Outcome::Deleted { existed: false }
        );
        assert_eq!(
            (machine.get(b"k"), machine.data_bytes(), machine.applied()),
            (None, 0, LogIndex(4))
        );
    }

    #[test]
    fn compare_and_set_takes_effect_only_on_a_match() {
        // A cas with the wrong expectation changes nothing and reports the current value.
        let mut machine = KvMachine::new();
        let create = Command::Cas {
            key: b("k"),
            expected: None,
            new: Some(b("a")),
        };
        assert_eq!(
            apply(&mut machine, create.clone()),
            Outcome::Cas {
                succeeded: true,
                current: Some(b("a"))
            }
        );
        assert_eq!(
            apply(&mut machine, create),
            Outcome::Cas {
                succeeded: false,
                current: Some(b("a"))
            }
        );
        let swap = Command::Cas {
            key: b("k"),
            expected: Some(b("a")),
            new: None,
        };
        assert_eq!(
            apply(&mut machine, swap),
            Outcome::Cas {
                succeeded: true,
                current: None
            }
        );
        assert_eq!(machine.key_count(), 0);
    }

    #[test]
    fn malformed_entry_is_rejected_and_still_applied() {
        // A bad payload advances the applied index identically on every node and changes no key.
        let mut machine = KvMachine::new();
        let outcome = machine.apply(LogIndex(1), &Bytes::from_static(&[0xff]));
        assert_eq!(outcome, Outcome::Rejected(CommandError::UnknownOp(0xff)));
        assert_eq!((machine.applied(), machine.key_count()), (LogIndex(1), 0));
    }
}
