//! One group's key-value state: applies committed commands in log order and serves reads.
//! Apply is deterministic: the same entries in the same order give the same state and the
//! same outcomes on every node, including for a malformed command (rejected, not a panic).

use std::collections::HashMap;

use bytes::Bytes;

use super::command::{Command, CommandError, PutCondition};
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
    /// A conditional put: whether its condition held and the value was written.
    PutIf {
        written: bool,
    },
    /// An increment took effect; the key now holds `value`.
    Counter {
        value: i64,
    },
    /// An increment was refused; the state is unchanged.
    CounterRefused(CounterError),
    /// The entry's payload is not a valid command; the state is unchanged.
    Rejected(CommandError),
}

/// Why an increment changed nothing. The texts are Redis's own, so RESP clients see the
/// errors they expect.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum CounterError {
    #[error("value is not an integer or out of range")]
    NotAnInteger,
    #[error("increment or decrement would overflow")]
    Overflow,
}

/// The integer a stored value spells, as Redis reads one: optional `-`, decimal digits, no
/// sign `+`, no spaces, no leading zeros, within `i64`.
pub fn parse_counter(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let number = text.parse::<i64>().ok()?;
    (number.to_string() == text).then_some(number)
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
            Command::PutIf {
                key,
                value,
                condition,
            } => {
                let exists = self.entries.contains_key(&key);
                let holds = match condition {
                    PutCondition::IfAbsent => !exists,
                    PutCondition::IfPresent => exists,
                };
                if holds {
                    self.set(key, Some(value));
                }
                Outcome::PutIf { written: holds }
            }
            Command::Incr { key, delta } => self.increment(key, delta),
            Command::MultiPut { pairs } => {
                for (key, value) in pairs {
                    self.set(key, Some(value));
                }
                Outcome::Written
            }
        }
    }

    /// Adds `delta` to the counter at `key`; refuses, changing nothing, a value that is not
    /// an integer and a sum out of `i64`.
    fn increment(&mut self, key: Bytes, delta: i64) -> Outcome {
        let current = match self.entries.get(&key) {
            None => 0,
            Some(value) => match parse_counter(value) {
                Some(number) => number,
                None => return Outcome::CounterRefused(CounterError::NotAnInteger),
            },
        };
        let Some(value) = current.checked_add(delta) else {
            return Outcome::CounterRefused(CounterError::Overflow);
        };
        self.set(key, Some(Bytes::from(value.to_string())));
        Outcome::Counter { value }
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
    fn conditional_puts_write_only_when_their_condition_holds() {
        // NX writes an absent key and not a present one; XX the reverse (Redis SET NX / XX).
        let mut machine = KvMachine::new();
        let put_if = |value: &'static str, condition| Command::PutIf {
            key: b("k"),
            value: b(value),
            condition,
        };
        let present = PutCondition::IfPresent;
        let absent = PutCondition::IfAbsent;
        assert_eq!(
            apply(&mut machine, put_if("x", present)),
            Outcome::PutIf { written: false }
        );
        assert_eq!(machine.get(b"k"), None);
        assert_eq!(
            apply(&mut machine, put_if("a", absent)),
            Outcome::PutIf { written: true }
        );
        assert_eq!(
            apply(&mut machine, put_if("b", absent)),
            Outcome::PutIf { written: false }
        );
        assert_eq!(machine.get(b"k"), Some(&b("a")));
        assert_eq!(
            apply(&mut machine, put_if("cc", present)),
            Outcome::PutIf { written: true }
        );
        assert_eq!(
            (machine.get(b"k"), machine.data_bytes()),
            (Some(&b("cc")), 3)
        );
    }

    #[test]
    fn increments_count_from_zero_and_refuse_non_integers_and_overflow() {
        // INCR of an absent key gives 1; a non-integer or an overflowing sum changes nothing.
        let mut machine = KvMachine::new();
        let incr = |key: &'static str, delta| Command::Incr { key: b(key), delta };
        assert_eq!(
            apply(&mut machine, incr("n", 1)),
            Outcome::Counter { value: 1 }
        );
        assert_eq!(
            apply(&mut machine, incr("n", -5)),
            Outcome::Counter { value: -4 }
        );
        assert_eq!(machine.get(b"n"), Some(&b("-4")));
        for bad in ["abc", "", " 1", "+1", "01", "9223372036854775808"] {
            apply(
                &mut machine,
                Command::Put {
                    key: b("s"),
                    value: b(bad),
                },
            );
            assert_eq!(
                apply(&mut machine, incr("s", 1)),
                Outcome::CounterRefused(CounterError::NotAnInteger),
                "value {bad:?}"
            );
            assert_eq!(machine.get(b"s"), Some(&b(bad)));
        }
        apply(
            &mut machine,
            Command::Put {
                key: b("m"),
                value: b("9223372036854775807"),
            },
        );
        assert_eq!(
            apply(&mut machine, incr("m", 1)),
            Outcome::CounterRefused(CounterError::Overflow)
        );
        assert_eq!(machine.get(b"m"), Some(&b("9223372036854775807")));
        assert_eq!(
            apply(&mut machine, incr("m", i64::MIN)),
            Outcome::Counter { value: -1 }
        );
    }

    #[test]
    fn a_multi_put_writes_every_pair() {
        // Every pair of one multi-put is visible after it, later pairs winning on a repeat.
        let mut machine = KvMachine::new();
        let command = Command::MultiPut {
            pairs: vec![(b("a"), b("1")), (b("b"), b("2")), (b("a"), b("3"))],
        };
        assert_eq!(apply(&mut machine, command), Outcome::Written);
        assert_eq!(
            (machine.get(b"a"), machine.get(b"b"), machine.key_count()),
            (Some(&b("3")), Some(&b("2")), 2)
        );
        assert_eq!(machine.data_bytes(), 4);
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
