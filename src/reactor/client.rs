//! Client connections of one core (docs/protocol.md): every core listens on the client port
//! (SO_REUSEPORT, deliberately), reads length-prefixed `Request` frames, decodes each on the
//! receiving core, finds the owning core by `core_of_group(group_of_key(key))` and forwards
//! the raw payload over the mesh when another core owns it. `Status` is answered here from
//! the node's status board. At most `CLIENT_INFLIGHT_REQUESTS_MAX` requests are in flight per
//! connection; past that the answer is `Overloaded`. A bad frame closes that connection only.
//!
//! It must not execute requests: that is the shard's.

use std::net::SocketAddr;
use std::rc::Rc;

use flatbuffers::FlatBufferBuilder;
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

use crate::constants::{
    CLIENT_FRAME_BYTES_MAX, CLIENT_INFLIGHT_REQUESTS_MAX, SOCKET_READ_BUFFER_BYTES,
};
use crate::reactor::context::{CoreContext, Input, MeshMessage};
use crate::reactor::driver::response_frame;
use crate::reactor::gather::gather_frames;
use crate::reactor::peer::{PeerError, read_frame};
use crate::reactor::shard_api::{Origin, core_of_group, group_of_key};
use crate::wire::client::{
    ClientOp, ClientRequest, ClientResponse, ErrorCode, Reply, RequestId, decode_request,
};

/// Accepts client connections on this core until the core stops.
pub async fn run_client_listener(context: Rc<CoreContext>, listener: TcpListener) {
    accept_loop(context, listener, "client", serve_connection).await;
}

/// Accepts connections of one protocol (`what`) and serves each in its own task on the
/// core's client queue, with TCP_NODELAY. Shared by the native and RESP listeners.
pub async fn accept_loop<F, Fut>(
    context: Rc<CoreContext>,
    listener: TcpListener,
    what: &'static str,
    serve: F,
) where
    F: Fn(Rc<CoreContext>, TcpStream, Option<SocketAddr>) -> Fut,
    Fut: std::future::Future<Output = ()> + 'static,
{
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let peer = stream.peer_addr().ok();
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::warn!(node = %context.node, core = %context.core, %error,
                        "cannot set TCP_NODELAY on a {what} connection; continuing");
                }
                let task = glommio::spawn_local_into(
                    serve(context.clone(), stream, peer),
                    context.client_queue,
                );
                if let Ok(task) = task {
                    task.detach();
                }
            }
            Err(error) => {
                tracing::warn!(node = %context.node, core = %context.core, %error,
                    "accepting a {what} connection failed (out of file descriptors? raise `ulimit -n`)");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_connection(context: Rc<CoreContext>, stream: TcpStream, peer: Option<SocketAddr>) {
    let (connection, frames, in_flight) = context.register_connection();
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = futures_lite::io::BufReader::with_capacity(SOCKET_READ_BUFFER_BYTES, reader);
    let writer_task = glommio::spawn_local_into(
        async move {
            let mut gathered = Vec::new();
            while gather_frames(&frames, &mut gathered).await {
                if writer.write_all(&gathered).await.is_err() {
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
    let reason = loop {
        let payload = match read_frame(&mut reader, CLIENT_FRAME_BYTES_MAX).await {
            Ok(payload) => payload,
            Err(error) => break error,
        };
        let request = match decode_request(&payload) {
            Ok(request) => request,
            Err((_, error)) => break PeerError::Wire(error),
        };
        if in_flight.get() >= CLIENT_INFLIGHT_REQUESTS_MAX {
            let reply = error_reply(
                ErrorCode::Overloaded,
                "too many requests in flight on this connection",
            );
            answer(&context, &mut builder, connection, request.id, reply);
            continue;
        }
        route(&context, &mut builder, origin, request, payload, &in_flight);
    };
    match reason {
        PeerError::Closed => {}
        reason => tracing::warn!(node = %context.node, core = %context.core, client = ?peer,
            %reason, "closing client connection: bad frame (see docs/protocol.md)"),
    }
    context.unregister_connection(connection);
    if let Ok(task) = writer_task {
        task.await;
    }
}

/// Sends a request to the shard that owns it (here or on another core), or answers it here.
pub(crate) fn route(
    context: &CoreContext,
    builder: &mut FlatBufferBuilder<'static>,
    origin: Origin,
    request: ClientRequest,
    payload: Vec<u8>,
    in_flight: &std::cell::Cell<usize>,
) {
    let key = match &request.op {
        ClientOp::Get { key } => key,
        ClientOp::Write(command) => command.key(),
        ClientOp::Status => {
            let (groups, nodes) = context.board.snapshot();
            answer(
                context,
                builder,
                origin.connection,
                request.id,
                Reply::Status { groups, nodes },
            );
            return;
        }
    };
    if context.is_stopping() {
        let reply = error_reply(
            ErrorCode::ShuttingDown,
            "this node is stopping; retry on another node",
        );
        answer(context, builder, origin.connection, request.id, reply);
        return;
    }
    let core = core_of_group(group_of_key(key, context.groups_total), context.cores);
    in_flight.set(in_flight.get() + 1);
    if core == context.core {
        context.push(Input::Client(origin, request, bytes::Bytes::from(payload)));
    } else {
        context.send_to_core(core, MeshMessage::ClientRequest { origin, payload });
    }
}

fn error_reply(code: ErrorCode, message: &str) -> Reply {
    Reply::Error {
        code,
        message: message.to_string(),
    }
}

fn answer(
    context: &CoreContext,
    builder: &mut FlatBufferBuilder<'static>,
    connection: u64,
    id: RequestId,
    reply: Reply,
) {
    let frame = response_frame(builder, &ClientResponse { id, reply });
    context.deliver(connection, frame, false);
}
