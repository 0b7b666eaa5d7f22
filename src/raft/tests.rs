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
    /// Committed entries not applied yet, when apply is held.
    unapplied: Vec<Entry>,
    hold_apply: bool,
    fetch_count: usize,
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
    /// Messages for which this returns true are dropped.
    filter: Option<fn(&mut Message) -> bool>,
    /// The most entry bytes one `Ready` sent to one follower.
    largest_flush: u64,
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
                    unapplied: Vec::new(),
                    hold_apply: false,
                    fetch_count: 0,
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
            filter: None,
            largest_flush: 0,
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
        let mut flushed: BTreeMap<NodeId, u64> = BTreeMap::new();
        for message in &ready.messages {
            if let MessageBody::Append { entries, .. } = &message.body {
                *flushed.entry(message.to).or_default() +=
                    entries.iter().map(Entry::size_bytes).sum::<u64>();
            }
        }
        let largest = flushed.values().copied().max().unwrap_or(0);
        self.largest_flush = self.largest_flush.max(largest);
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
        peer.unapplied.extend(ready.committed_entries);
        // Like a shard, apply only after this round's persist is durable.
        if !peer.hold_apply && peer.held.is_empty() {
            Cluster::apply(id, peer);
        }
        peer.read_states.extend(ready.read_states);
        if let Some(fetch) = ready.fetch {
            peer.fetch_count += 1;
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

    fn apply(id: NodeId, peer: &mut Peer) {
        let Some(last) = peer.unapplied.last().map(Entry::index) else {
            return;
        };
        // The commit index must be durable no later than entries are applied.
        assert!(
            peer.disk.hard_state.commit >= last,
            "node {id}: applying {last} with durable commit {}",
            peer.disk.hard_state.commit
        );
        for entry in peer.unapplied.drain(..) {
            let expected = peer.applied.len() as u64 + 1;
            assert_eq!(
                entry.index().get(),
                expected,
                "node {id}: apply out of order"
            );
            peer.applied.push(entry);
        }
        peer.node.on_applied(last);
    }

    fn release_apply(&mut self, id: u64) {
        let peer = self.peers.get_mut(&node(id)).expect("peer exists");
        peer.hold_apply = false;
        Cluster::apply(node(id), peer);
        self.settle();
    }

    fn release_persist(&mut self, id: u64) {
        self.peers
            .get_mut(&node(id))
            .expect("peer exists")
            .hold_persist = false;
        self.handle_ready(node(id));
        self.settle();
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

    fn step(&mut self, id: u64, message: Message) {
        self.raft(id)
            .step(message)
            .expect("step accepts the message");
    }

    /// Tick until `done` holds, at most `ticks_max` ticks.
    fn tick_until(&mut self, ticks_max: u32, done: impl Fn(&Cluster) -> bool) {
        for _ in 0..ticks_max {
            if done(self) {
                return;
            }
            self.tick(1);
        }
        assert!(done(self), "condition not reached in {ticks_max} ticks");
    }

    fn leader(&self) -> Option<u64> {
        self.peers
            .iter()
            .find(|(_, peer)| peer.node.status().role == RoleKind::Leader)
            .map(|(id, _)| id.get())
    }

    /// State machine safety (§5.4.3): no two nodes applied different entries at an index.
    fn state_machines_agree(&self) -> bool {
        let peers: Vec<&Peer> = self.peers.values().collect();
        peers.iter().all(|a| {
            peers.iter().all(|b| {
                a.applied
                    .iter()
                    .zip(b.applied.iter())
                    .all(|(x, y)| x.id == y.id && x.data == y.data)
            })
        })
    }

    fn deliver(&mut self, mut message: Message) {
        if self.cut.contains(&(message.from, message.to)) {
            return;
        }
        if self.filter.is_some_and(|drop| drop(&mut message)) {
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

    /// Restart a node from its disk: the in-memory tail is gone. The state machine keeps
    /// what it applied when `keep_applied`, else it starts over from the log.
    fn restart(&mut self, id: u64, keep_applied: bool) {
        self.restart_with_floor(id, keep_applied, LogIndex::ZERO);
    }

    /// Restart a node whose disk lost its log (not its term and vote): it starts empty
    /// below a vote floor at the index it had reached (`RestoredState::vote_floor`).
    fn restart_without_log(&mut self, id: u64) {
        let peer = self.peers.get_mut(&node(id)).expect("peer exists");
        let floor = LogIndex(peer.disk.log.len() as u64);
        peer.disk.log.clear();
        peer.disk.hard_state.commit = LogIndex::ZERO;
        self.restart_with_floor(id, false, floor);
    }

    fn restart_with_floor(&mut self, id: u64, keep_applied: bool, vote_floor: LogIndex) {
        let mut prng = self.prng.fork();
        let peer = self.peers.get_mut(&node(id)).expect("peer exists");
        peer.held.clear();
        peer.unapplied.clear();
        if !keep_applied {
            peer.applied.clear();
        }
        let restored = RestoredState {
            hard_state: peer.disk.hard_state,
            membership: peer.membership.clone(),
            snapshot: None,
            term_runs: peer.disk.term_runs(),
            last_index: LogIndex(peer.disk.log.len() as u64),
            applied: LogIndex(peer.applied.len() as u64).min(peer.disk.hard_state.commit),
            vote_floor,
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

fn message(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: node(from),
        to: node(to),
        term: Term(term),
        body,
    }
}

fn vote_request(last: EntryId) -> MessageBody {
    MessageBody::Vote {
        last,
        leader_transfer: false,
    }
}

/// Vote responses granted by a node in a Ready: (in `messages`, in `messages_after_persist`).
fn vote_grants(ready: &Ready) -> (Vec<NodeId>, Vec<NodeId>) {
    let grants = |messages: &[Message]| {
        messages
            .iter()
            .filter(|m| matches!(m.body, MessageBody::VoteResponse { granted: true }))
            .map(|m| m.to)
            .collect::<Vec<_>>()
    };
    (
        grants(&ready.messages),
        grants(&ready.messages_after_persist),
    )
}

/// Write `terms` as the whole log of node `id` and restart it from that disk.
fn fill_disk(cluster: &mut Cluster, id: u64, terms: &[u64], term: u64) {
    let peer = cluster.peers.get_mut(&node(id)).expect("peer exists");
    peer.disk.log = terms
        .iter()
        .enumerate()
        .map(|(position, &entry_term)| Entry {
            id: EntryId::new(Term(entry_term), LogIndex(position as u64 + 1)),
            kind: EntryKind::Command,
            data: data("old"),
        })
        .collect();
    peer.disk.hard_state = HardState {
        term: Term(term),
        vote: None,
        commit: LogIndex::ZERO,
        vote_floor: LogIndex::ZERO,
    };
    cluster.restart(id, false);
}

#[test]
fn term_is_updated_from_any_message() {
    // §5.1: a node that sees a higher term in any message adopts it and becomes follower.
    let mut cluster = Cluster::new(3);
    let bodies = [
        MessageBody::Heartbeat {
            commit: LogIndex::ZERO,
            read_round: None,
        },
        MessageBody::HeartbeatResponse { read_round: None },
        MessageBody::AppendResponse(AppendResponse::Accepted {
            last_index: LogIndex::ZERO,
        }),
        MessageBody::VoteResponse { granted: false },
        vote_request(EntryId::ZERO),
    ];
    for (position, body) in bodies.into_iter().enumerate() {
        let term = 3 + position as u64;
        cluster.step(1, message(2, 1, term, body));
        let status = cluster.raft(1).status();
        assert_eq!(
            status.term,
            Term(term),
            "message {position} did not raise the term"
        );
        assert_eq!(status.role, RoleKind::Follower);
    }
    // A candidate steps back too.
    cluster.elect(1);
    let term = cluster.raft(1).status().term.get();
    cluster.step(
        1,
        message(
            3,
            1,
            term + 1,
            MessageBody::HeartbeatResponse { read_round: None },
        ),
    );
    assert_eq!(cluster.role(1), RoleKind::Follower);
    assert_eq!(cluster.raft(1).status().term, Term(term + 1));
}

/// Node 1 votes for 2 in term 1, restarts, then is asked by 3 in the same term. Returns the
/// first Ready's grants and whether 3 was granted after the restart.
fn vote_then_restart(canary: Option<Canary>) -> ((Vec<NodeId>, Vec<NodeId>), bool) {
    let mut cluster = Cluster::with_config(3, |config| config.canary = canary);
    cluster.step(1, message(2, 1, 1, vote_request(EntryId::ZERO)));
    let ready = cluster.raft(1).ready();
    let first_grants = vote_grants(&ready);
    let peer = cluster.peers.get_mut(&node(1)).expect("peer exists");
    if let Some(persist) = ready.persist {
        peer.disk.write(&persist);
        peer.node.on_persisted(persist.position);
    }
    assert_eq!(
        peer.disk.hard_state.vote.is_some(),
        canary.is_none(),
        "the vote is durable exactly without the canary"
    );
    cluster.restart(1, true);
    cluster.step(1, message(3, 1, 1, vote_request(EntryId::ZERO)));
    let ready = cluster.raft(1).ready();
    let (now, after) = vote_grants(&ready);
    (first_grants, !now.is_empty() || !after.is_empty())
}

#[test]
fn one_vote_per_term_survives_restart() {
    // §5.2: a node grants one vote per term; the grant leaves only after the vote is
    // durable (messages_after_persist), and a restart keeps it, so a second candidate of
    // the same term is refused. The VoteNotPersisted canary shows the check can fail.
    let ((now, after), second_granted) = vote_then_restart(None);
    assert!(now.is_empty(), "grant sent before the vote was durable");
    assert_eq!(after, vec![node(2)]);
    assert!(!second_granted, "a second vote in term 1 after restart");

    let ((now, _), second_granted) = vote_then_restart(Some(Canary::VoteNotPersisted));
    assert_eq!(now, vec![node(2)]);
    assert!(second_granted, "the canary should vote twice");
}

#[test]
fn vote_requires_an_up_to_date_log() {
    // §5.4.1: a vote is refused to a candidate whose last entry has a lower term, or the
    // same term and a lower index; an equal log is good enough.
    let mut cluster = Cluster::new(3);
    fill_disk(&mut cluster, 1, &[1, 2, 2], 2);
    let cases = [
        (3, EntryId::new(Term(1), LogIndex(10)), false),
        (4, EntryId::new(Term(2), LogIndex(2)), false),
        (5, EntryId::new(Term(2), LogIndex(3)), true),
        (6, EntryId::new(Term(3), LogIndex(1)), true),
    ];
    for (term, last, expected) in cases {
        cluster.step(1, message(2, 1, term, vote_request(last)));
        let ready = cluster.raft(1).ready();
        let (_, granted) = vote_grants(&ready);
        assert_eq!(
            !granted.is_empty(),
            expected,
            "candidate last {last} at term {term}"
        );
        let peer = cluster.peers.get_mut(&node(1)).expect("peer exists");
        if let Some(persist) = ready.persist {
            peer.node.on_persisted(persist.position);
        }
    }
}

#[test]
fn election_needs_a_majority() {
    // §5.2: a candidate becomes leader only with votes from a majority of the voters.
    let mut cluster = Cluster::with_config(5, |config| config.pre_vote = false);
    for other in 3..=5 {
        cluster.cut.insert((node(1), node(other)));
        cluster.cut.insert((node(other), node(1)));
    }
    cluster.raft(1).campaign();
    cluster.settle();
    assert_eq!(
        cluster.role(1),
        RoleKind::Candidate,
        "2 of 5 votes must not win"
    );
    cluster.cut.remove(&(node(1), node(3)));
    cluster.cut.remove(&(node(3), node(1)));
    cluster.raft(1).campaign();
    cluster.settle();
    assert_eq!(cluster.role(1), RoleKind::Leader, "3 of 5 votes win");
}

#[test]
fn leader_steps_down_on_a_higher_term() {
    // §5.1: a leader that sees a higher term becomes a follower of that term.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let term = cluster.raft(1).status().term.get();
    let heartbeat = MessageBody::Heartbeat {
        commit: LogIndex::ZERO,
        read_round: None,
    };
    cluster.step(1, message(2, 1, term + 1, heartbeat));
    let status = cluster.raft(1).status();
    assert_eq!(status.role, RoleKind::Follower);
    assert_eq!(status.term, Term(term + 1));
    assert_eq!(status.leader, Some(node(2)));
}

#[test]
fn conflicting_suffix_is_truncated() {
    // §5.3: entries of a deposed leader that conflict with the new leader's log are
    // removed from its log (and its disk) and replaced.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.isolate(1);
    cluster.propose(1, "lost-1");
    cluster.propose(1, "lost-2");
    cluster.tick_until(100, |c| c.leader().is_some_and(|l| l != 1));
    let leader = cluster.leader().expect("a new leader");
    cluster.propose(leader, "b");
    cluster.heal();
    cluster.tick_until(100, |c| {
        c.peer(1).applied.len() == c.peer(leader).applied.len()
    });
    for id in 1..=3 {
        assert_eq!(
            cluster.applied_texts(id),
            vec![data("a"), data("b")],
            "node {id}"
        );
    }
    let disk_texts: Vec<Bytes> = cluster
        .peer(1)
        .disk
        .log
        .iter()
        .map(|e| e.data.clone())
        .collect();
    assert!(
        !disk_texts.contains(&data("lost-1")),
        "conflicting entry left on disk"
    );
}

#[test]
fn next_index_backs_up_with_the_hint() {
    // §5.3 fast backtracking: a follower with 50 conflicting entries of one term costs the
    // leader one rejection, not fifty, thanks to the conflict hint.
    let mut cluster = Cluster::new(2);
    let mut leader_terms = vec![1, 1, 1];
    leader_terms.extend([3; 50]);
    let mut follower_terms = vec![1, 1, 1];
    follower_terms.extend([2; 50]);
    fill_disk(&mut cluster, 1, &leader_terms, 3);
    fill_disk(&mut cluster, 2, &follower_terms, 2);
    cluster.elect(1);
    cluster.tick(2);
    let rejections = cluster
        .delivered
        .iter()
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::AppendResponse(AppendResponse::Rejected { .. })
            )
        })
        .count();
    assert_eq!(rejections, 1, "backtracking should take a single step");
    let leader_log: Vec<EntryId> = cluster.peer(1).disk.log.iter().map(|e| e.id).collect();
    let follower_log: Vec<EntryId> = cluster.peer(2).disk.log.iter().map(|e| e.id).collect();
    assert_eq!(leader_log, follower_log);
    assert!(
        cluster.peer(1).fetch_count > 0,
        "old entries come from the disk after restart"
    );
}

/// Paper Figure 8 with five nodes. Returns (S1's commit after it replicated its old-term
/// entry to a majority, whether all state machines agree at the end).
fn figure_8(canary: Option<Canary>) -> (LogIndex, bool) {
    let mut cluster = Cluster::with_config(5, |config| {
        config.canary = canary;
        config.pre_vote = false;
        config.check_quorum = false;
        config.append_entries_max = 1;
    });
    // (a) S1 leads term 1; its entry at index 2 reaches only S2.
    cluster.elect(1);
    for other in 3..=5 {
        cluster.cut.insert((node(1), node(other)));
    }
    cluster.propose(1, "x");
    // (b) S5 is elected in term 2 by S3, S4 and itself; its entry at index 2 stays local.
    cluster.isolate(1);
    // Messages from S5 carry no entries, nor do S1's carry its term-3 entry.
    cluster.filter = Some(|m: &mut Message| {
        if let MessageBody::Append { entries, .. } = &mut m.body {
            if m.from == NodeId(5) {
                return true;
            }
            if m.from == NodeId(1) {
                entries.retain(|e| e.index() < LogIndex(3));
            }
        }
        false
    });
    cluster.elect(5);
    // (c) S5 is gone; S1 is elected again (term 3) and copies index 2 to a majority, but
    // not yet an entry of its own term.
    cluster.heal();
    cluster.isolate(5);
    cluster.restart(1, true);
    cluster.raft(1).campaign();
    cluster.settle();
    if cluster.role(1) != RoleKind::Leader {
        cluster.raft(1).campaign();
        cluster.settle();
    }
    assert_eq!(cluster.role(1), RoleKind::Leader, "S1 wins term 3");
    let commit_in_c = cluster.raft(1).status().commit;
    // (d) S1 is gone; S5 wins again and overwrites index 2 everywhere it can.
    cluster.heal();
    cluster.filter = None;
    cluster.isolate(1);
    cluster.restart(5, true);
    for _ in 0..3 {
        if cluster.role(5) != RoleKind::Leader {
            cluster.raft(5).campaign();
            cluster.settle();
        }
    }
    assert_eq!(cluster.role(5), RoleKind::Leader, "S5 wins term 4");
    cluster.propose(5, "y");
    cluster.tick(2);
    (commit_in_c, cluster.state_machines_agree())
}

#[test]
fn figure_8_commits_only_current_term_entries() {
    // §5.4.2, Figure 8: an entry of an older term on a majority is not committed by
    // counting replicas; with the CommitOldTermEntries canary it is, and S5 later
    // overwrites it, so state machines diverge.
    let (commit, agree) = figure_8(None);
    assert_eq!(commit, LogIndex(1), "old-term entry must not be committed");
    assert!(agree, "state machines diverged");
    let (commit, agree) = figure_8(Some(Canary::CommitOldTermEntries));
    assert_eq!(commit, LogIndex(2), "the canary commits the old-term entry");
    assert!(!agree, "the canary should break state machine safety");
}

#[test]
fn heartbeats_carry_the_commit_index() {
    // §5.3: followers learn the commit index from heartbeats when no append follows,
    // bounded by what the leader knows each follower holds.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let entry = cluster.propose(1, "a");
    assert_eq!(cluster.raft(1).status().commit, entry.index);
    assert!(
        cluster.raft(2).status().commit < entry.index,
        "learnt before a heartbeat"
    );
    cluster.isolate(3);
    cluster.tick(1);
    assert_eq!(cluster.raft(2).status().commit, entry.index);
    let heartbeats_to_3 = cluster
        .delivered
        .iter()
        .filter(|m| m.to == node(3) && matches!(m.body, MessageBody::Heartbeat { .. }))
        .count();
    assert_eq!(heartbeats_to_3, 0);
    assert_eq!(cluster.applied_texts(2), vec![data("a")]);
}

/// Partition node 3 for many election timeouts, heal, and return (leader before, leader
/// after, term before, term after).
fn partition_and_return(pre_vote: bool) -> (Option<u64>, Option<u64>, Term, Term) {
    let mut cluster = Cluster::with_config(3, |config| config.pre_vote = pre_vote);
    cluster.elect(1);
    let term_before = cluster.raft(1).status().term;
    cluster.isolate(3);
    cluster.tick(100);
    if pre_vote {
        assert_eq!(
            cluster.raft(3).status().term,
            term_before,
            "pre-vote keeps the term"
        );
    }
    cluster.heal();
    cluster.tick(3);
    let leader_after = cluster.leader();
    let term_after = cluster.raft(1).status().term;
    (Some(1), leader_after, term_before, term_after)
}

#[test]
fn pre_vote_keeps_a_returning_node_from_disrupting() {
    // Thesis §9.6: a node partitioned away does not raise its term with pre-vote, so on
    // return it does not depose a healthy leader; without pre-vote it does.
    let (before, after, term_before, term_after) = partition_and_return(true);
    assert_eq!(before, after);
    assert_eq!(term_before, term_after);
    let (_, _, term_before, term_after) = partition_and_return(false);
    assert!(
        term_after > term_before,
        "without pre-vote the leader is disrupted"
    );
}

#[test]
fn isolated_leader_steps_down_under_check_quorum() {
    // Thesis §6.2 / §9.6: a leader that heard from no quorum within an election timeout
    // steps down.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(1);
    let timeout = cluster.peer(1).config.election_timeout_ticks.get();
    cluster.tick(timeout * 2);
    assert_eq!(cluster.role(1), RoleKind::Follower);
}

#[test]
fn read_index_waits_for_a_heartbeat_quorum_and_apply() {
    // Thesis §6.4: a read is released only after a quorum acknowledged a heartbeat sent
    // after it arrived, and only once the state machine applied the read index.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.isolate(1);
    cluster
        .raft(1)
        .read_index(ReadContext(1))
        .expect("leader takes the read");
    cluster.tick(2);
    assert!(
        cluster.peer(1).read_states.is_empty(),
        "released without a quorum"
    );
    cluster.heal();
    cluster.tick(1);
    let commit = cluster.raft(1).status().commit;
    assert_eq!(
        cluster.peer(1).read_states,
        vec![ReadState {
            context: ReadContext(1),
            index: commit
        }]
    );
    // Apply held: the read waits for the state machine.
    cluster
        .peers
        .get_mut(&node(1))
        .expect("peer exists")
        .hold_apply = true;
    let entry = cluster.propose(1, "b");
    cluster
        .raft(1)
        .read_index(ReadContext(2))
        .expect("leader takes the read");
    cluster.settle();
    assert_eq!(
        cluster.peer(1).read_states.len(),
        1,
        "released before apply"
    );
    cluster.release_apply(1);
    let last = cluster.peer(1).read_states.last().copied();
    assert_eq!(
        last,
        Some(ReadState {
            context: ReadContext(2),
            index: entry.index
        })
    );
    // A follower's read goes through the leader.
    cluster
        .raft(2)
        .read_index(ReadContext(3))
        .expect("follower forwards");
    cluster.tick(1);
    let follower_read = cluster.peer(2).read_states.last().copied();
    assert_eq!(follower_read.map(|r| r.context), Some(ReadContext(3)));
    assert!(follower_read.is_some_and(|r| r.index >= entry.index));
    // Without a leader there is nobody to ask.
    cluster.isolate(1);
    cluster.tick_until(100, |c| c.leader().is_some_and(|l| l != 1));
    let mut lone = Cluster::new(3);
    assert_eq!(
        lone.raft(2).read_index(ReadContext(4)),
        Err(ReadIndexError::NoLeader)
    );
}

#[test]
fn minority_never_commits() {
    // §5.3: an entry reaches the state machine only once a majority stored it; a leader
    // cut off with a minority commits nothing new.
    let mut cluster = Cluster::new(5);
    cluster.elect(1);
    for minority in [1, 2] {
        for majority in 3..=5 {
            cluster.cut.insert((node(minority), node(majority)));
            cluster.cut.insert((node(majority), node(minority)));
        }
    }
    let entry = cluster.propose(1, "never");
    for _ in 0..30 {
        cluster.tick(1);
        for id in [1, 2] {
            assert!(
                cluster.raft(id).status().commit < entry.index,
                "node {id} committed"
            );
        }
    }
    for id in 1..=5 {
        assert!(
            cluster.applied_texts(id).is_empty(),
            "node {id} applied a minority entry"
        );
    }
}

#[test]
fn leader_transfer_hands_over_and_aborts() {
    // Thesis §3.10: during a transfer proposals are refused; a lagging target is caught up
    // and then told to time out, winning the next term; an unreachable target makes the
    // transfer abort after an election timeout.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(2);
    cluster.cut.remove(&(node(1), node(2)));
    cluster.cut.remove(&(node(2), node(1)));
    cluster.cut.insert((node(1), node(2)));
    cluster.propose(1, "a");
    cluster
        .raft(1)
        .transfer_leader(node(2))
        .expect("transfer starts");
    assert_eq!(
        cluster.raft(1).propose(data("b")),
        Err(ProposeError::TransferInProgress)
    );
    let timeout = cluster.peer(1).config.election_timeout_ticks.get();
    cluster.tick(timeout);
    assert_eq!(
        cluster.role(1),
        RoleKind::Leader,
        "transfer to an unreachable node"
    );
    cluster.propose(1, "b");
    cluster.heal();
    let term = cluster.raft(1).status().term;
    cluster
        .raft(1)
        .transfer_leader(node(2))
        .expect("transfer starts");
    cluster.tick_until(timeout, |c| c.role(2) == RoleKind::Leader);
    assert_eq!(cluster.raft(2).status().term, term.next());
    cluster.propose(2, "c");
    cluster.tick(1);
    for id in 1..=3 {
        assert_eq!(
            cluster.applied_texts(id),
            vec![data("a"), data("b"), data("c")]
        );
    }
}

#[test]
fn leader_counts_itself_only_after_persist() {
    // Thesis §10.2.1 / DESIGN §4: the leader's own entry counts toward commit only once
    // its write is durable, even when a follower acknowledged it already.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    cluster.isolate(3);
    cluster
        .peers
        .get_mut(&node(1))
        .expect("peer exists")
        .hold_persist = true;
    let entry = cluster.propose(1, "a");
    assert_eq!(cluster.raft(2).status().persisted, entry.index);
    assert!(
        cluster.raft(1).status().commit < entry.index,
        "committed before own sync"
    );
    cluster.release_persist(1);
    assert_eq!(cluster.raft(1).status().commit, entry.index);

    // A single node commits exactly when its own write is durable.
    let mut single = Cluster::new(1);
    single.elect(1);
    single
        .peers
        .get_mut(&node(1))
        .expect("peer exists")
        .hold_persist = true;
    let entry = single.propose(1, "solo");
    assert!(single.raft(1).status().commit < entry.index);
    single.release_persist(1);
    assert_eq!(single.raft(1).status().commit, entry.index);
    assert_eq!(single.applied_texts(1), vec![data("solo")]);
}

#[test]
fn restart_applies_and_replicates_through_fetch() {
    // DESIGN §4: after a restart the tail is empty, so committed entries are applied and a
    // lagging follower is caught up by fetching entries back from the disk.
    let mut cluster = Cluster::with_config(3, |config| config.append_entries_max = 4);
    cluster.elect(1);
    cluster.isolate(3);
    let texts = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    for text in texts {
        cluster.propose(1, text);
    }
    cluster.tick(1);
    for id in [1, 2] {
        cluster.restart(id, false);
    }
    let ready = cluster.raft(2).ready();
    assert!(ready.fetch.is_some(), "apply after restart must fetch");
    assert!(ready.committed_entries.is_empty());
    cluster
        .peers
        .get_mut(&node(2))
        .expect("peer exists")
        .node
        .on_fetched(Vec::new());
    cluster.restart(2, false);
    cluster.heal();
    cluster.tick_until(200, |c| {
        c.leader().is_some() && (1..=3).all(|id| c.applied_texts(id).len() == texts.len())
    });
    let expected: Vec<Bytes> = texts.iter().map(|t| data(t)).collect();
    for id in 1..=3 {
        assert_eq!(cluster.applied_texts(id), expected, "node {id}");
        assert!(
            cluster.peer(id).fetch_count > 0 || id == 3,
            "node {id} fetched nothing"
        );
    }
}

/// Elects node 1 and has it commit 100 commands with node 3 cut off, calling `after_each`
/// after each; returns the commands.
fn lag_node_3(cluster: &mut Cluster, mut after_each: impl FnMut(&mut Cluster)) -> Vec<Bytes> {
    cluster.elect(1);
    cluster.isolate(3);
    let mut expected = Vec::new();
    for _ in 0..100 {
        cluster.propose(1, "sixteen-bytes-ok");
        expected.push(data("sixteen-bytes-ok"));
        after_each(cluster);
    }
    expected
}

#[test]
fn tail_stays_bounded_and_lagging_follower_catches_up() {
    // DESIGN §4: durable entries beyond `tail_bytes_max` leave memory even while a follower
    // lags, and that follower is later caught up through fetches.
    let mut cluster = Cluster::with_config(3, |config| config.tail_bytes_max = 1000);
    let expected = lag_node_3(&mut cluster, |cluster| {
        let tail_bytes = cluster.raft(1).log.tail_bytes();
        assert!(
            tail_bytes <= 1000,
            "tail of {tail_bytes} bytes over the limit"
        );
    });
    cluster.heal();
    cluster.tick_until(50, |c| c.applied_texts(3).len() == expected.len());
    assert_eq!(cluster.applied_texts(3), expected);
    assert!(
        cluster.peer(1).fetch_count > 0,
        "catch-up must have fetched"
    );
}

#[test]
fn a_lagging_follower_is_caught_up_a_flush_at_a_time() {
    // A follower back from a partition gets at most `append_bytes_max` (plus the message
    // that crosses it) per leader Ready, the rest as its acknowledgements return, although
    // the in-flight window would let the whole backlog leave in one Ready.
    let mut cluster = Cluster::with_config(3, |config| config.append_bytes_max = 200);
    let expected = lag_node_3(&mut cluster, |_| {});
    let backlog = 100 * (16 + crate::raft::types::ENTRY_OVERHEAD_BYTES);
    cluster.largest_flush = 0;
    cluster.heal();
    cluster.tick_until(50, |c| c.applied_texts(3).len() == expected.len());
    assert_eq!(cluster.applied_texts(3), expected);
    let largest = cluster.largest_flush;
    assert!(
        largest > 0 && largest < 2 * 200,
        "a Ready sent {largest} of the {backlog} backlog bytes to one follower"
    );
}

#[test]
fn uncommitted_bytes_are_limited() {
    // Thesis §10.2: a leader that cannot commit stops accepting proposals at the
    // uncommitted-bytes limit, and accepts again once entries commit.
    let mut cluster = Cluster::with_config(3, |config| config.uncommitted_bytes_max = 400);
    cluster.elect(1);
    cluster.isolate(1);
    let mut accepted = 0;
    let refused = loop {
        match cluster.raft(1).propose(data("sixteen-bytes-ok")) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 100, "the limit never hit");
    };
    assert!(
        matches!(refused, ProposeError::UncommittedFull { .. }),
        "{refused:?}"
    );
    assert!(accepted >= 8, "only {accepted} accepted");
    cluster.heal();
    cluster.tick(1);
    assert!(cluster.raft(1).propose(data("again")).is_ok());
    let too_large = Bytes::from(vec![0u8; crate::constants::COMMAND_BYTES_MAX as usize + 1]);
    assert!(matches!(
        cluster.raft(1).propose(too_large),
        Err(ProposeError::TooLarge { .. })
    ));
    assert!(matches!(
        cluster.raft(2).propose(data("x")),
        Err(ProposeError::NotLeader {
            leader: Some(NodeId(1))
        })
    ));
}

#[test]
fn idle_groups_are_small() {
    // Performance budget (issue): an idle group, follower or leader of three, takes under
    // 1 KiB including heap once its entries are applied and replicated.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    for _ in 0..50 {
        cluster.propose(1, "sixteen-bytes-ok");
    }
    cluster.tick(cluster.peer(1).config.election_timeout_ticks.get() + 1);
    for id in 1..=3 {
        let bytes = cluster.raft(id).memory_bytes();
        println!("node {id}: {bytes} bytes");
        assert!(bytes < 1024, "node {id} idles in {bytes} bytes");
    }
}

/// One seeded run of a cluster under message loss, duplication, reordering, partitions,
/// delayed persistence and restarts that lose what was not persisted; then a liveness phase
/// on the healed cluster. Checks election safety (§5.2), state machine safety (§5.4.3)
/// and log matching (§5.3) throughout.
fn chaos_run(seed: u64, steps: usize) {
    chaos_run_with(seed, steps, None);
}

fn chaos_run_with(seed: u64, steps: usize, canary: Option<Canary>) {
    println!("RINGRAFT_SEED={seed} (chaos, canary {canary:?})");
    let mut prng = Prng::new(seed);
    let size = 3 + prng.below(3);
    let pre_vote = prng.chance(3, 4);
    let check_quorum = prng.chance(3, 4);
    let mut cluster = Cluster::with_config(size, |config| {
        config.pre_vote = pre_vote;
        config.check_quorum = check_quorum;
        config.append_entries_max = 3;
        config.tail_bytes_max = 200;
        config.inflight_appends_max = 4;
        config.canary = canary;
    });
    let mut leaders: BTreeMap<Term, NodeId> = BTreeMap::new();
    let mut next_read = 0u64;
    for _ in 0..steps {
        let id = 1 + prng.below(size);
        match prng.below(100) {
            0..=39 => {
                if !cluster.network.is_empty() {
                    let position = prng.below(cluster.network.len() as u64) as usize;
                    if let Some(message) = cluster.network.remove(position) {
                        if prng.chance(1, 20) {
                            cluster.network.push_back(message.clone());
                        }
                        if !prng.chance(1, 10) {
                            cluster.deliver(message);
                        }
                    }
                }
            }
            40..=59 => {
                if cluster.peer(id).node.has_ready() {
                    cluster.handle_ready(node(id));
                }
            }
            60..=69 => cluster.raft(id).tick(),
            70..=79 => {
                let _ = cluster.raft(id).propose(data("chaos"));
            }
            80..=82 => {
                if prng.chance(1, 3) {
                    cluster.restart(id, prng.chance(1, 2));
                }
            }
            83..=87 => {
                let peer = cluster.peers.get_mut(&node(id)).expect("peer exists");
                peer.hold_persist = !peer.hold_persist;
                if !peer.hold_persist {
                    cluster.handle_ready(node(id));
                }
            }
            88..=91 => {
                next_read += 1;
                let _ = cluster.raft(id).read_index(ReadContext(next_read));
            }
            92..=93 => {
                let other = 1 + prng.below(size);
                if other != id {
                    cluster.cut.insert((node(id), node(other)));
                    cluster.cut.insert((node(other), node(id)));
                }
            }
            94..=95 => cluster.heal(),
            _ => {
                for _ in 0..3 {
                    let id = 1 + prng.below(size);
                    cluster.raft(id).tick();
                }
            }
        }
        for peer in cluster.peers.values() {
            let status = peer.node.status();
            if status.role == RoleKind::Leader {
                let leader = *leaders.entry(status.term).or_insert(status.id);
                assert_eq!(
                    leader, status.id,
                    "seed {seed}: two leaders in term {}",
                    status.term
                );
            }
        }
        assert!(
            cluster.state_machines_agree(),
            "seed {seed}: state machines diverged"
        );
    }
    // Liveness: heal everything, persist everything, and a new command commits everywhere.
    cluster.heal();
    for id in 1..=size {
        let peer = cluster.peers.get_mut(&node(id)).expect("peer exists");
        peer.hold_persist = false;
        cluster.handle_ready(node(id));
    }
    cluster.settle();
    // A proposal may still be lost to a leader change; retry a few times.
    let final_everywhere = |c: &Cluster| {
        let lengths: BTreeSet<usize> = c.peers.values().map(|p| p.applied.len()).collect();
        lengths.len() == 1 && (1..=size).all(|id| c.applied_texts(id).contains(&data("final")))
    };
    let mut committed = false;
    for _ in 0..10 {
        cluster.tick_until(300, |c| c.leader().is_some());
        let Some(leader) = cluster.leader() else {
            continue;
        };
        if cluster.raft(leader).propose(data("final")).is_err() {
            cluster.tick(1);
            continue;
        }
        for _ in 0..100 {
            cluster.tick(1);
            if final_everywhere(&cluster) {
                break;
            }
        }
        if final_everywhere(&cluster) {
            committed = true;
            break;
        }
    }
    assert!(
        committed,
        "seed {seed}: nothing committed everywhere after healing"
    );
    println!(
        "seed {seed}: {size} nodes, {} leaders, {} entries applied, {} reads, {} fetches",
        leaders.len(),
        cluster.peer(1).applied.len(),
        cluster
            .peers
            .values()
            .map(|p| p.read_states.len())
            .sum::<usize>(),
        cluster.peers.values().map(|p| p.fetch_count).sum::<usize>()
    );
    assert!(
        cluster.state_machines_agree(),
        "seed {seed}: state machines diverged"
    );
    let disks: Vec<&Disk> = cluster.peers.values().map(|p| &p.disk).collect();
    for a in &disks {
        for b in &disks {
            for (x, y) in a.log.iter().zip(b.log.iter()) {
                if x.id == y.id {
                    assert_eq!(x.data, y.data, "seed {seed}: same entry id, different data");
                }
            }
        }
    }
}

#[test]
fn chaos_keeps_safety_and_recovers() {
    // §5.2/§5.3/§5.4 under faults: seeded runs (replay one with RINGRAFT_SEED) keep
    // election and state machine safety and make progress once healed.
    match std::env::var("RINGRAFT_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        Some(seed) => chaos_run(seed, 3000),
        None => {
            for seed in 0..150u64 {
                chaos_run(seed, 3000);
            }
        }
    }
}

#[test]
fn chaos_checks_catch_a_broken_rule() {
    // The chaos checks can fail: with the VoteNotPersisted canary some seed elects two
    // leaders in one term (§5.2) or diverges.
    let caught = (0..400u64).any(|seed| {
        std::panic::catch_unwind(|| {
            chaos_run_with(seed, 3000, Some(Canary::VoteNotPersisted));
        })
        .is_err()
    });
    assert!(caught, "no seed caught the VoteNotPersisted canary");
}

#[test]
fn grant_of_an_older_term_is_not_released_after_a_newer_persist() {
    // §5.2 durability: a grant whose term was overtaken before it was persisted is dropped
    // rather than released after a persist that carries only the newer term and vote.
    let mut cluster = Cluster::new(3);
    cluster.step(1, message(2, 1, 1, vote_request(EntryId::ZERO)));
    cluster.step(1, message(3, 1, 2, vote_request(EntryId::ZERO)));
    let ready = cluster.raft(1).ready();
    let persisted = ready
        .persist
        .as_ref()
        .and_then(|persist| persist.hard_state);
    assert_eq!(
        persisted.map(|h| (h.term, h.vote)),
        Some((Term(2), Some(node(3))))
    );
    let (now, after) = vote_grants(&ready);
    assert!(now.is_empty());
    assert_eq!(after, vec![node(3)], "only the grant of the persisted term");
}

#[test]
fn learners_receive_entries_but_neither_vote_nor_count() {
    // Thesis §4.2.1: a learner (non-voting member) is replicated to, never campaigns, and
    // does not count toward the commit quorum.
    let mut cluster = Cluster::new(4);
    let membership = Membership {
        voters: vec![node(1), node(2), node(3)],
        learners: vec![node(4)],
    };
    for id in 1..=4 {
        cluster
            .peers
            .get_mut(&node(id))
            .expect("peer exists")
            .membership = membership.clone();
        cluster.restart(id, false);
    }
    cluster.elect(1);
    cluster.propose(1, "a");
    cluster.tick(1);
    assert_eq!(cluster.applied_texts(4), vec![data("a")]);
    // Leader plus learner are not a majority of the voters.
    for voter in [2, 3] {
        cluster.cut.insert((node(1), node(voter)));
        cluster.cut.insert((node(voter), node(1)));
    }
    let entry = cluster.propose(1, "b");
    assert_eq!(
        cluster.raft(4).status().last,
        entry,
        "the learner holds the entry"
    );
    assert!(
        cluster.raft(1).status().commit < entry.index,
        "a learner counted"
    );
    // Alone for many timeouts, the learner never campaigns.
    cluster.isolate(4);
    let term = cluster.raft(4).status().term;
    cluster.tick(100);
    assert_eq!(cluster.raft(4).status().term, term);
    assert_eq!(cluster.role(4), RoleKind::Follower);
}

#[test]
fn snapshot_of_a_later_term_than_its_message_is_refused() {
    // Thesis §5: a leader offers only a snapshot of committed entries, which are of its term
    // or earlier; anything else is refused before it touches state.
    let membership = Membership::new(vec![node(1), node(2), node(3)]);
    let config = RaftConfig::new(node(2), GroupId(1));
    let restored = RestoredState::bootstrap(membership.clone());
    let mut raft = RaftNode::new(config, restored, Prng::new(seed()));
    let snapshot = crate::raft::types::SnapshotMeta {
        last: EntryId::new(Term(4), LogIndex(9)),
        membership,
    };
    let offer = message(1, 2, 3, MessageBody::InstallSnapshot { snapshot });
    let refused = raft.step(offer);
    assert!(
        matches!(
            refused,
            Err(crate::raft::errors::StepError::MalformedSnapshot { .. })
        ),
        "{refused:?}"
    );
    assert_eq!(raft.status().term, Term(0));
    assert_eq!(raft.status().commit, LogIndex::ZERO);
    assert_eq!(
        raft.compact(LogIndex(1)),
        Err(crate::raft::errors::CompactError::BeyondApplied {
            index: LogIndex(1),
            applied: LogIndex::ZERO
        })
    );
}

#[test]
fn a_follower_needing_a_snapshot_is_offered_the_newest_one_kept() {
    // Thesis §5.3: the leader may send any snapshot of committed state. The log starts at
    // the older of two kept snapshots; the follower is offered the newer one noted beside it
    // (and the one the log starts at when none is noted), so it replays fewer entries.
    static OFFERED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let offered = |note: Option<u64>| {
        let mut cluster = Cluster::new(3);
        cluster.elect(1);
        cluster.isolate(3);
        for _ in 0..20 {
            cluster.propose(1, "entry");
        }
        let applied = cluster.raft(1).applied;
        assert!(applied >= LogIndex(20), "leader applied only {applied}");
        cluster.raft(1).compact(LogIndex(5)).expect("compacts");
        if let Some(index) = note {
            cluster.raft(1).note_snapshot(LogIndex(index));
        }
        OFFERED.store(0, std::sync::atomic::Ordering::SeqCst);
        cluster.filter = Some(|message| {
            let MessageBody::InstallSnapshot { snapshot } = &message.body else {
                return false;
            };
            OFFERED.store(
                snapshot.last.index.get(),
                std::sync::atomic::Ordering::SeqCst,
            );
            true
        });
        cluster.heal();
        cluster.tick_until(20, |_| {
            OFFERED.load(std::sync::atomic::Ordering::SeqCst) != 0
        });
        OFFERED.load(std::sync::atomic::Ordering::SeqCst)
    };
    assert_eq!(offered(None), 5);
    assert_eq!(offered(Some(15)), 15);
    // Beyond what the leader applied, a note is ignored.
    assert_eq!(offered(Some(500)), 5);
}

#[test]
fn a_node_below_its_vote_floor_neither_votes_nor_campaigns() {
    // §5.4.1: a node that lost entries it may have acknowledged must not help elect a
    // candidate that misses them: below its vote floor it refuses votes and never campaigns;
    // once its log reaches the floor again through a leader's appends, it votes as usual.
    let membership = Membership::new(vec![node(1), node(2), node(3)]);
    let mut restored = RestoredState::bootstrap(membership);
    restored.hard_state.term = Term(3);
    restored.vote_floor = LogIndex(2);
    let config = RaftConfig::new(node(1), GroupId(0));
    let mut raft = RaftNode::new(config, restored, Prng::new(seed()));
    // The floor is persisted at once, so a second restart keeps it.
    let persisted_floor = |ready: &Ready| {
        ready
            .persist
            .as_ref()
            .and_then(|persist| persist.hard_state)
            .map(|hard_state| hard_state.vote_floor)
    };
    let ready = raft.ready();
    assert_eq!(persisted_floor(&ready), Some(LogIndex(2)));
    if let Some(persist) = &ready.persist {
        raft.on_persisted(persist.position);
    }
    for _ in 0..200 {
        raft.tick();
    }
    assert_eq!(raft.status().role, RoleKind::Follower);
    assert_eq!(raft.status().term, Term(3));
    raft.step(message(2, 1, 3, MessageBody::TimeoutNow))
        .expect("hand-over steps");
    assert_eq!(
        raft.status().role,
        RoleKind::Follower,
        "stood for election below the floor when handed leadership"
    );
    let durable = |raft: &mut RaftNode, ready: &Ready| {
        if let Some(persist) = &ready.persist {
            raft.on_persisted(persist.position);
        }
    };
    raft.step(message(2, 1, 4, vote_request(EntryId::ZERO)))
        .expect("vote request steps");
    let ready = raft.ready();
    assert_eq!(
        vote_grants(&ready),
        (Vec::new(), Vec::new()),
        "voted below the floor"
    );
    durable(&mut raft, &ready);
    let entries = (1..=2)
        .map(|index| Entry {
            id: EntryId::new(Term(5), LogIndex(index)),
            kind: EntryKind::Empty,
            data: Bytes::new(),
        })
        .collect();
    let append = MessageBody::Append {
        prev: EntryId::ZERO,
        entries,
        commit: LogIndex(2),
    };
    raft.step(message(3, 1, 5, append)).expect("append steps");
    let ready = raft.ready();
    assert_eq!(
        persisted_floor(&ready),
        Some(LogIndex::ZERO),
        "the floor is dropped with the entries that reach it"
    );
    durable(&mut raft, &ready);
    // A hand-over's vote (thesis §3.10), so the lease of the leader just heard does not
    // refuse it.
    let transfer_vote = MessageBody::Vote {
        last: EntryId::new(Term(5), LogIndex(2)),
        leader_transfer: true,
    };
    raft.step(message(2, 1, 6, transfer_vote))
        .expect("vote request steps");
    let ready = raft.ready();
    let (_, granted) = vote_grants(&ready);
    assert_eq!(
        granted,
        vec![node(2)],
        "no vote once the log reached the floor"
    );
}

#[test]
fn a_follower_that_lost_its_log_is_rebuilt_by_the_leader_even_in_an_idle_group() {
    // A follower back without the entries it acknowledged says so (`lost`) when a heartbeat
    // shows it a commit beyond its log, so the leader forgets its match and sends everything
    // again although no new entry gives it an append to reject; the floor is then dropped.
    let mut cluster = Cluster::new(3);
    cluster.elect(1);
    let mut expected = Vec::new();
    for text in ["one", "two", "three"] {
        cluster.propose(1, text);
        expected.push(data(text));
    }
    cluster.tick_until(20, |c| c.applied_texts(3).len() == expected.len());
    cluster.restart_without_log(3);
    assert!(cluster.applied_texts(3).is_empty());
    assert!(!cluster.raft(3).may_vote());
    cluster.tick_until(50, |c| c.applied_texts(3).len() == expected.len());
    assert_eq!(
        cluster.applied_texts(3),
        expected,
        "the idle group was not rebuilt"
    );
    assert!(
        cluster.raft(3).may_vote(),
        "the floor stayed after the rebuild"
    );
    let lost_rejections = cluster
        .delivered
        .iter()
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::AppendResponse(AppendResponse::Rejected { lost: true, .. })
            )
        })
        .count();
    assert!(lost_rejections > 0, "no rejection said the log was lost");
    cluster.propose(1, "four");
    expected.push(data("four"));
    cluster.tick_until(20, |c| c.applied_texts(3).len() == expected.len());
    assert_eq!(cluster.applied_texts(3), expected);
}
