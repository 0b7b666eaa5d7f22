//! Snapshot benchmark: the cost of the state machine's own operations (put through `apply`,
//! get) on a large map, then a snapshot of that map (1,000,000 keys of 128-byte values by
//! default): encoding and decoding in memory, and writing and restoring through the real
//! direct-I/O store (`reactor::snapstore::DmaSnapshotStore`), with the time of the longest
//! step (how long a snapshot can hold the core between two yields).
//!
//! A benchmark, not a test: it asserts nothing about speed. Run it with
//! `cargo bench --bench snapshot -- [--keys N] [--value-bytes N] [--dir PATH]`.

use std::cell::RefCell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::ids::{GroupId, LogIndex, NodeId, Term};
use ringraft::kv::snapshot::{EncodeStatus, SnapshotDecoder, SnapshotEncoder};
use ringraft::kv::store::{load_newest, remove_old, write_snapshot};
use ringraft::kv::{Command, KvMachine};
use ringraft::prng::Prng;
use ringraft::raft::types::Membership;
use ringraft::reactor::executor::{ExecutorConfig, run_executor};
use ringraft::reactor::snapstore::DmaSnapshotStore;

struct Options {
    keys: u64,
    value_bytes: usize,
    dir: PathBuf,
}

fn parse_options() -> Options {
    let mut options = Options {
        keys: 1_000_000,
        value_bytes: 128,
        dir: PathBuf::from(env!("CARGO_TARGET_TMPDIR")),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| panic!("{name} needs a value"))
        };
        match arg.as_str() {
            "--keys" => options.keys = value("--keys").parse().expect("--keys N"),
            "--value-bytes" => {
                options.value_bytes = value("--value-bytes").parse().expect("--value-bytes N");
            }
            "--dir" => options.dir = PathBuf::from(value("--dir")),
            // cargo bench passes --bench; other flags are not ours.
            _ => {}
        }
    }
    options
}

fn key_of(number: u64) -> Bytes {
    Bytes::from(format!("key-{number:016x}"))
}

/// Encoded put commands of `count` keys drawn from `keys`, values of `value_bytes`.
fn puts(prng: &mut Prng, count: u64, keys: u64, value_bytes: usize) -> Vec<Bytes> {
    (0..count)
        .map(|_| {
            let mut value = vec![0u8; value_bytes];
            prng.fill_bytes(&mut value);
            Command::Put {
                key: key_of(prng.below(keys)),
                value: Bytes::from(value),
            }
            .encode()
        })
        .collect()
}

/// Fills a machine with `keys` keys in random order; returns it and ns per put.
fn fill(options: &Options, prng: &mut Prng) -> (KvMachine, f64) {
    let mut order: Vec<u64> = (0..options.keys).collect();
    for position in (1..order.len()).rev() {
        let other = prng.below(position as u64 + 1) as usize;
        order.swap(position, other);
    }
    let commands: Vec<Bytes> = order
        .iter()
        .map(|&number| {
            let mut value = vec![0u8; options.value_bytes];
            prng.fill_bytes(&mut value);
            Command::Put {
                key: key_of(number),
                value: Bytes::from(value),
            }
            .encode()
        })
        .collect();
    let mut machine = KvMachine::new();
    let started = Instant::now();
    for (offset, command) in commands.iter().enumerate() {
        machine.apply(LogIndex(offset as u64 + 1), command);
    }
    let ns = started.elapsed().as_nanos() as f64 / options.keys as f64;
    (machine, ns)
}

fn main() {
    let options = parse_options();
    let mut prng = Prng::new(7);
    let (mut machine, fill_ns) = fill(&options, &mut prng);
    println!(
        "kv: {} keys x {} B values: fill (put of new keys via apply) {fill_ns:.0} ns/op",
        options.keys, options.value_bytes
    );
    let overwrite_count = options.keys.min(500_000);
    let overwrites = puts(
        &mut prng,
        overwrite_count,
        options.keys,
        options.value_bytes,
    );
    let started = Instant::now();
    let mut index = machine.applied();
    for command in &overwrites {
        index = index.next();
        machine.apply(index, command);
    }
    let overwrite_ns = started.elapsed().as_nanos() as f64 / overwrite_count as f64;
    let lookups: Vec<Bytes> = (0..overwrite_count)
        .map(|_| key_of(prng.below(options.keys)))
        .collect();
    let started = Instant::now();
    let mut found = 0u64;
    for key in &lookups {
        found += u64::from(machine.get(key).is_some());
    }
    let get_ns = started.elapsed().as_nanos() as f64 / overwrite_count as f64;
    assert_eq!(found, overwrite_count, "every looked-up key exists");
    println!("kv: overwrite (put via apply) {overwrite_ns:.0} ns/op, get {get_ns:.0} ns/op");
    let during_ns = overwrite_during_snapshot(&mut machine, &overwrites);
    println!("kv: overwrite while a snapshot view is open {during_ns:.0} ns/op");
    encode_decode_in_memory(&mut machine);
    write_and_restore_files(machine, &options);
}

fn membership() -> Membership {
    Membership::new(vec![NodeId(1), NodeId(2), NodeId(3)])
}

/// Overwrites with a view open and not yet walked: every first write of a key saves its old
/// value. Returns ns per overwrite; the view is closed after.
fn overwrite_during_snapshot(machine: &mut KvMachine, overwrites: &[Bytes]) -> f64 {
    machine.begin_snapshot(Term(1), membership());
    let started = Instant::now();
    let mut index = machine.applied();
    for command in overwrites {
        index = index.next();
        machine.apply(index, command);
    }
    let ns = started.elapsed().as_nanos() as f64 / overwrites.len() as f64;
    println!(
        "kv: {} keys saved aside by {} overwrites",
        machine.snapshot_saved_key_count(),
        overwrites.len()
    );
    machine.abort_snapshot();
    ns
}

fn rate(bytes: u64, elapsed: Duration) -> String {
    format!(
        "{:.0} ms, {:.0} MB/s",
        elapsed.as_secs_f64() * 1e3,
        bytes as f64 / elapsed.as_secs_f64() / 1e6
    )
}

/// Encodes the whole machine into memory chunk by chunk, then decodes it; prints times and
/// the longest encoding step.
fn encode_decode_in_memory(machine: &mut KvMachine) {
    let frozen = machine.begin_snapshot(Term(1), membership());
    let mut encoder = SnapshotEncoder::new(GroupId(1), frozen, 4096).expect("encoder");
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut step_longest = Duration::ZERO;
    let started = Instant::now();
    loop {
        let step_started = Instant::now();
        let status = encoder.next_chunk(machine, &mut chunk);
        step_longest = step_longest.max(step_started.elapsed());
        chunks.push(chunk.clone());
        if status == EncodeStatus::Done {
            break;
        }
    }
    let encode_elapsed = started.elapsed();
    let total_bytes: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
    println!(
        "snapshot encode (memory): {} bytes in {} chunks: {}; longest step {} us",
        total_bytes,
        chunks.len(),
        rate(total_bytes, encode_elapsed),
        step_longest.as_micros()
    );
    let started = Instant::now();
    let mut decoder = SnapshotDecoder::new();
    for chunk in &chunks {
        decoder.feed(chunk).expect("decodes");
    }
    let restored = decoder.finish().expect("complete");
    let decode_elapsed = started.elapsed();
    assert_eq!(restored.machine.key_count(), machine.key_count());
    println!(
        "snapshot decode (memory, rebuilding the machine): {}",
        rate(total_bytes, decode_elapsed)
    );
}

/// Writes the machine through the direct-I/O store and restores it, timing each.
fn write_and_restore_files(machine: KvMachine, options: &Options) {
    let root = tempfile::Builder::new()
        .prefix("ringraft-snapshot-bench-")
        .tempdir_in(&options.dir)
        .expect("bench dir");
    let dir = root.path().join("core-0").join("snap");
    let key_count = machine.key_count();
    run_executor(&ExecutorConfig::new("bench-snapshot"), async move {
        let store = DmaSnapshotStore::open(&dir).await.expect("open store");
        let machine = RefCell::new(machine);
        let started = Instant::now();
        let id = write_snapshot(&store, GroupId(1), &machine, Term(1), membership())
            .await
            .expect("write");
        let write_elapsed = started.elapsed();
        let file_bytes = std::fs::metadata(store.path_of(id)).expect("file").len();
        println!(
            "snapshot write (direct I/O, synced, renamed): {file_bytes} bytes: {}",
            rate(file_bytes, write_elapsed)
        );
        let started = Instant::now();
        let loaded = load_newest(&store, GroupId(1)).await.expect("load");
        let restore_elapsed = started.elapsed();
        let (_, restored) = loaded.restored.expect("restored");
        assert_eq!(restored.machine.key_count(), key_count);
        println!(
            "snapshot restore (direct I/O read, decode, rebuild): {}",
            rate(file_bytes, restore_elapsed)
        );
        remove_old(&store, GroupId(1), 0).await.expect("clean up");
    })
    .expect("executor starts");
}
