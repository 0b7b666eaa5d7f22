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

/// Largest payload of one client frame (request or response), bytes.
pub const CLIENT_FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Requests in flight on one client connection before the server answers `Overloaded`.
pub const CLIENT_INFLIGHT_REQUESTS_MAX: usize = 4096;

/// Keys of one multi-put command (RESP `MSET`); its encoded size must also stay within
/// `COMMAND_BYTES_MAX`.
pub const MULTI_PUT_KEYS_MAX: usize = 1024;
/// Keys of one RESP command answered by one request per key (`MGET`, `DEL`, `EXISTS`); each
/// is in flight at once on the connection.
pub const RESP_FANOUT_KEYS_MAX: usize = 1024;

/// Commands of one RESP connection read ahead and not yet answered: the connection reads no
/// more until the oldest are (their replies leave in order).
pub const RESP_PIPELINE_COMMANDS_MAX: usize = 1024;
const _: () = assert!(RESP_FANOUT_KEYS_MAX <= CLIENT_INFLIGHT_REQUESTS_MAX);
const _: () = assert!(MULTI_PUT_KEYS_MAX * 10 <= COMMAND_BYTES_MAX as usize);
const _: () = assert!(
    crate::kv::command::KEY_BYTES_MAX + crate::kv::command::VALUE_BYTES_MAX + 1024
        <= CLIENT_FRAME_BYTES_MAX
);
/// Estimated encoded bytes of one outgoing node-to-node `Batch` (shard/). A round whose
/// messages to one node exceed it sends several batches to that node. Must hold the largest
/// append message (checked in shard/batch.rs, which knows the per-entry overhead).
pub const BATCH_BYTES_MAX: u64 = 8 * 1024 * 1024;
/// Items (messages plus coalesced heartbeat entries) of one `Batch`.
pub const BATCH_ITEMS_MAX: usize = 65_536;
/// Raft groups one core hosts.
pub const GROUPS_PER_CORE_MAX: usize = 65_536;
/// Exclusive upper bound of group ids a core accepts; bounds the dense id -> slot table.
pub const GROUP_ID_LIMIT: u32 = 1 << 20;

const _: () = assert!(BATCH_BYTES_MAX >= 2 * APPEND_BYTES_MAX);
const _: () = assert!(BATCH_ITEMS_MAX >= 2 * INFLIGHT_APPENDS_MAX);
const _: () = assert!(GROUPS_PER_CORE_MAX <= GROUP_ID_LIMIT as usize);

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
/// Bytes of one read while recovery scans the segments at start-up: large, so the device
/// works on many blocks at once (a restart reads every live segment whole).
pub const WAL_RECOVERY_READ_BYTES: u64 = 4 * 1024 * 1024;
/// Voters plus learners of a membership stored in a snapshot mark.
pub const WAL_MEMBERS_MAX: usize = 1024;

const _: () = assert!(WAL_SEGMENT_BYTES_MIN.is_multiple_of(WAL_HEADER_BLOCK_BYTES));
const _: () = assert!(WAL_SEGMENT_BYTES_DEFAULT.is_multiple_of(WAL_HEADER_BLOCK_BYTES));
const _: () = assert!(WAL_SEGMENT_BYTES_MIN <= WAL_SEGMENT_BYTES_DEFAULT);
const _: () = assert!(WAL_SEGMENT_BYTES_DEFAULT <= WAL_SEGMENT_BYTES_MAX);
const _: () = assert!(WAL_RECORD_PAYLOAD_BYTES_MAX + 4096 < WAL_SEGMENT_BYTES_DEFAULT);
const _: () = assert!(WAL_READ_BYTES_MAX.is_multiple_of(WAL_HEADER_BLOCK_BYTES));
const _: () = assert!(WAL_RECOVERY_READ_BYTES.is_multiple_of(WAL_HEADER_BLOCK_BYTES));

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
/// Snapshot chunks one simulated node sends per tick over all its transfers: the bandwidth
/// limit that keeps snapshot streaming from starving live traffic.
pub const SIM_SNAPSHOT_CHUNKS_PER_TICK: u32 = 2;
/// Unacknowledged chunks in flight per simulated snapshot transfer (flow control).
pub const SIM_SNAPSHOT_WINDOW_CHUNKS: usize = 3;
/// Chunks of one simulated snapshot at most (acknowledged as a 64-bit set).
pub const SIM_SNAPSHOT_CHUNKS_MAX: u32 = 12;
/// Ticks an unacknowledged chunk waits before it is sent again.
pub const SIM_SNAPSHOT_RESEND_TICKS: u64 = 4;
/// Ticks without a newly acknowledged chunk after which a transfer is reported failed.
pub const SIM_SNAPSHOT_STALL_TICKS: u64 = 30;

/// Snapshot entries threshold of the simulated shards by default: small, so that short runs
/// take, compact past, stream and install snapshots.
pub const SIM_SHARD_SNAPSHOT_ENTRIES_DEFAULT: u64 = 32;
/// Bytes of one snapshot chunk the simulated shards stream, drawn per transfer in this range
/// (small, so that a snapshot of a short run still takes several chunks).
pub const SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MIN: u64 = 256;
pub const SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MAX: u64 = 8 * 1024;

const _: () = assert!(SIM_TICK_UNITS >= 2);
const _: () = assert!(
    SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MIN > 0
        && SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MIN <= SIM_SHARD_SNAPSHOT_CHUNK_BYTES_MAX
);
const _: () = assert!(SIM_SNAPSHOT_CHUNKS_MAX >= 2 && SIM_SNAPSHOT_CHUNKS_MAX <= 64);
const _: () = assert!(SIM_SNAPSHOT_CHUNKS_PER_TICK > 0 && SIM_SNAPSHOT_WINDOW_CHUNKS > 0);
const _: () = assert!(SIM_SNAPSHOT_RESEND_TICKS < SIM_SNAPSHOT_STALL_TICKS);
const _: () = assert!(SIM_LIVENESS_TICKS_MAX > 4 * ELECTION_TIMEOUT_TICKS_DEFAULT as u64);

/// Largest payload of one node-to-node frame: a `Batch` estimated at `BATCH_BYTES_MAX` plus
/// the flatbuffer's own overhead, with room to spare.
pub const PEER_FRAME_BYTES_MAX: usize = 2 * BATCH_BYTES_MAX as usize;
/// Encoded batches queued for one peer node on one core; past it new batches are dropped
/// (Raft retransmits) rather than memory growing while a peer is slow or down.
pub const PEER_QUEUE_FRAMES_MAX: usize = 1024;
/// Bytes of queued frames a socket writer gathers into one write (one syscall for many
/// responses or batches under load).
pub const SOCKET_WRITE_GATHER_BYTES: usize = 256 * 1024;
/// Bytes a socket reader asks the kernel for at once (many small frames per syscall).
pub const SOCKET_READ_BUFFER_BYTES: usize = 64 * 1024;
/// How long one connection attempt to a peer may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1000;
/// A peer link idle this long checks that its connection is still open before writing: a
/// peer that restarted meanwhile closed it, and frames written into it would be lost (a
/// forwarded client request is not sent again, so its client would wait for its deadline).
pub const PEER_IDLE_CHECK_US: u64 = 1000;
/// First and largest pause between connection attempts to a peer (doubling in between).
pub const PEER_RECONNECT_BACKOFF_MIN_MS: u64 = 20;
pub const PEER_RECONNECT_BACKOFF_MAX_MS: u64 = 1000;
/// Peer batches and forwarded client requests queued for one core's shard before readers
/// wait (backpressure onto the sockets).
pub const CORE_INPUTS_QUEUED_MAX: usize = 4096;
/// Messages in flight on one direction of the channel between two cores of a node.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// Ticks fed to a shard at one wake-up at most: a reactor stalled for longer does not make
/// every election timer fire at once on resuming.
pub const TICKS_PER_WAKE_MAX: u32 = 5;
/// How long a stopping server waits for its leaderships to move and its WAL writes to end.
pub const SHUTDOWN_DRAIN_MS: u64 = 3000;
/// A stopping core whose leaderships have moved keeps running (refusing with `ShuttingDown`,
/// which the forwarding node relays and its client retries) until peers have forwarded it
/// no request for this long: a peer that has not yet heard of the new leader still forwards
/// here, and a forward sent after the process exits would be lost, leaving its client to
/// time out without knowing whether the write took effect. Bounded by `SHUTDOWN_DRAIN_MS`.
pub const SHUTDOWN_FORWARD_QUIET_MS: u64 = 100;
/// The longest a stopped core waits for its last peer frames to be written and its clients
/// to close their connections, answering `ShuttingDown` meanwhile so a busy client learns to
/// go elsewhere instead of finding its connection reset. Idle clients keep it this long.
pub const SHUTDOWN_LINGER_MS: u64 = 300;
/// How long a starting server retries binding a peer port that is in use (a killed
/// predecessor's sockets linger briefly while its io_uring is torn down).
pub const PEER_BIND_RETRY_MS: u64 = 3000;
/// Server-side deadline of a client request.
pub const REQUEST_TIMEOUT_MS: u64 = 5000;

const _: () = assert!(PEER_FRAME_BYTES_MAX <= u32::MAX as usize);
const _: () = assert!(PEER_RECONNECT_BACKOFF_MIN_MS <= PEER_RECONNECT_BACKOFF_MAX_MS);
const _: () = assert!(PEER_QUEUE_FRAMES_MAX > 0 && CORE_INPUTS_QUEUED_MAX > 0);

/// Key and value bytes one step of a snapshot walk emits before it hands back control, so
/// a snapshot never holds the core for long (about half a millisecond of encoding; 256 KiB
/// steps took 2.4 ms on average, perf/README.md "Snapshots").
pub const SNAPSHOT_STEP_BYTES: usize = 64 * 1024;
/// Padding after a snapshot's trailer is below this: the largest direct-I/O alignment
/// supported, the same as the WAL's header block.
pub const SNAPSHOT_PADDING_BYTES_MAX: usize = WAL_HEADER_BLOCK_BYTES as usize;
/// Bytes of each buffer of the snapshot file writer and reader (GLOMMIO.md: 1 MiB buffers
/// with 4 behind reached 1.5-1.7 GB/s).
pub const SNAPSHOT_IO_BUFFER_BYTES: usize = 1024 * 1024;
/// Buffers the snapshot writer writes behind, and the reader reads ahead.
pub const SNAPSHOT_WRITES_IN_FLIGHT: usize = 4;
/// Snapshots of a group kept on disk: the newest, and the one before it in case the newest
/// turns out corrupt.
pub const SNAPSHOTS_KEPT: usize = 2;

/// The largest `data` of one snapshot chunk in a peer batch, bytes; a receiver refuses larger
/// chunks. One chunk must fit a batch beside its envelope (checked again in wire/batch.rs,
/// which knows the envelope's size).
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// The `data` bytes senders put in one snapshot chunk: a multiple of the largest direct-I/O
/// alignment, so a receiver staging chunks at their offsets writes whole aligned blocks.
pub const SNAPSHOT_CHUNK_BYTES: usize = 256 * 1024;

const _: () = assert!(SNAPSHOT_CHUNK_BYTES_MAX as u64 <= BATCH_BYTES_MAX / 2);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES > 0 && SNAPSHOT_CHUNK_BYTES <= SNAPSHOT_CHUNK_BYTES_MAX);
const _: () = assert!(SNAPSHOT_CHUNK_BYTES.is_multiple_of(WAL_HEADER_BLOCK_BYTES as usize));
const _: () = assert!(SNAPSHOT_PADDING_BYTES_MAX.is_power_of_two());
const _: () = assert!(SNAPSHOT_IO_BUFFER_BYTES.is_multiple_of(SNAPSHOT_PADDING_BYTES_MAX));
const _: () = assert!(SNAPSHOT_STEP_BYTES > 0 && SNAPSHOTS_KEPT >= 2);

// Snapshots in a running cluster (thesis chapter 5).
/// Applied entries after which a group takes a snapshot and compacts its log (`--snapshot-entries`).
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 100_000;
/// MiB per second one core may spend streaming snapshots to followers (`--snapshot-send-mib`).
/// At 64, a node catching up from two leaders on the 2-vCPU reference machine kept the live
/// write p99 within 2x of the healthy cluster's (1.67x; 2.25x at 128), perf/README.md.
pub const SNAPSHOT_SEND_MIB_DEFAULT: u64 = 64;
/// Chunks of a snapshot a sender keeps unacknowledged.
pub const SNAPSHOT_SEND_WINDOW_CHUNKS: usize = 4;
/// Without an acknowledgement for this long, a sender sends again from the last acknowledged byte.
pub const SNAPSHOT_RESEND_MS: u64 = 1000;
/// Without progress for this long, a snapshot transfer is given up (the leader offers again).
pub const SNAPSHOT_STALL_MS: u64 = 10_000;
const _: () = assert!(SNAPSHOT_RESEND_MS < SNAPSHOT_STALL_MS && SNAPSHOT_SEND_WINDOW_CHUNKS > 0);
