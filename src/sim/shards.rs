//! Whole nodes in simulation: every node runs the production `Shard` of each of its cores
//! over the production WAL (`log::Log`) on a `SimDisk`, and talks to the others through a
//! simulated network that can drop and delay batches. Crashes drop a node's memory and tear
//! its unsynced disk writes; restarts recover from the disk alone. Deterministic from a seed.
//!
//! Drives exactly what the reactor drives, minus sockets and real time. Must not import
//! `reactor/` or glommio.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::ids::{CoreId, GroupId, NodeId, Ticks};
use crate::kv::Command;
use crate::log::{Log, WalConfig};
use crate::prng::Prng;
use crate::raft::Persist;
use crate::shard::core::{
    GroupRestart, Origin, Shard, ShardConfig, ShardEvent, ShardOutput, SnapshotPolicy, WalTicket,
    core_of_group, group_of_key,
};
use crate::sim::disk::{SimDisk, block_on};
use crate::wire::batch::Batch;
use crate::wire::client::{
    ClientOp, ClientRequest, ClientResponse, ErrorCode, Reply, RequestId, encode_request,
};

/// Segments of the simulated WALs: small, so tests roll over segments.
const SIM_SEGMENT_BYTES: u64 = 256 * 1024;

/// How a simulated cluster is built and how hostile its network is.
#[derive(Clone, Debug)]
pub struct ShardSimConfig {
    pub seed: u64,
    pub node_count: usize,
    pub cores: usize,
    pub groups_total: u32,
    /// Chance in a thousand that a batch is lost.
    pub loss_per_mille: u64,
    /// Most rounds a batch may be delayed.
    pub delay_rounds_max: u64,
    /// Most rounds a WAL append may take to become durable; a crash before then loses it.
    pub sync_rounds_max: u64,
    pub request_timeout_ticks: u32,
}

impl ShardSimConfig {
    pub fn new(seed: u64, node_count: usize) -> ShardSimConfig {
        ShardSimConfig {
            seed,
            node_count,
            cores: 2,
            groups_total: 8,
            loss_per_mille: 0,
            delay_rounds_max: 0,
            sync_rounds_max: 0,
            request_timeout_ticks: 200,
        }
    }
}

/// A WAL append waiting to become durable: the round it does, its ticket, its persists.
type PendingAppend = (u64, WalTicket, Vec<(GroupId, Persist)>);

struct SimCore {
    shard: Shard,
    log: Log<SimDisk>,
    /// Appends handed out and not yet written, in ticket order, each with the round at which
    /// it becomes durable. A crash loses them, as it loses a write whose sync never returned.
    appends: VecDeque<PendingAppend>,
}

struct SimNode {
    id: NodeId,
    /// One disk per core, kept across crashes.
    disks: Vec<SimDisk>,
    /// `None` while the node is down.
    cores: Option<Vec<SimCore>>,
}

/// A cluster of simulated nodes.
pub struct ShardSim {
    config: ShardSimConfig,
    prng: Prng,
    nodes: Vec<SimNode>,
    round_number: u64,
    /// Batches in flight: (deliver at round, destination core, batch).
    network: VecDeque<(u64, CoreId, Batch)>,
    /// Responses received, per (node, connection).
    responses: HashMap<(NodeId, u64), VecDeque<ClientResponse>>,
    next_request: u64,
    output: ShardOutput,
    /// What the shards reported, per node, oldest first (`take_events`).
    events: Vec<(NodeId, ShardEvent)>,
}

impl ShardSim {
    pub fn new(config: ShardSimConfig) -> ShardSim {
        let mut prng = Prng::new(config.seed);
        let mut nodes = Vec::with_capacity(config.node_count);
        for n in 1..=config.node_count as u64 {
            let disks = (0..config.cores)
                .map(|_| SimDisk::new(prng.fork(), 512))
                .collect();
            nodes.push(SimNode {
                id: NodeId(n),
                disks,
                cores: None,
            });
        }
        let mut sim = ShardSim {
            config,
            prng,
            nodes,
            round_number: 0,
            network: VecDeque::new(),
            responses: HashMap::new(),
            next_request: 1,
            output: ShardOutput::default(),
            events: Vec::new(),
        };
        for index in 0..sim.nodes.len() {
            sim.start(index);
        }
        sim
    }

    fn shard_config(&self, node: NodeId, core: CoreId) -> ShardConfig {
        ShardConfig {
            node,
            core,
            cores: self.config.cores,
            groups_total: self.config.groups_total,
            nodes: self.nodes.iter().map(|n| n.id).collect(),
            election_timeout_ticks: Ticks(10),
            heartbeat_interval_ticks: Ticks(2),
            request_timeout_ticks: Ticks(self.config.request_timeout_ticks),
            seed: self.config.seed,
            // The simulated cores keep their whole log: snapshots are simulated by the
            // group-level cluster (sim/cluster.rs).
            snapshot: SnapshotPolicy {
                entries: 0,
                alignment: 512,
            },
        }
    }

    /// Starts (or restarts) a node from its disks alone.
    fn start(&mut self, index: usize) {
        let node = self.nodes[index].id;
        let mut cores = Vec::with_capacity(self.config.cores);
        for core in 0..self.config.cores {
            let disk = self.nodes[index].disks[core].clone();
            let wal = WalConfig {
                segment_bytes: SIM_SEGMENT_BYTES,
                ..WalConfig::default()
            };
            let (log, _summary) = block_on(Log::open(disk, wal)).unwrap_or_else(|e| {
                panic!("seed {}: node {node} core {core}: {e}", self.config.seed)
            });
            let config = self.shard_config(node, CoreId(core as u16));
            let mut restart = |group| GroupRestart {
                wal: log.restored(group),
                ..GroupRestart::default()
            };
            let shard = Shard::new(config, &mut restart).unwrap_or_else(|e| {
                panic!("seed {}: node {node} core {core}: {e}", self.config.seed)
            });
            cores.push(SimCore {
                shard,
                log,
                appends: VecDeque::new(),
            });
        }
        self.nodes[index].cores = Some(cores);
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn is_up(&self, node: NodeId) -> bool {
        self.node(node).cores.is_some()
    }

    fn node(&self, node: NodeId) -> &SimNode {
        &self.nodes[(node.0 - 1) as usize]
    }

    /// Kills a node: its memory is gone and its disks lose or tear what was not synced.
    pub fn crash(&mut self, node: NodeId) {
        let index = (node.0 - 1) as usize;
        self.nodes[index].cores = None;
        for disk in &self.nodes[index].disks {
            disk.crash();
        }
        self.network
            .retain(|(_, _, batch)| batch.to != node && batch.from != node);
    }

    pub fn restart(&mut self, node: NodeId) {
        assert!(!self.is_up(node), "restart of node {node}, which is up");
        self.start((node.0 - 1) as usize);
    }

    /// Sends a client request to `node` on connection `connection`; returns its id.
    pub fn request(&mut self, node: NodeId, connection: u64, op: ClientOp) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let key = match &op {
            ClientOp::Get { key } => key.clone(),
            ClientOp::Write(command) => command.key().clone(),
            ClientOp::Status => Bytes::from_static(b"status"),
        };
        let request = ClientRequest { id, op };
        let mut builder = flatbuffers::FlatBufferBuilder::new();
        let raw = Bytes::copy_from_slice(encode_request(&mut builder, &request));
        let core = core_of_group(
            group_of_key(&key, self.config.groups_total),
            self.config.cores,
        );
        let index = (node.0 - 1) as usize;
        let cores = self.nodes[index]
            .cores
            .as_mut()
            .unwrap_or_else(|| panic!("request to node {node}, which is down"));
        let origin = Origin { core, connection };
        cores[usize::from(core.0)]
            .shard
            .on_client_request(origin, request, raw);
        id
    }

    /// Takes the response to `id` on (`node`, `connection`) if it has arrived.
    pub fn take_response(
        &mut self,
        node: NodeId,
        connection: u64,
        id: RequestId,
    ) -> Option<ClientResponse> {
        let queue = self.responses.get_mut(&(node, connection))?;
        let position = queue.iter().position(|r| r.id == id)?;
        queue.remove(position)
    }

    /// Runs rounds and ticks until the response to `id` arrives or `ticks_max` pass.
    pub fn wait(
        &mut self,
        node: NodeId,
        connection: u64,
        id: RequestId,
        ticks_max: u64,
    ) -> Option<ClientResponse> {
        for _ in 0..ticks_max {
            for _ in 0..4 {
                self.round();
                if let Some(response) = self.take_response(node, connection, id) {
                    return Some(response);
                }
            }
            self.tick();
        }
        None
    }

    /// A put through `node`, waited for.
    pub fn put(&mut self, node: NodeId, key: &str, value: &str) -> Option<ClientResponse> {
        let command = Command::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        };
        let id = self.request(node, 0, ClientOp::Write(command));
        self.wait(
            node,
            0,
            id,
            u64::from(self.config.request_timeout_ticks) + 10,
        )
    }

    /// A linearizable get through `node`, waited for.
    pub fn get(&mut self, node: NodeId, key: &str) -> Option<ClientResponse> {
        let id = self.request(
            node,
            0,
            ClientOp::Get {
                key: Bytes::copy_from_slice(key.as_bytes()),
            },
        );
        self.wait(
            node,
            0,
            id,
            u64::from(self.config.request_timeout_ticks) + 10,
        )
    }

    pub fn tick(&mut self) {
        for node in &mut self.nodes {
            for core in node.cores.iter_mut().flatten() {
                core.shard.tick();
            }
        }
    }

    /// Begins a graceful stop of `node`'s shards.
    pub fn begin_shutdown(&mut self, node: NodeId) {
        let index = (node.0 - 1) as usize;
        for core in self.nodes[index].cores.iter_mut().flatten() {
            core.shard.begin_shutdown();
        }
    }

    pub fn is_drained(&self, node: NodeId) -> bool {
        self.node(node)
            .cores
            .iter()
            .flatten()
            .all(|core| core.shard.is_drained())
    }

    /// Every event the shards reported since the last call, with the node that reported it.
    pub fn take_events(&mut self) -> Vec<(NodeId, ShardEvent)> {
        std::mem::take(&mut self.events)
    }

    pub fn shard(&self, node: NodeId, core: CoreId) -> Option<&Shard> {
        self.node(node)
            .cores
            .as_ref()
            .map(|cores| &cores[usize::from(core.0)].shard)
    }

    /// One round of every core of every live node, then delivery of due batches.
    pub fn round(&mut self) {
        self.round_number += 1;
        let mut sent = Vec::new();
        for index in 0..self.nodes.len() {
            let node = self.nodes[index].id;
            let Some(cores) = self.nodes[index].cores.as_mut() else {
                continue;
            };
            for (core_index, core) in cores.iter_mut().enumerate() {
                core.shard.round(&mut self.output);
                let output = &mut self.output;
                self.events
                    .extend(output.events.drain(..).map(|event| (node, event)));
                for batch in output.batches.drain(..) {
                    sent.push((CoreId(core_index as u16), batch));
                }
                if let Some((ticket, persists)) = output.wal_append.take() {
                    // In order: a later append is never durable before an earlier one.
                    let after = core.appends.back().map_or(0, |(at, _, _)| *at);
                    let delay = self.prng.range_inclusive(0, self.config.sync_rounds_max);
                    core.appends.push_back((
                        (self.round_number + delay).max(after),
                        ticket,
                        persists,
                    ));
                }
                while core
                    .appends
                    .front()
                    .is_some_and(|(at, _, _)| *at <= self.round_number)
                {
                    let Some((_, ticket, persists)) = core.appends.pop_front() else {
                        break;
                    };
                    let batch: Vec<_> = persists
                        .iter()
                        .map(|(group, persist)| (*group, persist))
                        .collect();
                    block_on(core.log.append(&batch))
                        .unwrap_or_else(|e| panic!("node {node}: WAL append: {e}"));
                    core.shard.on_wal_durable(ticket);
                }
                for (group, fetch) in output.fetches.drain(..) {
                    let entries = block_on(core.log.fetch_for(group, &fetch))
                        .unwrap_or_else(|e| panic!("node {node}: WAL fetch: {e}"));
                    core.shard.on_fetched(group, entries);
                }
                for (origin, response) in output.replies.drain(..) {
                    self.responses
                        .entry((node, origin.connection))
                        .or_default()
                        .push_back(response);
                }
            }
        }
        for (core, batch) in sent {
            if self.prng.chance(self.config.loss_per_mille, 1000) {
                continue;
            }
            let delay = self.prng.range_inclusive(0, self.config.delay_rounds_max);
            self.network
                .push_back((self.round_number + delay, core, batch));
        }
        self.deliver();
    }

    fn deliver(&mut self) {
        let due: Vec<(u64, CoreId, Batch)> = {
            let (ready, later): (VecDeque<_>, VecDeque<_>) = self
                .network
                .drain(..)
                .partition(|(at, _, _)| *at <= self.round_number);
            self.network = later;
            ready.into_iter().collect()
        };
        for (_, core, batch) in due {
            let index = (batch.to.0 - 1) as usize;
            let Some(cores) = self.nodes[index].cores.as_mut() else {
                continue;
            };
            let from = batch.from;
            if let Err(error) = cores[usize::from(core.0)].shard.on_peer_batch(batch) {
                panic!(
                    "seed {}: node {} refused a batch from {from}: {error}",
                    self.config.seed,
                    index + 1
                );
            }
        }
    }

    /// The value of every key in `keys` as each live node's state machine would serve it,
    /// through linearizable gets. A read that times out or meets a leader change (a lost
    /// message can do that) is retried, as a client would: reads are idempotent.
    pub fn read_all(
        &mut self,
        keys: &[String],
    ) -> BTreeMap<(NodeId, String), Option<ClientResponse>> {
        let mut values = BTreeMap::new();
        for node in self.node_ids() {
            if !self.is_up(node) {
                continue;
            }
            for key in keys {
                let mut response = self.get(node, key);
                for _ in 0..5 {
                    let retry = matches!(
                        response.as_ref().map(|r| &r.reply),
                        None | Some(Reply::Error {
                            code: ErrorCode::Timeout | ErrorCode::Unavailable,
                            ..
                        })
                    );
                    if !retry {
                        break;
                    }
                    response = self.get(node, key);
                }
                values.insert((node, key.clone()), response);
            }
        }
        values
    }
}

#[cfg(test)]
mod tests;
