//! The peer protocol: a `Batch` (all Raft messages of one core's groups to one node in one
//! round, heartbeats coalesced, forwarded client requests, snapshot chunks and their
//! acknowledgements) to and from the `Batch` flatbuffer of `schemas/raft.fbs`.
//! Decoding verifies the buffer and every field, and returns a `WireError` for anything a
//! correct peer would not send.

use bytes::Bytes;
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use thiserror::Error;

use super::batch::{
    Batch, Forward, GroupMessage, HeartbeatEntry, HeartbeatResponseEntry, SnapshotAck,
    SnapshotChunk,
};
use super::generated::raft_generated::ringraft::wire::raft as fb;
use crate::constants::{VOTERS_MAX, WAL_MEMBERS_MAX};
use crate::ids::{CoreId, EntryId, GroupId, LogIndex, NodeId, Term};
use crate::raft::{
    AppendResponse, Entry, EntryKind, Membership, MessageBody, ReadContext, SnapshotMeta,
};

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
    #[error(
        "snapshot membership of group {group} has {voter_count} voters and {learner_count} learners, over the limits {VOTERS_MAX} voters and {WAL_MEMBERS_MAX} members"
    )]
    MembershipTooLarge {
        group: u32,
        voter_count: usize,
        learner_count: usize,
    },
    #[error("snapshot membership of group {group} names node {node} as a voter and a learner")]
    MembershipOverlap { group: u32, node: NodeId },
}

/// Encodes `batch`, sent by core `core`, into `builder` and returns the finished bytes (valid
/// until the builder is reset). The builder is reused across rounds so encoding allocates only
/// to grow it.
pub fn encode_batch<'b>(
    builder: &'b mut FlatBufferBuilder<'static>,
    batch: &Batch,
    core: CoreId,
) -> &'b [u8] {
    builder.reset();
    let mut messages = Vec::with_capacity(batch.messages.len());
    for message in &batch.messages {
        let (body_type, body) = encode_body(builder, &message.body);
        let args = fb::GroupMessageArgs {
            group: message.group.0,
            term: message.term.0,
            body_type,
            body: Some(body),
        };
        messages.push(fb::GroupMessage::create(builder, &args));
    }
    let messages = builder.create_vector(&messages);
    let beats: Vec<fb::CoalescedBeat> = batch
        .heartbeats
        .iter()
        .map(|b| fb::CoalescedBeat::new(b.group.0, b.term.0, b.commit.0, b.read_round.unwrap_or(0)))
        .collect();
    let heartbeats = builder.create_vector(&beats);
    let beats: Vec<fb::CoalescedBeat> = batch
        .heartbeat_responses
        .iter()
        .map(|b| fb::CoalescedBeat::new(b.group.0, b.term.0, 0, b.read_round.unwrap_or(0)))
        .collect();
    let heartbeat_responses = builder.create_vector(&beats);
    let (mut requests, mut replies) = (Vec::new(), Vec::new());
    for forward in &batch.forwards {
        match forward {
            Forward::Request {
                token,
                hops,
                request,
            } => {
                let request = Some(builder.create_vector(&request[..]));
                let args = fb::ForwardRequestArgs {
                    token: *token,
                    hops: *hops,
                    request,
                };
                requests.push(fb::ForwardRequest::create(builder, &args));
            }
            Forward::Reply { token, response } => {
                let response = Some(builder.create_vector(&response[..]));
                replies.push(fb::ForwardReply::create(
                    builder,
                    &fb::ForwardReplyArgs {
                        token: *token,
                        response,
                    },
                ));
            }
        }
    }
    let forward_requests = builder.create_vector(&requests);
    let forward_replies = builder.create_vector(&replies);
    let mut chunks = Vec::with_capacity(batch.snapshot_chunks.len());
    for chunk in &batch.snapshot_chunks {
        let snapshot = encode_snapshot_meta(builder, &chunk.snapshot);
        let data = builder.create_vector(&chunk.data[..]);
        let args = fb::SnapshotChunkArgs {
            group: chunk.group.0,
            term: chunk.term.0,
            snapshot: Some(snapshot),
            offset: chunk.offset,
            total_bytes: chunk.total_bytes,
            data: Some(data),
        };
        chunks.push(fb::SnapshotChunk::create(builder, &args));
    }
    let snapshot_chunks = builder.create_vector(&chunks);
    let mut acks = Vec::with_capacity(batch.snapshot_acks.len());
    for ack in &batch.snapshot_acks {
        let last = entry_id(ack.last);
        let args = fb::SnapshotAckArgs {
            group: ack.group.0,
            last: Some(&last),
            received_bytes: ack.received_bytes,
            refused: ack.refused,
        };
        acks.push(fb::SnapshotAck::create(builder, &args));
    }
    let snapshot_acks = builder.create_vector(&acks);
    let root = fb::Batch::create(
        builder,
        &fb::BatchArgs {
            from: batch.from.0,
            to: batch.to.0,
            core: core.0,
            messages: Some(messages),
            heartbeats: Some(heartbeats),
            heartbeat_responses: Some(heartbeat_responses),
            forward_requests: Some(forward_requests),
            forward_replies: Some(forward_replies),
            snapshot_chunks: Some(snapshot_chunks),
            snapshot_acks: Some(snapshot_acks),
        },
    );
    builder.finish(root, None);
    builder.finished_data()
}

fn entry_id(id: EntryId) -> fb::EntryId {
    fb::EntryId::new(id.term.0, id.index.0)
}

fn encode_snapshot_meta<'b>(
    builder: &mut FlatBufferBuilder<'b>,
    snapshot: &SnapshotMeta,
) -> WIPOffset<fb::SnapshotMeta<'b>> {
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
    fb::SnapshotMeta::create(
        builder,
        &fb::SnapshotMetaArgs {
            last: Some(&last),
            membership: Some(membership),
        },
    )
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
                    lost: false,
                },
                AppendResponse::Rejected {
                    rejected,
                    hint,
                    lost,
                } => {
                    let (rejected, hint) = (entry_id(*rejected), entry_id(*hint));
                    let args = fb::AppendResponseArgs {
                        last_index: 0,
                        rejected: Some(&rejected),
                        hint: Some(&hint),
                        lost: *lost,
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
            let meta = encode_snapshot_meta(builder, snapshot);
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

/// Verifies and decodes one `Batch` payload (without its frame header); returns the sending
/// core with it.
pub fn decode_batch(bytes: &[u8]) -> Result<(CoreId, Batch), WireError> {
    decode_batch_with(bytes, Bytes::copy_from_slice)
}

/// `decode_batch` of a payload held in `Bytes`: snapshot chunks' data share its memory
/// instead of being copied (a chunk lives until staged, then the payload is freed).
pub fn decode_batch_shared(payload: &Bytes) -> Result<(CoreId, Batch), WireError> {
    decode_batch_with(payload, |data| payload.slice_ref(data))
}

fn decode_batch_with(
    bytes: &[u8],
    chunk_data: impl Fn(&[u8]) -> Bytes,
) -> Result<(CoreId, Batch), WireError> {
    let batch = fb::root_as_batch(bytes).map_err(|e| WireError::Invalid(e.to_string()))?;
    let from = node(batch.from(), "batch.from")?;
    let to = node(batch.to(), "batch.to")?;
    let mut messages = Vec::new();
    for message in batch.messages().into_iter().flatten() {
        let body = decode_body(&message)?;
        messages.push(GroupMessage {
            group: GroupId(message.group()),
            term: Term(message.term()),
            body,
        });
    }
    let round = |value: u64| (value != 0).then_some(value);
    let heartbeats = batch
        .heartbeats()
        .into_iter()
        .flatten()
        .map(|b| HeartbeatEntry {
            group: GroupId(b.group()),
            term: Term(b.term()),
            commit: LogIndex(b.commit()),
            read_round: round(b.read_round()),
        });
    let heartbeat_responses =
        batch
            .heartbeat_responses()
            .into_iter()
            .flatten()
            .map(|b| HeartbeatResponseEntry {
                group: GroupId(b.group()),
                term: Term(b.term()),
                read_round: round(b.read_round()),
            });
    let requests = batch
        .forward_requests()
        .into_iter()
        .flatten()
        .map(|f| Forward::Request {
            token: f.token(),
            hops: f.hops(),
            request: f
                .request()
                .map(|r| Bytes::copy_from_slice(r.bytes()))
                .unwrap_or_default(),
        });
    let replies = batch
        .forward_replies()
        .into_iter()
        .flatten()
        .map(|f| Forward::Reply {
            token: f.token(),
            response: f
                .response()
                .map(|r| Bytes::copy_from_slice(r.bytes()))
                .unwrap_or_default(),
        });
    let mut snapshot_chunks = Vec::new();
    for chunk in batch.snapshot_chunks().into_iter().flatten() {
        snapshot_chunks.push(SnapshotChunk {
            group: GroupId(chunk.group()),
            term: Term(chunk.term()),
            snapshot: decode_snapshot(chunk.snapshot(), chunk.group())?,
            offset: chunk.offset(),
            total_bytes: chunk.total_bytes(),
            data: chunk_data(chunk.data().bytes()),
        });
    }
    let snapshot_acks = batch
        .snapshot_acks()
        .into_iter()
        .flatten()
        .map(|ack| SnapshotAck {
            group: GroupId(ack.group()),
            last: domain_id(ack.last()),
            received_bytes: ack.received_bytes(),
            refused: ack.refused(),
        });
    let decoded = Batch {
        from,
        to,
        messages,
        heartbeats: heartbeats.collect(),
        heartbeat_responses: heartbeat_responses.collect(),
        forwards: requests.chain(replies).collect(),
        snapshot_chunks,
        snapshot_acks: snapshot_acks.collect(),
    };
    Ok((CoreId(batch.core()), decoded))
}

fn node(id: u64, field: &'static str) -> Result<NodeId, WireError> {
    if id == 0 {
        Err(WireError::ZeroNode { field })
    } else {
        Ok(NodeId(id))
    }
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
                    lost: table.lost(),
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
                snapshot: decode_snapshot(table.snapshot(), message.group())?,
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

/// Decodes the metadata of a snapshot offered to `group` (in `InstallSnapshot` and in every
/// snapshot chunk). Voters and learners come out sorted without duplicates; a membership over
/// the limits a snapshot mark holds, with a zero node id, or naming a node as both voter and
/// learner is refused.
fn decode_snapshot(meta: fb::SnapshotMeta<'_>, group: u32) -> Result<SnapshotMeta, WireError> {
    let membership = match meta.membership() {
        None => Membership::default(),
        Some(membership) => decode_membership(membership, group)?,
    };
    Ok(SnapshotMeta {
        last: domain_id(meta.last()),
        membership,
    })
}

fn decode_membership(membership: fb::Membership<'_>, group: u32) -> Result<Membership, WireError> {
    let voter_count = membership.voters().map_or(0, |list| list.len());
    let learner_count = membership.learners().map_or(0, |list| list.len());
    if voter_count > VOTERS_MAX || voter_count.saturating_add(learner_count) > WAL_MEMBERS_MAX {
        return Err(WireError::MembershipTooLarge {
            group,
            voter_count,
            learner_count,
        });
    }
    let nodes = |list: Option<flatbuffers::Vector<'_, u64>>, field| -> Result<Vec<NodeId>, _> {
        list.into_iter()
            .flatten()
            .map(|id| node(id, field))
            .collect()
    };
    let voters = nodes(membership.voters(), "membership.voters")?;
    let mut learners = nodes(membership.learners(), "membership.learners")?;
    learners.sort_unstable();
    learners.dedup();
    let membership = Membership {
        learners,
        ..Membership::new(voters)
    };
    if let Some(&node) = membership
        .learners
        .iter()
        .find(|&&learner| membership.is_voter(learner))
    {
        return Err(WireError::MembershipOverlap { group, node });
    }
    Ok(membership)
}

#[cfg(test)]
mod tests;
