//! Rule-by-rule tests of the Raft core, each citing the paper (§) or thesis section it
//! pins, driven by `Cluster`: a small in-module router that moves messages between
//! `RaftNode`s, persists instantly into an in-memory "disk" per node (unless a node's
//! persistence is held), applies committed entries, and answers fetches from that disk.
//! The golden-transcript harness and the full simulator live elsewhere.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::prng::Prng;
use crate::raft::config::{Canary, RaftConfig, RestoredState};
use crate::raft::errors::{ProposeError, ReadIndexError};
use crate::raft::node::RaftNode;
use crate::raft::types::{
    AppendResponse, Entry, EntryKind, HardState, Membership, Message, MessageBody, Persist,
    ReadContext, ReadState, Ready, RoleKind,
};

/// What one node has made durable.
#[derive(Default)]
struct Disk {
    /// Entry `i` at position `i - 1`.
    log: Vec<Entry>,
    hard_state: HardState,
}

impl Disk {
    fn write(&mut self, persist: &Persist) {
        if let Some(first) = persist.entries.first() {
            let keep = first.index().get() as usize - 1;
            assert!(keep <= self.log.len(), "disk: gap before {}", first.id);
            self.log.truncate(keep);
            self.log.extend(persist.entries.iter().cloned());
        }
        if let Some(hard_state) = persist.hard_state {
            self.hard_state = hard_state;
        }
    }

    fn term_runs(&self) -> Vec<EntryId> {
        let mut runs: Vec<EntryId> = Vec::new();
        for entry in &self.log {
            if runs.last().is_none_or(|run| run.term != entry.term()) {
                runs.push(entry.id);
            }
        }
        runs
    }
}

struct Peer {
    node: RaftNode,
    disk: Disk,
    applied: Vec<Entry>,
    read_states: Vec<ReadState>,
    /// Persists (with the messages waiting on them) not yet written, when held.
    held: VecDeque<(Persist, Vec<Message>)>,
    hold_persist: bool,
    config: RaftConfig,
    membership: Membership,
}

struct Cluster {
    peers: BTreeMap<NodeId, Peer>,
    network: VecDeque<Message>,
    /// Directed links that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, for tests that look at traffic.
    delivered: Vec<Message>,
    prng: Prng,
}

fn seed() -> u64 {
    let seed = std::env::var("RINGRAFT_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0x5eed);
    println!("RINGRAFT_SEED={seed}");
    seed
}

fn node(id: u64) -> NodeId {
    NodeId(id)
}

fn data(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

impl Cluster {
    fn new(size: u64) -> Cluster {
        Cluster::with_config(size, |_| {})
    }

    fn with_config(size: u64, adjust: impl Fn(&mut RaftConfig)) -> Cluster {
        let mut prng = Prng::new(seed());
        let membership = Membership::new((1..=size).map(NodeId).collect());
        let mut peers = BTreeMap::new();
        for id in 1..=size {
            let mut config = RaftConfig::new(NodeId(id), GroupId(7));
            adjust(&mut config);
            let restored = RestoredState::bootstrap(membership.clone());
            let raft = RaftNode::new(config.clone(), restored, prng.fork());
            peers.insert(
                NodeId(id),
                Peer {
                    node: raft,
                    disk: Disk::default(),
                    applied: Vec::new(),
                    read_states: Vec::new(),
                    held: VecDeque::new(),
                    hold_persist: false,
                    config,
                    membership: membership.clone(),
                },
            );
        }
        Cluster {
            peers,
            network: VecDeque::new(),
            cut: BTreeSet::new(),
            delivered: Vec::new(),
            prng,
        }
    }

    fn raft(&mut self, id: u64) -> &mut RaftNode {
        &mut self.peers.get_mut(&node(id)).expect("peer exists").node
    }

    fn peer(&self, id: u64) -> &Peer {
        self.peers.get(&node(id)).expect("peer exists")
    }

    fn role(&self, id: u64) -> RoleKind {
        self.peer(id).node.status().role
    }

    fn isolate(&mut self, id: u64) {
        for other in self.peers.keys().copied().collect::<Vec<_>>() {
            if other != node(id) {
                self.cut.insert((node(id), other));
                self.cut.insert((other, node(id)));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Handle one node's Ready the way a shard would, with instant persistence.
    fn handle_ready(&mut self, id: NodeId) {
        let peer = self.peers.get_mut(&id).expect("peer exists");
        let ready: Ready = peer.node.ready();
        self.network.extend(ready.messages);
        if let Some(persist) = ready.persist {
            peer.held.push_back((persist, ready.messages_after_persist));
        } else {
            assert!(
                ready.messages_after_persist.is_empty(),
                "after-persist messages without a persist"
            );
        }
        if !peer.hold_persist {
            while let Some((persist, after)) = peer.held.pop_front() {
                peer.disk.write(&persist);
                self.network.extend(after);
                peer.node.on_persisted(persist.position);
            }
        }
        if let Some(last) = ready.committed_entries.last().map(Entry::index) {
            // The commit index must be durable no later than entries are applied.
            assert!(
                peer.disk.hard_state.commit >= last || peer.hold_persist,
                "node {id}: applying {last} with durable commit {}",
                peer.disk.hard_state.commit
            );
            for entry in &ready.committed_entries {
                let expected = peer.applied.len() as u64 + 1;
                assert_eq!(
                    entry.index().get(),
                    expected,
                    "node {id}: apply out of order"
                );
            }
            peer.applied.extend(ready.committed_entries);
            peer.node.on_applied(last);
        }
        peer.read_states.extend(ready.read_states);
        if let Some(fetch) = ready.fetch {
            let first = fetch.first.get() as usize - 1;
            let last = (fetch.last.get() as usize).min(peer.disk.log.len());
            let entries = peer
                .disk
                .log
                .get(first..last)
                .map(<[Entry]>::to_vec)
                .unwrap_or_default();
            peer.node.on_fetched(entries);
        }
    }

    /// Run Readies and deliver messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            let ids: Vec<NodeId> = self.peers.keys().copied().collect();
            for id in ids {
                if self.peers.get(&id).is_some_and(|p| p.node.has_ready()) {
                    self.handle_ready(id);
                    moved = true;
                }
            }
            while let Some(message) = self.network.pop_front() {
                moved = true;
                self.deliver(message);
            }
            if !moved {
                return;
            }
        }
        panic!("cluster did not settle");
    }

    fn deliver(&mut self, message: Message) {
        if self.cut.contains(&(message.from, message.to)) {
            return;
        }
        self.delivered.push(message.clone());
        if let Some(peer) = self.peers.get_mut(&message.to) {
            peer.node
                .step(message)
                .expect("step accepts routed messages");
        }
    }

    fn tick(&mut self, ticks: u32) {
        for _ in 0..ticks {
            for peer in self.peers.values_mut() {
                peer.node.tick();
            }
            self.settle();
        }
    }

    fn elect(&mut self, id: u64) {
        self.raft(id).campaign();
        self.settle();
        assert_eq!(self.role(id), RoleKind::Leader, "node {id} should have won");
    }

    fn propose(&mut self, id: u64, text: &'static str) -> EntryId {
        let entry = self.raft(id).propose(data(text)).expect("leader accepts");
        self.settle();
        entry
    }

    /// Restart a node from its disk: the in-memory tail is gone.
    fn restart(&mut self, id: u64) {
        let mut prng = self.prng.fork();
        let peer = self.peers.get_mut(&node(id)).expect("peer exists");
        peer.held.clear();
        let restored = RestoredState {
            hard_state: peer.disk.hard_state,
            membership: peer.membership.clone(),
            snapshot: None,
            term_runs: peer.disk.term_runs(),
            last_index: LogIndex(peer.disk.log.len() as u64),
            applied: LogIndex(peer.applied.len() as u64).min(peer.disk.hard_state.commit),
        };
        peer.applied.truncate(restored.applied.get() as usize);
        peer.node = RaftNode::new(peer.config.clone(), restored, prng.fork());
    }

    fn applied_texts(&self, id: u64) -> Vec<Bytes> {
        self.peer(id)
            .applied
            .iter()
            .filter(|entry| entry.kind == EntryKind::Command)
            .map(|entry| entry.data.clone())
            .collect()
    }
}

#[test]
fn three_nodes_elect_and_replicate() {
    // §5.2/§5.3 smoke test: one election, then a command reaches every state machine.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.tick(2);
    for id in 1..=3 {
        assert_eq!(cluster.applied_texts(id), vec![data("a")], "node {id}");
    }
}
