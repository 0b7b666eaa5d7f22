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
    /// Per destination, the list lengths of the last batch drained: a new batch reserves
    /// them at once, so a steady round never regrows (and copies) large lists.
    sizes_last: Vec<(NodeId, [usize; 3])>,
}

impl BatchAssembler {
    pub fn new(from: NodeId) -> BatchAssembler {
        BatchAssembler {
            from,
            open: Vec::new(),
            closed: Vec::new(),
            sizes_last: Vec::new(),
        }
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
        let mut batch = Batch::new(self.from, to);
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
                Some((_, last)) => *last = sizes,
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
        let batch = batches.pop().expect("one batch");
        assert!(batch.messages.is_empty());
        assert_eq!(batch.heartbeats.len(), 1000);
        assert_eq!(batch.heartbeat_responses.len(), 1000);
        assert_eq!(batch.validate(), Ok(()));
        let mut received: Vec<_> = batch.into_messages().collect();
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
}
