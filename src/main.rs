//! The `ringraft` command line: parses arguments with clap, runs the chosen command, and
//! renders errors for humans. Decisions live in the library; this file only wires them.

use clap::{Parser, Subcommand};
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
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
