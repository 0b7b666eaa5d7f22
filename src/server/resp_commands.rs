//! What each Redis command means to ringraft: `plan` turns one parsed RESP command into a
//! reply given at once, or into the native requests (`ClientOp`s) that answer it and the
//! shape in which their replies become one RESP reply (`combine`). Also the INFO text.
//!
//! Pure: no I/O, no clock, no sockets (reactor/resp.rs routes the requests and writes the
//! bytes). It must not execute a command against data: every read and write goes through
//! the replicated path as a native request.

use bytes::Bytes;

use crate::constants::{MULTI_PUT_KEYS_MAX, RESP_FANOUT_KEYS_MAX};
use crate::ids::{GroupId, NodeId};
use crate::kv::{Command, PutCondition};
use crate::raft::RoleKind;
use crate::server::resp::RespWriter;
use crate::shard::core::group_of_key;
use crate::wire::WireError;
use crate::wire::client::{ClientOp, ErrorCode, GroupStatus, Reply};

/// The `redis_version` INFO reports: clients such as redis-benchmark and client libraries
/// read it to pick features; ringraft speaks the RESP2 subset of Redis 7.0.
pub const REDIS_VERSION_COMPATIBLE: &str = "7.0.0";

/// The error for a multi-key write whose keys are in several groups, as Redis Cluster words
/// it for slots.
pub const CROSS_GROUP_ERROR: &str = "CROSSSLOT Keys in request don't hash to the same group";

/// How the replies of a command's requests become its one RESP reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// One request; its reply as RESP (GET, SET, INCR, MSET, ...).
    Single,
    /// One conditional put answered as an integer, 1 if written (SETNX).
    WrittenFlag,
    /// One GET per key; an array of the values in order (MGET).
    Values,
    /// One request per key; how many of the keys existed (DEL, EXISTS).
    Count,
}

/// What to do with one command.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Answer these RESP bytes now.
    Reply(Vec<u8>),
    /// Answer these bytes, then close the connection.
    Quit(Vec<u8>),
    /// Answer with the INFO text of these sections (`None`: the default ones).
    Info(Option<String>),
    /// Send these requests (each routed like a native one) and answer with their replies
    /// combined as `shape` says.
    Requests { ops: Vec<ClientOp>, shape: Shape },
}

/// What a connection remembers between commands.
#[derive(Debug, Default)]
pub struct Session {
    /// CLIENT SETNAME.
    pub name: Option<Bytes>,
}

fn error(text: &str) -> Plan {
    let mut out = Vec::new();
    RespWriter { out: &mut out }.error(text);
    Plan::Reply(out)
}

fn simple(text: &str) -> Plan {
    let mut out = Vec::new();
    RespWriter { out: &mut out }.simple(text);
    Plan::Reply(out)
}

fn bulk(value: &[u8]) -> Plan {
    let mut out = Vec::new();
    RespWriter { out: &mut out }.bulk(value);
    Plan::Reply(out)
}

fn single(command: Command) -> Plan {
    Plan::Requests {
        ops: vec![ClientOp::Write(command)],
        shape: Shape::Single,
    }
}

fn wrong_arity(name: &str) -> Plan {
    error(&format!(
        "ERR wrong number of arguments for '{}' command",
        name.to_ascii_lowercase()
    ))
}

/// Redis's own words for a command it does not know: the name and the start of the
/// arguments, each cut at 128 bytes.
fn unknown_command(arguments: &[Bytes]) -> Plan {
    let name = arguments.first().map(|n| clip(n, 128)).unwrap_or_default();
    let mut listed = String::new();
    for argument in arguments.iter().skip(1) {
        if listed.len() >= 128 {
            break;
        }
        listed.push_str(&format!("'{}' ", clip(argument, 128 - listed.len())));
    }
    error(&format!(
        "ERR unknown command '{name}', with args beginning with: {listed}"
    ))
}

fn clip(bytes: &[u8], limit: usize) -> String {
    String::from_utf8_lossy(bytes.get(..bytes.len().min(limit)).unwrap_or_default()).into_owned()
}

fn parse_integer(argument: &[u8]) -> Option<i64> {
    crate::kv::machine::parse_counter(argument)
}

/// Decides what one command needs. `arguments` is not empty (the parser never yields an
/// empty command); `groups_total` places keys for MSET.
pub fn plan(arguments: &[Bytes], session: &mut Session, groups_total: u32) -> Plan {
    let Some(first) = arguments.first() else {
        return unknown_command(arguments);
    };
    let name = String::from_utf8_lossy(first).to_ascii_uppercase();
    let rest = arguments.get(1..).unwrap_or_default();
    match name.as_str() {
        "PING" => match rest {
            [] => simple("PONG"),
            [message] => bulk(message),
            _ => wrong_arity(&name),
        },
        "ECHO" => match rest {
            [message] => bulk(message),
            _ => wrong_arity(&name),
        },
        "QUIT" => {
            let mut out = Vec::new();
            RespWriter { out: &mut out }.simple("OK");
            Plan::Quit(out)
        }
        "SELECT" => match rest {
            [db] if parse_integer(db) == Some(0) => simple("OK"),
            [db] if parse_integer(db).is_some() => error("ERR DB index is out of range"),
            [_] => error("ERR value is not an integer or out of range"),
            _ => wrong_arity(&name),
        },
        "GET" => match rest {
            [key] => Plan::Requests {
                ops: vec![ClientOp::Get { key: key.clone() }],
                shape: Shape::Single,
            },
            _ => wrong_arity(&name),
        },
        "SET" => plan_set(&name, rest),
        "SETNX" => match rest {
            [key, value] => Plan::Requests {
                ops: vec![ClientOp::Write(Command::PutIf {
                    key: key.clone(),
                    value: value.clone(),
                    condition: PutCondition::IfAbsent,
                })],
                shape: Shape::WrittenFlag,
            },
            _ => wrong_arity(&name),
        },
        "DEL" | "EXISTS" => plan_per_key(&name, rest),
        "MGET" => plan_per_key(&name, rest),
        "MSET" => plan_mset(&name, rest, groups_total),
        "INCR" | "DECR" => match rest {
            [key] => single(Command::Incr {
                key: key.clone(),
                delta: if name == "INCR" { 1 } else { -1 },
            }),
            _ => wrong_arity(&name),
        },
        "INCRBY" | "DECRBY" => match rest {
            [key, by] => {
                let Some(by) = parse_integer(by) else {
                    return error("ERR value is not an integer or out of range");
                };
                let delta = if name == "INCRBY" {
                    Some(by)
                } else {
                    by.checked_neg()
                };
                match delta {
                    Some(delta) => single(Command::Incr {
                        key: key.clone(),
                        delta,
                    }),
                    None => error("ERR decrement would overflow"),
                }
            }
            _ => wrong_arity(&name),
        },
        "INFO" => match rest {
            [] => Plan::Info(None),
            [section] => Plan::Info(Some(String::from_utf8_lossy(section).to_ascii_lowercase())),
            _ => error("ERR syntax error"),
        },
        "CONFIG" => plan_config(rest),
        "COMMAND" => plan_command(rest),
        "CLIENT" => plan_client(rest, session),
        _ => unknown_command(arguments),
    }
}

/// SET key value [NX | XX]. Expiry (EX, PX, EXAT, PXAT, KEEPTTL) and GET are refused by
/// name rather than ignored, so nobody believes a key will expire.
fn plan_set(name: &str, rest: &[Bytes]) -> Plan {
    let [key, value, options @ ..] = rest else {
        return wrong_arity(name);
    };
    let mut condition = None;
    for option in options {
        let option = String::from_utf8_lossy(option).to_ascii_uppercase();
        let wanted = match option.as_str() {
            "NX" => PutCondition::IfAbsent,
            "XX" => PutCondition::IfPresent,
            "EX" | "PX" | "EXAT" | "PXAT" | "KEEPTTL" | "GET" => {
                return error(&format!(
                    "ERR SET {option} is not supported by ringraft (keys do not expire)"
                ));
            }
            _ => return error("ERR syntax error"),
        };
        if condition.is_some_and(|c| c != wanted) {
            return error("ERR syntax error");
        }
        condition = Some(wanted);
    }
    let (key, value) = (key.clone(), value.clone());
    single(match condition {
        None => Command::Put { key, value },
        Some(condition) => Command::PutIf {
            key,
            value,
            condition,
        },
    })
}

/// DEL, EXISTS and MGET: one request per key, in order, wherever each key lives.
fn plan_per_key(name: &str, keys: &[Bytes]) -> Plan {
    if keys.is_empty() {
        return wrong_arity(name);
    }
    if keys.len() > RESP_FANOUT_KEYS_MAX {
        return error(&format!(
            "ERR {} of {} keys exceeds the limit of {RESP_FANOUT_KEYS_MAX} keys",
            name.to_ascii_lowercase(),
            keys.len()
        ));
    }
    let op = |key: &Bytes| match name {
        "DEL" => ClientOp::Write(Command::Delete { key: key.clone() }),
        _ => ClientOp::Get { key: key.clone() },
    };
    Plan::Requests {
        ops: keys.iter().map(op).collect(),
        shape: if name == "MGET" {
            Shape::Values
        } else {
            Shape::Count
        },
    }
}

/// MSET: one atomic multi-put when every key is in one group, else the CROSSSLOT error.
fn plan_mset(name: &str, rest: &[Bytes], groups_total: u32) -> Plan {
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return wrong_arity(name);
    }
    let pair_count = rest.len() / 2;
    if pair_count > MULTI_PUT_KEYS_MAX {
        return error(&format!(
            "ERR mset of {pair_count} keys exceeds the limit of {MULTI_PUT_KEYS_MAX} keys"
        ));
    }
    let pairs: Vec<(Bytes, Bytes)> = rest
        .chunks_exact(2)
        .filter_map(|pair| match pair {
            [key, value] => Some((key.clone(), value.clone())),
            _ => None,
        })
        .collect();
    let groups: Vec<GroupId> = pairs
        .iter()
        .map(|(key, _)| group_of_key(key, groups_total))
        .collect();
    if groups.windows(2).any(|pair| pair.first() != pair.last()) {
        return error(CROSS_GROUP_ERROR);
    }
    single(Command::MultiPut { pairs })
}

/// CONFIG GET: what redis-benchmark asks at start (`save`, `appendonly`); other parameters
/// match nothing (an empty array), as in Redis for an unknown name.
fn plan_config(rest: &[Bytes]) -> Plan {
    let subcommand = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
        .unwrap_or_default();
    match (subcommand.as_str(), rest.get(1..).unwrap_or_default()) {
        ("GET", parameters) if !parameters.is_empty() => {
            let mut found: Vec<(&str, &str)> = Vec::new();
            for parameter in parameters {
                let parameter = String::from_utf8_lossy(parameter).to_ascii_lowercase();
                for (known, value) in [("save", ""), ("appendonly", "yes")] {
                    if glob_matches(parameter.as_bytes(), known.as_bytes())
                        && !found.iter().any(|(name, _)| *name == known)
                    {
                        found.push((known, value));
                    }
                }
            }
            let mut out = Vec::new();
            let mut writer = RespWriter { out: &mut out };
            writer.array_header(found.len() * 2);
            for (name, value) in found {
                writer.bulk(name.as_bytes());
                writer.bulk(value.as_bytes());
            }
            Plan::Reply(out)
        }
        ("GET", _) => wrong_arity("config|get"),
        _ => error(&format!(
            "ERR unknown subcommand '{}'. Try CONFIG HELP.",
            clip(rest.first().map_or(&b""[..], |s| &s[..]), 128)
        )),
    }
}

/// A Redis glob of `*` and `?` (CONFIG GET patterns such as `*`).
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    match pattern.split_first() {
        None => text.is_empty(),
        Some((b'*', tail)) => (0..=text.len()).any(|skip| {
            text.get(skip..)
                .is_some_and(|rest| glob_matches(tail, rest))
        }),
        Some((&head, tail)) => match text.split_first() {
            Some((&first, rest)) => (head == b'?' || head == first) && glob_matches(tail, rest),
            None => false,
        },
    }
}

/// COMMAND, COMMAND DOCS, COMMAND INFO: empty arrays (redis-cli then offers no hints);
/// COMMAND COUNT: 0.
fn plan_command(rest: &[Bytes]) -> Plan {
    let subcommand = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut writer = RespWriter { out: &mut out };
    match subcommand.as_str() {
        "" | "DOCS" | "INFO" | "LIST" => writer.array_header(0),
        "COUNT" => writer.integer(0),
        _ => {
            return error(&format!(
                "ERR unknown subcommand '{}'. Try COMMAND HELP.",
                clip(rest.first().map_or(&b""[..], |s| &s[..]), 128)
            ));
        }
    }
    Plan::Reply(out)
}

/// CLIENT SETNAME / GETNAME (names without spaces, as Redis requires).
fn plan_client(rest: &[Bytes], session: &mut Session) -> Plan {
    let subcommand = rest
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase())
        .unwrap_or_default();
    match (subcommand.as_str(), rest.get(1..).unwrap_or_default()) {
        ("SETNAME", [name]) => {
            if name.iter().any(|&byte| byte <= b' ' || byte > b'~') {
                return error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            session.name = (!name.is_empty()).then(|| name.clone());
            simple("OK")
        }
        ("GETNAME", []) => {
            let mut out = Vec::new();
            let mut writer = RespWriter { out: &mut out };
            match &session.name {
                Some(name) => writer.bulk(name),
                None => writer.null(),
            }
            Plan::Reply(out)
        }
        ("SETNAME" | "GETNAME", _) => wrong_arity(&format!("client|{subcommand}")),
        _ => error(&format!(
            "ERR unknown subcommand '{}'. Try CLIENT HELP.",
            clip(rest.first().map_or(&b""[..], |s| &s[..]), 128)
        )),
    }
}

/// Renders one native reply as its RESP reply.
pub fn render(reply: &Result<Reply, WireError>, writer: &mut RespWriter<'_>) {
    match reply {
        Ok(Reply::Value(Some(value))) => writer.bulk(value),
        Ok(Reply::Value(None)) => writer.null(),
        Ok(Reply::Written | Reply::Status { .. }) => writer.simple("OK"),
        Ok(Reply::Deleted { existed }) => writer.integer(i64::from(*existed)),
        Ok(Reply::Cas { succeeded, .. }) => writer.integer(i64::from(*succeeded)),
        Ok(Reply::PutIf { written: true }) => writer.simple("OK"),
        Ok(Reply::PutIf { written: false }) => writer.null(),
        Ok(Reply::Counter(value)) => writer.integer(*value),
        Ok(Reply::Error { code, message }) => writer.error(&error_text(*code, message)),
        Err(error) => writer.error(&format!("ERR internal: {error}")),
    }
}

/// A failed request as a Redis error line: a bad request in Redis's words, the rest with
/// what kind of failure it was (a write answered so may or may not have taken effect).
fn error_text(code: ErrorCode, message: &str) -> String {
    let kind = match code {
        ErrorCode::BadRequest => return format!("ERR {message}"),
        ErrorCode::Unavailable => "unavailable",
        ErrorCode::Timeout => "timeout",
        ErrorCode::ShuttingDown => "shutting down",
        ErrorCode::Overloaded => "overloaded",
        ErrorCode::Internal => "internal",
    };
    format!("ERR {kind}: {message}")
}

/// The one RESP reply of a command from its requests' replies, in request order. A failed
/// request fails the whole command with its error (Redis has no partial replies).
pub fn combine(shape: Shape, replies: &[Result<Reply, WireError>]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = RespWriter { out: &mut out };
    let failed = replies
        .iter()
        .find(|reply| matches!(reply, Err(_) | Ok(Reply::Error { .. })));
    match (shape, failed, replies) {
        (_, Some(failed), _) => render(failed, &mut writer),
        (Shape::Single, None, [reply]) => render(reply, &mut writer),
        (Shape::WrittenFlag, None, [Ok(Reply::PutIf { written })]) => {
            writer.integer(i64::from(*written));
        }
        (Shape::Values, None, _) => {
            writer.array_header(replies.len());
            for reply in replies {
                match reply {
                    Ok(Reply::Value(Some(value))) => writer.bulk(value),
                    _ => writer.null(),
                }
            }
        }
        (Shape::Count, None, _) => {
            let count = replies
                .iter()
                .filter(|reply| {
                    matches!(
                        reply,
                        Ok(Reply::Deleted { existed: true } | Reply::Value(Some(_)))
                    )
                })
                .count();
            writer.integer(i64::try_from(count).unwrap_or(i64::MAX));
        }
        (shape, None, replies) => writer.error(&format!(
            "ERR internal: {} replies do not fit a {shape:?} command",
            replies.len()
        )),
    }
    out
}

/// What INFO reports about the answering node.
pub struct InfoFacts {
    pub node: NodeId,
    pub cores: usize,
    pub groups_total: u32,
    pub uptime_seconds: u64,
    pub tcp_port: u16,
    pub process_id: u32,
    /// This node's view of every group (sorted by group).
    pub groups: Vec<GroupStatus>,
}

fn role_name(role: RoleKind) -> &'static str {
    match role {
        RoleKind::Follower => "follower",
        RoleKind::PreCandidate => "pre-candidate",
        RoleKind::Candidate => "candidate",
        RoleKind::Leader => "leader",
    }
}

/// The INFO text: `# Server` and `# Replication` (role and leader per group, as this node
/// sees them), for `section` `None`, `default`, `all`, `everything` or the section's name;
/// an unknown section gives an empty text, as in Redis.
pub fn info_text(facts: &InfoFacts, section: Option<&str>) -> String {
    let wants = |name: &str| {
        matches!(section, None | Some("default" | "all" | "everything")) || section == Some(name)
    };
    let mut text = String::new();
    if wants("server") {
        text.push_str("# Server\r\n");
        text.push_str(&format!("redis_version:{REDIS_VERSION_COMPATIBLE}\r\n"));
        text.push_str(&format!(
            "ringraft_version:{}\r\n",
            env!("CARGO_PKG_VERSION")
        ));
        text.push_str("redis_mode:standalone\r\n");
        text.push_str(&format!("process_id:{}\r\n", facts.process_id));
        text.push_str(&format!("tcp_port:{}\r\n", facts.tcp_port));
        text.push_str(&format!("node_id:{}\r\n", facts.node));
        text.push_str(&format!("cores:{}\r\n", facts.cores));
        text.push_str(&format!("groups:{}\r\n", facts.groups_total));
        text.push_str(&format!("uptime_in_seconds:{}\r\n", facts.uptime_seconds));
        text.push_str(&format!(
            "uptime_in_days:{}\r\n",
            facts.uptime_seconds / 86_400
        ));
    }
    if wants("replication") {
        if !text.is_empty() {
            text.push_str("\r\n");
        }
        let led = facts
            .groups
            .iter()
            .filter(|g| g.role == RoleKind::Leader)
            .count();
        // Every node takes writes for every key (forwarding to the group's leader), so to a
        // Redis client each node is a master; the Raft roles follow per group.
        text.push_str("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n");
        text.push_str(&format!("groups_led:{led}\r\n"));
        for group in &facts.groups {
            let leader = group
                .leader
                .map_or_else(|| "none".to_string(), |n| n.to_string());
            text.push_str(&format!(
                "group{}:role={},leader={leader},term={},commit={},applied={}\r\n",
                group.group,
                role_name(group.role),
                group.term,
                group.commit,
                group.applied
            ));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{LogIndex, Term};

    fn words(line: &str) -> Vec<Bytes> {
        line.split(' ')
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect()
    }

    fn plan_line(line: &str) -> Plan {
        plan(&words(line), &mut Session::default(), 4)
    }

    fn reply_text(plan: Plan) -> String {
        match plan {
            Plan::Reply(out) | Plan::Quit(out) => String::from_utf8_lossy(&out).into_owned(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn unknown_commands_are_named_as_redis_names_them() {
        // The error repeats the command as sent and the start of its arguments.
        assert_eq!(
            reply_text(plan_line("FOO a b")),
            "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n"
        );
        assert_eq!(
            reply_text(plan_line("flushall")),
            "-ERR unknown command 'flushall', with args beginning with: \r\n"
        );
        let long = format!("x {}", "y".repeat(300));
        let text = reply_text(plan_line(&long));
        assert!(text.len() < 220, "not clipped: {} bytes", text.len());
    }

    #[test]
    fn writes_become_one_replicated_command_each() {
        // SET (with NX or XX), INCR/DECR(BY) and MSET each become a single write.
        let write = |line: &str| match plan_line(line) {
            Plan::Requests { ops, shape } => (ops, shape),
            other => panic!("{line}: expected requests, got {other:?}"),
        };
        let one = |command| (vec![ClientOp::Write(command)], Shape::Single);
        assert_eq!(
            write("set k v"),
            one(Command::Put {
                key: b("k"),
                value: b("v")
            })
        );
        assert_eq!(
            write("SET k v nx"),
            one(Command::PutIf {
                key: b("k"),
                value: b("v"),
                condition: PutCondition::IfAbsent
            })
        );
        assert_eq!(
            write("set k v XX xx"),
            one(Command::PutIf {
                key: b("k"),
                value: b("v"),
                condition: PutCondition::IfPresent
            })
        );
        assert_eq!(
            write("incr n"),
            one(Command::Incr {
                key: b("n"),
                delta: 1
            })
        );
        assert_eq!(
            write("decrby n 5"),
            one(Command::Incr {
                key: b("n"),
                delta: -5
            })
        );
        assert_eq!(
            write("mset k v k w"),
            one(Command::MultiPut {
                pairs: vec![(b("k"), b("v")), (b("k"), b("w"))]
            })
        );
        assert_eq!(write("setnx k v").1, Shape::WrittenFlag);
        assert_eq!(
            reply_text(plan_line("set k v nx xx")),
            "-ERR syntax error\r\n"
        );
        assert!(reply_text(plan_line("set k v ex 10")).starts_with("-ERR SET EX is not"));
        assert_eq!(
            reply_text(plan_line("decrby n -9223372036854775808")),
            "-ERR decrement would overflow\r\n"
        );
        assert_eq!(
            reply_text(plan_line("incrby n x")),
            "-ERR value is not an integer or out of range\r\n"
        );
        assert_eq!(
            reply_text(plan_line("mset k")),
            "-ERR wrong number of arguments for 'mset' command\r\n"
        );
    }

    #[test]
    fn mset_across_groups_is_refused_and_within_one_group_is_not() {
        // Keys of two groups get the CROSSSLOT error; keys of one group make one multi-put.
        let groups_total = 4;
        let keys: Vec<String> = (0..64).map(|i| format!("key{i}")).collect();
        let group = |key: &String| group_of_key(key.as_bytes(), groups_total);
        let first = &keys[0];
        let same = keys[1..]
            .iter()
            .find(|k| group(k) == group(first))
            .expect("a key of the same group");
        let other = keys[1..]
            .iter()
            .find(|k| group(k) != group(first))
            .expect("a key of another group");
        let line = |a: &str, b: &str| words(&format!("MSET {a} 1 {b} 2"));
        let mut session = Session::default();
        assert!(matches!(
            plan(&line(first, same), &mut session, groups_total),
            Plan::Requests { .. }
        ));
        assert_eq!(
            reply_text(plan(&line(first, other), &mut session, groups_total)),
            format!("-{CROSS_GROUP_ERROR}\r\n")
        );
        let too_many: Vec<Bytes> = std::iter::once(b("MSET"))
            .chain((0..=MULTI_PUT_KEYS_MAX).flat_map(|_| [b("k"), b("v")]))
            .collect();
        assert!(
            reply_text(plan(&too_many, &mut session, groups_total)).contains("exceeds the limit")
        );
    }

    #[test]
    fn per_key_commands_fan_out_in_order_and_combine() {
        // MGET, DEL and EXISTS send one request per key; the replies combine in order, and
        // one failure fails the command.
        let Plan::Requests { ops, shape } = plan_line("MGET a b a") else {
            panic!("MGET plans requests");
        };
        assert_eq!(shape, Shape::Values);
        assert_eq!(
            ops,
            ["a", "b", "a"]
                .map(|k| ClientOp::Get { key: b(k) })
                .to_vec()
        );
        let values = [
            Ok(Reply::Value(Some(b("1")))),
            Ok(Reply::Value(None)),
            Ok(Reply::Value(Some(Bytes::new()))),
        ];
        assert_eq!(
            combine(Shape::Values, &values),
            b"*3\r\n$1\r\n1\r\n$-1\r\n$0\r\n\r\n"
        );
        assert_eq!(combine(Shape::Count, &values), b":2\r\n");
        let deleted = [
            Ok(Reply::Deleted { existed: true }),
            Ok(Reply::Deleted { existed: false }),
        ];
        assert_eq!(combine(Shape::Count, &deleted), b":1\r\n");
        let failed = [
            Ok(Reply::Value(None)),
            Ok(Reply::Error {
                code: ErrorCode::Unavailable,
                message: "no quorum".into(),
            }),
        ];
        assert_eq!(
            combine(Shape::Values, &failed),
            b"-ERR unavailable: no quorum\r\n"
        );
        assert_eq!(
            combine(Shape::WrittenFlag, &[Ok(Reply::PutIf { written: false })]),
            b":0\r\n"
        );
        assert_eq!(
            combine(Shape::Single, &[Ok(Reply::PutIf { written: false })]),
            b"$-1\r\n"
        );
        assert_eq!(
            combine(Shape::Single, &[Ok(Reply::Counter(-3))]),
            b":-3\r\n"
        );
        assert_eq!(
            combine(
                Shape::Single,
                &[Ok(Reply::Error {
                    code: ErrorCode::BadRequest,
                    message: "value is not an integer or out of range".into(),
                })]
            ),
            b"-ERR value is not an integer or out of range\r\n"
        );
        let too_many = std::iter::once(b("DEL"))
            .chain((0..=RESP_FANOUT_KEYS_MAX).map(|_| b("k")))
            .collect::<Vec<_>>();
        assert!(
            reply_text(plan(&too_many, &mut Session::default(), 4)).contains("exceeds the limit")
        );
        assert_eq!(
            reply_text(plan_line("EXISTS")),
            "-ERR wrong number of arguments for 'exists' command\r\n"
        );
    }

    #[test]
    fn connection_commands_answer_at_once() {
        // PING, ECHO, SELECT, CONFIG GET, COMMAND and CLIENT need no request.
        assert_eq!(reply_text(plan_line("ping")), "+PONG\r\n");
        assert_eq!(reply_text(plan_line("ECHO hi")), "$2\r\nhi\r\n");
        assert_eq!(reply_text(plan_line("select 0")), "+OK\r\n");
        assert_eq!(
            reply_text(plan_line("select 3")),
            "-ERR DB index is out of range\r\n"
        );
        assert_eq!(
            reply_text(plan_line("CONFIG GET save")),
            "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"
        );
        assert_eq!(
            reply_text(plan_line("config get appendonly")),
            "*2\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
        );
        assert_eq!(reply_text(plan_line("CONFIG GET maxmemory")), "*0\r\n");
        assert!(reply_text(plan_line("CONFIG GET *")).starts_with("*4\r\n"));
        assert_eq!(reply_text(plan_line("COMMAND")), "*0\r\n");
        assert_eq!(reply_text(plan_line("COMMAND DOCS")), "*0\r\n");
        assert_eq!(reply_text(plan_line("COMMAND COUNT")), ":0\r\n");
        assert_eq!(reply_text(plan_line("QUIT")), "+OK\r\n");
        let mut session = Session::default();
        let mut run = |line: &str| reply_text(plan(&words(line), &mut session, 4));
        assert_eq!(run("CLIENT GETNAME"), "$-1\r\n");
        assert_eq!(run("CLIENT SETNAME bench"), "+OK\r\n");
        assert_eq!(run("client getname"), "$5\r\nbench\r\n");
        assert!(run("CLIENT KILL x").starts_with("-ERR unknown subcommand 'KILL'"));
        assert!(glob_matches(b"app*", b"appendonly") && !glob_matches(b"s?v", b"save"));
    }

    #[test]
    fn info_reports_the_node_and_every_group() {
        // The server section names the node; replication gives each group's role and leader.
        let facts = InfoFacts {
            node: NodeId(2),
            cores: 2,
            groups_total: 2,
            uptime_seconds: 90_000,
            tcp_port: 6379,
            process_id: 7,
            groups: vec![
                GroupStatus {
                    group: GroupId(0),
                    leader: Some(NodeId(2)),
                    term: Term(3),
                    commit: LogIndex(9),
                    applied: LogIndex(9),
                    role: RoleKind::Leader,
                },
                GroupStatus {
                    group: GroupId(1),
                    leader: None,
                    term: Term(1),
                    commit: LogIndex(0),
                    applied: LogIndex(0),
                    role: RoleKind::Follower,
                },
            ],
        };
        let text = info_text(&facts, None);
        for line in [
            "# Server\r\n",
            "redis_version:7.0.0\r\n",
            "node_id:2\r\n",
            "uptime_in_days:1\r\n",
            "\r\n# Replication\r\n",
            "groups_led:1\r\n",
            "group0:role=leader,leader=2,term=3,commit=9,applied=9\r\n",
            "group1:role=follower,leader=none,term=1,commit=0,applied=0\r\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        let replication = info_text(&facts, Some("replication"));
        assert!(replication.starts_with("# Replication") && !replication.contains("# Server"));
        assert_eq!(info_text(&facts, Some("keyspace")), "");
    }
}
