//! Snapshots, log compaction and catch-up in real `ringraft server` processes on loopback: a
//! follower that missed 100,000 writes catches up through the leader's snapshot and serves
//! the same data (also after its own restart, and after one that finds every snapshot file
//! of it damaged, when it rebuilds from the leader's); the WAL and snapshot files of every node stay
//! within a bound computed from the settings during a long write run; and nodes SIGKILLed while
//! taking or installing snapshots lose no acknowledged write.
//!
//! Writers own disjoint keys and never have two writes of one key in flight, and every value
//! names its key and the writer's sequence number (`key-00042-1234-...`), so the value each key
//! must hold at the end is known: the last acknowledged one, or one whose outcome the writer
//! never learned (a timeout or a dropped connection may still commit it, thesis §6.3).
//! Every wait polls with a deadline; one cluster runs at a time.

mod cluster_support;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::client::Client;
use ringraft::constants::{SNAPSHOT_IO_BUFFER_BYTES, SNAPSHOTS_KEPT};
use ringraft::ids::LogIndex;
use ringraft::kv::Command;
use ringraft::prng::Prng;
use ringraft::wire::client::{ClientOp, ErrorCode, Reply, RequestId};

use cluster_support::{Cluster, DEADLINE, GROUPS, POLL, put, read_through, seed, serial};

/// How long one writer may run before the test gives up on it.
const WRITER_DEADLINE: Duration = Duration::from_secs(90);
/// Client timeout of the writers and readers.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

fn key_name(index: usize) -> String {
    format!("key-{index:05}")
}

/// `{key}-{seq}-` padded with `v` to `value_bytes` (never shorter than the prefix).
fn value_of(key: &str, seq: u64, value_bytes: usize) -> String {
    let mut value = format!("{key}-{seq}-");
    while value.len() < value_bytes {
        value.push('v');
    }
    value
}

/// The writer's sequence number inside a value of `key`, if the value is one of `value_of`'s.
fn seq_of(key: &str, value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    let rest = text.strip_prefix(key)?.strip_prefix('-')?;
    let digits = rest.split('-').next()?;
    digits.parse().ok()
}

/// What one key's writer knows about the key's writes.
#[derive(Clone, Debug, Default)]
struct KeyHistory {
    /// The sequence number of the last acknowledged write.
    last_acked: Option<u64>,
    /// Writes whose outcome the writer never learned: each may or may not have committed.
    unknown: BTreeSet<u64>,
}

impl KeyHistory {
    /// Whether `found` (the sequence number read, `None` for an absent key) is a value the
    /// key may hold: the last acknowledged write's, or one whose outcome is unknown (it may
    /// linearize after the last acknowledged one). An older acknowledged value, or absence
    /// after an acknowledgement, is a lost write.
    fn allows(&self, found: Option<u64>) -> bool {
        match found {
            None => self.last_acked.is_none(),
            Some(seq) => self.last_acked == Some(seq) || self.unknown.contains(&seq),
        }
    }
}

/// Everything one writer did.
#[derive(Debug, Default)]
struct Ledger {
    keys: Vec<String>,
    histories: Vec<KeyHistory>,
    acked: u64,
    unknown: u64,
    /// Writes the server certainly did not apply (shutting down, overloaded).
    refused: u64,
    /// The first few errors, for the report.
    errors: Vec<String>,
}

impl Ledger {
    fn note_error(&mut self, error: String) {
        if self.errors.len() < 10 {
            self.errors.push(error);
        }
    }
}

#[derive(Clone)]
struct WriterConfig {
    endpoints: String,
    keys: Vec<String>,
    /// Writes in flight on the writer's one connection.
    depth: usize,
    value_bytes: usize,
    /// Stop after this many acknowledgements (or at `stop`).
    acks_wanted: Option<u64>,
    stop: Arc<AtomicBool>,
    /// Acknowledgements of all writers, for the test to watch progress.
    acked_total: Arc<AtomicU64>,
}

fn spawn_writer(config: WriterConfig) -> JoinHandle<Ledger> {
    std::thread::spawn(move || run_writer(&config))
}

/// Puts `config.keys` round-robin with up to `depth` writes pipelined on one connection,
/// never two of one key at once, until enough are acknowledged or `stop` is set. A broken
/// connection makes every write in flight unknown; the writer reconnects and goes on.
fn run_writer(config: &WriterConfig) -> Ledger {
    let key_count = config.keys.len();
    assert!(
        key_count > config.depth,
        "{key_count} keys cannot keep {} writes of distinct keys in flight",
        config.depth
    );
    let mut ledger = Ledger {
        keys: config.keys.clone(),
        histories: vec![KeyHistory::default(); key_count],
        ..Ledger::default()
    };
    let mut next_seq = vec![0u64; key_count];
    let mut busy = vec![false; key_count];
    let mut in_flight: HashMap<RequestId, (usize, u64)> = HashMap::new();
    let mut cursor = 0usize;
    let mut client: Option<Client> = None;
    let deadline = Instant::now() + WRITER_DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "a writer ran for {WRITER_DEADLINE:?}: {} acknowledged, {} unknown, errors {:?}",
            ledger.acked,
            ledger.unknown,
            ledger.errors
        );
        let enough = config
            .acks_wanted
            .is_some_and(|wanted| ledger.acked >= wanted);
        let stopping = enough || config.stop.load(Ordering::Relaxed);
        if stopping && in_flight.is_empty() {
            return ledger;
        }
        let Some(connected) = client.as_mut() else {
            match Client::connect(&config.endpoints, CLIENT_TIMEOUT) {
                Ok(connected) => client = Some(connected),
                Err(error) => {
                    ledger.note_error(format!("connect: {error}"));
                    std::thread::sleep(POLL);
                }
            }
            continue;
        };
        let mut broken = None;
        while !stopping && in_flight.len() < config.depth {
            let planned = ledger.acked + in_flight.len() as u64;
            if config.acks_wanted.is_some_and(|wanted| planned >= wanted) || busy[cursor] {
                break;
            }
            let key = cursor;
            cursor = (cursor + 1) % key_count;
            let seq = next_seq[key];
            next_seq[key] += 1;
            let value = value_of(&config.keys[key], seq, config.value_bytes);
            let op = ClientOp::Write(Command::Put {
                key: Bytes::copy_from_slice(config.keys[key].as_bytes()),
                value: Bytes::from(value),
            });
            match connected.send(op) {
                Ok(id) => {
                    in_flight.insert(id, (key, seq));
                    busy[key] = true;
                }
                Err(error) => {
                    broken = Some(format!("send: {error}"));
                    break;
                }
            }
        }
        if broken.is_none() {
            match connected.recv() {
                Ok(response) => match in_flight.remove(&response.id) {
                    Some((key, seq)) => {
                        busy[key] = false;
                        record_reply(&mut ledger, &config.acked_total, (key, seq), response.reply);
                    }
                    None => broken = Some(format!("response to unknown {:?}", response.id)),
                },
                Err(error) => broken = Some(format!("receive: {error}")),
            }
        }
        if let Some(error) = broken {
            // Every write in flight may or may not have committed.
            for (_, (key, seq)) in in_flight.drain() {
                busy[key] = false;
                ledger.histories[key].unknown.insert(seq);
                ledger.unknown += 1;
            }
            ledger.note_error(error);
            client = None;
        }
    }
}

fn record_reply(
    ledger: &mut Ledger,
    acked_total: &AtomicU64,
    (key, seq): (usize, u64),
    reply: Reply,
) {
    match reply {
        Reply::Written => {
            let history = &mut ledger.histories[key];
            assert!(
                history.last_acked.is_none_or(|last| last < seq),
                "{}: write {seq} acknowledged after write {:?}",
                ledger.keys[key],
                history.last_acked
            );
            history.last_acked = Some(seq);
            ledger.acked += 1;
            acked_total.fetch_add(1, Ordering::Relaxed);
        }
        Reply::Error {
            code: ErrorCode::ShuttingDown | ErrorCode::Overloaded,
            message,
        } => {
            ledger.refused += 1;
            ledger.note_error(format!("{}: refused: {message}", ledger.keys[key]));
        }
        other => {
            ledger.histories[key].unknown.insert(seq);
            ledger.unknown += 1;
            ledger.note_error(format!("{}: {other:?}", ledger.keys[key]));
        }
    }
}

/// Starts `writers` writers on the template's endpoints, writer `w` owning keys
/// `w, w + writers, ...` of `0..key_count` and starting on the `w`-th endpoint.
fn start_writers(
    template: &WriterConfig,
    writers: usize,
    key_count: usize,
) -> Vec<JoinHandle<Ledger>> {
    (0..writers)
        .map(|writer| {
            let mut config = template.clone();
            // Each writer starts on a different node of the list.
            let mut endpoints: Vec<&str> = template.endpoints.split(',').collect();
            let turn = writer % endpoints.len().max(1);
            endpoints.rotate_left(turn);
            config.endpoints = endpoints.join(",");
            config.keys = (writer..key_count).step_by(writers).map(key_name).collect();
            spawn_writer(config)
        })
        .collect()
}

fn join_writers(handles: Vec<JoinHandle<Ledger>>) -> Vec<Ledger> {
    handles
        .into_iter()
        .map(|handle| handle.join().expect("writer thread"))
        .collect()
}

/// Waits until `acked` reaches `target`, failing with the cluster's logs at the deadline.
fn wait_for_acks(cluster: &mut Cluster, acked: &AtomicU64, target: u64, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while acked.load(Ordering::Relaxed) < target {
        cluster.assert_running();
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {target} writes acknowledged within {DEADLINE:?}\n{}",
            acked.load(Ordering::Relaxed),
            cluster.logs()
        );
        std::thread::sleep(POLL);
    }
}

/// Each group's commit index on its leader, asked of the running nodes; polls until every
/// group has a leader among them.
fn leader_commits(cluster: &Cluster) -> Vec<LogIndex> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut commits: Vec<Option<LogIndex>> = vec![None; GROUPS as usize];
        for index in 0..cluster.nodes.len() {
            if !cluster.is_running(index) {
                continue;
            }
            let node = ringraft::ids::NodeId(cluster.nodes[index].id);
            for group in cluster.status(index) {
                let slot = usize::try_from(group.group.0).ok();
                if group.leader == Some(node)
                    && let Some(slot) = slot.and_then(|slot| commits.get_mut(slot))
                {
                    *slot = Some(group.commit);
                }
            }
        }
        if commits.iter().all(Option::is_some) {
            return commits.into_iter().flatten().collect();
        }
        assert!(
            Instant::now() < deadline,
            "no leader for every group within {DEADLINE:?}: {commits:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until node `index` has applied, in every group, at least what the group's leader
/// had committed when this was called.
fn wait_caught_up(cluster: &mut Cluster, index: usize) {
    let targets = leader_commits(cluster);
    let deadline = Instant::now() + DEADLINE;
    loop {
        cluster.assert_running();
        let status = cluster.status(index);
        let behind: Vec<String> = targets
            .iter()
            .enumerate()
            .filter_map(|(slot, target)| {
                let applied = status
                    .iter()
                    .find(|group| usize::try_from(group.group.0).ok() == Some(slot))
                    .map(|group| group.applied);
                match applied {
                    Some(applied) if applied >= *target => None,
                    other => Some(format!(
                        "group {slot}: applied {other:?} < commit {target:?}"
                    )),
                }
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not catch up within {DEADLINE:?}: {behind:?}\n{}",
            index + 1,
            cluster.logs()
        );
        std::thread::sleep(POLL);
    }
}

/// Reads every key of `ledgers` (or every `sample_every`-th) through node `index` and checks
/// it against its writer's history; returns how many keys were checked.
fn check_node(cluster: &Cluster, index: usize, ledgers: &[Ledger], sample_every: usize) -> usize {
    let mut keys = Vec::new();
    let mut histories = Vec::new();
    for ledger in ledgers {
        for (position, key) in ledger.keys.iter().enumerate().step_by(sample_every) {
            keys.push(key.clone());
            histories.push(&ledger.histories[position]);
        }
    }
    let values = read_through(cluster, index, &keys);
    let mut wrong = Vec::new();
    for ((key, history), value) in keys.iter().zip(&histories).zip(&values) {
        let found = value.as_ref().map(|value| seq_of(key, value));
        let allowed = match found {
            None => history.allows(None),
            Some(None) => false,
            Some(Some(seq)) => history.allows(Some(seq)),
        };
        if !allowed {
            wrong.push(format!(
                "{key}: read {:?}, last acknowledged {:?}, unknown {:?}",
                value
                    .as_ref()
                    .map(|v| String::from_utf8_lossy(&v[..v.len().min(24)]).into_owned()),
                history.last_acked,
                history.unknown
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "node {} serves {} of {} keys wrongly; first: {:?}\n{}",
        index + 1,
        wrong.len(),
        keys.len(),
        &wrong[..wrong.len().min(10)],
        cluster.logs()
    );
    keys.len()
}

/// Bytes of the WAL segments (`core-*/*.wal`) and of the snapshot files (`core-*/snap/*`,
/// temporary ones included) under a node's data directory. Files vanish while a node runs:
/// those are skipped.
fn disk_usage(data_dir: &Path) -> (u64, u64) {
    let mut wal_bytes = 0;
    let mut snap_bytes = 0;
    let Ok(cores) = std::fs::read_dir(data_dir) else {
        return (0, 0);
    };
    for core in cores.flatten() {
        let core_path = core.path();
        if !core_path.is_dir() {
            continue;
        }
        for file in std::fs::read_dir(&core_path)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = file.path();
            if path.extension().is_some_and(|ext| ext == "wal") {
                wal_bytes += file.metadata().map_or(0, |m| m.len());
            }
        }
        for file in std::fs::read_dir(core_path.join("snap"))
            .into_iter()
            .flatten()
            .flatten()
        {
            snap_bytes += file.metadata().map_or(0, |m| m.len());
        }
    }
    (wal_bytes, snap_bytes)
}

/// The number of lines of `log` that contain `needle`.
fn count_lines(log: &str, needle: &str) -> usize {
    log.lines().filter(|line| line.contains(needle)).count()
}

/// Waits until node `index`'s log, from byte `offset` on, contains `needle`.
fn wait_for_log(cluster: &mut Cluster, index: usize, offset: u64, needle: &str) {
    let deadline = Instant::now() + DEADLINE;
    while !cluster.log_since(index, offset).contains(needle) {
        cluster.assert_running();
        assert!(
            Instant::now() < deadline,
            "node {} never logged {needle:?} within {DEADLINE:?}\n{}",
            index + 1,
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The number after `name=` in a log line.
fn log_field(line: &str, name: &str) -> Option<u64> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let digits: String = line[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Checks the log of a restart of a node that caught up through a snapshot: every group
/// restored a snapshot, its WAL held only entries after the compaction point (no more than
/// 2 x `snapshot_entries`, plus one more for a snapshot being written when it stopped), and
/// it needed no snapshot from a leader.
fn check_restart_from_snapshot(log: &str, snapshot_entries: u64) {
    let restored: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WAL restored group"))
        .collect();
    assert_eq!(
        restored.len(),
        GROUPS as usize,
        "one \"WAL restored group\" line per group:\n{log}"
    );
    for line in restored {
        let Some(compacted) = log_field(line, "snapshot_index") else {
            panic!("the restart found a group whose WAL was never compacted: {line}");
        };
        // `first_index=none`: the WAL holds no entry of the group at all.
        let Some(first) = log_field(line, "first_index") else {
            continue;
        };
        let last = log_field(line, "last_index").unwrap_or(compacted);
        assert_eq!(
            first,
            compacted + 1,
            "the WAL holds entries from {first}, not right after its snapshot {compacted}: {line}"
        );
        assert!(
            last + 1 - first <= 3 * snapshot_entries,
            "the WAL holds {} entries ({first}..={last}), more than 3 x {snapshot_entries}: {line}",
            last + 1 - first
        );
    }
    assert_eq!(
        count_lines(log, "restored snapshot"),
        GROUPS as usize,
        "every group restarts from its own snapshot:\n{log}"
    );
    assert!(
        !log.contains("receiving a snapshot"),
        "the restarted node needed a snapshot again:\n{log}"
    );
}

#[test]
fn a_follower_down_during_100000_writes_catches_up_through_a_snapshot_and_serves_identical_data() {
    // Node 3 is stopped while 100,000 writes over 1,000 keys are acknowledged (snapshots every
    // 2,000 entries compact the others' logs past it), then started: it installs the leader's
    // snapshots, applies up to the leaders' commit, serves every key's last acknowledged value,
    // and serves them again after its own restart from its compacted WAL and snapshot.
    let _serial = serial();
    const KEYS: usize = 1000;
    const WRITES: u64 = 100_000;
    const WRITERS: usize = 4;
    const SNAPSHOT_ENTRIES: u64 = 2000;
    let mut cluster = Cluster::with_args(3, &["--snapshot-entries", &SNAPSHOT_ENTRIES.to_string()]);
    put(&cluster, &cluster.endpoints(), "probe", "0");
    let status = cluster.signal(2, libc::SIGTERM);
    assert!(
        status.success(),
        "node 3 stopped with {status}\n{}",
        cluster.logs()
    );
    let template = WriterConfig {
        endpoints: cluster.endpoints_except(2),
        keys: Vec::new(),
        depth: 32,
        value_bytes: 32,
        acks_wanted: Some(WRITES / WRITERS as u64),
        stop: Arc::new(AtomicBool::new(false)),
        acked_total: Arc::new(AtomicU64::new(0)),
    };
    let started = Instant::now();
    let ledgers = join_writers(start_writers(&template, WRITERS, KEYS));
    let acked: u64 = ledgers.iter().map(|ledger| ledger.acked).sum();
    let unknown: u64 = ledgers.iter().map(|ledger| ledger.unknown).sum();
    eprintln!(
        "{acked} writes acknowledged ({unknown} unknown) in {:?} with node 3 down",
        started.elapsed()
    );
    assert_eq!(
        acked, WRITES,
        "writers stopped early: {:?}",
        ledgers[0].errors
    );
    let taken = count_lines(&cluster.full_log(0), "snapshot taken");
    assert!(
        taken >= 2,
        "node 1 took {taken} snapshots during {WRITES} writes"
    );

    let offset = cluster.log_len(2);
    cluster.start(2);
    let catch_up = Instant::now();
    wait_caught_up(&mut cluster, 2);
    eprintln!("node 3 caught up in {:?}", catch_up.elapsed());
    let log = cluster.log_since(2, offset);
    for needle in [
        "receiving a snapshot",
        "received a snapshot",
        "installed the leader's snapshot",
    ] {
        assert!(
            log.contains(needle),
            "node 3 caught up without logging {needle:?}:\n{log}"
        );
    }
    let sent: usize = (0..2)
        .map(|index| count_lines(&cluster.full_log(index), "snapshot sent"))
        .sum();
    assert!(
        sent >= 1,
        "no leader logged \"snapshot sent\"\n{}",
        cluster.logs()
    );
    let checked = check_node(&cluster, 2, &ledgers, 1);
    assert_eq!(checked, KEYS, "every key was read through node 3");

    // Node 3 restarts from its snapshot and the WAL after it alone.
    let status = cluster.signal(2, libc::SIGTERM);
    assert!(
        status.success(),
        "node 3 stopped with {status}\n{}",
        cluster.logs()
    );
    let offset = cluster.log_len(2);
    cluster.start(2);
    wait_caught_up(&mut cluster, 2);
    let log = cluster.log_since(2, offset);
    check_restart_from_snapshot(&log, SNAPSHOT_ENTRIES);
    check_node(&cluster, 2, &ledgers, 7);

    // Every snapshot file of node 3 is damaged while it is down: no snapshot continues its
    // compacted WAL, so it says its state is lost, sets the files aside, rebuilds each group
    // from its leader's snapshot and serves the same data again.
    let status = cluster.signal(2, libc::SIGTERM);
    assert!(
        status.success(),
        "node 3 stopped with {status}\n{}",
        cluster.logs()
    );
    let damaged = damage_every_snapshot(&cluster.data_dir(2));
    assert!(
        damaged >= GROUPS as usize,
        "node 3 had {damaged} snapshot files"
    );
    let offset = cluster.log_len(2);
    cluster.start(2);
    wait_for_log(&mut cluster, 2, offset, "stored state is lost");
    wait_caught_up(&mut cluster, 2);
    let log = cluster.log_since(2, offset);
    assert_eq!(
        count_lines(&log, "stored state is lost"),
        GROUPS as usize,
        "every group of node 3 lost its state:\n{log}"
    );
    assert_eq!(
        count_lines(&log, "set a snapshot that does not decode aside"),
        damaged,
        "every damaged file is set aside:\n{log}"
    );
    assert!(
        count_lines(&log, "installed the leader's snapshot") >= GROUPS as usize,
        "node 3 rebuilt its groups without the leaders' snapshots:\n{log}"
    );
    let checked = check_node(&cluster, 2, &ledgers, 1);
    assert_eq!(checked, KEYS, "every key was read through node 3");
}

/// Flips a byte in the middle of every snapshot file under `data_dir`; returns how many.
fn damage_every_snapshot(data_dir: &Path) -> usize {
    let mut damaged = 0;
    let cores = std::fs::read_dir(data_dir).expect("data dir lists");
    for core in cores.map(|entry| entry.expect("data dir entry").path()) {
        let Ok(files) = std::fs::read_dir(core.join("snap")) else {
            continue;
        };
        for path in files.map(|entry| entry.expect("snapshot dir entry").path()) {
            if path.extension().is_none_or(|ext| ext != "snap") {
                continue;
            }
            let mut bytes = std::fs::read(&path).expect("snapshot reads");
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x5a;
            std::fs::write(&path, &bytes).expect("snapshot writes");
            damaged += 1;
        }
    }
    damaged
}

#[test]
fn wal_disk_usage_stays_bounded_during_a_long_write_run_with_a_small_key_space() {
    // 300,000 writes of 128-byte values over 1,000 keys with 1 MiB segments and a snapshot
    // every 2,000 entries: the WAL and snapshot files of every node, sampled every 100 ms,
    // never exceed a bound computed from the settings that is far below what was written.
    let _serial = serial();
    const KEYS: usize = 1000;
    const WRITES: u64 = 300_000;
    const WRITERS: usize = 4;
    const VALUE_BYTES: usize = 128;
    const SNAPSHOT_ENTRIES: u64 = 2000;
    const SEGMENT_BYTES: u64 = 1024 * 1024;
    let cluster = Cluster::with_args(
        3,
        &[
            "--wal-segment-mib",
            "1",
            "--snapshot-entries",
            &SNAPSHOT_ENTRIES.to_string(),
        ],
    );
    put(&cluster, &cluster.endpoints(), "probe", "0");

    let key_bytes = key_name(0).len() as u64;
    // One entry's WAL bytes, generously: twice its key and value (the command encodes
    // both once) plus 128 bytes for the command, entry and record headers.
    let entry_bytes_max = 2 * (key_bytes + VALUE_BYTES as u64) + 128;
    // A group's log holds at most 2 x snapshot-entries between two compactions; give it one
    // more snapshot-entries for the entries applied while a snapshot is being written.
    let wal_entry_bytes_max = u64::from(GROUPS) * 3 * SNAPSHOT_ENTRIES * entry_bytes_max;
    // Segments holding those, plus the oldest partly purged one, the active one and 2 spares.
    let wal_bound = (wal_entry_bytes_max.div_ceil(SEGMENT_BYTES) + 1 + 1 + 2) * SEGMENT_BYTES;
    // A snapshot holds at most every key of the cluster, with 64 bytes of framing per key and
    // 4 KiB of header and padding. Per group: the 2 kept ones, and one being written, whose
    // temporary file grows in whole I/O buffers (SNAPSHOT_IO_BUFFER_BYTES) of the writer.
    let snapshot_bytes_max = KEYS as u64 * (key_bytes + VALUE_BYTES as u64 + 64) + 4096;
    let io_buffer_bytes = SNAPSHOT_IO_BUFFER_BYTES as u64;
    let snapshot_writing_bytes_max = snapshot_bytes_max.div_ceil(io_buffer_bytes) * io_buffer_bytes;
    let snap_bound = u64::from(GROUPS)
        * (SNAPSHOTS_KEPT as u64 * snapshot_bytes_max + snapshot_writing_bytes_max);
    let bound = wal_bound + snap_bound;

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let dirs: Vec<_> = (0..3).map(|index| cluster.data_dir(index)).collect();
        let stop = stop_sampling.clone();
        std::thread::spawn(move || {
            let mut peaks = vec![(0u64, 0u64, 0u64); dirs.len()];
            let mut samples = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for (dir, peak) in dirs.iter().zip(&mut peaks) {
                    let (wal, snap) = disk_usage(dir);
                    *peak = (peak.0.max(wal + snap), peak.1.max(wal), peak.2.max(snap));
                }
                samples += 1;
                // The sampling period, not a wait for any state.
                std::thread::sleep(Duration::from_millis(100));
            }
            (peaks, samples)
        })
    };
    let template = WriterConfig {
        endpoints: cluster.endpoints(),
        keys: Vec::new(),
        depth: 32,
        value_bytes: VALUE_BYTES,
        acks_wanted: Some(WRITES / WRITERS as u64),
        stop: Arc::new(AtomicBool::new(false)),
        acked_total: Arc::new(AtomicU64::new(0)),
    };
    let started = Instant::now();
    let ledgers = join_writers(start_writers(&template, WRITERS, KEYS));
    let elapsed = started.elapsed();
    stop_sampling.store(true, Ordering::Relaxed);
    let (peaks, samples) = sampler.join().expect("sampler thread");
    let acked: u64 = ledgers.iter().map(|ledger| ledger.acked).sum();
    assert_eq!(
        acked, WRITES,
        "writers stopped early: {:?}",
        ledgers[0].errors
    );
    let written_bytes = acked * (key_bytes + VALUE_BYTES as u64);
    eprintln!(
        "{acked} writes in {elapsed:?}: {written_bytes} bytes of keys and values; {samples} \
         samples; peak (total, wal, snap) per node {peaks:?}; bound {bound} \
         (wal {wal_bound}, snapshots {snap_bound})"
    );
    assert!(samples >= 10, "only {samples} disk samples during the run");
    assert!(
        2 * bound < written_bytes,
        "the bound {bound} is not well below the {written_bytes} bytes written: it tests nothing"
    );
    for (index, (total, wal, snap)) in peaks.iter().enumerate() {
        assert!(
            *wal <= wal_bound && *snap <= snap_bound && *total <= bound,
            "node {} used {total} bytes (wal {wal}, snapshots {snap}), more than the bound \
             {bound} (wal {wal_bound}, snapshots {snap_bound})\n{}",
            index + 1,
            cluster.logs()
        );
        let taken = count_lines(&cluster.full_log(index), "snapshot taken");
        assert!(
            taken >= 5,
            "node {} took {taken} snapshots during {WRITES} writes",
            index + 1
        );
    }
    check_node(&cluster, 0, &ledgers, 10);
}

#[test]
fn killed_while_taking_or_installing_snapshots_loses_nothing_acknowledged() {
    // Writers keep writing while, round by round, a node is SIGKILLed at a random moment with
    // a snapshot every 500 entries (so one is nearly always being taken), or a lagging node
    // is SIGKILLed right after it logs "receiving a snapshot"; each is restarted, and at the
    // end every node serves each key's last acknowledged value (or an unknown-outcome one).
    let _serial = serial();
    let seed = seed("killed_while_taking_or_installing_snapshots_loses_nothing_acknowledged");
    let mut prng = Prng::new(seed);
    const KEYS: usize = 2000;
    const WRITERS: usize = 2;
    const SNAPSHOT_ENTRIES: u64 = 500;
    let mut cluster = Cluster::with_args(
        3,
        &[
            "--snapshot-entries",
            &SNAPSHOT_ENTRIES.to_string(),
            // Slower snapshot sends (a snapshot of 1,000 keys of 256 bytes is two chunks, the
            // second sent about 60 ms after the first), so a kill lands while one is being
            // received. Not slower: a follower must install the snapshot before the leader
            // applies another 1 to 2 x snapshot-entries entries and compacts past it, or it
            // installs snapshot after snapshot and never catches up (at 1 MiB/s it did).
            "--snapshot-send-mib",
            "4",
        ],
    );
    put(&cluster, &cluster.endpoints(), "probe", "0");
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let template = WriterConfig {
        endpoints: cluster.endpoints(),
        keys: Vec::new(),
        // Few writes in flight: a group applies snapshot-entries entries in well over the
        // time a snapshot send takes, so a follower catches up after installing one.
        depth: 4,
        value_bytes: 256,
        acks_wanted: None,
        stop: stop.clone(),
        acked_total: acked.clone(),
    };
    let writers = start_writers(&template, WRITERS, KEYS);
    wait_for_acks(
        &mut cluster,
        &acked,
        2 * KEYS as u64,
        "before the first kill",
    );
    let mut receiving_kills = 0;
    for round in 0..4 {
        let victim = usize::try_from(prng.below(3)).expect("index");
        // What the victim's log must show once it caught up after its last restart.
        let expected_after_restart = if round % 2 == 0 {
            // While taking snapshots: a random number of writes later, once the victim has
            // logged a snapshot since the round began, SIGKILL and restart.
            let offset = cluster.log_len(victim);
            let later = acked.load(Ordering::Relaxed) + prng.range_inclusive(200, 3000);
            wait_for_acks(
                &mut cluster,
                &acked,
                later,
                "before a kill while snapshotting",
            );
            wait_for_log(&mut cluster, victim, offset, "snapshot taken");
            eprintln!(
                "round {round}: SIGKILL node {} while it takes snapshots",
                victim + 1
            );
            cluster.signal(victim, libc::SIGKILL);
            // It restarts from its own newest snapshot and the WAL after it.
            Some("restored snapshot")
        } else {
            // While installing: the victim misses more than 2 x snapshot-entries per group,
            // so the others compact past its log, and is killed as the snapshot arrives.
            cluster.signal(victim, libc::SIGKILL);
            let missed = u64::from(GROUPS) * 4 * SNAPSHOT_ENTRIES;
            let later = acked.load(Ordering::Relaxed) + missed;
            wait_for_acks(&mut cluster, &acked, later, "while a node is down");
            let offset = cluster.log_len(victim);
            cluster.start(victim);
            wait_for_log(&mut cluster, victim, offset, "receiving a snapshot");
            cluster.signal(victim, libc::SIGKILL);
            let installed = cluster
                .log_since(victim, offset)
                .contains("installed the leader's snapshot");
            eprintln!(
                "round {round}: SIGKILL node {} as it receives a snapshot (one installed \
                 already: {installed})",
                victim + 1
            );
            receiving_kills += 1;
            // With no snapshot installed before the kill, every group still needs one.
            (!installed).then_some("installed the leader's snapshot")
        };
        let offset = cluster.log_len(victim);
        cluster.start(victim);
        wait_caught_up(&mut cluster, victim);
        if let Some(needle) = expected_after_restart {
            let log = cluster.log_since(victim, offset);
            assert!(
                log.contains(needle),
                "node {} caught up after its restart without logging {needle:?}:\n{log}",
                victim + 1
            );
        }
        let progress = acked.load(Ordering::Relaxed) + 500;
        wait_for_acks(&mut cluster, &acked, progress, "after a restart");
    }
    stop.store(true, Ordering::Relaxed);
    let ledgers = join_writers(writers);
    let total: u64 = ledgers.iter().map(|ledger| ledger.acked).sum();
    let unknown: u64 = ledgers.iter().map(|ledger| ledger.unknown).sum();
    let refused: u64 = ledgers.iter().map(|ledger| ledger.refused).sum();
    eprintln!(
        "{total} writes acknowledged, {unknown} unknown, {refused} refused; errors {:?}",
        ledgers
            .iter()
            .flat_map(|l| l.errors.iter().take(3))
            .collect::<Vec<_>>()
    );
    assert_eq!(receiving_kills, 2, "kills while receiving a snapshot");
    for index in 0..3 {
        let log = cluster.full_log(index);
        let panics: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("panicked"))
            .collect();
        assert!(panics.is_empty(), "node {} panicked: {panics:?}", index + 1);
    }
    for index in 0..3 {
        wait_caught_up(&mut cluster, index);
        let checked = check_node(&cluster, index, &ledgers, 1);
        assert_eq!(
            checked,
            KEYS,
            "every key was read through node {}",
            index + 1
        );
    }
}
