//! The per-core `Shard` (DESIGN §1, §2): the Raft groups of one core with their key-value
//! state machines and the clients waiting on them. It takes inputs (a tick, a peer batch, a
//! client request, "WAL append durable", "entries fetched") and, in `round`, returns what to
//! do: batches to send now, one WAL append for all groups, replies to clients, fetches.
//!
//! Requests that reach a node which does not lead the key's group are served without the
//! client knowing who leads: writes travel to the leader inside the peer batch, as the
//! client's own frame bytes, and the reply travels back; reads use ReadIndex (thesis §6.4)
//! through the leader and are served from this node's state machine once it has applied far
//! enough.
//!
//! Pure: this room must not import the async runtime, read real time, do I/O or log: what the
//! operator should see leaves as `ShardEvent`s in the round's output. Time is ticks.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use thiserror::Error;

use crate::ids::{CoreId, EntryId, GroupId, LogIndex, NodeId, Term, Ticks};
use crate::kv::{Command, KvMachine, Outcome};
use crate::prng::Prng;
use crate::raft::{
    Entry, EntryKind, Fetch, Membership, Message, Persist, PersistPosition, ProposeError,
    RaftConfig, RaftNode, ReadContext, ReadIndexError, RoleKind, SoftState, TransferError,
};
use crate::shard::multi::{MultiRaft, MultiRaftError, RoundOutput};

mod snapshots;

use crate::wire::batch::{Batch, Forward};
use crate::wire::client::{
    ClientOp, ClientRequest, ClientResponse, ErrorCode, GroupStatus, Reply, ReplyKind, RequestId,
    decode_request, decode_response, encode_response,
};
use snapshots::GroupSnapshots;
pub use snapshots::{
    GroupRestart, Restart, SNAPSHOT_CHUNKS_AHEAD_MAX, SnapshotPolicy, SnapshotWrite, restart_state,
};

/// Nodes a forwarded write may pass through before it is refused (leadership moving while it
/// travels).
pub const FORWARD_HOPS_MAX: u8 = 3;
/// Client requests one core holds waiting for a leader to be elected.
pub const PARKED_REQUESTS_MAX: usize = 65_536;
/// Requests one core has in flight (writes proposed, reads confirming, writes forwarded).
pub const WAITERS_MAX: usize = 1 << 20;

/// The answer to a multi-key write whose keys belong to more than one group (one Raft entry
/// can only go to one group).
pub const CROSS_GROUP_MESSAGE: &str = "keys in request don't hash to the same group";

/// The group a key belongs to; the same on every node.
pub fn group_of_key(key: &[u8], groups_total: u32) -> GroupId {
    assert!(groups_total > 0, "group_of_key: no groups");
    GroupId(crc32c::crc32c(key) % groups_total)
}

/// The core that runs a group; the same on every node, so core i talks to core i of its peers.
pub fn core_of_group(group: GroupId, cores: usize) -> CoreId {
    assert!(
        cores > 0 && cores <= usize::from(u16::MAX),
        "core_of_group: {cores} cores"
    );
    CoreId((group.0 as usize % cores) as u16)
}

#[derive(Clone, Debug)]
pub struct ShardConfig {
    pub node: NodeId,
    pub core: CoreId,
    pub cores: usize,
    pub groups_total: u32,
    /// Every node of the cluster, this one included: the voters of every group.
    pub nodes: Vec<NodeId>,
    pub election_timeout_ticks: Ticks,
    pub heartbeat_interval_ticks: Ticks,
    /// A request not answered within this many ticks is answered `Timeout`.
    pub request_timeout_ticks: Ticks,
    pub seed: u64,
    pub snapshot: SnapshotPolicy,
    /// Bytes of records one WAL segment holds: one group's persist must fit in it, so each
    /// group's Raft limits are kept within it (`RaftConfig::fit_persists_within`).
    pub wal_record_capacity_bytes: u64,
}

impl ShardConfig {
    /// The groups this core runs, in id order.
    pub fn groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        (0..self.groups_total)
            .map(GroupId)
            .filter(|&g| core_of_group(g, self.cores) == self.core)
    }

    fn local_index(&self, group: GroupId) -> usize {
        group.0 as usize / self.cores
    }
}

/// Where a client's reply goes: a connection of this node, living on `core`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    pub core: CoreId,
    pub connection: u64,
}

/// Names one WAL append asked for by a round; answered in order by `on_wal_durable`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalTicket(pub u64);

/// What one round asks of the driver.
#[derive(Debug, Default)]
pub struct ShardOutput {
    /// Peer batches: send now (a leader's appends go out in parallel with its own write).
    pub batches: Vec<Batch>,
    /// Append and sync these in one write, strictly after every earlier ticket, then call
    /// `on_wal_durable` with the ticket.
    pub wal_append: Option<(WalTicket, Vec<(GroupId, Persist)>)>,
    pub replies: Vec<(Origin, ClientResponse)>,
    /// Read these entries back from the WAL and hand them to `on_fetched`.
    pub fetches: Vec<(GroupId, Fetch)>,
    /// What happened to this core's groups since the last round, for the operator's log
    /// (this room does not log: the driver does, with the real time).
    pub events: Vec<ShardEvent>,
    /// Steps of the snapshots this core takes, for the snapshot writer, in order.
    pub snapshot_writes: Vec<SnapshotWrite>,
    /// A leader's offers of a snapshot to a follower (`InstallSnapshot`): stream the group's
    /// snapshot file ending at the offer's `last` to `to`, step the offer there once every
    /// byte is staged, and report the end of the transfer with `on_snapshot_sent`.
    pub snapshot_offers: Vec<(GroupId, Message)>,
    /// The WAL no longer needs the entries of these groups up to these indices (folded into
    /// snapshots the core keeps): compact them, in order with the appends.
    pub wal_compactions: Vec<(GroupId, LogIndex)>,
}

impl ShardOutput {
    pub fn clear(&mut self) {
        self.batches.clear();
        self.wal_append = None;
        self.replies.clear();
        self.fetches.clear();
        self.events.clear();
        self.snapshot_writes.clear();
        self.snapshot_offers.clear();
        self.wal_compactions.clear();
    }
}

/// Something about one of this core's groups (or a peer) that the operator should see in
/// the log. Every group event names the group and the term it happened in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardEvent {
    /// This node's election timer fired: it became a pre-candidate (thesis §9.6) or a
    /// candidate (paper §5.2) at `term`.
    ElectionStarted {
        group: GroupId,
        term: Term,
        pre_vote: bool,
    },
    /// This node won the election of `term` and leads the group (paper §5.2).
    ElectionWon { group: GroupId, term: Term },
    /// A candidacy of this node ended without leadership: another node leads or a higher
    /// term arrived (paper §5.2).
    ElectionLost {
        group: GroupId,
        term: Term,
        leader: Option<NodeId>,
    },
    /// The group's term or known leader changed.
    LeaderChanged {
        group: GroupId,
        term: Term,
        leader: Option<NodeId>,
        role: RoleKind,
    },
    /// While stopping, this node asked `target` to take over the group (thesis §3.10).
    TransferStarted {
        group: GroupId,
        term: Term,
        target: NodeId,
    },
    /// This node stopped leading the group without a newer term: it no longer heard from
    /// a majority (check-quorum, thesis §6.2).
    SteppedDown { group: GroupId, term: Term },
    /// While stopping, this node stopped leading the group because a peer took over with a
    /// newer term; `leader` is the new leader if already known.
    TransferDone {
        group: GroupId,
        term: Term,
        leader: Option<NodeId>,
    },
    /// While stopping, a hand-over of the group did not happen: `target` did not take over
    /// within its time, or no peer (`None`) was heard from recently enough to be asked.
    TransferFailed {
        group: GroupId,
        term: Term,
        target: Option<NodeId>,
    },
    /// `count` client requests of the group were answered with an error this round
    /// because they could not complete in time.
    RequestsFailed {
        group: GroupId,
        term: Term,
        count: usize,
        failure: RequestFailure,
    },
    /// A peer forwarded a request whose bytes do not decode.
    BadForward { from: NodeId, error: String },
    /// A snapshot of the group at `index` is durable; the log is compacted (thesis §5).
    SnapshotTaken {
        group: GroupId,
        term: Term,
        index: LogIndex,
    },
    /// Taking a snapshot at `index` failed; it is tried again later.
    SnapshotFailed {
        group: GroupId,
        term: Term,
        index: LogIndex,
        reason: String,
    },
    /// A snapshot received from the leader, ending at `index`, is the group's state now.
    SnapshotInstalled {
        group: GroupId,
        term: Term,
        index: LogIndex,
    },
    /// At restart, no snapshot that loads continues the group's WAL (`reason`): the group
    /// starts empty and waits for its leader's snapshot, without voting until its log
    /// reaches `vote_floor` again.
    StateLost {
        group: GroupId,
        term: Term,
        vote_floor: LogIndex,
        reason: String,
    },
    /// A snapshot received from the leader was refused by the group's Raft core.
    SnapshotRefused {
        group: GroupId,
        term: Term,
        index: LogIndex,
        reason: String,
    },
}

/// Why client requests of a group failed (see `ShardEvent::RequestsFailed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFailure {
    /// Accepted but not answered within the request timeout.
    TimedOut,
    /// No leader was elected for the group within the request timeout.
    NoLeader,
}

#[derive(Debug, Error)]
pub enum ShardError {
    #[error("batch from node {from}: {source}")]
    Batch {
        from: NodeId,
        source: MultiRaftError,
    },
    #[error("node {node} is not a member of this cluster")]
    UnknownNode { node: NodeId },
}

/// Who is waiting for a request's answer.
#[derive(Clone, Copy, Debug)]
enum ReplyTo {
    Client {
        origin: Origin,
        id: RequestId,
    },
    /// A node that forwarded the request as `token`; the reply keeps the client's own `id`.
    Peer {
        node: NodeId,
        token: u64,
        id: RequestId,
    },
}

impl ReplyTo {
    fn id(&self) -> RequestId {
        match *self {
            ReplyTo::Client { id, .. } | ReplyTo::Peer { id, .. } => id,
        }
    }
}

struct WriteWaiter {
    reply_to: ReplyTo,
    term: Term,
}

struct ReadWaiter {
    reply_to: ReplyTo,
    group: GroupId,
    key: Bytes,
    /// The group's term and leader as this node saw them when the read was issued; the core
    /// drops the read if they change.
    issued: (Term, Option<NodeId>),
}

struct ForwardWaiter {
    reply_to: ReplyTo,
    kind: ReplyKind,
    group: GroupId,
}

/// A request waiting for its group to have a leader.
struct Parked {
    reply_to: ReplyTo,
    request: ClientRequest,
    raw: Bytes,
    hops: u8,
    deadline: u64,
}

#[derive(Clone, Copy, Debug)]
enum WaiterKey {
    Write(GroupId, LogIndex),
    Read(u64),
    Forward(u64),
}

/// Per group: the state machine and what this node last learned of the group's roles.
struct GroupState {
    machine: KvMachine,
    soft: SoftState,
    snapshots: GroupSnapshots,
}

pub struct Shard {
    config: ShardConfig,
    multi: MultiRaft<RaftNode>,
    groups: Vec<GroupState>,
    now_ticks: u64,
    round_output: RoundOutput,
    next_ticket: u64,
    /// Appends handed out and not yet durable, oldest first, with the positions they reach.
    tickets: VecDeque<(WalTicket, Vec<(GroupId, PersistPosition)>)>,
    writes: HashMap<(GroupId, LogIndex), WriteWaiter>,
    reads: HashMap<u64, ReadWaiter>,
    forwarded: HashMap<u64, ForwardWaiter>,
    /// Deadlines of the waiters above, in creation order, which is deadline order too (every
    /// request gets the same timeout). Answered waiters are skipped when their turn comes.
    deadlines: VecDeque<(u64, WaiterKey)>,
    parked: VecDeque<Parked>,
    next_read_context: u64,
    next_token: u64,
    outgoing_forwards: Vec<(NodeId, Forward)>,
    replies: Vec<(Origin, ClientResponse)>,
    shutting_down: bool,
    /// While stopping: the hand-over asked for each group this node still leads.
    transfers: HashMap<GroupId, TransferAttempt>,
    /// Per node of `config.nodes` (same positions): the tick its last batch arrived.
    last_heard_ticks: Vec<Option<u64>>,
    events: Vec<ShardEvent>,
    builder: FlatBufferBuilder<'static>,
    /// Groups with a snapshot in progress.
    taking_count: usize,
    /// Compactions decided since the last round, for the WAL.
    wal_compactions: Vec<(GroupId, LogIndex)>,
    /// The snapshots staged (their offers stepped) since the last round, in order.
    staged_ids: Vec<crate::kv::store::SnapshotId>,
}

/// A leader transfer this node asked for while stopping (thesis §3.10).
#[derive(Clone, Copy, Debug)]
struct TransferAttempt {
    /// `None`: no live peer could be asked.
    target: Option<NodeId>,
    started_tick: u64,
    /// Attempts made for the group so far; picks the next live peer after a failure.
    attempt: usize,
}

impl Shard {
    /// The shard of `config.core`, each group restarted from its newest snapshot and the
    /// WAL's tail (`restart_state`), or bootstrapped with every node as a voter where nothing
    /// is stored. State machines are rebuilt by applying the committed log after the snapshot.
    pub fn new(config: ShardConfig, restored: &mut dyn FnMut(GroupId) -> GroupRestart) -> Shard {
        assert!(
            config.nodes.contains(&config.node),
            "shard: node {} not in {:?}",
            config.node,
            config.nodes
        );
        let membership = Membership::new(config.nodes.clone());
        let group_ids: Vec<GroupId> = config.groups().collect();
        let mut multi = MultiRaft::with_capacity(config.node, group_ids.len(), config.groups_total);
        let mut seeds = Prng::new(config.seed ^ (u64::from(config.core.0) << 32) ^ config.node.0);
        let mut groups = Vec::with_capacity(group_ids.len());
        let mut wal_compactions = Vec::new();
        let mut events = Vec::new();
        for &group in &group_ids {
            assert_eq!(
                config.local_index(group),
                groups.len(),
                "shard: group {group} out of order"
            );
            let restart = restart_state(group, restored(group), membership.clone());
            let state = restart.state;
            if let Some(index) = restart.wal_compaction {
                wal_compactions.push((group, index));
            }
            if let Some(lost) = restart.lost {
                events.push(ShardEvent::StateLost {
                    group,
                    term: state.hard_state.term,
                    vote_floor: state.vote_floor,
                    reason: lost.to_string(),
                });
            }
            let soft = SoftState {
                role: RoleKind::Follower,
                term: state.hard_state.term,
                leader: None,
            };
            let mut raft_config = RaftConfig::new(config.node, group);
            raft_config.election_timeout_ticks = config.election_timeout_ticks;
            raft_config.heartbeat_interval_ticks = config.heartbeat_interval_ticks;
            raft_config.fit_persists_within(config.wal_record_capacity_bytes);
            let raft = RaftNode::new(raft_config, state, seeds.fork());
            multi
                .add_group(group, raft)
                .unwrap_or_else(|e| panic!("shard: adding group {group}: {e}"));
            let snapshots = GroupSnapshots {
                kept: restart.kept,
                applied_term: restart.applied_term,
                ..GroupSnapshots::default()
            };
            groups.push(GroupState {
                machine: restart.machine,
                soft,
                snapshots,
            });
        }
        let last_heard_ticks = vec![None; config.nodes.len()];
        Shard {
            config,
            multi,
            groups,
            now_ticks: 0,
            round_output: RoundOutput::default(),
            next_ticket: 1,
            tickets: VecDeque::new(),
            writes: HashMap::new(),
            reads: HashMap::new(),
            forwarded: HashMap::new(),
            deadlines: VecDeque::new(),
            parked: VecDeque::new(),
            next_read_context: 1,
            next_token: 1,
            outgoing_forwards: Vec::new(),
            replies: Vec::new(),
            shutting_down: false,
            transfers: HashMap::new(),
            last_heard_ticks,
            events,
            builder: FlatBufferBuilder::new(),
            taking_count: 0,
            wal_compactions,
            staged_ids: Vec::new(),
        }
    }

    pub fn config(&self) -> &ShardConfig {
        &self.config
    }

    /// One tick of Raft time for every group; expires requests past their deadline and
    /// retries those waiting for a leader.
    pub fn tick(&mut self) {
        self.now_ticks += 1;
        self.multi.tick();
        self.expire();
        if self.shutting_down {
            self.transfer_leaderships();
        }
        let parked = std::mem::take(&mut self.parked);
        for request in parked {
            if request.deadline <= self.now_ticks {
                let message = format!(
                    "no leader for the key's group within {} ticks",
                    self.config.request_timeout_ticks
                );
                if let Some(key) = op_key(&request.request.op) {
                    let group = group_of_key(key, self.config.groups_total);
                    self.count_failure(group, RequestFailure::NoLeader);
                }
                self.reply_error(request.reply_to, ErrorCode::Unavailable, message);
            } else {
                self.route(request);
            }
        }
    }

    pub fn on_peer_batch(&mut self, mut batch: Batch) -> Result<(), ShardError> {
        let from = batch.from;
        let Some(position) = self.config.nodes.iter().position(|&n| n == from) else {
            return Err(ShardError::UnknownNode { node: from });
        };
        self.last_heard_ticks[position] = Some(self.now_ticks);
        let forwards = std::mem::take(&mut batch.forwards);
        self.multi
            .step_batch(batch)
            .map_err(|source| ShardError::Batch { from, source })?;
        for forward in forwards {
            self.on_forward(from, forward);
        }
        Ok(())
    }

    /// A decoded client request and its frame payload (kept for forwarding to a leader).
    pub fn on_client_request(&mut self, origin: Origin, request: ClientRequest, raw: Bytes) {
        let reply_to = ReplyTo::Client {
            origin,
            id: request.id,
        };
        self.accept(reply_to, request, raw, 0);
    }

    pub fn on_wal_durable(&mut self, ticket: WalTicket) {
        let Some((expected, positions)) = self.tickets.pop_front() else {
            panic!("shard: WAL ticket {ticket:?} durable but none outstanding");
        };
        assert_eq!(expected, ticket, "shard: WAL tickets out of order");
        for (group, position) in positions {
            self.multi
                .on_persisted(group, position)
                .unwrap_or_else(|e| panic!("shard: persisted {position:?} of group {group}: {e}"));
        }
    }

    pub fn on_fetched(&mut self, group: GroupId, entries: Vec<Entry>) {
        self.multi
            .on_fetched(group, entries)
            .unwrap_or_else(|e| panic!("shard: fetched for group {group}: {e}"));
    }

    /// Starts a graceful stop: leaderships are handed to peers, new requests are refused
    /// with `ShuttingDown`, requests already accepted still complete.
    pub fn begin_shutdown(&mut self) {
        self.shutting_down = true;
        for request in std::mem::take(&mut self.parked) {
            self.reply_error(
                request.reply_to,
                ErrorCode::ShuttingDown,
                "the node is stopping".into(),
            );
        }
        self.transfer_leaderships();
    }

    /// Whether no group is led by this node any more (or there is no peer to lead it).
    pub fn is_drained(&self) -> bool {
        self.config.nodes.len() == 1 || self.groups.iter().all(|g| g.soft.role != RoleKind::Leader)
    }

    pub fn has_work(&self) -> bool {
        self.multi.has_work()
            || !self.outgoing_forwards.is_empty()
            || !self.replies.is_empty()
            || self.snapshot_has_work()
    }

    /// Requests this core is waiting on.
    pub fn in_flight_count(&self) -> usize {
        self.writes.len() + self.reads.len() + self.forwarded.len() + self.parked.len()
    }

    pub fn status(&self) -> Vec<GroupStatus> {
        self.config
            .groups()
            .filter_map(|group| {
                let status = self.multi.group(group)?.status();
                Some(GroupStatus {
                    group,
                    leader: status.leader,
                    term: status.term,
                    commit: status.commit,
                    applied: status.applied,
                    role: status.role,
                })
            })
            .collect()
    }

    /// One round (DESIGN §2): collects the groups' Readies, applies what committed, answers
    /// reads, and fills `out` (cleared first).
    pub fn round(&mut self, out: &mut ShardOutput) {
        out.clear();
        let mut round = std::mem::take(&mut self.round_output);
        self.multi.round(&mut round);
        for (group, soft) in round.soft_states.drain(..) {
            self.on_soft_state(group, soft);
        }
        for index in 0..round.persists.len() {
            if let Some(meta) = round.persists[index].persist.snapshot.clone() {
                self.install_staged(round.persists[index].group, &meta, out);
            }
        }
        // A staged snapshot whose offer the group did not take is dropped, and its file
        // too (it would count among the files kept, and load at restart as the newest),
        // unless that file is one of the group's own: a snapshot of the same index it keeps
        // (the one just installed, say), or the one it is taking (same last entry, so the
        // same file name). A snapshot staged and then replaced by a newer one before this
        // round is dropped the same way.
        let mut staged_ids = std::mem::take(&mut self.staged_ids);
        staged_ids.dedup();
        for &id in &staged_ids {
            self.group_state(id.group).snapshots.staged = None;
        }
        for id in staged_ids.drain(..) {
            let snapshots = &self.group_state(id.group).snapshots;
            let own = snapshots.kept.contains(&id.last.index)
                || snapshots
                    .taking
                    .as_ref()
                    .is_some_and(|taking| taking.id == id);
            if !own {
                out.snapshot_writes.push(SnapshotWrite::Discard { id });
            }
        }
        self.staged_ids = staged_ids;
        // Compactions go to the WAL before this round's append: both are in order there.
        out.wal_compactions.append(&mut self.wal_compactions);
        if !round.persists.is_empty() {
            let ticket = WalTicket(self.next_ticket);
            self.next_ticket += 1;
            let positions = round
                .persists
                .iter()
                .map(|p| (p.group, p.persist.position))
                .collect();
            self.tickets.push_back((ticket, positions));
            out.wal_append = Some((
                ticket,
                round
                    .persists
                    .drain(..)
                    .map(|p| (p.group, p.persist))
                    .collect(),
            ));
        }
        for committed in round.committed.drain(..) {
            self.apply(committed.group, committed.entries);
        }
        for (group, read) in round.read_states.drain(..) {
            self.serve_read(group, read.context);
        }
        out.fetches.append(&mut round.fetches);
        out.batches.append(&mut round.batches);
        out.snapshot_offers.append(&mut round.snapshot_offers);
        self.snapshot_steps(out);
        self.round_output = round;
        self.attach_forwards(&mut out.batches);
        out.replies.append(&mut self.replies);
        out.events.append(&mut self.events);
    }

    fn group_state(&mut self, group: GroupId) -> &mut GroupState {
        let index = self.config.local_index(group);
        &mut self.groups[index]
    }

    fn on_soft_state(&mut self, group: GroupId, soft: SoftState) {
        let shutting_down = self.shutting_down;
        let state = self.group_state(group);
        let old = state.soft;
        state.soft = soft;
        self.report_soft_state(group, old, soft, shutting_down);
        // The core drops pending ReadIndex requests when leadership moves; answer those
        // issued under another term or leader.
        if old.leader != soft.leader || old.term != soft.term {
            let now = (soft.term, soft.leader);
            let lost: Vec<u64> = self
                .reads
                .iter()
                .filter(|(_, r)| r.group == group && r.issued != now)
                .map(|(&c, _)| c)
                .collect();
            for context in lost {
                if let Some(read) = self.reads.remove(&context) {
                    let message =
                        "leadership changed while the read was confirmed; retry".to_string();
                    self.reply_error(read.reply_to, ErrorCode::Unavailable, message);
                }
            }
        }
    }

    /// Events for a change of role, term or leader (paper §5.2; thesis §3.10, §9.6).
    fn report_soft_state(
        &mut self,
        group: GroupId,
        old: SoftState,
        soft: SoftState,
        shutting_down: bool,
    ) {
        let term = soft.term;
        let campaigning = |role| matches!(role, RoleKind::PreCandidate | RoleKind::Candidate);
        if campaigning(soft.role) && (old.role != soft.role || old.term != soft.term) {
            let pre_vote = soft.role == RoleKind::PreCandidate;
            let event = ShardEvent::ElectionStarted {
                group,
                term,
                pre_vote,
            };
            self.events.push(event);
        }
        if soft.role == RoleKind::Leader && old.role != RoleKind::Leader {
            self.events.push(ShardEvent::ElectionWon { group, term });
        }
        if campaigning(old.role) && soft.role == RoleKind::Follower {
            let leader = soft.leader;
            let event = ShardEvent::ElectionLost {
                group,
                term,
                leader,
            };
            self.events.push(event);
        }
        if old.role == RoleKind::Leader && soft.role != RoleKind::Leader {
            self.transfers.remove(&group);
        }
        if old.role == RoleKind::Leader && soft.role != RoleKind::Leader && old.term == soft.term {
            self.events.push(ShardEvent::SteppedDown { group, term });
        }
        if old.role == RoleKind::Leader && old.term < soft.term && shutting_down {
            let leader = soft.leader;
            let event = ShardEvent::TransferDone {
                group,
                term,
                leader,
            };
            self.events.push(event);
        }
        if old.leader != soft.leader || old.term != soft.term {
            let event = ShardEvent::LeaderChanged {
                group,
                term,
                leader: soft.leader,
                role: soft.role,
            };
            self.events.push(event);
        }
    }

    /// Counts a failed request of `group` into this round's events.
    fn count_failure(&mut self, group: GroupId, failure: RequestFailure) {
        for event in &mut self.events {
            if let ShardEvent::RequestsFailed {
                group: g,
                failure: f,
                count,
                ..
            } = event
                && *g == group
                && *f == failure
            {
                *count += 1;
                return;
            }
        }
        let term = self.group_state(group).soft.term;
        let event = ShardEvent::RequestsFailed {
            group,
            term,
            count: 1,
            failure,
        };
        self.events.push(event);
    }

    fn apply(&mut self, group: GroupId, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(Entry::index) else {
            return;
        };
        for entry in entries {
            let outcome = {
                let state = self.group_state(group);
                state.snapshots.applied_term = entry.term();
                let machine = &mut state.machine;
                match entry.kind {
                    EntryKind::Command => Some(machine.apply(entry.index(), &entry.data)),
                    EntryKind::Empty | EntryKind::Membership => {
                        machine.skip(entry.index());
                        None
                    }
                }
            };
            let Some(waiter) = self.writes.remove(&(group, entry.index())) else {
                continue;
            };
            let reply = match outcome {
                Some(outcome) if waiter.term == entry.term() => outcome_reply(outcome),
                _ => Reply::Error {
                    code: ErrorCode::Unavailable,
                    message: "leadership changed before the write committed; it was not applied"
                        .into(),
                },
            };
            self.reply(waiter.reply_to, reply);
        }
        self.multi
            .on_applied(group, last)
            .unwrap_or_else(|e| panic!("shard: applied {last} of group {group}: {e}"));
        self.maybe_start_snapshot(group);
    }

    fn serve_read(&mut self, group: GroupId, context: ReadContext) {
        let Some(read) = self.reads.remove(&context.0) else {
            return;
        };
        assert_eq!(
            read.group, group,
            "shard: read context {} of group {} answered by {group}",
            context.0, read.group
        );
        let value = self.group_state(group).machine.get(&read.key).cloned();
        self.reply(read.reply_to, Reply::Value(value));
    }

    /// Admission of a new request: refused while stopping or when too much is in flight.
    fn accept(&mut self, reply_to: ReplyTo, request: ClientRequest, raw: Bytes, hops: u8) {
        if self.shutting_down {
            return self.reply_error(
                reply_to,
                ErrorCode::ShuttingDown,
                "the node is stopping".into(),
            );
        }
        if self.in_flight_count() >= WAITERS_MAX {
            return self.reply_error(
                reply_to,
                ErrorCode::Overloaded,
                "too many requests in flight".into(),
            );
        }
        let deadline = self.now_ticks + u64::from(self.config.request_timeout_ticks.get());
        self.route(Parked {
            reply_to,
            request,
            raw,
            hops,
            deadline,
        });
    }

    /// Sends a request where it can be served now, or parks it until its group has a leader.
    fn route(&mut self, request: Parked) {
        let key = match &request.request.op {
            ClientOp::Status => {
                let reply = Reply::Status {
                    groups: self.status(),
                    nodes: Vec::new(),
                };
                return self.reply(request.reply_to, reply);
            }
            ClientOp::Get { key } => key.clone(),
            ClientOp::Write(command) => command.key().clone(),
        };
        let group = group_of_key(&key, self.config.groups_total);
        if let ClientOp::Write(command) = &request.request.op
            && command
                .keys()
                .any(|other| group_of_key(other, self.config.groups_total) != group)
        {
            let message = CROSS_GROUP_MESSAGE.to_string();
            return self.reply_error(request.reply_to, ErrorCode::BadRequest, message);
        }
        if core_of_group(group, self.config.cores) != self.config.core {
            let message = format!("key of group {group} reached core {}", self.config.core);
            return self.reply_error(request.reply_to, ErrorCode::Internal, message);
        }
        match request.request.op.clone() {
            ClientOp::Get { .. } => self.start_read(group, key, request),
            ClientOp::Write(command) => self.start_write(group, &command, request),
            ClientOp::Status => {}
        }
    }

    fn start_read(&mut self, group: GroupId, key: Bytes, request: Parked) {
        let context = self.next_read_context;
        match self
            .multi
            .with_group(group, |raft| raft.read_index(ReadContext(context)))
        {
            Ok(Ok(())) => {
                self.next_read_context += 1;
                let status = self.multi.group(group).map(RaftNode::status);
                let issued = status.map_or((Term::ZERO, None), |s| (s.term, s.leader));
                let read = ReadWaiter {
                    reply_to: request.reply_to,
                    group,
                    key,
                    issued,
                };
                self.reads.insert(context, read);
                self.deadlines
                    .push_back((request.deadline, WaiterKey::Read(context)));
            }
            Ok(Err(ReadIndexError::NoLeader)) => self.park(request),
            Ok(Err(error)) => {
                self.reply_error(request.reply_to, ErrorCode::Overloaded, error.to_string())
            }
            Err(error) => {
                self.reply_error(request.reply_to, ErrorCode::Internal, error.to_string())
            }
        }
    }

    fn start_write(&mut self, group: GroupId, command: &Command, request: Parked) {
        let proposed = self
            .multi
            .with_group(group, |raft| raft.propose(command.encode()));
        let error = match proposed {
            Ok(Ok(EntryId { term, index })) => {
                let waiter = WriteWaiter {
                    reply_to: request.reply_to,
                    term,
                };
                self.writes.insert((group, index), waiter);
                self.deadlines
                    .push_back((request.deadline, WaiterKey::Write(group, index)));
                return;
            }
            Ok(Err(error)) => error,
            Err(error) => {
                return self.reply_error(request.reply_to, ErrorCode::Internal, error.to_string());
            }
        };
        match error {
            ProposeError::NotLeader {
                leader: Some(leader),
            } if leader != self.config.node => {
                self.forward(leader, group, request);
            }
            ProposeError::NotLeader { .. } | ProposeError::TransferInProgress => self.park(request),
            ProposeError::UncommittedFull { .. } => {
                self.reply_error(request.reply_to, ErrorCode::Overloaded, error.to_string());
            }
            ProposeError::TooLarge { .. } => {
                self.reply_error(request.reply_to, ErrorCode::BadRequest, error.to_string());
            }
        }
    }

    fn park(&mut self, request: Parked) {
        if self.parked.len() >= PARKED_REQUESTS_MAX {
            let message = "too many requests waiting for a leader".to_string();
            return self.reply_error(request.reply_to, ErrorCode::Overloaded, message);
        }
        self.parked.push_back(request);
    }

    fn forward(&mut self, leader: NodeId, group: GroupId, request: Parked) {
        if request.hops >= FORWARD_HOPS_MAX {
            let message = format!(
                "leadership kept moving; gave up after {} hops",
                request.hops
            );
            return self.reply_error(request.reply_to, ErrorCode::Unavailable, message);
        }
        let token = self.next_token;
        self.next_token += 1;
        let kind = request.request.op.reply_kind();
        self.forwarded.insert(
            token,
            ForwardWaiter {
                reply_to: request.reply_to,
                kind,
                group,
            },
        );
        self.deadlines
            .push_back((request.deadline, WaiterKey::Forward(token)));
        let forward = Forward::Request {
            token,
            hops: request.hops + 1,
            request: request.raw,
        };
        self.outgoing_forwards.push((leader, forward));
    }

    fn on_forward(&mut self, from: NodeId, forward: Forward) {
        match forward {
            Forward::Request {
                token,
                hops,
                request: raw,
            } => match decode_request(&raw) {
                Ok(request) => {
                    let reply_to = ReplyTo::Peer {
                        node: from,
                        token,
                        id: request.id,
                    };
                    self.accept(reply_to, request, raw, hops);
                }
                Err((id, error)) => {
                    let event = ShardEvent::BadForward {
                        from,
                        error: error.to_string(),
                    };
                    self.events.push(event);
                    let reply_to = ReplyTo::Peer {
                        node: from,
                        token,
                        id: id.unwrap_or(RequestId(0)),
                    };
                    self.reply_error(reply_to, ErrorCode::BadRequest, error.to_string());
                }
            },
            Forward::Reply { token, response } => {
                let Some(waiter) = self.forwarded.remove(&token) else {
                    return;
                };
                match waiter.reply_to {
                    ReplyTo::Peer { node, token, .. } => {
                        self.outgoing_forwards
                            .push((node, Forward::Reply { token, response }));
                    }
                    ReplyTo::Client { .. } => {
                        let reply = match decode_response(&response, waiter.kind) {
                            Ok(decoded) => decoded.reply,
                            Err(error) => Reply::Error {
                                code: ErrorCode::Internal,
                                message: error.to_string(),
                            },
                        };
                        self.reply(waiter.reply_to, reply);
                    }
                }
            }
        }
    }

    fn expire(&mut self) {
        while let Some(&(deadline, key)) = self.deadlines.front() {
            if deadline > self.now_ticks {
                break;
            }
            self.deadlines.pop_front();
            let expired = match key {
                WaiterKey::Write(group, index) => self
                    .writes
                    .remove(&(group, index))
                    .map(|w| (group, w.reply_to)),
                WaiterKey::Read(context) => {
                    self.reads.remove(&context).map(|r| (r.group, r.reply_to))
                }
                WaiterKey::Forward(token) => {
                    self.forwarded.remove(&token).map(|f| (f.group, f.reply_to))
                }
            };
            if let Some((group, reply_to)) = expired {
                self.count_failure(group, RequestFailure::TimedOut);
                let message = format!(
                    "no answer within {} ticks; a write may or may not have taken effect",
                    self.config.request_timeout_ticks
                );
                self.reply_error(reply_to, ErrorCode::Timeout, message);
            }
        }
    }

    /// Hands each group this node leads to a peer heard from within an election timeout
    /// (thesis §3.10), spreading the groups over those peers, so a stopping node does not ask
    /// a node that is down. A hand-over not done when the Raft core abandons it (after an
    /// election timeout) is reported and tried again with the next live peer.
    fn transfer_leaderships(&mut self) {
        if self.config.nodes.len() == 1 {
            return;
        }
        let live = self.live_peers();
        let led: Vec<(GroupId, Term)> = self
            .config
            .groups()
            .map(|g| (g, self.groups[self.config.local_index(g)].soft))
            .filter(|(_, soft)| soft.role == RoleKind::Leader)
            .map(|(g, soft)| (g, soft.term))
            .collect();
        // The Raft core abandons a transfer after one election timeout (thesis §3.10).
        let patience_ticks = u64::from(self.config.election_timeout_ticks.get()) + 1;
        for (group, term) in led {
            let mut attempt = 0;
            let previous = self.transfers.get(&group).copied();
            if let Some(previous) = previous {
                if self.now_ticks < previous.started_tick + patience_ticks {
                    continue;
                }
                if let Some(target) = previous.target {
                    let target = Some(target);
                    let event = ShardEvent::TransferFailed {
                        group,
                        term,
                        target,
                    };
                    self.events.push(event);
                }
                attempt = previous.attempt + 1;
            }
            let mut record = TransferAttempt {
                target: None,
                started_tick: self.now_ticks,
                attempt,
            };
            if live.is_empty() {
                // Reported once until a live peer appears.
                if previous.is_none_or(|p| p.target.is_some()) {
                    let event = ShardEvent::TransferFailed {
                        group,
                        term,
                        target: None,
                    };
                    self.events.push(event);
                }
                self.transfers.insert(group, record);
                continue;
            }
            let target = live[(group.0 as usize + attempt) % live.len()];
            record.target = Some(target);
            let result = self
                .multi
                .with_group(group, |raft| raft.transfer_leader(target));
            match result {
                Ok(Ok(())) => {
                    let event = ShardEvent::TransferStarted {
                        group,
                        term,
                        target,
                    };
                    self.events.push(event);
                }
                // The Raft core still runs an earlier hand-over: give that one its time.
                Ok(Err(TransferError::InProgress { target: running })) => {
                    record.target = Some(running);
                }
                Ok(Err(_)) | Err(_) => {
                    let event = ShardEvent::TransferFailed {
                        group,
                        term,
                        target: Some(target),
                    };
                    self.events.push(event);
                }
            }
            self.transfers.insert(group, record);
        }
    }

    /// Peers whose last batch arrived within an election timeout and no more than a heartbeat
    /// interval before the freshest peer's, in `config.nodes` order. Live peers are heard
    /// from every heartbeat, so a peer that has just stopped (the previous node of an ordered
    /// stop) drops out after a heartbeat rather than an election timeout.
    fn live_peers(&self) -> Vec<NodeId> {
        let window_ticks = u64::from(self.config.election_timeout_ticks.get());
        let slack_ticks = u64::from(self.config.heartbeat_interval_ticks.get());
        let heard: Vec<(NodeId, u64)> = self
            .config
            .nodes
            .iter()
            .zip(&self.last_heard_ticks)
            .filter_map(|(&node, heard)| Some((node, (*heard)?)))
            .filter(|&(node, tick)| {
                node != self.config.node && self.now_ticks.saturating_sub(tick) <= window_ticks
            })
            .collect();
        let Some(freshest) = heard.iter().map(|&(_, tick)| tick).max() else {
            return Vec::new();
        };
        heard
            .into_iter()
            .filter(|&(_, tick)| tick + slack_ticks >= freshest)
            .map(|(node, _)| node)
            .collect()
    }

    fn reply_error(&mut self, reply_to: ReplyTo, code: ErrorCode, message: String) {
        self.reply(reply_to, Reply::Error { code, message });
    }

    fn reply(&mut self, reply_to: ReplyTo, reply: Reply) {
        let response = ClientResponse {
            id: reply_to.id(),
            reply,
        };
        match reply_to {
            ReplyTo::Client { origin, .. } => self.replies.push((origin, response)),
            ReplyTo::Peer { node, token, .. } => {
                let bytes = Bytes::copy_from_slice(encode_response(&mut self.builder, &response));
                self.outgoing_forwards.push((
                    node,
                    Forward::Reply {
                        token,
                        response: bytes,
                    },
                ));
            }
        }
    }

    /// Puts this round's forwarded requests and replies into the batch for their node.
    fn attach_forwards(&mut self, batches: &mut Vec<Batch>) {
        for (node, forward) in self.outgoing_forwards.drain(..) {
            let position = match batches.iter().position(|b| b.to == node) {
                Some(position) => position,
                None => {
                    batches.push(Batch::new(self.config.node, node));
                    batches.len() - 1
                }
            };
            batches[position].forwards.push(forward);
        }
    }
}

/// The key a request works on; `None` for `Status`.
fn op_key(op: &ClientOp) -> Option<&Bytes> {
    match op {
        ClientOp::Get { key } => Some(key),
        ClientOp::Write(command) => Some(command.key()),
        ClientOp::Status => None,
    }
}

fn outcome_reply(outcome: Outcome) -> Reply {
    match outcome {
        Outcome::Written => Reply::Written,
        Outcome::Deleted { existed } => Reply::Deleted { existed },
        Outcome::Cas { succeeded, current } => Reply::Cas { succeeded, current },
        Outcome::PutIf { written } => Reply::PutIf { written },
        Outcome::Counter { value } => Reply::Counter(value),
        Outcome::CounterRefused(error) => Reply::Error {
            code: ErrorCode::BadRequest,
            message: error.to_string(),
        },
        Outcome::Rejected(error) => Reply::Error {
            code: ErrorCode::BadRequest,
            message: error.to_string(),
        },
    }
}
