//! `DmaSnapshotStore`: the `SnapshotStore` of one core on real files with direct I/O, in
//! `<data-dir>/core-<n>/snap/`. A snapshot is written with a `DmaStreamWriter` (O_DIRECT,
//! a few large buffers written behind) under `group-<g>-<index>-<term>.snap.tmp`, then
//! fdatasync'ed, renamed to its final name, and the directory fsync'ed; reads stream back
//! with a `DmaStreamReader`. The snapshot format pads files to the direct-I/O alignment, so
//! no write is ever partial.
//!
//! This file owns the snapshot directory, its temporary files (removed at open), and the
//! logging of snapshots skipped at restore. It decides nothing about when to snapshot or what
//! a snapshot holds (`kv/`), and never retries a failed write or sync.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_lite::AsyncWriteExt;
use glommio::GlommioError;
use glommio::io::{
    Directory, DmaFile, DmaStreamReader, DmaStreamReaderBuilder, DmaStreamWriter,
    DmaStreamWriterBuilder, OpenOptions, ReadResult,
};

use crate::constants::{
    SNAPSHOT_IO_BUFFER_BYTES, SNAPSHOT_PADDING_BYTES_MAX, SNAPSHOT_WRITES_IN_FLIGHT,
};
use crate::ids::{CoreId, GroupId};
use crate::kv::store::{
    Loaded, SNAPSHOT_TEMP_SUFFIX, SnapshotId, SnapshotReader, SnapshotStore, SnapshotWriter,
    StoreError, StoreOp, is_temp_snapshot_file_name, load_newest, parse_snapshot_file_name,
    snapshot_file_name,
};
use crate::reactor::executor::probe_device;

/// The snapshot directory of `core` under `data_dir`.
pub fn snapshot_dir(data_dir: &Path, core: CoreId) -> PathBuf {
    data_dir.join(format!("core-{}", core.get())).join("snap")
}

fn store_error(op: StoreOp, target: &Path, error: &GlommioError<()>) -> StoreError {
    StoreError::new(op, target.display().to_string(), error.to_string())
}

fn io_error(op: StoreOp, target: &Path, error: &std::io::Error) -> StoreError {
    StoreError::new(op, target.display().to_string(), error.to_string())
}

/// One core's snapshot directory on a real file system.
#[derive(Debug)]
pub struct DmaSnapshotStore {
    dir: PathBuf,
    directory: Rc<Directory>,
    alignment: usize,
}

impl DmaSnapshotStore {
    /// Opens (creating if needed, durably) the snapshot directory `dir` and removes the
    /// temporary files of snapshots whose writing a crash interrupted. Must run on the
    /// executor that uses the store; it makes its own first-open probe if none was made.
    pub async fn open(dir: &Path) -> Result<DmaSnapshotStore, StoreError> {
        let existed = dir.is_dir();
        // Start-up only: a blocking mkdir before the store does any real work.
        std::fs::create_dir_all(dir).map_err(|error| io_error(StoreOp::Open, dir, &error))?;
        let parent = dir.parent().filter(|parent| !parent.as_os_str().is_empty());
        if let Some(parent) = parent.filter(|_| !existed) {
            // The new directory's own name must be durable before snapshots in it are.
            sync_directory_at(parent, StoreOp::Open).await?;
        }
        let alignment = probe_device(dir).await.map_err(|error| {
            StoreError::new(StoreOp::Open, dir.display().to_string(), error.to_string())
        })?;
        let alignment = usize::try_from(alignment)
            .ok()
            .filter(|&alignment| alignment <= SNAPSHOT_PADDING_BYTES_MAX)
            .ok_or_else(|| {
                StoreError::new(
                    StoreOp::Open,
                    dir.display().to_string(),
                    format!(
                        "direct-I/O alignment {alignment} is above {SNAPSHOT_PADDING_BYTES_MAX}"
                    ),
                )
            })?;
        let directory = Directory::open(dir)
            .await
            .map_err(|error| store_error(StoreOp::Open, dir, &error))?;
        let store = DmaSnapshotStore {
            dir: dir.to_path_buf(),
            directory: Rc::new(directory),
            alignment,
        };
        store.remove_temp_files().await?;
        Ok(store)
    }

    /// The directory of this store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of a snapshot.
    pub fn path_of(&self, id: SnapshotId) -> PathBuf {
        self.dir.join(snapshot_file_name(id))
    }

    /// File names in the directory. Blocking `readdir`: snapshots are listed at start-up,
    /// at restore and after a snapshot, never on the path of a request.
    fn file_names(&self) -> Result<Vec<String>, StoreError> {
        let entries = std::fs::read_dir(&self.dir)
            .map_err(|error| io_error(StoreOp::List, &self.dir, &error))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| io_error(StoreOp::List, &self.dir, &error))?;
            // A name that is not UTF-8 is not ours; leave it alone.
            if let Ok(name) = entry.file_name().into_string() {
                names.push(name);
            }
        }
        Ok(names)
    }

    async fn remove_temp_files(&self) -> Result<(), StoreError> {
        let mut removed_any = false;
        for name in self.file_names()? {
            if is_temp_snapshot_file_name(&name) {
                let path = self.dir.join(&name);
                tracing::info!(path = %path.display(), "removing an unfinished snapshot");
                glommio::io::remove(&path)
                    .await
                    .map_err(|error| store_error(StoreOp::Remove, &path, &error))?;
                removed_any = true;
            }
        }
        if removed_any {
            sync(&self.directory, &self.dir, StoreOp::Remove).await?;
        }
        Ok(())
    }
}

async fn sync(directory: &Directory, path: &Path, op: StoreOp) -> Result<(), StoreError> {
    directory
        .sync()
        .await
        .map_err(|error| store_error(op, path, &error))
}

async fn sync_directory_at(path: &Path, op: StoreOp) -> Result<(), StoreError> {
    let directory = Directory::open(path)
        .await
        .map_err(|error| store_error(op, path, &error))?;
    sync(&directory, path, op).await?;
    directory
        .close()
        .await
        .map_err(|error| store_error(op, path, &error))
}

/// A snapshot being written under its temporary name.
pub struct DmaSnapshotWriter {
    writer: DmaStreamWriter,
    directory: Rc<Directory>,
    dir: PathBuf,
    temp_path: PathBuf,
    final_path: PathBuf,
    id: SnapshotId,
}

impl std::fmt::Debug for DmaSnapshotWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaSnapshotWriter")
            .field("temp_path", &self.temp_path)
            .finish()
    }
}

impl SnapshotWriter for DmaSnapshotWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<(), StoreError> {
        self.writer
            .write_all(chunk)
            .await
            .map_err(|error| io_error(StoreOp::Write, &self.temp_path, &error))
    }

    async fn finish(mut self) -> Result<SnapshotId, StoreError> {
        let written = self.writer.current_pos();
        let synced = self
            .writer
            .sync()
            .await
            .map_err(|error| store_error(StoreOp::Sync, &self.temp_path, &error))?;
        assert_eq!(
            synced,
            written,
            "snapshot {}: synced {synced} of {written} bytes",
            self.temp_path.display()
        );
        self.writer
            .close()
            .await
            .map_err(|error| io_error(StoreOp::Sync, &self.temp_path, &error))?;
        glommio::io::rename(&self.temp_path, &self.final_path)
            .await
            .map_err(|error| store_error(StoreOp::Rename, &self.temp_path, &error))?;
        sync(&self.directory, &self.dir, StoreOp::Rename).await?;
        Ok(self.id)
    }

    async fn abort(mut self) -> Result<(), StoreError> {
        // Close errors do not matter: the file is removed either way.
        let _ = self.writer.close().await;
        glommio::io::remove(&self.temp_path)
            .await
            .map_err(|error| store_error(StoreOp::Remove, &self.temp_path, &error))?;
        sync(&self.directory, &self.dir, StoreOp::Remove).await
    }
}

/// A snapshot read back in chunks of up to `SNAPSHOT_IO_BUFFER_BYTES`.
pub struct DmaSnapshotReader {
    reader: DmaStreamReader,
    path: PathBuf,
}

impl std::fmt::Debug for DmaSnapshotReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaSnapshotReader")
            .field("path", &self.path)
            .finish()
    }
}

/// Bytes read from a snapshot file, without a copy.
#[derive(Debug)]
pub struct DmaChunk(ReadResult);

impl AsRef<[u8]> for DmaChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl SnapshotReader for DmaSnapshotReader {
    type Chunk = DmaChunk;

    async fn next_chunk(&mut self) -> Result<Option<DmaChunk>, StoreError> {
        let chunk = self
            .reader
            .get_buffer_aligned(SNAPSHOT_IO_BUFFER_BYTES as u64)
            .await
            .map_err(|error| store_error(StoreOp::Read, &self.path, &error))?;
        if chunk.is_empty() {
            return Ok(None);
        }
        // The reader has moved past the bytes it handed out.
        Ok(Some(DmaChunk(chunk)))
    }
}

impl SnapshotStore for DmaSnapshotStore {
    type Writer = DmaSnapshotWriter;
    type Reader = DmaSnapshotReader;

    fn alignment(&self) -> usize {
        self.alignment
    }

    fn describe(&self, id: SnapshotId) -> String {
        self.path_of(id).display().to_string()
    }

    async fn begin(&self, id: SnapshotId) -> Result<DmaSnapshotWriter, StoreError> {
        let final_path = self.path_of(id);
        let temp_path = self
            .dir
            .join(format!("{}{SNAPSHOT_TEMP_SUFFIX}", snapshot_file_name(id)));
        // Write-only: the first-open probe needs no care here, and nothing reads it back.
        let file: DmaFile = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&temp_path)
            .await
            .map_err(|error| store_error(StoreOp::Create, &temp_path, &error))?;
        let writer = DmaStreamWriterBuilder::new(file)
            .with_buffer_size(SNAPSHOT_IO_BUFFER_BYTES)
            .with_write_behind(SNAPSHOT_WRITES_IN_FLIGHT)
            .build();
        Ok(DmaSnapshotWriter {
            writer,
            directory: Rc::clone(&self.directory),
            dir: self.dir.clone(),
            temp_path,
            final_path,
            id,
        })
    }

    async fn list(&self, group: GroupId) -> Result<Vec<SnapshotId>, StoreError> {
        let mut ids: Vec<SnapshotId> = self
            .file_names()?
            .iter()
            .filter_map(|name| parse_snapshot_file_name(name))
            .filter(|id| id.group == group)
            .collect();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        Ok(ids)
    }

    async fn open(&self, id: SnapshotId) -> Result<DmaSnapshotReader, StoreError> {
        let path = self.path_of(id);
        let file = DmaFile::open(&path)
            .await
            .map_err(|error| store_error(StoreOp::Read, &path, &error))?;
        let reader = DmaStreamReaderBuilder::new(file)
            .with_buffer_size(SNAPSHOT_IO_BUFFER_BYTES)
            .with_read_ahead(SNAPSHOT_WRITES_IN_FLIGHT)
            .build();
        Ok(DmaSnapshotReader { reader, path })
    }

    async fn remove(&self, id: SnapshotId) -> Result<(), StoreError> {
        let path = self.path_of(id);
        glommio::io::remove(&path)
            .await
            .map_err(|error| store_error(StoreOp::Remove, &path, &error))?;
        sync(&self.directory, &self.dir, StoreOp::Remove).await
    }

    async fn pause(&self) {
        glommio::yield_if_needed().await;
    }
}

/// Loads the newest snapshot of `group` that decodes completely, logging each newer one
/// skipped as corrupt or unreadable, with its path and the reason.
pub async fn restore_newest(
    store: &DmaSnapshotStore,
    group: GroupId,
) -> Result<Loaded, StoreError> {
    let loaded = load_newest(store, group).await?;
    for skipped in &loaded.skipped {
        tracing::warn!(
            group = %group,
            path = %store.describe(skipped.id),
            reason = %skipped.reason,
            "skipping a snapshot that does not decode; trying an older one"
        );
    }
    if let Some((id, _)) = &loaded.restored {
        tracing::info!(group = %group, path = %store.describe(*id), "restored snapshot");
    }
    Ok(loaded)
}
