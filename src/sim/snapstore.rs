//! The simulated snapshot store: a deterministic, in-memory `SnapshotStore` for tests and the
//! simulator. Files keep their durable bytes and their current (written, maybe unsynced)
//! bytes; the directory keeps its durable names and its current names. `crash()` loses
//! power: every file keeps its synced bytes plus a random prefix of what was written after
//! (a torn tail), and every rename, creation or removal not followed by a directory sync is
//! undone, as on a real file system. A power cut can be scheduled after a number of
//! operations, so a test can crash a snapshot at any step of writing and installing it.
//!
//! It must not import `reactor/` or the runtime, read the clock, or use randomness other
//! than the seeded `Prng` it is given. Its futures never wait: run them with
//! `sim::disk::block_on`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::ids::GroupId;
use crate::kv::store::{
    SNAPSHOT_TEMP_SUFFIX, SnapshotId, SnapshotReader, SnapshotStore, SnapshotWriter, StoreError,
    StoreOp, is_temp_snapshot_file_name, parse_snapshot_file_name, snapshot_file_name,
};
use crate::prng::Prng;

/// Largest chunk a simulated reader hands out; each reader draws its own size below it, so
/// the decoder sees many ways of cutting the same bytes.
const SIM_READ_CHUNK_BYTES_MAX: u64 = 64 * 1024;

#[derive(Clone, Debug, Default)]
struct SimFile {
    durable: Vec<u8>,
    current: Vec<u8>,
}

#[derive(Debug)]
struct State {
    alignment: usize,
    prng: Prng,
    files: BTreeMap<u64, SimFile>,
    file_id_next: u64,
    names_current: BTreeMap<String, u64>,
    names_durable: BTreeMap<String, u64>,
    /// Operations left before the power goes; `None`: no cut scheduled.
    operations_left: Option<u64>,
    /// Operations since the store was made, for tests that aim a power cut.
    operation_count: u64,
}

impl State {
    /// Counts one operation, failing it (and all later ones) once the power is cut.
    fn operate(&mut self, op: StoreOp, target: &str) -> Result<(), StoreError> {
        if let Some(left) = self.operations_left {
            if left == 0 {
                return Err(StoreError::new(op, target, "power cut"));
            }
            self.operations_left = Some(left - 1);
        }
        self.operation_count += 1;
        Ok(())
    }

    /// Makes the current names durable; files no name refers to any more are gone.
    fn sync_directory(&mut self) {
        self.names_durable = self.names_current.clone();
        let State {
            files,
            names_current,
            ..
        } = self;
        files.retain(|id, _| names_current.values().any(|named| named == id));
    }
}

/// The simulated store. Clones share the same files, so a test keeps a handle to crash or
/// corrupt the store while writers hold others.
#[derive(Clone, Debug)]
pub struct SimSnapshotStore {
    state: Rc<RefCell<State>>,
}

impl SimSnapshotStore {
    /// An empty store padding files to `alignment`, whose crashes and read sizes draw from
    /// `prng`.
    pub fn new(prng: Prng, alignment: usize) -> SimSnapshotStore {
        assert!(
            alignment == 512 || alignment == 4096,
            "sim snapshot store: alignment {alignment} is neither 512 nor 4096"
        );
        SimSnapshotStore {
            state: Rc::new(RefCell::new(State {
                alignment,
                prng,
                files: BTreeMap::new(),
                file_id_next: 1,
                names_current: BTreeMap::new(),
                names_durable: BTreeMap::new(),
                operations_left: None,
                operation_count: 0,
            })),
        }
    }

    /// What opening the store after a restart does: removes temporary files, durably.
    pub fn recover(&self) {
        let mut state = self.state.borrow_mut();
        state
            .names_current
            .retain(|name, _| !is_temp_snapshot_file_name(name));
        state.sync_directory();
    }

    /// Cuts the power after `operations` more operations: that one and every later one fail
    /// until `crash`.
    pub fn cut_power_after(&self, operations: u64) {
        self.state.borrow_mut().operations_left = Some(operations);
    }

    /// Whether a power cut is scheduled or has happened (and no `crash` followed yet).
    pub fn power_cut_pending(&self) -> bool {
        self.state.borrow().operations_left.is_some()
    }

    /// Whether the scheduled power cut has happened: every operation fails until `crash`.
    pub fn power_is_cut(&self) -> bool {
        self.state.borrow().operations_left == Some(0)
    }

    /// Operations performed so far.
    pub fn operation_count(&self) -> u64 {
        self.state.borrow().operation_count
    }

    /// Loses power: unsynced file bytes are lost but for a random prefix, and directory
    /// changes since the last directory sync are undone. Clears a scheduled power cut.
    pub fn crash(&self) {
        let mut state = self.state.borrow_mut();
        let State {
            prng,
            files,
            names_current,
            names_durable,
            operations_left,
            ..
        } = &mut *state;
        *names_current = names_durable.clone();
        files.retain(|id, _| names_durable.values().any(|named| named == id));
        for file in files.values_mut() {
            let synced = file.durable.len();
            assert!(
                file.current.len() >= synced && file.current[..synced] == file.durable[..],
                "sim snapshot store: a file's current bytes do not extend its durable ones"
            );
            let unsynced = (file.current.len() - synced) as u64;
            let kept = synced + prng.range_inclusive(0, unsynced) as usize;
            file.current.truncate(kept);
            file.durable = file.current.clone();
        }
        *operations_left = None;
    }

    /// Flips bits of one byte of a snapshot, durably: disk corruption.
    pub fn corrupt(&self, id: SnapshotId, offset: usize, xor: u8) {
        assert!(
            xor != 0,
            "sim snapshot store: corrupt with xor 0 changes nothing"
        );
        let mut state = self.state.borrow_mut();
        let name = snapshot_file_name(id);
        let file_id = *state
            .names_current
            .get(&name)
            .unwrap_or_else(|| panic!("sim snapshot store: corrupt of missing {name}"));
        let Some(file) = state.files.get_mut(&file_id) else {
            panic!("sim snapshot store: {name} names no file");
        };
        assert!(
            offset < file.current.len() && offset < file.durable.len(),
            "sim snapshot store: corrupt at {offset} past the end of {name}"
        );
        file.current[offset] ^= xor;
        file.durable[offset] ^= xor;
    }

    /// The current length of a snapshot file, if it exists.
    pub fn file_bytes(&self, id: SnapshotId) -> Option<usize> {
        let state = self.state.borrow();
        let file_id = state.names_current.get(&snapshot_file_name(id))?;
        state.files.get(file_id).map(|file| file.current.len())
    }

    /// Names in the directory now, temporary ones included.
    pub fn names(&self) -> Vec<String> {
        self.state.borrow().names_current.keys().cloned().collect()
    }
}

/// A snapshot being written into the simulated store.
#[derive(Debug)]
pub struct SimSnapshotWriter {
    store: SimSnapshotStore,
    id: SnapshotId,
    file_id: u64,
    temp_name: String,
}

impl SnapshotWriter for SimSnapshotWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        let mut state = self.store.state.borrow_mut();
        state.operate(StoreOp::Write, &self.temp_name)?;
        let file = state
            .files
            .get_mut(&self.file_id)
            .ok_or_else(|| StoreError::new(StoreOp::Write, &self.temp_name, "no such file"))?;
        file.current.extend_from_slice(chunk);
        Ok(())
    }

    async fn finish(self) -> Result<SnapshotId, StoreError> {
        let final_name = snapshot_file_name(self.id);
        let mut state = self.store.state.borrow_mut();
        state.operate(StoreOp::Sync, &self.temp_name)?;
        let alignment = state.alignment;
        let file = state
            .files
            .get_mut(&self.file_id)
            .ok_or_else(|| StoreError::new(StoreOp::Sync, &self.temp_name, "no such file"))?;
        assert!(
            file.current.len().is_multiple_of(alignment),
            "sim snapshot store: {} of {} bytes is not padded to {alignment}",
            self.temp_name,
            file.current.len()
        );
        file.durable = file.current.clone();
        state.operate(StoreOp::Rename, &self.temp_name)?;
        state.names_current.remove(&self.temp_name);
        state.names_current.insert(final_name.clone(), self.file_id);
        state.operate(StoreOp::Sync, "the snapshot directory")?;
        state.sync_directory();
        Ok(self.id)
    }

    async fn abort(self) -> Result<(), StoreError> {
        let mut state = self.store.state.borrow_mut();
        state.operate(StoreOp::Remove, &self.temp_name)?;
        state.names_current.remove(&self.temp_name);
        state.sync_directory();
        Ok(())
    }
}

/// A snapshot read from the simulated store, in chunks of a size drawn at open.
#[derive(Debug)]
pub struct SimSnapshotReader {
    bytes: Vec<u8>,
    position: usize,
    chunk_bytes: usize,
}

impl SnapshotReader for SimSnapshotReader {
    type Chunk = Vec<u8>;

    async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, StoreError> {
        if self.position >= self.bytes.len() {
            return Ok(None);
        }
        let end = (self.position + self.chunk_bytes).min(self.bytes.len());
        let chunk = self.bytes[self.position..end].to_vec();
        self.position = end;
        Ok(Some(chunk))
    }
}

impl SnapshotStore for SimSnapshotStore {
    type Writer = SimSnapshotWriter;
    type Reader = SimSnapshotReader;

    fn alignment(&self) -> usize {
        self.state.borrow().alignment
    }

    fn describe(&self, id: SnapshotId) -> String {
        format!("sim:{}", snapshot_file_name(id))
    }

    async fn begin(&self, id: SnapshotId) -> Result<SimSnapshotWriter, StoreError> {
        let temp_name = format!("{}{SNAPSHOT_TEMP_SUFFIX}", snapshot_file_name(id));
        let mut state = self.state.borrow_mut();
        state.operate(StoreOp::Create, &temp_name)?;
        let file_id = state.file_id_next;
        state.file_id_next += 1;
        state.files.insert(file_id, SimFile::default());
        // A leftover of the same name is unlinked; its bytes go at the next directory sync.
        state.names_current.insert(temp_name.clone(), file_id);
        Ok(SimSnapshotWriter {
            store: self.clone(),
            id,
            file_id,
            temp_name,
        })
    }

    async fn list(&self, group: GroupId) -> Result<Vec<SnapshotId>, StoreError> {
        let state = self.state.borrow();
        let mut ids: Vec<SnapshotId> = state
            .names_current
            .keys()
            .filter_map(|name| parse_snapshot_file_name(name))
            .filter(|id| id.group == group)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    async fn open(&self, id: SnapshotId) -> Result<SimSnapshotReader, StoreError> {
        let name = snapshot_file_name(id);
        let mut state = self.state.borrow_mut();
        state.operate(StoreOp::Read, &name)?;
        let file_id = *state
            .names_current
            .get(&name)
            .ok_or_else(|| StoreError::new(StoreOp::Read, &name, "no such file"))?;
        let bytes = state
            .files
            .get(&file_id)
            .map(|file| file.current.clone())
            .ok_or_else(|| StoreError::new(StoreOp::Read, &name, "no such file"))?;
        let chunk_bytes = state.prng.range_inclusive(1, SIM_READ_CHUNK_BYTES_MAX) as usize;
        Ok(SimSnapshotReader {
            bytes,
            position: 0,
            chunk_bytes,
        })
    }

    async fn remove(&self, id: SnapshotId) -> Result<(), StoreError> {
        let name = snapshot_file_name(id);
        let mut state = self.state.borrow_mut();
        state.operate(StoreOp::Remove, &name)?;
        state
            .names_current
            .remove(&name)
            .ok_or_else(|| StoreError::new(StoreOp::Remove, &name, "no such file"))?;
        state.operate(StoreOp::Sync, "the snapshot directory")?;
        state.sync_directory();
        Ok(())
    }

    async fn pause(&self) {}
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use bytes::Bytes;

    use super::*;
    use crate::ids::{LogIndex, NodeId, Term};
    use crate::kv::store::{load_newest, write_snapshot};
    use crate::kv::{Command, KvMachine};
    use crate::raft::types::Membership;
    use crate::sim::disk::block_on;

    const GROUP: GroupId = GroupId(1);

    fn machine_after(rounds: u64) -> KvMachine {
        let mut machine = KvMachine::new();
        for round in 1..=rounds {
            for number in 0..300u64 {
                let command = Command::Put {
                    key: Bytes::from(format!("key-{:04}", (number * 7 + round) % 500)),
                    value: Bytes::from(vec![round as u8; 1 + (number as usize % 90)]),
                };
                let index = machine.applied().next();
                machine.apply(index, &command.encode());
            }
        }
        machine
    }

    fn contents(machine: &KvMachine) -> Vec<(Bytes, Bytes)> {
        machine
            .entries_in_order()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    fn snapshot(store: &SimSnapshotStore, rounds: u64) -> Result<SnapshotId, String> {
        let machine = RefCell::new(machine_after(rounds));
        let membership = Membership::new(vec![NodeId(1), NodeId(2), NodeId(3)]);
        block_on(write_snapshot(
            store,
            GROUP,
            &machine,
            Term(rounds),
            membership,
        ))
        .map_err(|error| error.to_string())
    }

    #[test]
    fn power_cut_at_any_step_leaves_the_old_or_the_new_snapshot_whole() {
        // For every operation of writing and installing a second snapshot, a power cut there
        // and a crash leave exactly one of the two snapshots as the newest, intact: the new
        // one if and only if its writer finished, and no temporary file after recovery.
        let operations = {
            let store = SimSnapshotStore::new(Prng::new(1), 512);
            snapshot(&store, 1).expect("first snapshot");
            let before = store.operation_count();
            snapshot(&store, 2).expect("second snapshot");
            store.operation_count() - before
        };
        assert!(
            operations > 4,
            "only {operations} operations to install a snapshot"
        );
        for cut in 0..=operations {
            let store = SimSnapshotStore::new(Prng::new(cut), 512);
            snapshot(&store, 1).expect("first snapshot");
            store.cut_power_after(cut);
            let finished = snapshot(&store, 2).is_ok();
            store.crash();
            store.recover();
            assert!(
                store.names().iter().all(|name| !name.ends_with(".tmp")),
                "cut {cut}: temporary file left: {:?}",
                store.names()
            );
            let loaded = block_on(load_newest(&store, GROUP)).expect("load");
            assert!(loaded.skipped.is_empty(), "cut {cut}: {:?}", loaded.skipped);
            let (id, restored) = loaded.restored.expect("a snapshot");
            let rounds = if finished { 2 } else { 1 };
            assert_eq!(id.last.term, Term(rounds), "cut {cut}: finished {finished}");
            assert_eq!(
                contents(&restored.machine),
                contents(&machine_after(rounds)),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn unsynced_snapshot_bytes_are_torn_by_a_crash() {
        // Bytes written but not synced survive a crash only as a random prefix: the store
        // really loses them, so a snapshot installed without its sync would be caught.
        let id = SnapshotId {
            group: GROUP,
            last: crate::ids::EntryId {
                term: Term(1),
                index: LogIndex(5),
            },
        };
        let mut lengths = Vec::new();
        for seed in 0..8 {
            let store = SimSnapshotStore::new(Prng::new(seed), 512);
            let mut writer = block_on(store.begin(id)).expect("begin");
            block_on(writer.write(&[7u8; 4096])).expect("write");
            {
                // A rename made durable without the file's sync.
                let mut state = store.state.borrow_mut();
                state.names_current.remove(&writer.temp_name);
                state
                    .names_current
                    .insert(snapshot_file_name(id), writer.file_id);
                state.sync_directory();
            }
            store.crash();
            lengths.push(store.file_bytes(id).expect("the name is durable"));
        }
        assert!(lengths.iter().all(|&length| length <= 4096), "{lengths:?}");
        assert!(lengths.iter().any(|&length| length < 4096), "{lengths:?}");
    }

    #[test]
    fn corrupt_newest_is_skipped_for_the_one_before() {
        // A flipped byte in the newest snapshot makes loading report it and use the older.
        let store = SimSnapshotStore::new(Prng::new(5), 4096);
        let older = snapshot(&store, 1).expect("older");
        let newest = snapshot(&store, 2).expect("newest");
        let length = store.file_bytes(newest).expect("exists");
        store.corrupt(newest, length / 3, 0x01);
        let loaded = block_on(load_newest(&store, GROUP)).expect("load");
        assert_eq!(loaded.skipped.len(), 1);
        assert_eq!(loaded.skipped[0].id, newest);
        let (id, restored) = loaded.restored.expect("older");
        assert_eq!(id, older);
        assert_eq!(contents(&restored.machine), contents(&machine_after(1)));
    }
}
