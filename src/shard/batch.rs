//! Per-round assembly of outgoing batches by destination (the `Batch` type itself is the
//! peer frame's domain type in wire/). Must not encode bytes nor know which groups exist
//! (multi.rs routes).

use crate::constants::{BATCH_BYTES_MAX, BATCH_ITEMS_MAX};
use crate::ids::{GroupId, NodeId};
use crate::raft::Message;
pub use crate::wire::batch::*;

/// Per-round assembly of outgoing batches: one open batch per destination; a batch that
/// would pass a limit is closed and a new one opened for the same destination.
#[derive(Debug)]
pub struct BatchAssembler {
    from: NodeId,
    /// Open batches with their running size estimate; a handful of peers, so a short vector
    /// searched linearly beats a map.
    open: Vec<(Batch, u64)>,
    closed: Vec<Batch>,
    /// Per destination, a decaying maximum of the non-zero list lengths drained: a new
    /// batch reserves them at once, so a steady round never regrows (and copies) its lists.
    sizes_last: Vec<(NodeId, [usize; 3])>,
    /// Emptied batches kept for their capacity (at most `SPARE_BATCHES_MAX`, each at most
    /// `SPARE_BATCH_BYTES_MAX`): a steady round then allocates no list at all.
    spare: Vec<Batch>,
}

/// Emptied batches an assembler keeps for reuse: two per peer of a five-node group.
pub const SPARE_BATCHES_MAX: usize = 8;
/// Heap bytes of one kept batch's lists; a larger one (a burst's) is freed instead.
pub const SPARE_BATCH_BYTES_MAX: usize = 256 * 1024;

impl BatchAssembler {
    pub fn new(from: NodeId) -> BatchAssembler {
        BatchAssembler {
            from,
            open: Vec::new(),
            closed: Vec::new(),
            sizes_last: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Keeps an emptied batch (one sent and encoded, or one received and stepped) for its
    /// lists' capacity; drops it when enough are kept.
    pub fn recycle(&mut self, mut batch: Batch) {
        if self.spare.len() >= SPARE_BATCHES_MAX || batch.capacity_bytes() > SPARE_BATCH_BYTES_MAX {
            return;
        }
        batch.clear();
        self.spare.push(batch);
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closed.is_empty()
    }

    /// Adds one message of `group` to the batch for its destination.
    pub fn push(&mut self, group: GroupId, message: Message) {
        assert!(
            message.from == self.from,
            "assembler of node {}: message of group {group} is from {}",
            self.from,
            message.from
        );
        let item_bytes = message_size_bytes(&message.body);
        assert!(
            BATCH_HEADER_BYTES + item_bytes <= BATCH_BYTES_MAX,
            "group {group}: one message of {item_bytes} bytes exceeds the batch limit"
        );
        let to = message.to;
        let slot = match self.open.iter().position(|(b, _)| b.to == to) {
            Some(slot) => {
                let (batch, size_bytes) = &self.open[slot];
                let full = batch.item_count() + 1 > BATCH_ITEMS_MAX
                    || size_bytes + item_bytes > BATCH_BYTES_MAX;
                if full {
                    let (batch, _) = self.open.swap_remove(slot);
                    self.closed.push(batch);
                    self.open_batch(to)
                } else {
                    slot
                }
            }
            None => self.open_batch(to),
        };
        let (batch, size_bytes) = &mut self.open[slot];
        batch.push(group, message);
        *size_bytes += item_bytes;
    }

    fn open_batch(&mut self, to: NodeId) -> usize {
        let mut batch = match self.spare.pop() {
            Some(mut spare) => {
                assert!(spare.is_empty(), "spare batch to {} not empty", spare.to);
                assert!(self.from != to, "batch: from {} equals to {to}", self.from);
                spare.from = self.from;
                spare.to = to;
                spare
            }
            None => Batch::new(self.from, to),
        };
        if let Some((_, [messages, heartbeats, responses])) =
            self.sizes_last.iter().find(|(node, _)| *node == to)
        {
            batch.messages.reserve(*messages);
            batch.heartbeats.reserve(*heartbeats);
            batch.heartbeat_responses.reserve(*responses);
        }
        self.open.push((batch, BATCH_HEADER_BYTES));
        self.open.len() - 1
    }

    /// Moves every batch assembled so far into `out`, leaving the assembler empty.
    pub fn drain_into(&mut self, out: &mut Vec<Batch>) {
        out.append(&mut self.closed);
        for (batch, _) in self.open.drain(..) {
            let sizes = [
                batch.messages.len(),
                batch.heartbeats.len(),
                batch.heartbeat_responses.len(),
            ];
            match self
                .sizes_last
                .iter_mut()
                .find(|(node, _)| *node == batch.to)
            {
                // A decaying maximum over the rounds that used the list: rounds of
                // heartbeats and rounds of their responses alternate, and an unused list
                // must keep the memory of its own busy round.
                Some((_, last)) => {
                    for (hint, size) in last.iter_mut().zip(sizes) {
                        if size > 0 {
                            *hint = size.max(*hint - *hint / 4);
                        }
                    }
                }
                None => self.sizes_last.push((batch.to, sizes)),
            }
            out.push(batch);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ids::{EntryId, LogIndex, Term};
    use crate::prng::Prng;
    use crate::raft::{Entry, EntryKind, MessageBody};

    fn heartbeat(from: u64, to: u64, term: u64, commit: u64) -> Message {
        Message {
            from: NodeId(from),
            to: NodeId(to),
            term: Term(term),
            body: MessageBody::Heartbeat {
                commit: LogIndex(commit),
                read_round: if commit.is_multiple_of(2) {
                    Some(commit)
                } else {
                    None
                },
            },
        }
    }

    #[test]
    fn heartbeats_of_many_groups_coalesce_and_expand_intact() {
        // 1,000 groups' heartbeats and responses to one node become one batch with two compact
        // lists, and expanding it gives back exactly the messages that went in.
        let mut assembler = BatchAssembler::new(NodeId(1));
        let mut sent = Vec::new();
        for g in 0..1000u32 {
            let beat = heartbeat(1, 2, u64::from(g) + 1, u64::from(g) * 3);
            let response = Message {
                from: NodeId(1),
                to: NodeId(2),
                term: Term(7),
                body: MessageBody::HeartbeatResponse {
                    read_round: Some(u64::from(g)),
                },
            };
            sent.push((GroupId(g), beat.clone()));
            sent.push((GroupId(g), response.clone()));
            assembler.push(GroupId(g), beat);
            assembler.push(GroupId(g), response);
        }
        let mut batches = Vec::new();
        assembler.drain_into(&mut batches);
        assert_eq!(batches.len(), 1, "one destination, one batch");
        let mut batch = batches.pop().expect("one batch");
        assert!(batch.messages.is_empty());
        assert_eq!(batch.heartbeats.len(), 1000);
        assert_eq!(batch.heartbeat_responses.len(), 1000);
        assert_eq!(batch.validate(), Ok(()));
        let mut received: Vec<_> = batch.drain_messages().collect();
        assert!(batch.is_empty(), "drained");
        received
            .sort_by_key(|(g, m)| (*g, matches!(m.body, MessageBody::HeartbeatResponse { .. })));
        assert_eq!(received, sent);
    }

    #[test]
    fn one_batch_per_destination_until_a_limit_splits_it() {
        // Messages to two nodes make two batches; appends whose bytes pass the batch limit
        // spill into a second batch for the same node, and no batch passes the limit.
        let mut assembler = BatchAssembler::new(NodeId(1));
        let payload = Bytes::from(vec![7u8; 1024 * 1024]);
        let append = |to: u64, index: u64| Message {
            from: NodeId(1),
            to: NodeId(to),
            term: Term(1),
            body: MessageBody::Append {
                prev: EntryId::ZERO,
                entries: vec![Entry {
                    id: EntryId::new(Term(1), LogIndex(index)),
                    kind: EntryKind::Command,
                    data: payload.clone(),
                }],
                commit: LogIndex::ZERO,
            },
        };
        for index in 1..=12u64 {
            assembler.push(GroupId(index as u32), append(2, index));
        }
        assembler.push(GroupId(1), heartbeat(1, 3, 1, 0));
        let mut batches = Vec::new();
        assembler.drain_into(&mut batches);
        let to_two: Vec<_> = batches.iter().filter(|b| b.to == NodeId(2)).collect();
        let to_three: Vec<_> = batches.iter().filter(|b| b.to == NodeId(3)).collect();
        assert_eq!(to_three.len(), 1);
        assert_eq!(to_two.len(), 2, "12 MiB of appends need two 8 MiB batches");
        let appended: usize = to_two.iter().map(|b| b.messages.len()).sum();
        assert_eq!(appended, 12);
        for batch in &batches {
            assert_eq!(batch.validate(), Ok(()), "batch to {}", batch.to);
        }
        assert!(assembler.is_empty());
    }

    #[test]
    fn received_batches_breaking_limits_are_refused() {
        // A peer's batch with too many items, or addressed from a node to itself, is an error.
        let mut batch = Batch::new(NodeId(1), NodeId(2));
        for g in 0..=BATCH_ITEMS_MAX as u32 {
            batch.heartbeats.push(HeartbeatEntry {
                group: GroupId(g),
                term: Term(1),
                commit: LogIndex(0),
                read_round: None,
            });
        }
        assert_eq!(
            batch.validate(),
            Err(BatchError::TooManyItems {
                item_count: BATCH_ITEMS_MAX + 1
            })
        );
        batch.heartbeats.clear();
        batch.to = NodeId(1);
        assert_eq!(
            batch.validate(),
            Err(BatchError::FromItself { from: NodeId(1) })
        );
    }

    #[test]
    fn recycled_batches_lend_their_capacity_within_bounds() {
        // A small received batch's lists serve the next outgoing batch; one whose lists pass
        // the spare limit is freed instead, and no more than the limit's count are kept.
        let mut assembler = BatchAssembler::new(NodeId(1));
        let mut small = Batch::new(NodeId(2), NodeId(1));
        small.heartbeats.reserve_exact(100);
        assembler.recycle(small);
        assembler.push(GroupId(0), heartbeat(1, 3, 1, 0));
        let mut batches = Vec::new();
        assembler.drain_into(&mut batches);
        assert_eq!((batches[0].from, batches[0].to), (NodeId(1), NodeId(3)));
        assert!(batches[0].heartbeats.capacity() >= 100, "capacity reused");

        let mut large = Batch::new(NodeId(2), NodeId(1));
        large.heartbeats.reserve_exact(SPARE_BATCH_BYTES_MAX);
        assert!(large.capacity_bytes() > SPARE_BATCH_BYTES_MAX);
        assembler.recycle(large);
        assert!(assembler.spare.is_empty(), "a burst's batch is not kept");
        for _ in 0..SPARE_BATCHES_MAX + 3 {
            assembler.recycle(Batch::new(NodeId(2), NodeId(1)));
        }
        assert_eq!(assembler.spare.len(), SPARE_BATCHES_MAX);
    }

    /// A random message of one of the kinds a round produces.
    fn random_message(prng: &mut Prng, to: NodeId) -> Message {
        let term = Term(prng.range_inclusive(1, 9));
        let index = LogIndex(prng.below(1000));
        let body = match prng.below(5) {
            0 => MessageBody::Heartbeat {
                commit: index,
                read_round: prng.chance(1, 2).then(|| prng.below(100)),
            },
            1 => MessageBody::HeartbeatResponse {
                read_round: prng.chance(1, 2).then(|| prng.below(100)),
            },
            2 => MessageBody::VoteResponse {
                granted: prng.chance(1, 2),
            },
            3 => MessageBody::AppendResponse(crate::raft::AppendResponse::Accepted {
                last_index: index,
            }),
            _ => {
                let entry_count = prng.below(4);
                let entries = (1..=entry_count)
                    .map(|k| Entry {
                        id: EntryId::new(term, index.plus(k)),
                        kind: EntryKind::Command,
                        data: Bytes::from(vec![k as u8; prng.below(64) as usize]),
                    })
                    .collect();
                MessageBody::Append {
                    prev: EntryId::new(term, index),
                    entries,
                    commit: index,
                }
            }
        };
        Message {
            from: NodeId(1),
            to,
            term,
            body,
        }
    }

    /// Which list of a batch a message travels in; order is kept within each.
    fn lane(body: &MessageBody) -> u8 {
        match body {
            MessageBody::Heartbeat { .. } => 0,
            MessageBody::HeartbeatResponse { .. } => 1,
            _ => 2,
        }
    }

    #[test]
    fn random_message_mixes_round_trip_through_one_batch_per_peer() {
        // Seeded: any mix of message kinds from up to 2,000 groups to four peers becomes one
        // valid batch per peer, and expanding them gives back every message, in order within
        // each group and list (heartbeats, responses, others).
        let seed = crate::shard::test_seed();
        let mut prng = Prng::new(seed);
        for _ in 0..20 {
            let mut assembler = BatchAssembler::new(NodeId(1));
            let mut sent = Vec::new();
            for _ in 0..prng.below(3000) {
                let to = NodeId(prng.range_inclusive(2, 5));
                let group = GroupId(prng.below(2000) as u32);
                let message = random_message(&mut prng, to);
                sent.push((to, group, lane(&message.body), message.clone()));
                assembler.push(group, message);
            }
            let mut batches = Vec::new();
            assembler.drain_into(&mut batches);
            let mut destinations: Vec<NodeId> = batches.iter().map(|b| b.to).collect();
            destinations.sort_unstable();
            let before = destinations.len();
            destinations.dedup();
            assert_eq!(
                before,
                destinations.len(),
                "seed {seed}: one batch per peer"
            );
            let mut received = Vec::new();
            for mut batch in batches {
                assert_eq!(batch.validate(), Ok(()), "seed {seed}");
                assert_eq!(batch.from, NodeId(1));
                let to = batch.to;
                for (group, message) in batch.drain_messages() {
                    assert_eq!(message.to, to, "seed {seed}");
                    received.push((to, group, lane(&message.body), message));
                }
                assembler.recycle(batch);
            }
            // A stable sort keeps each (peer, group, list) sequence in its original order.
            sent.sort_by_key(|(to, group, lane, _)| (*to, *group, *lane));
            received.sort_by_key(|(to, group, lane, _)| (*to, *group, *lane));
            assert_eq!(received, sent, "seed {seed}");
        }
    }
}
