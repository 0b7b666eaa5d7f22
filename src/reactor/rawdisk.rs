//! The raw device baseline of the WAL benchmark: one pre-allocated, pre-zeroed (written and
//! synced) file, into which blocks are written with O_DIRECT at successive offsets, each
//! followed by fdatasync. Nothing else: no records, no checksums, no planning.
//!
//! This file owns only that baseline, so that the benchmark compares the WAL with the device
//! through the same glommio `DmaFile` path. It must not be used by the server itself.

use std::path::{Path, PathBuf};

use glommio::io::{DmaFile, OpenOptions};

use crate::constants::WAL_ZERO_FILL_CHUNK_BYTES;
use crate::reactor::executor::probe_device;

/// Errors of the raw baseline.
#[derive(Debug, thiserror::Error)]
pub enum RawDiskError {
    #[error("raw baseline file {path}: {op}: {detail}")]
    Io {
        path: PathBuf,
        op: &'static str,
        detail: String,
    },
    #[error("raw baseline file {path}: short {op}: {done} of {wanted} bytes")]
    Short {
        path: PathBuf,
        op: &'static str,
        done: usize,
        wanted: usize,
    },
}

/// A pre-zeroed file written block after block with write + fdatasync.
pub struct RawSyncFile {
    path: PathBuf,
    file: DmaFile,
    size_bytes: u64,
    /// Where the next write goes; wraps to 0 when a write would pass `size_bytes`.
    next_offset: u64,
}

impl RawSyncFile {
    /// Creates `file_name` in `dir` (probing the device first, see `probe_device`), writes
    /// `size_bytes` of zeros into it and syncs it, so later writes overwrite allocated blocks.
    pub async fn create(
        dir: &Path,
        file_name: &str,
        size_bytes: u64,
    ) -> Result<RawSyncFile, RawDiskError> {
        let path = dir.join(file_name);
        let io_error = |op: &'static str, detail: String| RawDiskError::Io {
            path: path.clone(),
            op,
            detail,
        };
        let alignment = probe_device(dir)
            .await
            .map_err(|error| io_error("probe", error.to_string()))?;
        assert!(
            size_bytes > 0 && size_bytes.is_multiple_of(WAL_ZERO_FILL_CHUNK_BYTES),
            "raw file size {size_bytes} must be a positive multiple of {WAL_ZERO_FILL_CHUNK_BYTES}"
        );
        assert!(WAL_ZERO_FILL_CHUNK_BYTES.is_multiple_of(alignment));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await
            .map_err(|error| io_error("open", error.to_string()))?;
        let mut raw = RawSyncFile {
            path: path.clone(),
            file,
            size_bytes,
            next_offset: 0,
        };
        let chunk_len = WAL_ZERO_FILL_CHUNK_BYTES as usize;
        let mut offset = 0;
        while offset < size_bytes {
            let mut buffer = raw.file.alloc_dma_buffer(chunk_len);
            buffer.as_bytes_mut().fill(0);
            raw.write_buffer_at(buffer, offset).await?;
            offset += WAL_ZERO_FILL_CHUNK_BYTES;
        }
        raw.sync().await?;
        Ok(raw)
    }

    /// The direct-I/O alignment of the file.
    #[must_use]
    pub fn alignment(&self) -> u64 {
        self.file.alignment()
    }

    async fn write_buffer_at(
        &mut self,
        buffer: glommio::io::DmaBuffer,
        offset: u64,
    ) -> Result<(), RawDiskError> {
        let wanted = buffer.len();
        let done = self
            .file
            .write_at(buffer, offset)
            .await
            .map_err(|error| RawDiskError::Io {
                path: self.path.clone(),
                op: "write",
                detail: error.to_string(),
            })?;
        if done != wanted {
            return Err(RawDiskError::Short {
                path: self.path.clone(),
                op: "write",
                done,
                wanted,
            });
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), RawDiskError> {
        self.file
            .fdatasync()
            .await
            .map_err(|error| RawDiskError::Io {
                path: self.path.clone(),
                op: "fdatasync",
                detail: error.to_string(),
            })
    }

    /// Writes `write_bytes` (aligned) of a non-zero pattern at the next offset, then
    /// fdatasyncs. The buffer is allocated and filled here, as the WAL allocates and encodes
    /// its own.
    pub async fn write_and_sync(&mut self, write_bytes: u64) -> Result<(), RawDiskError> {
        let alignment = self.alignment();
        assert!(
            write_bytes > 0
                && write_bytes.is_multiple_of(alignment)
                && write_bytes <= self.size_bytes,
            "raw write of {write_bytes} bytes: must be aligned to {alignment} and fit in {}",
            self.size_bytes
        );
        if self.next_offset + write_bytes > self.size_bytes {
            self.next_offset = 0;
        }
        let write_len = usize::try_from(write_bytes).map_err(|_| RawDiskError::Short {
            path: self.path.clone(),
            op: "allocate",
            done: 0,
            wanted: usize::MAX,
        })?;
        let mut buffer = self.file.alloc_dma_buffer(write_len);
        buffer.as_bytes_mut().fill(0xA5);
        let offset = self.next_offset;
        self.write_buffer_at(buffer, offset).await?;
        self.sync().await?;
        self.next_offset += write_bytes;
        Ok(())
    }

    /// Closes and deletes the file.
    pub async fn remove(self) -> Result<(), RawDiskError> {
        let path = self.path.clone();
        self.file.remove().await.map_err(|error| RawDiskError::Io {
            path: path.clone(),
            op: "remove",
            detail: error.to_string(),
        })?;
        self.file.close().await.map_err(|error| RawDiskError::Io {
            path,
            op: "close",
            detail: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reactor::executor::{ExecutorConfig, run_executor};

    // The baseline file wraps around at its end, writes what it claims (read back with std),
    // and is gone after `remove`.
    #[test]
    fn raw_file_wraps_and_writes_pattern() {
        let dir = tempfile::Builder::new()
            .prefix("ringraft-raw-")
            .tempdir_in(env!("CARGO_MANIFEST_DIR").to_string() + "/target")
            .expect("temp dir under target");
        let path = dir.path().to_path_buf();
        let size_bytes = WAL_ZERO_FILL_CHUNK_BYTES;
        let file_path = path.join("raw.bin");
        let checked_path = file_path.clone();
        run_executor(&ExecutorConfig::new("test-raw"), async move {
            let mut raw = RawSyncFile::create(&path, "raw.bin", size_bytes)
                .await
                .expect("create");
            let third = size_bytes / 4 + raw.alignment();
            raw.write_and_sync(third).await.expect("write 1");
            raw.write_and_sync(third).await.expect("write 2");
            let on_disk = std::fs::read(&checked_path).expect("read with std");
            assert_eq!(on_disk.len() as u64, size_bytes);
            let written = 2 * third as usize;
            assert!(on_disk[..written].iter().all(|&byte| byte == 0xA5));
            assert!(on_disk[written..].iter().all(|&byte| byte == 0));
            // A third write still fits before the end; a fourth would pass it and wraps to 0.
            raw.write_and_sync(third).await.expect("write 3");
            raw.write_and_sync(third).await.expect("write 4 wraps");
            assert_eq!(raw.next_offset, third, "the fourth write should wrap to 0");
            raw.remove().await.expect("remove");
        })
        .expect("executor starts");
        assert!(!file_path.exists(), "raw file not removed");
    }
}
