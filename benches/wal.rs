//! WAL benchmark: append+sync throughput and latency through the real WAL (`log::Log` over
//! `reactor::disk::DmaDisk`), for batches of 1, 16 and 256 entries of 128 bytes, with the raw
//! device measured in the same run for the same write sizes (O_DIRECT write + fdatasync into
//! a pre-allocated, pre-zeroed file; `reactor::rawdisk`).
//!
//! A benchmark, not a test: it asserts nothing about speed. Run it with
//! `cargo bench --bench wal -- [--runs N] [--appends N] [--dir PATH] [--pinned CPU]
//! [--io-memory BYTES]`.
//! Each run measures, per batch size, the WAL and then the raw file; the report gives, per
//! batch size, the median over runs of each figure and the WAL/raw ratios of every run.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use bytes::Bytes;
use ringraft::constants::EXECUTOR_IO_MEMORY_BYTES_DEFAULT;
use ringraft::ids::{EntryId, GroupId, LogIndex, Term};
use ringraft::log::{Log, Wal, WalConfig};
use ringraft::raft::types::{Entry, EntryKind, Persist, PersistPosition};
use ringraft::reactor::disk::DmaDisk;
use ringraft::reactor::executor::{CorePlacement, ExecutorConfig, run_executor};
use ringraft::reactor::rawdisk::RawSyncFile;

/// Payload bytes of every entry.
const ENTRY_BYTES: usize = 128;
/// Entries per append measured.
const BATCH_ENTRY_COUNTS: [usize; 3] = [1, 16, 256];
/// Appends before measuring, to settle allocation and the device.
const WARMUP_APPENDS: u64 = 50;
/// The group every append goes to.
const GROUP: GroupId = GroupId(1);

struct Options {
    runs: usize,
    appends: u64,
    dir: PathBuf,
    placement: CorePlacement,
    io_memory_bytes: usize,
}

fn parse_options() -> Options {
    let mut options = Options {
        runs: 5,
        appends: 2000,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
        placement: CorePlacement::Unbound,
        io_memory_bytes: EXECUTOR_IO_MEMORY_BYTES_DEFAULT,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--runs" => options.runs = value("--runs").parse().expect("--runs N"),
            "--appends" => options.appends = value("--appends").parse().expect("--appends N"),
            "--dir" => options.dir = PathBuf::from(value("--dir")),
            "--pinned" => {
                options.placement = CorePlacement::Pinned {
                    cpu: value("--pinned").parse().expect("--pinned CPU"),
                }
            }
            "--io-memory" => {
                options.io_memory_bytes = value("--io-memory").parse().expect("--io-memory BYTES")
            }
            // cargo bench passes `--bench`; anything else unknown is a mistake.
            "--bench" => {}
            other => panic!("unknown argument {other:?}"),
        }
    }
    assert!(
        options.runs > 0 && options.appends > 0,
        "runs and appends must be positive"
    );
    options
}

/// Latency and throughput of one measured series.
#[derive(Clone, Copy, Debug)]
struct Figures {
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    entries_per_second: f64,
    mebibytes_per_second: f64,
}

/// Records per-append latencies and the time spent, then turns them into `Figures`.
struct Series {
    histogram: Histogram<u64>,
    /// Time inside the measured calls plus their upkeep (purge, spares): what throughput is
    /// computed from, since the two series of a run alternate on one executor.
    busy: Duration,
}

impl Series {
    fn new() -> Series {
        Series {
            histogram: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
            busy: Duration::ZERO,
        }
    }

    fn record(&mut self, latency: Duration, upkeep: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.histogram.saturating_record(nanos);
        self.busy += latency + upkeep;
    }

    /// Figures of the series, crediting it with `entry_count` entries of `payload_bytes`.
    fn finish(&self, entry_count: u64, payload_bytes: u64) -> Figures {
        let seconds = self.busy.as_secs_f64();
        let quantile_us = |quantile: f64| self.histogram.value_at_quantile(quantile) as f64 / 1e3;
        Figures {
            p50_us: quantile_us(0.5),
            p99_us: quantile_us(0.99),
            p999_us: quantile_us(0.999),
            entries_per_second: entry_count as f64 / seconds,
            mebibytes_per_second: payload_bytes as f64 / seconds / (1024.0 * 1024.0),
        }
    }
}

/// One run's figures for one batch size.
#[derive(Clone, Copy, Debug)]
struct RunResult {
    wal: Figures,
    raw: Figures,
    /// Bytes the WAL wrote per append, on average, in the measured part. The raw file writes
    /// the warm-up's average, aligned up.
    write_bytes: u64,
    writes_per_append: f64,
    syncs_per_append: f64,
}

/// The entries of append number `append` (from 0) of `batch_entries` entries each.
fn persist_of(append: u64, batch_entries: usize, payload: &Bytes) -> Persist {
    let first_index = append * batch_entries as u64 + 1;
    Persist {
        position: PersistPosition(append + 1),
        entries: (0..batch_entries as u64)
            .map(|offset| Entry {
                id: EntryId {
                    term: Term(1),
                    index: LogIndex(first_index + offset),
                },
                kind: EntryKind::Command,
                data: payload.clone(),
            })
            .collect(),
        hard_state: None,
        snapshot: None,
    }
}

/// A WAL under test: appends `batch_entries` entries per call to one group.
struct WalTarget {
    log: Log<DmaDisk>,
    batch_entries: usize,
    payload: Bytes,
    next_append: u64,
}

impl WalTarget {
    async fn open(dir: &std::path::Path, batch_entries: usize) -> WalTarget {
        let started = Instant::now();
        let disk = DmaDisk::open(dir).await.expect("open WAL directory");
        let (log, _) = Log::open(disk, WalConfig::default())
            .await
            .expect("open WAL");
        let created = log.disk().stats().segments_created;
        println!(
            "  new WAL opened in {:.0} ms ({created} zero-filled segments of {} MiB)",
            started.elapsed().as_secs_f64() * 1e3,
            WalConfig::default().segment_bytes / (1024 * 1024)
        );
        WalTarget {
            log,
            batch_entries,
            payload: Bytes::from(vec![0x5A; ENTRY_BYTES]),
            next_append: 0,
        }
    }

    /// One append+sync; returns its latency and the upkeep that followed it.
    async fn append(&mut self) -> (Duration, Duration) {
        // Building the entries is the caller's work, outside the measured call.
        let persist = persist_of(self.next_append, self.batch_entries, &self.payload);
        self.next_append += 1;
        let active = self.log.wal().active_segment();
        let started = Instant::now();
        self.log
            .append(&[(GROUP, &persist)])
            .await
            .expect("WAL append");
        let latency = started.elapsed();
        // Steady state: what is durable and applied is compacted, and a segment left behind
        // is recycled rather than a new one zero-filled. Off the latency path, as in a shard.
        let started = Instant::now();
        if self.log.wal().active_segment() != active {
            let last_index = self.next_append * self.batch_entries as u64;
            self.log.compact(GROUP, LogIndex(last_index));
            self.log.purge().await.expect("WAL purge");
            self.log.prepare_spares().await.expect("WAL spares");
        }
        (latency, started.elapsed())
    }
}

/// Measures one batch size: the WAL in a fresh directory, and the raw file written with the
/// WAL's own average write size, alternating append for append so that both see the same
/// machine (the cores and the disk are shared).
async fn measure_batch(options: &Options, run: usize, batch_entries: usize) -> RunResult {
    let wal_dir = options.dir.join(format!("wal-bench-{run}-{batch_entries}"));
    let raw_dir = options.dir.join(format!("raw-bench-{run}-{batch_entries}"));
    let mut wal = WalTarget::open(&wal_dir, batch_entries).await;
    let stats_before = wal.log.disk().stats();
    for _ in 0..WARMUP_APPENDS {
        wal.append().await;
    }
    let warmup_stats = wal.log.disk().stats();
    let wal_write_bytes = (warmup_stats.write_bytes - stats_before.write_bytes) / WARMUP_APPENDS;
    std::fs::create_dir_all(&raw_dir).expect("raw bench directory");
    // Room for every write at the largest alignment (4096), wrapping past 256 MiB.
    let raw_file_bytes = (wal_write_bytes.next_multiple_of(4096)
        * (options.appends + WARMUP_APPENDS))
        .next_multiple_of(1024 * 1024)
        .min(256 * 1024 * 1024);
    let mut raw = RawSyncFile::create(&raw_dir, "raw.bin", raw_file_bytes)
        .await
        .expect("raw file");
    let write_bytes = wal_write_bytes.next_multiple_of(raw.alignment());
    for _ in 0..WARMUP_APPENDS {
        raw.write_and_sync(write_bytes).await.expect("raw warm-up");
    }
    let mut wal_series = Series::new();
    let mut raw_series = Series::new();
    let stats_before = wal.log.disk().stats();
    for _ in 0..options.appends {
        let (latency, upkeep) = wal.append().await;
        wal_series.record(latency, upkeep);
        let started = Instant::now();
        raw.write_and_sync(write_bytes).await.expect("raw write");
        raw_series.record(started.elapsed(), Duration::ZERO);
    }
    let stats = wal.log.disk().stats();
    let entry_count = options.appends * batch_entries as u64;
    let payload_bytes = entry_count * ENTRY_BYTES as u64;
    raw.remove().await.expect("remove raw file");
    drop(wal);
    std::fs::remove_dir_all(&raw_dir).expect("remove raw bench directory");
    std::fs::remove_dir_all(&wal_dir).expect("remove WAL bench directory");
    RunResult {
        wal: wal_series.finish(entry_count, payload_bytes),
        raw: raw_series.finish(entry_count, payload_bytes),
        write_bytes: (stats.write_bytes - stats_before.write_bytes) / options.appends,
        writes_per_append: (stats.write_count - stats_before.write_count) as f64
            / options.appends as f64,
        syncs_per_append: (stats.sync_count - stats_before.sync_count) as f64
            / options.appends as f64,
    }
}

/// CPU time of planning (packing, encoding, checksumming) one append of `batch_entries`
/// entries, without I/O: the planner alone, into plain heap buffers. Explains the gap between
/// the WAL and the raw file; the median of a few hundred appends.
fn planning_micros(batch_entries: usize) -> f64 {
    let config = WalConfig::default();
    let (mut wal, _) = Wal::create(config, 512, |len| vec![0u8; len]).expect("planner");
    let payload = Bytes::from(vec![0x5A; ENTRY_BYTES]);
    let appends = (config.segment_bytes / 2 / (batch_entries * (ENTRY_BYTES + 64)) as u64).min(500);
    let mut samples = Vec::new();
    for append in 0..appends {
        let persist = persist_of(append, batch_entries, &payload);
        let started = Instant::now();
        let plan = wal
            .plan_append(&[(GROUP, &persist)], |len| vec![0u8; len])
            .expect("plan append");
        samples.push(started.elapsed().as_secs_f64() * 1e6);
        drop(plan);
    }
    median(samples)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

fn report(results: &[(usize, Vec<RunResult>)]) {
    println!(
        "\n| batch | WAL p50 us | WAL p99 us | WAL p99.9 us | WAL entries/s | WAL payload MiB/s | \
         write bytes | raw p50 us | raw p99 us | raw p99.9 us | p50 WAL/raw |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (batch_entries, runs) in results {
        let pick = |get: fn(&RunResult) -> f64| median(runs.iter().map(get).collect());
        println!(
            "| {batch_entries} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | \
             {:.0} | {:.2} |",
            pick(|run| run.wal.p50_us),
            pick(|run| run.wal.p99_us),
            pick(|run| run.wal.p999_us),
            pick(|run| run.wal.entries_per_second),
            pick(|run| run.wal.mebibytes_per_second),
            pick(|run| run.write_bytes as f64),
            pick(|run| run.raw.p50_us),
            pick(|run| run.raw.p99_us),
            pick(|run| run.raw.p999_us),
            pick(|run| run.wal.p50_us / run.raw.p50_us),
        );
    }
    println!("\nPer run (WAL p50 / raw p50 = ratio; WAL entries/s):");
    for (batch_entries, runs) in results {
        let cells: Vec<String> = runs
            .iter()
            .map(|run| {
                format!(
                    "{:.0}/{:.0}={:.2} {:.0}/s",
                    run.wal.p50_us,
                    run.raw.p50_us,
                    run.wal.p50_us / run.raw.p50_us,
                    run.wal.entries_per_second
                )
            })
            .collect();
        println!("  batch {batch_entries}: {}", cells.join("; "));
    }
}

fn main() {
    let options = parse_options();
    println!(
        "WAL benchmark: {} runs x {} appends (+{WARMUP_APPENDS} warm-up) of {ENTRY_BYTES}-byte \
         entries, placement {:?}, io_memory {} bytes, directory {}",
        options.runs,
        options.appends,
        options.placement,
        options.io_memory_bytes,
        options.dir.display()
    );
    let mut config = ExecutorConfig::new("wal-bench");
    config.placement = options.placement;
    config.io_memory_bytes = options.io_memory_bytes;
    let results = run_executor(&config, async {
        let mut results: Vec<(usize, Vec<RunResult>)> = BATCH_ENTRY_COUNTS
            .iter()
            .map(|&count| (count, Vec::new()))
            .collect();
        for run in 0..options.runs {
            for (batch_entries, runs) in results.iter_mut() {
                let result = measure_batch(&options, run, *batch_entries).await;
                println!(
                    "run {run} batch {batch_entries}: WAL p50 {:.0} us, raw p50 {:.0} us, {:.0} \
                     entries/s, {} bytes, {:.2} writes and {:.2} syncs per append",
                    result.wal.p50_us,
                    result.raw.p50_us,
                    result.wal.entries_per_second,
                    result.write_bytes,
                    result.writes_per_append,
                    result.syncs_per_append
                );
                runs.push(result);
            }
        }
        results
    })
    .expect("benchmark executor starts");
    report(&results);
    println!();
    for batch_entries in BATCH_ENTRY_COUNTS {
        println!(
            "planning CPU per append of {batch_entries}: {:.1} us (median, no I/O)",
            planning_micros(batch_entries)
        );
    }
}
