//! The peer protocol: a `PeerBatch` (all Raft messages of one core's groups to one node in
//! one round, heartbeats coalesced) to and from the `Batch` flatbuffer of `schemas/raft.fbs`.
//! Decoding verifies the buffer and every field, and returns a `WireError` for anything a
//! correct peer would not send.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use thiserror::Error;

use super::generated::raft_generated::ringraft::wire::raft as fb;
use crate::ids::{CoreId, EntryId, GroupId, LogIndex, NodeId, Term};
use crate::raft::{
    AppendResponse, Entry, EntryKind, Membership, Message, MessageBody, ReadContext, SnapshotMeta,
};

/// One group's heartbeat or heartbeat response inside a coalesced list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Beat {
    pub group: GroupId,
    pub term: Term,
    /// The commit index a heartbeat carries; zero in a response.
    pub commit: LogIndex,
    pub read_round: Option<u64>,
}

/// Everything one core sends to one node in one round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerBatch {
    pub from: NodeId,
    pub to: NodeId,
    pub core: CoreId,
    /// Messages other than heartbeats, each with its group.
    pub messages: Vec<(GroupId, Message)>,
    pub heartbeats: Vec<Beat>,
    pub heartbeat_responses: Vec<Beat>,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("not a valid flatbuffer: {0}")]
    Invalid(String),
    #[error("message of group {group} has no body or an unknown body type {body_type}")]
    UnknownBody { group: u32, body_type: u8 },
    #[error("unknown entry kind {0}")]
    UnknownEntryKind(u8),
    #[error("node id 0 is not a valid {field}")]
    ZeroNode { field: &'static str },
    #[error("invalid command: {0}")]
    Command(#[from] crate::kv::CommandError),
    #[error("field {field} is missing")]
    Missing { field: &'static str },
    #[error(
        "append entry {position} has id {found}, expected index {expected_index} with a term in [{prev_term}, {message_term}]"
    )]
    EntriesOutOfOrder {
        position: usize,
        found: EntryId,
        expected_index: LogIndex,
        prev_term: Term,
        message_term: Term,
    },
}

/// Encodes `batch` into `builder` and returns the finished bytes (valid until the builder is
/// reset). The builder is reused across rounds so encoding allocates only to grow it.
pub fn encode_batch<'b>(
    builder: &'b mut FlatBufferBuilder<'static>,
    batch: &PeerBatch,
) -> &'b [u8] {
    builder.reset();
    let mut messages = Vec::with_capacity(batch.messages.len());
    for (group, message) in &batch.messages {
        let (body_type, body) = encode_body(builder, &message.body);
        messages.push(fb::GroupMessage::create(
            builder,
            &fb::GroupMessageArgs {
                group: group.0,
                term: message.term.0,
                body_type,
                body: Some(body),
            },
        ));
    }
    let messages = builder.create_vector(&messages);
    let heartbeats = encode_beats(builder, &batch.heartbeats);
    let heartbeat_responses = encode_beats(builder, &batch.heartbeat_responses);
    let root = fb::Batch::create(
        builder,
        &fb::BatchArgs {
            from: batch.from.0,
            to: batch.to.0,
            core: batch.core.0,
            messages: Some(messages),
            heartbeats: Some(heartbeats),
            heartbeat_responses: Some(heartbeat_responses),
        },
    );
    builder.finish(root, None);
    builder.finished_data()
}

fn encode_beats<'a>(
    builder: &mut FlatBufferBuilder<'a>,
    beats: &[Beat],
) -> WIPOffset<flatbuffers::Vector<'a, fb::CoalescedBeat>> {
    builder.start_vector::<fb::CoalescedBeat>(beats.len());
    for beat in beats.iter().rev() {
        builder.push(fb::CoalescedBeat::new(
            beat.group.0,
            beat.term.0,
            beat.commit.0,
            beat.read_round.unwrap_or(0),
        ));
    }
    builder.end_vector(beats.len())
}

fn entry_id(id: EntryId) -> fb::EntryId {
    fb::EntryId::new(id.term.0, id.index.0)
}

fn encode_body(
    builder: &mut FlatBufferBuilder<'_>,
    body: &MessageBody,
) -> (fb::Body, WIPOffset<flatbuffers::UnionWIPOffset>) {
    match body {
        MessageBody::PreVote { last } => {
            let last = entry_id(*last);
            let table = fb::PreVote::create(builder, &fb::PreVoteArgs { last: Some(&last) });
            (fb::Body::PreVote, table.as_union_value())
        }
        MessageBody::PreVoteResponse { granted } => {
            let table = fb::PreVoteResponse::create(
                builder,
                &fb::PreVoteResponseArgs { granted: *granted },
            );
            (fb::Body::PreVoteResponse, table.as_union_value())
        }
        MessageBody::Vote {
            last,
            leader_transfer,
        } => {
            let last = entry_id(*last);
            let args = fb::VoteArgs {
                last: Some(&last),
                leader_transfer: *leader_transfer,
            };
            (
                fb::Body::Vote,
                fb::Vote::create(builder, &args).as_union_value(),
            )
        }
        MessageBody::VoteResponse { granted } => {
            let table =
                fb::VoteResponse::create(builder, &fb::VoteResponseArgs { granted: *granted });
            (fb::Body::VoteResponse, table.as_union_value())
        }
        MessageBody::Append {
            prev,
            entries,
            commit,
        } => {
            let mut offsets = Vec::with_capacity(entries.len());
            for entry in entries {
                let data = builder.create_vector(&entry.data[..]);
                let id = entry_id(entry.id);
                let kind = match entry.kind {
                    EntryKind::Command => fb::EntryKind::Command,
                    EntryKind::Empty => fb::EntryKind::Empty,
                    EntryKind::Membership => fb::EntryKind::Membership,
                };
                offsets.push(fb::Entry::create(
                    builder,
                    &fb::EntryArgs {
                        id: Some(&id),
                        kind,
                        data: Some(data),
                    },
                ));
            }
            let entries = builder.create_vector(&offsets);
            let prev = entry_id(*prev);
            let args = fb::AppendArgs {
                prev: Some(&prev),
                entries: Some(entries),
                commit: commit.0,
            };
            (
                fb::Body::Append,
                fb::Append::create(builder, &args).as_union_value(),
            )
        }
        MessageBody::AppendResponse(response) => {
            let args = match response {
                AppendResponse::Accepted { last_index } => fb::AppendResponseArgs {
                    last_index: last_index.0,
                    rejected: None,
                    hint: None,
                },
                AppendResponse::Rejected { rejected, hint } => {
                    let (rejected, hint) = (entry_id(*rejected), entry_id(*hint));
                    let args = fb::AppendResponseArgs {
                        last_index: 0,
                        rejected: Some(&rejected),
                        hint: Some(&hint),
                    };
                    return (
                        fb::Body::AppendResponse,
                        fb::AppendResponse::create(builder, &args).as_union_value(),
                    );
                }
            };
            (
                fb::Body::AppendResponse,
                fb::AppendResponse::create(builder, &args).as_union_value(),
            )
        }
        MessageBody::Heartbeat { commit, read_round } => {
            let args = fb::HeartbeatArgs {
                commit: commit.0,
                read_round: read_round.unwrap_or(0),
            };
            (
                fb::Body::Heartbeat,
                fb::Heartbeat::create(builder, &args).as_union_value(),
            )
        }
        MessageBody::HeartbeatResponse { read_round } => {
            let args = fb::HeartbeatResponseArgs {
                read_round: read_round.unwrap_or(0),
            };
            (
                fb::Body::HeartbeatResponse,
                fb::HeartbeatResponse::create(builder, &args).as_union_value(),
            )
        }
        MessageBody::ReadIndex { context } => {
            let table = fb::ReadIndex::create(builder, &fb::ReadIndexArgs { context: context.0 });
            (fb::Body::ReadIndex, table.as_union_value())
        }
        MessageBody::ReadIndexResponse { context, index } => {
            let args = fb::ReadIndexResponseArgs {
                context: context.0,
                index: index.map_or(0, LogIndex::get),
                has_index: index.is_some(),
            };
            (
                fb::Body::ReadIndexResponse,
                fb::ReadIndexResponse::create(builder, &args).as_union_value(),
            )
        }
        MessageBody::TimeoutNow => {
            let table = fb::TimeoutNow::create(builder, &fb::TimeoutNowArgs {});
            (fb::Body::TimeoutNow, table.as_union_value())
        }
        MessageBody::InstallSnapshot { snapshot } => {
            let voters: Vec<u64> = snapshot.membership.voters.iter().map(|n| n.0).collect();
            let learners: Vec<u64> = snapshot.membership.learners.iter().map(|n| n.0).collect();
            let voters = builder.create_vector(&voters);
            let learners = builder.create_vector(&learners);
            let membership = fb::Membership::create(
                builder,
                &fb::MembershipArgs {
                    voters: Some(voters),
                    learners: Some(learners),
                },
            );
            let last = entry_id(snapshot.last);
            let meta = fb::SnapshotMeta::create(
                builder,
                &fb::SnapshotMetaArgs {
                    last: Some(&last),
                    membership: Some(membership),
                },
            );
            let args = fb::InstallSnapshotArgs {
                snapshot: Some(meta),
            };
            (
                fb::Body::InstallSnapshot,
                fb::InstallSnapshot::create(builder, &args).as_union_value(),
            )
        }
    }
}

/// Verifies and decodes one `Batch` payload (without its frame header).
pub fn decode_batch(bytes: &[u8]) -> Result<PeerBatch, WireError> {
    let batch = fb::root_as_batch(bytes).map_err(|e| WireError::Invalid(e.to_string()))?;
    let from = node(batch.from(), "batch.from")?;
    let to = node(batch.to(), "batch.to")?;
    let mut messages = Vec::new();
    if let Some(list) = batch.messages() {
        messages.reserve(list.len());
        for message in list {
            let group = GroupId(message.group());
            let body = decode_body(&message)?;
            messages.push((
                group,
                Message {
                    from,
                    to,
                    term: Term(message.term()),
                    body,
                },
            ));
        }
    }
    Ok(PeerBatch {
        from,
        to,
        core: CoreId(batch.core()),
        messages,
        heartbeats: decode_beats(batch.heartbeats()),
        heartbeat_responses: decode_beats(batch.heartbeat_responses()),
    })
}

fn node(id: u64, field: &'static str) -> Result<NodeId, WireError> {
    if id == 0 {
        Err(WireError::ZeroNode { field })
    } else {
        Ok(NodeId(id))
    }
}

fn decode_beats(list: Option<flatbuffers::Vector<'_, fb::CoalescedBeat>>) -> Vec<Beat> {
    let Some(list) = list else { return Vec::new() };
    list.iter()
        .map(|beat| Beat {
            group: GroupId(beat.group()),
            term: Term(beat.term()),
            commit: LogIndex(beat.commit()),
            read_round: (beat.read_round() != 0).then_some(beat.read_round()),
        })
        .collect()
}

fn domain_id(id: &fb::EntryId) -> EntryId {
    EntryId::new(Term(id.term()), LogIndex(id.index()))
}

fn decode_body(message: &fb::GroupMessage<'_>) -> Result<MessageBody, WireError> {
    let unknown = || WireError::UnknownBody {
        group: message.group(),
        body_type: message.body_type().0,
    };
    let body = match message.body_type() {
        fb::Body::PreVote => {
            let table = message.body_as_pre_vote().ok_or_else(unknown)?;
            MessageBody::PreVote {
                last: domain_id(table.last()),
            }
        }
        fb::Body::PreVoteResponse => {
            let table = message.body_as_pre_vote_response().ok_or_else(unknown)?;
            MessageBody::PreVoteResponse {
                granted: table.granted(),
            }
        }
        fb::Body::Vote => {
            let table = message.body_as_vote().ok_or_else(unknown)?;
            MessageBody::Vote {
                last: domain_id(table.last()),
                leader_transfer: table.leader_transfer(),
            }
        }
        fb::Body::VoteResponse => {
            let table = message.body_as_vote_response().ok_or_else(unknown)?;
            MessageBody::VoteResponse {
                granted: table.granted(),
            }
        }
        fb::Body::Append => decode_append(
            message.body_as_append().ok_or_else(unknown)?,
            Term(message.term()),
        )?,
        fb::Body::AppendResponse => {
            let table = message.body_as_append_response().ok_or_else(unknown)?;
            MessageBody::AppendResponse(match (table.rejected(), table.hint()) {
                (Some(rejected), Some(hint)) => AppendResponse::Rejected {
                    rejected: domain_id(rejected),
                    hint: domain_id(hint),
                },
                (None, None) => AppendResponse::Accepted {
                    last_index: LogIndex(table.last_index()),
                },
                _ => {
                    return Err(WireError::Missing {
                        field: "append_response.hint",
                    });
                }
            })
        }
        fb::Body::Heartbeat => {
            let table = message.body_as_heartbeat().ok_or_else(unknown)?;
            let read_round = (table.read_round() != 0).then_some(table.read_round());
            MessageBody::Heartbeat {
                commit: LogIndex(table.commit()),
                read_round,
            }
        }
        fb::Body::HeartbeatResponse => {
            let table = message.body_as_heartbeat_response().ok_or_else(unknown)?;
            MessageBody::HeartbeatResponse {
                read_round: (table.read_round() != 0).then_some(table.read_round()),
            }
        }
        fb::Body::ReadIndex => {
            let table = message.body_as_read_index().ok_or_else(unknown)?;
            MessageBody::ReadIndex {
                context: ReadContext(table.context()),
            }
        }
        fb::Body::ReadIndexResponse => {
            let table = message.body_as_read_index_response().ok_or_else(unknown)?;
            let index = table.has_index().then_some(LogIndex(table.index()));
            MessageBody::ReadIndexResponse {
                context: ReadContext(table.context()),
                index,
            }
        }
        fb::Body::TimeoutNow => {
            message.body_as_timeout_now().ok_or_else(unknown)?;
            MessageBody::TimeoutNow
        }
        fb::Body::InstallSnapshot => {
            let table = message.body_as_install_snapshot().ok_or_else(unknown)?;
            MessageBody::InstallSnapshot {
                snapshot: decode_snapshot(table.snapshot()),
            }
        }
        _ => return Err(unknown()),
    };
    Ok(body)
}

/// Decodes an append and checks what the Raft core relies on: entries follow `prev` with
/// consecutive indexes and terms that never decrease nor exceed the sender's term.
fn decode_append(table: fb::Append<'_>, message_term: Term) -> Result<MessageBody, WireError> {
    let prev = domain_id(table.prev());
    let mut entries: Vec<Entry> = Vec::new();
    if let Some(list) = table.entries() {
        entries.reserve(list.len());
        for (position, entry) in list.iter().enumerate() {
            let id = domain_id(entry.id());
            let after = entries.last().map_or(prev, |e| e.id);
            let expected_index = after.index.0.checked_add(1).map(LogIndex);
            if Some(id.index) != expected_index || id.term < after.term || id.term > message_term {
                return Err(WireError::EntriesOutOfOrder {
                    position,
                    found: id,
                    expected_index: expected_index.unwrap_or(after.index),
                    prev_term: after.term,
                    message_term,
                });
            }
            let kind = match entry.kind() {
                fb::EntryKind::Command => EntryKind::Command,
                fb::EntryKind::Empty => EntryKind::Empty,
                fb::EntryKind::Membership => EntryKind::Membership,
                other => return Err(WireError::UnknownEntryKind(other.0)),
            };
            let data = entry
                .data()
                .map(|d| Bytes::copy_from_slice(d.bytes()))
                .unwrap_or_default();
            entries.push(Entry { id, kind, data });
        }
    }
    Ok(MessageBody::Append {
        prev,
        entries,
        commit: LogIndex(table.commit()),
    })
}

fn decode_snapshot(meta: fb::SnapshotMeta<'_>) -> SnapshotMeta {
    let nodes = |list: Option<flatbuffers::Vector<'_, u64>>| -> Vec<NodeId> {
        list.map(|l| l.iter().map(NodeId).collect())
            .unwrap_or_default()
    };
    let membership = meta.membership().map_or_else(Membership::default, |m| {
        let mut learners = nodes(m.learners());
        learners.sort_unstable();
        learners.dedup();
        Membership {
            learners,
            ..Membership::new(nodes(m.voters()))
        }
    });
    SnapshotMeta {
        last: domain_id(meta.last()),
        membership,
    }
}

#[cfg(test)]
mod tests;
