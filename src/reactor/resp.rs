//! The RESP front (`--resp`): redis-cli, redis-benchmark and Redis client libraries talk to
//! the node. Every core listens on the RESP port (SO_REUSEPORT, deliberately). What a command
//! means is decided in server/resp_commands.rs; here each command's native requests are
//! encoded once, decoded and validated like any client's, and routed exactly as native
//! requests (a command over several keys, such as MGET, sends one request per key wherever
//! each key lives). Replies leave in command order. Pipelined commands run together, as a
//! Redis Cluster client's pipeline over several masters does: a command waits only for the
//! earlier commands of the connection that touch one of its keys, so each key sees the
//! connection's commands in order (a read sees the connection's earlier writes of its key),
//! while commands on other keys, in other groups, need not commit in command order.
//!
//! It must not execute commands itself: parsing, routing and rendering only (server/resp.rs
//! holds the codec).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::constants::{CLIENT_INFLIGHT_REQUESTS_MAX, RESP_PIPELINE_COMMANDS_MAX};
use crate::reactor::client::route;
use crate::reactor::context::CoreContext;
use crate::reactor::shard_api::Origin;
use crate::server::resp::{Parsed, RespWriter, parse_command};
use crate::server::resp_commands::{InfoFacts, Plan, Session, Shape, combine, info_text, plan};
use crate::wire::WireError;
use crate::wire::client::{
    ClientOp, ClientRequest, Reply, ReplyKind, RequestId, decode_request, decode_response,
    encode_request, response_id,
};
use crate::wire::frame::FRAME_HEADER_BYTES;

/// Bytes read from a RESP socket at once.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// One request of a command, and its reply once it came.
struct Part {
    id: RequestId,
    kind: ReplyKind,
    reply: Option<Result<Reply, WireError>>,
}

/// One command's place in the reply order.
enum Slot {
    /// Waiting for the native responses to the command's requests (on `keys`).
    Pending {
        parts: Vec<Part>,
        shape: Shape,
        keys: Vec<Bytes>,
    },
    /// The RESP reply, ready to be written in its turn.
    Done(Vec<u8>),
}

/// What every connection of this listener shares: when it started and where it listens.
#[derive(Clone, Copy)]
struct Listening {
    started: Instant,
    port: u16,
}

/// Accepts RESP connections on this core.
pub async fn run_resp_listener(context: Rc<CoreContext>, listener: TcpListener) {
    let listening = Listening {
        started: Instant::now(),
        port: listener.local_addr().map_or(0, |address| address.port()),
    };
    let serve = move |context, stream, peer| serve(context, stream, peer, listening);
    crate::reactor::client::accept_loop(context, listener, "RESP", serve).await;
}

async fn serve(
    context: Rc<CoreContext>,
    stream: TcpStream,
    peer: Option<SocketAddr>,
    listening: Listening,
) {
    let (connection, frames, in_flight) = context.register_connection();
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let order: Rc<RefCell<VecDeque<Slot>>> = Rc::new(RefCell::new(VecDeque::new()));
    let writer_order = order.clone();
    let (answered, answered_ring) = glommio::channels::local_channel::new_bounded::<()>(1);
    let writer_task = glommio::spawn_local_into(
        async move {
            // Every frame is a native response for a pending slot, or empty: "look again".
            while let Some(frame) = frames.recv().await {
                let ready = complete(&writer_order, &frame);
                // A full doorbell has been rung already.
                let _ = answered.try_send(());
                if !ready.is_empty() && writer.write_all(&ready).await.is_err() {
                    return;
                }
            }
            let _ = writer.close().await;
        },
        context.client_queue,
    );
    let origin = Origin {
        core: context.core,
        connection,
    };
    let mut builder = FlatBufferBuilder::new();
    let mut session = Session::default();
    let mut buffer = BytesMut::new();
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let mut next_id: u64 = 0;
    let reason: Option<String> = 'connection: loop {
        let count = match reader.read(&mut chunk).await {
            Ok(0) => break None,
            Ok(count) => count,
            Err(error) => break Some(error.to_string()),
        };
        buffer.extend_from_slice(&chunk[..count]);
        // Commands are parsed from one frozen view of what has arrived: arguments share its
        // memory and each command costs no copy; an incomplete tail goes back to `buffer`.
        let mut view: Bytes = buffer.split().freeze();
        loop {
            let (command, consumed_bytes) = match parse_command(&view) {
                Ok(Parsed::Command {
                    command,
                    consumed_bytes,
                }) => (Some(command), consumed_bytes),
                Ok(Parsed::Empty { consumed_bytes }) => (None, consumed_bytes),
                Ok(Parsed::Incomplete) => {
                    // Unshared (every earlier command is done with it), the tail is taken
                    // back without a copy.
                    buffer = view
                        .try_into_mut()
                        .unwrap_or_else(|view| BytesMut::from(&view[..]));
                    break;
                }
                Err(error) => {
                    let mut out = Vec::new();
                    RespWriter { out: &mut out }.error(&error.to_string());
                    order.borrow_mut().push_back(Slot::Done(out));
                    context.deliver(connection, Vec::new(), false);
                    break 'connection Some(error.to_string());
                }
            };
            view = view.slice(consumed_bytes.min(view.len())..);
            let Some(command) = command else { continue };
            // Replies queued behind an unanswered command are bounded too.
            while order.borrow().len() >= RESP_PIPELINE_COMMANDS_MAX {
                if answered_ring.recv().await.is_none() {
                    break 'connection None;
                }
            }
            let step = match plan(&command.arguments, &mut session, context.groups_total) {
                Plan::Reply(out) => Step::Reply(out),
                Plan::Quit(out) => Step::Quit(out),
                Plan::Info(section) => Step::Reply(info(&context, listening, section.as_deref())),
                Plan::Requests { ops, shape } => {
                    let keys: Vec<Bytes> = ops.iter().flat_map(op_keys).cloned().collect();
                    // Per-key order, and no more requests in flight than a connection may
                    // have (a command over the limit on its own is refused by `send`).
                    while must_wait(&order.borrow(), &keys)
                        || (ops.len() <= CLIENT_INFLIGHT_REQUESTS_MAX
                            && in_flight.get() + ops.len() > CLIENT_INFLIGHT_REQUESTS_MAX)
                    {
                        if answered_ring.recv().await.is_none() {
                            break 'connection None;
                        }
                    }
                    send(
                        &context,
                        &mut builder,
                        Sender {
                            origin,
                            in_flight: &in_flight,
                            next_id: &mut next_id,
                        },
                        Routed { ops, shape, keys },
                    )
                }
            };
            let quit = matches!(step, Step::Quit(_));
            let slot = match step {
                Step::Reply(out) | Step::Quit(out) => Slot::Done(out),
                Step::Routed(slot) => slot,
            };
            order.borrow_mut().push_back(slot);
            context.deliver(connection, Vec::new(), false);
            if quit {
                break 'connection None;
            }
        }
    };
    if let Some(reason) = reason {
        tracing::warn!(client = ?peer, %reason,
            "closing RESP connection");
    }
    // Let the last command be answered before the connection's slot goes.
    while order
        .borrow()
        .iter()
        .any(|slot| matches!(slot, Slot::Pending { .. }))
    {
        if answered_ring.recv().await.is_none() {
            break;
        }
    }
    context.unregister_connection(connection);
    if let Ok(task) = writer_task {
        task.await;
    }
}

/// The keys a request reads or writes.
fn op_keys(op: &ClientOp) -> Box<dyn Iterator<Item = &Bytes> + '_> {
    match op {
        ClientOp::Get { key } => Box::new(std::iter::once(key)),
        ClientOp::Write(command) => Box::new(command.keys()),
        ClientOp::Status => Box::new(std::iter::empty()),
    }
}

/// Whether a command on `keys` must wait: an earlier command of the connection on one of
/// them is still unanswered.
fn must_wait(order: &VecDeque<Slot>, keys: &[Bytes]) -> bool {
    let mut pending = order
        .iter()
        .filter_map(|slot| match slot {
            Slot::Pending { keys, .. } => Some(keys),
            Slot::Done(_) => None,
        })
        .flatten();
    if keys.len() <= 16 {
        pending.any(|key| keys.contains(key))
    } else {
        let keys: std::collections::HashSet<&Bytes> = keys.iter().collect();
        pending.any(|key| keys.contains(key))
    }
}

/// A command's requests, their reply's shape and the keys they touch.
struct Routed {
    ops: Vec<ClientOp>,
    shape: Shape,
    keys: Vec<Bytes>,
}

enum Step {
    Reply(Vec<u8>),
    Quit(Vec<u8>),
    Routed(Slot),
}

/// What routing needs of the connection.
struct Sender<'a> {
    origin: Origin,
    in_flight: &'a std::cell::Cell<usize>,
    next_id: &'a mut u64,
}

fn error_reply(text: &str) -> Step {
    let mut out = Vec::new();
    RespWriter { out: &mut out }.error(text);
    Step::Reply(out)
}

/// Routes a command's requests, all or none: every one is encoded and validated first, so a
/// bad key among several fails the command before any of it runs.
fn send(
    context: &CoreContext,
    builder: &mut FlatBufferBuilder<'static>,
    sender: Sender<'_>,
    routed: Routed,
) -> Step {
    let Routed { ops, shape, keys } = routed;
    if sender.in_flight.get() + ops.len() > CLIENT_INFLIGHT_REQUESTS_MAX {
        return error_reply("ERR too many commands in flight on this connection");
    }
    let mut requests = Vec::with_capacity(ops.len());
    for op in ops {
        *sender.next_id += 1;
        let id = RequestId(*sender.next_id);
        // Encoded once, then decoded like any native request: the same validation of keys
        // and values, and bytes another core can take without encoding again.
        let payload = encode_request(builder, &ClientRequest { id, op }).to_vec();
        match decode_request(&payload) {
            Ok(request) => requests.push((request, payload)),
            Err((_, error)) => {
                let text = match error {
                    WireError::Command(error) => format!("ERR {error}"),
                    other => format!("ERR {other}"),
                };
                return error_reply(&text);
            }
        }
    }
    let mut parts = Vec::with_capacity(requests.len());
    for (request, payload) in requests {
        parts.push(Part {
            id: request.id,
            kind: request.op.reply_kind(),
            reply: None,
        });
        route(
            context,
            builder,
            sender.origin,
            request,
            payload,
            sender.in_flight,
        );
    }
    Step::Routed(Slot::Pending { parts, shape, keys })
}

/// The INFO reply, from the node's status board.
fn info(context: &CoreContext, listening: Listening, section: Option<&str>) -> Vec<u8> {
    let (groups, _) = context.board.snapshot();
    let facts = InfoFacts {
        node: context.node,
        cores: context.cores,
        groups_total: context.groups_total,
        uptime_seconds: listening.started.elapsed().as_secs(),
        tcp_port: listening.port,
        process_id: std::process::id(),
        groups,
    };
    let mut out = Vec::new();
    RespWriter { out: &mut out }.bulk(info_text(&facts, section).as_bytes());
    out
}

/// Records the native response in `frame` (if any) and returns the RESP bytes now writable
/// in order.
fn complete(order: &RefCell<VecDeque<Slot>>, frame: &[u8]) -> Vec<u8> {
    let mut order = order.borrow_mut();
    if let Some(payload) = frame.get(FRAME_HEADER_BYTES..).filter(|p| !p.is_empty())
        && let Some(id) = response_id(payload)
    {
        record(&mut order, id, payload);
    }
    let mut ready = Vec::new();
    while let Some(Slot::Done(_)) = order.front() {
        if let Some(Slot::Done(bytes)) = order.pop_front() {
            ready.extend_from_slice(&bytes);
        }
    }
    ready
}

/// Files the response to request `id` with its command; a command whose every request has
/// been answered becomes its RESP reply.
fn record(order: &mut VecDeque<Slot>, id: RequestId, payload: &[u8]) {
    for slot in order.iter_mut() {
        let Slot::Pending { parts, shape, .. } = slot else {
            continue;
        };
        let Some(part) = parts.iter_mut().find(|part| part.id == id) else {
            continue;
        };
        part.reply = Some(decode_response(payload, part.kind).map(|r| r.reply));
        if parts.iter().all(|part| part.reply.is_some()) {
            let replies: Vec<Result<Reply, WireError>> = parts
                .iter_mut()
                .filter_map(|part| part.reply.take())
                .collect();
            *slot = Slot::Done(combine(*shape, &replies));
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::client::ClientResponse;

    fn pending(ids: &[u64], kind: ReplyKind, shape: Shape) -> Slot {
        let parts = ids
            .iter()
            .map(|&id| Part {
                id: RequestId(id),
                kind,
                reply: None,
            })
            .collect();
        Slot::Pending {
            parts,
            shape,
            keys: Vec::new(),
        }
    }

    fn frame(id: u64, reply: Reply) -> Vec<u8> {
        let mut builder = FlatBufferBuilder::new();
        crate::reactor::driver::response_frame(
            &mut builder,
            &ClientResponse {
                id: RequestId(id),
                reply,
            },
        )
    }

    #[test]
    fn a_command_waits_only_for_unanswered_commands_on_its_keys() {
        // Per-key order: a pending command on `a` holds back commands on `a` (alone or among
        // other keys), not those on other keys; answered commands hold back nothing.
        let key = |text: &'static str| Bytes::from_static(text.as_bytes());
        let mut on_a = pending(&[1], ReplyKind::Get, Shape::Single);
        if let Slot::Pending { keys, .. } = &mut on_a {
            keys.push(key("a"));
        }
        let order = VecDeque::from([Slot::Done(b"+OK\r\n".to_vec()), on_a]);
        assert!(must_wait(&order, &[key("a")]));
        assert!(must_wait(&order, &[key("b"), key("a")]));
        assert!(!must_wait(&order, &[key("b")]));
        assert!(!must_wait(&order, &[]));
        let many: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("k{i}"))).collect();
        assert!(!must_wait(&order, &many));
        let mut with_a = many.clone();
        with_a.push(key("a"));
        assert!(must_wait(&order, &with_a));
        assert!(!must_wait(&VecDeque::new(), &with_a));
    }

    #[test]
    fn replies_leave_in_command_order_whatever_order_responses_arrive_in() {
        // An MGET of two keys, a ready reply and an INCR: responses arriving 3, 2, 1 are
        // held until the MGET is whole, then all three replies are written in order.
        let order = RefCell::new(VecDeque::from([
            pending(&[1, 2], ReplyKind::Get, Shape::Values),
            Slot::Done(b"+PONG\r\n".to_vec()),
            pending(&[3], ReplyKind::Incr, Shape::Single),
        ]));
        assert!(complete(&order, &frame(3, Reply::Counter(7))).is_empty());
        assert!(complete(&order, &frame(2, Reply::Value(None))).is_empty());
        let b = Bytes::from_static(b"v");
        let written = complete(&order, &frame(1, Reply::Value(Some(b))));
        assert_eq!(
            String::from_utf8_lossy(&written),
            "*2\r\n$1\r\nv\r\n$-1\r\n+PONG\r\n:7\r\n"
        );
        assert!(order.borrow().is_empty());
        // An empty frame ("look again") and a response nobody waits for change nothing.
        assert!(complete(&order, &[]).is_empty());
        assert!(complete(&order, &frame(99, Reply::Written)).is_empty());
    }
}
