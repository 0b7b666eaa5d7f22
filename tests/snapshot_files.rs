//! Snapshots on real files with direct I/O (`reactor::snapstore::DmaSnapshotStore`): write,
//! rename, list and restore; a corrupt newest snapshot falling back to the one before; an
//! unfinished temporary file ignored and removed; old snapshots pruned; and a snapshot taken
//! while another task keeps writing to the machine holding exactly the frozen state.

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::Bytes;
use ringraft::ids::{GroupId, LogIndex, NodeId, Term};
use ringraft::kv::store::{
    SnapshotId, SnapshotStore, load_newest, remove_old, snapshot_file_name, write_snapshot,
};
use ringraft::kv::{Command, KvMachine};
use ringraft::raft::types::Membership;
use ringraft::reactor::executor::{ExecutorConfig, run_executor};
use ringraft::reactor::snapstore::{DmaSnapshotStore, restore_newest};

const GROUP: GroupId = GroupId(3);

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ringraft-snapshot-files-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir under the target directory")
}

fn run<T>(future: impl std::future::Future<Output = T>) -> T {
    run_executor(&ExecutorConfig::new("test-snapshot-files"), future).expect("executor starts")
}

fn put(machine: &mut KvMachine, number: u64, version: u64) {
    let command = Command::Put {
        key: Bytes::from(format!("key-{number:08}")),
        value: Bytes::from(format!("value-{number}-{version}-{}", "x".repeat(40))),
    };
    let index = machine.applied().next();
    machine.apply(index, &command.encode());
}

fn machine_with(key_count: u64, version: u64) -> KvMachine {
    let mut machine = KvMachine::new();
    for number in 0..key_count {
        put(&mut machine, number, version);
    }
    machine
}

fn contents(machine: &KvMachine) -> Vec<(Bytes, Bytes)> {
    machine
        .entries_in_order()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

fn membership() -> Membership {
    Membership::new(vec![NodeId(1), NodeId(2), NodeId(3)])
}

/// Writes a snapshot of `machine` through `store`.
async fn snapshot(store: &DmaSnapshotStore, machine: KvMachine) -> (SnapshotId, KvMachine) {
    let machine = RefCell::new(machine);
    let id = write_snapshot(store, GROUP, &machine, Term(2), membership())
        .await
        .expect("snapshot written");
    (id, machine.into_inner())
}

fn snap_dir(dir: &Path) -> PathBuf {
    dir.join("core-0").join("snap")
}

#[test]
fn written_snapshot_is_listed_and_restores_the_same_state() {
    // A finished snapshot has its final name, is padded to the alignment, lists newest first
    // and restores to the same keys, values, applied index and membership, also after a
    // restart of the executor.
    let dir = temp_dir();
    let path = snap_dir(dir.path());
    let expected = contents(&machine_with(4000, 2));
    let store_path = path.clone();
    let (first, second, alignment) = run(async move {
        let store = DmaSnapshotStore::open(&store_path).await.expect("open");
        let (first, _) = snapshot(&store, machine_with(1000, 1)).await;
        let (second, _) = snapshot(&store, machine_with(4000, 2)).await;
        assert_eq!(store.list(GROUP).await.expect("list"), vec![second, first]);
        assert!(store.list(GroupId(4)).await.expect("list").is_empty());
        (first, second, store.alignment())
    });
    assert_eq!(first.last.index, LogIndex(1000));
    assert_eq!(second.last.index, LogIndex(4000));
    let length = std::fs::metadata(path.join(snapshot_file_name(second)))
        .expect("final name exists")
        .len();
    assert_eq!(
        length % alignment as u64,
        0,
        "file of {length} bytes not padded"
    );
    let restored = run(async move {
        let store = DmaSnapshotStore::open(&path).await.expect("reopen");
        restore_newest(&store, GROUP).await.expect("restore")
    });
    assert!(
        restored.skipped.is_empty(),
        "skipped {:?}",
        restored.skipped
    );
    let (id, restored) = restored.restored.expect("a snapshot");
    assert_eq!(id, second);
    assert_eq!(restored.machine.applied(), LogIndex(4000));
    assert_eq!(restored.header.meta.membership, membership());
    assert_eq!(contents(&restored.machine), expected);
}

#[test]
fn corrupt_newest_snapshot_falls_back_to_the_previous_one() {
    // One flipped byte in the middle of the newest file makes restore skip it, say why, and
    // load the one before.
    let dir = temp_dir();
    let path = snap_dir(dir.path());
    let store_path = path.clone();
    let (older, newest) = run(async move {
        let store = DmaSnapshotStore::open(&store_path).await.expect("open");
        let (older, _) = snapshot(&store, machine_with(2000, 1)).await;
        let (newest, _) = snapshot(&store, machine_with(3000, 2)).await;
        (older, newest)
    });
    let newest_path = path.join(snapshot_file_name(newest));
    let mut bytes = std::fs::read(&newest_path).expect("read newest");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&newest_path, &bytes).expect("corrupt newest");
    let loaded = run(async move {
        let store = DmaSnapshotStore::open(&path).await.expect("reopen");
        restore_newest(&store, GROUP).await.expect("restore")
    });
    assert_eq!(loaded.skipped.len(), 1, "skipped {:?}", loaded.skipped);
    assert_eq!(loaded.skipped[0].id, newest);
    assert!(
        loaded.skipped[0].reason.contains("checksum"),
        "reason {}",
        loaded.skipped[0].reason
    );
    let (id, restored) = loaded.restored.expect("the older snapshot");
    assert_eq!(id, older);
    assert_eq!(
        contents(&restored.machine),
        contents(&machine_with(2000, 1))
    );
}

#[test]
fn torn_temporary_file_is_ignored_and_removed() {
    // A snapshot whose writing was interrupted (half its bytes under the temporary name) is
    // never listed, is removed when the store opens, and a file of another kind is left.
    let dir = temp_dir();
    let path = snap_dir(dir.path());
    let store_path = path.clone();
    let complete = run(async move {
        let store = DmaSnapshotStore::open(&store_path).await.expect("open");
        snapshot(&store, machine_with(500, 1)).await.0
    });
    let complete_bytes = std::fs::read(path.join(snapshot_file_name(complete))).expect("read");
    let torn_id = SnapshotId {
        group: GROUP,
        last: ringraft::ids::EntryId {
            term: Term(3),
            index: LogIndex(900),
        },
    };
    let torn = path.join(format!("{}.tmp", snapshot_file_name(torn_id)));
    std::fs::write(&torn, &complete_bytes[..complete_bytes.len() / 2]).expect("torn temp");
    let stranger = path.join("notes.txt");
    std::fs::write(&stranger, b"not ours").expect("stranger");
    let loaded = run(async move {
        let store = DmaSnapshotStore::open(&path).await.expect("reopen");
        assert_eq!(store.list(GROUP).await.expect("list"), vec![complete]);
        load_newest(&store, GROUP).await.expect("load")
    });
    assert!(!torn.exists(), "torn temp file survived the open");
    assert!(stranger.exists(), "a file that is not ours was removed");
    assert_eq!(loaded.restored.expect("complete snapshot").0, complete);
}

#[test]
fn old_snapshots_are_removed_keeping_the_newest_two() {
    // After four snapshots, pruning leaves the two newest on disk.
    let dir = temp_dir();
    let path = snap_dir(dir.path());
    let (kept, removed, listed) = run(async move {
        let store = DmaSnapshotStore::open(&path).await.expect("open");
        let mut ids = Vec::new();
        for round in 1..=4 {
            ids.push(snapshot(&store, machine_with(100 * round, round)).await.0);
        }
        let removed = remove_old(&store, GROUP, ringraft::constants::SNAPSHOTS_KEPT)
            .await
            .expect("prune");
        (ids, removed, store.list(GROUP).await.expect("list"))
    });
    assert_eq!(listed, vec![kept[3], kept[2]]);
    assert_eq!(removed, vec![kept[1], kept[0]]);
}

/// One write of the task that runs beside a snapshot: overwrite, create or delete a key.
fn write_during(machine: &mut KvMachine, number: u64) {
    match number % 3 {
        0 => put(machine, (number * 7919) % 60_000, 2),
        1 => put(machine, 60_000 + number, 2),
        _ => {
            let command = Command::Delete {
                key: Bytes::from(format!("key-{:08}", (number * 104_729) % 60_000)),
            };
            let index = machine.applied().next();
            machine.apply(index, &command.encode());
        }
    }
}

#[test]
fn snapshot_taken_under_concurrent_writes_holds_the_frozen_state() {
    // Another task overwrites, deletes and creates keys while the snapshot is written in
    // steps; the snapshot restores to exactly the state at the freeze, and the writes did
    // run during it (the core was not stalled).
    let dir = temp_dir();
    let path = snap_dir(dir.path());
    let (frozen, restored, writes_during) = run(async move {
        let store = DmaSnapshotStore::open(&path).await.expect("open");
        let machine = Rc::new(RefCell::new(machine_with(60_000, 1)));
        let frozen = contents(&machine.borrow());
        let done = Rc::new(Cell::new(false));
        let writes_during = Rc::new(Cell::new(0u64));
        let writer = {
            let (machine, done, writes_during) = (
                Rc::clone(&machine),
                Rc::clone(&done),
                Rc::clone(&writes_during),
            );
            glommio::spawn_local(async move {
                // Writes start once the view is open, so the frozen state is known.
                while !machine.borrow().snapshot_open() {
                    futures_lite::future::yield_now().await;
                }
                let mut number = 0u64;
                while !done.get() {
                    write_during(&mut machine.borrow_mut(), number);
                    number += 1;
                    writes_during.set(number);
                    futures_lite::future::yield_now().await;
                }
            })
        };
        let id = write_snapshot(&store, GROUP, &machine, Term(2), membership())
            .await
            .expect("snapshot written");
        done.set(true);
        writer.await;
        let loaded = load_newest(&store, GROUP).await.expect("load");
        let (loaded_id, restored) = loaded.restored.expect("snapshot");
        assert_eq!(loaded_id, id);
        assert_eq!(id.last.index, LogIndex(60_000));
        (frozen, contents(&restored.machine), writes_during.get())
    });
    assert!(
        writes_during > 0,
        "no write ran while the snapshot was written"
    );
    assert_eq!(restored.len(), frozen.len());
    assert!(
        restored == frozen,
        "restored state differs from the frozen one"
    );
}
