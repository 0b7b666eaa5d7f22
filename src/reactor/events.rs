//! The operator's log lines for what a core's shard reports after each round
//! (`ShardEvent`): elections, leader changes, leader hand-overs while stopping, failed client
//! requests. Every line about a group names the group and its term; node and core come from
//! the span the core's executor thread runs in (`reactor::server`). Every warning says what
//! the operator should do.
//!
//! It must not decide anything: the shard decides what happened, this file only words it.

use crate::ids::NodeId;
use crate::raft::RoleKind;
use crate::reactor::shard_api::{RequestFailure, ShardEvent};

/// Logs and removes every event, in order.
pub fn log_events(events: &mut Vec<ShardEvent>) {
    for event in events.drain(..) {
        log_event(event);
    }
}

fn log_event(event: ShardEvent) {
    match event {
        ShardEvent::ElectionStarted {
            group,
            term,
            pre_vote,
        } => {
            let kind = if pre_vote { "pre-vote" } else { "vote" };
            tracing::info!(%group, %term, kind = %kind, "election started");
        }
        ShardEvent::ElectionWon { group, term } => {
            tracing::info!(%group, %term, "election won: this node leads the group");
        }
        ShardEvent::ElectionLost {
            group,
            term,
            leader,
        } => {
            tracing::info!(%group, %term, leader = %node_or_none(leader), "election lost");
        }
        ShardEvent::LeaderChanged {
            group,
            term,
            leader,
            role,
        } => {
            tracing::info!(%group, %term, leader = %node_or_none(leader),
                role = %role_name(role), "leader changed");
        }
        ShardEvent::TransferStarted {
            group,
            term,
            target,
        } => {
            tracing::info!(%group, %term, %target, "stopping: handing leadership over");
        }
        ShardEvent::SteppedDown { group, term } => {
            tracing::warn!(%group, %term,
                "stepped down: this leader no longer hears from a majority of the group; check \
                 the peer connection lines and that the other nodes run (`ringraft status`)");
        }
        ShardEvent::TransferDone {
            group,
            term,
            leader,
        } => {
            tracing::info!(%group, %term, leader = %node_or_none(leader),
                "stopping: leadership handed over");
        }
        ShardEvent::TransferFailed {
            group,
            term,
            target: Some(target),
        } => {
            tracing::warn!(%group, %term, %target,
                "stopping: node {target} did not take over the group in time; trying another \
                 peer until the drain deadline (check the peer with `ringraft status`)");
        }
        ShardEvent::TransferFailed {
            group,
            term,
            target: None,
        } => {
            tracing::warn!(%group, %term,
                "stopping: no peer heard from recently can take over the group; it elects a \
                 leader once a majority of its nodes runs (start the stopped nodes)");
        }
        ShardEvent::RequestsFailed {
            group,
            term,
            count,
            failure: RequestFailure::TimedOut,
        } => {
            tracing::warn!(%group, %term, count,
                "client requests timed out (a write may or may not have taken effect): check \
                 that a majority of the nodes runs and reaches each other (`ringraft status`)");
        }
        ShardEvent::RequestsFailed {
            group,
            term,
            count,
            failure: RequestFailure::NoLeader,
        } => {
            tracing::warn!(%group, %term, count,
                "client requests failed: the group has no leader; start enough nodes for a \
                 majority and check the peer connection lines");
        }
        ShardEvent::BadForward { from, error } => {
            tracing::warn!(peer = %from, %error,
                "a peer forwarded a request that does not decode: run the same ringraft \
                 version on every node");
        }
        ShardEvent::SnapshotTaken { group, term, index } => {
            tracing::info!(%group, %term, %index, "snapshot taken; log compacted");
        }
        ShardEvent::SnapshotFailed {
            group,
            term,
            index,
            reason,
        } => {
            tracing::warn!(%group, %term, %index, %reason,
                "taking a snapshot failed; retrying later (the log keeps growing until one \
                 succeeds: check the disk and free space in the data directory)");
        }
        ShardEvent::SnapshotInstalled { group, term, index } => {
            tracing::info!(%group, %term, %index,
                "installed the leader's snapshot: the group's state is the snapshot's");
        }
        ShardEvent::StateLost {
            group,
            term,
            vote_floor,
            reason,
        } => {
            tracing::error!(%group, %term, %vote_floor, %reason,
                "the group's stored state is lost: it starts empty and rebuilds from its \
                 leader's snapshot, and does not vote until it holds the index it may have \
                 acknowledged; check the disk of this node (the files that did not load are \
                 set aside as *.snap.corrupt)");
        }
        ShardEvent::SnapshotRefused {
            group,
            term,
            index,
            reason,
        } => {
            tracing::warn!(%group, %term, %index, %reason,
                "the group refused a snapshot received from its leader; the leader offers \
                 one again");
        }
    }
}

fn node_or_none(node: Option<NodeId>) -> String {
    node.map_or_else(|| "none".to_string(), |node| node.to_string())
}

fn role_name(role: RoleKind) -> &'static str {
    match role {
        RoleKind::Follower => "follower",
        RoleKind::PreCandidate => "pre-candidate",
        RoleKind::Candidate => "candidate",
        RoleKind::Leader => "leader",
    }
}
