//! The configuration of one Raft group (`RaftConfig`) and the state a restart or a fresh
//! bootstrap hands in (`RestoredState`). Plain data with defaults taken from
//! `crate::constants`; this file must not hold behaviour of the protocol itself.

use crate::constants;
use crate::ids::{EntryId, GroupId, LogIndex, NodeId, Ticks};
use crate::raft::types::{HardState, Membership, SnapshotMeta};

/// How one group's `RaftNode` behaves. Build with `RaftConfig::new` and adjust fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftConfig {
    pub id: NodeId,
    /// For log lines only; the core never routes by it.
    pub group: GroupId,
    /// Base election timeout; each election draws its timeout from `[base, 2 * base)` (§5.2).
    pub election_timeout_ticks: Ticks,
    pub heartbeat_interval_ticks: Ticks,
    /// Thesis §9.6: ask for votes without raising the term first.
    pub pre_vote: bool,
    /// Thesis §6.2: a leader steps down without a quorum heard from within an election
    /// timeout, and followers that heard from a leader recently ignore votes (the lease).
    pub check_quorum: bool,
    /// Append messages in flight to one follower in the replicate state.
    pub inflight_appends_max: usize,
    /// Entry bytes in flight to one follower in the replicate state.
    pub inflight_bytes_max: u64,
    /// Entry bytes in one append message (at least one entry is always sent), and what one
    /// `Ready` hands one follower once a message is out: a follower catching up gets the
    /// rest as its acknowledgements come back, so no round encodes and writes megabytes to
    /// it while live requests wait behind that round.
    pub append_bytes_max: u64,
    /// Entries in one append message.
    pub append_entries_max: usize,
    /// Bytes of proposed, uncommitted entries a leader accepts before refusing proposals.
    pub uncommitted_bytes_max: u64,
    /// Bytes of entries kept in memory beyond what is still needed (see `RaftNode`).
    pub tail_bytes_max: u64,
    /// Entry bytes handed out as `committed_entries` by one `Ready`.
    pub apply_bytes_max: u64,
    /// Test-only rule breakers, so that tests and checkers can show they catch a broken rule.
    #[cfg(test)]
    pub canary: Option<Canary>,
}

/// A deliberate violation of one Raft rule, for tests that must prove they can fail.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Canary {
    /// Commit by counting replicas of entries from older terms (breaks paper Figure 8).
    CommitOldTermEntries,
    /// Grant votes at once and never persist them (breaks §5.2 one vote per term on restart).
    VoteNotPersisted,
    /// Acknowledge a received snapshot before it is durable (breaks "followers acknowledge
    /// only durable state", thesis §5).
    SnapshotAckedBeforePersist,
}

/// WAL bytes `RaftConfig::fit_persists_within` leaves for what a persist writes besides
/// entries (hard state, snapshot mark with its membership, batch header).
const PERSIST_MARGIN_BYTES: u64 = 4096;

impl RaftConfig {
    /// A configuration with every default from `crate::constants`.
    pub fn new(id: NodeId, group: GroupId) -> RaftConfig {
        RaftConfig {
            id,
            group,
            election_timeout_ticks: Ticks(constants::ELECTION_TIMEOUT_TICKS_DEFAULT),
            heartbeat_interval_ticks: Ticks(constants::HEARTBEAT_INTERVAL_TICKS_DEFAULT),
            pre_vote: true,
            check_quorum: true,
            inflight_appends_max: constants::INFLIGHT_APPENDS_MAX,
            inflight_bytes_max: constants::INFLIGHT_BYTES_MAX,
            append_bytes_max: constants::APPEND_BYTES_MAX,
            append_entries_max: constants::APPEND_ENTRIES_MAX,
            uncommitted_bytes_max: constants::UNCOMMITTED_BYTES_MAX,
            tail_bytes_max: constants::TAIL_BYTES_MAX,
            apply_bytes_max: constants::APPLY_BYTES_MAX,
            #[cfg(test)]
            canary: None,
        }
    }

    /// Lowers the byte limits so that no `Persist` of this group needs more than `bytes` of
    /// WAL records: a leader persists at most its uncommitted entries (the first proposal
    /// is admitted alone, so at most one command, which is also held to the uncommitted
    /// limit: `command_bytes_max`), a follower at most its in-flight window plus one
    /// message, and a WAL record costs at most twice an entry's counted size
    /// (`Entry::size_bytes`). A quarter of `bytes` for each, less a margin for the hard
    /// state, snapshot mark and batch headers, keeps every persist within it.
    pub fn fit_persists_within(&mut self, bytes: u64) {
        let quarter = bytes.saturating_sub(PERSIST_MARGIN_BYTES) / 4;
        self.uncommitted_bytes_max = self.uncommitted_bytes_max.min(quarter);
        self.append_bytes_max = self.append_bytes_max.min(quarter);
        self.inflight_bytes_max = self.inflight_bytes_max.min(quarter);
    }

    /// Bytes of one proposed command; larger ones are refused (`ProposeError::TooLarge`).
    pub fn command_bytes_max(&self) -> u64 {
        constants::COMMAND_BYTES_MAX.min(self.uncommitted_bytes_max)
    }

    /// Panics, naming the values, if the configuration cannot work.
    pub fn validate(&self) {
        assert!(
            self.heartbeat_interval_ticks.get() > 0,
            "group {}: heartbeat interval must be positive",
            self.group
        );
        assert!(
            self.heartbeat_interval_ticks < self.election_timeout_ticks,
            "group {}: heartbeat interval {} must be below election timeout {}",
            self.group,
            self.heartbeat_interval_ticks,
            self.election_timeout_ticks
        );
        assert!(
            self.inflight_appends_max > 0 && self.append_entries_max > 0,
            "group {}: inflight_appends_max {} and append_entries_max {} must be positive",
            self.group,
            self.inflight_appends_max,
            self.append_entries_max
        );
        assert!(
            self.append_bytes_max > 0 && self.inflight_bytes_max >= self.append_bytes_max,
            "group {}: append_bytes_max {} must be positive and at most inflight_bytes_max {}",
            self.group,
            self.append_bytes_max,
            self.inflight_bytes_max
        );
    }
}

/// What a restart (or a fresh bootstrap) hands to `RaftNode::new`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestoredState {
    pub hard_state: HardState,
    pub membership: Membership,
    /// The newest durable snapshot (thesis §5): the log starts after its last entry, and the
    /// commit index is at least that entry's index. `applied` must be at least its index
    /// too: the caller restored the state machine from it.
    pub snapshot: Option<SnapshotMeta>,
    /// The first entry of each run of equal terms, ascending; empty when the log is empty.
    pub term_runs: Vec<EntryId>,
    pub last_index: LogIndex,
    /// The state machine has applied every entry up to here.
    pub applied: LogIndex,
    /// Zero, unless this node lost state it may have acknowledged (a snapshot it needs did
    /// not load, so it restarts with an empty log): until its log reaches this index again,
    /// through the leader's snapshot and appends, it neither votes nor campaigns. A vote
    /// promises the voter holds what it acknowledged (paper §5.4.1); without the floor this
    /// node could elect a candidate that misses entries committed with its help.
    pub vote_floor: LogIndex,
}

impl RestoredState {
    /// The state of a brand new member of `membership`: empty log, term 0, no vote.
    pub fn bootstrap(membership: Membership) -> RestoredState {
        RestoredState {
            hard_state: HardState::default(),
            membership,
            snapshot: None,
            term_runs: Vec::new(),
            last_index: LogIndex::ZERO,
            applied: LogIndex::ZERO,
            vote_floor: LogIndex::ZERO,
        }
    }
}
