//! Every limit and default of ringraft, in one place, with compile-time checks of how they
//! relate. Rooms take their limits from here (or from a config built from here), never from
//! a literal of their own.

/// Default ticks without a leader message before a follower starts an election. The actual
/// timeout is drawn uniformly from `[base, 2 * base)` per election (paper §5.2).
pub const ELECTION_TIMEOUT_TICKS_DEFAULT: u32 = 10;
/// Default ticks between a leader's heartbeats.
pub const HEARTBEAT_INTERVAL_TICKS_DEFAULT: u32 = 1;
/// Append messages in flight to one follower in the replicate state (pipelining window).
pub const INFLIGHT_APPENDS_MAX: usize = 256;
/// Payload bytes of entries carried by one append message.
pub const APPEND_BYTES_MAX: u64 = 1024 * 1024;
/// Entries carried by one append message.
pub const APPEND_ENTRIES_MAX: usize = 4096;
/// Proposed but not yet committed payload bytes a leader accepts before refusing proposals.
pub const UNCOMMITTED_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// One command's payload bytes.
pub const COMMAND_BYTES_MAX: u64 = 1024 * 1024;
/// Payload bytes of log entries a group keeps in memory beyond what every peer and the state
/// machine still need; older entries are read back from the WAL on demand.
pub const TAIL_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Pending ReadIndex requests per group.
pub const READ_INDEX_PENDING_MAX: usize = 4096;

const _: () = assert!(HEARTBEAT_INTERVAL_TICKS_DEFAULT < ELECTION_TIMEOUT_TICKS_DEFAULT);
const _: () = assert!(COMMAND_BYTES_MAX <= APPEND_BYTES_MAX);
const _: () = assert!(APPEND_BYTES_MAX <= UNCOMMITTED_BYTES_MAX);
const _: () = assert!(INFLIGHT_APPENDS_MAX > 0 && APPEND_ENTRIES_MAX > 0);

/// Bytes of one WAL segment file, by default. Segments are allocated ahead of need at this size.
pub const WAL_SEGMENT_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// The smallest segment the WAL accepts (tests use small segments to exercise roll-over).
pub const WAL_SEGMENT_BYTES_MIN: u64 = 16 * 1024;
/// The largest segment the WAL accepts: recovery reads a whole segment into memory.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// The header block at the start of every segment. Records start after it. It is the largest
/// direct-I/O alignment the WAL supports, so the layout does not depend on the device.
pub const WAL_HEADER_BLOCK_BYTES: u64 = 4096;
/// Zero-filled segments kept ready beyond the one being written, by default.
pub const WAL_SPARE_SEGMENTS_DEFAULT: usize = 2;
/// Payload bytes of one WAL record; an entry's data plus its fixed fields must fit.
pub const WAL_RECORD_PAYLOAD_BYTES_MAX: u64 = COMMAND_BYTES_MAX + 4096;
/// Bytes of one read issued by recovery or by a fetch.
pub const WAL_READ_BYTES_MAX: u64 = 1024 * 1024;
/// Voters plus learners of a membership stored in a snapshot mark.
pub const WAL_MEMBERS_MAX: usize = 1024;

const _: () = assert!(WAL_SEGMENT_BYTES_MIN.is_multiple_of(WAL_HEADER_BLOCK_BYTES));
const _: () = assert!(WAL_SEGMENT_BYTES_DEFAULT.is_multiple_of(WAL_HEADER_BLOCK_BYTES));
const _: () = assert!(WAL_SEGMENT_BYTES_MIN <= WAL_SEGMENT_BYTES_DEFAULT);
const _: () = assert!(WAL_SEGMENT_BYTES_DEFAULT <= WAL_SEGMENT_BYTES_MAX);
const _: () = assert!(WAL_RECORD_PAYLOAD_BYTES_MAX + 4096 < WAL_SEGMENT_BYTES_DEFAULT);
const _: () = assert!(WAL_READ_BYTES_MAX.is_multiple_of(WAL_HEADER_BLOCK_BYTES));

/// Bytes of I/O memory each glommio executor registers with each of its three io_uring
/// rings. Zero (glommio rounds it up to 64 KiB, about 192 KiB locked per executor) is safe
/// whatever `ulimit -l` says and costs nothing measurable for WAL writes; values of 1-3 MiB
/// made ring set-up fail with ENOMEM when many executors started at once.
pub const EXECUTOR_IO_MEMORY_BYTES_DEFAULT: usize = 0;
/// The most I/O memory an executor may be configured with.
pub const EXECUTOR_IO_MEMORY_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Bytes of zeros written per request when a new WAL segment is allocated.
pub const WAL_ZERO_FILL_CHUNK_BYTES: u64 = 1024 * 1024;
/// Zero-filling writes in flight at once while a segment is allocated (GLOMMIO.md: 1 MiB x 4
/// write-behind reached 1.5-1.7 GB/s).
pub const WAL_ZERO_FILL_WRITES_IN_FLIGHT: usize = 4;
const _: () = assert!(WAL_ZERO_FILL_CHUNK_BYTES.is_multiple_of(WAL_HEADER_BLOCK_BYTES));
