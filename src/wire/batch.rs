//! The node-to-node `Batch`: every Raft message one core sends to the same core of one other
//! node in one round, for all of its groups, plus client requests forwarded to a leader and
//! their replies, and the pieces of snapshot files its leaders stream with their
//! acknowledgements. Heartbeats and heartbeat responses of all groups are coalesced into compact
//! entry lists (Redpanda's per-node heartbeat manager), and expanded back into per-group
//! messages on receipt.
//!
//! This module owns the domain type of the peer frame, its size estimate and limits; `raft.rs`
//! beside it maps it to and from flatbuffers. Assembly per destination lives in shard/.

use crate::constants::{
    APPEND_BYTES_MAX, APPEND_ENTRIES_MAX, BATCH_BYTES_MAX, BATCH_ITEMS_MAX,
    SNAPSHOT_CHUNK_BYTES_MAX, WAL_MEMBERS_MAX,
};
use bytes::Bytes;

use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Term};
use crate::raft::{ENTRY_OVERHEAD_BYTES, Message, MessageBody, SnapshotMeta};

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
/// Estimated bytes of one snapshot chunk's envelope, not counting its data and members: group
/// (4), term, offset and total bytes (24), the snapshot's last entry (16), and the offsets,
/// lengths and padding of its own, its snapshot's and its membership's tables.
pub const SNAPSHOT_CHUNK_OVERHEAD_BYTES: u64 = 256;
/// Estimated bytes of one member of a snapshot's membership inside a snapshot chunk.
pub const SNAPSHOT_MEMBER_BYTES: u64 = 8;
/// Estimated bytes of one snapshot acknowledgement: group (4), last (16), received bytes (8),
/// refused (1), and its table's offsets and padding.
pub const SNAPSHOT_ACK_BYTES: u64 = 48;

// The largest append the Raft core builds must fit in one batch on its own.
const _: () = assert!(
    BATCH_HEADER_BYTES
        + MESSAGE_OVERHEAD_BYTES
        + APPEND_BYTES_MAX
        + APPEND_ENTRIES_MAX as u64 * ENTRY_OVERHEAD_BYTES
        <= BATCH_BYTES_MAX
);
// So must the largest snapshot chunk a receiver accepts, with the largest membership.
const _: () = assert!(
    BATCH_HEADER_BYTES
        + SNAPSHOT_CHUNK_OVERHEAD_BYTES
        + WAL_MEMBERS_MAX as u64 * SNAPSHOT_MEMBER_BYTES
        + SNAPSHOT_CHUNK_BYTES_MAX as u64
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
    #[error(
        "snapshot chunk of group {group} carries {data_bytes} bytes, more than the limit {SNAPSHOT_CHUNK_BYTES_MAX}"
    )]
    ChunkTooLarge { group: GroupId, data_bytes: usize },
    #[error(
        "snapshot chunk of group {group} at offset {offset} with {data_bytes} bytes ends past the snapshot's {total_bytes} bytes"
    )]
    ChunkBeyondSnapshot {
        group: GroupId,
        offset: u64,
        data_bytes: usize,
        total_bytes: u64,
    },
    #[error("snapshot {item} of group {group} names a snapshot ending at {last}, before any entry")]
    SnapshotOfNoEntries {
        item: &'static str,
        group: GroupId,
        last: EntryId,
    },
    #[error(
        "snapshot chunk of group {group} offered in term {term} covers entries through {last}, of a later term"
    )]
    ChunkOfLaterTerm {
        group: GroupId,
        term: Term,
        last: EntryId,
    },
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

/// A piece of one group's snapshot file, streamed by the group's leader (thesis §5). Every
/// chunk names the snapshot and carries the leader's offer (its term and the snapshot's
/// metadata), so the receiver can step `InstallSnapshot` once every byte is staged.
///
/// A received chunk has passed `Batch::validate`: `data` holds at most
/// `SNAPSHOT_CHUNK_BYTES_MAX` bytes, `offset + data.len() <= total_bytes`, and
/// `snapshot.last` is an entry (index above 0) of a term no later than `term`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub group: GroupId,
    /// The leader's term when it offered the snapshot.
    pub term: Term,
    pub snapshot: SnapshotMeta,
    /// Where `data` starts in the file, and the file's size in bytes.
    pub offset: u64,
    pub total_bytes: u64,
    pub data: Bytes,
}

impl SnapshotChunk {
    /// Estimated bytes this chunk adds to a batch.
    pub fn size_bytes(&self) -> u64 {
        let membership = &self.snapshot.membership;
        let member_count = (membership.voters.len() + membership.learners.len()) as u64;
        SNAPSHOT_CHUNK_OVERHEAD_BYTES
            + member_count * SNAPSHOT_MEMBER_BYTES
            + self.data.len() as u64
    }

    fn validate(&self) -> Result<(), BatchError> {
        let (group, last) = (self.group, self.snapshot.last);
        let data_bytes = self.data.len();
        if data_bytes > SNAPSHOT_CHUNK_BYTES_MAX {
            return Err(BatchError::ChunkTooLarge { group, data_bytes });
        }
        let end = self.offset.checked_add(data_bytes as u64);
        if end.is_none_or(|end| end > self.total_bytes) {
            return Err(BatchError::ChunkBeyondSnapshot {
                group,
                offset: self.offset,
                data_bytes,
                total_bytes: self.total_bytes,
            });
        }
        if last.index == LogIndex::ZERO {
            return Err(BatchError::SnapshotOfNoEntries {
                item: "chunk",
                group,
                last,
            });
        }
        // A leader's snapshot holds committed entries of its term or earlier (thesis §5).
        if last.term > self.term {
            return Err(BatchError::ChunkOfLaterTerm {
                group,
                term: self.term,
                last,
            });
        }
        Ok(())
    }
}

/// The receiver's answer to snapshot chunks: it holds the first `received_bytes` of the
/// snapshot ending at `last` (so a sender resends from there after a loss); `refused`: it gave
/// up staging that snapshot (bad data, a disk error), and the sender stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotAck {
    pub group: GroupId,
    pub last: EntryId,
    pub received_bytes: u64,
    pub refused: bool,
}

impl SnapshotAck {
    fn validate(&self) -> Result<(), BatchError> {
        if self.last.index == LogIndex::ZERO {
            return Err(BatchError::SnapshotOfNoEntries {
                item: "ack",
                group: self.group,
                last: self.last,
            });
        }
        Ok(())
    }
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
    /// Pieces of snapshot files this node's leaders stream to the receiver's followers.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Acknowledgements of snapshot chunks this node received from the receiver.
    pub snapshot_acks: Vec<SnapshotAck>,
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
            snapshot_chunks: Vec::new(),
            snapshot_acks: Vec::new(),
        }
    }

    pub fn item_count(&self) -> usize {
        self.messages.len()
            + self.heartbeats.len()
            + self.heartbeat_responses.len()
            + self.forwards.len()
            + self.snapshot_chunks.len()
            + self.snapshot_acks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.item_count() == 0
    }

    /// Heap bytes the lists hold, used or not.
    pub fn capacity_bytes(&self) -> usize {
        self.messages.capacity() * std::mem::size_of::<GroupMessage>()
            + self.heartbeats.capacity() * std::mem::size_of::<HeartbeatEntry>()
            + self.heartbeat_responses.capacity() * std::mem::size_of::<HeartbeatResponseEntry>()
            + self.forwards.capacity() * std::mem::size_of::<Forward>()
            + self.snapshot_chunks.capacity() * std::mem::size_of::<SnapshotChunk>()
            + self.snapshot_acks.capacity() * std::mem::size_of::<SnapshotAck>()
    }

    /// Empties every list, keeping its capacity for reuse.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.heartbeats.clear();
        self.heartbeat_responses.clear();
        self.forwards.clear();
        self.snapshot_chunks.clear();
        self.snapshot_acks.clear();
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
            + self
                .snapshot_chunks
                .iter()
                .map(SnapshotChunk::size_bytes)
                .sum::<u64>()
            + self.snapshot_acks.len() as u64 * SNAPSHOT_ACK_BYTES
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
        for chunk in &self.snapshot_chunks {
            chunk.validate()?;
        }
        for ack in &self.snapshot_acks {
            ack.validate()?;
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
            // Nor are snapshot chunks and their acknowledgements: the shard takes them out
            // too, to stage the data and step `InstallSnapshot` once it is all there.
            snapshot_chunks: _,
            snapshot_acks: _,
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
