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
/// Entry bytes in flight to one follower in the replicate state.
pub const INFLIGHT_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Entry bytes handed to the state machine by one Raft `Ready`.
pub const APPLY_BYTES_MAX: u64 = 4 * 1024 * 1024;
/// Voters of one group; vote tallies are bitsets of this many bits.
pub const VOTERS_MAX: usize = 32;

const _: () = assert!(HEARTBEAT_INTERVAL_TICKS_DEFAULT < ELECTION_TIMEOUT_TICKS_DEFAULT);
const _: () = assert!(COMMAND_BYTES_MAX <= APPEND_BYTES_MAX);
const _: () = assert!(APPEND_BYTES_MAX <= UNCOMMITTED_BYTES_MAX);
const _: () = assert!(INFLIGHT_APPENDS_MAX > 0 && APPEND_ENTRIES_MAX > 0);
const _: () = assert!(APPEND_BYTES_MAX <= INFLIGHT_BYTES_MAX);
const _: () = assert!(COMMAND_BYTES_MAX <= APPLY_BYTES_MAX);
const _: () = assert!(VOTERS_MAX > 0 && VOTERS_MAX <= 64);

/// Simulated time units per tick: messages and syncs complete between ticks, not on them.
pub const SIM_TICK_UNITS: u64 = 8;
/// Ticks of fault injection per simulated seed, unless a caller asks for another count.
pub const SIM_SAFETY_TICKS_DEFAULT: u64 = 300;
/// Ticks a healed simulated cluster has to elect leaders and commit in every group.
pub const SIM_LIVENESS_TICKS_MAX: u64 = 400;
/// Extra ticks the liveness phase grants per entry of the longest log (catch-up time).
pub const SIM_LIVENESS_TICKS_PER_ENTRY: u64 = 8;
/// `Ready`s one simulated replica may produce in a row before the simulator calls it a loop.
pub const SIM_READY_ROUNDS_MAX: usize = 1000;

const _: () = assert!(SIM_TICK_UNITS >= 2);
const _: () = assert!(SIM_LIVENESS_TICKS_MAX > 4 * ELECTION_TIMEOUT_TICKS_DEFAULT as u64);
