//! Shared pieces of the tests that run real `ringraft server` processes on loopback: a
//! `Cluster` of nodes on ephemeral ports (start, signal, logs, data directories, status), the
//! lock that keeps one cluster at a time, and `eventually`/`put`/`get`, which retry with a
//! deadline.
//!
//! Owns only test plumbing; must not contain the checks themselves, and never waits with a
//! fixed sleep for a state: every wait polls with a deadline.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::client::{Client, ClientError};
use std::collections::HashMap;

use ringraft::wire::client::{ClientOp, GroupStatus, Reply, RequestId};

/// One cluster at a time: three processes already share two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub const DEADLINE: Duration = Duration::from_secs(20);
pub const POLL: Duration = Duration::from_millis(20);
pub const GROUPS: u32 = 2;

/// Takes the one-cluster-at-a-time lock, even if a failed test poisoned it.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// `count` distinct ephemeral ports: each is held until all are chosen, so no two are the
/// same (a port bound and released at once may be handed out again by the next bind).
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("local address").port())
        .collect()
}

pub struct Node {
    pub id: u64,
    pub client_port: u16,
    pub resp_port: u16,
    pub peer_port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub peers: String,
    /// A `--peers` list given to one node instead of `peers` (see `set_peers`), by index.
    peer_overrides: Vec<Option<String>>,
    /// Options given to every `ringraft server` beyond the ids, addresses and directory.
    server_args: Vec<String>,
    _root: tempfile::TempDir,
}

impl Cluster {
    /// `count` nodes with one core, `GROUPS` groups and 1 MiB WAL segments, all started.
    pub fn new(count: u64) -> Cluster {
        Cluster::with_args(count, &[])
    }

    /// As `new`, with `extra` added to every node's command line (e.g. snapshot settings).
    pub fn with_args(count: u64, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::unstarted(count, extra);
        for index in 0..cluster.nodes.len() {
            cluster.start(index);
        }
        cluster
    }

    /// As `with_args`, but no node is started yet: the caller may `set_peers` first.
    pub fn unstarted(count: u64, extra: &[&str]) -> Cluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let ports = free_ports(3 * usize::try_from(count).expect("node count fits"));
        let nodes: Vec<Node> = (1..=count)
            .zip(ports.chunks_exact(3))
            .map(|(id, ports)| Node {
                id,
                client_port: ports[0],
                resp_port: ports[1],
                peer_port: ports[2],
                dir: root.path().join(format!("node-{id}")),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|node| format!("{}=127.0.0.1:{}", node.id, node.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut server_args: Vec<String> = ["--cores", "1", "--groups"]
            .iter()
            .map(|arg| arg.to_string())
            .collect();
        server_args.push(GROUPS.to_string());
        if !extra.contains(&"--wal-segment-mib") {
            server_args.extend(["--wal-segment-mib".to_string(), "1".to_string()]);
        }
        server_args.extend(extra.iter().map(|arg| arg.to_string()));
        let peer_overrides = vec![None; nodes.len()];
        Cluster {
            nodes,
            peers,
            peer_overrides,
            server_args,
            _root: root,
        }
    }

    /// The cluster's `--peers` list with node `index`'s peer address replaced by `address`:
    /// given to the other nodes, it routes their connections to that node through `address`
    /// (e.g. a proxy), while the node itself still binds its own entry.
    pub fn peers_routing(&self, index: usize, address: &str) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(at, node)| {
                if at == index {
                    format!("{}={address}", node.id)
                } else {
                    format!("{}=127.0.0.1:{}", node.id, node.peer_port)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `index` is started (from now on) with `peers` as its `--peers` list.
    pub fn set_peers(&mut self, index: usize, peers: String) {
        self.peer_overrides[index] = Some(peers);
    }

    pub fn start(&mut self, index: usize) {
        let peers = self.peer_overrides[index]
            .clone()
            .unwrap_or_else(|| self.peers.clone());
        let node = &mut self.nodes[index];
        assert!(node.child.is_none(), "node {} is already running", node.id);
        std::fs::create_dir_all(&node.dir).expect("data directory");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path(&node.dir))
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ringraft"))
            .args([
                "server",
                "--node-id",
                &node.id.to_string(),
                "--peers",
                &peers,
            ])
            .args(["--client", &format!("127.0.0.1:{}", node.client_port)])
            .args(["--resp", &format!("127.0.0.1:{}", node.resp_port)])
            .arg("--data-dir")
            .arg(node.dir.join("data"))
            .args(&self.server_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ringraft server");
        node.child = Some(child);
    }

    pub fn endpoint(&self, index: usize) -> String {
        format!("127.0.0.1:{}", self.nodes[index].client_port)
    }

    pub fn endpoints(&self) -> String {
        (0..self.nodes.len())
            .map(|index| self.endpoint(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The endpoints of every node but `excluded`, comma-separated.
    pub fn endpoints_except(&self, excluded: usize) -> String {
        (0..self.nodes.len())
            .filter(|&index| index != excluded)
            .map(|index| self.endpoint(index))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.nodes[index].child.is_some()
    }

    /// Sends `signal` to node `index` and waits (with a deadline) for it to exit.
    pub fn signal(&mut self, index: usize, signal: libc::c_int) -> ExitStatus {
        let node = &mut self.nodes[index];
        let mut child = node.child.take().expect("node is running");
        let pid = i32::try_from(child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own child, not yet reaped.
        assert_eq!(
            unsafe { libc::kill(pid, signal) },
            0,
            "kill node {}",
            node.id
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the node") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not exit after signal {signal}; log:\n{}",
                node.id,
                read_log(&node.dir)
            );
            std::thread::sleep(POLL);
        }
    }

    /// Panics, with the logs, if a node this cluster started has exited on its own (a crash
    /// fails the test at once rather than at some later deadline).
    pub fn assert_running(&mut self) {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            if let Some(child) = node.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                exited.push(format!("node {} exited with {status}", node.id));
                node.child = None;
            }
        }
        assert!(exited.is_empty(), "{exited:?}\n{}", self.logs());
    }

    /// The last lines of every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| format!("--- node {}\n{}", node.id, read_log(&node.dir)))
            .collect()
    }

    /// Node `index`'s whole log (stderr of every run, appended).
    pub fn full_log(&self, index: usize) -> String {
        std::fs::read_to_string(log_path(&self.nodes[index].dir)).unwrap_or_default()
    }

    /// Bytes of node `index`'s log so far: an offset to search from with `log_since`.
    pub fn log_len(&self, index: usize) -> u64 {
        std::fs::metadata(log_path(&self.nodes[index].dir)).map_or(0, |metadata| metadata.len())
    }

    /// Node `index`'s log from byte `offset` on.
    pub fn log_since(&self, index: usize, offset: u64) -> String {
        let text = std::fs::read(log_path(&self.nodes[index].dir)).unwrap_or_default();
        let start = usize::try_from(offset).map_or(text.len(), |start| start.min(text.len()));
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// Node `index`'s data directory (`--data-dir`).
    pub fn data_dir(&self, index: usize) -> PathBuf {
        self.nodes[index].dir.join("data")
    }

    /// Node `index`'s view of its groups (`Status` asked of that node alone).
    pub fn status(&self, index: usize) -> Vec<GroupStatus> {
        eventually(
            self,
            &self.endpoint(index),
            &format!("status of node {}", index + 1),
            |client| client.status(),
        )
        .0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

pub fn log_path(dir: &Path) -> PathBuf {
    dir.join("server.log")
}

/// The last 40 lines of the log of the node whose directory is `dir`.
pub fn read_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Retries `op` with a fresh client on `endpoints` until it succeeds or the deadline passes.
pub fn eventually<T>(
    cluster: &Cluster,
    endpoints: &str,
    what: &str,
    mut op: impl FnMut(&mut Client) -> Result<T, ClientError>,
) -> T {
    let deadline = Instant::now() + DEADLINE;
    let mut last = String::new();
    while Instant::now() < deadline {
        match Client::connect(endpoints, Duration::from_secs(2)) {
            Ok(mut client) => match op(&mut client) {
                Ok(value) => return value,
                Err(error) => last = error.to_string(),
            },
            Err(error) => last = error.to_string(),
        }
        std::thread::sleep(POLL);
    }
    panic!(
        "{what}: not done within {DEADLINE:?}; last error: {last}\n{}",
        cluster.logs()
    );
}

pub fn put(cluster: &Cluster, endpoints: &str, key: &str, value: &str) {
    eventually(cluster, endpoints, &format!("put {key}"), |client| {
        client.put(
            Bytes::copy_from_slice(key.as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
        )
    });
}

pub fn get(cluster: &Cluster, endpoints: &str, key: &str) -> Option<Bytes> {
    eventually(cluster, endpoints, &format!("get {key}"), |client| {
        client.get(Bytes::copy_from_slice(key.as_bytes()))
    })
}

/// The variable that replays a randomized test.
pub const SEED_ENV: &str = "RINGRAFT_SEED";

/// The seed of a randomized test: `RINGRAFT_SEED` when set (a replay), else fresh; printed
/// first so a failing run can be replayed.
pub fn seed(test_name: &str) -> u64 {
    let seed = match std::env::var(SEED_ENV) {
        Ok(text) => text
            .parse::<u64>()
            .unwrap_or_else(|error| panic!("{SEED_ENV}={text:?} is not a u64: {error}")),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or(0);
            (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    println!("{test_name}: seed {seed} (replay with {SEED_ENV}={seed})");
    eprintln!("{test_name}: seed {seed} (replay with {SEED_ENV}={seed})");
    seed
}

/// Client timeout of `read_through`.
const READ_CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads `keys` through node `index` alone, pipelined; a failed batch is read again until
/// the deadline.
pub fn read_through(cluster: &Cluster, index: usize, keys: &[String]) -> Vec<Option<Bytes>> {
    const BATCH: usize = 64;
    let endpoint = cluster.endpoint(index);
    let mut values = Vec::with_capacity(keys.len());
    let mut client: Option<Client> = None;
    let deadline = Instant::now() + DEADLINE;
    let mut start = 0;
    while start < keys.len() {
        let end = (start + BATCH).min(keys.len());
        let attempt = read_batch(&mut client, &endpoint, &keys[start..end]);
        match attempt {
            Ok(batch) => {
                values.extend(batch);
                start = end;
            }
            Err(error) => {
                client = None;
                assert!(
                    Instant::now() < deadline,
                    "reading through node {} failed until the deadline: {error}\n{}",
                    index + 1,
                    cluster.logs()
                );
                std::thread::sleep(POLL);
            }
        }
    }
    values
}

fn read_batch(
    client: &mut Option<Client>,
    endpoint: &str,
    keys: &[String],
) -> Result<Vec<Option<Bytes>>, String> {
    let connected = match client {
        Some(connected) => connected,
        None => client
            .insert(Client::connect(endpoint, READ_CLIENT_TIMEOUT).map_err(|e| e.to_string())?),
    };
    let mut ids = Vec::with_capacity(keys.len());
    for key in keys {
        let op = ClientOp::Get {
            key: Bytes::copy_from_slice(key.as_bytes()),
        };
        ids.push(connected.send(op).map_err(|e| e.to_string())?);
    }
    let mut answers: HashMap<RequestId, Option<Bytes>> = HashMap::new();
    while answers.len() < ids.len() {
        let response = connected.recv().map_err(|e| e.to_string())?;
        match response.reply {
            Reply::Value(value) => {
                answers.insert(response.id, value);
            }
            other => return Err(format!("a read answered {other:?}")),
        }
    }
    ids.iter()
        .map(|id| answers.remove(id).ok_or(format!("no answer to {id:?}")))
        .collect()
}
