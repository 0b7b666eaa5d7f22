//! The client against a small in-test server on a real loopback socket that speaks the
//! protocol with the project's codec and a `KvMachine`: round trips of every call,
//! pipelined responses out of order, failover to a second endpoint, and a timeout.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use super::*;
use crate::ids::LogIndex;
use crate::kv::{KvMachine, Outcome};
use crate::wire::client::{decode_request, encode_response};

/// Serves one connection: reads every frame it can, then answers in reverse order.
fn serve(mut stream: TcpStream, machine: &mut KvMachine) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut builder = FlatBufferBuilder::new();
    loop {
        let Ok(count) = stream.read(&mut chunk) else {
            return;
        };
        if count == 0 {
            return;
        }
        buffer.extend_from_slice(&chunk[..count]);
        let mut responses = Vec::new();
        while let Ok(Some(header)) = FrameHeader::parse(&buffer, CLIENT_FRAME_BYTES_MAX) {
            if buffer.len() < 4 + header.payload_bytes {
                break;
            }
            let request =
                decode_request(&buffer[4..4 + header.payload_bytes]).expect("valid request");
            buffer.drain(..4 + header.payload_bytes);
            responses.push(ClientResponse {
                id: request.id,
                reply: execute(machine, request.op),
            });
        }
        for response in responses.iter().rev() {
            let payload = encode_response(&mut builder, response);
            let mut frame = FrameHeader::encode(payload.len()).to_vec();
            frame.extend_from_slice(payload);
            if stream.write_all(&frame).is_err() {
                return;
            }
        }
    }
}

fn execute(machine: &mut KvMachine, op: ClientOp) -> Reply {
    match op {
        ClientOp::Get { key } => Reply::Value(machine.get(&key).cloned()),
        ClientOp::Write(command) => {
            let index: LogIndex = machine.applied().next();
            match machine.apply(index, &command.encode()) {
                Outcome::Written => Reply::Written,
                Outcome::Deleted { existed } => Reply::Deleted { existed },
                Outcome::Cas { succeeded, current } => Reply::Cas { succeeded, current },
                Outcome::Rejected(e) => Reply::Error {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                },
            }
        }
        ClientOp::Status => Reply::Error {
            code: ErrorCode::ShuttingDown,
            message: "stopping".into(),
        },
    }
}

fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    thread::spawn(move || {
        let mut machine = KvMachine::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            serve(stream, &mut machine);
        }
    });
    address
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

#[test]
fn calls_round_trip_through_a_real_socket() {
    // Every call returns what the server's state machine answered.
    let address = start_server();
    let mut client =
        Client::connect(&address.to_string(), Duration::from_secs(5)).expect("connect");
    assert_eq!(client.get(b("k")).expect("get"), None);
    client.put(b("k"), b("v")).expect("put");
    assert_eq!(client.get(b("k")).expect("get"), Some(b("v")));
    assert_eq!(
        client.cas(b("k"), Some(b("x")), None).expect("cas"),
        (false, Some(b("v")))
    );
    assert_eq!(
        client.cas(b("k"), Some(b("v")), Some(b("w"))).expect("cas"),
        (true, Some(b("w")))
    );
    assert!(client.delete(b("k")).expect("delete"));
    assert!(!client.delete(b("k")).expect("delete"));
}

#[test]
fn pipelined_responses_are_matched_by_id() {
    // Requests sent back to back are answered in reverse order and each matched to its id.
    let address = start_server();
    let mut client =
        Client::connect(&address.to_string(), Duration::from_secs(5)).expect("connect");
    client.put(b("a"), b("1")).expect("put");
    let get_a = client.send(ClientOp::Get { key: b("a") }).expect("send");
    let get_b = client.send(ClientOp::Get { key: b("b") }).expect("send");
    let first = client.recv().expect("recv");
    let second = client.recv().expect("recv");
    let mut answers = [(first.id, first.reply), (second.id, second.reply)];
    answers.sort_by_key(|(id, _)| *id);
    assert_eq!(
        answers,
        [
            (get_a, Reply::Value(Some(b("1")))),
            (get_b, Reply::Value(None))
        ]
    );
}

#[test]
fn unreachable_endpoint_fails_over_to_the_next() {
    // A refused connection moves on to the next endpoint without the caller noticing.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_address = dead.local_addr().expect("address");
    drop(dead);
    let live = start_server();
    let endpoints = format!("{dead_address},{live}");
    let mut client = Client::connect(&endpoints, Duration::from_secs(5)).expect("connect");
    assert_eq!(client.endpoint(), live);
    client.put(b("k"), b("v")).expect("put");
}

#[test]
fn silent_server_times_out() {
    // A server that accepts but never answers yields a timeout error, not a hang.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    let mut client =
        Client::connect(&address.to_string(), Duration::from_millis(200)).expect("connect");
    let error = client.get(b("k")).expect_err("no answer");
    assert!(matches!(error, ClientError::Timeout { .. }), "{error}");
    drop(listener);
}

#[test]
fn no_endpoints_is_an_error() {
    // An empty endpoint list is refused up front.
    assert!(matches!(
        Client::connect(" , ", Duration::from_secs(1)),
        Err(ClientError::NoEndpoints)
    ));
}
