//! Tests of `MultiRaft` over the real Raft core: an in-memory cluster of three nodes'
//! `MultiRaft<RaftNode>` (`LocalCluster`) elects leaders for every group through its own
//! election timeouts, commits proposals in each group identically on every node, and sends
//! one batch per destination per round however many groups talk.

use bytes::Bytes;

use crate::ids::{GroupId, NodeId, Ticks};
use crate::raft::{RaftNode, RoleKind};
use crate::shard::local::LocalCluster;
use crate::shard::test_seed;

const NODE_COUNT: u64 = 3;

fn cluster(group_count: u32, seed: u64) -> LocalCluster<RaftNode> {
    LocalCluster::bootstrap(NODE_COUNT, group_count, seed)
}

/// Ticks (each followed by a quiet cluster) until every group has a leader that its own
/// status confirms; returns the ticks taken. Panics, naming the group, past `ticks_max`.
fn tick_until_all_led(
    cluster: &mut LocalCluster<RaftNode>,
    group_count: u32,
    ticks_max: Ticks,
) -> u32 {
    for ticks in 1..=ticks_max.get() {
        cluster.tick();
        cluster.step_until_quiet(64);
        let all_led = (0..group_count).all(|g| {
            let group = GroupId(g);
            cluster.leader(group).is_some_and(|leader| {
                let status = cluster.node(leader).group(group).expect("hosted").status();
                status.role == RoleKind::Leader
            })
        });
        if all_led {
            return ticks;
        }
    }
    let unled = (0..group_count).find(|&g| cluster.leader(GroupId(g)).is_none());
    panic!("no leader for every group after {ticks_max} ticks; first unled: {unled:?}");
}

#[test]
fn three_nodes_elect_leaders_for_100_groups_and_commit_in_each() {
    // Paper §5.2 and §5.3 across 100 groups at once: elections by timeout give every group
    // one leader, and five proposals per group are applied on all three nodes, in the same
    // order, with the same bytes.
    let seed = test_seed();
    let group_count = 100;
    let mut cluster = cluster(group_count, seed);
    cluster.record_applied();
    let ticks = tick_until_all_led(&mut cluster, group_count, Ticks(200));
    println!("all {group_count} groups led after {ticks} ticks");
    let mut leaders_used = [false; NODE_COUNT as usize];
    for g in 0..group_count {
        let group = GroupId(g);
        let leader = cluster.leader(group).expect("led");
        leaders_used[leader.get() as usize - 1] = true;
        for k in 0..5u32 {
            let command = Bytes::from(format!("group {g} command {k}"));
            cluster
                .node_mut(leader)
                .propose(group, command)
                .expect("the leader accepts");
        }
    }
    cluster.step_until_quiet(64);
    // Followers learn the final commit index from the leader's next heartbeat.
    cluster.tick();
    cluster.step_until_quiet(64);
    let reference = cluster.applied_log(NodeId(1)).to_vec();
    for g in 0..group_count {
        let commands: Vec<_> = reference
            .iter()
            .filter(|(group, _, data)| group.get() == g && !data.is_empty())
            .map(|(_, _, data)| data.clone())
            .collect();
        let expected: Vec<_> = (0..5u32)
            .map(|k| Bytes::from(format!("group {g} command {k}")))
            .collect();
        assert_eq!(commands, expected, "group {g} applied on node 1");
    }
    for n in 2..=NODE_COUNT {
        let mut log = cluster.applied_log(NodeId(n)).to_vec();
        let mut reference = reference.clone();
        // Nodes hand out groups' entries in different interleavings; per group, the order
        // and content must match.
        log.sort_by_key(|(group, index, _)| (*group, *index));
        reference.sort_by_key(|(group, index, _)| (*group, *index));
        assert_eq!(log, reference, "node {n} applied differently from node 1");
    }
    println!("leaders on nodes: {leaders_used:?}");
}

#[test]
fn an_idle_cluster_sends_one_batch_per_peer_per_tick_and_nothing_between() {
    // With 300 groups led from all three nodes, a tick's heartbeats travel as at most one
    // batch per ordered node pair, and rounds without a tick visit no group at all.
    let seed = test_seed();
    let group_count = 300;
    let mut cluster = cluster(group_count, seed);
    cluster.elect_spread(group_count);
    let pairs = (NODE_COUNT * (NODE_COUNT - 1)) as usize;
    for _ in 0..20 {
        cluster.tick();
        let mut batched = false;
        for _ in 0..16 {
            let counts = cluster.step();
            assert!(
                counts.batch_count <= pairs,
                "{} batches in one step, more than {pairs} node pairs",
                counts.batch_count
            );
            batched |= counts.batch_count > 0;
            if counts.is_idle() && !(1..=NODE_COUNT).any(|n| cluster.node(NodeId(n)).has_work()) {
                break;
            }
        }
        assert!(batched, "a tick of 300 leaders sent no heartbeat");
    }
    let visited: Vec<u64> = (1..=NODE_COUNT)
        .map(|n| cluster.node(NodeId(n)).stats().groups_visited_count)
        .collect();
    for _ in 0..10 {
        assert!(cluster.step().is_idle());
    }
    for n in 1..=NODE_COUNT {
        let node = cluster.node(NodeId(n));
        assert_eq!(
            node.stats().groups_visited_count,
            visited[n as usize - 1],
            "node {n} visited groups in rounds without input"
        );
        assert!(!node.has_work(), "node {n}");
    }
}
