//! Where snapshots live: the `SnapshotStore` trait (one directory of snapshot files per core),
//! snapshot file names, and the procedures built on the trait alone: write a snapshot from a
//! machine's frozen view in steps that yield, load the newest snapshot that decodes
//! completely (skipping corrupt ones, and saying which), and remove old snapshots.
//!
//! Two implementations exist: direct I/O in the reactor (`reactor/snapstore.rs`) and the
//! in-memory, crash-simulating one in `sim/snapstore.rs`. This file must not do I/O itself,
//! name the runtime, or know anything of the byte format beyond `snapshot.rs`'s API.

use std::cell::RefCell;
use std::fmt;

use thiserror::Error;

use super::machine::KvMachine;
use super::snapshot::{EncodeStatus, Restored, SnapshotDecoder, SnapshotEncoder, SnapshotError};
use crate::ids::{EntryId, GroupId, LogIndex, Term};
use crate::raft::types::Membership;

/// Suffix of a snapshot being written; it gets its final name only once complete and synced.
pub const SNAPSHOT_TEMP_SUFFIX: &str = ".tmp";
const SNAPSHOT_SUFFIX: &str = ".snap";

/// One snapshot of one group: the group and the last entry it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SnapshotId {
    pub group: GroupId,
    pub last: EntryId,
}

impl SnapshotId {
    /// Newer snapshots sort later: by group, then index, then term.
    fn sort_key(self) -> (GroupId, LogIndex, Term) {
        (self.group, self.last.index, self.last.term)
    }
}

impl PartialOrd for SnapshotId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SnapshotId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort_key().cmp(&other.sort_key())
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&snapshot_file_name(*self))
    }
}

/// The file name of a snapshot: `group-<g>-<index>-<term>.snap`.
pub fn snapshot_file_name(id: SnapshotId) -> String {
    format!(
        "group-{}-{}-{}{SNAPSHOT_SUFFIX}",
        id.group.get(),
        id.last.index.get(),
        id.last.term.get()
    )
}

/// Parses a name made by `snapshot_file_name`; anything else is not a snapshot.
pub fn parse_snapshot_file_name(name: &str) -> Option<SnapshotId> {
    let fields = name.strip_prefix("group-")?.strip_suffix(SNAPSHOT_SUFFIX)?;
    let mut parts = fields.split('-');
    let number = |text: Option<&str>| -> Option<u64> {
        let text = text?;
        let canonical = !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'));
        if canonical { text.parse().ok() } else { None }
    };
    let group = u32::try_from(number(parts.next())?).ok()?;
    let index = number(parts.next())?;
    let term = number(parts.next())?;
    if parts.next().is_some() {
        return None;
    }
    Some(SnapshotId {
        group: GroupId(group),
        last: EntryId {
            term: Term(term),
            index: LogIndex(index),
        },
    })
}

/// Whether `name` is a snapshot still being written (or abandoned by a crash).
pub fn is_temp_snapshot_file_name(name: &str) -> bool {
    name.strip_suffix(SNAPSHOT_TEMP_SUFFIX)
        .is_some_and(|snapshot| parse_snapshot_file_name(snapshot).is_some())
}

/// The operation a `StoreError` comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOp {
    Open,
    List,
    Create,
    Write,
    Sync,
    Rename,
    Read,
    Remove,
}

impl fmt::Display for StoreOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            StoreOp::Open => "open",
            StoreOp::List => "list",
            StoreOp::Create => "create",
            StoreOp::Write => "write",
            StoreOp::Sync => "sync",
            StoreOp::Rename => "rename",
            StoreOp::Read => "read",
            StoreOp::Remove => "remove",
        };
        f.write_str(name)
    }
}

/// A failed operation of a snapshot store; implementations render their own errors into
/// `message`. Like the WAL's, a failed write or sync is not retried.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("snapshot store {op} failed for {target}: {message}")]
pub struct StoreError {
    pub op: StoreOp,
    /// The file or directory concerned.
    pub target: String,
    pub message: String,
}

impl StoreError {
    pub fn new(op: StoreOp, target: impl Into<String>, message: impl Into<String>) -> StoreError {
        StoreError {
            op,
            target: target.into(),
            message: message.into(),
        }
    }
}

/// Errors of the procedures in this file.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SnapshotStoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding the snapshot of group {group}: {source}")]
    Encode {
        group: GroupId,
        source: SnapshotError,
    },
}

/// A snapshot being written, under its temporary name.
#[allow(async_fn_in_trait)]
pub trait SnapshotWriter {
    /// Appends `chunk`. Not durable, and not visible under the final name, until `finish`.
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError>;

    /// Writes what is buffered, syncs the file (fdatasync), renames it to its final name and
    /// syncs the directory: after it returns, the snapshot survives a crash whole.
    async fn finish(self) -> Result<SnapshotId, StoreError>;

    /// Gives up: removes the temporary file.
    async fn abort(self) -> Result<(), StoreError>;
}

/// A snapshot file read from the start in chunks.
#[allow(async_fn_in_trait)]
pub trait SnapshotReader {
    type Chunk: AsRef<[u8]>;

    /// The next bytes of the file, or `None` at its end.
    async fn next_chunk(&mut self) -> Result<Option<Self::Chunk>, StoreError>;
}

/// One core's directory of snapshot files.
///
/// Contract, kept by both implementations:
/// - a snapshot is listed only once `finish` of its writer returned (or, after a crash, if
///   the rename reached the disk: then its bytes did too, as they were synced first);
/// - temporary files are never listed, and `open` of the store removes them;
/// - methods take `&self`: one executor, interior mutability, futures need not be `Send`.
#[allow(async_fn_in_trait)]
pub trait SnapshotStore {
    type Writer: SnapshotWriter;
    type Reader: SnapshotReader;

    /// The direct-I/O alignment snapshot files are padded to.
    fn alignment(&self) -> usize;

    /// Where a snapshot lives, for logs and errors.
    fn describe(&self, id: SnapshotId) -> String;

    /// Starts writing snapshot `id` under its temporary name.
    async fn begin(&self, id: SnapshotId) -> Result<Self::Writer, StoreError>;

    /// The complete snapshots of `group`, newest first.
    async fn list(&self, group: GroupId) -> Result<Vec<SnapshotId>, StoreError>;

    /// Opens a listed snapshot for reading.
    async fn open(&self, id: SnapshotId) -> Result<Self::Reader, StoreError>;

    /// Deletes a snapshot and makes the deletion durable.
    async fn remove(&self, id: SnapshotId) -> Result<(), StoreError>;

    /// Lets other tasks of the core run if this one has run for long (a no-op where nothing
    /// else runs). Called between the steps of a snapshot.
    async fn pause(&self);
}

/// Writes a snapshot of `machine` at its applied index: freezes the view, then encodes and
/// writes it in steps, borrowing the machine only inside a step and pausing between steps,
/// so that the core keeps applying (the view stays consistent). `term` is the term of the
/// applied entry and `membership` the configuration there (thesis §5.1).
pub async fn write_snapshot<S: SnapshotStore>(
    store: &S,
    group: GroupId,
    machine: &RefCell<KvMachine>,
    term: Term,
    membership: Membership,
) -> Result<SnapshotId, SnapshotStoreError> {
    let frozen = machine.borrow_mut().begin_snapshot(term, membership);
    let id = SnapshotId {
        group,
        last: frozen.meta.last,
    };
    let mut encoder = match SnapshotEncoder::new(group, frozen, store.alignment()) {
        Ok(encoder) => encoder,
        Err(source) => {
            machine.borrow_mut().abort_snapshot();
            return Err(SnapshotStoreError::Encode { group, source });
        }
    };
    let mut writer = match store.begin(id).await {
        Ok(writer) => writer,
        Err(error) => {
            machine.borrow_mut().abort_snapshot();
            return Err(error.into());
        }
    };
    let mut chunk = Vec::new();
    loop {
        let status = encoder.next_chunk(&mut machine.borrow_mut(), &mut chunk);
        if let Err(error) = writer.write(&chunk).await {
            if status == EncodeStatus::More {
                machine.borrow_mut().abort_snapshot();
            }
            // The write error is the one worth reporting; a failed clean-up adds nothing.
            let _ = writer.abort().await;
            return Err(error.into());
        }
        if status == EncodeStatus::Done {
            break;
        }
        store.pause().await;
    }
    Ok(writer.finish().await?)
}

/// A snapshot passed over by `load_newest`, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub id: SnapshotId,
    pub reason: String,
}

/// What `load_newest` found.
#[derive(Debug)]
pub struct Loaded {
    /// The newest snapshot that decoded completely, with its machine.
    pub restored: Option<(SnapshotId, Restored)>,
    /// Newer snapshots that did not, newest first.
    pub skipped: Vec<Skipped>,
}

/// Reads and decodes one snapshot, checking that its header agrees with its name.
pub async fn load<S: SnapshotStore>(store: &S, id: SnapshotId) -> Result<Restored, String> {
    let mut reader = store.open(id).await.map_err(|error| error.to_string())?;
    let mut decoder = SnapshotDecoder::new();
    while let Some(chunk) = reader
        .next_chunk()
        .await
        .map_err(|error| error.to_string())?
    {
        decoder
            .feed(chunk.as_ref())
            .map_err(|error| error.to_string())?;
        store.pause().await;
    }
    let restored = decoder.finish().map_err(|error| error.to_string())?;
    let named = (id.group, id.last);
    let stated = (restored.header.group, restored.header.meta.last);
    if named != stated {
        return Err(format!(
            "the file holds group {} at {}, its name says group {} at {}",
            stated.0, stated.1, named.0, named.1
        ));
    }
    Ok(restored)
}

/// Loads the newest snapshot of `group` that decodes completely with a valid checksum; each
/// newer one that does not is reported in `skipped` (the caller logs them).
pub async fn load_newest<S: SnapshotStore>(
    store: &S,
    group: GroupId,
) -> Result<Loaded, StoreError> {
    let mut skipped = Vec::new();
    for id in store.list(group).await? {
        match load(store, id).await {
            Ok(restored) => {
                return Ok(Loaded {
                    restored: Some((id, restored)),
                    skipped,
                });
            }
            Err(reason) => skipped.push(Skipped { id, reason }),
        }
    }
    Ok(Loaded {
        restored: None,
        skipped,
    })
}

/// Removes all but the newest `keep` snapshots of `group`; returns those removed.
pub async fn remove_old<S: SnapshotStore>(
    store: &S,
    group: GroupId,
    keep: usize,
) -> Result<Vec<SnapshotId>, StoreError> {
    let old: Vec<SnapshotId> = store.list(group).await?.into_iter().skip(keep).collect();
    for &id in &old {
        store.remove(id).await?;
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_round_trip_and_strangers_are_refused() {
        // Names parse back to their id; temp names, padded numbers and other files do not.
        let id = SnapshotId {
            group: GroupId(7),
            last: EntryId {
                term: Term(3),
                index: LogIndex(1200),
            },
        };
        let name = snapshot_file_name(id);
        assert_eq!(name, "group-7-1200-3.snap");
        assert_eq!(parse_snapshot_file_name(&name), Some(id));
        assert!(is_temp_snapshot_file_name(&format!("{name}.tmp")));
        assert!(!is_temp_snapshot_file_name(&name));
        for stranger in [
            "group-7-1200.snap",
            "group-7-1200-3-4.snap",
            "group-07-1200-3.snap",
            "group-x-1200-3.snap",
            "group-4294967296-1-1.snap",
            "group--1-1.snap",
            "00000000000000000001.wal",
        ] {
            assert_eq!(parse_snapshot_file_name(stranger), None, "{stranger}");
        }
    }

    #[test]
    fn newer_snapshots_sort_later() {
        // Index decides before term, so the order is the order in which they were taken.
        let at = |index: u64, term: u64| SnapshotId {
            group: GroupId(1),
            last: EntryId {
                term: Term(term),
                index: LogIndex(index),
            },
        };
        let mut ids = vec![at(10, 2), at(9, 5), at(10, 1)];
        ids.sort();
        assert_eq!(ids, vec![at(9, 5), at(10, 1), at(10, 2)]);
    }
}
