//! Whole simulated nodes (production shards over the production WAL on simulated disks):
//! serving through any node, a minority committing nothing, graceful hand-off, and a seeded
//! run of crashes and restarts after which every acknowledged write is still readable from
//! every node.

use super::*;
use crate::ids::GroupId;
use crate::raft::RoleKind;
use crate::wire::client::{ErrorCode, Reply};

fn seed() -> u64 {
    let seed = std::env::var("RINGRAFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    println!("seed {seed} (replay with RINGRAFT_SEED={seed})");
    seed
}

fn value(text: &str) -> Reply {
    Reply::Value(Some(Bytes::copy_from_slice(text.as_bytes())))
}

fn reply(response: Option<ClientResponse>) -> Reply {
    response.expect("an answer before the deadline").reply
}

#[test]
fn writes_and_reads_through_every_node() {
    // A write sent to any node (leader or not) is acknowledged, and a linearizable read
    // through every node returns it.
    let mut sim = ShardSim::new(ShardSimConfig::new(seed(), 3));
    for (n, node) in sim.node_ids().into_iter().enumerate() {
        for k in 0..4 {
            let key = format!("key-{n}-{k}");
            assert_eq!(
                reply(sim.put(node, &key, &key)),
                Reply::Written,
                "{key} via {node}"
            );
        }
    }
    for node in sim.node_ids() {
        for n in 0..3 {
            for k in 0..4 {
                let key = format!("key-{n}-{k}");
                assert_eq!(reply(sim.get(node, &key)), value(&key), "{key} via {node}");
            }
        }
        assert_eq!(reply(sim.get(node, "absent")), Reply::Value(None));
    }
}

#[test]
fn compare_and_set_and_delete_through_a_follower() {
    // The outcome of a conditional write travels back from the leader unchanged.
    let mut sim = ShardSim::new(ShardSimConfig::new(seed(), 3));
    let node = NodeId(3);
    let key = Bytes::from_static(b"k");
    let cas = |expected: Option<&'static str>, new: Option<&'static str>| {
        ClientOp::Write(Command::Cas {
            key: key.clone(),
            expected: expected.map(|v| Bytes::from_static(v.as_bytes())),
            new: new.map(|v| Bytes::from_static(v.as_bytes())),
        })
    };
    let run = |sim: &mut ShardSim, op| {
        let id = sim.request(node, 7, op);
        reply(sim.wait(node, 7, id, 300))
    };
    let created = Reply::Cas {
        succeeded: true,
        current: Some(Bytes::from_static(b"a")),
    };
    assert_eq!(run(&mut sim, cas(None, Some("a"))), created);
    let refused = Reply::Cas {
        succeeded: false,
        current: Some(Bytes::from_static(b"a")),
    };
    assert_eq!(run(&mut sim, cas(Some("x"), Some("b"))), refused);
    assert_eq!(
        run(
            &mut sim,
            ClientOp::Write(Command::Delete { key: key.clone() })
        ),
        Reply::Deleted { existed: true }
    );
    assert_eq!(
        run(
            &mut sim,
            ClientOp::Write(Command::Delete { key: key.clone() })
        ),
        Reply::Deleted { existed: false }
    );
}

#[test]
fn a_minority_commits_nothing_and_recovers_when_a_peer_returns() {
    // With two of three nodes down, a write fails within the request timeout and no node
    // ever serves it; once one node returns, writes succeed again.
    let mut config = ShardSimConfig::new(seed(), 3);
    config.request_timeout_ticks = 60;
    let mut sim = ShardSim::new(config);
    assert_eq!(reply(sim.put(NodeId(1), "before", "1")), Reply::Written);
    sim.crash(NodeId(2));
    sim.crash(NodeId(3));
    let failed = reply(sim.put(NodeId(1), "lost", "x"));
    assert!(
        matches!(
            failed,
            Reply::Error {
                code: ErrorCode::Timeout | ErrorCode::Unavailable,
                ..
            }
        ),
        "{failed:?}"
    );
    sim.restart(NodeId(2));
    assert_eq!(reply(sim.put(NodeId(2), "after", "2")), Reply::Written);
    assert_eq!(reply(sim.get(NodeId(1), "before")), value("1"));
    sim.restart(NodeId(3));
    assert_eq!(reply(sim.get(NodeId(3), "after")), value("2"));
}

#[test]
fn graceful_stop_hands_every_leadership_to_a_peer() {
    // After begin_shutdown a node leads no group, the others lead them all, and writes go on.
    let mut config = ShardSimConfig::new(seed(), 3);
    config.groups_total = 12;
    let mut sim = ShardSim::new(config);
    for k in 0..12 {
        assert_eq!(
            reply(sim.put(NodeId(2), &format!("k{k}"), "v")),
            Reply::Written
        );
    }
    sim.begin_shutdown(NodeId(1));
    let mut ticks = 0;
    while !sim.is_drained(NodeId(1)) {
        assert!(ticks < 500, "node 1 still leads after {ticks} ticks");
        sim.round();
        sim.round();
        sim.tick();
        ticks += 1;
    }
    for core in 0..2u16 {
        let status = sim
            .shard(NodeId(2), CoreId(core))
            .expect("node 2 up")
            .status();
        for group in status {
            assert_ne!(
                group.leader,
                Some(NodeId(1)),
                "group {} still led by node 1",
                group.group
            );
        }
    }
    let refused = reply(sim.put(NodeId(1), "late", "v"));
    assert!(
        matches!(
            refused,
            Reply::Error {
                code: ErrorCode::ShuttingDown,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(reply(sim.put(NodeId(2), "after", "v")), Reply::Written);
}

#[test]
fn a_single_node_restarted_keeps_every_acknowledged_write() {
    // A one-node cluster recovers its state machine from its WAL after a crash.
    let mut sim = ShardSim::new(ShardSimConfig::new(seed(), 1));
    for k in 0..50 {
        assert_eq!(
            reply(sim.put(NodeId(1), &format!("k{k}"), &format!("v{k}"))),
            Reply::Written
        );
    }
    sim.crash(NodeId(1));
    sim.restart(NodeId(1));
    for k in 0..50 {
        assert_eq!(
            reply(sim.get(NodeId(1), &format!("k{k}"))),
            value(&format!("v{k}"))
        );
    }
}

#[test]
fn acknowledged_writes_survive_crashes_and_lossy_networks() {
    // Seeded: writes to random nodes while nodes crash (never more than a minority at once,
    // losing WAL appends not yet durable) and restart, with batches lost and delayed;
    // afterwards every acknowledged write is readable from every node.
    let seed = seed();
    for run in 0..16u64 {
        let mut config = ShardSimConfig::new(seed.wrapping_add(run), 3);
        config.loss_per_mille = 20;
        config.delay_rounds_max = 3;
        config.sync_rounds_max = 3;
        config.request_timeout_ticks = 80;
        let mut sim = ShardSim::new(config);
        let mut prng = Prng::new(seed.wrapping_add(run) ^ 0xc4a5);
        let mut acknowledged = Vec::new();
        for step in 0..200 {
            let nodes = sim.node_ids();
            let up: Vec<NodeId> = nodes.iter().copied().filter(|&n| sim.is_up(n)).collect();
            if prng.chance(1, 15) && up.len() == nodes.len() {
                let victim = *prng.choose(&up).expect("a node");
                sim.crash(victim);
            } else if prng.chance(1, 6) && up.len() < nodes.len() {
                let down = nodes
                    .iter()
                    .copied()
                    .find(|&n| !sim.is_up(n))
                    .expect("a node down");
                sim.restart(down);
            }
            let up: Vec<NodeId> = nodes.iter().copied().filter(|&n| sim.is_up(n)).collect();
            let node = *prng.choose(&up).expect("a node up");
            let key = format!("run{run}-step{step}");
            if let Some(response) = sim.put(node, &key, &key)
                && response.reply == Reply::Written
            {
                acknowledged.push(key);
            }
        }
        for node in sim.node_ids() {
            if !sim.is_up(node) {
                sim.restart(node);
            }
        }
        assert!(
            acknowledged.len() > 100,
            "seed {}: only {} writes acknowledged",
            seed + run,
            acknowledged.len()
        );
        for ((node, key), response) in sim.read_all(&acknowledged) {
            assert_eq!(
                reply(response),
                value(&key),
                "seed {}: {key} via {node}",
                seed + run
            );
        }
    }
}

#[test]
fn every_group_of_every_core_gets_a_leader() {
    // Bootstrapped groups elect leaders on their own, on every core of the cluster.
    let mut sim = ShardSim::new(ShardSimConfig::new(seed(), 3));
    for _ in 0..100 {
        sim.round();
        sim.tick();
    }
    for core in 0..2u16 {
        let status = sim.shard(NodeId(1), CoreId(core)).expect("up").status();
        assert_eq!(status.len(), 4);
        for group in status {
            assert_eq!(core_of_group(group.group, 2), CoreId(core));
            assert!(
                group.leader.is_some(),
                "group {} has no leader",
                group.group
            );
            let leader_status = sim
                .shard(group.leader.expect("leader"), CoreId(core))
                .expect("up")
                .status();
            let led = leader_status
                .iter()
                .find(|g| g.group == group.group)
                .expect("same group");
            assert_eq!(led.role, RoleKind::Leader);
            let _: GroupId = group.group;
        }
    }
}

/// Every group's (leader, term) as node `seen_by`'s shards know it.
fn leaders(sim: &ShardSim, seen_by: NodeId) -> Vec<(GroupId, Option<NodeId>, crate::ids::Term)> {
    (0..2u16)
        .flat_map(|core| sim.shard(seen_by, CoreId(core)).expect("node up").status())
        .map(|status| (status.group, status.leader, status.term))
        .collect()
}

#[test]
fn a_stopping_node_hands_over_only_to_live_peers_and_reports_every_step() {
    // Each leader reported winning the election of the term it leads in; with node 3 down,
    // node 1's graceful stop asks only node 2 to take over (thesis §3.10) and reports every
    // hand-over started in the term it led and done in a newer term, none failed.
    let mut config = ShardSimConfig::new(seed(), 3);
    config.groups_total = 12;
    let mut sim = ShardSim::new(config);
    for k in 0..12 {
        let key = format!("k{k}");
        assert_eq!(reply(sim.put(NodeId(2), &key, "v")), Reply::Written);
    }
    let events = sim.take_events();
    for (group, leader, term) in leaders(&sim, NodeId(2)) {
        let leader = leader.expect("every group has a leader after a write");
        let won = ShardEvent::ElectionWon { group, term };
        assert!(
            events.contains(&(leader, won)),
            "no ElectionWon of group {group} term {term} from node {leader}: {events:?}"
        );
    }
    sim.crash(NodeId(3));
    // Past an election timeout (10 ticks) node 1 no longer counts node 3 as live, and the
    // groups node 3 led elect a leader among nodes 1 and 2.
    let mut ticks = 0;
    while ticks < 30 || leaders(&sim, NodeId(2)).iter().any(|(_, l, _)| l.is_none()) {
        assert!(ticks < 500, "groups without a leader after {ticks} ticks");
        sim.round();
        sim.round();
        sim.tick();
        ticks += 1;
    }
    let led: Vec<_> = leaders(&sim, NodeId(1))
        .into_iter()
        .filter(|(_, leader, _)| *leader == Some(NodeId(1)))
        .collect();
    assert!(!led.is_empty(), "node 1 leads none of 12 groups");
    sim.take_events();
    sim.begin_shutdown(NodeId(1));
    let mut ticks = 0;
    while !sim.is_drained(NodeId(1)) {
        assert!(ticks < 500, "node 1 still leads after {ticks} ticks");
        sim.round();
        sim.round();
        sim.tick();
        ticks += 1;
    }
    sim.round();
    let events: Vec<ShardEvent> = sim
        .take_events()
        .into_iter()
        .filter(|(node, _)| *node == NodeId(1))
        .map(|(_, event)| event)
        .collect();
    for event in &events {
        match event {
            ShardEvent::TransferStarted { target, .. } => {
                assert_eq!(*target, NodeId(2), "asked a node that is down: {event:?}");
            }
            ShardEvent::TransferFailed { .. } => panic!("hand-over failed: {event:?}"),
            _ => {}
        }
    }
    for (group, _, term) in led {
        let started = ShardEvent::TransferStarted {
            group,
            term,
            target: NodeId(2),
        };
        assert!(
            events.contains(&started),
            "no hand-over of group {group} started in term {term}: {events:?}"
        );
        let done = events.iter().any(|event| {
            matches!(event, ShardEvent::TransferDone { group: g, term: t, .. }
                if *g == group && *t > term)
        });
        assert!(
            done,
            "no hand-over of group {group} done after term {term}: {events:?}"
        );
    }
}
