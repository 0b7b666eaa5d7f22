//! The invariant checkers of one Raft group, fed by the cluster as it observes the nodes:
//! Election Safety (one leader per term, one vote per node and term), Log Matching, Leader
//! Completeness, State Machine Safety (paper §5.4, Figure 3), durability of committed
//! entries on a quorum (a snapshot that folds an entry in holds it), snapshots that agree
//! with what was committed (thesis §5), and linearizable ReadIndex (thesis §6.4).
//!
//! This module owns what has been observed (leaders, votes, committed entries, pending
//! reads) and judges it. It must not drive nodes or the network, and must not trust the
//! core's own view of what is committed beyond what nodes actually applied.

use std::collections::HashMap;

use crate::ids::{EntryId, LogIndex, NodeId, Term};
use crate::raft::{Entry, ReadContext, ReadState};

use super::storage::{LogState, SimSnapshot, chain_hash, entry_digest};

/// An entry some node applied, so it is committed.
#[derive(Clone, Copy, Debug)]
struct CommittedEntry {
    id: EntryId,
    digest: u64,
    /// The prefix hash of the committed log through this entry: what a snapshot of the
    /// state machine at this index must carry.
    chain: u64,
    /// An upper bound on the term in which it was committed: the lowest term any node was in
    /// when it applied the entry. A node learns a commit index from a leader of its own term
    /// or an earlier one, so leaders of later terms must hold the entry (§5.4.3).
    commit_term_bound: Term,
}

/// The observed history of one group and the judgements on it.
#[derive(Debug)]
pub struct GroupChecker {
    quorum: usize,
    leaders: HashMap<Term, NodeId>,
    votes: HashMap<(NodeId, Term), NodeId>,
    /// The prefix hash of every entry id ever seen in any node's log.
    chains: HashMap<EntryId, u64>,
    /// Committed entries; the entry at index `i` sits at `committed[i - 1]`.
    committed: Vec<CommittedEntry>,
    /// Reads requested: the highest index known committed at the request.
    reads: HashMap<ReadContext, LogIndex>,
    pub reads_checked: u64,
}

impl GroupChecker {
    pub fn new(voter_count: usize) -> GroupChecker {
        assert!(voter_count > 0, "checker: a group needs voters");
        GroupChecker {
            quorum: voter_count / 2 + 1,
            leaders: HashMap::new(),
            votes: HashMap::new(),
            chains: HashMap::new(),
            committed: Vec::new(),
            reads: HashMap::new(),
            reads_checked: 0,
        }
    }

    /// The highest index any node has applied.
    pub fn committed_index(&self) -> LogIndex {
        LogIndex(self.committed.len() as u64)
    }

    pub fn committed_id(&self, index: LogIndex) -> Option<EntryId> {
        self.committed_at(index).map(|committed| committed.id)
    }

    fn committed_at(&self, index: LogIndex) -> Option<&CommittedEntry> {
        let position = usize::try_from(index.get().checked_sub(1)?).ok()?;
        self.committed.get(position)
    }

    pub fn leader_count(&self) -> usize {
        self.leaders.len()
    }

    /// Election Safety (§5.2): at most one leader per term.
    pub fn on_leader(&mut self, node: NodeId, term: Term) -> Result<(), String> {
        match self.leaders.insert(term, node) {
            Some(other) if other != node => Err(format!(
                "election safety: nodes {other} and {node} both led term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// A node grants at most one candidate per term (Figure 2, votedFor).
    pub fn on_vote_granted(
        &mut self,
        voter: NodeId,
        term: Term,
        candidate: NodeId,
    ) -> Result<(), String> {
        match self.votes.insert((voter, term), candidate) {
            Some(other) if other != candidate => Err(format!(
                "vote safety: node {voter} voted for {other} and then {candidate} in term {term}"
            )),
            _ => Ok(()),
        }
    }

    /// Log Matching (§5.3): entries with one id have one prefix, in every log, at all times.
    /// Checks the entries of `log` from `first` on, which a write just appended.
    pub fn on_log_appended(
        &mut self,
        node: NodeId,
        log: &LogState,
        first: LogIndex,
    ) -> Result<(), String> {
        let mut index = first.max(log.snapshot_index().next());
        while index <= log.last_index() {
            let (Some(entry), Some(chain)) = (log.entry(index), log.chain_at(index)) else {
                break;
            };
            let known = *self.chains.entry(entry.id).or_insert(chain);
            if known != chain {
                return Err(format!(
                    "log matching: node {node} holds entry {} with a prefix (or payload) \
                     unlike another log's",
                    entry.id
                ));
            }
            index = index.next();
        }
        Ok(())
    }

    /// State Machine Safety (§5.4.3): no two nodes apply different entries at one index.
    /// `term` is the applying node's current term, which bounds the commit's term.
    pub fn on_applied(&mut self, node: NodeId, term: Term, entry: &Entry) -> Result<(), String> {
        let digest = entry_digest(entry);
        let next = self.committed_index().next();
        if entry.index() == next {
            let previous = self.committed.last().map_or(0, |committed| committed.chain);
            self.committed.push(CommittedEntry {
                id: entry.id,
                digest,
                chain: chain_hash(previous, entry),
                commit_term_bound: term,
            });
            return Ok(());
        }
        let position = usize::try_from(entry.index().get().saturating_sub(1)).unwrap_or(0);
        let Some(known) = self.committed.get_mut(position) else {
            return Err(format!(
                "state machine safety: node {node} applied {} while the highest committed \
                 index anyone applied is {}: a gap",
                entry.id,
                next.prev().unwrap_or(LogIndex::ZERO)
            ));
        };
        if known.id != entry.id || known.digest != digest {
            return Err(format!(
                "state machine safety: node {node} applied {} at index {} where {} was applied",
                entry.id,
                entry.index(),
                known.id
            ));
        }
        known.commit_term_bound = known.commit_term_bound.min(term);
        Ok(())
    }

    /// Leader Completeness (§5.4): a leader of `term` holds every entry committed in an
    /// earlier term. `from` limits the check to committed indexes at or above it.
    pub fn check_leader_log(
        &self,
        leader: NodeId,
        term: Term,
        log: &LogState,
        from: LogIndex,
    ) -> Result<(), String> {
        let skip = usize::try_from(from.get().saturating_sub(1)).unwrap_or(usize::MAX);
        for committed in self.committed.iter().skip(skip) {
            if committed.commit_term_bound >= term {
                continue;
            }
            let held = log.entry(committed.id.index);
            if !self.holds(log, committed) {
                return Err(format!(
                    "leader completeness: leader {leader} of term {term} lacks committed entry {} \
                     (committed by term {} at the latest); it holds {:?}",
                    committed.id,
                    committed.commit_term_bound,
                    held.map(|entry| entry.id)
                ));
            }
        }
        Ok(())
    }

    /// No committed entry is ever lost: each is durable on a quorum of nodes.
    pub fn check_durable_on_quorum<'a>(
        &self,
        durable_logs: impl Iterator<Item = &'a LogState> + Clone,
    ) -> Result<(), String> {
        for committed in &self.committed {
            let holders = durable_logs
                .clone()
                .filter(|log| self.holds(log, committed))
                .count();
            if holders < self.quorum {
                return Err(format!(
                    "durability: committed entry {} is durable on {holders} nodes, fewer than a \
                     quorum of {}",
                    committed.id, self.quorum
                ));
            }
        }
        Ok(())
    }

    /// Whether `log` holds a committed entry: as that very entry, or folded into a snapshot
    /// of the committed prefix that reaches it.
    fn holds(&self, log: &LogState, committed: &CommittedEntry) -> bool {
        if let Some(entry) = log.entry(committed.id.index) {
            return entry.id == committed.id && entry_digest(entry) == committed.digest;
        }
        let Some(snapshot) = log.snapshot() else {
            return false;
        };
        snapshot.last.index >= committed.id.index
            && self
                .committed_at(snapshot.last.index)
                .is_some_and(|at| at.id == snapshot.last && at.chain == snapshot.chain)
    }

    /// State machines agree (§5.4.3, thesis §5): a snapshot a node takes or installs is the
    /// state of the committed prefix through its last entry, which some node applied.
    pub fn on_snapshot(&mut self, node: NodeId, snapshot: SimSnapshot) -> Result<(), String> {
        let Some(at) = self.committed_at(snapshot.last.index) else {
            return Err(format!(
                "snapshot safety: node {node} holds a snapshot at {} but only {} entries were \
                 ever applied",
                snapshot.last,
                self.committed_index()
            ));
        };
        if at.id != snapshot.last || at.chain != snapshot.chain {
            return Err(format!(
                "snapshot safety: node {node} holds a snapshot at {} unlike the committed \
                 prefix through {}",
                snapshot.last, at.id
            ));
        }
        let known = *self.chains.entry(snapshot.last).or_insert(snapshot.chain);
        if known != snapshot.chain {
            return Err(format!(
                "log matching: node {node}'s snapshot at {} has a prefix unlike a log's",
                snapshot.last
            ));
        }
        Ok(())
    }

    /// A ReadIndex request was accepted: its answer must cover what is committed now.
    pub fn on_read_requested(&mut self, context: ReadContext) {
        let known = self.committed_index();
        let previous = self.reads.insert(context, known);
        assert!(
            previous.is_none(),
            "checker: read context {context:?} used twice"
        );
    }

    /// Linearizable reads (thesis §6.4): the read index covers every entry known committed
    /// when the read was requested.
    pub fn on_read_state(&mut self, node: NodeId, read: ReadState) -> Result<(), String> {
        // A duplicated forward may be answered twice; each answer is judged alike.
        let Some(&known) = self.reads.get(&read.context) else {
            return Err(format!(
                "read index: node {node} answered read {:?} that nobody requested",
                read.context
            ));
        };
        self.reads_checked += 1;
        if read.index < known {
            return Err(format!(
                "linearizability: node {node} answered read {:?} at index {} but {known} was \
                 already committed when it was requested",
                read.context, read.index
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::raft::EntryKind;

    fn entry(term: u64, index: u64, data: &'static str) -> Entry {
        Entry {
            id: EntryId::new(Term(term), LogIndex(index)),
            kind: EntryKind::Command,
            data: Bytes::from_static(data.as_bytes()),
        }
    }

    #[test]
    fn detects_two_leaders_double_vote_and_divergent_apply() {
        // Each checker fires on the violation it is named after and stays quiet otherwise.
        let mut checker = GroupChecker::new(3);
        checker.on_leader(NodeId(1), Term(2)).unwrap();
        checker.on_leader(NodeId(1), Term(2)).unwrap();
        assert!(checker.on_leader(NodeId(2), Term(2)).is_err());
        checker
            .on_vote_granted(NodeId(3), Term(2), NodeId(1))
            .unwrap();
        assert!(
            checker
                .on_vote_granted(NodeId(3), Term(2), NodeId(2))
                .is_err()
        );
        checker
            .on_applied(NodeId(1), Term(2), &entry(2, 1, "a"))
            .unwrap();
        checker
            .on_applied(NodeId(2), Term(3), &entry(2, 1, "a"))
            .unwrap();
        assert!(
            checker
                .on_applied(NodeId(3), Term(3), &entry(3, 1, "b"))
                .is_err()
        );
        assert!(
            checker
                .on_applied(NodeId(3), Term(3), &entry(3, 5, "b"))
                .is_err()
        );
    }

    #[test]
    fn read_below_known_commit_is_caught() {
        // A read requested after index 1 was applied must not be answered at index 0.
        let mut checker = GroupChecker::new(3);
        checker
            .on_applied(NodeId(1), Term(1), &entry(1, 1, "a"))
            .unwrap();
        checker.on_read_requested(ReadContext(7));
        let stale = ReadState {
            context: ReadContext(7),
            index: LogIndex(0),
        };
        assert!(checker.on_read_state(NodeId(2), stale).is_err());
        checker.on_read_requested(ReadContext(8));
        let fresh = ReadState {
            context: ReadContext(8),
            index: LogIndex(1),
        };
        checker.on_read_state(NodeId(2), fresh).unwrap();
        assert_eq!(checker.reads_checked, 2);
    }
}
