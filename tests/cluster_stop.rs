//! `ringraft cluster` as a real process with three real nodes: a Ctrl-C (SIGINT to the
//! launcher's process group, as a terminal sends it) stops the nodes one at a time and every
//! node's log lines carry node and core, and the lines about a group its group and term; a
//! second Ctrl-C kills the nodes still running at once. Every wait polls with a deadline; the
//! tests run one at a time (three processes share this machine's cores).

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::client::Client;

/// One cluster at a time: three processes already share two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const DEADLINE: Duration = Duration::from_secs(30);
/// Three nodes stopped one after the other, each within its drain deadline and linger.
const STOP_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);
const NODES: usize = 3;

/// Messages of the lines about one group, which must name the group and its term.
const GROUP_MESSAGES: [&str; 7] = [
    "election started",
    "election won",
    "election lost",
    "leader changed",
    "handing leadership over",
    "leadership handed over",
    "WAL restored group",
];

/// A base port P below the ephemeral range with P.. P + NODES and P + 100.. free right now.
fn free_base_port() -> u16 {
    let start = 21_000 + (std::process::id() % 5_000) as u16;
    (start..start + 2_000)
        .step_by(7)
        .find(|&port| {
            (0..NODES as u16).all(|offset| {
                TcpListener::bind(("127.0.0.1", port + offset)).is_ok()
                    && TcpListener::bind(("127.0.0.1", port + 100 + offset)).is_ok()
            })
        })
        .expect("free ports for three nodes")
}

struct Launcher {
    child: Child,
    dir: tempfile::TempDir,
    /// Where the nodes' data and logs are: `--dir`, resolved against `dir`.
    data: std::path::PathBuf,
    base_port: u16,
    /// Node pids, from the launcher's banner.
    pids: Vec<i32>,
}

impl Launcher {
    /// Starts `ringraft cluster` in a process group of its own (like a shell's foreground job)
    /// and waits for its banner. `relative`: run it inside the temporary directory with a
    /// relative `--dir`, as a newcomer runs the README's command.
    fn start(relative: bool) -> Launcher {
        let dir = tempfile::tempdir().expect("temporary directory");
        let base_port = free_base_port();
        let stdout = std::fs::File::create(dir.path().join("launcher.out")).expect("stdout file");
        let (data_arg, data) = if relative {
            let name = std::path::PathBuf::from("./cluster-data");
            (name.clone(), dir.path().join(name))
        } else {
            (dir.path().to_path_buf(), dir.path().to_path_buf())
        };
        let child = Command::new(env!("CARGO_BIN_EXE_ringraft"))
            .current_dir(dir.path())
            .args(["cluster", "--nodes", &NODES.to_string(), "--cores", "1"])
            .args(["--base-port", &base_port.to_string()])
            .arg("--dir")
            .arg(data_arg)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start ringraft cluster");
        let mut launcher = Launcher {
            child,
            dir,
            data,
            base_port,
            pids: Vec::new(),
        };
        let deadline = Instant::now() + DEADLINE;
        while launcher.pids.len() < NODES {
            assert!(
                Instant::now() < deadline,
                "no banner with {NODES} pids:\n{}",
                launcher.output()
            );
            std::thread::sleep(POLL);
            launcher.pids = banner_pids(&launcher.output());
        }
        launcher
    }

    fn output(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("launcher.out")).unwrap_or_default()
    }

    fn log(&self, node: usize) -> String {
        let path = self.data.join(format!("node-{node}.log"));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    fn logs(&self) -> String {
        (1..=NODES)
            .map(|node| format!("--- node {node}\n{}", self.log(node)))
            .collect()
    }

    fn endpoint(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.base_port + 100 + node as u16 - 1)
    }

    /// SIGINT to the launcher's whole process group, as a terminal's Ctrl-C.
    fn ctrl_c(&self) {
        let group = i32::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on the process group of our own child, not yet reaped.
        assert_eq!(
            unsafe { libc::kill(-group, libc::SIGINT) },
            0,
            "signal the launcher's process group"
        );
    }

    fn wait_for_output(&self, text: &str) {
        let deadline = Instant::now() + STOP_DEADLINE;
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "the launcher never printed {text:?}:\n{}\n{}",
                self.output(),
                self.logs()
            );
            std::thread::sleep(POLL);
        }
    }

    fn wait_for_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the launcher") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!(
                    "the launcher did not exit after Ctrl-C:\n{}\n{}",
                    self.output(),
                    self.logs()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Asserts that no node process is left (the launcher reaped them all).
    fn assert_nodes_gone(&self) {
        for &pid in &self.pids {
            // SAFETY: signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            assert!(
                !alive,
                "node process {pid} still runs after the launcher exited:\n{}",
                self.output()
            );
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: kill(2) on a node pid the launcher reported; it is gone unless a test
            // failed, and then it is still the launcher's child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Node pids from the banner lines `  node N: pid P, ...`, in node order.
fn banner_pids(output: &str) -> Vec<i32> {
    output
        .lines()
        .filter_map(|line| line.trim().strip_prefix("node "))
        .filter_map(|rest| rest.split_once(": pid "))
        .filter_map(|(_, rest)| rest.split(',').next()?.parse().ok())
        .collect()
}

/// Puts a key through every node, retrying until the cluster has leaders.
fn write_through_every_node(launcher: &Launcher) {
    for node in 1..=NODES {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let key = Bytes::from(format!("key-{node}"));
            let attempt = Client::connect(&launcher.endpoint(node), Duration::from_secs(2))
                .and_then(|mut client| client.put(key, Bytes::from_static(b"v")));
            let Err(error) = attempt else { break };
            assert!(
                Instant::now() < deadline,
                "no write through node {node}: {error}\n{}",
                launcher.logs()
            );
            std::thread::sleep(POLL);
        }
    }
}

/// The timestamp (first word) of the first line of `log` containing `message`.
fn time_of<'a>(log: &'a str, message: &str, node: usize) -> &'a str {
    log.lines()
        .find(|line| line.contains(message))
        .and_then(|line| line.split_whitespace().next())
        .unwrap_or_else(|| panic!("node {node} never logged {message:?}:\n{log}"))
}

/// Checks one node's log: every line names the node and a core; every line about a group
/// names its group and term. Returns how many group lines it saw.
fn check_fields(log: &str, node: usize) -> usize {
    let mut group_lines = 0;
    for line in log.lines() {
        assert!(
            line.contains(&format!("node={node}")) && line.contains("core="),
            "node {node}: a line without node and core: {line}"
        );
        if GROUP_MESSAGES.iter().any(|message| line.contains(message)) {
            assert!(
                line.contains(" group=") && line.contains(" term="),
                "node {node}: a line about a group without group and term: {line}"
            );
            group_lines += 1;
        }
    }
    group_lines
}

#[test]
fn ctrl_c_stops_the_nodes_one_at_a_time_and_every_log_line_names_its_origin() {
    // A Ctrl-C to the launcher's process group reaches only the launcher, which stops node
    // 1, then 2, then 3, each after the previous one exited; nodes 1 and 2 hand their
    // leaderships over before the drain deadline, all exit 0, and their logs name node,
    // core, group and term. The launcher runs with a relative --dir, as the README's does.
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut launcher = Launcher::start(true);
    write_through_every_node(&launcher);
    launcher.ctrl_c();
    let status = launcher.wait_for_exit();
    assert!(
        status.success(),
        "launcher exited with {status}:\n{}\n{}",
        launcher.output(),
        launcher.logs()
    );
    launcher.assert_nodes_gone();
    let output = launcher.output();
    let mut position = 0;
    for node in 1..=NODES {
        for text in [
            format!("stopping node {node}\n"),
            format!("node {node} stopped: exit status: 0"),
        ] {
            let found = output[position..].find(&text).unwrap_or_else(|| {
                panic!("{text:?} missing or out of order in the launcher's output:\n{output}")
            });
            position += found + text.len();
        }
    }
    let logs: Vec<String> = (1..=NODES).map(|node| launcher.log(node)).collect();
    for node in 2..=NODES {
        let previous_stopped = time_of(&logs[node - 2], "server stopped", node - 1);
        let stop_requested = time_of(&logs[node - 1], "stop requested", node);
        assert_eq!(
            previous_stopped.len(),
            stop_requested.len(),
            "timestamp formats"
        );
        assert!(
            previous_stopped < stop_requested,
            "node {node} was asked to stop at {stop_requested}, before node {} had stopped \
             at {previous_stopped}:\n{}",
            node - 1,
            launcher.logs()
        );
    }
    for node in 1..NODES {
        assert!(
            !logs[node - 1].contains("drain deadline passed"),
            "node {node} stopped before handing its leaderships over:\n{}",
            launcher.logs()
        );
    }
    let group_lines: usize = (1..=NODES)
        .map(|node| check_fields(&logs[node - 1], node))
        .sum();
    let all = logs.concat();
    for message in ["election won", "leader changed", "server stopped"] {
        assert!(all.contains(message), "no {message:?} line:\n{all}");
    }
    assert!(group_lines >= 2, "only {group_lines} group lines:\n{all}");
    assert!(
        output.contains("all nodes stopped cleanly"),
        "launcher output:\n{output}"
    );
}

#[test]
fn a_second_ctrl_c_kills_the_nodes_still_running() {
    // The first Ctrl-C starts the ordered stop; a second one while node 1 is stopping kills
    // every node still running at once: the launcher exits well before the nodes' drain
    // deadlines would allow, reports the kills, and leaves no node process behind.
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut launcher = Launcher::start(false);
    write_through_every_node(&launcher);
    launcher.ctrl_c();
    launcher.wait_for_output("stopping node 1\n");
    launcher.ctrl_c();
    let status = launcher.wait_for_exit();
    launcher.assert_nodes_gone();
    let output = launcher.output();
    assert!(
        output.contains("node 3 killed: signal: 9"),
        "node 3 was not killed:\n{output}"
    );
    assert!(
        !status.success(),
        "the launcher reported success although it killed nodes:\n{output}"
    );
}
