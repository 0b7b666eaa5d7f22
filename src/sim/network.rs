//! The simulated network between nodes: every message (a Raft message, or a chunk of a
//! snapshot's data and its acknowledgement) gets a random delay (so messages overtake each
//! other), may be lost or duplicated, and is dropped on delivery if its link is cut by a
//! partition (symmetric or one-way) at that moment.
//!
//! This module owns messages in flight and the link state. It must not look inside
//! messages beyond their endpoints, and must not deliver anything itself: the cluster pulls
//! due messages and steps the receivers.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};

use crate::ids::{GroupId, NodeId};
use crate::prng::Prng;
use crate::raft::Message;

use super::transfer::{ChunkAck, SnapshotChunk};

/// What travels between two nodes' instances of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Raft(Message),
    /// A piece of a snapshot's data, streamed by the layer around the Raft core.
    Chunk(SnapshotChunk),
    ChunkAck(ChunkAck),
}

impl Payload {
    pub fn from(&self) -> NodeId {
        match self {
            Payload::Raft(message) => message.from,
            Payload::Chunk(chunk) => chunk.from,
            Payload::ChunkAck(ack) => ack.from,
        }
    }

    pub fn to(&self) -> NodeId {
        match self {
            Payload::Raft(message) => message.to,
            Payload::Chunk(chunk) => chunk.to,
            Payload::ChunkAck(ack) => ack.to,
        }
    }
}

/// How unreliable the network is; drawn per seed, calmed for the liveness phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkFaults {
    /// Chance, per thousand, that a message is lost.
    pub loss_per_mille: u64,
    /// Chance, per thousand, that a message is delivered twice.
    pub duplicate_per_mille: u64,
    /// Delays are drawn uniformly from `[1, delay_units_max]` simulated time units.
    pub delay_units_max: u64,
}

impl NetworkFaults {
    /// A reliable network with small delays, for the liveness phase.
    pub fn calm(delay_units_max: u64) -> NetworkFaults {
        NetworkFaults {
            loss_per_mille: 0,
            duplicate_per_mille: 0,
            delay_units_max,
        }
    }
}

/// A message on the wire. Ordered by delivery time, then by send order.
#[derive(Debug)]
struct InFlight {
    deliver_at: u64,
    sequence: u64,
    group: GroupId,
    payload: Payload,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &InFlight) -> bool {
        (self.deliver_at, self.sequence) == (other.deliver_at, other.sequence)
    }
}

impl Eq for InFlight {}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &InFlight) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for InFlight {
    fn cmp(&self, other: &InFlight) -> std::cmp::Ordering {
        (self.deliver_at, self.sequence).cmp(&(other.deliver_at, other.sequence))
    }
}

/// Counters reported at the end of a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetworkStats {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub cut: u64,
    pub delivered: u64,
}

#[derive(Debug)]
pub struct SimNetwork {
    faults: NetworkFaults,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    /// Directed links `(from, to)` that drop everything.
    blocked: HashSet<(NodeId, NodeId)>,
    sequence: u64,
    pub stats: NetworkStats,
}

impl SimNetwork {
    pub fn new(faults: NetworkFaults) -> SimNetwork {
        assert!(
            faults.delay_units_max > 0,
            "network: delay_units_max must be positive, got {faults:?}"
        );
        SimNetwork {
            faults,
            in_flight: BinaryHeap::new(),
            blocked: HashSet::new(),
            sequence: 0,
            stats: NetworkStats::default(),
        }
    }

    pub fn set_faults(&mut self, faults: NetworkFaults) {
        assert!(
            faults.delay_units_max > 0,
            "network: delay_units_max must be positive, got {faults:?}"
        );
        self.faults = faults;
    }

    pub fn send(&mut self, now: u64, group: GroupId, payload: Payload, prng: &mut Prng) {
        assert_ne!(
            payload.from(),
            payload.to(),
            "network: node {} sends to itself: {payload:?}",
            payload.from()
        );
        self.stats.sent += 1;
        if prng.chance(self.faults.loss_per_mille, 1000) {
            self.stats.lost += 1;
            return;
        }
        if prng.chance(self.faults.duplicate_per_mille, 1000) {
            self.stats.duplicated += 1;
            self.enqueue(now, group, payload.clone(), prng);
        }
        self.enqueue(now, group, payload, prng);
    }

    fn enqueue(&mut self, now: u64, group: GroupId, payload: Payload, prng: &mut Prng) {
        let delay = prng.range_inclusive(1, self.faults.delay_units_max);
        self.sequence += 1;
        self.in_flight.push(Reverse(InFlight {
            deliver_at: now + delay,
            sequence: self.sequence,
            group,
            payload,
        }));
    }

    /// The next message due at or before `now` whose link is open; cut ones are dropped.
    pub fn pop_due(&mut self, now: u64) -> Option<(GroupId, Payload)> {
        loop {
            if self
                .in_flight
                .peek()
                .is_none_or(|Reverse(next)| next.deliver_at > now)
            {
                return None;
            }
            let Reverse(next) = self.in_flight.pop()?;
            if self.is_blocked(next.payload.from(), next.payload.to()) {
                self.stats.cut += 1;
                continue;
            }
            self.stats.delivered += 1;
            return Some((next.group, next.payload));
        }
    }

    pub fn is_blocked(&self, from: NodeId, to: NodeId) -> bool {
        self.blocked.contains(&(from, to))
    }

    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    pub fn blocked_links(&self) -> Vec<(NodeId, NodeId)> {
        let mut links: Vec<(NodeId, NodeId)> = self.blocked.iter().copied().collect();
        links.sort_unstable();
        links
    }

    pub fn heal(&mut self) {
        self.blocked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Term;
    use crate::raft::MessageBody;

    fn message(from: u64, to: u64) -> Payload {
        Payload::Raft(Message {
            from: NodeId(from),
            to: NodeId(to),
            term: Term(1),
            body: MessageBody::TimeoutNow,
        })
    }

    #[test]
    fn delivers_in_time_order_and_honours_one_way_cuts() {
        // Messages arrive no earlier than sent plus one unit, and a one-way cut drops only
        // its own direction.
        let mut prng = Prng::new(1);
        let mut network = SimNetwork::new(NetworkFaults::calm(5));
        network.block(NodeId(1), NodeId(2));
        network.send(0, GroupId(0), message(1, 2), &mut prng);
        network.send(0, GroupId(0), message(2, 1), &mut prng);
        assert_eq!(network.pop_due(0), None);
        let mut delivered = Vec::new();
        for now in 1..=5 {
            while let Some((_, m)) = network.pop_due(now) {
                delivered.push((m.from(), m.to()));
            }
        }
        assert_eq!(delivered, vec![(NodeId(2), NodeId(1))]);
        assert_eq!(network.stats.cut, 1);
        assert_eq!(network.stats.delivered, 1);
        assert_eq!(network.pop_due(100), None);
    }
}
