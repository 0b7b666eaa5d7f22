//! `ringraft bench`: a load generator for the native protocol. Closed loop (each connection
//! keeps `pipeline` requests in flight) or open loop (`rate` requests per second in total,
//! latency measured from when each request was due, correcting coordinated omission).
//! Reports throughput and HdrHistogram percentiles; lives in real time at the edge.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use thiserror::Error;

use crate::client::{Client, ClientError};
use crate::kv::Command;
use crate::prng::Prng;
use crate::raft::RoleKind;
use crate::shard::core::group_of_key;
use crate::wire::client::{ClientOp, Reply, RequestId};

/// Keys drawn at most to find one of a connection's groups.
const KEY_DRAWS_MAX: usize = 1000;

/// `fmt::Write` into a byte buffer (keys are ASCII).
struct KeyWriter<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for KeyWriter<'_> {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        self.0.extend_from_slice(text.as_bytes());
        Ok(())
    }
}

/// Highest latency the histograms track, in microseconds (one minute).
const LATENCY_US_MAX: u64 = 60_000_000;

#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub endpoints: String,
    pub connections: usize,
    /// Threads that drive the connections, each serving its share from one `poll(2)` loop.
    pub threads: usize,
    pub pipeline: usize,
    pub value_bytes: usize,
    pub keys: u64,
    /// Fraction of requests that are reads, in [0, 1].
    pub read_fraction: f64,
    pub limit: Limit,
    /// Total requests per second across connections (open loop), or `None` (closed loop).
    pub rate: Option<u64>,
    pub timeout: Duration,
    pub seed: u64,
    /// Print a progress line each second.
    pub progress: bool,
    pub routing: Routing,
    /// Write every key once, in order (`key:0` to `key:<keys - 1>`, shared by the
    /// connections), instead of drawing keys at random: loads a data set of known size.
    pub fill: bool,
}

/// Where each connection sends its requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Like a client that caches leaders (TiKV's, for one): connection i talks to the i-th
    /// node that leads any group and uses only keys of the groups it leads, so requests are
    /// served without a forwarding hop. Leadership is read once, at the start.
    Leader,
    /// Connection i talks to endpoint i (round robin) and uses every key: a request for a group
    /// led elsewhere is forwarded by the node, as for a client that knows nothing.
    Any,
}

/// What one connection talks to and which keys it may use.
#[derive(Clone, Debug)]
struct Route {
    endpoint: String,
    /// Indexed by group: whether this route's keys may fall in it (every group: any key).
    groups: Vec<bool>,
}

/// The routes of a run: one per node that leads a group (leader routing) or per endpoint.
fn plan_routes(config: &BenchConfig) -> Result<Vec<Route>, BenchError> {
    let endpoints: Vec<String> = config
        .endpoints
        .split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_string)
        .collect();
    if endpoints.is_empty() {
        return Err(BenchError::Config("no endpoints given".into()));
    }
    // Each route lists every endpoint, its own first, so a connection fails over at connect
    // time as a client given all of them does.
    let rotated = |first: usize| -> String {
        (0..endpoints.len())
            .map(|offset| endpoints[(first + offset) % endpoints.len()].as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let every_key = |first: usize| Route {
        endpoint: rotated(first),
        groups: Vec::new(),
    };
    if config.routing == Routing::Any {
        return Ok((0..endpoints.len()).map(every_key).collect());
    }
    let mut routes = Vec::new();
    for (index, endpoint) in endpoints.iter().enumerate() {
        // A node that does not answer leads nothing we can use; the others still can.
        let Ok(mut client) = Client::connect(endpoint, config.timeout) else {
            continue;
        };
        let Ok((groups, _)) = client.status() else {
            continue;
        };
        let mut led = vec![false; groups.len()];
        for status in &groups {
            if status.role == RoleKind::Leader
                && let Some(slot) = led.get_mut(status.group.0 as usize)
            {
                *slot = true;
            }
        }
        if led.contains(&true) {
            routes.push(Route {
                endpoint: rotated(index),
                groups: led,
            });
        }
    }
    if routes.is_empty() {
        // No node claims a group (an election is running, or none answers): forwarding
        // still serves them, and connecting reports what is unreachable.
        return Ok((0..endpoints.len()).map(every_key).collect());
    }
    Ok(routes)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    Duration(Duration),
    Ops(u64),
}

#[derive(Debug, Error)]
pub enum BenchError {
    #[error("invalid benchmark settings: {0}")]
    Config(String),
    #[error("connection {connection}: {source}")]
    Client {
        connection: usize,
        source: ClientError,
    },
    #[error("waiting for the connections' sockets: {0}")]
    Poll(std::io::Error),
}

/// What one run measured.
pub struct BenchReport {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in microseconds.
    pub histogram: Histogram<u64>,
}

impl BenchReport {
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The human summary printed at the end of a run.
    pub fn summary(&self) -> String {
        let h = &self.histogram;
        let ms = |us: u64| us as f64 / 1000.0;
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{} ops in {:.2} s: {:.0} ops/s, {} errors",
            self.ops,
            self.elapsed.as_secs_f64(),
            self.ops_per_second(),
            self.errors
        );
        let _ = writeln!(
            text,
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  p99.99 {:.3}  max {:.3}",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            ms(h.value_at_quantile(0.9999)),
            ms(h.max())
        );
        text
    }

    /// The report as JSON, with every recorded histogram bucket.
    pub fn to_json(&self, config: &BenchConfig) -> String {
        let h = &self.histogram;
        let mut json = String::from("{\n");
        let _ = writeln!(
            json,
            "  \"settings\": {{\"connections\": {}, \"threads\": {}, \"pipeline\": {}, \"value_bytes\": {}, \"keys\": {}, \
             \"read_fraction\": {}, \"rate\": {}, \"seed\": {}, \"routing\": \"{}\"}},",
            config.connections,
            config.threads.min(config.connections),
            config.pipeline,
            config.value_bytes,
            config.keys,
            config.read_fraction,
            config
                .rate
                .map_or_else(|| "null".to_string(), |r| r.to_string()),
            config.seed,
            match config.routing {
                Routing::Leader => "leader",
                Routing::Any => "any",
            }
        );
        let _ = writeln!(
            json,
            "  \"ops\": {}, \"errors\": {}, \"elapsed_s\": {:.6}, \"ops_per_s\": {:.1},",
            self.ops,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.ops_per_second()
        );
        let percentiles = [50.0, 90.0, 99.0, 99.9, 99.99];
        let mut fields: Vec<String> = percentiles
            .iter()
            .map(|p| format!("\"p{p}\": {}", h.value_at_quantile(p / 100.0)))
            .collect();
        fields.push(format!("\"max\": {}", h.max()));
        let _ = writeln!(json, "  \"latency_us\": {{{}}},", fields.join(", "));
        let buckets: Vec<String> = h
            .iter_recorded()
            .map(|v| format!("[{}, {}]", v.value_iterated_to(), v.count_at_value()))
            .collect();
        let _ = writeln!(json, "  \"histogram_us\": [{}]", buckets.join(", "));
        json.push_str("}\n");
        json
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
        .unwrap_or_else(|e| panic!("histogram bounds: {e}"))
}

impl BenchConfig {
    fn validate(&self) -> Result<(), BenchError> {
        let fail = |message: &str| Err(BenchError::Config(message.to_string()));
        if self.connections == 0 || self.pipeline == 0 || self.threads == 0 {
            return fail("--connections, --threads and --pipeline must be at least 1");
        }
        if self.keys == 0 {
            return fail("--keys must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.read_fraction) {
            return fail("--read-fraction must be between 0 and 1");
        }
        if self.value_bytes > crate::kv::command::VALUE_BYTES_MAX {
            return fail("--value-size exceeds the server's value limit");
        }
        if self.rate == Some(0) {
            return fail("--rate must be positive");
        }
        if self.fill && self.limit != Limit::Ops(self.keys) {
            return fail("--fill writes every key once: --ops must equal --keys (or be left out)");
        }
        if self.fill && self.read_fraction > 0.0 {
            return fail("--fill only writes: leave --read-fraction at 0");
        }
        Ok(())
    }
}

/// Shared between the driver threads and the progress printer.
struct Shared {
    ops: AtomicU64,
    errors: AtomicU64,
    /// Requests started so far, for the `--ops` limit.
    started: AtomicU64,
    stop: AtomicBool,
    /// Driver threads that have ended.
    finished: AtomicUsize,
    histogram: Mutex<Histogram<u64>>,
}

/// Runs the benchmark and returns what it measured.
pub fn run(config: &BenchConfig) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let routes = plan_routes(config)?;
    let shared = Arc::new(Shared {
        ops: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        started: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        finished: AtomicUsize::new(0),
        histogram: Mutex::new(new_histogram()),
    });
    let threads = config.threads.min(config.connections);
    let mut seeds = Prng::new(config.seed);
    // Connection i runs on thread i % threads; every connection connects before any starts.
    let mut drivers: Vec<Driver> = (0..threads).map(|_| Driver::new(config)).collect();
    for index in 0..config.connections {
        let route = routes[index % routes.len()].clone();
        let connection = Connection::new(config, route, index, seeds.fork())?;
        drivers[index % threads].connections.push(connection);
    }
    let start = Instant::now();
    let workers: Vec<_> = drivers
        .into_iter()
        .map(|mut driver| {
            let shared = Arc::clone(&shared);
            driver.start = start;
            thread::spawn(move || {
                let result = driver.run(&shared);
                if result.is_err() {
                    shared.stop.store(true, Ordering::Relaxed);
                }
                shared.finished.fetch_add(1, Ordering::Release);
                result
            })
        })
        .collect();
    watch(config, threads, &shared, start);
    let mut first_error = None;
    for worker in workers {
        match worker.join() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => first_error = first_error.or(Some(error)),
            Err(_) => {
                first_error = first_error.or(Some(BenchError::Config("a worker panicked".into())))
            }
        }
    }
    if let Some(error) = first_error {
        return Err(error);
    }
    let histogram = shared
        .histogram
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|p| p.into_inner().clone());
    Ok(BenchReport {
        ops: shared.ops.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
        histogram,
    })
}

/// Waits for the end of the run, printing progress once a second.
fn watch(config: &BenchConfig, threads: usize, shared: &Shared, start: Instant) {
    let mut last_ops = 0;
    let mut next_report = start + Duration::from_secs(1);
    while shared.finished.load(Ordering::Acquire) < threads {
        if let Limit::Duration(duration) = config.limit
            && start.elapsed() >= duration
        {
            shared.stop.store(true, Ordering::Relaxed);
        }
        thread::sleep(Duration::from_millis(20));
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let ops = shared.ops.load(Ordering::Relaxed);
            if config.progress {
                let p99 = shared
                    .histogram
                    .lock()
                    .map(|h| h.value_at_quantile(0.99))
                    .unwrap_or_default();
                eprintln!(
                    "[{:>4.0} s] {:>9} ops/s  p99 so far {:.3} ms  errors {}",
                    start.elapsed().as_secs_f64(),
                    ops - last_ops,
                    p99 as f64 / 1000.0,
                    shared.errors.load(Ordering::Relaxed)
                );
            }
            last_ops = ops;
        }
    }
}

/// How often a driver adds its latencies to the shared histogram and looks for requests
/// that outlived the timeout.
const DRIVER_REPORT_INTERVAL: Duration = Duration::from_millis(100);

/// One thread's connections, served from one loop that waits on all their sockets with
/// `poll(2)` (as redis-benchmark and memtier do), so many connections cost the machine a
/// few threads rather than one each.
struct Driver {
    config: BenchConfig,
    start: Instant,
    connections: Vec<Connection>,
    /// Latencies recorded since the last report to the shared histogram.
    local: Histogram<u64>,
    poll_fds: Vec<libc::pollfd>,
}

impl Driver {
    fn new(config: &BenchConfig) -> Driver {
        Driver {
            config: config.clone(),
            start: Instant::now(),
            connections: Vec::new(),
            local: new_histogram(),
            poll_fds: Vec::new(),
        }
    }

    fn run(&mut self, shared: &Shared) -> Result<(), BenchError> {
        for connection in &mut self.connections {
            connection.nonblocking()?;
        }
        let mut last_report = Instant::now();
        loop {
            let stopping = shared.stop.load(Ordering::Relaxed);
            let now = Instant::now();
            let mut next_due: Option<Instant> = None;
            let mut in_flight = false;
            self.poll_fds.clear();
            for connection in &mut self.connections {
                if !stopping {
                    connection.start_requests(
                        &self.config,
                        self.start,
                        shared,
                        now,
                        &mut next_due,
                    )?;
                }
                in_flight |= !connection.in_flight.is_empty();
                let events = if connection.flush()? {
                    libc::POLLIN | libc::POLLOUT
                } else {
                    libc::POLLIN
                };
                self.poll_fds.push(libc::pollfd {
                    fd: connection.fd,
                    events,
                    revents: 0,
                });
            }
            if !in_flight && (stopping || !may_continue(&self.config, shared)) {
                break;
            }
            let mut wait = DRIVER_REPORT_INTERVAL.saturating_sub(last_report.elapsed());
            if let Some(due) = next_due {
                wait = wait.min(due.saturating_duration_since(now));
            }
            self.wait(wait)?;
            for (index, connection) in self.connections.iter_mut().enumerate() {
                if self.poll_fds[index].revents != 0 {
                    connection.receive(&mut self.local, shared)?;
                }
            }
            if last_report.elapsed() >= DRIVER_REPORT_INTERVAL {
                self.report(shared);
                last_report = Instant::now();
                for connection in &self.connections {
                    connection.check_timeout(self.config.timeout)?;
                }
            }
        }
        self.report(shared);
        Ok(())
    }

    /// Waits up to `wait` for any socket to be readable (or writable, if it has requests
    /// waiting to be written).
    fn wait(&mut self, wait: Duration) -> Result<(), BenchError> {
        // Round up so a request due in 0.3 ms is not polled for in a busy loop.
        let millis = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: `poll_fds` is a live, initialised array of `len` pollfd structs that
        // nothing else touches during the call.
        let ready = unsafe {
            libc::poll(
                self.poll_fds.as_mut_ptr(),
                self.poll_fds.len() as libc::nfds_t,
                millis,
            )
        };
        if ready < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(BenchError::Poll(error));
            }
        }
        Ok(())
    }

    fn report(&mut self, shared: &Shared) {
        if let Ok(mut histogram) = shared.histogram.lock() {
            let _ = histogram.add(&self.local);
        }
        self.local.reset();
    }
}

fn may_continue(config: &BenchConfig, shared: &Shared) -> bool {
    match config.limit {
        Limit::Ops(ops) => shared.started.load(Ordering::Relaxed) < ops,
        Limit::Duration(_) => !shared.stop.load(Ordering::Relaxed),
    }
}

/// One connection: its client, its keys and the requests it has in flight.
struct Connection {
    client: Client,
    fd: std::os::fd::RawFd,
    route: Route,
    key: Vec<u8>,
    index: usize,
    prng: Prng,
    value: Bytes,
    keys: u64,
    read_fraction: f64,
    fill: bool,
    /// When each request in flight was due (open loop) or sent (closed loop).
    in_flight: HashMap<RequestId, Instant>,
    issued: u64,
    /// The request number this connection last claimed under `--ops` (the key of `--fill`).
    claimed: u64,
}

impl Connection {
    fn new(
        config: &BenchConfig,
        route: Route,
        index: usize,
        mut prng: Prng,
    ) -> Result<Connection, BenchError> {
        let client = Client::connect(&route.endpoint, config.timeout).map_err(|source| {
            BenchError::Client {
                connection: index,
                source,
            }
        })?;
        let mut value = vec![0u8; config.value_bytes];
        prng.fill_bytes(&mut value);
        Ok(Connection {
            fd: client.raw_fd().unwrap_or(-1),
            client,
            route,
            key: Vec::new(),
            index,
            prng,
            value: Bytes::from(value),
            keys: config.keys,
            read_fraction: config.read_fraction,
            fill: config.fill,
            in_flight: HashMap::with_capacity(config.pipeline),
            issued: 0,
            claimed: 0,
        })
    }

    fn fail(&self, source: ClientError) -> BenchError {
        BenchError::Client {
            connection: self.index,
            source,
        }
    }

    fn nonblocking(&mut self) -> Result<(), BenchError> {
        self.client.set_nonblocking().map_err(|e| self.fail(e))
    }

    /// Starts requests while the pipeline has room and they are due; notes in `next_due`
    /// when the next one will be (open loop).
    fn start_requests(
        &mut self,
        config: &BenchConfig,
        start: Instant,
        shared: &Shared,
        now: Instant,
        next_due: &mut Option<Instant>,
    ) -> Result<(), BenchError> {
        while self.in_flight.len() < config.pipeline {
            let due = self.due_time(config, start, now);
            if due > now {
                *next_due = Some(next_due.map_or(due, |next| next.min(due)));
                return Ok(());
            }
            if !self.may_start(config, shared) {
                return Ok(());
            }
            self.send_one(config, due)?;
        }
        Ok(())
    }

    /// Claims the right to start one more request under the `--ops` limit.
    fn may_start(&mut self, config: &BenchConfig, shared: &Shared) -> bool {
        match config.limit {
            Limit::Ops(ops) => {
                self.claimed = shared.started.fetch_add(1, Ordering::Relaxed);
                self.claimed < ops
            }
            Limit::Duration(_) => true,
        }
    }

    /// When the next request is due: now in a closed loop; on this connection's schedule in
    /// an open loop, so a stalled server is charged for the requests it delayed.
    fn due_time(&self, config: &BenchConfig, start: Instant, now: Instant) -> Instant {
        match config.rate {
            None => now,
            Some(rate) => {
                let per_connection = rate as f64 / config.connections as f64;
                let offset = self.index as f64 / rate as f64;
                start + Duration::from_secs_f64(offset + self.issued as f64 / per_connection)
            }
        }
    }

    /// The next key: uniform over the keys of this connection's route.
    fn next_key(&mut self) -> Bytes {
        if self.fill {
            self.key.clear();
            let _ = write!(KeyWriter(&mut self.key), "key:{:012}", self.claimed);
            return Bytes::copy_from_slice(&self.key);
        }
        let groups = &self.route.groups;
        // Bounded rejection sampling: with few keys a route may own none of them; then any
        // key does (the node forwards it).
        for _ in 0..KEY_DRAWS_MAX {
            self.key.clear();
            let _ = write!(
                KeyWriter(&mut self.key),
                "key:{:012}",
                self.prng.below(self.keys)
            );
            if groups.is_empty() {
                break;
            }
            let group = group_of_key(&self.key, groups.len() as u32);
            if groups.get(group.0 as usize) == Some(&true) {
                break;
            }
        }
        Bytes::copy_from_slice(&self.key)
    }

    fn send_one(&mut self, config: &BenchConfig, due: Instant) -> Result<(), BenchError> {
        let key = self.next_key();
        let read = (self.prng.below(1_000_000) as f64) < self.read_fraction * 1_000_000.0;
        let op = if read {
            ClientOp::Get { key }
        } else {
            ClientOp::Write(Command::Put {
                key,
                value: self.value.clone(),
            })
        };
        let id = self.client.send(op).map_err(|e| self.fail(e))?;
        let stamp = if config.rate.is_some() {
            due
        } else {
            Instant::now()
        };
        self.in_flight.insert(id, stamp);
        self.issued += 1;
        Ok(())
    }

    /// Writes what the socket takes; returns whether requests are still waiting.
    fn flush(&mut self) -> Result<bool, BenchError> {
        self.client.poll_flush().map_err(|e| self.fail(e))
    }

    /// Reads what the socket holds and records every whole response.
    fn receive(&mut self, local: &mut Histogram<u64>, shared: &Shared) -> Result<(), BenchError> {
        self.client.poll_read().map_err(|e| self.fail(e))?;
        while let Some(response) = self.client.try_recv().map_err(|e| self.fail(e))? {
            let Some(sent) = self.in_flight.remove(&response.id) else {
                return Err(self.fail(ClientError::UnknownRequest(response.id)));
            };
            let micros = sent
                .elapsed()
                .as_micros()
                .clamp(1, u128::from(LATENCY_US_MAX)) as u64;
            local.saturating_record(micros);
            if matches!(response.reply, Reply::Error { .. }) {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            } else {
                shared.ops.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A request in flight longer than `timeout` ends the run, as a blocking client's read
    /// timeout would.
    fn check_timeout(&self, timeout: Duration) -> Result<(), BenchError> {
        match self.in_flight.values().min() {
            Some(oldest) if oldest.elapsed() > timeout => Err(self.fail(ClientError::Timeout {
                endpoint: self.client.endpoint(),
                timeout,
            })),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::test_server;

    fn config(endpoints: String, limit: Limit, rate: Option<u64>) -> BenchConfig {
        BenchConfig {
            endpoints,
            connections: 2,
            threads: 1,
            pipeline: 4,
            value_bytes: 16,
            keys: 100,
            read_fraction: 0.5,
            limit,
            rate,
            timeout: Duration::from_secs(5),
            seed: 1,
            progress: false,
            routing: Routing::Any,
            fill: false,
        }
    }

    #[test]
    fn a_leader_route_draws_only_keys_of_its_groups() {
        // A connection routed to the leader of groups 1 and 3 (of 4) draws keys of those only.
        let address = test_server::start();
        let config = config(address.to_string(), Limit::Ops(1), None);
        let route = Route {
            endpoint: address.to_string(),
            groups: vec![false, true, false, true],
        };
        let mut connection = Connection::new(&config, route, 0, Prng::new(7)).expect("connects");
        let mut seen = [0usize; 4];
        for _ in 0..200 {
            let key = connection.next_key();
            seen[group_of_key(&key, 4).0 as usize] += 1;
        }
        assert_eq!(
            (seen[0], seen[2]),
            (0, 0),
            "keys of groups not led: {seen:?}"
        );
        assert!(
            seen[1] > 0 && seen[3] > 0,
            "both led groups drawn: {seen:?}"
        );
    }

    #[test]
    fn closed_loop_runs_exactly_the_requested_ops() {
        // With --ops, the run stops after that many answered requests, each one in the histogram.
        let address = test_server::start();
        let report = run(&config(address.to_string(), Limit::Ops(500), None)).expect("run");
        assert_eq!((report.ops, report.errors), (500, 0));
        assert_eq!(report.histogram.len(), 500);
        let json = report.to_json(&config(address.to_string(), Limit::Ops(500), None));
        assert!(
            json.contains("\"ops\": 500") && json.contains("histogram_us"),
            "{json}"
        );
    }

    fn shared() -> Shared {
        Shared {
            ops: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            started: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            finished: AtomicUsize::new(0),
            histogram: Mutex::new(new_histogram()),
        }
    }

    #[test]
    fn one_thread_keeps_every_connection_busy() {
        // A driver serving six connections from one loop sends requests on each of them, and
        // the run still ends after exactly the requests asked for.
        let address = test_server::start();
        let mut config = config(address.to_string(), Limit::Ops(600), None);
        config.connections = 6;
        let mut driver = Driver::new(&config);
        let mut seeds = Prng::new(3);
        for index in 0..config.connections {
            let route = plan_routes(&config).expect("routes")[0].clone();
            let connection =
                Connection::new(&config, route, index, seeds.fork()).expect("connects");
            driver.connections.push(connection);
        }
        let shared = shared();
        driver.run(&shared).expect("run");
        let issued: Vec<u64> = driver.connections.iter().map(|c| c.issued).collect();
        assert_eq!(issued.iter().sum::<u64>(), 600, "{issued:?}");
        assert!(
            issued.iter().all(|&count| count >= 4),
            "a connection idled: {issued:?}"
        );
        assert_eq!(shared.ops.load(Ordering::Relaxed), 600);
        assert_eq!(shared.histogram.lock().expect("histogram").len(), 600);
    }

    #[test]
    fn a_request_left_unanswered_ends_the_run_with_a_timeout() {
        // A server that accepts and reads but never answers: the run fails with the timeout
        // instead of waiting forever.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                held.push(stream);
            }
        });
        let mut config = config(
            address.to_string(),
            Limit::Duration(Duration::from_secs(60)),
            None,
        );
        config.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let result = run(&config);
        assert!(
            matches!(
                result,
                Err(BenchError::Client {
                    source: ClientError::Timeout { .. },
                    ..
                })
            ),
            "{:?}",
            result.err()
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn open_loop_paces_requests_at_the_rate() {
        // At 2,000 requests/s, 200 requests take at least the 0.1 s their schedule spans.
        let address = test_server::start();
        let report = run(&config(address.to_string(), Limit::Ops(200), Some(2000))).expect("run");
        assert_eq!(report.ops, 200);
        assert!(
            report.elapsed >= Duration::from_millis(99),
            "{:?}",
            report.elapsed
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        // Nonsense settings are named before any connection is made.
        let mut bad = config("127.0.0.1:1".into(), Limit::Ops(1), None);
        bad.read_fraction = 1.5;
        assert!(matches!(run(&bad), Err(BenchError::Config(_))));
        let mut bad = config("127.0.0.1:1".into(), Limit::Ops(1), None);
        bad.threads = 0;
        assert!(matches!(run(&bad), Err(BenchError::Config(_))));
    }
}
