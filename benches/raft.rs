//! The Raft core and Multi-Raft benchmark (`cargo bench --bench raft`): three nodes' cores
//! of `MultiRaft<RaftNode>` on ONE thread, instant persistence, batches passed in memory.
//! Measures committed entries per second of 16-byte commands for 1, 100 and 10,000 groups,
//! heap bytes per idle group (a counting global allocator), and CPU time per tick per idle
//! group with coalesced heartbeat traffic. Prints a table of medians over several runs.
//!
//! Environment: `RINGRAFT_SEED` (default 1), `RINGRAFT_BENCH_RUNS` (default 5),
//! `RINGRAFT_BENCH_ENTRIES` (entries per throughput run, default 1,000,000; a quarter
//! of it for 10,000 groups),
//! `RINGRAFT_BENCH_ONLY` (a comma list of measures, see `wanted`). It must not
//! assert speed; it only reports it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringraft::ids::{GroupId, NodeId};
use ringraft::raft::RaftNode;
use ringraft::shard::local::LocalCluster;

/// Counts live heap bytes, so the benchmark can tell what 10,000 idle groups hold.
struct CountingAllocator;

static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a side
// effect that does not touch the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const NODE_COUNT: u64 = 3;
const COMMAND: &[u8; 16] = b"0123456789abcdef";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}={text} is not a number")),
        Err(_) => default,
    }
}

/// This thread's CPU time so far, from the scheduler's own accounting (nanoseconds); falls
/// back to wall time where /proc does not offer it.
fn cpu_time() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    match text.split_whitespace().next().and_then(|t| t.parse().ok()) {
        Some(nanos) => Duration::from_nanos(nanos),
        None => {
            static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
            START.get_or_init(Instant::now).elapsed()
        }
    }
}

/// Three nodes, `group_count` groups each, every group led by node `g % 3 + 1`.
fn elected_cluster(group_count: u32, seed: u64) -> LocalCluster<RaftNode> {
    let mut cluster = LocalCluster::bootstrap(NODE_COUNT, group_count, seed);
    cluster.elect_spread(group_count);
    cluster
}

/// Committed entries per second of 16-byte commands, proposed `per_step` at a time
/// round-robin over the groups' leaders, counted once applied on all three nodes.
/// Returns (entries per CPU-second of this thread, entries per wall-clock second).
fn throughput(group_count: u32, entry_count: u64, seed: u64) -> (f64, f64) {
    let mut cluster = elected_cluster(group_count, seed);
    let leaders: Vec<NodeId> = (0..group_count)
        .map(|g| cluster.leader(GroupId(g)).expect("elected"))
        .collect();
    let start = Instant::now();
    let start_cpu = cpu_time();
    propose_until_applied(&mut cluster, &leaders, entry_count);
    let elapsed_cpu = cpu_time() - start_cpu;
    let elapsed = start.elapsed();
    (
        entry_count as f64 / elapsed_cpu.as_secs_f64(),
        entry_count as f64 / elapsed.as_secs_f64(),
    )
}

/// The measured loop of `throughput`, kept out of line so that an instruction profile can
/// be limited to it (`valgrind --tool=callgrind --toggle-collect='*propose_until_applied*'`).
#[inline(never)]
fn propose_until_applied(
    cluster: &mut LocalCluster<RaftNode>,
    leaders: &[NodeId],
    entry_count: u64,
) {
    let group_count = leaders.len() as u32;
    let baseline: Vec<u64> = (1..=NODE_COUNT)
        .map(|n| cluster.applied_count(NodeId(n)))
        .collect();
    let applied_everywhere = |cluster: &LocalCluster<RaftNode>| {
        (1..=NODE_COUNT)
            .map(|n| cluster.applied_count(NodeId(n)) - baseline[n as usize - 1])
            .min()
            .unwrap_or(0)
    };
    let per_step = u64::from(group_count).max(4096);
    let command = Bytes::from_static(COMMAND);
    let mut proposed = 0u64;
    let mut next_group = 0u32;
    while applied_everywhere(cluster) < entry_count {
        let step_quota = per_step.min(entry_count - proposed);
        for _ in 0..step_quota {
            let leader = leaders[next_group as usize];
            cluster
                .node_mut(leader)
                .propose(GroupId(next_group), command.clone())
                .expect("the leader accepts within its limits");
            next_group = (next_group + 1) % group_count;
        }
        proposed += step_quota;
        let counts = cluster.step();
        if proposed == entry_count && counts.is_idle() {
            // Followers learn the last commit index from the leader's next heartbeat.
            cluster.tick();
        }
    }
}

/// Heap bytes the three nodes' `MultiRaft`s own per group once 10,000 groups per node are
/// elected and quiet (measured as what dropping them frees), and `size_of::<RaftNode>()`.
fn idle_memory(group_count: u32, seed: u64) -> (f64, usize) {
    let mut cluster = elected_cluster(group_count, seed);
    for _ in 0..3 {
        cluster.tick();
        cluster.step_until_quiet(16);
    }
    let nodes = cluster.into_nodes();
    let with_nodes = LIVE_BYTES.load(Ordering::Relaxed);
    drop(nodes);
    let without_nodes = LIVE_BYTES.load(Ordering::Relaxed);
    let per_group = (with_nodes - without_nodes) as f64 / (f64::from(group_count) * 3.0);
    (per_group, std::mem::size_of::<RaftNode>())
}

/// CPU time per tick per idle group: `tick_count` ticks of every group on every node, each
/// followed by delivering the heartbeats and responses it causes until the cluster is quiet.
fn tick_cost(group_count: u32, tick_count: u32, seed: u64) -> Duration {
    let mut cluster = elected_cluster(group_count, seed);
    let start = cpu_time();
    idle_ticks(&mut cluster, tick_count);
    let elapsed = cpu_time() - start;
    for g in 0..group_count {
        let expected = NodeId(u64::from(g) % NODE_COUNT + 1);
        assert_eq!(
            cluster.leader(GroupId(g)),
            Some(expected),
            "group {g} lost its leader while idle"
        );
    }
    elapsed / (tick_count * group_count * NODE_COUNT as u32)
}

/// The measured loop of `tick_cost`, kept out of line so that an instruction profile can be
/// limited to it (`valgrind --tool=callgrind --toggle-collect='*idle_ticks*'`).
#[inline(never)]
fn idle_ticks(cluster: &mut LocalCluster<RaftNode>, tick_count: u32) {
    for _ in 0..tick_count {
        cluster.tick();
        cluster.step_until_quiet(16);
    }
}

/// "median (min-max)" of the runs' values.
fn summary(mut values: Vec<f64>) -> String {
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    let (min, max) = (values[0], values[values.len() - 1]);
    format!("{median:.0} ({min:.0}-{max:.0})")
}

/// Which measures to run: `RINGRAFT_BENCH_ONLY` is a comma list of `throughput-1`,
/// `throughput-100`, `throughput-10000`, `memory`, `tick`; unset runs all.
fn wanted(measure: &str) -> bool {
    match std::env::var("RINGRAFT_BENCH_ONLY") {
        Ok(list) => list.split(',').any(|m| m.trim() == measure),
        Err(_) => true,
    }
}

fn main() {
    let seed = env_u64("RINGRAFT_SEED", 1);
    let runs = env_u64("RINGRAFT_BENCH_RUNS", 5).max(1);
    let entry_count = env_u64("RINGRAFT_BENCH_ENTRIES", 1_000_000).max(4);
    println!("raft bench: seed {seed}, {runs} runs per figure (median), one thread, 3 nodes");
    println!("{:<48} {:>28}", "measure", "median (min-max)");
    for group_count in [1u32, 100, 10_000] {
        if !wanted(&format!("throughput-{group_count}")) {
            continue;
        }
        // 10,000 groups commit one entry per group per round: a quarter of the entries
        // keeps the run short and still gives every group 25 rounds of work.
        let entries = if group_count > 1000 {
            entry_count / 4
        } else {
            entry_count
        };
        let rates: Vec<(f64, f64)> = (0..runs)
            .map(|run| throughput(group_count, entries, seed + run))
            .collect();
        let cpu_rates: Vec<f64> = rates.iter().map(|r| r.0).collect();
        let wall_rates: Vec<f64> = rates.iter().map(|r| r.1).collect();
        let label = format!("entries/CPU-s, {group_count} groups ({entries} x 16 B)");
        println!("{label:<48} {:>28}", summary(cpu_rates));
        let label = format!("entries/wall-s, {group_count} groups ({entries} x 16 B)");
        println!("{label:<48} {:>28}", summary(wall_rates));
    }
    let idle_groups = 10_000u32;
    if wanted("memory") {
        let mut sizes = Vec::new();
        let mut size_of = 0;
        for run in 0..runs {
            let (per_group, size) = idle_memory(idle_groups, seed + run);
            sizes.push(per_group);
            size_of = size;
        }
        println!(
            "{:<48} {:>28}",
            "heap bytes per idle group (incl. inline RaftNode)",
            summary(sizes)
        );
        println!("{:<48} {:>28}", "size_of::<RaftNode>() bytes", size_of);
    }
    if wanted("tick") {
        let costs: Vec<f64> = (0..runs)
            .map(|run| tick_cost(idle_groups, 100, seed + run).as_secs_f64() * 1e9)
            .collect();
        println!(
            "{:<48} {:>28}",
            "ns CPU per tick per idle group (with heartbeats)",
            summary(costs)
        );
    }
}
