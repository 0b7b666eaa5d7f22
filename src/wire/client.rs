//! The native client protocol: `ClientRequest` / `ClientResponse` to and from the `Request`
//! and `Response` flatbuffers of `schemas/client.fbs`. Decoding verifies the buffer and the
//! limits on keys and values, and answers anything else with a `WireError`.

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;

use super::generated::client_generated::ringraft::wire::client as fb;
use super::raft::WireError;
use crate::ids::{GroupId, LogIndex, NodeId, Term};
use crate::kv::command::validate_key;
use crate::kv::{Command, PutCondition};
use crate::raft::RoleKind;

/// A client-chosen request id, echoed in the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Get {
        key: Bytes,
    },
    /// A write, validated against the key and value limits.
    Write(Command),
    Status,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub id: RequestId,
    pub op: ClientOp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unavailable,
    Timeout,
    ShuttingDown,
    Overloaded,
    Internal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub leader: Option<NodeId>,
    pub term: Term,
    pub commit: LogIndex,
    pub applied: LogIndex,
    pub role: RoleKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub node: NodeId,
    pub up: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// GET: the value, if the key exists.
    Value(Option<Bytes>),
    Written,
    Deleted {
        existed: bool,
    },
    Cas {
        succeeded: bool,
        current: Option<Bytes>,
    },
    /// A conditional put: whether its condition held and the value was written.
    PutIf {
        written: bool,
    },
    /// An increment: the key's value after it.
    Counter(i64),
    Status {
        groups: Vec<GroupStatus>,
        nodes: Vec<NodeStatus>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    pub id: RequestId,
    pub reply: Reply,
}

/// What kind of reply a response decodes into; the client knows it from its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyKind {
    Get,
    Put,
    Delete,
    Cas,
    Status,
    PutIf,
    Incr,
}

impl ClientOp {
    pub fn reply_kind(&self) -> ReplyKind {
        match self {
            ClientOp::Get { .. } => ReplyKind::Get,
            ClientOp::Write(Command::Put { .. } | Command::MultiPut { .. }) => ReplyKind::Put,
            ClientOp::Write(Command::PutIf { .. }) => ReplyKind::PutIf,
            ClientOp::Write(Command::Incr { .. }) => ReplyKind::Incr,
            ClientOp::Write(Command::Delete { .. }) => ReplyKind::Delete,
            ClientOp::Write(Command::Cas { .. }) => ReplyKind::Cas,
            ClientOp::Status => ReplyKind::Status,
        }
    }
}

pub fn encode_request<'b>(
    builder: &'b mut FlatBufferBuilder<'static>,
    request: &ClientRequest,
) -> &'b [u8] {
    builder.reset();
    let (op_type, op) = match &request.op {
        ClientOp::Get { key } => {
            let key = builder.create_vector(&key[..]);
            (
                fb::Op::Get,
                fb::Get::create(builder, &fb::GetArgs { key: Some(key) }).as_union_value(),
            )
        }
        ClientOp::Write(Command::Put { key, value }) => {
            encode_put(builder, key, value, fb::PutCondition::Always)
        }
        ClientOp::Write(Command::PutIf {
            key,
            value,
            condition,
        }) => {
            let condition = match condition {
                PutCondition::IfAbsent => fb::PutCondition::IfAbsent,
                PutCondition::IfPresent => fb::PutCondition::IfPresent,
            };
            encode_put(builder, key, value, condition)
        }
        ClientOp::Write(Command::Incr { key, delta }) => {
            let key = builder.create_vector(&key[..]);
            let args = fb::IncrArgs {
                key: Some(key),
                delta: *delta,
            };
            (
                fb::Op::Incr,
                fb::Incr::create(builder, &args).as_union_value(),
            )
        }
        ClientOp::Write(Command::MultiPut { pairs }) => {
            let pairs: Vec<_> = pairs
                .iter()
                .map(|(key, value)| {
                    let args = fb::KeyValueArgs {
                        key: Some(builder.create_vector(&key[..])),
                        value: Some(builder.create_vector(&value[..])),
                    };
                    fb::KeyValue::create(builder, &args)
                })
                .collect();
            let pairs = builder.create_vector(&pairs);
            let args = fb::MultiPutArgs { pairs: Some(pairs) };
            (
                fb::Op::MultiPut,
                fb::MultiPut::create(builder, &args).as_union_value(),
            )
        }
        ClientOp::Write(Command::Delete { key }) => {
            let key = builder.create_vector(&key[..]);
            (
                fb::Op::Delete,
                fb::Delete::create(builder, &fb::DeleteArgs { key: Some(key) }).as_union_value(),
            )
        }
        ClientOp::Write(Command::Cas { key, expected, new }) => {
            let key = builder.create_vector(&key[..]);
            let expected = expected.as_ref().map(|v| builder.create_vector(&v[..]));
            let new_value = new.as_ref().map(|v| builder.create_vector(&v[..]));
            let args = fb::CasArgs {
                key: Some(key),
                expected,
                new_value,
            };
            (
                fb::Op::Cas,
                fb::Cas::create(builder, &args).as_union_value(),
            )
        }
        ClientOp::Status => (
            fb::Op::Status,
            fb::Status::create(builder, &fb::StatusArgs {}).as_union_value(),
        ),
    };
    let root = fb::Request::create(
        builder,
        &fb::RequestArgs {
            id: request.id.0,
            op_type,
            op: Some(op),
        },
    );
    builder.finish(root, None);
    builder.finished_data()
}

fn encode_put(
    builder: &mut FlatBufferBuilder<'static>,
    key: &Bytes,
    value: &Bytes,
    condition: fb::PutCondition,
) -> (fb::Op, flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>) {
    let key = builder.create_vector(&key[..]);
    let value = builder.create_vector(&value[..]);
    let args = fb::PutArgs {
        key: Some(key),
        value: Some(value),
        condition,
    };
    (
        fb::Op::Put,
        fb::Put::create(builder, &args).as_union_value(),
    )
}

fn bytes_of(vector: flatbuffers::Vector<'_, u8>) -> Bytes {
    Bytes::copy_from_slice(vector.bytes())
}

/// Verifies and decodes one request payload. The request id is returned with the error
/// when it could be read, so the server can answer that request instead of dropping it.
pub fn decode_request(bytes: &[u8]) -> Result<ClientRequest, (Option<RequestId>, WireError)> {
    let request =
        fb::root_as_request(bytes).map_err(|e| (None, WireError::Invalid(e.to_string())))?;
    let id = RequestId(request.id());
    let fail = |error: WireError| (Some(id), error);
    let unknown = || {
        fail(WireError::UnknownBody {
            group: 0,
            body_type: request.op_type().0,
        })
    };
    let op = match request.op_type() {
        fb::Op::Get => {
            let key = bytes_of(request.op_as_get().ok_or_else(unknown)?.key());
            validate_key(&key).map_err(|e| fail(WireError::Command(e)))?;
            ClientOp::Get { key }
        }
        fb::Op::Put => {
            let put = request.op_as_put().ok_or_else(unknown)?;
            let (key, value) = (bytes_of(put.key()), bytes_of(put.value()));
            let condition = match put.condition() {
                fb::PutCondition::Always => None,
                fb::PutCondition::IfAbsent => Some(PutCondition::IfAbsent),
                fb::PutCondition::IfPresent => Some(PutCondition::IfPresent),
                other => {
                    let message = format!("unknown put condition {}", other.0);
                    return Err(fail(WireError::Invalid(message)));
                }
            };
            ClientOp::Write(match condition {
                None => Command::Put { key, value },
                Some(condition) => Command::PutIf {
                    key,
                    value,
                    condition,
                },
            })
        }
        fb::Op::Incr => {
            let incr = request.op_as_incr().ok_or_else(unknown)?;
            ClientOp::Write(Command::Incr {
                key: bytes_of(incr.key()),
                delta: incr.delta(),
            })
        }
        fb::Op::MultiPut => {
            let pairs = request.op_as_multi_put().ok_or_else(unknown)?.pairs();
            if pairs.len() > crate::constants::MULTI_PUT_KEYS_MAX {
                let error = crate::kv::CommandError::TooManyPairs {
                    pair_count: pairs.len(),
                    limit: crate::constants::MULTI_PUT_KEYS_MAX,
                };
                return Err(fail(WireError::Command(error)));
            }
            let pairs = pairs
                .iter()
                .map(|pair| (bytes_of(pair.key()), bytes_of(pair.value())))
                .collect();
            ClientOp::Write(Command::MultiPut { pairs })
        }
        fb::Op::Delete => ClientOp::Write(Command::Delete {
            key: bytes_of(request.op_as_delete().ok_or_else(unknown)?.key()),
        }),
        fb::Op::Cas => {
            let cas = request.op_as_cas().ok_or_else(unknown)?;
            ClientOp::Write(Command::Cas {
                key: bytes_of(cas.key()),
                expected: cas.expected().map(bytes_of),
                new: cas.new_value().map(bytes_of),
            })
        }
        fb::Op::Status => ClientOp::Status,
        _ => return Err(unknown()),
    };
    if let ClientOp::Write(command) = &op {
        command
            .validate()
            .map_err(|e| fail(WireError::Command(e)))?;
    }
    Ok(ClientRequest { id, op })
}

fn role_code(role: RoleKind) -> u8 {
    match role {
        RoleKind::Follower => 0,
        RoleKind::PreCandidate => 1,
        RoleKind::Candidate => 2,
        RoleKind::Leader => 3,
    }
}

fn error_code(code: ErrorCode) -> fb::ErrorCode {
    match code {
        ErrorCode::BadRequest => fb::ErrorCode::BadRequest,
        ErrorCode::Unavailable => fb::ErrorCode::Unavailable,
        ErrorCode::Timeout => fb::ErrorCode::Timeout,
        ErrorCode::ShuttingDown => fb::ErrorCode::ShuttingDown,
        ErrorCode::Overloaded => fb::ErrorCode::Overloaded,
        ErrorCode::Internal => fb::ErrorCode::Internal,
    }
}

pub fn encode_response<'b>(
    builder: &'b mut FlatBufferBuilder<'static>,
    response: &ClientResponse,
) -> &'b [u8] {
    builder.reset();
    let mut args = fb::ResponseArgs {
        id: response.id.0,
        ..Default::default()
    };
    match &response.reply {
        Reply::Value(value) => {
            args.found = value.is_some();
            args.value = value.as_ref().map(|v| builder.create_vector(&v[..]));
        }
        Reply::Written => {}
        Reply::Deleted { existed } => args.found = *existed,
        Reply::Cas { succeeded, current } => {
            args.succeeded = *succeeded;
            args.found = current.is_some();
            args.value = current.as_ref().map(|v| builder.create_vector(&v[..]));
        }
        Reply::PutIf { written } => args.succeeded = *written,
        Reply::Counter(value) => args.number = *value,
        Reply::Status { groups, nodes } => {
            let groups: Vec<_> = groups
                .iter()
                .map(|g| {
                    let args = fb::GroupStatusArgs {
                        group: g.group.0,
                        leader: g.leader.map_or(0, NodeId::get),
                        term: g.term.0,
                        commit: g.commit.0,
                        applied: g.applied.0,
                        role: role_code(g.role),
                    };
                    fb::GroupStatus::create(builder, &args)
                })
                .collect();
            let nodes: Vec<_> = nodes
                .iter()
                .map(|n| {
                    fb::NodeStatus::create(
                        builder,
                        &fb::NodeStatusArgs {
                            node: n.node.0,
                            up: n.up,
                        },
                    )
                })
                .collect();
            args.groups = Some(builder.create_vector(&groups));
            args.nodes = Some(builder.create_vector(&nodes));
        }
        Reply::Error { code, message } => {
            args.error = error_code(*code);
            args.message = Some(builder.create_string(message));
        }
    }
    let root = fb::Response::create(builder, &args);
    builder.finish(root, None);
    builder.finished_data()
}

/// The request id of a response payload, or `None` if it is not a valid `Response`.
pub fn response_id(bytes: &[u8]) -> Option<RequestId> {
    flatbuffers::root::<fb::Response>(bytes)
        .ok()
        .map(|response| RequestId(response.id()))
}

/// Verifies and decodes a response to a request of kind `kind`.
pub fn decode_response(bytes: &[u8], kind: ReplyKind) -> Result<ClientResponse, WireError> {
    let response =
        flatbuffers::root::<fb::Response>(bytes).map_err(|e| WireError::Invalid(e.to_string()))?;
    let id = RequestId(response.id());
    let value = || {
        response
            .found()
            .then(|| response.value().map(bytes_of).unwrap_or_default())
    };
    let code = match response.error() {
        fb::ErrorCode::None => None,
        fb::ErrorCode::BadRequest => Some(ErrorCode::BadRequest),
        fb::ErrorCode::Unavailable => Some(ErrorCode::Unavailable),
        fb::ErrorCode::Timeout => Some(ErrorCode::Timeout),
        fb::ErrorCode::ShuttingDown => Some(ErrorCode::ShuttingDown),
        fb::ErrorCode::Overloaded => Some(ErrorCode::Overloaded),
        _ => Some(ErrorCode::Internal),
    };
    let reply = match (code, kind) {
        (Some(code), _) => Reply::Error {
            code,
            message: response.message().unwrap_or_default().to_string(),
        },
        (None, ReplyKind::Get) => Reply::Value(value()),
        (None, ReplyKind::Put) => Reply::Written,
        (None, ReplyKind::Delete) => Reply::Deleted {
            existed: response.found(),
        },
        (None, ReplyKind::Cas) => Reply::Cas {
            succeeded: response.succeeded(),
            current: value(),
        },
        (None, ReplyKind::Status) => decode_status(&response)?,
        (None, ReplyKind::PutIf) => Reply::PutIf {
            written: response.succeeded(),
        },
        (None, ReplyKind::Incr) => Reply::Counter(response.number()),
    };
    Ok(ClientResponse { id, reply })
}

fn decode_status(response: &fb::Response<'_>) -> Result<Reply, WireError> {
    let mut groups = Vec::new();
    for g in response.groups().into_iter().flatten() {
        let role = match g.role() {
            0 => RoleKind::Follower,
            1 => RoleKind::PreCandidate,
            2 => RoleKind::Candidate,
            3 => RoleKind::Leader,
            other => return Err(WireError::Invalid(format!("unknown role {other}"))),
        };
        groups.push(GroupStatus {
            group: GroupId(g.group()),
            leader: (g.leader() != 0).then_some(NodeId(g.leader())),
            term: Term(g.term()),
            commit: LogIndex(g.commit()),
            applied: LogIndex(g.applied()),
            role,
        });
    }
    let nodes = response.nodes().into_iter().flatten().map(|n| NodeStatus {
        node: NodeId(n.node()),
        up: n.up(),
    });
    Ok(Reply::Status {
        groups,
        nodes: nodes.collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    fn requests() -> Vec<ClientRequest> {
        let ops = vec![
            ClientOp::Get { key: b("k") },
            ClientOp::Write(Command::Put {
                key: b("k"),
                value: b("v"),
            }),
            ClientOp::Write(Command::Delete { key: b("k") }),
            ClientOp::Write(Command::Cas {
                key: b("k"),
                expected: None,
                new: Some(b("n")),
            }),
            ClientOp::Write(Command::Cas {
                key: b("k"),
                expected: Some(b("e")),
                new: None,
            }),
            ClientOp::Status,
            ClientOp::Write(Command::PutIf {
                key: b("k"),
                value: b("v"),
                condition: PutCondition::IfAbsent,
            }),
            ClientOp::Write(Command::PutIf {
                key: b("k"),
                value: b("v"),
                condition: PutCondition::IfPresent,
            }),
            ClientOp::Write(Command::Incr {
                key: b("n"),
                delta: -7,
            }),
            ClientOp::Write(Command::MultiPut {
                pairs: vec![(b("a"), b("1")), (b("b"), Bytes::new())],
            }),
        ];
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| ClientRequest {
                id: RequestId(i as u64 + 100),
                op,
            })
            .collect()
    }

    #[test]
    fn every_request_round_trips() {
        // Each op decodes to itself with its id.
        let mut builder = FlatBufferBuilder::new();
        for request in requests() {
            let bytes = encode_request(&mut builder, &request).to_vec();
            assert_eq!(decode_request(&bytes), Ok(request));
        }
    }

    #[test]
    fn every_reply_round_trips() {
        // Each reply kind, errors included, decodes to itself given its request's kind.
        let status = Reply::Status {
            groups: vec![GroupStatus {
                group: GroupId(3),
                leader: Some(NodeId(2)),
                term: Term(4),
                commit: LogIndex(9),
                applied: LogIndex(8),
                role: RoleKind::Leader,
            }],
            nodes: vec![
                NodeStatus {
                    node: NodeId(1),
                    up: true,
                },
                NodeStatus {
                    node: NodeId(2),
                    up: false,
                },
            ],
        };
        let cases = [
            (ReplyKind::Get, Reply::Value(Some(b("v")))),
            (ReplyKind::Get, Reply::Value(Some(Bytes::new()))),
            (ReplyKind::Get, Reply::Value(None)),
            (ReplyKind::Put, Reply::Written),
            (ReplyKind::Delete, Reply::Deleted { existed: true }),
            (
                ReplyKind::Cas,
                Reply::Cas {
                    succeeded: false,
                    current: Some(b("x")),
                },
            ),
            (
                ReplyKind::Cas,
                Reply::Cas {
                    succeeded: true,
                    current: None,
                },
            ),
            (ReplyKind::Status, status),
            (ReplyKind::PutIf, Reply::PutIf { written: true }),
            (ReplyKind::PutIf, Reply::PutIf { written: false }),
            (ReplyKind::Incr, Reply::Counter(i64::MIN)),
            (ReplyKind::Put, Reply::Written),
            (
                ReplyKind::Put,
                Reply::Error {
                    code: ErrorCode::Unavailable,
                    message: "no quorum".into(),
                },
            ),
        ];
        let mut builder = FlatBufferBuilder::new();
        for (kind, reply) in cases {
            let response = ClientResponse {
                id: RequestId(5),
                reply,
            };
            let bytes = encode_response(&mut builder, &response).to_vec();
            assert_eq!(decode_response(&bytes, kind), Ok(response));
        }
    }

    #[test]
    fn oversize_value_and_empty_key_are_refused_with_the_id() {
        // Limits are checked at the gateway, and the id survives so the client gets an answer.
        let mut builder = FlatBufferBuilder::new();
        let huge = Bytes::from(vec![1u8; crate::kv::command::VALUE_BYTES_MAX + 1]);
        let put = ClientRequest {
            id: RequestId(7),
            op: ClientOp::Write(Command::Put {
                key: b("k"),
                value: huge,
            }),
        };
        let bytes = encode_request(&mut builder, &put).to_vec();
        assert!(matches!(
            decode_request(&bytes),
            Err((Some(RequestId(7)), WireError::Command(_)))
        ));
        let get = ClientRequest {
            id: RequestId(8),
            op: ClientOp::Get { key: Bytes::new() },
        };
        let bytes = encode_request(&mut builder, &get).to_vec();
        assert!(matches!(
            decode_request(&bytes),
            Err((Some(RequestId(8)), WireError::Command(_)))
        ));
    }

    #[test]
    fn an_empty_or_oversize_multi_put_is_refused_with_the_id() {
        // A multi-put without pairs or beyond the key limit never reaches a shard.
        let mut builder = FlatBufferBuilder::new();
        for pair_count in [0, crate::constants::MULTI_PUT_KEYS_MAX + 1] {
            let request = ClientRequest {
                id: RequestId(9),
                op: ClientOp::Write(Command::MultiPut {
                    pairs: (0..pair_count)
                        .map(|i| (Bytes::from(format!("k{i}")), b("v")))
                        .collect(),
                }),
            };
            let bytes = encode_request(&mut builder, &request).to_vec();
            assert!(
                matches!(
                    decode_request(&bytes),
                    Err((Some(RequestId(9)), WireError::Command(_)))
                ),
                "{pair_count} pairs"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn random_and_mutated_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..256),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        ) {
            // Garbage and corrupted requests or responses decode to a value or an error.
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes, ReplyKind::Status);
            let mut builder = FlatBufferBuilder::new();
            for request in requests() {
                let mut encoded = encode_request(&mut builder, &request).to_vec();
                for &(position, value) in &flips {
                    let at = position % encoded.len();
                    encoded[at] = value;
                }
                let _ = decode_request(&encoded);
                let _ = decode_response(&encoded, request.op.reply_kind());
            }
        }
    }
}
