//! RESP2, the Redis serialization protocol, as far as a server needs it: parsing client
//! commands (arrays of bulk strings, and inline commands as redis-cli and telnet send them)
//! and encoding replies. Incremental: `parse_command` takes what has arrived and says how
//! many bytes one command used, or that more are needed. Every limit is enforced and no
//! input makes it panic.

use bytes::Bytes;
use thiserror::Error;

/// Most arguments in one command (MSET of many keys counts each key and value).
pub const RESP_ARGUMENTS_MAX: usize = 1024 * 1024;
/// Longest bulk string accepted (Redis's own `proto-max-bulk-len` default is 512 MiB; a
/// value here is bounded by the key-value limits anyway).
pub const RESP_BULK_BYTES_MAX: usize = 1024 * 1024;
/// Longest line (a header or an inline command).
pub const RESP_LINE_BYTES_MAX: usize = 64 * 1024;
/// Most bytes one command may span in total.
pub const RESP_COMMAND_BYTES_MAX: usize = 16 * 1024 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum RespError {
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: invalid multibulk length")]
    BadArrayLength,
    #[error("Protocol error: invalid bulk length")]
    BadBulkLength,
    #[error("Protocol error: too big inline request")]
    LineTooLong,
    #[error("Protocol error: command of more than {RESP_COMMAND_BYTES_MAX} bytes")]
    CommandTooLarge,
    #[error("Protocol error: missing CRLF after bulk string")]
    MissingCrlf,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// One parsed command: its arguments, the first being the command name.
#[derive(Debug, PartialEq, Eq)]
pub struct RespCommand {
    pub arguments: Vec<Bytes>,
}

/// The result of trying to parse one command from the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole command that used `consumed_bytes` bytes of the buffer.
    Command {
        command: RespCommand,
        consumed_bytes: usize,
    },
    /// An empty inline line (a bare newline), to be skipped.
    Empty { consumed_bytes: usize },
    /// Not all of the command has arrived.
    Incomplete,
}

/// Parses one command at the start of `buffer`. Bulk strings share `buffer`'s memory.
pub fn parse_command(buffer: &Bytes) -> Result<Parsed, RespError> {
    match buffer.first() {
        None => Ok(Parsed::Incomplete),
        Some(b'*') => parse_array(buffer),
        Some(_) => parse_inline(buffer),
    }
}

/// Finds the CRLF-terminated line starting at `start`; returns the line's end (the CR).
fn line_end(buffer: &[u8], start: usize) -> Result<Option<usize>, RespError> {
    let window_end = buffer
        .len()
        .min(start.saturating_add(RESP_LINE_BYTES_MAX + 2));
    let window = buffer.get(start..window_end).unwrap_or_default();
    match window.windows(2).position(|pair| pair == b"\r\n") {
        Some(offset) => Ok(Some(start + offset)),
        None if window.len() >= RESP_LINE_BYTES_MAX + 2 => Err(RespError::LineTooLong),
        None => Ok(None),
    }
}

fn parse_number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse::<i64>().ok()
}

fn parse_array(buffer: &Bytes) -> Result<Parsed, RespError> {
    let Some(end) = line_end(buffer, 1)? else {
        return Ok(Parsed::Incomplete);
    };
    let count = parse_number(&buffer[1..end]).ok_or(RespError::BadArrayLength)?;
    if count > RESP_ARGUMENTS_MAX as i64 {
        return Err(RespError::BadArrayLength);
    }
    let mut position = end + 2;
    if count <= 0 {
        return Ok(Parsed::Empty {
            consumed_bytes: position,
        });
    }
    let mut arguments = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        if position > RESP_COMMAND_BYTES_MAX {
            return Err(RespError::CommandTooLarge);
        }
        let Some(&marker) = buffer.get(position) else {
            return Ok(Parsed::Incomplete);
        };
        if marker != b'$' {
            return Err(RespError::ExpectedBulk(char::from(marker)));
        }
        let Some(end) = line_end(buffer, position + 1)? else {
            return Ok(Parsed::Incomplete);
        };
        let length = parse_number(&buffer[position + 1..end]).ok_or(RespError::BadBulkLength)?;
        if !(0..=RESP_BULK_BYTES_MAX as i64).contains(&length) {
            return Err(RespError::BadBulkLength);
        }
        let start = end + 2;
        let stop = start + length as usize;
        if buffer.len() < stop + 2 {
            return Ok(Parsed::Incomplete);
        }
        if &buffer[stop..stop + 2] != b"\r\n" {
            return Err(RespError::MissingCrlf);
        }
        arguments.push(buffer.slice(start..stop));
        position = stop + 2;
    }
    Ok(Parsed::Command {
        command: RespCommand { arguments },
        consumed_bytes: position,
    })
}

/// An inline command: one line of space-separated words, with double quotes as redis-cli
/// and telnet users write them. A lone `\n` also ends the line.
fn parse_inline(buffer: &Bytes) -> Result<Parsed, RespError> {
    let window = &buffer[..buffer.len().min(RESP_LINE_BYTES_MAX + 1)];
    let Some(newline) = window.iter().position(|&b| b == b'\n') else {
        if window.len() > RESP_LINE_BYTES_MAX {
            return Err(RespError::LineTooLong);
        }
        return Ok(Parsed::Incomplete);
    };
    let consumed_bytes = newline + 1;
    let line = buffer[..newline]
        .strip_suffix(b"\r")
        .unwrap_or(&buffer[..newline]);
    let arguments = split_inline(line)?;
    if arguments.is_empty() {
        return Ok(Parsed::Empty { consumed_bytes });
    }
    Ok(Parsed::Command {
        command: RespCommand { arguments },
        consumed_bytes,
    })
}

fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, RespError> {
    let mut arguments = Vec::new();
    let mut current = Vec::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut bytes = line.iter().copied();
    while let Some(byte) = bytes.next() {
        match (quoted, byte) {
            (true, b'"') => quoted = false,
            (true, b'\\') => current.push(bytes.next().ok_or(RespError::UnbalancedQuotes)?),
            (true, other) => current.push(other),
            (false, b'"') => {
                quoted = true;
                in_word = true;
            }
            (false, b' ' | b'\t') => {
                if in_word {
                    arguments.push(Bytes::from(std::mem::take(&mut current)));
                    in_word = false;
                }
            }
            (false, other) => {
                current.push(other);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(RespError::UnbalancedQuotes);
    }
    if in_word {
        arguments.push(Bytes::from(current));
    }
    Ok(arguments)
}

/// Appends RESP2 replies to an output buffer.
pub struct RespWriter<'a> {
    pub out: &'a mut Vec<u8>,
}

impl RespWriter<'_> {
    pub fn simple(&mut self, text: &str) {
        self.line(b'+', text.as_bytes());
    }

    /// An error reply; `text` starts with its kind in capitals (`ERR`, `WRONGTYPE`, ...). Line
    /// breaks are replaced, as a reply must stay on one line.
    pub fn error(&mut self, text: &str) {
        let clean: String = text
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        self.line(b'-', clean.as_bytes());
    }

    pub fn integer(&mut self, value: i64) {
        self.line(b':', value.to_string().as_bytes());
    }

    pub fn bulk(&mut self, value: &[u8]) {
        self.line(b'$', value.len().to_string().as_bytes());
        self.out.extend_from_slice(value);
        self.out.extend_from_slice(b"\r\n");
    }

    pub fn null(&mut self) {
        self.out.extend_from_slice(b"$-1\r\n");
    }

    pub fn array_header(&mut self, count: usize) {
        self.line(b'*', count.to_string().as_bytes());
    }

    fn line(&mut self, marker: u8, text: &[u8]) {
        self.out.push(marker);
        self.out.extend_from_slice(text);
        self.out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &'static [u8]) -> Result<Parsed, RespError> {
        parse_command(&Bytes::from_static(text))
    }

    fn args(parsed: Parsed) -> (Vec<String>, usize) {
        match parsed {
            Parsed::Command {
                command,
                consumed_bytes,
            } => (
                command
                    .arguments
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
                consumed_bytes,
            ),
            other => panic!("expected a command, got {other:?}"),
        }
    }

    #[test]
    fn arrays_of_bulk_strings_parse_and_report_their_length() {
        // A pipelined buffer yields its first command and exactly the bytes it used.
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nv\r\nv!\r\n*1\r\n$4\r\nPING\r\n";
        let (arguments, consumed) = args(parse(input).expect("valid"));
        assert_eq!(arguments, ["SET", "k", "v\r\nv!"]);
        assert_eq!(consumed, input.len() - b"*1\r\n$4\r\nPING\r\n".len());
    }

    #[test]
    fn every_prefix_of_a_command_is_incomplete() {
        // Bytes that arrive one at a time are never mistaken for a command or an error.
        let input = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
        for end in 0..input.len() {
            assert_eq!(
                parse_command(&Bytes::copy_from_slice(&input[..end])),
                Ok(Parsed::Incomplete),
                "{end}"
            );
        }
        assert_eq!(args(parse(input).expect("valid")).1, input.len());
    }

    #[test]
    fn inline_commands_split_on_spaces_and_honour_quotes() {
        // redis-cli and telnet users send plain lines, with quotes for spaces.
        assert_eq!(
            args(parse(b"set k \"a b\\\" c\"\r\n").expect("valid")).0,
            ["set", "k", "a b\" c"]
        );
        assert_eq!(
            args(parse(b"PING\n").expect("valid")),
            (vec!["PING".to_string()], 5)
        );
        assert_eq!(parse(b"\r\n"), Ok(Parsed::Empty { consumed_bytes: 2 }));
        assert_eq!(parse(b"get \"k\n"), Err(RespError::UnbalancedQuotes));
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        // Each kind of garbage gets the error Redis itself would give.
        assert_eq!(parse(b"*x\r\n"), Err(RespError::BadArrayLength));
        assert_eq!(parse(b"*1\r\n:1\r\n"), Err(RespError::ExpectedBulk(':')));
        assert_eq!(parse(b"*1\r\n$-5\r\n"), Err(RespError::BadBulkLength));
        assert_eq!(parse(b"*1\r\n$1\r\nab\r\n"), Err(RespError::MissingCrlf));
        assert_eq!(parse(b"*99999999999\r\n"), Err(RespError::BadArrayLength));
        let long = Bytes::from(vec![b'a'; RESP_LINE_BYTES_MAX + 10]);
        assert_eq!(parse_command(&long), Err(RespError::LineTooLong));
    }

    #[test]
    fn replies_encode_as_resp2() {
        // Each reply type has its RESP2 form; errors never break the line.
        let mut out = Vec::new();
        let mut writer = RespWriter { out: &mut out };
        writer.simple("OK");
        writer.error("ERR bad\r\nthing");
        writer.integer(-3);
        writer.bulk(b"hi");
        writer.null();
        writer.array_header(2);
        assert_eq!(
            out,
            b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*2\r\n"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic_and_never_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            // Whatever arrives, the parser answers within the buffer.
            let buffer = Bytes::from(bytes);
            match parse_command(&buffer) {
                Ok(Parsed::Command { consumed_bytes, .. } | Parsed::Empty { consumed_bytes }) => {
                    prop_assert!(consumed_bytes > 0 && consumed_bytes <= buffer.len());
                }
                Ok(Parsed::Incomplete) | Err(_) => {}
            }
        }
    }
}
