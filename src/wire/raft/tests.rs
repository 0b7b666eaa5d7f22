//! Round trips of every peer message through the `Batch` flatbuffer, and decoding of random
//! and mutated bytes, which must return errors and never panic.

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use proptest::prelude::*;

use super::*;

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
    batch
}

fn encode(batch: &Batch) -> Vec<u8> {
    let mut builder = FlatBufferBuilder::new();
    encode_batch(&mut builder, batch, CoreId(1)).to_vec()
}

#[test]
fn every_message_body_round_trips() {
    // Each body variant, encoded in one batch with coalesced heartbeats, decodes to itself.
    let batch = sample_batch();
    assert_eq!(decode_batch(&encode(&batch)), Ok((CoreId(1), batch)));
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

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
