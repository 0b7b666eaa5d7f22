//! Building glommio executors right for this kind of machine, one per core, and the
//! work-around for glommio 0.9.0's first-open bug (upstream issue 670).
//!
//! This module owns: the executor configuration (io_memory, placement, spinning), starting
//! an executor on its own thread with start-up errors reported to the caller (an ENOMEM
//! from ring setup is a hard error with its own message, never retried), and the device
//! probe that must be the first `DmaFile` open of every executor on every device.
//!
//! It must not decide anything about Raft or the WAL, and it is, with the rest of
//! `reactor/`, the only place that may name glommio.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use glommio::io::DmaFile;
use glommio::{GlommioError, LocalExecutor, LocalExecutorBuilder, Placement, ReactorErrorKind};

use crate::constants::{EXECUTOR_IO_MEMORY_BYTES_DEFAULT, EXECUTOR_IO_MEMORY_BYTES_MAX};

/// Name of the file created (write-only) and removed by [`probe_device`].
pub const IOPOLL_PROBE_FILE_NAME: &str = ".ringraft-iopoll-probe";

/// Errors of starting, running and probing executors.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    /// The kernel refused memory for the io_uring rings or the registered buffers: the
    /// locked-memory limit (`ulimit -l`) is too small for this many executors.
    #[error(
        "executor {name}: out of locked memory setting up io_uring (io_memory {io_memory_bytes} \
         bytes): raise `ulimit -l` or lower io_memory or the executor count: {detail}"
    )]
    LockedMemory {
        name: String,
        io_memory_bytes: usize,
        detail: String,
    },
    /// The placement cannot be satisfied on this machine (for example a CPU that does not
    /// exist).
    #[error("executor {name}: placement {placement:?} is not possible here: {detail}")]
    Placement {
        name: String,
        placement: CorePlacement,
        detail: String,
    },
    /// Any other failure to build the executor.
    #[error("executor {name}: cannot start: {detail}")]
    Start { name: String, detail: String },
    /// The operating system refused a new thread.
    #[error("executor {name}: cannot spawn its thread: {source}")]
    Thread { name: String, source: io::Error },
    /// The executor's future panicked.
    #[error("executor {name}: panicked: {message}")]
    Panicked { name: String, message: String },
    /// The first-open probe of a directory's device failed.
    #[error("probing direct I/O on {path}: {detail}")]
    Probe { path: PathBuf, detail: String },
}

/// Where an executor's thread may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorePlacement {
    /// Anywhere the scheduler likes: the default, and the only choice for tests and CI (a
    /// pinned executor under outside load showed p99 hops of 2+ ms, unbound ~0.12 ms).
    Unbound,
    /// Pinned to one CPU: for production machines whose cores are dedicated.
    Pinned { cpu: usize },
}

/// How to build one executor.
#[derive(Clone, Debug)]
pub struct ExecutorConfig {
    /// Thread name; glommio appends its own executor id.
    pub name: String,
    pub placement: CorePlacement,
    /// Bytes of I/O memory glommio registers with each of its rings; 0 is rounded up to
    /// 64 KiB by glommio. See `EXECUTOR_IO_MEMORY_BYTES_DEFAULT`.
    pub io_memory_bytes: usize,
    /// Spin this long before parking when idle. `None` (the default) parks at once: spinning
    /// helps only when every executor has a core of its own.
    pub spin_before_park: Option<Duration>,
    /// Entered on the executor's thread for its whole life, so every log line of the
    /// thread (glommio's own included) carries the span's fields. None by default.
    pub span: tracing::Span,
}

impl ExecutorConfig {
    /// The safe configuration: unbound, small io_memory, no spinning.
    #[must_use]
    pub fn new(name: &str) -> ExecutorConfig {
        ExecutorConfig {
            name: name.to_string(),
            placement: CorePlacement::Unbound,
            io_memory_bytes: EXECUTOR_IO_MEMORY_BYTES_DEFAULT,
            spin_before_park: None,
            span: tracing::Span::none(),
        }
    }

    fn builder(&self) -> LocalExecutorBuilder {
        assert!(
            self.io_memory_bytes <= EXECUTOR_IO_MEMORY_BYTES_MAX,
            "io_memory_bytes {} above the limit {}",
            self.io_memory_bytes,
            EXECUTOR_IO_MEMORY_BYTES_MAX
        );
        let placement = match self.placement {
            CorePlacement::Unbound => Placement::Unbound,
            CorePlacement::Pinned { cpu } => Placement::Fixed(cpu),
        };
        let builder = LocalExecutorBuilder::new(placement)
            .name(&self.name)
            .io_memory(self.io_memory_bytes);
        match self.spin_before_park {
            Some(spin) => builder.spin_before_park(spin),
            None => builder,
        }
    }

    /// Builds the executor on the calling thread.
    fn make(&self) -> Result<LocalExecutor, ExecutorError> {
        self.builder()
            .make()
            .map_err(|error| self.start_error(&error))
    }

    /// Classifies a glommio start-up error into one of ours, keeping its text.
    fn start_error(&self, error: &GlommioError<()>) -> ExecutorError {
        let detail = error.to_string();
        let name = self.name.clone();
        match error {
            GlommioError::ReactorError(ReactorErrorKind::MemLockLimit(..)) => {
                ExecutorError::LockedMemory {
                    name,
                    io_memory_bytes: self.io_memory_bytes,
                    detail,
                }
            }
            GlommioError::BuilderError(_) => ExecutorError::Placement {
                name,
                placement: self.placement,
                detail,
            },
            _ if raw_os_error(error) == Some(libc::ENOMEM) => ExecutorError::LockedMemory {
                name,
                io_memory_bytes: self.io_memory_bytes,
                detail,
            },
            _ => ExecutorError::Start { name, detail },
        }
    }
}

/// The OS error number inside a glommio error, if it carries one.
#[must_use]
pub fn raw_os_error<T>(error: &GlommioError<T>) -> Option<i32> {
    match error {
        GlommioError::IoError(source) | GlommioError::EnhancedIoError { source, .. } => {
            source.raw_os_error()
        }
        _ => None,
    }
}

/// An executor running on its own thread.
#[derive(Debug)]
pub struct ExecutorHandle<T> {
    name: String,
    /// `None` only when the executor failed to start, which `spawn_executor` has already
    /// reported; a handle exists only for executors that started.
    thread: thread::JoinHandle<Option<T>>,
}

impl<T> ExecutorHandle<T> {
    /// The executor's name as configured.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the executor's future to finish and returns its output.
    pub fn join(self) -> Result<T, ExecutorError> {
        match self.thread.join() {
            Ok(Some(output)) => Ok(output),
            Ok(None) => Err(ExecutorError::Start {
                name: self.name,
                detail: "executor reported a start and then a start failure".to_string(),
            }),
            Err(payload) => Err(ExecutorError::Panicked {
                name: self.name,
                message: panic_message(payload.as_ref()),
            }),
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Starts an executor on a new thread and runs `make_future()` on it. Returns once the
/// executor is built, so a start-up failure (ENOMEM, bad placement) is this call's error
/// rather than a panic on a thread nobody joins.
pub fn spawn_executor<G, F, T>(
    config: &ExecutorConfig,
    make_future: G,
) -> Result<ExecutorHandle<T>, ExecutorError>
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (started_sender, started_receiver) = mpsc::sync_channel::<Result<(), ExecutorError>>(1);
    let thread_config = config.clone();
    let thread = thread::Builder::new()
        .name(config.name.clone())
        .spawn(move || {
            let _entered = thread_config.span.clone().entered();
            let executor = match thread_config.make() {
                Ok(executor) => executor,
                Err(error) => {
                    // The receiver waits for exactly this message; if it is gone the
                    // caller has gone too and nobody needs the answer.
                    let _ = started_sender.send(Err(error));
                    return None;
                }
            };
            let _ = started_sender.send(Ok(()));
            drop(started_sender);
            Some(executor.run(make_future()))
        })
        .map_err(|source| ExecutorError::Thread {
            name: config.name.clone(),
            source,
        })?;
    let started = started_receiver.recv();
    match started {
        Ok(Ok(())) => Ok(ExecutorHandle {
            name: config.name.clone(),
            thread,
        }),
        Ok(Err(error)) => {
            let _ = thread.join();
            Err(error)
        }
        Err(mpsc::RecvError) => {
            // The thread ended without a word: it panicked while building the executor.
            let message = match thread.join() {
                Err(payload) => panic_message(payload.as_ref()),
                Ok(_) => "executor thread ended before starting".to_string(),
            };
            Err(ExecutorError::Panicked {
                name: config.name.clone(),
                message,
            })
        }
    }
}

/// Runs `future` to completion on an executor built on the calling thread.
pub fn run_executor<F, T>(config: &ExecutorConfig, future: F) -> Result<T, ExecutorError>
where
    F: Future<Output = T>,
{
    let executor = config.make()?;
    Ok(executor.run(future))
}

/// Makes the first `DmaFile` open of the calling executor on `dir`'s device a write-only
/// create, then removes the file.
///
/// Why: glommio 0.9.0 probes a device for iopoll with a read on the first `DmaFile` opened
/// on it by each executor (thread). If that first file is an empty read+write file, the
/// read hits end-of-file and "succeeds", glommio marks the device pollable, and every later
/// DMA read on that executor fails with EOPNOTSUPP. A write-only descriptor makes the probe
/// fail instead, the device is marked not pollable (one harmless "probing iopoll" error line
/// in the log), and reads work. Call this on each executor before it opens anything else on
/// that device; calling it again is harmless because the answer is cached per thread.
///
/// Returns the direct-I/O alignment of files in `dir`, as glommio reads it from the device.
pub async fn probe_device(dir: &Path) -> Result<u64, ExecutorError> {
    let path = dir.join(IOPOLL_PROBE_FILE_NAME);
    let probe_error = |error: GlommioError<()>| ExecutorError::Probe {
        path: path.clone(),
        detail: error.to_string(),
    };
    let file = DmaFile::create(&path).await.map_err(probe_error)?;
    let alignment = file.alignment();
    file.close().await.map_err(probe_error)?;
    glommio::io::remove(&path).await.map_err(probe_error)?;
    assert!(
        alignment.is_power_of_two() && alignment >= 512,
        "direct I/O alignment {alignment} of {} is not a power of two >= 512",
        dir.display()
    );
    Ok(alignment)
}

#[cfg(test)]
mod tests {
    use super::*;

    // An executor started on its own thread runs its future and hands the output back.
    #[test]
    fn spawned_executor_returns_its_output() {
        let handle = spawn_executor(&ExecutorConfig::new("test-output"), || async { 6 * 7 })
            .expect("default configuration starts");
        assert_eq!(handle.name(), "test-output");
        assert_eq!(handle.join().expect("no panic"), 42);
    }

    // A placement on a CPU that does not exist is reported as a placement error by the
    // spawn call itself, not as a panic on the executor's thread.
    #[test]
    fn impossible_placement_is_a_start_error() {
        let mut config = ExecutorConfig::new("test-placement");
        config.placement = CorePlacement::Pinned { cpu: 100_000 };
        let error = spawn_executor(&config, || async {}).expect_err("CPU 100000 does not exist");
        assert!(
            matches!(error, ExecutorError::Placement { .. }),
            "unexpected error {error:?}"
        );
        assert!(error.to_string().contains("test-placement"), "{error}");
    }

    // An ENOMEM from ring set-up is classified as a locked-memory error whose message says
    // what to change, and other OS errors are not.
    #[test]
    fn enomem_is_reported_as_locked_memory() {
        let config = ExecutorConfig::new("test-enomem");
        let enomem = GlommioError::<()>::IoError(io::Error::from_raw_os_error(libc::ENOMEM));
        let error = config.start_error(&enomem);
        assert!(
            matches!(error, ExecutorError::LockedMemory { .. }),
            "unexpected error {error:?}"
        );
        assert!(error.to_string().contains("ulimit -l"), "{error}");
        let eperm = GlommioError::<()>::IoError(io::Error::from_raw_os_error(libc::EPERM));
        assert!(
            matches!(config.start_error(&eperm), ExecutorError::Start { .. }),
            "EPERM is not a locked-memory error"
        );
    }

    // An executor pinned to CPU 0 runs there (the production flag; tests otherwise stay
    // unbound).
    #[test]
    fn pinned_executor_runs_on_its_cpu() {
        let mut config = ExecutorConfig::new("test-pinned");
        config.placement = CorePlacement::Pinned { cpu: 0 };
        // A thread of its own: pinning is never undone, and must not outlive this test.
        // SAFETY: sched_getcpu has no preconditions; it reads the calling thread's CPU.
        let cpu = spawn_executor(&config, || async { unsafe { libc::sched_getcpu() } })
            .expect("CPU 0 exists")
            .join()
            .expect("no panic");
        assert_eq!(cpu, 0, "pinned executor ran on CPU {cpu}");
    }

    // A panic inside the executor's future comes back from join with its message.
    #[test]
    fn panic_in_executor_is_reported_by_join() {
        let handle = spawn_executor(&ExecutorConfig::new("test-panic"), || async {
            panic!("deliberate panic 17");
        })
        .expect("starts");
        match handle.join() {
            Err(ExecutorError::Panicked { name, message }) => {
                assert_eq!(name, "test-panic");
                assert!(message.contains("deliberate panic 17"), "{message}");
            }
            other => panic!("expected a panic report, got {other:?}"),
        }
    }

    // The probe leaves no file behind and can run twice on one executor.
    #[test]
    fn probe_removes_its_file_and_repeats() {
        let dir = tempfile::Builder::new()
            .prefix("ringraft-probe-")
            .tempdir_in(env!("CARGO_MANIFEST_DIR").to_string() + "/target")
            .expect("temp dir under target");
        let path = dir.path().to_path_buf();
        let result = run_executor(&ExecutorConfig::new("test-probe"), async move {
            let first = probe_device(&path).await?;
            let second = probe_device(&path).await?;
            Ok::<_, ExecutorError>((first, second))
        })
        .expect("executor starts");
        let (first, second) = result.expect("probe succeeds");
        assert_eq!(first, second, "alignment changed between probes");
        assert!(!dir.path().join(IOPOLL_PROBE_FILE_NAME).exists());
    }
}
