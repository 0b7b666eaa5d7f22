//! The face of one Raft group as the Multi-Raft layer sees it: the subset of `RaftNode`'s
//! API that routing, ticking and Ready collection need. `MultiRaft` is generic over it so its
//! batching can be tested against a scripted group as well as the real core.
//!
//! This module owns the trait and its implementation for `RaftNode` (plain delegation); it
//! must not add behaviour to a group.

use bytes::Bytes;

use crate::ids::{EntryId, LogIndex};
use crate::raft::{Entry, Message, PersistPosition, ProposeError, RaftNode, Ready, StepError};

/// One group's Raft, driven by the caller (DESIGN §4).
pub trait RaftGroup {
    type StepError: std::error::Error + Send + Sync + 'static;
    type ProposeError: std::error::Error + Send + Sync + 'static;

    fn tick(&mut self);
    fn step(&mut self, message: Message) -> Result<(), Self::StepError>;
    fn propose(&mut self, data: Bytes) -> Result<EntryId, Self::ProposeError>;
    fn campaign(&mut self);
    fn has_ready(&self) -> bool;
    fn ready(&mut self) -> Ready;
    fn on_persisted(&mut self, position: PersistPosition);
    fn on_applied(&mut self, index: LogIndex);
    fn on_fetched(&mut self, entries: Vec<Entry>);
}

impl RaftGroup for RaftNode {
    type StepError = StepError;
    type ProposeError = ProposeError;

    fn tick(&mut self) {
        RaftNode::tick(self);
    }

    fn step(&mut self, message: Message) -> Result<(), StepError> {
        RaftNode::step(self, message)
    }

    fn propose(&mut self, data: Bytes) -> Result<EntryId, ProposeError> {
        RaftNode::propose(self, data)
    }

    fn campaign(&mut self) {
        RaftNode::campaign(self);
    }

    fn has_ready(&self) -> bool {
        RaftNode::has_ready(self)
    }

    fn ready(&mut self) -> Ready {
        RaftNode::ready(self)
    }

    fn on_persisted(&mut self, position: PersistPosition) {
        RaftNode::on_persisted(self, position);
    }

    fn on_applied(&mut self, index: LogIndex) {
        RaftNode::on_applied(self, index);
    }

    fn on_fetched(&mut self, entries: Vec<Entry>) {
        RaftNode::on_fetched(self, entries);
    }
}
