//! A snapshot transfer to a lagging follower resumes after its connection is cut, in real
//! `ringraft server` processes on loopback: nodes 1 and 2 reach node 3's peer port through a
//! TCP proxy in this test (node 3 binds its real port; the peer hello names node ids, not
//! addresses), and the proxy cuts every connection it carries while node 3 is receiving a
//! snapshot. Node 3 must catch up and serve the same data, having staged that snapshot from
//! zero only once.
//!
//! Owns the proxy and the check; the cluster plumbing is `cluster_support`'s. Every wait
//! polls with a deadline; one cluster runs at a time.

mod cluster_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::client::Client;
use ringraft::ids::NodeId;
use ringraft::kv::Command;
use ringraft::prng::Prng;
use ringraft::wire::client::{ClientOp, Reply};

use cluster_support::{Cluster, DEADLINE, GROUPS, POLL, put, read_through, seed, serial};

/// Client timeout of the writer and the reader.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the writes with node 3 down may take.
const WRITE_DEADLINE: Duration = Duration::from_secs(60);
/// Bytes one proxy pump reads and forwards at a time.
const PROXY_BUFFER_BYTES: usize = 64 * 1024;
/// `cut_at` of a proxy that is not armed.
const UNARMED: u64 = u64::MAX;

/// What the proxy threads share.
struct ProxyState {
    /// Bytes forwarded toward the target since the proxy started.
    to_target_bytes: AtomicU64,
    /// Cut every connection once `to_target_bytes` reaches this (`UNARMED`: never).
    cut_at: AtomicU64,
    /// `to_target_bytes` at each cut, in order.
    cuts: Mutex<Vec<u64>>,
    /// Every socket the proxy carries now (both ends of each connection).
    sockets: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl ProxyState {
    /// Shuts both directions of every connection carried down: the peers see a dropped
    /// connection and whatever was in flight through the proxy is lost.
    fn cut_all(&self) {
        let mut sockets = self.sockets.lock().unwrap_or_else(|e| e.into_inner());
        for socket in sockets.drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

/// A TCP proxy forwarding every connection accepted on `address` to `target`, both ways.
struct Proxy {
    address: SocketAddr,
    state: Arc<ProxyState>,
    acceptor: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let address = listener.local_addr().expect("proxy address");
        let state = Arc::new(ProxyState {
            to_target_bytes: AtomicU64::new(0),
            cut_at: AtomicU64::new(UNARMED),
            cuts: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let shared = state.clone();
        let acceptor = std::thread::spawn(move || accept_loop(&listener, target, &shared));
        Proxy {
            address,
            state,
            acceptor: Some(acceptor),
        }
    }

    fn to_target_bytes(&self) -> u64 {
        self.state.to_target_bytes.load(Ordering::SeqCst)
    }

    /// Cuts every connection once `more_bytes` more have passed toward the target.
    fn arm(&self, more_bytes: u64) -> u64 {
        let at = self.to_target_bytes() + more_bytes;
        self.state.cut_at.store(at, Ordering::SeqCst);
        at
    }

    fn cuts(&self) -> Vec<u64> {
        self.state
            .cuts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.cut_all();
        // Wakes the acceptor, which sees `stop`.
        let _ = TcpStream::connect(self.address);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, target: SocketAddr, state: &Arc<ProxyState>) {
    for incoming in listener.incoming() {
        if state.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(source) = incoming else {
            continue;
        };
        // A target that is down refuses: dropping the source makes the peer reconnect later.
        let Ok(sink) = TcpStream::connect(target) else {
            continue;
        };
        let clones = (
            source.try_clone(),
            sink.try_clone(),
            source.try_clone(),
            sink.try_clone(),
        );
        let (Ok(source_read), Ok(sink_read), Ok(source_kept), Ok(sink_kept)) = clones else {
            continue;
        };
        state
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend([source_kept, sink_kept]);
        let toward = state.clone();
        std::thread::spawn(move || pump(source_read, sink, &toward, true));
        let back = state.clone();
        std::thread::spawn(move || pump(sink_read, source, &back, false));
    }
}

/// Copies `from` into `to` until either closes. Bytes toward the target are counted, and
/// the read that reaches the armed cut is dropped, not forwarded, before every connection
/// is cut: what the sender wrote last is lost for certain (bytes already forwarded may
/// still arrive), so the receiver sees a gap or a truncated frame, as with a real failure.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &ProxyState, toward_target: bool) {
    let mut buffer = vec![0u8; PROXY_BUFFER_BYTES];
    loop {
        let count = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => count,
            Err(error) if error.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if toward_target {
            let passed = state.to_target_bytes.load(Ordering::SeqCst);
            let at = state.cut_at.load(Ordering::SeqCst);
            if passed + count as u64 >= at
                && state
                    .cut_at
                    .compare_exchange(at, UNARMED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                state
                    .cuts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(passed);
                state.cut_all();
                break;
            }
        }
        if to.write_all(&buffer[..count]).is_err() {
            break;
        }
        if toward_target {
            state
                .to_target_bytes
                .fetch_add(count as u64, Ordering::SeqCst);
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn key_name(index: usize) -> String {
    format!("key-{index:05}")
}

/// Round `round`'s value of `key`: `{key}-{round}-` padded with `v` to `value_bytes`.
fn value_of(key: &str, round: u64, value_bytes: usize) -> Bytes {
    let mut value = format!("{key}-{round}-").into_bytes();
    value.resize(value_bytes.max(value.len()), b'v');
    Bytes::from(value)
}

/// Puts every key with its round's value, `depth` writes pipelined, round after round (a
/// round starts once every write of the previous one is acknowledged, so each key ends
/// with its last round's value). A write whose outcome is unknown is sent again with the
/// same value, which leaves the same end state.
fn write_rounds(cluster: &mut Cluster, endpoints: &str, keys: &[String], rounds: u64) {
    const DEPTH: usize = 32;
    let deadline = Instant::now() + WRITE_DEADLINE;
    let mut client: Option<Client> = None;
    let mut errors: Vec<String> = Vec::new();
    for round in 0..rounds {
        let mut pending: Vec<usize> = (0..keys.len()).rev().collect();
        let mut in_flight: Vec<(ringraft::wire::client::RequestId, usize)> = Vec::new();
        while !pending.is_empty() || !in_flight.is_empty() {
            cluster.assert_running();
            assert!(
                Instant::now() < deadline,
                "round {round}: {} keys left after {WRITE_DEADLINE:?}; errors {errors:?}\n{}",
                pending.len() + in_flight.len(),
                cluster.logs()
            );
            let Some(connected) = client.as_mut() else {
                match Client::connect(endpoints, CLIENT_TIMEOUT) {
                    Ok(connected) => client = Some(connected),
                    Err(error) => {
                        errors.push(format!("connect: {error}"));
                        std::thread::sleep(POLL);
                    }
                }
                continue;
            };
            let mut broken = false;
            while in_flight.len() < DEPTH
                && let Some(key) = pending.pop()
            {
                let op = ClientOp::Write(Command::Put {
                    key: Bytes::copy_from_slice(keys[key].as_bytes()),
                    value: value_of(&keys[key], round, VALUE_BYTES),
                });
                match connected.send(op) {
                    Ok(id) => in_flight.push((id, key)),
                    Err(error) => {
                        pending.push(key);
                        errors.push(format!("send: {error}"));
                        broken = true;
                        break;
                    }
                }
            }
            if !broken && !in_flight.is_empty() {
                match connected.recv() {
                    Ok(response) => {
                        let position = in_flight.iter().position(|(id, _)| *id == response.id);
                        match (position, response.reply) {
                            (Some(position), Reply::Written) => {
                                in_flight.swap_remove(position);
                            }
                            (Some(position), other) => {
                                let (_, key) = in_flight.swap_remove(position);
                                pending.push(key);
                                errors.push(format!("{}: {other:?}", keys[key]));
                            }
                            (None, _) => broken = true,
                        }
                    }
                    Err(error) => {
                        errors.push(format!("receive: {error}"));
                        broken = true;
                    }
                }
            }
            if broken {
                pending.extend(in_flight.drain(..).map(|(_, key)| key));
                client = None;
            }
            errors.truncate(10);
        }
    }
}

/// Value bytes of every write: a snapshot of a group holds about half the keys times this.
const VALUE_BYTES: usize = 4096;

/// The value of `field=` in a log line (fields are space-separated `name=value`).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

/// One snapshot transfer named by node 3's "receiving a snapshot" line.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Transfer {
    group: String,
    index: String,
    leader: String,
    total_bytes: u64,
}

fn transfers_started(log: &str) -> Vec<Transfer> {
    log.lines()
        .filter(|line| line.contains("receiving a snapshot"))
        .filter_map(|line| {
            Some(Transfer {
                group: field(line, "group")?.to_string(),
                index: field(line, "index")?.to_string(),
                leader: field(line, "leader")?.to_string(),
                total_bytes: field(line, "bytes")?.parse().ok()?,
            })
        })
        .collect()
}

/// The byte counts of node 3's "received a snapshot" lines for `transfer`'s group and index.
fn received_bytes(log: &str, transfer: &Transfer) -> Vec<u64> {
    log.lines()
        .filter(|line| line.contains("received a snapshot"))
        .filter(|line| {
            field(line, "group") == Some(transfer.group.as_str())
                && field(line, "index") == Some(transfer.index.as_str())
        })
        .filter_map(|line| field(line, "bytes")?.parse().ok())
        .collect()
}

/// Polls node `index`'s log from `offset` until `found` returns something.
fn wait_for<T>(
    cluster: &mut Cluster,
    index: usize,
    offset: u64,
    what: &str,
    found: impl Fn(&str) -> Option<T>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    loop {
        cluster.assert_running();
        if let Some(value) = found(&cluster.log_since(index, offset)) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not log {what} within {DEADLINE:?}\n{}",
            index + 1,
            cluster.logs()
        );
        std::thread::sleep(POLL);
    }
}

/// Waits until node `index` has applied, in every group, at least what the group's leader
/// (among the other nodes) had committed when this was called.
fn wait_caught_up(cluster: &mut Cluster, index: usize) {
    let deadline = Instant::now() + DEADLINE;
    let mut targets = vec![None; GROUPS as usize];
    while targets.iter().any(Option::is_none) {
        for other in (0..cluster.nodes.len()).filter(|&other| other != index) {
            let node = NodeId(cluster.nodes[other].id);
            for group in cluster.status(other) {
                if group.leader == Some(node)
                    && let Some(slot) = usize::try_from(group.group.0)
                        .ok()
                        .and_then(|slot| targets.get_mut(slot))
                {
                    *slot = Some(group.commit);
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leader for every group among the others: {targets:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(POLL);
    }
    loop {
        cluster.assert_running();
        let status = cluster.status(index);
        let behind = targets.iter().enumerate().any(|(slot, target)| {
            let applied = status
                .iter()
                .find(|group| usize::try_from(group.group.0).ok() == Some(slot))
                .map(|group| group.applied);
            applied.is_none_or(|applied| Some(applied) < *target)
        });
        if !behind {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not catch up to {targets:?} within {DEADLINE:?}: {status:?}\n{}",
            index + 1,
            cluster.logs()
        );
        std::thread::sleep(POLL);
    }
}

/// The newest index of each group's "snapshot taken" lines in `log`, by group slot.
fn newest_snapshots(log: &str) -> Vec<u64> {
    let mut newest = vec![0u64; GROUPS as usize];
    for line in log.lines().filter(|line| line.contains("snapshot taken")) {
        let group = field(line, "group").and_then(|group| group.parse::<usize>().ok());
        let index = field(line, "index").and_then(|index| index.parse::<u64>().ok());
        if let (Some(slot), Some(index)) = (group.and_then(|g| newest.get_mut(g)), index) {
            *slot = (*slot).max(index);
        }
    }
    newest
}

/// Waits until `nodes` have applied every group's commit and none has a snapshot due (each
/// applied fewer than `snapshot_entries` entries past its newest snapshot, the shard's
/// trigger), so the snapshot a restarted follower is offered stays the newest while it is
/// being sent.
fn wait_snapshots_settled(cluster: &mut Cluster, nodes: &[usize], snapshot_entries: u64) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        cluster.assert_running();
        let statuses: Vec<_> = nodes.iter().map(|&index| cluster.status(index)).collect();
        let mut unsettled = Vec::new();
        for (&index, status) in nodes.iter().zip(&statuses) {
            let newest = newest_snapshots(&cluster.full_log(index));
            for group in status {
                let slot = usize::try_from(group.group.0).unwrap_or(usize::MAX);
                let commit = statuses
                    .iter()
                    .flatten()
                    .filter(|other| other.group == group.group)
                    .map(|other| other.commit.0)
                    .max()
                    .unwrap_or(0);
                let snapshot = newest.get(slot).copied().unwrap_or(0);
                if group.applied.0 < commit || snapshot + snapshot_entries <= group.applied.0 {
                    unsettled.push(format!(
                        "node {} group {slot}: applied {} of {commit}, newest snapshot {snapshot}",
                        index + 1,
                        group.applied.0
                    ));
                }
            }
        }
        if unsettled.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "snapshots not settled within {DEADLINE:?}: {unsettled:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(POLL);
    }
}

#[test]
fn a_snapshot_transfer_cut_by_dropped_connections_resumes_where_it_stopped() {
    // Node 3 misses enough writes that the leaders compact past it, restarts, and while it
    // receives a snapshot of about 8 MiB (paced at 4 MiB/s), the proxy between the leaders
    // and node 3 cuts every connection twice, after a seeded number of bytes: node 3 still
    // stages that snapshot from zero once, receives all its bytes, catches up and serves
    // every key's last value.
    let _serial = serial();
    let seed = seed("a_snapshot_transfer_cut_by_dropped_connections_resumes_where_it_stopped");
    let mut prng = Prng::new(seed);
    const KEYS: usize = 4000;
    const ROUNDS: u64 = 3;
    const CUTS: usize = 2;
    const SNAPSHOT_ENTRIES: u64 = 2000;
    let mut cluster = Cluster::unstarted(
        3,
        &[
            "--snapshot-entries",
            &SNAPSHOT_ENTRIES.to_string(),
            "--snapshot-send-mib",
            "4",
        ],
    );
    let target = SocketAddr::from(([127, 0, 0, 1], cluster.nodes[2].peer_port));
    let proxy = Proxy::start(target);
    let routed = cluster.peers_routing(2, &proxy.address.to_string());
    cluster.set_peers(0, routed.clone());
    cluster.set_peers(1, routed);
    for index in 0..3 {
        cluster.start(index);
    }
    put(&cluster, &cluster.endpoints(), "probe", "0");
    let status = cluster.signal(2, libc::SIGTERM);
    assert!(
        status.success(),
        "node 3 stopped with {status}\n{}",
        cluster.logs()
    );

    let keys: Vec<String> = (0..KEYS).map(key_name).collect();
    let started = Instant::now();
    let writers = cluster.endpoints_except(2);
    write_rounds(&mut cluster, &writers, &keys, ROUNDS);
    eprintln!(
        "{} writes of {VALUE_BYTES} bytes with node 3 down in {:?}",
        KEYS as u64 * ROUNDS,
        started.elapsed()
    );

    wait_snapshots_settled(&mut cluster, &[0, 1], SNAPSHOT_ENTRIES);

    let offset = cluster.log_len(2);
    cluster.start(2);
    let transfer = wait_for(&mut cluster, 2, offset, "receiving a snapshot", |log| {
        transfers_started(log).into_iter().next()
    });
    eprintln!("node 3 receives {transfer:?}");
    assert!(
        transfer.total_bytes > 4 * 1024 * 1024,
        "the snapshot of {} bytes is too small to cut its transfer in the middle",
        transfer.total_bytes
    );
    let mut cuts_mid_transfer = 0;
    for cut in 0..CUTS {
        // Seeded: between 256 KiB and 1 MiB more toward node 3, a few chunks at most.
        let more = prng.range_inclusive(256 * 1024, 1024 * 1024);
        let at = proxy.arm(more);
        let deadline = Instant::now() + DEADLINE;
        while proxy.cuts().len() <= cut {
            cluster.assert_running();
            assert!(
                Instant::now() < deadline,
                "the proxy did not cut at {at} bytes within {DEADLINE:?} ({} passed)",
                proxy.to_target_bytes()
            );
            std::thread::sleep(POLL);
        }
        // The transfer had not finished when the cut happened if its end is not logged now.
        let finished = !received_bytes(&cluster.log_since(2, offset), &transfer).is_empty();
        eprintln!(
            "cut {cut} at {} bytes toward node 3; transfer finished before: {finished}",
            proxy.cuts()[cut]
        );
        if !finished {
            cuts_mid_transfer += 1;
        }
    }
    assert!(
        cuts_mid_transfer >= 1,
        "no cut landed while {transfer:?} was in progress: {:?}",
        proxy.cuts()
    );

    let received = wait_for(&mut cluster, 2, offset, "received a snapshot", |log| {
        received_bytes(log, &transfer).first().copied()
    });
    wait_caught_up(&mut cluster, 2);
    eprintln!(
        "node 3 caught up {:?} after its restart; proxy cuts {:?}",
        started.elapsed(),
        proxy.cuts()
    );
    let log = cluster.log_since(2, offset);
    // Resumed, not restarted: the receiver logs "receiving" when it stages from offset zero.
    let restarts = transfers_started(&log)
        .into_iter()
        .filter(|started| started.group == transfer.group && started.index == transfer.index)
        .count();
    assert_eq!(
        restarts, 1,
        "node 3 staged {transfer:?} from zero {restarts} times:\n{log}"
    );
    assert_eq!(
        received, transfer.total_bytes,
        "node 3 received {received} of {transfer:?}"
    );
    // The rest of the transfer went over a connection the leader opened after a cut.
    let accepted = log
        .lines()
        .filter(|line| {
            line.contains("peer connection accepted")
                && field(line, "peer") == Some(transfer.leader.as_str())
        })
        .count();
    assert!(
        accepted >= 2,
        "node 3 accepted {accepted} connections from the leader, node {}:\n{log}",
        transfer.leader
    );
    assert!(
        !log.contains("giving up a snapshot"),
        "node 3 gave a snapshot up:\n{log}"
    );
    let leader = transfer.leader.parse::<usize>().expect("leader id") - 1;
    let sent = cluster.full_log(leader).lines().any(|line| {
        line.contains("snapshot sent")
            && field(line, "group") == Some(transfer.group.as_str())
            && field(line, "index") == Some(transfer.index.as_str())
            && field(line, "peer") == Some("3")
    });
    assert!(
        sent,
        "node {} did not log \"snapshot sent\" for {transfer:?}\n{}",
        leader + 1,
        cluster.logs()
    );

    let values = read_through(&cluster, 2, &keys);
    for (key, value) in keys.iter().zip(&values) {
        let expected = value_of(key, ROUNDS - 1, VALUE_BYTES);
        assert!(
            value.as_ref() == Some(&expected),
            "node 3 serves {key} = {:?}, not its last value",
            value
                .as_ref()
                .map(|value| String::from_utf8_lossy(&value[..value.len().min(24)]).into_owned())
        );
    }
}
