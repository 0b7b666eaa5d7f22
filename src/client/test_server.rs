//! A small protocol server for tests of the client and the benchmark: a real loopback socket,
//! the project's codec and a `KvMachine`, answering the requests it has read in reverse
//! order so that clients must match responses by id. Not a stand-in for the real server.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;

use flatbuffers::FlatBufferBuilder;

use crate::constants::CLIENT_FRAME_BYTES_MAX;
use crate::ids::LogIndex;
use crate::kv::{KvMachine, Outcome};
use crate::wire::FrameHeader;
use crate::wire::client::{
    ClientOp, ClientResponse, ErrorCode, Reply, decode_request, encode_response,
};

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
                Outcome::PutIf { written } => Reply::PutIf { written },
                Outcome::Counter { value } => Reply::Counter(value),
                Outcome::CounterRefused(e) => Reply::Error {
                    code: ErrorCode::BadRequest,
                    message: e.to_string(),
                },
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

/// A server on an ephemeral loopback port, serving until the test process ends.
pub fn start() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            thread::spawn(move || serve(stream, &mut KvMachine::new()));
        }
    });
    address
}
