//! `LocalCluster`: several nodes' `MultiRaft`s of one core driven on one thread, with
//! instant persistence and batches passed in memory, for tests and benchmarks of the
//! Multi-Raft layer and the Raft core under it. Faults, disks and clocks are the simulator's
//! (sim/); this harness only moves outputs to inputs as fast as it can.
//!
//! It must not do I/O or read a clock, and must not stand in for the simulator in safety
//! testing: it never loses, delays or reorders a batch.

use crate::ids::{GroupId, LogIndex, NodeId};
use crate::prng::Prng;
use crate::raft::{Membership, RaftConfig, RaftNode, RestoredState, RoleKind};
use crate::shard::batch::Batch;
use crate::shard::group::RaftGroup;
use crate::shard::multi::{MultiRaft, RoundOutput};

/// What one `LocalCluster::step` did, summed over nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepCounts {
    pub batch_count: usize,
    pub persist_count: usize,
    pub applied_entry_count: u64,
}

impl StepCounts {
    pub fn is_idle(&self) -> bool {
        *self == StepCounts::default()
    }
}

/// Nodes `1..=n`; node `i` is `nodes[i - 1]`.
pub struct LocalCluster<G: RaftGroup> {
    nodes: Vec<MultiRaft<G>>,
    in_flight: Vec<Batch>,
    out: RoundOutput,
    /// The leader each group's latest soft state names, indexed by group id.
    leaders: Vec<Option<NodeId>>,
    /// Entries applied per node, indexed like `nodes`.
    applied_counts: Vec<u64>,
    /// Every committed entry handed out on every node, per node, as (group, index), when
    /// `record_applied` is set (tests compare them across nodes).
    applied_log: Vec<Vec<(GroupId, LogIndex, bytes::Bytes)>>,
    record_applied: bool,
}

impl<G: RaftGroup> LocalCluster<G> {
    /// `nodes[i]` must be node `i + 1`, and group ids must be below `group_id_limit`.
    pub fn new(nodes: Vec<MultiRaft<G>>, group_id_limit: u32) -> LocalCluster<G> {
        for (index, node) in nodes.iter().enumerate() {
            assert_eq!(
                node.node(),
                NodeId(index as u64 + 1),
                "local cluster: node at position {index} is {}",
                node.node()
            );
        }
        let node_count = nodes.len();
        LocalCluster {
            nodes,
            in_flight: Vec::new(),
            out: RoundOutput::default(),
            leaders: vec![None; group_id_limit as usize],
            applied_counts: vec![0; node_count],
            applied_log: vec![Vec::new(); node_count],
            record_applied: false,
        }
    }

    /// Keeps every applied entry per node, for tests that compare state machines.
    pub fn record_applied(&mut self) {
        self.record_applied = true;
    }

    pub fn node(&self, node: NodeId) -> &MultiRaft<G> {
        &self.nodes[Self::position(node)]
    }

    pub fn node_mut(&mut self, node: NodeId) -> &mut MultiRaft<G> {
        &mut self.nodes[Self::position(node)]
    }

    /// Gives the nodes back, e.g. to measure what dropping them frees.
    pub fn into_nodes(self) -> Vec<MultiRaft<G>> {
        self.nodes
    }

    pub fn leader(&self, group: GroupId) -> Option<NodeId> {
        self.leaders.get(group.get() as usize).copied().flatten()
    }

    pub fn applied_count(&self, node: NodeId) -> u64 {
        self.applied_counts[Self::position(node)]
    }

    pub fn applied_log(&self, node: NodeId) -> &[(GroupId, LogIndex, bytes::Bytes)] {
        &self.applied_log[Self::position(node)]
    }

    /// One tick on every node.
    pub fn tick(&mut self) {
        for node in &mut self.nodes {
            node.tick();
        }
    }

    /// One round on every node with instant persistence and application, then delivery of
    /// every batch the rounds produced.
    pub fn step(&mut self) -> StepCounts {
        let mut counts = StepCounts::default();
        for position in 0..self.nodes.len() {
            self.round_of(position, &mut counts);
        }
        counts.batch_count = self.in_flight.len();
        for batch in self.in_flight.drain(..) {
            let to = Self::position(batch.to);
            self.nodes[to]
                .step_batch(batch)
                .expect("local cluster batches are well formed and well addressed");
        }
        counts
    }

    /// Steps until a step does nothing; returns the steps taken. Panics past `steps_max`,
    /// naming it, since a quiet cluster is what every caller waits for.
    pub fn step_until_quiet(&mut self, steps_max: usize) -> usize {
        for steps in 1..=steps_max {
            let counts = self.step();
            if counts.is_idle() && !self.nodes.iter().any(|n| n.has_work()) {
                return steps;
            }
        }
        panic!("local cluster: not quiet after {steps_max} steps");
    }

    fn round_of(&mut self, position: usize, counts: &mut StepCounts) {
        let node = &mut self.nodes[position];
        let node_id = node.node();
        node.round(&mut self.out);
        for (group, soft_state) in &self.out.soft_states {
            let Some(leader) = self.leaders.get_mut(group.get() as usize) else {
                continue;
            };
            if soft_state.role == RoleKind::Leader {
                *leader = Some(node_id);
            } else if *leader == Some(node_id) || soft_state.leader.is_some() {
                *leader = soft_state.leader;
            }
        }
        self.in_flight.append(&mut self.out.batches);
        counts.persist_count += self.out.persists.len();
        for persist in &self.out.persists {
            node.on_persisted(persist.group, persist.persist.position)
                .expect("a group of this node asked to persist");
        }
        for committed in &self.out.committed {
            let Some(last) = committed.entries.last() else {
                continue;
            };
            let count = committed.entries.len() as u64;
            counts.applied_entry_count += count;
            self.applied_counts[position] += count;
            if self.record_applied {
                let log = &mut self.applied_log[position];
                log.extend(
                    committed
                        .entries
                        .iter()
                        .map(|e| (committed.group, e.index(), e.data.clone())),
                );
            }
            node.on_applied(committed.group, last.index())
                .expect("a group of this node committed");
        }
    }

    fn position(node: NodeId) -> usize {
        let position = node.get() as usize;
        assert!(position >= 1, "local cluster: node ids start at 1");
        position - 1
    }
}

impl LocalCluster<RaftNode> {
    /// Nodes `1..=node_count`, each hosting groups `0..group_count`: fresh `RaftNode`s with
    /// the default configuration, every node a voter, randomness forked from `seed`.
    pub fn bootstrap(node_count: u64, group_count: u32, seed: u64) -> LocalCluster<RaftNode> {
        let mut prng = Prng::new(seed);
        let voters: Vec<NodeId> = (1..=node_count).map(NodeId).collect();
        let mut nodes = Vec::new();
        for &node in &voters {
            let mut multi = MultiRaft::with_capacity(node, group_count as usize, group_count);
            for g in 0..group_count {
                let group = GroupId(g);
                let restored = RestoredState::bootstrap(Membership::new(voters.clone()));
                let raft = RaftNode::new(RaftConfig::new(node, group), restored, prng.fork());
                multi
                    .add_group(group, raft)
                    .expect("group ids below group_count are fresh");
            }
            nodes.push(multi);
        }
        LocalCluster::new(nodes, group_count)
    }

    /// Elects node `g % n + 1` leader of group `g` by a campaign, so leaders sit on every
    /// node; panics, naming the group, if one is not elected once the cluster is quiet.
    pub fn elect_spread(&mut self, group_count: u32) {
        let node_count = self.nodes.len() as u64;
        let leader_of = |g: u32| NodeId(u64::from(g) % node_count + 1);
        self.step_until_quiet(16);
        for g in 0..group_count {
            self.node_mut(leader_of(g))
                .campaign(GroupId(g))
                .expect("groups below group_count are hosted");
        }
        self.step_until_quiet(64);
        for g in 0..group_count {
            assert_eq!(
                self.leader(GroupId(g)),
                Some(leader_of(g)),
                "group {g} has no leader after its campaign"
            );
        }
    }
}
