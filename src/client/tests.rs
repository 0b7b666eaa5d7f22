//! The client against a small in-test server on a real loopback socket that speaks the
//! protocol with the project's codec and a `KvMachine`: round trips of every call,
//! pipelined responses out of order, failover to a second endpoint, and a timeout.

use std::net::TcpListener;

use super::test_server::start as start_server;
use super::*;

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
    assert_eq!(client.incr(b("n"), 5).expect("incr"), 5);
    assert_eq!(client.incr(b("n"), -7).expect("incr"), -2);
    client.put(b("k"), b("x")).expect("put");
    assert!(matches!(
        client.incr(b("k"), 1),
        Err(ClientError::Server {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
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
