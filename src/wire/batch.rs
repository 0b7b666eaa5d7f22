//! The node-to-node `Batch`: every Raft message one core sends to the same core of one other
//! node in one round, for all of its groups, plus client requests forwarded to a leader and
//! their replies. Heartbeats and heartbeat responses of all groups are coalesced into compact
//! entry lists (Redpanda's per-node heartbeat manager), and expanded back into per-group
//! messages on receipt.
//!
//! This module owns the domain type of the peer frame, its size estimate and limits; `raft.rs`
//! beside it maps it to and from flatbuffers. Assembly per destination lives in shard/.

use crate::constants::{APPEND_BYTES_MAX, APPEND_ENTRIES_MAX, BATCH_BYTES_MAX, BATCH_ITEMS_MAX};
use bytes::Bytes;

use crate::ids::{GroupId, LogIndex, NodeId, Term};
use crate::raft::{ENTRY_OVERHEAD_BYTES, Message, MessageBody};

/// Estimated bytes of one non-heartbeat message's envelope (group, term, kind, fixed fields),
/// not counting the entries it carries.
pub const MESSAGE_OVERHEAD_BYTES: u64 = 64;
/// Estimated bytes of one coalesced heartbeat entry: group (4), term (8), commit (8),
/// read round (9).
pub const HEARTBEAT_ENTRY_BYTES: u64 = 29;
/// Estimated bytes of one coalesced heartbeat response entry: group (4), term (8), read
/// round (9).
pub const HEARTBEAT_RESPONSE_ENTRY_BYTES: u64 = 21;
/// Estimated bytes of a batch's own header (from, to, list lengths).
pub const BATCH_HEADER_BYTES: u64 = 32;

// The largest append the Raft core builds must fit in one batch on its own.
const _: () = assert!(
    BATCH_HEADER_BYTES
        + MESSAGE_OVERHEAD_BYTES
        + APPEND_BYTES_MAX
        + APPEND_ENTRIES_MAX as u64 * ENTRY_OVERHEAD_BYTES
        <= BATCH_BYTES_MAX
);

/// Errors of a received batch that break its limits or its addressing. A batch comes from a
/// peer, so these are answers, never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch holds {item_count} items, more than the limit {BATCH_ITEMS_MAX}")]
    TooManyItems { item_count: usize },
    #[error("batch is about {size_bytes} bytes, more than the limit {BATCH_BYTES_MAX}")]
    TooLarge { size_bytes: u64 },
    #[error("batch from node {from} is addressed to itself")]
    FromItself { from: NodeId },
}

/// One group's non-heartbeat message inside a batch. The sender and receiver are the batch's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMessage {
    pub group: GroupId,
    pub term: Term,
    pub body: MessageBody,
}

/// A coalesced `MessageBody::Heartbeat` of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatEntry {
    pub group: GroupId,
    pub term: Term,
    pub commit: LogIndex,
    pub read_round: Option<u64>,
}

/// A coalesced `MessageBody::HeartbeatResponse` of one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeartbeatResponseEntry {
    pub group: GroupId,
    pub term: Term,
    pub read_round: Option<u64>,
}

/// Everything one core sends to one peer node's core in one round (DESIGN §5, §7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub from: NodeId,
    pub to: NodeId,
    /// Messages other than heartbeats and their responses, in the order they were produced
    /// per group.
    pub messages: Vec<GroupMessage>,
    pub heartbeats: Vec<HeartbeatEntry>,
    pub heartbeat_responses: Vec<HeartbeatResponseEntry>,
    /// Client requests forwarded to this node as their group's leader, and replies to
    /// requests it forwarded.
    pub forwards: Vec<Forward>,
}

/// A client request travelling to its group's leader, or the reply travelling back. The
/// bytes are the client's own frame payload, never re-encoded on the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {
    /// `request` is a `Request` payload; `token` names it on the sending node; `hops` counts
    /// the nodes it has already passed through.
    Request {
        token: u64,
        hops: u8,
        request: Bytes,
    },
    /// `response` is a `Response` payload answering the request the receiver sent as `token`.
    Reply { token: u64, response: Bytes },
}

impl Forward {
    pub fn payload_bytes(&self) -> u64 {
        match self {
            Forward::Request { request, .. } => request.len() as u64,
            Forward::Reply { response, .. } => response.len() as u64,
        }
    }
}

impl Batch {
    pub fn new(from: NodeId, to: NodeId) -> Batch {
        assert!(from != to, "batch: from {from} equals to {to}");
        Batch {
            from,
            to,
            messages: Vec::new(),
            heartbeats: Vec::new(),
            heartbeat_responses: Vec::new(),
            forwards: Vec::new(),
        }
    }

    pub fn item_count(&self) -> usize {
        self.messages.len()
            + self.heartbeats.len()
            + self.heartbeat_responses.len()
            + self.forwards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.item_count() == 0
    }

    /// Heap bytes the lists hold, used or not.
    pub fn capacity_bytes(&self) -> usize {
        self.messages.capacity() * std::mem::size_of::<GroupMessage>()
            + self.heartbeats.capacity() * std::mem::size_of::<HeartbeatEntry>()
            + self.heartbeat_responses.capacity() * std::mem::size_of::<HeartbeatResponseEntry>()
    }

    /// Estimated encoded size, the figure `BATCH_BYTES_MAX` limits.
    pub fn size_bytes(&self) -> u64 {
        let messages: u64 = self.messages.iter().map(|m| body_size_bytes(&m.body)).sum();
        BATCH_HEADER_BYTES
            + messages
            + self.heartbeats.len() as u64 * HEARTBEAT_ENTRY_BYTES
            + self.heartbeat_responses.len() as u64 * HEARTBEAT_RESPONSE_ENTRY_BYTES
            + self
                .forwards
                .iter()
                .map(|f| MESSAGE_OVERHEAD_BYTES + f.payload_bytes())
                .sum::<u64>()
    }

    /// Checks a received batch against the limits before anything of it is used.
    pub fn validate(&self) -> Result<(), BatchError> {
        if self.from == self.to {
            return Err(BatchError::FromItself { from: self.from });
        }
        let item_count = self.item_count();
        if item_count > BATCH_ITEMS_MAX {
            return Err(BatchError::TooManyItems { item_count });
        }
        let size_bytes = self.size_bytes();
        if size_bytes > BATCH_BYTES_MAX {
            return Err(BatchError::TooLarge { size_bytes });
        }
        Ok(())
    }

    /// Adds one group's message, coalescing heartbeats. The message must travel from this
    /// batch's sender to its receiver.
    pub fn push(&mut self, group: GroupId, message: Message) {
        assert!(
            message.from == self.from && message.to == self.to,
            "batch {}->{}: message of group {group} is {}->{}",
            self.from,
            self.to,
            message.from,
            message.to
        );
        match message.body {
            MessageBody::Heartbeat { commit, read_round } => {
                self.heartbeats.push(HeartbeatEntry {
                    group,
                    term: message.term,
                    commit,
                    read_round,
                });
            }
            MessageBody::HeartbeatResponse { read_round } => {
                self.heartbeat_responses.push(HeartbeatResponseEntry {
                    group,
                    term: message.term,
                    read_round,
                });
            }
            body => self.messages.push(GroupMessage {
                group,
                term: message.term,
                body,
            }),
        }
    }

    /// Expands the batch back into per-group messages, leaving it empty with its lists'
    /// capacity so that the receiver can reuse it for its own outgoing batches
    /// (`BatchAssembler::recycle`). The other messages come first, then the heartbeats, then
    /// the heartbeat responses: Raft tolerates any reordering between messages (the network
    /// may reorder them anyway).
    pub fn drain_messages(&mut self) -> impl Iterator<Item = (GroupId, Message)> + '_ {
        let Batch {
            from,
            to,
            messages,
            heartbeats,
            heartbeat_responses,
            // Forwarded client requests are not Raft messages: the shard takes them out
            // before it routes a batch to its groups.
            forwards: _,
        } = self;
        let (from, to) = (*from, *to);
        let envelope = move |group: GroupId, term: Term, body: MessageBody| {
            (
                group,
                Message {
                    from,
                    to,
                    term,
                    body,
                },
            )
        };
        let others = messages
            .drain(..)
            .map(move |m| envelope(m.group, m.term, m.body));
        let beats = heartbeats.drain(..).map(move |h| {
            let body = MessageBody::Heartbeat {
                commit: h.commit,
                read_round: h.read_round,
            };
            envelope(h.group, h.term, body)
        });
        let responses = heartbeat_responses.drain(..).map(move |r| {
            let body = MessageBody::HeartbeatResponse {
                read_round: r.read_round,
            };
            envelope(r.group, r.term, body)
        });
        others.chain(beats).chain(responses)
    }
}

/// Estimated bytes one message adds to a batch.
pub fn message_size_bytes(body: &MessageBody) -> u64 {
    match body {
        MessageBody::Heartbeat { .. } => HEARTBEAT_ENTRY_BYTES,
        MessageBody::HeartbeatResponse { .. } => HEARTBEAT_RESPONSE_ENTRY_BYTES,
        other => body_size_bytes(other),
    }
}

fn body_size_bytes(body: &MessageBody) -> u64 {
    let entries: u64 = match body {
        MessageBody::Append { entries, .. } => entries.iter().map(|e| e.size_bytes()).sum(),
        _ => 0,
    };
    MESSAGE_OVERHEAD_BYTES + entries
}
