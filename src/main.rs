//! The `ringraft` command line: parses arguments with clap, runs the chosen command, and
//! renders errors for humans. Decisions live in the library; this file only wires them.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use ringraft::bench::{self, BenchConfig, Limit, Routing};
use ringraft::client::Client;
use ringraft::raft::RoleKind;
use ringraft::sim::{SimConfig, SimError, Sweep, run_seed, run_seeds};

/// The allocator: per-thread caches suit thread-per-core (measured in perf/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Add to the integer stored at a key (absent: 0) and print the sum.
    Incr {
        key: String,
        /// What to add (negative to subtract).
        #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
        by: i64,
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
    /// Run one node of a cluster. Start every node with the same --peers, --cores and
    /// --groups; a fresh cluster bootstraps with that membership, a restarted node reads its
    /// --data-dir and rejoins. SIGTERM or Ctrl-C stops it gracefully (exit status 0).
    Server(ServerArgs),
    /// Start a local cluster of `ringraft server` processes on this machine, print how to reach
    /// it, and stop the nodes cleanly one at a time on Ctrl-C (a second Ctrl-C kills them).
    Cluster(ClusterArgs),
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// This node's id: a positive integer listed in --peers.
    #[arg(long)]
    node_id: u64,
    /// Every node of the cluster and its peer (node-to-node) address, this node included:
    /// `1=host:port,2=host:port,...`.
    #[arg(long)]
    peers: String,
    /// Where clients connect (native protocol, docs/protocol.md).
    #[arg(long, default_value = "127.0.0.1:7101")]
    client: String,
    /// Where Redis clients connect (RESP2, the commands listed in README); off unless given.
    #[arg(long)]
    resp: Option<String>,
    /// Directory of this node's write-ahead logs (one `core-<n>/` per core). Created if missing.
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// Cores (executors, each with its own WAL and share of the groups). Default: every CPU.
    /// Must be the same on every node.
    #[arg(long)]
    cores: Option<usize>,
    /// Raft groups of the cluster, spread over the cores. Default: 4 per core. Must be the
    /// same on every node.
    #[arg(long)]
    groups: Option<u32>,
    /// Length of one Raft tick, in milliseconds.
    #[arg(long, default_value_t = 10)]
    tick_ms: u64,
    /// Election timeout in ticks; each election waits a random time in [this, 2 x this).
    #[arg(long, default_value_t = 30)]
    election_ticks: u32,
    /// Leader heartbeat interval in ticks; must be below --election-ticks.
    #[arg(long, default_value_t = 3)]
    heartbeat_ticks: u32,
    /// Bytes of each WAL segment file, in MiB (allocated and zero-filled ahead of need).
    #[arg(long, default_value_t = 64)]
    wal_segment_mib: u64,
    /// Pin core n's executor to CPU n (production machines with dedicated cores only).
    #[arg(long)]
    pin: bool,
    /// Spin briefly before parking an idle executor (dedicated cores only; never on shared
    /// machines).
    #[arg(long)]
    spin: bool,
    /// Seed of the Raft randomness (election timeouts); mixed with node and core ids.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A group takes a snapshot and compacts its log after this many applied entries
    /// (0: never; the log then grows without bound).
    #[arg(long, default_value_t = ringraft::constants::SNAPSHOT_ENTRIES_DEFAULT)]
    snapshot_entries: u64,
    /// MiB per second one core may spend sending snapshots to lagging followers.
    #[arg(long, default_value_t = ringraft::constants::SNAPSHOT_SEND_MIB_DEFAULT)]
    snapshot_send_mib: u64,
}

#[derive(Args, Debug)]
struct ClusterArgs {
    /// Nodes to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=7))]
    nodes: u64,
    /// Parent directory of the nodes' data directories (`node-<id>/`) and logs.
    #[arg(long, default_value = "./ringraft-data")]
    dir: std::path::PathBuf,
    /// Peer port of node 1; node i uses P + i - 1 for peers, P + 100 + i - 1 for clients and
    /// P + 200 + i - 1 for Redis clients (RESP).
    #[arg(long, default_value_t = 7001)]
    base_port: u16,
    /// Cores per node (default: the machine's CPUs shared out among the nodes, at least 1:
    /// three nodes on one machine each using every CPU would only fight over them).
    #[arg(long)]
    cores: Option<usize>,
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
    /// Take a snapshot and compact the log every N applied entries (0: never); by default
    /// each seed draws N.
    #[arg(long)]
    snapshot_every: Option<u64>,
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
    /// Client connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Threads driving the connections (each serves its share of them from one poll loop,
    /// as redis-benchmark does with its one thread).
    #[arg(long, default_value_t = 1)]
    threads: usize,
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
    /// Send each request to any node (connection i to endpoint i) and let the node forward
    /// it to its group's leader. Default: like a leader-caching client, connection i talks to
    /// the i-th node that leads a group and uses only keys of the groups it leads.
    #[arg(long)]
    route_any: bool,
    /// Write every key once, in order, instead of drawing keys at random (loads a data set
    /// of --keys keys of --value-size bytes; --ops defaults to --keys).
    #[arg(long)]
    fill: bool,
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
        Command::Incr {
            key,
            by,
            connection,
        } => println!("{}", connection.connect()?.incr(bytes(&key), by)?),
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
        Command::Server(args) => {
            let node = args.node_id;
            if let Err(error) = server(args) {
                // The server's stderr is its log: the error goes there as a log line too.
                let _span = tracing::error_span!("node", node, core = %"main").entered();
                tracing::error!("{error:#}");
                std::process::exit(1);
            }
        }
        Command::Cluster(args) => cluster::run(&args)?,
    }
    Ok(())
}

fn server(args: ServerArgs) -> anyhow::Result<()> {
    use ringraft::server::{PeerMap, ServerConfig, TimingConfig, config::resolve};
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A panic becomes a log line of the panicking thread, inside its node/core span.
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("{info} (a bug: please report it with this log)");
    }));
    let cores = match args.cores {
        Some(cores) => cores,
        None => std::thread::available_parallelism().map_or(1, usize::from),
    };
    let groups = match args.groups {
        Some(groups) => groups,
        None => u32::try_from(cores * 4).context("--cores too large")?,
    };
    let config = ServerConfig {
        node: ringraft::ids::NodeId(args.node_id),
        peers: PeerMap::parse(&args.peers).context("--peers")?,
        client: resolve(&args.client).context("--client")?,
        resp: args
            .resp
            .as_deref()
            .map(resolve)
            .transpose()
            .context("--resp")?,
        // Absolute: the WAL's directory handles do not resolve relative paths.
        data_dir: std::path::absolute(&args.data_dir)
            .with_context(|| format!("--data-dir {}", args.data_dir.display()))?,
        cores,
        groups,
        timing: TimingConfig::new(args.tick_ms, args.election_ticks, args.heartbeat_ticks)?,
        pin: args.pin,
        spin: args.spin,
    }
    .validate()?;
    let options = ringraft::reactor::server::ServerOptions {
        wal_segment_bytes: args
            .wal_segment_mib
            .checked_mul(1024 * 1024)
            .context("--wal-segment-mib too large")?,
        seed: args.seed,
        snapshot_entries: args.snapshot_entries,
        snapshot_send_bytes_per_second: args
            .snapshot_send_mib
            .checked_mul(1024 * 1024)
            .filter(|&bytes| bytes > 0)
            .context("--snapshot-send-mib must be between 1 and 2^44")?,
    };
    ringraft::reactor::server::run_server(
        config,
        options,
        ringraft::reactor::shard_api::new_shard,
    )?;
    Ok(())
}

fn sim(args: &SimArgs) -> anyhow::Result<()> {
    let mut template = SimConfig::new(args.first_seed, args.nodes as usize, args.groups as usize);
    template.safety_ticks = args.ticks;
    template.trace = args.trace && args.seed.is_some();
    template.churn = args.churn;
    template.snapshot_every = args.snapshot_every;
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
    let snapshot_every = args
        .snapshot_every
        .map_or_else(String::new, |every| format!(" --snapshot-every {every}"));
    let print_failure = |error: &SimError| {
        println!("FAILED {error}");
        println!(
            "  replay: ringraft sim --seed {} --nodes {} --groups {} --ticks {}{}{snapshot_every}",
            error.seed(),
            args.nodes,
            args.groups,
            args.ticks,
            if args.churn { " --churn" } else { "" }
        );
    };
    let summary = run_seeds(template, sweep, &print_failure);
    println!(
        "{} seeds run, {} failed; {} entries committed, {} elections, {} crashes, {} snapshots \
         installed",
        summary.seeds_run,
        summary.failures.len(),
        summary.committed_entries,
        summary.elections,
        summary.crashes,
        summary.snapshots_installed
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
        (None, None) if args.fill => Limit::Ops(args.keys),
        (None, seconds) => Limit::Duration(Duration::from_secs_f64(seconds.unwrap_or(10.0))),
    };
    let config = BenchConfig {
        endpoints: args.connection.endpoints.clone(),
        connections: args.connections,
        threads: args.threads,
        pipeline: args.pipeline,
        value_bytes: args.value_size,
        keys: args.keys,
        read_fraction: args.read_fraction,
        limit,
        rate: args.rate,
        timeout: Duration::from_millis(args.connection.timeout_ms),
        seed: args.seed,
        progress: true,
        routing: if args.route_any {
            Routing::Any
        } else {
            Routing::Leader
        },
        fill: args.fill,
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

/// `ringraft cluster`: local server processes, their endpoints, and an ordered stop on Ctrl-C:
/// one node at a time, so each hands its leaderships to nodes that are still up.
mod cluster {
    use std::os::unix::process::CommandExt;
    use std::path::Path;
    use std::process::{Child, Command, ExitStatus, Stdio};
    use std::time::{Duration, Instant};

    use anyhow::Context;
    use ringraft::constants::{SHUTDOWN_DRAIN_MS, SHUTDOWN_LINGER_MS};
    use ringraft::reactor::signals;

    use super::ClusterArgs;

    /// How often the launcher looks at its children while waiting (a CLI, not a test).
    const POLL_INTERVAL: Duration = Duration::from_millis(50);
    /// How long one node may take to stop before it is killed: its own drain deadline and
    /// linger, with room for a loaded machine.
    const NODE_STOP_DEADLINE: Duration =
        Duration::from_millis(SHUTDOWN_DRAIN_MS + SHUTDOWN_LINGER_MS + 5_000);

    struct Node {
        id: usize,
        child: Child,
        /// Set once the child has been reaped.
        status: Option<ExitStatus>,
    }

    pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
        signals::install().context("installing the Ctrl-C handler")?;
        let node_count = u16::try_from(args.nodes).context("--nodes")?;
        let port = |offset: u16| -> anyhow::Result<u16> {
            args.base_port
                .checked_add(offset)
                .context("--base-port too high for this many nodes")
        };
        let mut peers = Vec::new();
        let mut clients = Vec::new();
        let mut resps = Vec::new();
        for index in 0..node_count {
            peers.push(format!("{}=127.0.0.1:{}", index + 1, port(index)?));
            clients.push(format!("127.0.0.1:{}", port(100 + index)?));
            resps.push(port(200 + index)?);
        }
        let peers = peers.join(",");
        std::fs::create_dir_all(&args.dir)
            .with_context(|| format!("creating {}", args.dir.display()))?;
        let exe = std::env::current_exe().context("finding the ringraft executable")?;
        let mut nodes = Vec::new();
        for (index, (client, resp)) in clients.iter().zip(&resps).enumerate() {
            let id = index + 1;
            let addresses = Addresses {
                peers: &peers,
                client,
                resp: &format!("127.0.0.1:{resp}"),
            };
            match spawn_node(&exe, args, id, &addresses) {
                Ok(child) => nodes.push(Node {
                    id,
                    child,
                    status: None,
                }),
                Err(error) => {
                    if let Err(stop_error) = stop_in_order(&mut nodes) {
                        eprintln!("{stop_error:#}");
                    }
                    return Err(error);
                }
            }
        }
        let endpoints = clients.join(",");
        println!("ringraft cluster of {} nodes", node_count);
        for (node, (client, resp)) in nodes.iter().zip(clients.iter().zip(&resps)) {
            let log = args.dir.join(format!("node-{}.log", node.id));
            println!(
                "  node {}: pid {}, clients {client}, redis 127.0.0.1:{resp}, log {}",
                node.id,
                node.child.id(),
                log.display()
            );
        }
        println!("try:");
        println!("  ringraft put hello world --endpoints {endpoints}");
        println!("  ringraft get hello --endpoints {endpoints}");
        println!("  ringraft status --endpoints {endpoints}");
        if let Some(resp) = resps.first() {
            println!("  redis-cli -p {resp} set hello world");
        }
        println!("Ctrl-C stops the nodes one at a time; a second Ctrl-C kills them at once.");
        wait_for_stop(&mut nodes);
        stop_in_order(&mut nodes)
    }

    /// Where one node listens, and its peers.
    struct Addresses<'a> {
        peers: &'a str,
        client: &'a str,
        resp: &'a str,
    }

    fn spawn_node(
        exe: &Path,
        args: &ClusterArgs,
        node: usize,
        addresses: &Addresses<'_>,
    ) -> anyhow::Result<Child> {
        let log_path = args.dir.join(format!("node-{node}.log"));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut command = Command::new(exe);
        command
            .arg("server")
            .arg("--node-id")
            .arg(node.to_string())
            .arg("--peers")
            .arg(addresses.peers)
            .arg("--client")
            .arg(addresses.client)
            .arg("--resp")
            .arg(addresses.resp)
            .arg("--data-dir")
            .arg(args.dir.join(format!("node-{node}")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // A process group of its own: the terminal's Ctrl-C reaches the launcher only,
            // which then stops the nodes in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches only the child's own settings; the
        // closure allocates nothing.
        unsafe {
            command.pre_exec(|| {
                // If the launcher dies without stopping the nodes, each still gets SIGTERM.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let cores = args.cores.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            (cpus / usize::try_from(args.nodes).unwrap_or(usize::MAX).max(1)).max(1)
        });
        command.arg("--cores").arg(cores.to_string());
        command
            .spawn()
            .with_context(|| format!("starting node {node} ({})", exe.display()))
    }

    /// Waits until Ctrl-C (or SIGTERM), or until every node has exited on its own; reports
    /// each node that exits meanwhile.
    fn wait_for_stop(nodes: &mut [Node]) {
        while !signals::stop_requested() && nodes.iter().any(|node| node.status.is_none()) {
            std::thread::sleep(POLL_INTERVAL);
            for node in nodes.iter_mut().filter(|node| node.status.is_none()) {
                if let Ok(Some(status)) = node.child.try_wait() {
                    node.status = Some(status);
                    eprintln!(
                        "node {} exited on its own ({status}); see its log for why",
                        node.id
                    );
                }
            }
        }
    }

    /// Stops the running nodes one at a time: SIGTERM, then wait for the exit (killing the
    /// node after `NODE_STOP_DEADLINE`). A second Ctrl-C kills every node still running.
    fn stop_in_order(nodes: &mut [Node]) -> anyhow::Result<()> {
        let running = nodes.iter().filter(|node| node.status.is_none()).count();
        println!("stopping {running} nodes one at a time");
        for node in nodes.iter_mut().filter(|node| node.status.is_none()) {
            if signals::signals_received() >= 2 {
                break;
            }
            stop_one(node);
        }
        kill_running(nodes);
        let failed: Vec<String> = nodes
            .iter()
            .filter_map(|node| match node.status {
                Some(status) if status.success() => None,
                Some(status) => Some(format!("node {}: {status}", node.id)),
                None => Some(format!("node {}: not reaped", node.id)),
            })
            .collect();
        if failed.is_empty() {
            println!("all nodes stopped cleanly");
            Ok(())
        } else {
            anyhow::bail!("nodes did not stop cleanly: {}", failed.join(", "))
        }
    }

    /// SIGTERM to one node and its exit awaited; killed after the deadline or on a second
    /// Ctrl-C (then the caller kills the rest).
    fn stop_one(node: &mut Node) {
        println!("stopping node {}", node.id);
        signal(&node.child, libc::SIGTERM);
        let started = Instant::now();
        loop {
            match node.child.try_wait() {
                Ok(Some(status)) => {
                    node.status = Some(status);
                    println!(
                        "node {} stopped: {status} after {:.1} s",
                        node.id,
                        started.elapsed().as_secs_f64()
                    );
                    return;
                }
                Ok(None) => {}
                Err(error) => {
                    eprintln!("node {}: cannot wait for it: {error}", node.id);
                    return;
                }
            }
            if signals::signals_received() >= 2 {
                return;
            }
            if started.elapsed() >= NODE_STOP_DEADLINE {
                eprintln!(
                    "node {} did not stop within {} s: killing it (see its log)",
                    node.id,
                    NODE_STOP_DEADLINE.as_secs()
                );
                kill_running(std::slice::from_mut(node));
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// SIGKILL to every node still running, then reaps them.
    fn kill_running(nodes: &mut [Node]) {
        for node in nodes.iter().filter(|node| node.status.is_none()) {
            signal(&node.child, libc::SIGKILL);
        }
        for node in nodes.iter_mut().filter(|node| node.status.is_none()) {
            match node.child.wait() {
                Ok(status) => {
                    println!("node {} killed: {status}", node.id);
                    node.status = Some(status);
                }
                Err(error) => eprintln!("node {}: cannot wait for it: {error}", node.id),
            }
        }
    }

    fn signal(child: &Child, signal: libc::c_int) {
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) on a child we started and have not yet reaped.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}
