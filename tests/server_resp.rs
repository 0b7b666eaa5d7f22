//! The RESP front against the real Redis tools: a three-node cluster of `ringraft server`
//! processes on loopback, driven by the unmodified `redis-cli` (commands of every kind,
//! checked by their printed output) and `redis-benchmark -t set,get,incr`. The tools come
//! from Debian's `redis-tools`; without them these tests fail and say so. Every wait polls
//! with a deadline.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::client::{Client, ClientError};
use ringraft::kv::Command as KvCommand;
use ringraft::shard::core::group_of_key;
use ringraft::wire::client::{ClientOp, ErrorCode};

/// One cluster at a time: three processes already share this machine's cores.
static SERIAL: Mutex<()> = Mutex::new(());

const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);
const GROUPS: u32 = 2;

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// Fails (never skips) when a Redis tool is missing.
fn require_tool(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        found,
        "`{tool}` is not installed: install redis-tools (apt-get install -y redis-tools)"
    );
}

struct Node {
    client_port: u16,
    resp_port: u16,
    dir: PathBuf,
    child: Child,
}

struct Cluster {
    nodes: Vec<Node>,
    root: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes, one core and `GROUPS` groups each, every node with a RESP port. A long
    /// election timeout keeps a busy shared machine from changing leaders mid-test.
    fn start() -> Cluster {
        let root = tempfile::tempdir().expect("temporary directory");
        let peer_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let peers = peer_ports
            .iter()
            .enumerate()
            .map(|(index, port)| format!("{}=127.0.0.1:{port}", index + 1))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=3u64)
            .map(|id| {
                let dir = root.path().join(format!("node-{id}"));
                std::fs::create_dir_all(&dir).expect("node directory");
                let log = std::fs::File::create(dir.join("server.log")).expect("log file");
                let resp_port = free_port();
                let client_port = free_port();
                let child = Command::new(env!("CARGO_BIN_EXE_ringraft"))
                    .args(["server", "--node-id", &id.to_string(), "--peers", &peers])
                    .args(["--client", &format!("127.0.0.1:{client_port}")])
                    .args(["--resp", &format!("127.0.0.1:{resp_port}")])
                    .arg("--data-dir")
                    .arg(dir.join("data"))
                    .args(["--cores", "1", "--groups", &GROUPS.to_string()])
                    .args(["--wal-segment-mib", "1", "--election-ticks", "50"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start ringraft server");
                Node {
                    client_port,
                    resp_port,
                    dir,
                    child,
                }
            })
            .collect();
        Cluster { nodes, root }
    }

    fn port(&self, index: usize) -> u16 {
        self.nodes[index].resp_port
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(index, node)| format!("--- node {}\n{}", index + 1, read_log(&node.dir)))
            .collect()
    }

    /// Runs `redis-cli -p <node's port> <arguments>` and returns what it printed.
    fn cli(&self, index: usize, arguments: &[&str]) -> String {
        let port = self.port(index).to_string();
        let mut all = vec!["-p", &port];
        all.extend_from_slice(arguments);
        let (status, output) = run(self.root.path(), "redis-cli", &all);
        assert!(
            status.is_some(),
            "redis-cli {arguments:?} did not finish within {DEADLINE:?}\n{}",
            self.logs()
        );
        output
    }

    /// Polls until every node answers a write and a read through RESP.
    fn wait_until_serving(&self) {
        for index in 0..self.nodes.len() {
            let deadline = Instant::now() + DEADLINE;
            let key = format!("ready{index}");
            loop {
                let written = self.cli(index, &["SET", &key, "1"]);
                if written.trim() == "OK" && self.cli(index, &["GET", &key]).trim() == "1" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} did not serve RESP writes within {DEADLINE:?} (last: {written:?})\n{}",
                    index + 1,
                    self.logs()
                );
                std::thread::sleep(POLL);
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
    }
}

fn read_log(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// Runs `program` with its output in a file under `dir`; `None` as the status if it had not
/// exited by the deadline (it is killed then).
fn run(
    dir: &Path,
    program: &str,
    arguments: &[&str],
) -> (Option<std::process::ExitStatus>, String) {
    let output_path = dir.join(format!("{program}.out"));
    let output = std::fs::File::create(&output_path).expect("output file");
    let mut child = Command::new(program)
        .args(arguments)
        .stdin(Stdio::null())
        .stdout(output.try_clone().expect("output file handle"))
        .stderr(output)
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot run {program}: {error}: install redis-tools (apt-get install -y redis-tools)")
        });
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the tool") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(POLL);
    };
    let text = std::fs::read_to_string(&output_path).unwrap_or_default();
    (status, text)
}

/// Two keys of different groups and a second key of the first one's group.
fn keys_by_group() -> (String, String, String) {
    let candidates: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
    let group = |key: &String| group_of_key(key.as_bytes(), GROUPS);
    let first = candidates[0].clone();
    let same = candidates[1..]
        .iter()
        .find(|key| group(key) == group(&first))
        .expect("a key of the same group")
        .clone();
    let other = candidates[1..]
        .iter()
        .find(|key| group(key) != group(&first))
        .expect("a key of another group")
        .clone();
    (first, same, other)
}

#[test]
fn redis_cli_runs_every_supported_command_against_any_node() {
    // redis-cli, unmodified, gets Redis's answers from every node: writes through one node
    // are read through another, counters and conditional sets are replicated, multi-key
    // commands count and order correctly, and errors and INFO read as Redis's do.
    require_tool("redis-cli");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cluster = Cluster::start();
    cluster.wait_until_serving();
    // redis-cli prints a reply's text alone on a line when its output is not a terminal, and
    // an error reply with an empty line after it.
    let expect = |index: usize, arguments: &[&str], expected: &str| {
        let printed = cluster.cli(index, arguments);
        assert_eq!(
            printed,
            expected,
            "redis-cli {arguments:?} on node {}\n{}",
            index + 1,
            cluster.logs()
        );
    };
    expect(0, &["PING"], "PONG\n");
    expect(1, &["ECHO", "hello world"], "hello world\n");
    expect(0, &["SET", "k", "v1"], "OK\n");
    expect(1, &["GET", "k"], "v1\n");
    expect(2, &["SET", "k", "v2", "NX"], "\n");
    expect(2, &["SET", "k", "v2", "XX"], "OK\n");
    expect(0, &["SET", "absent", "x", "XX"], "\n");
    expect(1, &["SETNX", "k", "v3"], "0\n");
    expect(0, &["GET", "k"], "v2\n");
    // A value larger than one socket read arrives in pieces and is stored whole.
    let big: String = (0..100_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    expect(1, &["SET", "big", &big], "OK\n");
    expect(2, &["GET", "big"], &format!("{big}\n"));
    expect(0, &["INCR", "counter"], "1\n");
    expect(1, &["INCR", "counter"], "2\n");
    expect(2, &["INCRBY", "counter", "40"], "42\n");
    expect(0, &["DECR", "counter"], "41\n");
    expect(1, &["DECRBY", "counter", "1"], "40\n");
    expect(
        2,
        &["INCR", "k"],
        "ERR value is not an integer or out of range\n\n",
    );
    expect(0, &["GET", "k"], "v2\n");
    let (first, same, other) = keys_by_group();
    expect(0, &["MSET", &first, "1", &same, "2"], "OK\n");
    expect(
        1,
        &["MSET", &first, "1", &other, "3"],
        "CROSSSLOT Keys in request don't hash to the same group\n\n",
    );
    expect(2, &["SET", &other, "3"], "OK\n");
    expect(
        2,
        &["MGET", &first, "missing", &other, &same],
        "1\n\n3\n2\n",
    );
    expect(0, &["EXISTS", &first, "missing", &other, &first], "3\n");
    expect(1, &["DEL", &first, "missing", &other], "2\n");
    expect(2, &["EXISTS", &first, &other, &same], "1\n");
    expect(
        0,
        &["FOO", "bar"],
        "ERR unknown command 'FOO', with args beginning with: 'bar' \n\n",
    );
    expect(0, &["SELECT", "0"], "OK\n");
    expect(0, &["SELECT", "1"], "ERR DB index is out of range\n\n");
    expect(1, &["CONFIG", "GET", "save"], "save\n\n");
    expect(1, &["CONFIG", "GET", "appendonly"], "appendonly\nyes\n");
    expect(1, &["CLIENT", "SETNAME", "tester"], "OK\n");
    expect(2, &["COMMAND", "COUNT"], "0\n");
    // The native protocol carries the same commands: a cross-group multi-put is refused
    // there too (checked by the shard), and an increment sees the RESP ones.
    let endpoint = format!("127.0.0.1:{}", cluster.nodes[2].client_port);
    let mut native = Client::connect(&endpoint, DEADLINE).expect("native client");
    let refused = native.call(ClientOp::Write(KvCommand::MultiPut {
        pairs: vec![
            (Bytes::from(first.clone()), Bytes::from_static(b"1")),
            (Bytes::from(other.clone()), Bytes::from_static(b"2")),
        ],
    }));
    assert!(
        matches!(&refused, Err(ClientError::Server { code: ErrorCode::BadRequest, message })
            if message.contains("don't hash to the same group")),
        "cross-group multi-put answered {refused:?}"
    );
    assert_eq!(
        native
            .incr(Bytes::from_static(b"counter"), 2)
            .expect("incr"),
        42
    );
    expect(0, &["GET", "counter"], "42\n");
    let info = cluster.cli(1, &["INFO"]);
    for line in [
        "# Server",
        "redis_version:7.0.0",
        "node_id:2",
        "groups:2",
        "# Replication",
        "role:master",
        "group0:role=",
        "group1:role=",
    ] {
        assert!(info.contains(line), "INFO lacks {line:?}:\n{info}");
    }
    // Every group has a leader by now (writes went through both), and every node names it.
    for index in 0..3 {
        let info = cluster.cli(index, &["INFO", "replication"]);
        assert!(
            !info.contains("leader=none") && !info.contains("# Server"),
            "node {}: {info}",
            index + 1
        );
    }
}

/// The requests per second redis-benchmark printed for `test` (`SET`, `GET`, `INCR`).
fn rate(printed: &str, test: &str) -> Option<f64> {
    printed
        .split(['\r', '\n'])
        .filter_map(|line| line.trim().strip_prefix(&format!("{test}: ")))
        .filter_map(|rest| rest.split(" requests per second").next())
        .filter_map(|number| number.trim().parse::<f64>().ok())
        .next_back()
}

#[test]
fn redis_benchmark_completes_and_every_increment_counts() {
    // redis-benchmark, unmodified, runs SET, GET and INCR to completion with non-zero rates,
    // and the counter it incremented reads back exactly the number of INCRs it sent.
    require_tool("redis-benchmark");
    require_tool("redis-cli");
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let cluster = Cluster::start();
    cluster.wait_until_serving();
    let port = cluster.port(0).to_string();
    let arguments = [
        "-p",
        &port,
        "-t",
        "set,get,incr",
        "-n",
        "2000",
        "-c",
        "4",
        "-q",
    ];
    let (status, printed) = run(cluster.root.path(), "redis-benchmark", &arguments);
    println!("redis-benchmark {}:\n{printed}", arguments.join(" "));
    let status = status.unwrap_or_else(|| {
        panic!(
            "redis-benchmark did not finish within {DEADLINE:?}:\n{printed}\n{}",
            cluster.logs()
        )
    });
    assert!(
        status.success(),
        "redis-benchmark exited with {status}:\n{printed}"
    );
    for test in ["SET", "GET", "INCR"] {
        let rate = rate(&printed, test);
        assert!(
            rate.is_some_and(|rate| rate > 0.0),
            "no {test} rate (found {rate:?}) in:\n{printed}"
        );
    }
    assert!(
        !printed.contains("ERR"),
        "redis-benchmark saw errors:\n{printed}\n{}",
        cluster.logs()
    );
    // redis-benchmark without -r uses the literal key `counter:__rand_int__`.
    assert_eq!(
        cluster.cli(2, &["GET", "counter:__rand_int__"]),
        "2000\n",
        "{}",
        cluster.logs()
    );
}
