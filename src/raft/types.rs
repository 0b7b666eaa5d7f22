//! The data of one Raft group that crosses the core's boundary: entries, hard state,
//! messages, and the `Ready` that tells the caller what to persist, send and apply.
//!
//! Plain data only: no I/O, no encoding (wire/ maps these to flatbuffers), no behaviour
//! beyond small constructors and accessors.

use bytes::Bytes;

use crate::ids::{EntryId, LogIndex, NodeId, Term};

/// What an entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A client command for the state machine.
    Command,
    /// The empty entry a new leader appends to commit its predecessors' entries (paper §8).
    Empty,
    /// A membership change (thesis §4.3); payload is an encoded `Membership`. Later issues.
    Membership,
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub id: EntryId,
    pub kind: EntryKind,
    pub data: Bytes,
}

impl Entry {
    pub fn index(&self) -> LogIndex {
        self.id.index
    }

    pub fn term(&self) -> Term {
        self.id.term
    }

    /// Bytes this entry counts against byte limits (payload plus a fixed header estimate).
    pub fn size_bytes(&self) -> u64 {
        self.data.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// Fixed per-entry cost counted by byte limits, so that empty entries are not free.
pub const ENTRY_OVERHEAD_BYTES: u64 = 24;

/// The state every node must persist before it answers (paper Figure 2): current term, the
/// vote of that term, and the commit index (persisted so that restart never applies less
/// than before and never re-applies; DESIGN §4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: LogIndex,
    /// Zero, unless this node restarted without state it may have acknowledged
    /// (`RestoredState::vote_floor`): it neither votes nor campaigns until its log reaches
    /// this index again. Persisted so that a second restart before then keeps the floor.
    pub vote_floor: LogIndex,
}

/// The voters (and later learners) of a group. Sorted, without duplicates.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

impl Membership {
    pub fn new(mut voters: Vec<NodeId>) -> Membership {
        voters.sort_unstable();
        voters.dedup();
        Membership {
            voters,
            learners: Vec::new(),
        }
    }

    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters.binary_search(&node).is_ok()
    }

    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What a snapshot covers: every entry up to `last` is folded into it (thesis §5). The Raft
/// core carries only this metadata; the state machine's bytes are the caller's to store and
/// stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub last: EntryId,
    pub membership: Membership,
}

/// How the layer that streams a snapshot's data to a follower ended the transfer, reported to
/// the leader with `RaftNode::report_snapshot` (etcd's ReportSnapshot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// Every chunk reached the follower: replication probes on from the snapshot's last entry.
    Finished,
    /// The transfer was dropped: the follower is probed again after a heartbeat round, which
    /// offers the snapshot again if it is still needed.
    Failed,
}

/// A caller-chosen tag that identifies one ReadIndex request (thesis §6.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReadContext(pub u64);

/// A ReadIndex request that may now be served: the state machine has applied at least
/// `index`, which was the leader's commit index when the request was confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: ReadContext,
    pub index: LogIndex,
}

/// A message between two nodes' instances of the same group. The group itself is carried by
/// the Multi-Raft layer around it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term; for a pre-vote request, the term it would campaign in.
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Thesis §9.6: would you vote for me in `term`? Changes no state on the receiver.
    PreVote {
        last: EntryId,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// Paper §5.2 RequestVote. `leader_transfer` lets the candidate through the receiver's
    /// leader lease (thesis §3.10, §4.2.3).
    Vote {
        last: EntryId,
        leader_transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// Paper §5.3 AppendEntries: `entries` follow `prev`; `commit` is the leader's commit.
    Append {
        prev: EntryId,
        entries: Vec<Entry>,
        commit: LogIndex,
    },
    AppendResponse(AppendResponse),
    /// An empty AppendEntries that carries the commit index (bounded by what the receiver is
    /// known to hold) and, when a ReadIndex round is open, its number.
    Heartbeat {
        commit: LogIndex,
        read_round: Option<u64>,
    },
    HeartbeatResponse {
        read_round: Option<u64>,
    },
    /// A follower forwards a ReadIndex request to its leader.
    ReadIndex {
        context: ReadContext,
    },
    /// The leader's answer: `index` once confirmed, or `None` if it could not serve it.
    ReadIndexResponse {
        context: ReadContext,
        index: Option<LogIndex>,
    },
    /// Thesis §3.10: start an election now, skipping pre-vote and the lease.
    TimeoutNow,
    /// Thesis §5 (paper §7): the leader no longer has the entries this follower needs. The
    /// layer around the core streams the snapshot's data and steps this message on the
    /// receiver only once the whole snapshot is staged.
    InstallSnapshot {
        snapshot: SnapshotMeta,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppendResponse {
    /// The follower's log now matches the leader's through `last_index` and it is durable.
    Accepted { last_index: LogIndex },
    /// The follower has no entry matching `rejected` (the append's `prev`). `hint` is the
    /// follower's guess of the latest entry that may match: its last entry at or below
    /// `rejected.index` whose term is at most `rejected.term` (fast backtracking, thesis
    /// §5.3 and etcd's findConflictByTerm).
    ///
    /// `lost`: the follower restarted without state it may have acknowledged and has not
    /// rebuilt it yet (its log ends below its vote floor, `RestoredState::vote_floor`). Its
    /// old acknowledgements are void: the leader lowers the follower's match to `hint`
    /// instead of taking the rejection for a stale one.
    Rejected {
        rejected: EntryId,
        hint: EntryId,
        lost: bool,
    },
}

/// A position in one group's stream of persistence requests. Each `Persist` carries the
/// next position; `on_persisted(p)` says everything up to and including `p` is durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistPosition(pub u64);

/// State the caller must make durable, in order, before releasing
/// `Ready::messages_after_persist` and calling `on_persisted(position)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Persist {
    pub position: PersistPosition,
    /// Entries to append. If the first one's index is at or below the last persisted index,
    /// every persisted entry from that index on is replaced (conflicting suffix truncated).
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// A snapshot received from the leader, to install before `entries`: the caller makes the
    /// staged state machine data current and writes the snapshot mark (every entry up to
    /// `last` folded in; a log that does not hold `last` is discarded, thesis §5.1) durably
    /// before it calls `on_persisted`. The core never hands out committed entries past the
    /// snapshot before then.
    pub snapshot: Option<SnapshotMeta>,
}

/// A request to read entries `[first, last]` back from the WAL, because they are no longer
/// in memory; answered with `RaftNode::on_fetched`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fetch {
    pub first: LogIndex,
    pub last: LogIndex,
    pub bytes_max: u64,
}

/// The role of this node in its group, as the caller may observe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleKind {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Volatile state the caller may want to log or route by; reported when it changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub role: RoleKind,
    pub term: Term,
    pub leader: Option<NodeId>,
}

/// Everything one group asks of its caller. Handling a Ready:
/// 1. send `messages` now (a leader's appends go out in parallel with its own write);
/// 2. persist `persist`, then release `messages_after_persist` and call `on_persisted`;
/// 3. apply `committed_entries` in order and call `on_applied` with the last index applied;
/// 4. serve `read_states`; answer `fetch` with `on_fetched`.
///
/// `messages_after_persist` is non-empty only together with a `persist`. Messages that wait
/// for a persist handed out in an earlier Ready stay inside the node and come out in
/// `messages` once `on_persisted` covers it. `committed_entries` never go past the commit
/// index of a hard state handed out in this or an earlier Ready. `read_states` are
/// confirmed by a heartbeat quorum (thesis §6.4) and applied; reads pending when leadership
/// is lost are dropped without a trace here: the caller sees the change in `soft_state` and
/// fails or retries what it still waits for.
#[derive(Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    pub persist: Option<Persist>,
    pub messages: Vec<Message>,
    pub messages_after_persist: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    pub fetch: Option<Fetch>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.persist.is_none()
            && self.messages.is_empty()
            && self.messages_after_persist.is_empty()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
            && self.fetch.is_none()
    }
}
