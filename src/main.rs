//! The `ringraft` command line: parses arguments with clap, runs the chosen command, and
//! renders errors for humans. Decisions live in the library; this file only wires them.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use ringraft::bench::{self, BenchConfig, Limit};
use ringraft::client::Client;
use ringraft::raft::RoleKind;
use ringraft::sim::{SimConfig, SimError, Sweep, run_seed, run_seeds};

#[derive(Parser, Debug)]
#[command(
    name = "ringraft",
    version,
    about = "A replicated, strongly consistent key-value server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Read a key (linearizable). Prints the value, or "(nil)" and exits 1 if absent.
    Get {
        key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Write a key.
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Delete a key. Prints whether it existed.
    Del {
        key: String,
        #[command(flatten)]
        connection: Connection,
    },
    /// Compare-and-set: set KEY to NEW only if its value is EXPECTED. `--expected-absent`
    /// requires the key not to exist; `--delete` removes it instead of setting NEW.
    Cas {
        key: String,
        /// The value the key must have now.
        #[arg(
            long,
            conflicts_with = "expected_absent",
            required_unless_present = "expected_absent"
        )]
        expected: Option<String>,
        /// Require the key to be absent.
        #[arg(long)]
        expected_absent: bool,
        /// The value to set.
        #[arg(long, conflicts_with = "delete", required_unless_present = "delete")]
        new: Option<String>,
        /// Delete the key when the comparison holds.
        #[arg(long)]
        delete: bool,
        #[command(flatten)]
        connection: Connection,
    },
    /// Per group: leader, term, commit and applied index; per node: up or down.
    Status {
        #[command(flatten)]
        connection: Connection,
    },
    /// Load a cluster through the native protocol and report throughput and latency
    /// percentiles (HdrHistogram).
    Bench(BenchArgs),
    /// Print the version and the build profile.
    Version,
    /// Run the deterministic cluster simulator: one seed (`--seed`) or a sweep (`--seeds`).
    Sim(SimArgs),
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    /// Replay exactly this seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run this many consecutive seeds, from `--first-seed`.
    #[arg(long)]
    seeds: Option<u64>,
    /// The first seed of a sweep.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=9))]
    nodes: u64,
    /// Raft groups on every node.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    groups: u64,
    /// Ticks of fault injection before the liveness phase.
    #[arg(long, default_value_t = ringraft::constants::SIM_SAFETY_TICKS_DEFAULT)]
    ticks: u64,
    /// Draw every seed from the term-churn fault profile instead of the mix.
    #[arg(long)]
    churn: bool,
    /// Print every event of the run (with `--seed`).
    #[arg(long)]
    trace: bool,
    /// Threads for a sweep.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// Stop a sweep after this many failing seeds.
    #[arg(long, default_value_t = 10)]
    failures_max: usize,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    connection: Connection,
    /// Client connections, each on its own thread.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Bytes of each written value.
    #[arg(long, default_value_t = 128)]
    value_size: usize,
    /// Number of distinct keys, chosen uniformly.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Fraction of requests that are reads (0 to 1).
    #[arg(long, default_value_t = 0.0)]
    read_fraction: f64,
    /// Run for this many seconds (default 10 unless --ops is given).
    #[arg(long, conflicts_with = "ops")]
    duration: Option<f64>,
    /// Run exactly this many requests.
    #[arg(long)]
    ops: Option<u64>,
    /// Open loop: this many requests per second in total; latency counts from when each
    /// request was due (coordinated-omission correction). Default: closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Seed of the key and value choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the results, with the whole histogram, to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Args, Debug)]
struct Connection {
    /// Client addresses of the cluster's nodes, comma-separated; any node serves any key.
    #[arg(long, default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103")]
    endpoints: String,
    /// How long to wait for an answer, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

impl Connection {
    fn connect(&self) -> anyhow::Result<Client> {
        Client::connect(&self.endpoints, Duration::from_millis(self.timeout_ms))
            .with_context(|| format!("connecting to {}", self.endpoints))
    }
}

fn bytes(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn show(value: &Bytes) -> String {
    String::from_utf8_lossy(value).into_owned()
}

fn main() {
    let cli = Cli::parse();
    if let Err(error) = run(cli.command) {
        // `{:#}` prints the whole chain of causes on one line, without a backtrace.
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Get { key, connection } => match connection.connect()?.get(bytes(&key))? {
            Some(value) => println!("{}", show(&value)),
            None => {
                println!("(nil)");
                std::process::exit(1);
            }
        },
        Command::Put {
            key,
            value,
            connection,
        } => {
            connection.connect()?.put(bytes(&key), bytes(&value))?;
            println!("OK");
        }
        Command::Del { key, connection } => {
            let existed = connection.connect()?.delete(bytes(&key))?;
            println!("{}", if existed { "deleted" } else { "not found" });
        }
        Command::Cas {
            key,
            expected,
            new,
            connection,
            ..
        } => {
            let mut client = connection.connect()?;
            let (succeeded, current) = client.cas(
                bytes(&key),
                expected.as_deref().map(bytes),
                new.as_deref().map(bytes),
            )?;
            let current = current.as_ref().map_or_else(|| "(nil)".to_string(), show);
            println!(
                "{} (value now: {current})",
                if succeeded { "swapped" } else { "not swapped" }
            );
            if !succeeded {
                std::process::exit(1);
            }
        }
        Command::Status { connection } => print_status(&mut connection.connect()?)?,
        Command::Bench(args) => run_bench(args)?,
        Command::Version => {
            let profile = if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            };
            println!("ringraft {} ({profile})", env!("CARGO_PKG_VERSION"));
        }
        Command::Sim(args) => sim(&args)?,
    }
    Ok(())
}

fn sim(args: &SimArgs) -> anyhow::Result<()> {
    let mut template = SimConfig::new(args.first_seed, args.nodes as usize, args.groups as usize);
    template.safety_ticks = args.ticks;
    template.trace = args.trace && args.seed.is_some();
    template.churn = args.churn;
    if let Some(seed) = args.seed {
        println!("seed {seed}");
        let report = run_seed(SimConfig { seed, ..template })?;
        println!("{report}");
        return Ok(());
    }
    let seed_count = args.seeds.unwrap_or(1);
    println!(
        "seeds {}..{} ({} nodes x {} groups, {} ticks, {} jobs)",
        args.first_seed,
        args.first_seed.saturating_add(seed_count),
        args.nodes,
        args.groups,
        args.ticks,
        args.jobs
    );
    let sweep = Sweep {
        first_seed: args.first_seed,
        seed_count,
        jobs: args.jobs,
        failures_max: args.failures_max,
    };
    let print_failure = |error: &SimError| {
        println!("FAILED {error}");
        println!(
            "  replay: ringraft sim --seed {} --nodes {} --groups {} --ticks {}{}",
            error.seed(),
            args.nodes,
            args.groups,
            args.ticks,
            if args.churn { " --churn" } else { "" }
        );
    };
    let summary = run_seeds(template, sweep, &print_failure);
    println!(
        "{} seeds run, {} failed; {} entries committed, {} elections, {} crashes",
        summary.seeds_run,
        summary.failures.len(),
        summary.committed_entries,
        summary.elections,
        summary.crashes
    );
    if let Some(first) = summary.failures.first() {
        anyhow::bail!(
            "{} seeds failed, the first: {first}",
            summary.failures.len()
        );
    }
    Ok(())
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let limit = match (args.ops, args.duration) {
        (Some(ops), _) => Limit::Ops(ops),
        (None, seconds) => Limit::Duration(Duration::from_secs_f64(seconds.unwrap_or(10.0))),
    };
    let config = BenchConfig {
        endpoints: args.connection.endpoints.clone(),
        connections: args.connections,
        pipeline: args.pipeline,
        value_bytes: args.value_size,
        keys: args.keys,
        read_fraction: args.read_fraction,
        limit,
        rate: args.rate,
        timeout: Duration::from_millis(args.connection.timeout_ms),
        seed: args.seed,
        progress: true,
    };
    let report = bench::run(&config)?;
    print!("{}", report.summary());
    if let Some(path) = args.json {
        std::fs::write(&path, report.to_json(&config))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_status(client: &mut Client) -> anyhow::Result<()> {
    let (groups, nodes) = client.status()?;
    println!("answered by {}", client.endpoint());
    println!(
        "{:>6} {:>8} {:>8} {:>10} {:>10}  role here",
        "group", "leader", "term", "commit", "applied"
    );
    for group in &groups {
        let leader = group
            .leader
            .map_or_else(|| "-".to_string(), |n| n.to_string());
        let role = match group.role {
            RoleKind::Leader => "leader",
            RoleKind::Follower => "follower",
            RoleKind::Candidate => "candidate",
            RoleKind::PreCandidate => "pre-candidate",
        };
        println!(
            "{:>6} {:>8} {:>8} {:>10} {:>10}  {role}",
            group.group, leader, group.term, group.commit, group.applied
        );
    }
    for node in &nodes {
        println!(
            "node {}: {}",
            node.node,
            if node.up { "up" } else { "down" }
        );
    }
    Ok(())
}
