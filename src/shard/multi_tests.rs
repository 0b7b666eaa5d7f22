//! Tests of `MultiRaft`'s routing, batching, dirty set and held messages against a scripted
//! group whose output is fully known, so every count asserted here is exact. The Raft core
//! itself is exercised by the cluster tests in `cluster_tests.rs`.

use std::convert::Infallible;

use bytes::Bytes;

use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::raft::{
    AppendResponse, Entry, EntryKind, Message, MessageBody, Persist, PersistPosition, Ready,
};
use crate::shard::batch::Batch;
use crate::shard::group::RaftGroup;
use crate::shard::multi::{MultiRaft, MultiRaftError, RoundOutput};

/// A group with a fixed role: as leader it heartbeats every peer on every tick and appends
/// proposals to them; as follower it answers heartbeats at once and acknowledges appends only
/// after their persist (the Ready contract's `messages_after_persist`).
struct ScriptedGroup {
    me: NodeId,
    peers: Vec<NodeId>,
    leader: bool,
    last_index: LogIndex,
    position: PersistPosition,
    pending: Ready,
    received: Vec<Message>,
    persisted: PersistPosition,
}

impl ScriptedGroup {
    fn new(me: u64, peers: &[u64], leader: bool) -> ScriptedGroup {
        ScriptedGroup {
            me: NodeId(me),
            peers: peers.iter().copied().map(NodeId).collect(),
            leader,
            last_index: LogIndex::ZERO,
            position: PersistPosition(0),
            pending: Ready::default(),
            received: Vec::new(),
            persisted: PersistPosition(0),
        }
    }

    fn message(&self, to: NodeId, body: MessageBody) -> Message {
        Message {
            from: self.me,
            to,
            term: Term(1),
            body,
        }
    }

    fn persist(&mut self, entries: Vec<Entry>) {
        self.position = PersistPosition(self.position.0 + 1);
        self.pending.persist = Some(Persist {
            position: self.position,
            entries,
            hard_state: None,
            snapshot: None,
        });
    }
}

impl RaftGroup for ScriptedGroup {
    type StepError = Infallible;
    type ProposeError = Infallible;

    fn tick(&mut self) {
        if self.leader {
            for i in 0..self.peers.len() {
                let body = MessageBody::Heartbeat {
                    commit: self.last_index,
                    read_round: None,
                };
                let message = self.message(self.peers[i], body);
                self.pending.messages.push(message);
            }
        }
    }

    fn step(&mut self, message: Message) -> Result<(), Infallible> {
        match &message.body {
            MessageBody::Heartbeat { .. } => {
                let body = MessageBody::HeartbeatResponse { read_round: None };
                let reply = self.message(message.from, body);
                self.pending.messages.push(reply);
            }
            MessageBody::Append { entries, .. } => {
                let last_index = entries.last().map_or(self.last_index, |e| e.index());
                self.last_index = last_index;
                self.persist(entries.clone());
                let body = MessageBody::AppendResponse(AppendResponse::Accepted { last_index });
                let reply = self.message(message.from, body);
                self.pending.messages_after_persist.push(reply);
            }
            _ => {}
        }
        self.received.push(message);
        Ok(())
    }

    fn propose(&mut self, data: Bytes) -> Result<EntryId, Infallible> {
        self.last_index = self.last_index.next();
        let entry = Entry {
            id: EntryId::new(Term(1), self.last_index),
            kind: EntryKind::Command,
            data,
        };
        for i in 0..self.peers.len() {
            let body = MessageBody::Append {
                prev: EntryId::ZERO,
                entries: vec![entry.clone()],
                commit: LogIndex::ZERO,
            };
            let message = self.message(self.peers[i], body);
            self.pending.messages.push(message);
        }
        self.persist(vec![entry.clone()]);
        Ok(entry.id)
    }

    fn campaign(&mut self) {
        self.leader = true;
    }

    fn has_ready(&self) -> bool {
        !self.pending.is_empty()
    }

    fn ready(&mut self) -> Ready {
        std::mem::take(&mut self.pending)
    }

    fn on_persisted(&mut self, position: PersistPosition) {
        self.persisted = position;
    }

    fn on_applied(&mut self, _index: LogIndex) {}

    fn on_fetched(&mut self, _entries: Vec<Entry>) {}
}

/// Node 1 leads every group; nodes 2 and 3 follow.
fn multi(node: u64, group_count: u32) -> MultiRaft<ScriptedGroup> {
    let all = [1u64, 2, 3];
    let peers: Vec<u64> = all.iter().copied().filter(|&n| n != node).collect();
    let mut multi = MultiRaft::new(NodeId(node));
    for g in 0..group_count {
        let group = ScriptedGroup::new(node, &peers, node == 1);
        multi.add_group(GroupId(g), group).expect("fresh group id");
    }
    multi
}

#[test]
fn one_batch_per_destination_whatever_the_number_of_groups() {
    // For 1, 10 and 1,000 groups, a tick plus a proposal in every group yields exactly one
    // batch per peer, holding every group's append and coalesced heartbeat.
    for group_count in [1u32, 10, 1000] {
        let mut leader = multi(1, group_count);
        let mut out = RoundOutput::default();
        leader.round(&mut out);
        leader.tick();
        for g in 0..group_count {
            leader
                .propose(GroupId(g), Bytes::from_static(b"sixteen byte cmd"))
                .expect("scripted leader accepts");
        }
        leader.round(&mut out);
        assert_eq!(out.batches.len(), 2, "{group_count} groups");
        for batch in &out.batches {
            assert_eq!(batch.messages.len(), group_count as usize);
            assert_eq!(batch.heartbeats.len(), group_count as usize);
            assert!(batch.heartbeat_responses.is_empty());
        }
        assert_eq!(
            out.persists.len(),
            group_count as usize,
            "one write's requests"
        );
    }
}

#[test]
fn heartbeats_round_trip_as_one_coalesced_list_each_way() {
    // 500 groups' heartbeats reach each follower as one list, come back as one list of
    // responses, and every group on every node sees exactly its own messages.
    let group_count = 500u32;
    let mut nodes = [
        multi(1, group_count),
        multi(2, group_count),
        multi(3, group_count),
    ];
    let mut out = RoundOutput::default();
    for node in &mut nodes {
        node.round(&mut out);
        assert!(out.is_empty(), "fresh scripted groups have nothing to say");
    }
    nodes[0].tick();
    nodes[0].round(&mut out);
    let batches = std::mem::take(&mut out.batches);
    assert_eq!(batches.len(), 2);
    let mut responses: Vec<Batch> = Vec::new();
    for batch in batches {
        assert_eq!(batch.heartbeats.len(), group_count as usize);
        let follower = &mut nodes[batch.to.get() as usize - 1];
        let summary = follower.step_batch(batch).expect("well addressed");
        assert_eq!(summary.delivered_count, group_count as usize);
        follower.round(&mut out);
        assert_eq!(out.batches.len(), 1, "responses go back in one batch");
        responses.append(&mut out.batches);
    }
    for batch in responses {
        assert_eq!(batch.heartbeat_responses.len(), group_count as usize);
        assert!(batch.messages.is_empty() && batch.heartbeats.is_empty());
        nodes[0].step_batch(batch).expect("well addressed");
    }
    for g in 0..group_count {
        let group = GroupId(g);
        let leader = nodes[0].group(group).expect("hosted");
        assert_eq!(leader.received.len(), 2, "group {g}: two responses");
        for follower in &nodes[1..] {
            let received = &follower.group(group).expect("hosted").received;
            assert_eq!(received.len(), 1, "group {g}");
            assert_eq!(received[0].from, NodeId(1));
            assert_eq!(received[0].to, follower.node());
            assert!(matches!(received[0].body, MessageBody::Heartbeat { .. }));
        }
    }
}

#[test]
fn idle_rounds_visit_no_group() {
    // Once every group's output is collected, rounds and ticks of followers that produce
    // nothing visit no group and return nothing, with 10,000 groups hosted.
    let mut follower = multi(2, 10_000);
    let mut out = RoundOutput::default();
    follower.round(&mut out);
    assert_eq!(
        follower.stats().groups_visited_count,
        10_000,
        "bootstrap marks all"
    );
    for _ in 0..5 {
        follower.tick();
        assert!(!follower.has_work());
        follower.round(&mut out);
        assert!(out.is_empty());
    }
    assert_eq!(follower.stats().groups_visited_count, 10_000);
    assert_eq!(follower.stats().ready_count, 0);
}

#[test]
fn acknowledgements_wait_for_the_persist_they_depend_on() {
    // A follower's append acknowledgement is held by the round until the caller reports the
    // group's position durable, then leaves in the next round's batch.
    let mut leader = multi(1, 3);
    let mut follower = multi(2, 3);
    let mut out = RoundOutput::default();
    leader.round(&mut out);
    follower.round(&mut out);
    leader
        .propose(GroupId(1), Bytes::from_static(b"x"))
        .expect("scripted leader accepts");
    leader.round(&mut out);
    let to_follower = out
        .batches
        .drain(..)
        .find(|b| b.to == NodeId(2))
        .expect("an append for node 2");
    follower.step_batch(to_follower).expect("well addressed");
    follower.round(&mut out);
    assert!(out.batches.is_empty(), "ack must wait for the persist");
    assert_eq!(out.persists.len(), 1);
    let persisted = (out.persists[0].group, out.persists[0].persist.position);
    assert_eq!(persisted.0, GroupId(1));
    follower.round(&mut out);
    assert!(out.is_empty(), "still not durable");
    assert!(!follower.has_work());
    follower
        .on_persisted(persisted.0, persisted.1)
        .expect("hosted");
    assert!(follower.has_work());
    follower.round(&mut out);
    assert_eq!(out.batches.len(), 1);
    let ack = &out.batches[0].messages;
    assert_eq!(ack.len(), 1);
    assert_eq!(ack[0].group, GroupId(1));
    assert!(matches!(
        ack[0].body,
        MessageBody::AppendResponse(AppendResponse::Accepted {
            last_index: LogIndex(1)
        })
    ));
}

#[test]
fn misaddressed_batches_and_unknown_groups_are_refused_or_dropped() {
    // A batch for another node is an error; messages for groups not hosted here are dropped
    // and counted, while the batch's other messages are delivered.
    let mut leader = multi(1, 2);
    let mut follower = multi(2, 1);
    let mut out = RoundOutput::default();
    leader.round(&mut out);
    leader.tick();
    leader.round(&mut out);
    let mut batches = std::mem::take(&mut out.batches);
    let to_three = batches
        .iter()
        .position(|b| b.to == NodeId(3))
        .expect("batch to 3");
    let to_three = batches.swap_remove(to_three);
    assert!(matches!(
        follower.step_batch(to_three),
        Err(MultiRaftError::Misaddressed {
            to: NodeId(3),
            node: NodeId(2)
        })
    ));
    let to_two = batches.pop().expect("batch to 2");
    let summary = follower.step_batch(to_two).expect("well addressed");
    assert_eq!((summary.delivered_count, summary.dropped_count), (1, 1));
    assert_eq!(follower.stats().messages_dropped_count, 1);
    assert!(matches!(
        follower.propose(GroupId(9), Bytes::new()),
        Err(MultiRaftError::UnknownGroup { group: GroupId(9) })
    ));
    assert!(matches!(
        follower.add_group(GroupId(0), ScriptedGroup::new(2, &[1, 3], false)),
        Err(MultiRaftError::GroupExists { group: GroupId(0) })
    ));
}
