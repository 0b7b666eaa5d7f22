//! The errors `RaftNode`'s entry points return to their caller. Each enum belongs to one
//! entry point; none carries I/O errors (the core performs no I/O).

use thiserror::Error;

use crate::ids::{EntryId, LogIndex, NodeId, Term};

/// `RaftNode::step` refused a message; the node's state is unchanged.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum StepError {
    #[error("message for node {to} delivered to node {id}")]
    WrongRecipient { to: NodeId, id: NodeId },
    #[error(
        "snapshot from {from} in term {term} ends at {last} (or names another membership), which no leader could send"
    )]
    MalformedSnapshot {
        from: NodeId,
        term: Term,
        last: EntryId,
    },
    #[error("append after {prev} from {from}: entry at position {position} has id {entry}")]
    MalformedAppend {
        from: NodeId,
        prev: EntryId,
        position: usize,
        entry: EntryId,
    },
}

/// `RaftNode::propose` refused a command; nothing was appended.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("a leader transfer is in progress")]
    TransferInProgress,
    #[error("command of {bytes} bytes is over the limit of {bytes_max}")]
    TooLarge { bytes: u64, bytes_max: u64 },
    #[error("{uncommitted_bytes} uncommitted bytes: limit of {bytes_max} reached")]
    UncommittedFull {
        uncommitted_bytes: u64,
        bytes_max: u64,
    },
}

/// `RaftNode::read_index` refused a read.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum ReadIndexError {
    #[error("no known leader to serve the read")]
    NoLeader,
    #[error("{pending} reads pending: limit reached")]
    TooManyPending { pending: usize },
}

/// `RaftNode::transfer_leader` refused a transfer.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum TransferError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("node {target} is not a voter of this group")]
    NotAVoter { target: NodeId },
    #[error("a transfer to {target} is already in progress")]
    InProgress { target: NodeId },
}

/// `RaftNode::compact` refused to fold entries into a snapshot; nothing changed.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum CompactError {
    #[error("compaction to {index} is beyond the applied index {applied}")]
    BeyondApplied { index: LogIndex, applied: LogIndex },
}
