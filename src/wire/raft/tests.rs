//! Round trips of every peer message, snapshot chunk and acknowledgement through the `Batch`
//! flatbuffer, the refusals of malformed ones, and decoding of random and mutated bytes,
//! which must return errors and never panic.

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use proptest::prelude::*;

use super::*;
use crate::constants::{
    BATCH_BYTES_MAX, PEER_FRAME_BYTES_MAX, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_CHUNK_BYTES_MAX,
};
use crate::raft::Message;
use crate::wire::batch::BatchError;

fn id(term: u64, index: u64) -> EntryId {
    EntryId::new(Term(term), LogIndex(index))
}

fn every_body() -> Vec<MessageBody> {
    let entry = |index, kind, data: &'static [u8]| Entry {
        id: id(7, index),
        kind,
        data: Bytes::from_static(data),
    };
    vec![
        MessageBody::PreVote { last: id(3, 9) },
        MessageBody::PreVoteResponse { granted: true },
        MessageBody::Vote {
            last: id(6, 2),
            leader_transfer: true,
        },
        MessageBody::VoteResponse { granted: false },
        MessageBody::Append {
            prev: id(6, 4),
            entries: vec![
                entry(5, EntryKind::Empty, b""),
                entry(6, EntryKind::Command, b"put k v"),
            ],
            commit: LogIndex(4),
        },
        MessageBody::Append {
            prev: id(7, 6),
            entries: Vec::new(),
            commit: LogIndex(6),
        },
        MessageBody::AppendResponse(AppendResponse::Accepted {
            last_index: LogIndex(6),
        }),
        MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected: id(7, 6),
            hint: id(5, 3),
            lost: false,
        }),
        MessageBody::AppendResponse(AppendResponse::Rejected {
            rejected: id(7, 6),
            hint: EntryId::ZERO,
            lost: true,
        }),
        MessageBody::Heartbeat {
            commit: LogIndex(3),
            read_round: Some(12),
        },
        MessageBody::Heartbeat {
            commit: LogIndex(3),
            read_round: None,
        },
        MessageBody::HeartbeatResponse {
            read_round: Some(12),
        },
        MessageBody::ReadIndex {
            context: ReadContext(99),
        },
        MessageBody::ReadIndexResponse {
            context: ReadContext(99),
            index: Some(LogIndex(8)),
        },
        MessageBody::ReadIndexResponse {
            context: ReadContext(98),
            index: None,
        },
        MessageBody::TimeoutNow,
        MessageBody::InstallSnapshot {
            snapshot: SnapshotMeta {
                last: id(5, 100),
                membership: Membership::new(vec![NodeId(3), NodeId(1)]),
            },
        },
    ]
}

fn snapshot_meta(last: EntryId) -> SnapshotMeta {
    SnapshotMeta {
        last,
        membership: Membership {
            learners: vec![NodeId(4)],
            ..Membership::new(vec![NodeId(3), NodeId(1), NodeId(2)])
        },
    }
}

fn chunk(offset: u64, data: &'static [u8], total_bytes: u64) -> SnapshotChunk {
    SnapshotChunk {
        group: GroupId(6),
        term: Term(9),
        snapshot: snapshot_meta(id(8, 500)),
        offset,
        total_bytes,
        data: Bytes::from_static(data),
    }
}

fn ack(received_bytes: u64, refused: bool) -> SnapshotAck {
    SnapshotAck {
        group: GroupId(6),
        last: id(8, 500),
        received_bytes,
        refused,
    }
}

fn sample_batch() -> Batch {
    let mut batch = Batch::new(NodeId(1), NodeId(2));
    for (i, body) in every_body().into_iter().enumerate() {
        batch.messages.push(GroupMessage {
            group: GroupId(i as u32),
            term: Term(7),
            body,
        });
    }
    batch.heartbeats = vec![
        HeartbeatEntry {
            group: GroupId(4),
            term: Term(2),
            commit: LogIndex(10),
            read_round: None,
        },
        HeartbeatEntry {
            group: GroupId(9),
            term: Term(3),
            commit: LogIndex(11),
            read_round: Some(5),
        },
    ];
    batch.heartbeat_responses = vec![HeartbeatResponseEntry {
        group: GroupId(2),
        term: Term(2),
        read_round: Some(1),
    }];
    batch.forwards = vec![
        Forward::Request {
            token: 7,
            hops: 1,
            request: Bytes::from_static(b"request bytes"),
        },
        Forward::Reply {
            token: 8,
            response: Bytes::from_static(b"response bytes"),
        },
    ];
    batch.snapshot_chunks = vec![chunk(0, b"first bytes", 30), chunk(11, b"", 30)];
    batch.snapshot_acks = vec![ack(11, false), ack(0, true)];
    batch
}

fn encode(batch: &Batch) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    encode_batch(&mut builder, batch, CoreId(1)).to_vec()
}

#[test]
fn every_message_body_round_trips() {
    // Each body variant, encoded in one batch with coalesced heartbeats, forwards, snapshot
    // chunks and acknowledgements, decodes to itself and passes the batch limits.
    let batch = sample_batch();
    assert_eq!(batch.validate(), Ok(()));
    assert_eq!(decode_batch(&encode(&batch)), Ok((CoreId(1), batch)));
}

#[test]
fn snapshot_items_round_trip_beside_ordinary_messages() {
    // Chunks (one empty, one with a membership-less snapshot) and acks keep their order and
    // every field through a batch that also holds a message and a heartbeat.
    let mut batch = Batch::new(NodeId(3), NodeId(1));
    batch.push(
        GroupId(2),
        Message {
            from: NodeId(3),
            to: NodeId(1),
            term: Term(4),
            body: MessageBody::VoteResponse { granted: true },
        },
    );
    batch.push(
        GroupId(5),
        Message {
            from: NodeId(3),
            to: NodeId(1),
            term: Term(4),
            body: MessageBody::Heartbeat {
                commit: LogIndex(7),
                read_round: None,
            },
        },
    );
    let mut bare = chunk(u64::MAX - 3, b"abc", u64::MAX);
    bare.snapshot.membership = Membership::default();
    batch.snapshot_chunks = vec![chunk(4, b"0123456789", 14), bare, chunk(14, b"", 14)];
    batch.snapshot_acks = vec![
        ack(u64::MAX, false),
        SnapshotAck {
            group: GroupId(u32::MAX),
            last: id(u64::MAX, u64::MAX),
            received_bytes: 0,
            refused: true,
        },
    ];
    assert_eq!(batch.item_count(), 7);
    assert_eq!(batch.validate(), Ok(()));
    let (core, decoded) = decode_batch(&encode(&batch)).expect("a valid batch decodes");
    assert_eq!(core, CoreId(1));
    assert_eq!(decoded, batch);
    let mut drained = decoded;
    assert_eq!(drained.drain_messages().count(), 2);
    assert_eq!(
        drained.snapshot_chunks.len(),
        3,
        "chunks are not Raft messages"
    );
    drained.clear();
    assert!(drained.is_empty(), "clear empties the snapshot lists too");
}

fn refusal(chunks: Vec<SnapshotChunk>, acks: Vec<SnapshotAck>) -> Result<(), BatchError> {
    let mut batch = Batch::new(NodeId(1), NodeId(2));
    batch.snapshot_chunks = chunks;
    batch.snapshot_acks = acks;
    // The refusal holds after the trip over the wire, where it is checked in production.
    let (_, decoded) = decode_batch(&encode(&batch)).expect("limits are not the decoder's");
    assert_eq!(decoded, batch);
    decoded.validate()
}

#[test]
fn chunk_over_the_size_limit_is_refused() {
    // A chunk of exactly SNAPSHOT_CHUNK_BYTES_MAX bytes passes; one byte more is refused.
    let data = Bytes::from(vec![7u8; SNAPSHOT_CHUNK_BYTES_MAX + 1]);
    let mut large = chunk(0, b"", SNAPSHOT_CHUNK_BYTES_MAX as u64 + 1);
    large.data = data.slice(..SNAPSHOT_CHUNK_BYTES_MAX);
    assert_eq!(refusal(vec![large.clone()], Vec::new()), Ok(()));
    large.data = data;
    assert_eq!(
        refusal(vec![large], Vec::new()),
        Err(BatchError::ChunkTooLarge {
            group: GroupId(6),
            data_bytes: SNAPSHOT_CHUNK_BYTES_MAX + 1
        })
    );
}

#[test]
fn chunk_past_the_end_of_its_snapshot_is_refused() {
    // A chunk ending exactly at `total_bytes` passes; one ending past it, or whose end
    // overflows a u64, is refused with its figures.
    assert_eq!(refusal(vec![chunk(27, b"abc", 30)], Vec::new()), Ok(()));
    assert_eq!(
        refusal(vec![chunk(28, b"abc", 30)], Vec::new()),
        Err(BatchError::ChunkBeyondSnapshot {
            group: GroupId(6),
            offset: 28,
            data_bytes: 3,
            total_bytes: 30
        })
    );
    assert_eq!(
        refusal(vec![chunk(u64::MAX - 1, b"abc", u64::MAX)], Vec::new()),
        Err(BatchError::ChunkBeyondSnapshot {
            group: GroupId(6),
            offset: u64::MAX - 1,
            data_bytes: 3,
            total_bytes: u64::MAX
        })
    );
    assert_eq!(
        refusal(vec![chunk(1, b"", 0)], Vec::new()),
        Err(BatchError::ChunkBeyondSnapshot {
            group: GroupId(6),
            offset: 1,
            data_bytes: 0,
            total_bytes: 0
        })
    );
}

#[test]
fn snapshot_items_naming_no_entries_are_refused() {
    // A snapshot ends at an entry (thesis §5): a chunk or an ack naming index 0 is refused,
    // and so is a chunk whose snapshot ends in a term after the leader's offer.
    let mut empty = chunk(0, b"abc", 3);
    empty.snapshot.last = id(0, 0);
    assert_eq!(
        refusal(vec![empty], Vec::new()),
        Err(BatchError::SnapshotOfNoEntries {
            item: "chunk",
            group: GroupId(6),
            last: id(0, 0)
        })
    );
    let mut nothing = ack(0, false);
    nothing.last = id(3, 0);
    assert_eq!(
        refusal(Vec::new(), vec![ack(5, false), nothing]),
        Err(BatchError::SnapshotOfNoEntries {
            item: "ack",
            group: GroupId(6),
            last: id(3, 0)
        })
    );
    let mut later = chunk(0, b"abc", 3);
    later.snapshot.last = id(10, 500);
    assert_eq!(
        refusal(vec![later], Vec::new()),
        Err(BatchError::ChunkOfLaterTerm {
            group: GroupId(6),
            term: Term(9),
            last: id(10, 500)
        })
    );
    let mut current = chunk(0, b"abc", 3);
    current.snapshot.last = id(9, 500);
    assert_eq!(refusal(vec![current], Vec::new()), Ok(()));
}

#[test]
fn largest_chunk_fits_a_frame_and_the_estimate() {
    // A batch holding only the largest chunk, with the largest membership a snapshot may
    // name, passes the batch limits and encodes within PEER_FRAME_BYTES_MAX and within its
    // own size estimate; so does a batch of the chunks senders use plus many acks.
    let voters: Vec<NodeId> = (1..=VOTERS_MAX as u64).map(NodeId).collect();
    let learners: Vec<NodeId> = (VOTERS_MAX as u64 + 1..=WAL_MEMBERS_MAX as u64)
        .map(NodeId)
        .collect();
    let mut largest = chunk(0, b"", SNAPSHOT_CHUNK_BYTES_MAX as u64);
    largest.snapshot.membership = Membership {
        learners,
        ..Membership::new(voters)
    };
    largest.data = Bytes::from(vec![0xa5; SNAPSHOT_CHUNK_BYTES_MAX]);
    let mut batch = Batch::new(NodeId(1), NodeId(2));
    batch.snapshot_chunks.push(largest);
    assert_eq!(batch.validate(), Ok(()));
    let bytes = encode(&batch);
    assert!(
        bytes.len() <= PEER_FRAME_BYTES_MAX && bytes.len() as u64 <= batch.size_bytes(),
        "largest chunk encodes to {} bytes, estimated {}, frame limit {PEER_FRAME_BYTES_MAX}",
        bytes.len(),
        batch.size_bytes()
    );
    assert_eq!(decode_batch(&bytes), Ok((CoreId(1), batch.clone())));
    // Decoded from a shared payload, the chunk's data is the payload's own memory.
    let payload = Bytes::from(bytes);
    let (_, shared) = decode_batch_shared(&payload).expect("decodes");
    assert_eq!(shared, batch);
    let data = &shared.snapshot_chunks[0].data;
    let within = payload.as_ptr_range();
    assert!(
        within.contains(&data.as_ptr()) && data.as_ptr_range().end <= within.end,
        "chunk data copied out of the payload"
    );

    let mut batch = Batch::new(NodeId(1), NodeId(2));
    let data = Bytes::from(vec![0x5a; SNAPSHOT_CHUNK_BYTES]);
    let chunk_count = (BATCH_BYTES_MAX / 2) as usize / SNAPSHOT_CHUNK_BYTES;
    for position in 0..chunk_count {
        let mut piece = chunk(0, b"", (chunk_count * SNAPSHOT_CHUNK_BYTES) as u64);
        piece.offset = (position * SNAPSHOT_CHUNK_BYTES) as u64;
        piece.data = data.clone();
        batch.snapshot_chunks.push(piece);
    }
    batch.snapshot_acks = (0..10_000u64).map(|i| ack(i, false)).collect();
    assert_eq!(batch.validate(), Ok(()));
    let bytes = encode(&batch);
    assert!(
        bytes.len() as u64 <= batch.size_bytes(),
        "{chunk_count} chunks and 10000 acks encode to {} bytes, estimated {}",
        bytes.len(),
        batch.size_bytes()
    );
}

/// Encodes a batch holding one snapshot chunk or ack table built field by field, so that a
/// test can leave out what a correct peer always writes.
fn batch_with_raw_item(
    write: impl FnOnce(&mut FlatBufferBuilder<'static>) -> fb::BatchArgs<'static>,
) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    let mut args = write(&mut builder);
    args.from = 1;
    args.to = 2;
    let root = fb::Batch::create(&mut builder, &args);
    builder.finish(root, None);
    builder.finished_data().to_vec()
}

#[test]
fn snapshot_items_missing_required_fields_are_refused() {
    // A chunk without its snapshot or its data, and an ack without its `last`, are errors
    // of the decoder, not panics.
    let without_snapshot = batch_with_raw_item(|builder| {
        let data = builder.create_vector(&[1u8, 2, 3][..]);
        let start = builder.start_table();
        builder.push_slot::<u32>(fb::SnapshotChunk::VT_GROUP, 6, 0);
        builder.push_slot_always(fb::SnapshotChunk::VT_DATA, data);
        let table = builder.end_table(start);
        let chunks = builder.create_vector(&[flatbuffers::WIPOffset::<fb::SnapshotChunk>::new(
            table.value(),
        )]);
        fb::BatchArgs {
            snapshot_chunks: Some(chunks),
            ..fb::BatchArgs::default()
        }
    });
    assert!(matches!(
        decode_batch(&without_snapshot),
        Err(WireError::Invalid(_))
    ));
    let without_data = batch_with_raw_item(|builder| {
        let snapshot = encode_snapshot_meta(builder, &snapshot_meta(id(8, 500)));
        let start = builder.start_table();
        builder.push_slot_always(fb::SnapshotChunk::VT_SNAPSHOT, snapshot);
        let table = builder.end_table(start);
        let chunks = builder.create_vector(&[flatbuffers::WIPOffset::<fb::SnapshotChunk>::new(
            table.value(),
        )]);
        fb::BatchArgs {
            snapshot_chunks: Some(chunks),
            ..fb::BatchArgs::default()
        }
    });
    assert!(matches!(
        decode_batch(&without_data),
        Err(WireError::Invalid(_))
    ));
    let without_last = batch_with_raw_item(|builder| {
        let start = builder.start_table();
        builder.push_slot::<u64>(fb::SnapshotAck::VT_RECEIVED_BYTES, 5, 0);
        let table = builder.end_table(start);
        let acks = builder.create_vector(&[flatbuffers::WIPOffset::<fb::SnapshotAck>::new(
            table.value(),
        )]);
        fb::BatchArgs {
            snapshot_acks: Some(acks),
            ..fb::BatchArgs::default()
        }
    });
    assert!(matches!(
        decode_batch(&without_last),
        Err(WireError::Invalid(_))
    ));
}

fn batch_with_membership(voters: Vec<u64>, learners: Vec<u64>, in_chunk: bool) -> Vec<u8> {
    batch_with_raw_item(|builder| {
        let voters = builder.create_vector(&voters);
        let learners = builder.create_vector(&learners);
        let membership = fb::Membership::create(
            builder,
            &fb::MembershipArgs {
                voters: Some(voters),
                learners: Some(learners),
            },
        );
        let last = entry_id(id(8, 500));
        let meta = fb::SnapshotMeta::create(
            builder,
            &fb::SnapshotMetaArgs {
                last: Some(&last),
                membership: Some(membership),
            },
        );
        if in_chunk {
            let data = builder.create_vector(&[0u8; 4][..]);
            let args = fb::SnapshotChunkArgs {
                group: 6,
                term: 9,
                snapshot: Some(meta),
                offset: 0,
                total_bytes: 4,
                data: Some(data),
            };
            let chunk = fb::SnapshotChunk::create(builder, &args);
            let chunks = builder.create_vector(&[chunk]);
            fb::BatchArgs {
                snapshot_chunks: Some(chunks),
                ..fb::BatchArgs::default()
            }
        } else {
            let body = fb::InstallSnapshot::create(
                builder,
                &fb::InstallSnapshotArgs {
                    snapshot: Some(meta),
                },
            );
            let message = fb::GroupMessage::create(
                builder,
                &fb::GroupMessageArgs {
                    group: 6,
                    term: 9,
                    body_type: fb::Body::InstallSnapshot,
                    body: Some(body.as_union_value()),
                },
            );
            let messages = builder.create_vector(&[message]);
            fb::BatchArgs {
                messages: Some(messages),
                ..fb::BatchArgs::default()
            }
        }
    })
}

#[test]
fn malformed_snapshot_memberships_are_refused_alike() {
    // A chunk's membership is decoded as InstallSnapshot's is: sorted and deduplicated, and
    // refused over the limits, with a zero node id, or with a voter that is also a learner.
    for in_chunk in [true, false] {
        let (_, batch) = decode_batch(&batch_with_membership(
            vec![3, 1, 3],
            vec![5, 4, 5],
            in_chunk,
        ))
        .expect("a sloppy but sound membership decodes");
        let expected = Membership {
            voters: vec![NodeId(1), NodeId(3)],
            learners: vec![NodeId(4), NodeId(5)],
        };
        let decoded = match (batch.snapshot_chunks.first(), batch.messages.first()) {
            (Some(chunk), None) => chunk.snapshot.membership.clone(),
            (
                None,
                Some(GroupMessage {
                    body: MessageBody::InstallSnapshot { snapshot },
                    ..
                }),
            ) => snapshot.membership.clone(),
            other => panic!("unexpected batch contents {other:?}"),
        };
        assert_eq!(decoded, expected, "in_chunk {in_chunk}");

        let too_many: Vec<u64> = (1..=VOTERS_MAX as u64 + 1).collect();
        assert_eq!(
            decode_batch(&batch_with_membership(too_many, Vec::new(), in_chunk)),
            Err(WireError::MembershipTooLarge {
                group: 6,
                voter_count: VOTERS_MAX + 1,
                learner_count: 0
            }),
            "in_chunk {in_chunk}"
        );
        let learners: Vec<u64> = (100..100 + WAL_MEMBERS_MAX as u64).collect();
        assert_eq!(
            decode_batch(&batch_with_membership(vec![1], learners, in_chunk)),
            Err(WireError::MembershipTooLarge {
                group: 6,
                voter_count: 1,
                learner_count: WAL_MEMBERS_MAX
            }),
            "in_chunk {in_chunk}"
        );
        assert_eq!(
            decode_batch(&batch_with_membership(vec![1, 0], Vec::new(), in_chunk)),
            Err(WireError::ZeroNode {
                field: "membership.voters"
            }),
            "in_chunk {in_chunk}"
        );
        assert_eq!(
            decode_batch(&batch_with_membership(vec![1, 2], vec![3, 2], in_chunk)),
            Err(WireError::MembershipOverlap {
                group: 6,
                node: NodeId(2)
            }),
            "in_chunk {in_chunk}"
        );
    }
}

#[test]
fn builder_reuse_gives_identical_bytes() {
    // Reusing one builder across rounds must not leak state from the previous batch.
    let batch = sample_batch();
    let mut builder = FlatBufferBuilder::new();
    let first = encode_batch(&mut builder, &batch, CoreId(0)).to_vec();
    let empty = Batch::new(NodeId(1), NodeId(3));
    let second = encode_batch(&mut builder, &empty, CoreId(0)).to_vec();
    assert_eq!(decode_batch(&second), Ok((CoreId(0), empty)));
    assert_eq!(encode_batch(&mut builder, &batch, CoreId(0)), &first[..]);
}

#[test]
fn append_with_a_gap_is_refused() {
    // The core trusts that appended entries follow `prev` without gaps; the gateway checks it.
    let gap = Entry {
        id: id(7, 9),
        kind: EntryKind::Command,
        data: Bytes::new(),
    };
    let body = MessageBody::Append {
        prev: id(6, 4),
        entries: vec![gap],
        commit: LogIndex(4),
    };
    let mut batch = Batch::new(NodeId(1), NodeId(2));
    batch.messages.push(GroupMessage {
        group: GroupId(0),
        term: Term(7),
        body,
    });
    assert!(matches!(
        decode_batch(&encode(&batch)),
        Err(WireError::EntriesOutOfOrder { position: 0, .. })
    ));
}

#[test]
fn zero_node_id_is_refused() {
    // Node ids start at 1; a zero sender is a malformed batch, not a node.
    let mut batch = Batch::new(NodeId(5), NodeId(2));
    batch.from = NodeId(0);
    assert_eq!(
        decode_batch(&encode(&batch)),
        Err(WireError::ZeroNode {
            field: "batch.from"
        })
    );
}

fn any_chunk() -> impl Strategy<Value = SnapshotChunk> {
    // Small figures make every validation outcome likely; extreme ones test overflow.
    let figure = prop_oneof![0u64..40, Just(u64::MAX), (u64::MAX - 40)..=u64::MAX];
    (
        any::<u32>(),
        0u64..12,
        (0u64..12, 0u64..4),
        figure.clone(),
        figure,
        proptest::collection::vec(any::<u8>(), 0..24),
        proptest::collection::btree_set(1u64..40, 0..5),
    )
        .prop_map(
            |(group, term, (last_term, last_index), offset, total_bytes, data, voters)| {
                SnapshotChunk {
                    group: GroupId(group),
                    term: Term(term),
                    snapshot: SnapshotMeta {
                        last: id(last_term, last_index),
                        membership: Membership::new(voters.into_iter().map(NodeId).collect()),
                    },
                    offset,
                    total_bytes,
                    data: Bytes::from(data),
                }
            },
        )
}

fn any_ack() -> impl Strategy<Value = SnapshotAck> {
    (
        any::<u32>(),
        any::<u64>(),
        0u64..3,
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(group, term, index, received_bytes, refused)| SnapshotAck {
                group: GroupId(group),
                last: id(term, index),
                received_bytes,
                refused,
            },
        )
}

/// What `Batch::validate` must say of one chunk, computed without shortcuts.
fn chunk_is_valid(chunk: &SnapshotChunk) -> bool {
    let end = u128::from(chunk.offset) + chunk.data.len() as u128;
    chunk.data.len() <= SNAPSHOT_CHUNK_BYTES_MAX
        && end <= u128::from(chunk.total_bytes)
        && chunk.snapshot.last.index.0 > 0
        && chunk.snapshot.last.term <= chunk.term
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_snapshot_items_round_trip_and_validate_as_specified(
        chunks in proptest::collection::vec(any_chunk(), 0..4),
        acks in proptest::collection::vec(any_ack(), 0..4),
    ) {
        // Any chunks and acks survive the wire unchanged, and the batch is accepted exactly
        // when every chunk is within its snapshot and limits and every item names an entry.
        let mut batch = sample_batch();
        batch.snapshot_chunks = chunks;
        batch.snapshot_acks = acks;
        let (_, decoded) = decode_batch(&encode(&batch)).expect("sound items decode");
        prop_assert_eq!(&decoded, &batch);
        let valid = batch.snapshot_chunks.iter().all(chunk_is_valid)
            && batch.snapshot_acks.iter().all(|a| a.last.index.0 > 0);
        prop_assert_eq!(decoded.validate().is_ok(), valid, "{:?}", decoded.validate());
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        // Whatever a peer sends, decoding returns a value or an error.
        let _ = decode_batch(&bytes);
    }

    #[test]
    fn mutated_batches_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        // A valid batch with a few bytes changed decodes or errs, never panics.
        let mut bytes = encode(&sample_batch());
        for (position, value) in flips {
            let at = position % bytes.len();
            bytes[at] = value;
        }
        let _ = decode_batch(&bytes);
    }
}
