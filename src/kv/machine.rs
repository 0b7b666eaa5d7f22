//! One group's key-value state: applies committed commands in log order and serves reads,
//! and gives a consistent view of itself at one applied index for a snapshot, without copying
//! the map and without stopping apply.
//!
//! Apply is deterministic: the same entries in the same order give the same state and the
//! same outcomes on every node, including for a malformed command (rejected, not a panic).
//!
//! The snapshot view (a frozen version kept by copy-on-write of single keys): values live in a
//! `HashMap` (reads and overwrites cost one hash probe), and the keys also in a `BTreeSet`
//! kept beside it (touched only when a key is created or deleted), so a snapshot can walk
//! them in key order in small steps, resuming after the last key it emitted whatever changed
//! in between. (A `BTreeMap` alone made random gets of 1,000,000 keys 4-8 times slower;
//! perf/README.md, "Snapshots".) `begin_snapshot` freezes
//! the applied index. While the view is open, the first write to a key the walk has not yet
//! passed saves that key's value at the freeze (or its absence) in a side table; the walk
//! emits, for each key, the saved value if there is one, else the current value, so keys
//! created after the freeze are skipped and keys deleted after it still appear. The side
//! table holds at most one entry per key changed during the snapshot and shrinks as the walk
//! passes its keys. This file must not do I/O or know the snapshot's byte format.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The map's hasher: keys come from clients, so it is seeded per process (an attacker cannot
/// pick colliding keys offline), and fast (SipHash was a tenth of the time of a restart).
type KeyHasher = foldhash::quality::RandomState;
use std::ops::Bound;

use bytes::Bytes;

use super::command::{Command, CommandError, PutCondition};
use crate::ids::{EntryId, LogIndex, Term};
use crate::raft::types::{Membership, SnapshotMeta};

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

/// What a frozen view holds: the Raft position and membership it stands for, and the size
/// of the state at the freeze (what the walk will emit, exactly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrozenState {
    pub meta: SnapshotMeta,
    pub key_count: u64,
    pub data_bytes: u64,
}

/// Whether a snapshot walk has more to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkStatus {
    More,
    /// Every key of the frozen state was emitted; the view is closed.
    Done,
}

/// An open snapshot view.
#[derive(Debug)]
struct Frozen {
    state: FrozenState,
    /// The last key emitted; keys at or before it are passed. `None` before the first step.
    cursor: Option<Bytes>,
    /// Values at the freeze (`None`: absent) of keys changed since and not yet passed.
    /// Invariant: every key here sorts after `cursor`.
    saved: BTreeMap<Bytes, Option<Bytes>>,
    /// Keys and bytes emitted so far, checked against `state` at the end.
    emitted_key_count: u64,
    emitted_data_bytes: u64,
}

impl Frozen {
    fn passed(&self, key: &[u8]) -> bool {
        self.cursor.as_deref().is_some_and(|cursor| key <= cursor)
    }
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
    entries: HashMap<Bytes, Bytes, KeyHasher>,
    /// The keys of `entries`, in order. Invariant: the same set of keys as `entries`.
    order: BTreeSet<Bytes>,
    /// Payload bytes of keys and values held.
    data_bytes: u64,
    applied: LogIndex,
    frozen: Option<Frozen>,
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

    /// Every key and value, in key order.
    pub fn entries_in_order(&self) -> impl Iterator<Item = (&Bytes, &Bytes)> {
        self.order
            .iter()
            .filter_map(|key| self.entries.get_key_value(key))
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

    /// A machine holding `entries` (in strictly increasing key order, as a snapshot stores
    /// them) with `applied` as its applied index: the end of a restore. The caller has
    /// validated every key and value.
    pub fn from_sorted(applied: LogIndex, entries: Vec<(Bytes, Bytes)>) -> KvMachine {
        for pair in entries.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "kv: restored keys out of order: {:?} before {:?}",
                pair[0].0,
                pair[1].0
            );
        }
        let data_bytes = entries
            .iter()
            .map(|(key, value)| (key.len() + value.len()) as u64)
            .sum();
        KvMachine {
            order: entries.iter().map(|(key, _)| key.clone()).collect(),
            entries: entries.into_iter().collect(),
            data_bytes,
            applied,
            frozen: None,
        }
    }

    /// Freezes the state at the applied index for a snapshot; `term` is the term of the
    /// entry at that index and `membership` the configuration in force there (thesis §5.1:
    /// a snapshot carries the last included index, term and configuration).
    pub fn begin_snapshot(&mut self, term: Term, membership: Membership) -> FrozenState {
        assert!(
            self.frozen.is_none(),
            "kv: a snapshot is already open at index {}",
            self.frozen
                .as_ref()
                .map_or(LogIndex::ZERO, |frozen| frozen.state.meta.last.index)
        );
        assert_eq!(
            self.order.len(),
            self.entries.len(),
            "kv: key order index out of step with the map"
        );
        let state = FrozenState {
            meta: SnapshotMeta {
                last: EntryId {
                    term,
                    index: self.applied,
                },
                membership,
            },
            key_count: self.entries.len() as u64,
            data_bytes: self.data_bytes,
        };
        self.frozen = Some(Frozen {
            state: state.clone(),
            cursor: None,
            saved: BTreeMap::new(),
            emitted_key_count: 0,
            emitted_data_bytes: 0,
        });
        state
    }

    /// Whether a snapshot view is open.
    pub fn snapshot_open(&self) -> bool {
        self.frozen.is_some()
    }

    /// Closes an open view without finishing it (the snapshot was abandoned).
    pub fn abort_snapshot(&mut self) {
        self.frozen = None;
    }

    /// Keys whose value at the freeze is held aside, for tests and metrics.
    pub fn snapshot_saved_key_count(&self) -> usize {
        self.frozen.as_ref().map_or(0, |frozen| frozen.saved.len())
    }

    /// Emits the next keys of the frozen state in key order, with their values at the
    /// freeze, until at least `step_bytes_max` key and value bytes are emitted or the walk
    /// ends (one key at least per call, so every call makes progress). Returns `Done` after
    /// the last key; the view is then closed.
    pub fn snapshot_step(
        &mut self,
        step_bytes_max: usize,
        emit: &mut dyn FnMut(&Bytes, &Bytes),
    ) -> WalkStatus {
        let Some(frozen) = self.frozen.as_mut() else {
            panic!("kv: snapshot step without an open snapshot");
        };
        let lower = match &frozen.cursor {
            Some(cursor) => Bound::Excluded(cursor.as_ref()),
            None => Bound::Unbounded,
        };
        let entries = &self.entries;
        let mut current = self
            .order
            .range::<[u8], _>((lower, Bound::Unbounded))
            .filter_map(|key| entries.get_key_value(key))
            .peekable();
        let mut saved = frozen
            .saved
            .range::<[u8], _>((lower, Bound::Unbounded))
            .peekable();
        let mut step_bytes = 0usize;
        let mut last_key: Option<Bytes> = None;
        while step_bytes < step_bytes_max {
            // Merge the two key-ordered sources; a saved value wins over the current one.
            let take_saved = match (current.peek(), saved.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((current_key, _)), Some((saved_key, _))) => saved_key <= current_key,
            };
            let (key, value) = if take_saved {
                let Some((key, value)) = saved.next() else {
                    break;
                };
                if current
                    .peek()
                    .is_some_and(|(current_key, _)| *current_key == key)
                {
                    current.next();
                }
                (key, value.as_ref())
            } else {
                let Some((key, value)) = current.next() else {
                    break;
                };
                (key, Some(value))
            };
            last_key = Some(key.clone());
            if let Some(value) = value {
                emit(key, value);
                step_bytes += key.len() + value.len();
                frozen.emitted_key_count += 1;
                frozen.emitted_data_bytes += (key.len() + value.len()) as u64;
            }
        }
        let finished = current.peek().is_none() && saved.peek().is_none();
        drop((current, saved));
        if let Some(key) = last_key {
            // Saved values the walk has passed are no longer needed.
            while frozen
                .saved
                .first_key_value()
                .is_some_and(|(saved_key, _)| *saved_key <= key)
            {
                frozen.saved.pop_first();
            }
            frozen.cursor = Some(key);
        }
        if !finished {
            return WalkStatus::More;
        }
        assert!(
            frozen.emitted_key_count == frozen.state.key_count
                && frozen.emitted_data_bytes == frozen.state.data_bytes,
            "kv: snapshot at {} emitted {} keys of {} bytes, frozen {} keys of {} bytes",
            frozen.state.meta.last.index,
            frozen.emitted_key_count,
            frozen.emitted_data_bytes,
            frozen.state.key_count,
            frozen.state.data_bytes
        );
        assert!(
            frozen.saved.is_empty(),
            "kv: saved values left after the walk"
        );
        self.frozen = None;
        WalkStatus::Done
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

    /// Before the first change of `key` under an open view that has not passed it, keeps
    /// its value at the freeze.
    fn preserve_frozen(&mut self, key: &Bytes) {
        let Some(frozen) = self.frozen.as_mut() else {
            return;
        };
        if frozen.passed(key) || frozen.saved.contains_key(key) {
            return;
        }
        let old = self.entries.get(key).cloned();
        frozen.saved.insert(key.clone(), old);
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
        self.preserve_frozen(&key);
        let key_bytes = key.len() as u64;
        let inserting = value.is_some();
        let old = match value {
            Some(value) => {
                self.data_bytes += value.len() as u64;
                match self.entries.entry(key) {
                    Entry::Occupied(mut occupied) => Some(occupied.insert(value)),
                    Entry::Vacant(vacant) => {
                        self.order.insert(vacant.key().clone());
                        vacant.insert(value);
                        None
                    }
                }
            }
            None => {
                let old = self.entries.remove(&key);
                if old.is_some() {
                    self.order.remove(&key);
                }
                old
            }
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
    use crate::ids::NodeId;

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

    /// One step of the interleaving in the snapshot view property test.
    #[derive(Clone, Debug)]
    enum ViewOp {
        Put(u8, u8),
        Delete(u8),
        Step(usize),
    }

    fn view_op() -> impl proptest::strategy::Strategy<Value = ViewOp> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..24, any::<u8>()).prop_map(|(key, value)| ViewOp::Put(key, value)),
            (0u8..24).prop_map(ViewOp::Delete),
            (1usize..40).prop_map(ViewOp::Step),
        ]
    }

    fn key_of(number: u8) -> Bytes {
        Bytes::from(format!("key-{number:02}"))
    }

    fn run_view_op(machine: &mut KvMachine, op: &ViewOp) {
        let command = match op {
            ViewOp::Put(key, value) => Command::Put {
                key: key_of(*key),
                value: Bytes::from(vec![*value; 1 + (*value as usize % 7)]),
            },
            ViewOp::Delete(key) => Command::Delete { key: key_of(*key) },
            ViewOp::Step(_) => return,
        };
        apply(machine, command);
    }

    proptest::proptest! {
        #[test]
        fn snapshot_view_is_the_state_at_the_freeze(
            before in proptest::collection::vec(view_op(), 0..60),
            during in proptest::collection::vec(view_op(), 0..120),
        ) {
            // Random writes, deletes and walk steps of random sizes interleaved after a
            // freeze emit exactly the keys and values held at the freeze, in key order.
            let mut machine = KvMachine::new();
            for op in &before {
                run_view_op(&mut machine, op);
            }
            let expected: Vec<(Bytes, Bytes)> = machine
                .entries_in_order()
                .map(|(key, value)| (key.clone(), value.clone()))
                .collect();
            let frozen = machine.begin_snapshot(Term(2), Membership::new(vec![NodeId(1)]));
            proptest::prop_assert_eq!(frozen.meta.last.index, machine.applied());
            proptest::prop_assert_eq!(frozen.key_count, expected.len() as u64);
            let mut emitted = Vec::new();
            let mut done = false;
            let mut record = |key: &Bytes, value: &Bytes| emitted.push((key.clone(), value.clone()));
            for op in &during {
                match op {
                    ViewOp::Step(bytes) if !done => {
                        done = machine.snapshot_step(*bytes, &mut record) == WalkStatus::Done;
                    }
                    _ => run_view_op(&mut machine, op),
                }
            }
            while !done {
                done = machine.snapshot_step(5, &mut record) == WalkStatus::Done;
            }
            proptest::prop_assert_eq!(emitted, expected);
            proptest::prop_assert!(!machine.snapshot_open());
            proptest::prop_assert_eq!(machine.snapshot_saved_key_count(), 0);
        }
    }

    #[test]
    fn writes_during_a_snapshot_keep_one_old_value_per_key() {
        // Only the first change of a key not yet passed saves its old value; keys already
        // passed, and later changes of the same key, save nothing.
        let mut machine = KvMachine::new();
        for number in 0..4 {
            apply(
                &mut machine,
                Command::Put {
                    key: key_of(number),
                    value: b("old"),
                },
            );
        }
        machine.begin_snapshot(Term(1), Membership::default());
        let mut emitted = Vec::new();
        let mut record = |key: &Bytes, value: &Bytes| emitted.push((key.clone(), value.clone()));
        assert_eq!(machine.snapshot_step(1, &mut record), WalkStatus::More);
        for value in ["new1", "new2"] {
            for number in [0, 2] {
                apply(
                    &mut machine,
                    Command::Put {
                        key: key_of(number),
                        value: b(value),
                    },
                );
            }
        }
        apply(&mut machine, Command::Delete { key: key_of(3) });
        assert_eq!(machine.snapshot_saved_key_count(), 2, "keys 2 and 3 only");
        while machine.snapshot_step(1, &mut record) == WalkStatus::More {}
        let values: Vec<&[u8]> = emitted.iter().map(|(_, value)| value.as_ref()).collect();
        assert_eq!(values, vec![b"old".as_slice(); 4]);
        assert_eq!(machine.get(&key_of(2)), Some(&b("new2")));
        assert_eq!(machine.get(&key_of(3)), None);
    }
}
