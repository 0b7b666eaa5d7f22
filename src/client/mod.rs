//! The client library of the native protocol (docs/protocol.md): a blocking connection to one
//! of several endpoints with pipelined requests, and simple calls for get, put, delete,
//! compare-and-set and status. Used by the command line and by tests; it knows nothing of
//! Raft beyond what the protocol says.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use thiserror::Error;

use crate::constants::CLIENT_FRAME_BYTES_MAX;
use crate::kv::Command;
use crate::wire::client::{
    ClientOp, ClientRequest, ClientResponse, ErrorCode, GroupStatus, NodeStatus, Reply, ReplyKind,
    RequestId, decode_response, encode_request,
};
use crate::wire::{FrameError, FrameHeader, WireError};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no endpoint given")]
    NoEndpoints,
    #[error("cannot resolve endpoint {endpoint}: {source}")]
    Resolve { endpoint: String, source: io::Error },
    #[error("could not reach any endpoint ({tried}); last error: {last}")]
    Unreachable { tried: String, last: String },
    #[error("connection to {endpoint} failed: {source}")]
    Io {
        endpoint: SocketAddr,
        source: io::Error,
    },
    #[error("no response from {endpoint} within {timeout:?}")]
    Timeout {
        endpoint: SocketAddr,
        timeout: Duration,
    },
    #[error("bad frame from {endpoint}: {source}")]
    Frame {
        endpoint: SocketAddr,
        source: FrameError,
    },
    #[error("bad response from {endpoint}: {source}")]
    Wire {
        endpoint: SocketAddr,
        source: WireError,
    },
    #[error("response to unknown request {0:?}")]
    UnknownRequest(RequestId),
    #[error("server answered {code:?}: {message}")]
    Server { code: ErrorCode, message: String },
}

impl ClientError {
    /// Whether the request certainly did not take effect, so it may be sent again anywhere.
    pub fn is_safe_to_retry(&self) -> bool {
        match self {
            ClientError::Server { code, .. } => {
                matches!(code, ErrorCode::ShuttingDown | ErrorCode::Overloaded)
            }
            ClientError::Unreachable { .. } => true,
            _ => false,
        }
    }
}

/// A connection to one node, chosen among the endpoints given.
pub struct Client {
    endpoints: Vec<SocketAddr>,
    current: usize,
    stream: Option<TcpStream>,
    timeout: Duration,
    next_id: u64,
    /// Kinds of the requests in flight, by id, to decode their responses.
    in_flight: Vec<(RequestId, ReplyKind)>,
    builder: FlatBufferBuilder<'static>,
    read_buffer: Vec<u8>,
    /// Requests sent but not yet written.
    write_buffer: Vec<u8>,
}

impl Client {
    /// Resolves `endpoints` ("host:port,host:port") and connects to the first that answers.
    pub fn connect(endpoints: &str, timeout: Duration) -> Result<Client, ClientError> {
        let mut addresses = Vec::new();
        for endpoint in endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let resolved = endpoint
                .to_socket_addrs()
                .map_err(|source| ClientError::Resolve {
                    endpoint: endpoint.to_string(),
                    source,
                })?;
            addresses.extend(resolved);
        }
        if addresses.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut client = Client {
            endpoints: addresses,
            current: 0,
            stream: None,
            timeout,
            next_id: 1,
            in_flight: Vec::new(),
            builder: FlatBufferBuilder::new(),
            read_buffer: Vec::new(),
            write_buffer: Vec::new(),
        };
        client.reconnect()?;
        Ok(client)
    }

    /// The node this client is connected to.
    pub fn endpoint(&self) -> SocketAddr {
        self.endpoints[self.current % self.endpoints.len()]
    }

    /// Drops the current connection and connects to the next endpoint that answers, trying
    /// each once, starting with the one after the current.
    pub fn reconnect(&mut self) -> Result<(), ClientError> {
        self.stream = None;
        self.in_flight.clear();
        self.write_buffer.clear();
        self.read_buffer.clear();
        let mut last = String::new();
        for _ in 0..self.endpoints.len() {
            let endpoint = self.endpoint();
            match TcpStream::connect_timeout(&endpoint, self.timeout) {
                Ok(stream) => {
                    stream
                        .set_nodelay(true)
                        .map_err(|source| ClientError::Io { endpoint, source })?;
                    self.stream = Some(stream);
                    return Ok(());
                }
                Err(error) => last = format!("{endpoint}: {error}"),
            }
            self.current = (self.current + 1) % self.endpoints.len();
        }
        let tried = self
            .endpoints
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        Err(ClientError::Unreachable { tried, last })
    }

    /// Sends a request without waiting for its response (pipelining).
    pub fn send(&mut self, op: ClientOp) -> Result<RequestId, ClientError> {
        let endpoint = self.endpoint();
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let kind = op.reply_kind();
        if self.stream.is_none() {
            return Err(ClientError::Unreachable {
                tried: endpoint.to_string(),
                last: "not connected".to_string(),
            });
        }
        let payload = encode_request(&mut self.builder, &ClientRequest { id, op });
        self.write_buffer
            .extend_from_slice(&FrameHeader::encode(payload.len()));
        self.write_buffer.extend_from_slice(payload);
        self.in_flight.push((id, kind));
        Ok(id)
    }

    /// Writes the requests sent since the last flush, in one call (`recv` flushes first, so
    /// pipelined requests leave together).
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.write_buffer.is_empty() {
            return Ok(());
        }
        let endpoint = self.endpoint();
        let stream = self.stream.as_mut().ok_or(ClientError::Unreachable {
            tried: endpoint.to_string(),
            last: "not connected".to_string(),
        })?;
        let written = stream.write_all(&self.write_buffer);
        self.write_buffer.clear();
        written.map_err(|source| ClientError::Io { endpoint, source })
    }

    /// Whether a whole response has been read already, so `recv` returns without I/O (a
    /// pipelining caller drains those before sending more, so requests leave together).
    pub fn has_buffered_response(&self) -> bool {
        matches!(
            FrameHeader::parse(&self.read_buffer, CLIENT_FRAME_BYTES_MAX),
            Ok(Some(header)) if self.read_buffer.len() >= 4 + header.payload_bytes
        )
    }

    /// Waits for the next response of any request in flight.
    pub fn recv(&mut self) -> Result<ClientResponse, ClientError> {
        if !self.has_buffered_response() {
            self.flush()?;
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(response) = self.try_recv()? {
                return Ok(response);
            }
            self.fill(deadline)?;
        }
    }

    /// The next response if the bytes read so far hold a whole one; never does I/O.
    pub fn try_recv(&mut self) -> Result<Option<ClientResponse>, ClientError> {
        let endpoint = self.endpoint();
        let header = match FrameHeader::parse(&self.read_buffer, CLIENT_FRAME_BYTES_MAX)
            .map_err(|source| ClientError::Frame { endpoint, source })?
        {
            Some(header) if self.read_buffer.len() >= 4 + header.payload_bytes => header,
            _ => return Ok(None),
        };
        let end = 4 + header.payload_bytes;
        let payload = &self.read_buffer[4..end];
        let id = flatbuffers_id(payload);
        let position = self
            .in_flight
            .iter()
            .position(|(in_flight, _)| Some(*in_flight) == id);
        let Some(position) = position else {
            return Err(ClientError::UnknownRequest(id.unwrap_or(RequestId(0))));
        };
        let (_, kind) = self.in_flight.swap_remove(position);
        let response = decode_response(payload, kind)
            .map_err(|source| ClientError::Wire { endpoint, source })?;
        self.read_buffer.drain(..end);
        Ok(Some(response))
    }

    /// Makes the socket non-blocking, for a caller that serves many clients on one thread
    /// with `poll(2)` on `raw_fd` and uses `poll_flush`, `poll_read` and `try_recv` from
    /// then on (`recv` and the calls would fail with `Timeout` at the first empty read).
    pub fn set_nonblocking(&mut self) -> Result<(), ClientError> {
        let endpoint = self.endpoint();
        match &self.stream {
            Some(stream) => stream
                .set_nonblocking(true)
                .map_err(|source| ClientError::Io { endpoint, source }),
            None => Err(ClientError::Unreachable {
                tried: endpoint.to_string(),
                last: "not connected".to_string(),
            }),
        }
    }

    /// The socket's descriptor, to wait for it with `poll(2)`.
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.stream.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Writes as much of the requests sent as the socket takes now; returns whether some
    /// are still waiting (then wait for the socket to be writable).
    pub fn poll_flush(&mut self) -> Result<bool, ClientError> {
        let endpoint = self.endpoint();
        let Some(stream) = self.stream.as_mut() else {
            return Ok(!self.write_buffer.is_empty());
        };
        let mut written = 0;
        while written < self.write_buffer.len() {
            match stream.write(&self.write_buffer[written..]) {
                Ok(0) => {
                    return Err(ClientError::Io {
                        endpoint,
                        source: io::ErrorKind::WriteZero.into(),
                    });
                }
                Ok(count) => written += count,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ClientError::Io { endpoint, source }),
            }
        }
        self.write_buffer.drain(..written);
        Ok(!self.write_buffer.is_empty())
    }

    /// Reads what the socket holds now, without waiting; a closed connection is an error.
    pub fn poll_read(&mut self) -> Result<(), ClientError> {
        let endpoint = self.endpoint();
        let Some(stream) = self.stream.as_mut() else {
            return Ok(());
        };
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(ClientError::Io {
                        endpoint,
                        source: io::ErrorKind::UnexpectedEof.into(),
                    });
                }
                Ok(count) => {
                    self.read_buffer.extend_from_slice(&chunk[..count]);
                    if count < chunk.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => return Err(ClientError::Io { endpoint, source }),
            }
        }
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let endpoint = self.endpoint();
        let timeout = self.timeout;
        let now = Instant::now();
        if now >= deadline {
            return Err(ClientError::Timeout { endpoint, timeout });
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or(ClientError::Timeout { endpoint, timeout })?;
        stream
            .set_read_timeout(Some(deadline - now))
            .map_err(|source| ClientError::Io { endpoint, source })?;
        let mut chunk = [0u8; 64 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => Err(ClientError::Io {
                endpoint,
                source: io::ErrorKind::UnexpectedEof.into(),
            }),
            Ok(count) => {
                self.read_buffer.extend_from_slice(&chunk[..count]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout { endpoint, timeout })
            }
            Err(source) => Err(ClientError::Io { endpoint, source }),
        }
    }

    /// Sends one request and waits for its response. Requests that certainly did not take
    /// effect (refused connection, node shutting down, overload) are retried on the other
    /// endpoints until the timeout; a request that may have taken effect is not.
    pub fn call(&mut self, op: ClientOp) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let result = self.call_once(op.clone());
            match result {
                Err(error) if error.is_safe_to_retry() && Instant::now() < deadline => {
                    self.current = (self.current + 1) % self.endpoints.len();
                    if let Err(error) = self.reconnect()
                        && Instant::now() >= deadline
                    {
                        return Err(error);
                    }
                }
                other => return other,
            }
        }
    }

    fn call_once(&mut self, op: ClientOp) -> Result<Reply, ClientError> {
        if self.stream.is_none() {
            self.reconnect()?;
        }
        let id = self.send(op)?;
        let response = self.recv()?;
        if response.id != id {
            return Err(ClientError::UnknownRequest(response.id));
        }
        match response.reply {
            Reply::Error { code, message } => Err(ClientError::Server { code, message }),
            reply => Ok(reply),
        }
    }

    pub fn get(&mut self, key: Bytes) -> Result<Option<Bytes>, ClientError> {
        match self.call(ClientOp::Get { key })? {
            Reply::Value(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    pub fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), ClientError> {
        match self.call(ClientOp::Write(Command::Put { key, value }))? {
            Reply::Written => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, key: Bytes) -> Result<bool, ClientError> {
        match self.call(ClientOp::Write(Command::Delete { key }))? {
            Reply::Deleted { existed } => Ok(existed),
            other => Err(unexpected(other)),
        }
    }

    /// Compare-and-set; returns whether it took effect and the value after it.
    pub fn cas(
        &mut self,
        key: Bytes,
        expected: Option<Bytes>,
        new: Option<Bytes>,
    ) -> Result<(bool, Option<Bytes>), ClientError> {
        match self.call(ClientOp::Write(Command::Cas { key, expected, new }))? {
            Reply::Cas { succeeded, current } => Ok((succeeded, current)),
            other => Err(unexpected(other)),
        }
    }

    /// Adds `delta` to the integer at `key` (absent: 0), as one replicated command; returns
    /// the sum. A value that is not an integer, or an overflow, is a `BadRequest`.
    pub fn incr(&mut self, key: Bytes, delta: i64) -> Result<i64, ClientError> {
        match self.call(ClientOp::Write(Command::Incr { key, delta }))? {
            Reply::Counter(value) => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    pub fn status(&mut self) -> Result<(Vec<GroupStatus>, Vec<NodeStatus>), ClientError> {
        match self.call(ClientOp::Status)? {
            Reply::Status { groups, nodes } => Ok((groups, nodes)),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> ClientError {
    ClientError::Server {
        code: ErrorCode::Internal,
        message: format!("unexpected reply {reply:?}"),
    }
}

/// The request id of a response payload, read through the verifier, or `None` if the
/// payload is not a valid response.
fn flatbuffers_id(payload: &[u8]) -> Option<RequestId> {
    crate::wire::client::response_id(payload)
}

#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod tests;
