//! Whole nodes in simulation: every node runs the production `Shard` of each of its cores
//! over the production WAL (`log::Log`) on a `SimDisk` and a `SimSnapshotStore`, and talks to
//! the others through a simulated network that can drop and delay batches. The shards take
//! snapshots and compact the WAL; leaders stream snapshot files to lagging followers, which
//! stage and install them (`shards/snapshots.rs`). Crashes drop a node's memory, tear its
//! unsynced disk writes and undo its unsynced snapshot files and renames; power cuts of a
//! snapshot store crash a node in the middle of writing or staging a snapshot; restarts
//! recover from the disk and the newest snapshot that loads. Deterministic from a seed.
//!
//! Drives exactly what the reactor drives, minus sockets and real time. Must not import
//! `reactor/` or glommio.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use crate::constants::SIM_SHARD_SNAPSHOT_ENTRIES_DEFAULT;
use crate::ids::{CoreId, GroupId, LogIndex, NodeId, Ticks};
use crate::kv::Command;
use crate::kv::store::{SnapshotId, SnapshotStore};
use crate::log::{Log, WalConfig};
use crate::prng::Prng;
use crate::raft::Persist;
use crate::shard::core::{
    Origin, Shard, ShardConfig, ShardEvent, ShardOutput, SnapshotPolicy, WalTicket, core_of_group,
    group_of_key,
};
use crate::sim::disk::{SimDisk, block_on};
use crate::sim::snapstore::SimSnapshotStore;
use crate::wire::batch::Batch;
use crate::wire::client::{
    ClientOp, ClientRequest, ClientResponse, ErrorCode, Reply, RequestId, encode_request,
};

mod snapshots;

pub use snapshots::SnapshotStats;
use snapshots::{CoreSnapshots, OfferContext, SimSnapshotError, restore_group};

/// Segments of the simulated WALs by default: small, so tests roll over segments.
const SIM_SEGMENT_BYTES: u64 = 256 * 1024;
/// Alignment of the simulated disks and snapshot files.
const SIM_ALIGNMENT_BYTES: usize = 512;
/// Most store operations a scheduled power cut lets pass before it strikes.
const SIM_POWER_CUT_OPERATIONS_MAX: u64 = 8;

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
    /// Bytes of each WAL segment: small ones roll over often, so purges after compactions
    /// free segments.
    pub wal_segment_bytes: u64,
    /// A group takes a snapshot after this many applied entries; 0: never.
    pub snapshot_entries: u64,
    /// Chance in a thousand, per round, that the power of one node's snapshot store is cut a
    /// few operations later (preferably while it writes or stages a snapshot), crashing the
    /// node there. Only while every node is up and no other cut is pending.
    pub power_cut_per_mille: u64,
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
            wal_segment_bytes: SIM_SEGMENT_BYTES,
            snapshot_entries: SIM_SHARD_SNAPSHOT_ENTRIES_DEFAULT,
            power_cut_per_mille: 0,
        }
    }
}

/// Work for a core's WAL, in the order the shard asked for it.
enum WalWork {
    /// An append, the round it becomes durable, its ticket and its persists.
    Append(u64, WalTicket, Vec<(GroupId, Persist)>),
    /// The group's entries up to the index are folded into a snapshot the core keeps.
    Compact(GroupId, LogIndex),
}

struct SimCore {
    shard: Shard,
    log: Log<SimDisk>,
    /// Appends and compactions handed out and not yet done, in order; each append with the
    /// round at which it becomes durable. A crash loses them, as it loses a write whose sync
    /// never returned.
    wal_work: VecDeque<WalWork>,
    /// A compaction happened since the last purge: purge once no append is queued.
    purge_wanted: bool,
    snapshots: CoreSnapshots,
}

struct SimNode {
    id: NodeId,
    /// One disk and one snapshot store per core, kept across crashes.
    disks: Vec<SimDisk>,
    stores: Vec<SimSnapshotStore>,
    /// `None` while the node is down.
    cores: Option<Vec<SimCore>>,
}

/// What one core's round draws from the cluster and hands back to it.
struct RoundContext<'a> {
    node: NodeId,
    core: CoreId,
    round_number: u64,
    tick_number: u64,
    sync_rounds_max: u64,
    prng: &'a mut Prng,
    stats: &'a mut SnapshotStats,
    sent: &'a mut Vec<(CoreId, Batch)>,
    responses: &'a mut HashMap<(NodeId, u64), VecDeque<ClientResponse>>,
    events: &'a mut Vec<(NodeId, ShardEvent)>,
}

/// A cluster of simulated nodes.
pub struct ShardSim {
    config: ShardSimConfig,
    prng: Prng,
    nodes: Vec<SimNode>,
    round_number: u64,
    tick_number: u64,
    /// Batches in flight: (deliver at round, destination core, batch).
    network: VecDeque<(u64, CoreId, Batch)>,
    /// Responses received, per (node, connection).
    responses: HashMap<(NodeId, u64), VecDeque<ClientResponse>>,
    next_request: u64,
    output: ShardOutput,
    /// What the shards reported, per node, oldest first (`take_events`).
    events: Vec<(NodeId, ShardEvent)>,
    stats: SnapshotStats,
}

impl ShardSim {
    pub fn new(config: ShardSimConfig) -> ShardSim {
        let mut prng = Prng::new(config.seed);
        let mut nodes = Vec::with_capacity(config.node_count);
        for n in 1..=config.node_count as u64 {
            let disks = (0..config.cores)
                .map(|_| SimDisk::new(prng.fork(), SIM_ALIGNMENT_BYTES))
                .collect();
            let stores = (0..config.cores)
                .map(|_| SimSnapshotStore::new(prng.fork(), SIM_ALIGNMENT_BYTES))
                .collect();
            nodes.push(SimNode {
                id: NodeId(n),
                disks,
                stores,
                cores: None,
            });
        }
        let mut sim = ShardSim {
            config,
            prng,
            nodes,
            round_number: 0,
            tick_number: 0,
            network: VecDeque::new(),
            responses: HashMap::new(),
            next_request: 1,
            output: ShardOutput::default(),
            events: Vec::new(),
            stats: SnapshotStats::default(),
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
            snapshot: SnapshotPolicy {
                entries: self.config.snapshot_entries,
                alignment: SIM_ALIGNMENT_BYTES,
            },
            wal_record_capacity_bytes: self
                .config
                .wal_segment_bytes
                .saturating_sub(crate::constants::WAL_HEADER_BLOCK_BYTES),
        }
    }

    /// Starts (or restarts) a node from its disks and snapshot stores alone: each group from
    /// its newest snapshot that loads and the WAL's tail (as `reactor/server.rs` does).
    fn start(&mut self, index: usize) {
        let node = self.nodes[index].id;
        let seed = self.config.seed;
        let mut cores = Vec::with_capacity(self.config.cores);
        for core in 0..self.config.cores {
            let disk = self.nodes[index].disks[core].clone();
            let store = self.nodes[index].stores[core].clone();
            store.recover();
            let wal = WalConfig {
                segment_bytes: self.config.wal_segment_bytes,
                ..WalConfig::default()
            };
            let (log, _summary) = block_on(Log::open(disk, wal))
                .unwrap_or_else(|e| panic!("seed {seed}: node {node} core {core}: {e}"));
            let config = self.shard_config(node, CoreId(core as u16));
            let mut restarts = HashMap::new();
            for group in config.groups() {
                let restart = restore_group(&store, group, log.restored(group), &mut self.stats)
                    .unwrap_or_else(|e| {
                        panic!("seed {seed}: node {node} core {core} group {group}: {e}")
                    });
                restarts.insert(group, restart);
            }
            let mut restart = |group| restarts.remove(&group).unwrap_or_default();
            let shard = Shard::new(config, &mut restart);
            cores.push(SimCore {
                shard,
                log,
                wal_work: VecDeque::new(),
                purge_wanted: false,
                snapshots: CoreSnapshots::new(node, store),
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

    /// Kills a node: its memory is gone, its disks lose or tear what was not synced, and its
    /// snapshot stores lose unsynced bytes and undo renames not made durable.
    pub fn crash(&mut self, node: NodeId) {
        let index = (node.0 - 1) as usize;
        self.nodes[index].cores = None;
        for disk in &self.nodes[index].disks {
            disk.crash();
        }
        for store in &self.nodes[index].stores {
            store.crash();
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
        self.tick_number += 1;
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

    /// Snapshot files of the live `node` newer than the newest its group keeps (a snapshot
    /// received and not taken that stayed, say); none once its stores are settled. Older
    /// ones are left for the group's next snapshot to remove.
    pub fn unkept_snapshot_files(&self, node: NodeId) -> Vec<SnapshotId> {
        let index = (node.0 - 1) as usize;
        let mut unkept = Vec::new();
        for (core, store) in self.nodes[index].stores.iter().enumerate() {
            let Some(shard) = self.shard(node, CoreId(core as u16)) else {
                continue;
            };
            for group in shard.config().groups() {
                let newest = shard
                    .kept_snapshots(group)
                    .last()
                    .copied()
                    .unwrap_or(LogIndex::ZERO);
                let listed = block_on(store.list(group))
                    .unwrap_or_else(|e| panic!("node {node}: listing group {group}: {e}"));
                unkept.extend(listed.into_iter().filter(|id| id.last.index > newest));
            }
        }
        unkept
    }

    /// What the snapshots of the cluster did so far (across crashes).
    pub fn snapshot_stats(&self) -> SnapshotStats {
        self.stats
    }

    /// Whether a power cut of a snapshot store is scheduled and has not struck yet.
    pub fn power_cut_pending(&self) -> bool {
        self.nodes
            .iter()
            .any(|node| node.stores.iter().any(SimSnapshotStore::power_cut_pending))
    }

    /// Cuts the power of `node`'s snapshot store of `core` after `operations` more store
    /// operations: the node crashes at that one.
    pub fn cut_power_after(&mut self, node: NodeId, core: CoreId, operations: u64) {
        self.nodes[(node.0 - 1) as usize].stores[usize::from(core.0)].cut_power_after(operations);
    }

    /// Flips a byte in the newest snapshot file of every group of the down `node` that has an
    /// older one to fall back to; returns the files corrupted.
    pub fn corrupt_newest_snapshots(&mut self, node: NodeId) -> Vec<SnapshotId> {
        self.corrupt_snapshots(node, false)
    }

    /// Flips a byte in every snapshot file of the down `node`: none loads at its restart.
    pub fn corrupt_every_snapshot(&mut self, node: NodeId) -> Vec<SnapshotId> {
        self.corrupt_snapshots(node, true)
    }

    fn corrupt_snapshots(&mut self, node: NodeId, every: bool) -> Vec<SnapshotId> {
        assert!(
            !self.is_up(node),
            "corrupting the snapshots of node {node}, which is up"
        );
        let index = (node.0 - 1) as usize;
        let mut corrupted = Vec::new();
        for store in &self.nodes[index].stores {
            for group in (0..self.config.groups_total).map(GroupId) {
                let listed = block_on(store.list(group))
                    .unwrap_or_else(|e| panic!("node {node}: listing group {group}: {e}"));
                let chosen: Vec<SnapshotId> = match listed[..] {
                    _ if every => listed.clone(),
                    [newest, _, ..] => vec![newest],
                    _ => Vec::new(),
                };
                for id in chosen {
                    let length = store.file_bytes(id).unwrap_or(0);
                    if length == 0 {
                        continue;
                    }
                    // Past the header, inside the records or the trailer: a checksum must
                    // catch it.
                    let offset = self
                        .prng
                        .range_inclusive(length as u64 / 4, length as u64 - 1);
                    store.corrupt(id, offset as usize, 0x5a);
                    corrupted.push(id);
                }
            }
        }
        corrupted
    }

    /// One round of every core of every live node, then delivery of due batches.
    pub fn round(&mut self) {
        self.round_number += 1;
        self.maybe_cut_power();
        let mut sent = Vec::new();
        let mut output = std::mem::take(&mut self.output);
        let mut cut = Vec::new();
        for index in 0..self.nodes.len() {
            let node = self.nodes[index].id;
            let Some(cores) = self.nodes[index].cores.as_mut() else {
                continue;
            };
            let mut context = RoundContext {
                node,
                core: CoreId(0),
                round_number: self.round_number,
                tick_number: self.tick_number,
                sync_rounds_max: self.config.sync_rounds_max,
                prng: &mut self.prng,
                stats: &mut self.stats,
                sent: &mut sent,
                responses: &mut self.responses,
                events: &mut self.events,
            };
            for (core_index, core) in cores.iter_mut().enumerate() {
                context.core = CoreId(core_index as u16);
                if let Err(SimSnapshotError::PowerCut(error)) =
                    core.round(&mut output, &mut context)
                {
                    cut.push((node, error));
                    break;
                }
            }
        }
        self.output = output;
        for (node, _error) in cut {
            self.stats.power_cuts += 1;
            self.crash(node);
        }
        for (core, batch) in sent {
            self.send(core, batch);
        }
        self.deliver();
    }

    /// Puts a batch on the simulated network, which may lose or delay it.
    fn send(&mut self, core: CoreId, batch: Batch) {
        if self.prng.chance(self.config.loss_per_mille, 1000) {
            return;
        }
        let delay = self.prng.range_inclusive(0, self.config.delay_rounds_max);
        self.network
            .push_back((self.round_number + delay, core, batch));
    }

    /// Schedules a power cut of one snapshot store, if the budget allows: every node up and
    /// no cut pending. A store writing or staging a snapshot is preferred, so the cut lands
    /// in its middle; otherwise it strikes at the start of the next snapshot there.
    fn maybe_cut_power(&mut self) {
        let per_mille = self.config.power_cut_per_mille;
        if per_mille == 0 || !self.prng.chance(per_mille, 1000) {
            return;
        }
        if self.power_cut_pending() || self.nodes.iter().any(|node| node.cores.is_none()) {
            return;
        }
        let mut busy = Vec::new();
        let mut all = Vec::new();
        for node in &self.nodes {
            for (core, sim_core) in node.cores.iter().flatten().enumerate() {
                all.push((node.id, CoreId(core as u16)));
                if sim_core.snapshots.busy() {
                    busy.push((node.id, CoreId(core as u16)));
                }
            }
        }
        let candidates = if busy.is_empty() { all } else { busy };
        let Some(&(node, core)) = self.prng.choose(&candidates) else {
            return;
        };
        let operations = self.prng.range_inclusive(0, SIM_POWER_CUT_OPERATIONS_MAX);
        self.cut_power_after(node, core, operations);
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
        let mut answers = Vec::new();
        let mut cut = Vec::new();
        for (_, core, mut batch) in due {
            let index = (batch.to.0 - 1) as usize;
            let node = self.nodes[index].id;
            let Some(cores) = self.nodes[index].cores.as_mut() else {
                continue;
            };
            let sim_core = &mut cores[usize::from(core.0)];
            let from = batch.from;
            for ack in batch.snapshot_acks.drain(..) {
                sim_core.snapshots.on_ack(from, ack, self.tick_number);
            }
            let mut acks = Batch::new(node, from);
            for chunk in batch.snapshot_chunks.drain(..) {
                let stats = &mut self.stats;
                match sim_core
                    .snapshots
                    .on_chunk(from, chunk, &mut sim_core.shard, stats)
                {
                    Ok(ack) => acks.snapshot_acks.push(ack),
                    Err(SimSnapshotError::PowerCut(_)) => {
                        cut.push(node);
                        break;
                    }
                }
            }
            if cut.contains(&node) {
                continue;
            }
            if !acks.snapshot_acks.is_empty() {
                answers.push((core, acks));
            }
            if let Err(error) = sim_core.shard.on_peer_batch(batch) {
                panic!(
                    "seed {}: node {node} refused a batch from {from}: {error}",
                    self.config.seed
                );
            }
        }
        for node in cut {
            if self.is_up(node) {
                self.stats.power_cuts += 1;
                self.crash(node);
            }
        }
        for (core, batch) in answers {
            if self.is_up(batch.from) {
                self.send(core, batch);
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

impl SimCore {
    /// One round of this core: the shard's round, then its output carried out as the reactor
    /// does (`reactor/driver.rs`): compactions queued before the round's append, snapshot
    /// writes to the store, offers streamed, fetches answered, replies delivered.
    fn round(
        &mut self,
        output: &mut ShardOutput,
        context: &mut RoundContext<'_>,
    ) -> Result<(), SimSnapshotError> {
        self.shard.round(output);
        for event in output.events.drain(..) {
            count_event(context.stats, &event);
            context.events.push((context.node, event));
        }
        for batch in output.batches.drain(..) {
            context.sent.push((context.core, batch));
        }
        for (group, index) in output.wal_compactions.drain(..) {
            self.wal_work.push_back(WalWork::Compact(group, index));
        }
        if let Some((ticket, persists)) = output.wal_append.take() {
            let delay = context.prng.range_inclusive(0, context.sync_rounds_max);
            let at = context.round_number + delay;
            self.wal_work
                .push_back(WalWork::Append(at, ticket, persists));
        }
        self.run_wal(context);
        for write in output.snapshot_writes.drain(..) {
            let delay = context.prng.range_inclusive(0, context.sync_rounds_max);
            self.snapshots
                .queue_write(context.round_number + delay, write);
        }
        self.snapshots
            .run_writes(context.round_number, &mut self.shard)?;
        for (group, offer) in output.snapshot_offers.drain(..) {
            let offer_context = OfferContext {
                tick: context.tick_number,
                prng: context.prng,
                stats: context.stats,
            };
            self.snapshots
                .offer(group, offer, offer_context, &mut self.shard)?;
        }
        let mut chunks = Vec::new();
        self.snapshots.pump(
            context.tick_number,
            &mut self.shard,
            context.stats,
            &mut chunks,
        );
        context
            .sent
            .extend(chunks.into_iter().map(|batch| (context.core, batch)));
        let node = context.node;
        for (group, fetch) in output.fetches.drain(..) {
            let entries = block_on(self.log.fetch_for(group, &fetch))
                .unwrap_or_else(|e| panic!("node {node}: WAL fetch: {e}"));
            self.shard.on_fetched(group, entries);
        }
        for (origin, response) in output.replies.drain(..) {
            context
                .responses
                .entry((node, origin.connection))
                .or_default()
                .push_back(response);
        }
        Ok(())
    }

    /// Carries out the WAL work due by this round, in order (a later append is never durable
    /// before an earlier one); purges once nothing is queued after a compaction.
    fn run_wal(&mut self, context: &mut RoundContext<'_>) {
        let node = context.node;
        loop {
            let due = match self.wal_work.front() {
                Some(WalWork::Compact(..)) => true,
                Some(WalWork::Append(at, _, _)) => *at <= context.round_number,
                None => false,
            };
            if !due {
                break;
            }
            let Some(work) = self.wal_work.pop_front() else {
                break;
            };
            match work {
                WalWork::Compact(group, index) => {
                    self.log.compact(group, index);
                    self.purge_wanted = true;
                }
                WalWork::Append(_, ticket, persists) => {
                    let batch: Vec<_> = persists
                        .iter()
                        .map(|(group, persist)| (*group, persist))
                        .collect();
                    block_on(self.log.append(&batch))
                        .unwrap_or_else(|e| panic!("node {node}: WAL append: {e}"));
                    self.shard.on_wal_durable(ticket);
                }
            }
        }
        if self.purge_wanted && self.wal_work.is_empty() {
            self.purge_wanted = false;
            let freed = block_on(self.log.purge())
                .unwrap_or_else(|e| panic!("node {node}: WAL purge: {e}"));
            context.stats.segments_purged += freed as u64;
        }
    }
}

/// Counts a shard's snapshot event into the cluster's statistics.
fn count_event(stats: &mut SnapshotStats, event: &ShardEvent) {
    match event {
        ShardEvent::SnapshotTaken { .. } => stats.taken += 1,
        ShardEvent::SnapshotInstalled { .. } => stats.installed += 1,
        ShardEvent::SnapshotFailed { .. } => stats.take_failed += 1,
        ShardEvent::SnapshotRefused { .. } => stats.refused += 1,
        ShardEvent::StateLost { .. } => stats.groups_lost += 1,
        _ => {}
    }
}

#[cfg(test)]
mod tests;
