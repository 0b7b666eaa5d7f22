//! Shared pieces of the WAL tests that run real processes: a tiny test runner (these test
//! binaries have `harness = false` so that the same binary can be re-executed as a child
//! process), child-process spawning, deadline polling, and seeds.
//!
//! Owns only test plumbing; must not contain the checks themselves.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Environment variable that turns a re-executed test binary into a child process; its value
/// names the child's role.
pub const CHILD_ROLE_ENV: &str = "RINGRAFT_WAL_CHILD_ROLE";
/// Environment variable with the replay seed of randomized tests.
pub const SEED_ENV: &str = "RINGRAFT_SEED";

/// One test: its name and body.
pub type TestCase = (&'static str, fn());

/// Runs the tests whose name contains the first non-flag argument (as libtest filters),
/// prints a libtest-style report and exits non-zero if any failed.
/// `--list` prints the names as libtest does, and `--ignored` runs none (there are no
/// ignored tests); other flags are accepted and ignored.
pub fn run_tests(tests: &[TestCase]) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return;
    }
    let only_ignored = args.iter().any(|arg| arg == "--ignored");
    let filter: Option<String> = args.iter().find(|arg| !arg.starts_with('-')).cloned();
    let started = Instant::now();
    let mut passed = 0usize;
    let mut failed = Vec::new();
    let mut filtered_out = 0usize;
    let selected: Vec<&TestCase> = tests
        .iter()
        .filter(|(name, _)| {
            let keep =
                !only_ignored && filter.as_deref().is_none_or(|filter| name.contains(filter));
            if !keep {
                filtered_out += 1;
            }
            keep
        })
        .collect();
    println!("\nrunning {} tests", selected.len());
    for (name, body) in selected {
        let outcome = panic::catch_unwind(AssertUnwindSafe(body));
        match outcome {
            Ok(()) => {
                println!("test {name} ... ok");
                passed += 1;
            }
            Err(_) => {
                println!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    if !failed.is_empty() {
        println!("\nfailures:");
        for name in &failed {
            println!("    {name}");
        }
    }
    println!(
        "\ntest result: {verdict}. {passed} passed; {} failed; 0 ignored; 0 measured; \
         {filtered_out} filtered out; finished in {:.2}s\n",
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

/// The seed of a randomized test: `RINGRAFT_SEED` if set (replay), else drawn from the clock.
/// Printed first, so a failure can be replayed.
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
    seed
}

/// A temporary directory under the target directory (a real file system with direct I/O,
/// unlike a tmpfs /tmp could be), removed when dropped.
pub fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir under the target directory")
}

/// Starts this test binary again as a child with `role` and `args`, stdout piped.
pub fn spawn_child(role: &str, args: &[String]) -> Child {
    let exe = std::env::current_exe().expect("path of the test binary");
    Command::new(exe)
        .env(CHILD_ROLE_ENV, role)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child process")
}

/// Lines of a child's stdout, delivered through a channel by a reader thread so that the
/// parent can wait on them with a deadline.
pub fn line_channel(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Every line left in `lines` until its writer closes (the child's stdout reached EOF);
/// panics past `deadline`.
pub fn collect_lines(lines: &mpsc::Receiver<String>, deadline: Instant) -> Vec<String> {
    let mut collected = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => collected.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return collected,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("child output not closed before the deadline; got {collected:?}")
            }
        }
    }
}

/// Waits for `child` to exit, polling until `deadline`; kills it and panics past the deadline.
pub fn wait_with_deadline(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: child {} did not exit before its deadline",
                child.id()
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// The path argument at `position` of a child's command line.
pub fn child_path_arg(position: usize) -> PathBuf {
    let value = std::env::args()
        .nth(position)
        .unwrap_or_else(|| panic!("child argument {position} missing"));
    PathBuf::from(value)
}

/// The u64 argument at `position` of a child's command line.
pub fn child_u64_arg(position: usize) -> u64 {
    let value = std::env::args()
        .nth(position)
        .unwrap_or_else(|| panic!("child argument {position} missing"));
    value
        .parse()
        .unwrap_or_else(|error| panic!("child argument {position} {value:?}: {error}"))
}
