//! One simulated cluster: N nodes, each running one `RaftNode` per group over a simulated
//! durable log, joined by a simulated network, driven by a simulated clock, all drawn from
//! one seed. It injects faults (loss, delay, duplication, reordering, symmetric and one-way
//! partitions, crashes that drop unsynced writes, restarts from the durable log alone),
//! issues client proposals and ReadIndex requests, takes snapshots and compacts logs past a
//! threshold of applied entries, streams snapshots to followers that need them in chunks
//! (lost, delayed, reordered like any message; bandwidth-limited; reported finished or
//! failed to the leader), crashes nodes while they stage or install one, and feeds every
//! observation to the group checkers; then it heals everything and demands progress (the
//! liveness phase).
//!
//! This module owns the event loop and the handling of `Ready` (the contract in
//! `raft::types`). It must not reach into the core beyond its public API, must not read
//! real time or any RNG but its own `Prng`, and must not import `reactor/` or glommio.

use bytes::Bytes;

use crate::constants::{
    SIM_LIVENESS_TICKS_MAX, SIM_LIVENESS_TICKS_PER_ENTRY, SIM_READY_ROUNDS_MAX,
    SIM_SNAPSHOT_CHUNKS_MAX, SIM_SNAPSHOT_CHUNKS_PER_TICK, SIM_SNAPSHOT_RESEND_TICKS,
    SIM_SNAPSHOT_STALL_TICKS, SIM_SNAPSHOT_WINDOW_CHUNKS, SIM_TICK_UNITS,
};
use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::prng::Prng;
use crate::raft::{
    AppendResponse, Fetch, Membership, Message, MessageBody, RaftConfig, RaftNode, ReadContext,
    Ready, RestoredState, RoleKind, SnapshotMeta, SnapshotStatus, SoftState,
};

use super::checker::GroupChecker;
use super::network::{NetworkFaults, Payload, SimNetwork};
use super::storage::{SimSnapshot, SimStorage, chain_hash};
use super::transfer::{ChunkAck, Incoming, Outgoing, OutgoingStart, SnapshotChunk};
use super::{SimConfig, SimError, SimReport};

/// Ticks between two checks that every committed entry is durable on a quorum (the check
/// walks every committed entry, so it does not run on every tick).
const DURABILITY_CHECK_TICKS: u64 = 16;

/// The fault and workload mix of one seed, drawn once at the start.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    network: NetworkFaults,
    disk_delay_units_max: u64,
    /// Per tick, per thousand: start a partition (when none is active).
    partition_per_mille: u64,
    /// Per tick, per thousand: crash a node (within the budget of a minority down).
    crash_per_mille: u64,
    /// Per tick and group, per thousand: a client proposal / read / leader transfer.
    propose_per_mille: u64,
    read_per_mille: u64,
    transfer_per_mille: u64,
    /// Partitions isolate a leader half of the time.
    isolate_leaders: bool,
    /// Crashed nodes stay down for `[2, down_ticks_max]` ticks.
    down_ticks_max: u64,
    /// Partitions last `[3, partition_ticks_max]` ticks.
    partition_ticks_max: u64,
    pre_vote: bool,
    check_quorum: bool,
    append_entries_max: usize,
    inflight_appends_max: usize,
    /// Applied entries past its snapshot after which a node may take a new one (0: never).
    snapshot_every: u64,
    /// Per tick, per thousand: crash a node that is staging or installing a snapshot.
    snapshot_crash_per_mille: u64,
}

impl Scenario {
    fn draw(prng: &mut Prng, churn: bool, snapshot_every: Option<u64>) -> Scenario {
        let snapshot_every_drawn = *prng.choose(&[0, 3, 6, 12, 30]).unwrap_or(&0);
        let snapshot_crash_per_mille = *prng.choose(&[0, 50, 200]).unwrap_or(&0);
        let tick = SIM_TICK_UNITS;
        let delay_choices = [tick / 2, tick, 3 * tick, 6 * tick];
        let loss_choices = [0, 10, 50, 150];
        let scenario = Scenario {
            network: NetworkFaults {
                loss_per_mille: *prng.choose(&loss_choices).unwrap_or(&0),
                duplicate_per_mille: *prng.choose(&[0, 0, 20, 80]).unwrap_or(&0),
                delay_units_max: *prng.choose(&delay_choices).unwrap_or(&tick),
            },
            disk_delay_units_max: *prng.choose(&[1, tick / 2, 2 * tick]).unwrap_or(&1),
            partition_per_mille: *prng.choose(&[0, 20, 60]).unwrap_or(&0),
            crash_per_mille: *prng.choose(&[0, 15, 40, 80]).unwrap_or(&0),
            propose_per_mille: *prng.choose(&[100, 300, 700]).unwrap_or(&300),
            read_per_mille: *prng.choose(&[0, 50, 200]).unwrap_or(&50),
            transfer_per_mille: *prng.choose(&[0, 0, 10, 30]).unwrap_or(&0),
            isolate_leaders: prng.chance(1, 2),
            down_ticks_max: 40,
            partition_ticks_max: 60,
            pre_vote: prng.chance(3, 4),
            check_quorum: prng.chance(3, 4),
            append_entries_max: *prng.choose(&[1, 2, 8, 64]).unwrap_or(&64),
            inflight_appends_max: *prng.choose(&[1, 4, 256]).unwrap_or(&256),
            snapshot_every: snapshot_every.unwrap_or(snapshot_every_drawn),
            snapshot_crash_per_mille,
        };
        if prng.chance(1, 4) || churn {
            scenario.with_churn()
        } else {
            scenario
        }
    }

    /// Term churn: leaders crash and come back quickly, short partitions, small appends and
    /// slow syncs, so that old-term entries sit half-replicated across several elections
    /// (where paper Figure 8 and lost votes live).
    fn with_churn(self) -> Scenario {
        Scenario {
            crash_per_mille: 150,
            isolate_leaders: true,
            down_ticks_max: 8,
            partition_per_mille: 100,
            partition_ticks_max: 15,
            disk_delay_units_max: 2 * SIM_TICK_UNITS,
            propose_per_mille: 700,
            append_entries_max: self.append_entries_max.min(2),
            ..self
        }
    }
}

/// A safety violation observed inside the loop; the cluster adds seed and tick.
#[derive(Debug)]
struct Violation {
    group: GroupId,
    detail: String,
    /// A lack of progress after healing rather than a safety violation.
    liveness: bool,
}

type Checked<T> = Result<T, Violation>;

fn violation(group: GroupId, detail: impl Into<String>) -> Violation {
    Violation {
        group,
        detail: detail.into(),
        liveness: false,
    }
}

/// One group's `RaftNode` on a running node, with what the driver tracks about it.
struct Replica {
    raft: RaftNode,
    role: RoleKind,
    term: Term,
    /// The last index this incarnation applied (the state machine is volatile: a restart
    /// applies the log again from the start, through the fetch path).
    applied: LogIndex,
    /// A WAL read in progress: the request and when it completes.
    fetch: Option<(Fetch, u64)>,
    /// The state machine: the prefix hash of everything applied (or of the snapshot it was
    /// restored from), and the last entry applied.
    state_chain: u64,
    applied_id: EntryId,
}

struct SimNode {
    id: NodeId,
    /// One durable log per group; survives crashes.
    storages: Vec<SimStorage>,
    /// One replica per group while the node runs; empty while it is down.
    replicas: Vec<Replica>,
    restart_at_tick: Option<u64>,
    /// The time unit within each tick at which this node's clock ticks.
    tick_phase: u64,
    /// Snapshot transfers this node sends (volatile: a crash ends them).
    outgoing: Vec<Outgoing>,
    /// Per group: the chunks of a snapshot this node receives (volatile staging).
    staging: Vec<Option<Incoming>>,
}

impl SimNode {
    fn is_up(&self) -> bool {
        !self.replicas.is_empty()
    }
}

/// Where a node's group stands, for choosing where clients go.
#[derive(Clone, Copy)]
struct LeaderSeen {
    node: usize,
    term: Term,
}

pub(super) struct Cluster {
    config: SimConfig,
    scenario: Scenario,
    prng: Prng,
    nodes: Vec<SimNode>,
    network: SimNetwork,
    checkers: Vec<GroupChecker>,
    membership: Membership,
    /// Simulated time in units; a tick is `SIM_TICK_UNITS` units.
    now: u64,
    tick: u64,
    partition_until_tick: Option<u64>,
    next_read_context: u64,
    next_command: u64,
    next_transfer: u64,
    report: SimReport,
}

impl Cluster {
    pub(super) fn new(config: SimConfig) -> Cluster {
        assert!(
            config.node_count >= 1 && config.group_count >= 1,
            "sim: needs nodes and groups, got {} nodes and {} groups",
            config.node_count,
            config.group_count
        );
        let mut prng = Prng::new(config.seed);
        let scenario = Scenario::draw(&mut prng, config.churn, config.snapshot_every);
        let membership = Membership::new((1..=config.node_count as u64).map(NodeId).collect());
        let nodes = (0..config.node_count)
            .map(|index| SimNode {
                id: NodeId(index as u64 + 1),
                storages: (0..config.group_count)
                    .map(|_| SimStorage::default())
                    .collect(),
                replicas: Vec::new(),
                restart_at_tick: None,
                tick_phase: prng.below(SIM_TICK_UNITS),
                outgoing: Vec::new(),
                staging: (0..config.group_count).map(|_| None).collect(),
            })
            .collect();
        let report = SimReport::new(&config);
        let mut cluster = Cluster {
            network: SimNetwork::new(scenario.network),
            checkers: (0..config.group_count)
                .map(|_| GroupChecker::new(config.node_count))
                .collect(),
            config,
            scenario,
            prng,
            nodes,
            membership,
            now: 0,
            tick: 0,
            partition_until_tick: None,
            next_read_context: 0,
            next_command: 0,
            next_transfer: 0,
            report,
        };
        for node in 0..cluster.nodes.len() {
            cluster.start_node(node);
        }
        cluster
    }

    /// The whole run: the safety phase under faults, then the liveness phase healed.
    pub(super) fn run(mut self) -> Result<SimReport, SimError> {
        let safety = self.run_safety_phase();
        let result = safety.and_then(|()| self.run_liveness_phase());
        match result {
            Ok(()) => {
                self.finish_report();
                Ok(self.report)
            }
            Err(found) if found.liveness => Err(SimError::Liveness {
                seed: self.config.seed,
                group: found.group,
                detail: found.detail,
            }),
            Err(found) => Err(SimError::Violation {
                seed: self.config.seed,
                tick: self.tick,
                group: found.group,
                detail: found.detail,
            }),
        }
    }

    fn run_safety_phase(&mut self) -> Checked<()> {
        for _ in 0..self.config.safety_ticks {
            self.inject_faults()?;
            self.client_requests(true)?;
            self.run_one_tick()?;
            if self.tick.is_multiple_of(DURABILITY_CHECK_TICKS) {
                self.check_durability()?;
            }
        }
        self.check_durability()
    }

    /// Heal every fault, restart every node, and require each group to elect a leader and
    /// apply a fresh proposal on every node within a bounded number of ticks.
    fn run_liveness_phase(&mut self) -> Checked<()> {
        self.network.heal();
        self.partition_until_tick = None;
        self.network.set_faults(NetworkFaults::calm(
            SIM_TICK_UNITS.min(self.scenario.network.delay_units_max),
        ));
        for node in 0..self.nodes.len() {
            if !self.nodes[node].is_up() {
                self.restart_node(node)?;
            }
        }
        let group_count = self.config.group_count;
        let mut markers: Vec<Vec<EntryId>> = vec![Vec::new(); group_count];
        let mut proposed_terms: Vec<Vec<Term>> = vec![Vec::new(); group_count];
        let mut done = vec![false; group_count];
        // Catching up a long backlog one small append at a time takes time proportional to
        // it; the bound grows with the longest log so that only a stall fails.
        let longest_log = self
            .nodes
            .iter()
            .flat_map(|node| node.storages.iter().map(|s| s.view().last_index().get()))
            .max()
            .unwrap_or(0);
        let ticks_max = SIM_LIVENESS_TICKS_MAX + SIM_LIVENESS_TICKS_PER_ENTRY * longest_log;
        for ticks in 0..ticks_max {
            self.run_one_tick()?;
            for group in 0..group_count {
                if done[group] {
                    continue;
                }
                if let Some(seen) = self.leader_of(group)
                    && !proposed_terms[group].contains(&seen.term)
                {
                    let data = Bytes::from(format!("live g{group} t{}", seen.term));
                    if let Ok(id) = self.nodes[seen.node].replicas[group].raft.propose(data) {
                        markers[group].push(id);
                        proposed_terms[group].push(seen.term);
                    }
                    self.drain(seen.node, group)?;
                }
                done[group] = markers[group]
                    .iter()
                    .any(|marker| self.applied_everywhere(group, *marker));
            }
            if done.iter().all(|&d| d) {
                self.report.liveness_ticks = ticks + 1;
                return self.check_durability();
            }
        }
        let group = done.iter().position(|&d| !d).unwrap_or(0);
        Err(Violation {
            group: group_id(group),
            detail: format!(
                "no leader had a new proposal applied on every node within {ticks_max} ticks \
                 (markers proposed: {:?}, leader now: {:?})",
                markers[group],
                self.leader_of(group)
                    .map(|seen| (self.nodes[seen.node].id, seen.term))
            ),
            liveness: true,
        })
    }

    fn applied_everywhere(&self, group: usize, marker: EntryId) -> bool {
        self.checkers[group].committed_id(marker.index) == Some(marker)
            && self.nodes.iter().all(|node| {
                node.replicas
                    .get(group)
                    .is_some_and(|r| r.applied >= marker.index)
            })
    }

    /// The running node that believes it leads `group` in the highest term.
    fn leader_of(&self, group: usize) -> Option<LeaderSeen> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(node, n)| {
                let replica = n.replicas.get(group)?;
                (replica.role == RoleKind::Leader).then_some(LeaderSeen {
                    node,
                    term: replica.term,
                })
            })
            .max_by_key(|seen| seen.term)
    }

    /// One tick of simulated time: messages, disk completions and clock ticks, unit by unit.
    fn run_one_tick(&mut self) -> Checked<()> {
        self.tick += 1;
        self.take_snapshots()?;
        self.pump_transfers()?;
        for _ in 0..SIM_TICK_UNITS {
            self.now += 1;
            while let Some((group, message)) = self.network.pop_due(self.now) {
                self.deliver(group, message)?;
            }
            for node in 0..self.nodes.len() {
                if !self.nodes[node].is_up() {
                    continue;
                }
                for group in 0..self.config.group_count {
                    self.complete_io(node, group)?;
                }
                // A slow clock now and then, so nodes drift apart.
                if self.now % SIM_TICK_UNITS == self.nodes[node].tick_phase
                    && !self.prng.chance(1, 50)
                {
                    for group in 0..self.config.group_count {
                        self.nodes[node].replicas[group].raft.tick();
                        self.drain(node, group)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, group: GroupId, payload: Payload) -> Checked<()> {
        let Some(node) = self.node_index(payload.to()) else {
            return Err(violation(
                group,
                format!("message to unknown node: {payload:?}"),
            ));
        };
        let Some(group_index) = self.group_index(group) else {
            return Err(violation(
                group,
                format!("message for unknown group: {payload:?}"),
            ));
        };
        if !self.nodes[node].is_up() {
            // The node is down: the message is lost.
            return Ok(());
        }
        match payload {
            Payload::Raft(message) => self.step_message(node, group_index, message),
            Payload::Chunk(chunk) => self.receive_chunk(node, group_index, chunk),
            Payload::ChunkAck(ack) => {
                self.on_chunk_ack(node, ack);
                Ok(())
            }
        }
    }

    /// Step one Raft message into a running replica and handle what it asks for.
    fn step_message(&mut self, node: usize, group_index: usize, message: Message) -> Checked<()> {
        let group = group_id(group_index);
        // Every message here came from a correct sender: a refusal is a bug.
        let shown = format!("{message:?}");
        if self.config.trace {
            println!(
                "[{}.{}] deliver {shown}",
                self.tick,
                self.now % SIM_TICK_UNITS
            );
        }
        let replica = &mut self.nodes[node].replicas[group_index];
        if let Err(error) = replica.raft.step(message) {
            return Err(violation(group, format!("step refused {shown}: {error}")));
        }
        self.drain(node, group_index)
    }

    /// Finish the writes and the WAL read of one replica that are due now.
    fn complete_io(&mut self, node: usize, group: usize) -> Checked<()> {
        let now = self.now;
        let mut position = None;
        loop {
            let completed = self.nodes[node].storages[group]
                .complete_next(now)
                .map_err(|error| {
                    violation(group_id(group), format!("node {}: {error}", node + 1))
                })?;
            let Some(completed) = completed else {
                break;
            };
            position = completed.position.or(position);
            if let Some(installed) = completed.installed {
                self.install_snapshot(node, group, installed)?;
            }
            self.release(node, group, completed.messages)?;
        }
        if let Some(position) = position {
            self.nodes[node].replicas[group].raft.on_persisted(position);
        }
        let replica = &mut self.nodes[node].replicas[group];
        if let Some((fetch, done_at)) = replica.fetch
            && done_at <= now
        {
            replica.fetch = None;
            // The read sees the log as it is now, which a truncation since the request may
            // have changed: the core must cope, as it would with a real WAL.
            let log = self.nodes[node].storages[group].view();
            let entries = log.entries_between(fetch.first, fetch.last, fetch.bytes_max);
            self.report.fetches += 1;
            self.nodes[node].replicas[group].raft.on_fetched(entries);
        }
        self.drain(node, group)
    }

    /// Stage a chunk of a snapshot, acknowledge what is staged, and step the leader's offer
    /// once every chunk is in (thesis §5: the core sees the snapshot only when complete).
    fn receive_chunk(&mut self, node: usize, group: usize, chunk: SnapshotChunk) -> Checked<()> {
        let staging = &mut self.nodes[node].staging[group];
        let received = Incoming::receive(staging, &chunk, self.tick, SIM_SNAPSHOT_STALL_TICKS / 2);
        self.trace(node, group, || {
            format!(
                "chunk {}/{} of {} (transfer {}) from {}: staged {:#b}",
                chunk.index,
                chunk.count,
                chunk.data.last,
                chunk.transfer,
                chunk.from,
                received.ack.received
            )
        });
        self.network.send(
            self.now,
            group_id(group),
            Payload::ChunkAck(received.ack),
            &mut self.prng,
        );
        let Some((offer, data)) = received.step else {
            return Ok(());
        };
        self.trace(node, group, || {
            format!("snapshot {} staged from {}", data.last, chunk.from)
        });
        self.step_message(node, group, offer)
    }

    fn on_chunk_ack(&mut self, node: usize, ack: ChunkAck) {
        let tick = self.tick;
        if let Some(transfer) = self.nodes[node]
            .outgoing
            .iter_mut()
            .find(|transfer| transfer.id == ack.transfer)
        {
            transfer.on_ack(ack.received, tick);
        }
    }

    /// The leader's core asked to send a snapshot: stream the one its storage holds.
    fn start_transfer(&mut self, node: usize, group: usize, offer: Message) -> Checked<()> {
        let gid = group_id(group);
        let MessageBody::InstallSnapshot { snapshot } = &offer.body else {
            return Ok(());
        };
        let data = self.nodes[node].storages[group].view().snapshot();
        let Some(data) = data.filter(|data| data.last == snapshot.last) else {
            return Err(violation(
                gid,
                format!(
                    "node {}: offers snapshot {} but holds {data:?}",
                    offer.from, snapshot.last
                ),
            ));
        };
        let count = (2 + data.last.index.get() / 16).min(u64::from(SIM_SNAPSHOT_CHUNKS_MAX)) as u32;
        self.next_transfer += 1;
        let start = OutgoingStart {
            id: self.next_transfer,
            group,
            count,
            tick: self.tick,
            start_tick: self.tick,
            requested: true,
        };
        self.trace(node, group, || {
            format!("snapshot {} to {} in {count} chunks", data.last, offer.to)
        });
        let to = offer.to;
        let outgoing = &mut self.nodes[node].outgoing;
        // A new offer to the same node supersedes an older transfer.
        outgoing.retain(|transfer| !(transfer.group == group && transfer.to == to));
        outgoing.push(Outgoing::new(start, offer, data));
        self.report.snapshot_transfers += 1;
        Ok(())
    }

    /// Once per tick: every sender sends the chunks its bandwidth and each transfer's window
    /// allow, and reports transfers that completed or stalled to its core (if the offer is
    /// of the core's current term). A completed transfer is now and then sent again later,
    /// unasked, to reach a node that has caught up meanwhile.
    fn pump_transfers(&mut self) -> Checked<()> {
        let tick = self.tick;
        for node in 0..self.nodes.len() {
            if !self.nodes[node].is_up() || self.nodes[node].outgoing.is_empty() {
                continue;
            }
            let mut budget = SIM_SNAPSHOT_CHUNKS_PER_TICK;
            let mut kept = Vec::new();
            let mut chunks = Vec::new();
            let mut reports = Vec::new();
            for mut transfer in std::mem::take(&mut self.nodes[node].outgoing) {
                let status = if transfer.is_complete() {
                    Some(SnapshotStatus::Finished)
                } else if transfer.stalled(tick, SIM_SNAPSHOT_STALL_TICKS) {
                    Some(SnapshotStatus::Failed)
                } else {
                    None
                };
                let Some(status) = status else {
                    let limits = (SIM_SNAPSHOT_WINDOW_CHUNKS, SIM_SNAPSHOT_RESEND_TICKS);
                    let sent = transfer.next_chunks(tick, limits, &mut budget);
                    chunks.extend(sent.into_iter().map(|chunk| (transfer.group, chunk)));
                    kept.push(transfer);
                    continue;
                };
                if status == SnapshotStatus::Failed {
                    self.report.snapshot_transfers_failed += 1;
                }
                if status == SnapshotStatus::Finished
                    && transfer.requested
                    && self.prng.chance(1, 4)
                {
                    self.next_transfer += 1;
                    let start = OutgoingStart {
                        id: self.next_transfer,
                        group: transfer.group,
                        count: (2 + transfer.data().last.index.get() / 16)
                            .min(u64::from(SIM_SNAPSHOT_CHUNKS_MAX))
                            as u32,
                        tick,
                        start_tick: tick + self.prng.range_inclusive(1, 20),
                        requested: false,
                    };
                    kept.push(Outgoing::new(
                        start,
                        transfer.offer().clone(),
                        transfer.data(),
                    ));
                }
                if transfer.requested {
                    reports.push((transfer.group, transfer.offer().clone(), status));
                }
            }
            self.nodes[node].outgoing = kept;
            for (group, chunk) in chunks {
                let payload = Payload::Chunk(chunk);
                self.network
                    .send(self.now, group_id(group), payload, &mut self.prng);
            }
            for (group, offer, status) in reports {
                let replica = &mut self.nodes[node].replicas[group];
                if replica.raft.status().term != offer.term {
                    continue;
                }
                replica.raft.report_snapshot(offer.to, status);
                self.trace(node, group, || {
                    format!("snapshot to {}: {status:?}", offer.to)
                });
                self.drain(node, group)?;
            }
        }
        Ok(())
    }

    /// Once per tick: a node whose state machine applied `snapshot_every` entries past its
    /// snapshot takes a new one now and then (more eagerly while a WAL read is in flight, so
    /// that compaction races fetches) and compacts its log.
    fn take_snapshots(&mut self) -> Checked<()> {
        let every = self.scenario.snapshot_every;
        if every == 0 {
            return Ok(());
        }
        for node in 0..self.nodes.len() {
            if !self.nodes[node].is_up() {
                continue;
            }
            for group in 0..self.config.group_count {
                let replica = &self.nodes[node].replicas[group];
                let taken = self.nodes[node].storages[group].view().snapshot_index();
                if replica.applied < taken.plus(every) {
                    continue;
                }
                let odds = if replica.fetch.is_some() { 2 } else { 4 };
                if self.prng.chance(1, odds) {
                    self.take_snapshot(node, group)?;
                }
            }
        }
        Ok(())
    }

    fn take_snapshot(&mut self, node: usize, group: usize) -> Checked<()> {
        let node_id = self.nodes[node].id;
        let gid = group_id(group);
        let replica = &mut self.nodes[node].replicas[group];
        let snapshot = SimSnapshot {
            last: replica.applied_id,
            chain: replica.state_chain,
        };
        self.checkers[group]
            .on_snapshot(node_id, snapshot)
            .map_err(|detail| violation(gid, detail))?;
        // The snapshot is durable before the log forgets what it folds in.
        self.nodes[node].storages[group]
            .compact(snapshot)
            .map_err(|error| violation(gid, format!("node {node_id}: {error}")))?;
        let replica = &mut self.nodes[node].replicas[group];
        replica
            .raft
            .compact(snapshot.last.index)
            .map_err(|error| violation(gid, format!("node {node_id}: {error}")))?;
        let recorded = replica.raft.snapshot().map(|meta| meta.last);
        if recorded != Some(snapshot.last) {
            return Err(violation(
                gid,
                format!(
                    "node {node_id}: compacted to {} but the core records {recorded:?}",
                    snapshot.last
                ),
            ));
        }
        self.report.snapshots_taken += 1;
        self.trace(node, group, || {
            format!("snapshot taken at {}", snapshot.last)
        });
        self.drain(node, group)
    }

    fn trace(&self, node: usize, group: usize, what: impl FnOnce() -> String) {
        if self.config.trace {
            println!(
                "[{}.{}] n{} g{}: {}",
                self.tick,
                self.now % SIM_TICK_UNITS,
                node + 1,
                group + 1,
                what()
            );
        }
    }

    /// A received snapshot is durable: the state machine takes its state (before the core
    /// hears `on_persisted`), and it must be the committed prefix's state.
    fn install_snapshot(
        &mut self,
        node: usize,
        group: usize,
        installed: SimSnapshot,
    ) -> Checked<()> {
        let node_id = self.nodes[node].id;
        let gid = group_id(group);
        self.checkers[group]
            .on_snapshot(node_id, installed)
            .map_err(|detail| violation(gid, detail))?;
        let replica = &mut self.nodes[node].replicas[group];
        if replica.applied >= installed.last.index {
            return Err(violation(
                gid,
                format!(
                    "node {node_id}: installs snapshot {} with {} applied already",
                    installed.last, replica.applied
                ),
            ));
        }
        replica.applied = installed.last.index;
        replica.applied_id = installed.last;
        replica.state_chain = installed.chain;
        self.report.snapshots_installed += 1;
        self.trace(node, group, || {
            format!("snapshot {} installed", installed.last)
        });
        Ok(())
    }

    /// Handle every `Ready` the replica has, until it has none.
    fn drain(&mut self, node: usize, group: usize) -> Checked<()> {
        for _ in 0..SIM_READY_ROUNDS_MAX {
            let Some(replica) = self.nodes[node].replicas.get_mut(group) else {
                return Ok(());
            };
            if !replica.raft.has_ready() {
                return Ok(());
            }
            let ready = replica.raft.ready();
            self.handle_ready(node, group, ready)?;
        }
        Err(violation(
            group_id(group),
            format!(
                "node {}: still has a Ready after {SIM_READY_ROUNDS_MAX} rounds",
                node + 1
            ),
        ))
    }

    /// The `Ready` contract (raft::types): persist in order, send now what may go now, hold
    /// the rest until durable, apply, serve reads, answer fetches.
    fn handle_ready(&mut self, node: usize, group: usize, ready: Ready) -> Checked<()> {
        if self.config.trace {
            self.trace(node, group, || show_ready(&ready));
        }
        let Ready {
            soft_state,
            persist,
            messages,
            messages_after_persist,
            committed_entries,
            read_states,
            fetch,
        } = ready;
        let node_id = self.nodes[node].id;
        let gid = group_id(group);
        let first_written = persist
            .as_ref()
            .and_then(|p| p.entries.first())
            .map(|entry| entry.index());
        // A snapshot the core persists is the one staged from the leader's chunks.
        let mut snapshot_data = None;
        if let Some(meta) = persist.as_ref().and_then(|p| p.snapshot.as_ref()) {
            let staged = Incoming::staged(&self.nodes[node].staging[group], meta.last);
            if staged.is_none() {
                return Err(violation(
                    gid,
                    format!(
                        "node {node_id}: persists snapshot {} that was never staged",
                        meta.last
                    ),
                ));
            }
            snapshot_data = staged;
        }
        if persist.is_some() || !messages_after_persist.is_empty() {
            let done_at = self.now
                + self
                    .prng
                    .range_inclusive(1, self.scenario.disk_delay_units_max);
            let storage = &mut self.nodes[node].storages[group];
            storage
                .submit(persist, snapshot_data, messages_after_persist, done_at)
                .map_err(|error| violation(gid, format!("node {node_id}: {error}")))?;
        }
        if let Some(first) = first_written {
            let log = self.nodes[node].storages[group].view();
            self.checkers[group]
                .on_log_appended(node_id, log, first)
                .map_err(|detail| violation(gid, detail))?;
        }
        if let Some(soft) = soft_state {
            self.on_soft_state(node, group, soft)?;
        }
        self.release(node, group, messages)?;
        self.apply(node, group, committed_entries)?;
        for read in read_states {
            self.checkers[group]
                .on_read_state(node_id, read)
                .map_err(|detail| violation(gid, detail))?;
        }
        if let Some(fetch) = fetch {
            self.request_fetch(node, group, fetch)?;
        }
        Ok(())
    }

    /// A role change; a new leader is checked for Election Safety and Leader Completeness.
    fn on_soft_state(&mut self, node: usize, group: usize, soft: SoftState) -> Checked<()> {
        let node_id = self.nodes[node].id;
        let gid = group_id(group);
        let replica = &mut self.nodes[node].replicas[group];
        replica.role = soft.role;
        replica.term = soft.term;
        if soft.role != RoleKind::Leader {
            return Ok(());
        }
        self.report.elections += 1;
        let checker = &mut self.checkers[group];
        checker
            .on_leader(node_id, soft.term)
            .map_err(|detail| violation(gid, detail))?;
        let log = self.nodes[node].storages[group].view();
        checker
            .check_leader_log(node_id, soft.term, log, LogIndex(1))
            .map_err(|detail| violation(gid, detail))
    }

    /// Start a WAL read for the core; it completes after a disk delay.
    fn request_fetch(&mut self, node: usize, group: usize, fetch: Fetch) -> Checked<()> {
        let node_id = self.nodes[node].id;
        let gid = group_id(group);
        let log = self.nodes[node].storages[group].view();
        if fetch.first == LogIndex::ZERO
            || fetch.first > fetch.last
            || fetch.last > log.last_index()
        {
            return Err(violation(
                gid,
                format!(
                    "node {node_id}: fetch of [{}, {}] outside the log, which ends at {}",
                    fetch.first,
                    fetch.last,
                    log.last_index()
                ),
            ));
        }
        let done_at = self.now
            + self
                .prng
                .range_inclusive(1, self.scenario.disk_delay_units_max);
        let replica = &mut self.nodes[node].replicas[group];
        if let Some((pending, _)) = replica.fetch {
            return Err(violation(
                gid,
                format!("node {node_id}: fetch {fetch:?} while {pending:?} is unanswered"),
            ));
        }
        replica.fetch = Some((fetch, done_at));
        Ok(())
    }

    /// Apply committed entries in order; every later leader must hold them (§5.4).
    fn apply(
        &mut self,
        node: usize,
        group: usize,
        entries: Vec<crate::raft::Entry>,
    ) -> Checked<()> {
        let Some(first) = entries.first().map(|entry| entry.index()) else {
            return Ok(());
        };
        let node_id = self.nodes[node].id;
        let gid = group_id(group);
        let hard_term = self.nodes[node].storages[group].view().hard_state.term;
        let replica = &mut self.nodes[node].replicas[group];
        let term = replica.term.max(hard_term);
        for entry in &entries {
            if entry.index() != replica.applied.next() {
                return Err(violation(
                    gid,
                    format!(
                        "node {node_id}: applied {} after {}: not in order",
                        entry.id, replica.applied
                    ),
                ));
            }
            self.checkers[group]
                .on_applied(node_id, term, entry)
                .map_err(|detail| violation(gid, detail))?;
            replica.applied = entry.index();
            replica.applied_id = entry.id;
            replica.state_chain = chain_hash(replica.state_chain, entry);
        }
        replica.raft.on_applied(replica.applied);
        self.report.applied_entries += entries.len() as u64;
        for n in &self.nodes {
            let Some(replica) = n.replicas.get(group) else {
                continue;
            };
            if replica.role == RoleKind::Leader {
                let log = n.storages[group].view();
                self.checkers[group]
                    .check_leader_log(n.id, replica.term, log, first)
                    .map_err(|detail| {
                        violation(gid, format!("{detail} (seen as node {node_id} applied)"))
                    })?;
            }
        }
        Ok(())
    }

    /// Send messages, after checking that what they promise is durable: a granted vote
    /// (Figure 2: votedFor persisted before responding) and an accepted append (DESIGN §4:
    /// followers acknowledge only durable entries).
    fn release(&mut self, node: usize, group: usize, messages: Vec<Message>) -> Checked<()> {
        let gid = group_id(group);
        #[cfg(test)]
        let release_checks = self.config.release_checks;
        #[cfg(not(test))]
        let release_checks = true;
        for message in messages {
            if let MessageBody::InstallSnapshot { .. } = message.body {
                // The layer around the core streams the snapshot's data in chunks.
                self.start_transfer(node, group, message)?;
                continue;
            }
            let storage = &self.nodes[node].storages[group];
            match message.body {
                MessageBody::VoteResponse { granted: true } => {
                    self.checkers[group]
                        .on_vote_granted(message.from, message.term, message.to)
                        .map_err(|detail| violation(gid, detail))?;
                    let durable = storage.durable().hard_state;
                    // Durable: this very vote, or a later term (after which the node
                    // never votes in this term again).
                    let vote_durable = durable.term > message.term
                        || (durable.term == message.term && durable.vote == Some(message.to));
                    if release_checks && !vote_durable {
                        return Err(violation(
                            gid,
                            format!(
                                "vote durability: node {} grants {} in term {} but its durable \
                                 hard state is {durable:?}",
                                message.from, message.to, message.term
                            ),
                        ));
                    }
                }
                MessageBody::AppendResponse(AppendResponse::Accepted { last_index }) => {
                    // A write held back with this ack is durable by now, and no later one
                    // is: the durable log is what the ack speaks for.
                    let durable = storage.durable();
                    if release_checks && durable.last_index() < last_index {
                        return Err(violation(
                            gid,
                            format!(
                                "append durability: node {} acknowledges index {last_index} but \
                                 its durable log ends at {}",
                                message.from,
                                durable.last_id()
                            ),
                        ));
                    }
                }
                _ => {}
            }
            self.network
                .send(self.now, gid, Payload::Raft(message), &mut self.prng);
        }
        Ok(())
    }

    /// Client traffic of one tick: proposals mostly to the leader, reads anywhere, and now
    /// and then a leadership transfer.
    fn client_requests(&mut self, random_traffic: bool) -> Checked<()> {
        if !random_traffic {
            return Ok(());
        }
        for group in 0..self.config.group_count {
            if self.prng.chance(self.scenario.propose_per_mille, 1000) {
                self.propose(group)?;
            }
            if self.prng.chance(self.scenario.read_per_mille, 1000)
                && let Some(node) = self.random_up_node()
            {
                self.next_read_context += 1;
                let context = ReadContext(self.next_read_context);
                if self.nodes[node].replicas[group]
                    .raft
                    .read_index(context)
                    .is_ok()
                {
                    self.checkers[group].on_read_requested(context);
                    self.report.reads_requested += 1;
                }
                self.drain(node, group)?;
            }
            if self.prng.chance(self.scenario.transfer_per_mille, 1000)
                && let Some(seen) = self.leader_of(group)
            {
                let target = NodeId(self.prng.range_inclusive(1, self.config.node_count as u64));
                if target != self.nodes[seen.node].id {
                    let _refused = self.nodes[seen.node].replicas[group]
                        .raft
                        .transfer_leader(target);
                    self.report.transfers += 1;
                    self.drain(seen.node, group)?;
                }
            }
        }
        Ok(())
    }

    fn propose(&mut self, group: usize) -> Checked<()> {
        let target = match self.leader_of(group) {
            Some(seen) if self.prng.chance(9, 10) => Some(seen.node),
            _ => self.random_up_node(),
        };
        let Some(node) = target else {
            return Ok(());
        };
        self.next_command += 1;
        let data = Bytes::from(format!("n{} c{}", node + 1, self.next_command));
        let result = self.nodes[node].replicas[group].raft.propose(data);
        self.trace(node, group, || format!("propose: {result:?}"));
        match result {
            Ok(_) => self.report.proposals_accepted += 1,
            Err(_) => self.report.proposals_refused += 1,
        }
        self.drain(node, group)
    }

    fn random_up_node(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|&node| self.nodes[node].is_up())
            .collect();
        self.prng.choose(&up).copied()
    }

    /// Partitions (symmetric and one-way) and crashes, within the budget of a minority down,
    /// and the restarts that end crashes.
    fn inject_faults(&mut self) -> Checked<()> {
        if self
            .partition_until_tick
            .is_some_and(|until| self.tick >= until)
        {
            self.network.heal();
            self.partition_until_tick = None;
        } else if self.partition_until_tick.is_none()
            && self.prng.chance(self.scenario.partition_per_mille, 1000)
        {
            self.start_partition();
        }
        let down = self.nodes.iter().filter(|node| !node.is_up()).count();
        let budget = (self.config.node_count - 1) / 2;
        if down < budget && self.prng.chance(self.scenario.crash_per_mille, 1000) {
            self.crash_one()?;
        }
        let down = self.nodes.iter().filter(|node| !node.is_up()).count();
        if down < budget
            && self
                .prng
                .chance(self.scenario.snapshot_crash_per_mille, 1000)
        {
            self.crash_snapshot_node()?;
        }
        for node in 0..self.nodes.len() {
            if self.nodes[node]
                .restart_at_tick
                .is_some_and(|at| self.tick >= at)
            {
                self.restart_node(node)?;
            }
        }
        Ok(())
    }

    fn start_partition(&mut self) {
        let count = self.config.node_count;
        let ids: Vec<NodeId> = self.nodes.iter().map(|node| node.id).collect();
        let mut chosen = ids[self.prng.below(count as u64) as usize];
        let group = self.prng.below(self.config.group_count as u64) as usize;
        let mut kind = self.prng.below(5);
        if self.scenario.isolate_leaders && self.prng.chance(1, 2) {
            kind = 4;
        }
        if kind == 4 {
            // A leader cut off both ways: it goes on accepting proposals it cannot commit,
            // while the rest elect another leader.
            chosen = self
                .leader_of(group)
                .map_or(chosen, |seen| self.nodes[seen.node].id);
            kind = 1;
            for &other in ids.iter().filter(|&&id| id != chosen) {
                self.network.block(chosen, other);
            }
        }
        match kind {
            // A random minority cut off from the rest, both ways.
            0 => {
                let minority = self.prng.range_inclusive(1, (count as u64 - 1) / 2 + 1) as usize;
                let mut shuffled = ids.clone();
                for index in (1..shuffled.len()).rev() {
                    let other = self.prng.below(index as u64 + 1) as usize;
                    shuffled.swap(index, other);
                }
                let (inside, outside) = shuffled.split_at(minority.min(count));
                for &a in inside {
                    for &b in outside {
                        self.network.block(a, b);
                        self.network.block(b, a);
                    }
                }
            }
            // One node can send but not hear.
            1 => {
                for &other in ids.iter().filter(|&&id| id != chosen) {
                    self.network.block(other, chosen);
                }
            }
            // One node can hear but not send.
            2 => {
                for &other in ids.iter().filter(|&&id| id != chosen) {
                    self.network.block(chosen, other);
                }
            }
            // Random directed links fail.
            _ => {
                for &a in &ids {
                    for &b in &ids {
                        if a != b && self.prng.chance(1, 3) {
                            self.network.block(a, b);
                        }
                    }
                }
            }
        }
        self.report.partitions += 1;
        if self.config.trace {
            println!(
                "[{}] partition {:?}",
                self.tick,
                self.network.blocked_links()
            );
        }
        let duration = self
            .prng
            .range_inclusive(3, self.scenario.partition_ticks_max);
        self.partition_until_tick = Some(self.tick + duration);
    }

    /// Crash a node, leaders preferred (term churn is where Figure 8 lives).
    fn crash_one(&mut self) -> Checked<()> {
        let leaders: Vec<usize> = (0..self.config.group_count)
            .filter_map(|group| self.leader_of(group).map(|seen| seen.node))
            .collect();
        let victim = if !leaders.is_empty() && self.prng.chance(2, 3) {
            self.prng.choose(&leaders).copied()
        } else {
            self.random_up_node()
        };
        let Some(node) = victim else {
            return Ok(());
        };
        self.crash_node(node)
    }

    /// Crash a node that is staging a snapshot's chunks or waiting for an installed
    /// snapshot to be durable: the staging is lost, and the install survives or not with
    /// the write that carries it.
    fn crash_snapshot_node(&mut self) -> Checked<()> {
        let busy: Vec<usize> = (0..self.nodes.len())
            .filter(|&node| {
                let n = &self.nodes[node];
                n.is_up()
                    && (n.storages.iter().any(|s| s.snapshot_pending())
                        || n.staging
                            .iter()
                            .any(|staged| staged.as_ref().is_some_and(|i| !i.is_complete())))
            })
            .collect();
        let Some(&node) = self.prng.choose(&busy) else {
            return Ok(());
        };
        self.report.snapshot_crashes += 1;
        self.crash_node(node)
    }

    fn crash_node(&mut self, node: usize) -> Checked<()> {
        for group in 0..self.config.group_count {
            let storage = &mut self.nodes[node].storages[group];
            let survivors = self.prng.below(storage.pending_count() as u64 + 1) as usize;
            storage.crash(survivors).map_err(|error| {
                violation(group_id(group), format!("node {}: {error}", node + 1))
            })?;
        }
        self.trace(node, 0, || "crash".to_string());
        self.nodes[node].replicas.clear();
        self.nodes[node].outgoing.clear();
        for staged in &mut self.nodes[node].staging {
            *staged = None;
        }
        let down_ticks = self.prng.range_inclusive(2, self.scenario.down_ticks_max);
        self.nodes[node].restart_at_tick = Some(self.tick + down_ticks);
        self.report.crashes += 1;
        Ok(())
    }

    /// Rebuild every group of a node from its durable log alone; the in-memory tail is
    /// empty, so the core must fetch what it needs.
    fn restart_node(&mut self, node: usize) -> Checked<()> {
        assert!(
            !self.nodes[node].is_up(),
            "sim: restart of node {} which is up",
            node + 1
        );
        self.nodes[node].restart_at_tick = None;
        self.trace(node, 0, || "restart".to_string());
        for group in 0..self.config.group_count {
            let durable = self.nodes[node].storages[group].durable();
            // DESIGN §4: the commit index is persisted, but never ahead of the entries.
            if durable.hard_state.commit > durable.last_index() {
                return Err(violation(
                    group_id(group),
                    format!(
                        "node {}: durable commit {} beyond the durable log's end {}",
                        node + 1,
                        durable.hard_state.commit,
                        durable.last_id()
                    ),
                ));
            }
            // The state machine restarts from the snapshot, if any (thesis §5).
            let snapshot = durable.snapshot();
            let restored = RestoredState {
                hard_state: durable.hard_state,
                membership: self.membership.clone(),
                snapshot: snapshot.map(|snapshot| SnapshotMeta {
                    last: snapshot.last,
                    membership: self.membership.clone(),
                }),
                term_runs: durable.term_runs(),
                last_index: durable.last_index(),
                applied: durable.snapshot_index(),
                vote_floor: LogIndex::ZERO,
            };
            let replica = self.new_replica(node, group, restored, snapshot);
            self.nodes[node].replicas.push(replica);
        }
        self.report.restarts += 1;
        for group in 0..self.config.group_count {
            self.drain(node, group)?;
        }
        Ok(())
    }

    fn start_node(&mut self, node: usize) {
        for group in 0..self.config.group_count {
            let restored = RestoredState::bootstrap(self.membership.clone());
            let replica = self.new_replica(node, group, restored, None);
            self.nodes[node].replicas.push(replica);
        }
    }

    fn new_replica(
        &mut self,
        node: usize,
        group: usize,
        restored: RestoredState,
        snapshot: Option<SimSnapshot>,
    ) -> Replica {
        let id = self.nodes[node].id;
        let mut config = RaftConfig::new(id, group_id(group));
        config.pre_vote = self.scenario.pre_vote;
        config.check_quorum = self.scenario.check_quorum;
        config.append_entries_max = self.scenario.append_entries_max;
        config.inflight_appends_max = self.scenario.inflight_appends_max;
        #[cfg(test)]
        {
            config.canary = self.config.canary;
        }
        let term = restored.hard_state.term;
        let raft = RaftNode::new(config, restored, self.prng.fork());
        Replica {
            raft,
            role: RoleKind::Follower,
            term,
            applied: snapshot.map_or(LogIndex::ZERO, |snapshot| snapshot.last.index),
            fetch: None,
            state_chain: snapshot.map_or(0, |snapshot| snapshot.chain),
            applied_id: snapshot.map_or(EntryId::ZERO, |snapshot| snapshot.last),
        }
    }

    fn check_durability(&self) -> Checked<()> {
        for group in 0..self.config.group_count {
            let logs = self.nodes.iter().map(|node| node.storages[group].durable());
            self.checkers[group]
                .check_durable_on_quorum(logs)
                .map_err(|detail| violation(group_id(group), detail))?;
        }
        Ok(())
    }

    fn finish_report(&mut self) {
        self.report.ticks = self.config.safety_ticks;
        self.report.network = self.network.stats;
        self.report.committed_entries = self
            .checkers
            .iter()
            .map(|checker| checker.committed_index().get())
            .sum();
        self.report.reads_checked = self.checkers.iter().map(|c| c.reads_checked).sum();
        self.report.leaders = self.checkers.iter().map(|c| c.leader_count() as u64).sum();
    }

    fn node_index(&self, id: NodeId) -> Option<usize> {
        let index = usize::try_from(id.get().checked_sub(1)?).ok()?;
        (index < self.nodes.len()).then_some(index)
    }

    fn group_index(&self, group: GroupId) -> Option<usize> {
        let index = usize::try_from(group.get().checked_sub(1)?).ok()?;
        (index < self.config.group_count).then_some(index)
    }
}

/// One line describing a `Ready`, for traces.
fn show_ready(ready: &Ready) -> String {
    let persisted = ready.persist.as_ref().map(|p| {
        let first = p.entries.first().map(|e| e.id);
        let last = p.entries.last().map(|e| e.id);
        let snapshot = p.snapshot.as_ref().map(|s| s.last);
        (p.position, snapshot, first, last, p.hard_state)
    });
    let applied = (
        ready.committed_entries.first().map(|e| e.id),
        ready.committed_entries.last().map(|e| e.id),
    );
    format!(
        "ready soft={:?} persist={persisted:?} now={:?} after={:?} apply={applied:?} \
         reads={:?} fetch={:?}",
        ready.soft_state,
        ready.messages,
        ready.messages_after_persist,
        ready.read_states,
        ready.fetch
    )
}

/// Groups are numbered from 1 (an id is never 0); index `g` is group `g + 1`.
fn group_id(group: usize) -> GroupId {
    GroupId(u32::try_from(group + 1).unwrap_or(u32::MAX))
}
