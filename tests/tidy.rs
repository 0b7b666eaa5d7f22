//! Lints the source tree for the rules of DESIGN §3 that the compiler cannot see: glommio
//! only inside `src/reactor/`, the real clock only in the reactor and the command line, no
//! global random generators anywhere, and a `//!` header on every source file.

use std::fs;
use std::path::{Path, PathBuf};

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

fn sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &mut files);
    files.sort();
    assert!(
        files.len() > 3,
        "tidy found only {} files under {}",
        files.len(),
        root.display()
    );
    files
        .into_iter()
        .map(|path| {
            let text =
                fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let relative = path
                .strip_prefix(&root)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            (relative, text)
        })
        .collect()
}

/// Lines that are code, not comments, so a doc comment may name what it avoids.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(n, line)| (n + 1, line))
}

fn violations(allowed: impl Fn(&str) -> bool, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (file, text) in sources() {
        if allowed(&file) {
            continue;
        }
        for (line_number, line) in code_lines(&text) {
            for needle in needles {
                if line.contains(needle) {
                    found.push(format!("src/{file}:{line_number}: {needle}"));
                }
            }
        }
    }
    found
}

#[test]
fn glommio_stays_inside_reactor() {
    // DESIGN §3: only reactor/ may import the runtime, so it could be replaced.
    let found = violations(|file| file.starts_with("reactor/"), &["glommio"]);
    assert!(
        found.is_empty(),
        "glommio used outside src/reactor/:\n{}",
        found.join("\n")
    );
}

#[test]
fn real_clock_only_at_the_edges() {
    // Pure rooms know time only as ticks; the simulator must be able to replace the clock.
    // The reactor, the client library, the benchmark and the command line live in real time.
    let edges = ["reactor/", "client/", "bench/", "main.rs"];
    let found = violations(
        |file| edges.iter().any(|edge| file.starts_with(edge)),
        &[
            "Instant::now",
            "SystemTime",
            "std::time::Instant",
            "thread::sleep",
        ],
    );
    assert!(
        found.is_empty(),
        "real clock read outside src/reactor/ and main.rs:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_global_randomness() {
    // Every random draw comes from a seeded `Prng`, so every run replays from its seed.
    let found = violations(
        |_| false,
        &[
            "thread_rng",
            "rand::random",
            "getrandom",
            "RandomState::new",
        ],
    );
    assert!(
        found.is_empty(),
        "unseeded randomness:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_file_opens_with_a_module_doc() {
    // STYLE: every file opens with `//!` saying what it owns and what it must not do.
    let missing: Vec<String> = sources()
        .into_iter()
        .filter(|(file, text)| {
            !text.trim_start().starts_with("//!") && !file.starts_with("wire/generated")
        })
        .map(|(file, _)| format!("src/{file}"))
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header:\n{}",
        missing.join("\n")
    );
}
