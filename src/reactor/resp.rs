//! The RESP front (`--resp`): redis-cli and Redis client libraries talk to the node. Every
//! core listens on the RESP port (SO_REUSEPORT, deliberately). A command becomes a native
//! request (encoded once, then decoded and validated like any client's) and is routed exactly
//! as a native request. Redis runs a connection's commands in order, so a command is routed
//! only once the one before it has been answered (pipelined commands are read ahead, executed
//! one after another). Supported: PING, GET, SET key value, DEL key, QUIT.
//!
//! It must not execute commands itself: parsing and rendering only (server/resp.rs holds the
//! codec).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::{Bytes, BytesMut};
use flatbuffers::FlatBufferBuilder;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::constants::CLIENT_INFLIGHT_REQUESTS_MAX;
use crate::kv::Command;
use crate::reactor::client::route;
use crate::reactor::context::CoreContext;
use crate::reactor::shard_api::Origin;
use crate::server::resp::{Parsed, RespCommand, RespWriter, parse_command};
use crate::wire::client::{
    ClientOp, ClientRequest, Reply, ReplyKind, RequestId, decode_request, decode_response,
    encode_request, response_id,
};
use crate::wire::frame::FRAME_HEADER_BYTES;

/// Bytes read from a RESP socket at once.
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// One command's place in the reply order.
enum Slot {
    /// Waiting for the native response to this request.
    Pending(RequestId, ReplyKind),
    /// The RESP reply, ready to be written in its turn.
    Done(Vec<u8>),
}

/// Accepts RESP connections on this core.
pub async fn run_resp_listener(context: Rc<CoreContext>, listener: TcpListener) {
    crate::reactor::client::accept_loop(context, listener, "RESP", serve).await;
}

async fn serve(context: Rc<CoreContext>, stream: TcpStream, peer: Option<SocketAddr>) {
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
        loop {
            let view: Bytes = buffer.clone().freeze();
            let (command, consumed_bytes) = match parse_command(&view) {
                Ok(Parsed::Command {
                    command,
                    consumed_bytes,
                }) => (Some(command), consumed_bytes),
                Ok(Parsed::Empty { consumed_bytes }) => (None, consumed_bytes),
                Ok(Parsed::Incomplete) => break,
                Err(error) => {
                    let mut out = Vec::new();
                    RespWriter { out: &mut out }.error(&error.to_string());
                    order.borrow_mut().push_back(Slot::Done(out));
                    context.deliver(connection, Vec::new(), false);
                    break 'connection Some(error.to_string());
                }
            };
            let _ = buffer.split_to(consumed_bytes);
            let Some(command) = command else { continue };
            // In order: the previous command must be answered before this one runs.
            while order
                .borrow()
                .iter()
                .any(|slot| matches!(slot, Slot::Pending(..)))
            {
                if answered_ring.recv().await.is_none() {
                    break 'connection None;
                }
            }
            next_id += 1;
            let step = handle(
                &context,
                &mut builder,
                origin,
                command,
                RequestId(next_id),
                &in_flight,
            );
            let quit = matches!(step, Step::Quit(_));
            let slot = match step {
                Step::Reply(out) | Step::Quit(out) => Slot::Done(out),
                Step::Routed(id, kind) => Slot::Pending(id, kind),
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
        .any(|slot| matches!(slot, Slot::Pending(..)))
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

enum Step {
    Reply(Vec<u8>),
    Quit(Vec<u8>),
    Routed(RequestId, ReplyKind),
}

fn handle(
    context: &CoreContext,
    builder: &mut FlatBufferBuilder<'static>,
    origin: Origin,
    command: RespCommand,
    id: RequestId,
    in_flight: &std::cell::Cell<usize>,
) -> Step {
    let mut out = Vec::new();
    let arguments = &command.arguments;
    let name = arguments
        .first()
        .map(|name| String::from_utf8_lossy(name).to_ascii_uppercase())
        .unwrap_or_default();
    let op = match (name.as_str(), arguments.len()) {
        ("PING", 1) => {
            RespWriter { out: &mut out }.simple("PONG");
            return Step::Reply(out);
        }
        ("PING", 2) => {
            RespWriter { out: &mut out }.bulk(&arguments[1]);
            return Step::Reply(out);
        }
        ("QUIT", _) => {
            RespWriter { out: &mut out }.simple("OK");
            return Step::Quit(out);
        }
        ("GET", 2) => ClientOp::Get {
            key: arguments[1].clone(),
        },
        ("SET", 3) => ClientOp::Write(Command::Put {
            key: arguments[1].clone(),
            value: arguments[2].clone(),
        }),
        ("DEL", 2) => ClientOp::Write(Command::Delete {
            key: arguments[1].clone(),
        }),
        ("GET" | "SET" | "DEL", _) => {
            RespWriter { out: &mut out }.error(&format!(
                "ERR wrong number of arguments for '{}' command (ringraft supports GET key, SET key value, DEL key)",
                name.to_ascii_lowercase()
            ));
            return Step::Reply(out);
        }
        _ => {
            RespWriter { out: &mut out }.error(&format!(
                "ERR unknown command '{name}' (ringraft supports PING, GET, SET, DEL, QUIT)"
            ));
            return Step::Reply(out);
        }
    };
    if in_flight.get() >= CLIENT_INFLIGHT_REQUESTS_MAX {
        RespWriter { out: &mut out }.error("ERR too many commands in flight on this connection");
        return Step::Reply(out);
    }
    let kind = op.reply_kind();
    // Encoded once, then decoded like any native request: the same validation of keys and
    // values, and bytes another core can take without encoding again.
    let payload = encode_request(builder, &ClientRequest { id, op }).to_vec();
    let request = match decode_request(&payload) {
        Ok(request) => request,
        Err((_, error)) => {
            RespWriter { out: &mut out }.error(&format!("ERR {error}"));
            return Step::Reply(out);
        }
    };
    route(context, builder, origin, request, payload, in_flight);
    Step::Routed(id, kind)
}

/// Records the native response in `frame` (if any) and returns the RESP bytes now writable
/// in order.
fn complete(order: &RefCell<VecDeque<Slot>>, frame: &[u8]) -> Vec<u8> {
    let mut order = order.borrow_mut();
    if let Some(payload) = frame.get(FRAME_HEADER_BYTES..).filter(|p| !p.is_empty()) {
        let id = response_id(payload);
        let slot = order
            .iter_mut()
            .find(|slot| matches!(slot, Slot::Pending(pending, _) if Some(*pending) == id));
        if let Some(slot) = slot
            && let Slot::Pending(_, kind) = *slot
        {
            *slot = Slot::Done(render(decode_response(payload, kind).map(|r| r.reply)));
        }
    }
    let mut ready = Vec::new();
    while let Some(Slot::Done(_)) = order.front() {
        if let Some(Slot::Done(bytes)) = order.pop_front() {
            ready.extend_from_slice(&bytes);
        }
    }
    ready
}

fn render(reply: Result<Reply, crate::wire::WireError>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = RespWriter { out: &mut out };
    match reply {
        Ok(Reply::Value(Some(value))) => writer.bulk(&value),
        Ok(Reply::Value(None)) => writer.null(),
        Ok(Reply::Written) => writer.simple("OK"),
        Ok(Reply::Deleted { existed }) => writer.integer(i64::from(existed)),
        Ok(Reply::Cas { succeeded, .. }) => writer.integer(i64::from(succeeded)),
        Ok(Reply::Status { .. }) => writer.simple("OK"),
        Ok(Reply::Error { code, message }) => writer.error(&format!("ERR {code:?}: {message}")),
        Err(error) => writer.error(&format!("ERR internal: {error}")),
    }
    out
}
