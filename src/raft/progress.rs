//! What a leader knows of one follower (thesis §3.5, etcd's Progress): the highest index
//! known to match, the next index to send, whether it is probing (one append at a time,
//! backing up on rejection) or replicating (optimistic pipelining within a window of
//! in-flight appends bounded by count and bytes) or waiting for a snapshot (thesis §5), and
//! whether it was heard from recently (check-quorum, §6.2). Must not build messages or read
//! the log.

use std::collections::VecDeque;

use crate::ids::{LogIndex, NodeId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// One append at a time; `paused` after sending until a response or heartbeat response.
    Probe { paused: bool },
    /// Appends sent optimistically: `next` runs ahead of `matched`.
    Replicate,
    /// A snapshot ending at `last` was offered (thesis §5): no appends and no probes until
    /// the follower acknowledges at least `last` or the transfer is reported finished or
    /// failed.
    Snapshot { last: LogIndex },
}

/// Appends in flight to one follower: the last index of each and their bytes. The window
/// is allocated on first use and released when the follower has been idle, so an idle
/// group pays one pointer per follower.
#[derive(Debug, Default)]
pub(crate) struct Inflights {
    window: Option<Box<Window>>,
}

#[derive(Debug, Default)]
struct Window {
    sent: VecDeque<(LogIndex, u64)>,
    bytes: u64,
}

impl Inflights {
    pub fn count(&self) -> usize {
        self.window.as_ref().map_or(0, |window| window.sent.len())
    }

    pub fn bytes(&self) -> u64 {
        self.window.as_ref().map_or(0, |window| window.bytes)
    }

    pub fn add(&mut self, last: LogIndex, bytes: u64) {
        let window = self.window.get_or_insert_with(Box::default);
        if let Some(&(previous, _)) = window.sent.back() {
            assert!(
                previous < last,
                "inflights: append to {last} after {previous}"
            );
        }
        window.sent.push_back((last, bytes));
        window.bytes += bytes;
    }

    /// Appends up to `index` were acknowledged.
    pub fn free_to(&mut self, index: LogIndex) {
        let Some(window) = &mut self.window else {
            return;
        };
        while let Some(&(last, bytes)) = window.sent.front() {
            if last > index {
                break;
            }
            window.bytes -= bytes;
            window.sent.pop_front();
        }
    }

    pub fn clear(&mut self) {
        if let Some(window) = &mut self.window {
            window.sent.clear();
            window.bytes = 0;
        }
    }

    /// Give the memory back when nothing is in flight.
    pub fn release_if_idle(&mut self) {
        if self.count() == 0 {
            self.window = None;
        }
    }

    pub fn memory_bytes(&self) -> usize {
        self.window.as_ref().map_or(0, |window| {
            std::mem::size_of::<Window>()
                + window.sent.capacity() * std::mem::size_of::<(LogIndex, u64)>()
        })
    }
}

#[derive(Debug)]
pub(crate) struct Progress {
    pub node: NodeId,
    pub voter: bool,
    /// The follower's log matches the leader's through here (and it is durable there).
    pub matched: LogIndex,
    /// The next index to send. Invariant: `matched < next`.
    pub next: LogIndex,
    pub state: ProgressState,
    pub inflights: Inflights,
    /// Heard from since the last check-quorum round (§6.2).
    pub recent_active: bool,
    /// `matched` at the previous check-quorum round: a replicating follower whose match did
    /// not move while entries were in flight lost them and goes back to probing.
    pub matched_at_check: LogIndex,
    /// The newest ReadIndex round this follower acknowledged (thesis §6.4).
    pub read_round_acked: u64,
    /// Heartbeats sent since the last acknowledgement while appends were in flight: too
    /// many means they were lost, and the follower goes back to probing.
    pub heartbeats_since_ack: u8,
    /// Leader ticks before a snapshot may be offered to this follower again (bounds how
    /// often a follower that keeps failing to install one costs a transfer).
    pub snapshot_backoff_ticks: u32,
}

impl Progress {
    pub fn new(node: NodeId, voter: bool, next: LogIndex) -> Progress {
        assert!(
            next > LogIndex::ZERO,
            "progress of {node}: next index must be positive"
        );
        Progress {
            node,
            voter,
            matched: LogIndex::ZERO,
            next,
            state: ProgressState::Probe { paused: false },
            inflights: Inflights::default(),
            recent_active: false,
            matched_at_check: LogIndex::ZERO,
            read_round_acked: 0,
            heartbeats_since_ack: 0,
            snapshot_backoff_ticks: 0,
        }
    }

    /// Bytes of this progress including its in-flight window.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Progress>() + self.inflights.memory_bytes()
    }

    /// The follower acknowledged `index`; returns whether `matched` moved. `compacted` is the
    /// leader's last compacted index: a follower leaving the snapshot state below it is
    /// probed (and offered a newer snapshot), at or above it replicated.
    pub fn acknowledge(&mut self, index: LogIndex, compacted: LogIndex) -> bool {
        self.inflights.free_to(index);
        self.heartbeats_since_ack = 0;
        let moved = index > self.matched;
        if moved {
            self.matched = index;
        }
        if self.next <= self.matched {
            self.next = self.matched.next();
        }
        match self.state {
            ProgressState::Probe { .. } if moved => self.become_replicate(),
            ProgressState::Probe { .. } => self.state = ProgressState::Probe { paused: false },
            ProgressState::Replicate => {}
            // Thesis §5: the follower holds the snapshot (or caught up otherwise).
            ProgressState::Snapshot { last } if self.matched >= last => {
                if self.matched >= compacted {
                    self.become_replicate();
                } else {
                    self.become_probe(self.matched.next());
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
        moved
    }

    /// The follower lost what it acknowledged (`AppendResponse::Rejected::lost`): nothing
    /// it holds counts as matching any more, not even what it rebuilt since (those entries
    /// may be an old leader's), until it acknowledges again.
    pub fn forget_match(&mut self) {
        self.matched = LogIndex::ZERO;
        self.matched_at_check = LogIndex::ZERO;
    }

    /// A snapshot ending at `last` was offered: wait for it (no appends, no probes), and
    /// offer none again for `backoff_ticks`.
    pub fn become_snapshot(&mut self, last: LogIndex, backoff_ticks: u32) {
        assert!(
            last >= self.matched,
            "progress of {}: snapshot at {last} below match {}",
            self.node,
            self.matched
        );
        self.state = ProgressState::Snapshot { last };
        self.next = last.next();
        self.inflights.clear();
        self.snapshot_backoff_ticks = backoff_ticks;
    }

    pub fn become_probe(&mut self, next: LogIndex) {
        assert!(
            next > self.matched,
            "progress of {}: probe next {next} not above match {}",
            self.node,
            self.matched
        );
        self.next = next;
        self.state = ProgressState::Probe { paused: false };
        self.inflights.clear();
    }

    fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next = self.matched.next();
        self.inflights.clear();
    }

    /// A heartbeat goes out: returns true (and goes back to probing) if appends have been
    /// in flight unacknowledged for `heartbeats_max` heartbeats, as if lost.
    pub fn heartbeat_sent(&mut self, heartbeats_max: u8) -> bool {
        if self.state != ProgressState::Replicate || self.inflights.count() == 0 {
            self.heartbeats_since_ack = 0;
            return false;
        }
        self.heartbeats_since_ack = self.heartbeats_since_ack.saturating_add(1);
        if self.heartbeats_since_ack < heartbeats_max {
            return false;
        }
        self.heartbeats_since_ack = 0;
        self.become_probe(self.matched.next());
        true
    }

    /// Whether another append may be sent now.
    pub fn can_send(&self, inflight_appends_max: usize, inflight_bytes_max: u64) -> bool {
        match self.state {
            ProgressState::Probe { paused } => !paused,
            ProgressState::Replicate => {
                self.inflights.count() < inflight_appends_max
                    && self.inflights.bytes() < inflight_bytes_max
            }
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// An append reaching `last` with `bytes` of entries was sent.
    pub fn sent(&mut self, last: LogIndex, bytes: u64, entry_count: usize) {
        assert!(
            !matches!(self.state, ProgressState::Snapshot { .. }),
            "progress of {}: append to {last} sent while a snapshot is pending",
            self.node
        );
        match self.state {
            ProgressState::Probe { .. } => self.state = ProgressState::Probe { paused: true },
            ProgressState::Replicate => {
                if entry_count > 0 {
                    self.next = last.next();
                    self.inflights.add(last, bytes);
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_turns_to_replicate_on_first_match() {
        // Thesis §3.5 flow control: probing until a match is found, then pipelining.
        let mut progress = Progress::new(NodeId(2), true, LogIndex(10));
        progress.sent(LogIndex(10), 8, 1);
        assert!(!progress.can_send(4, 100));
        assert!(progress.acknowledge(LogIndex(10), LogIndex::ZERO));
        assert_eq!(progress.state, ProgressState::Replicate);
        assert_eq!(progress.next, LogIndex(11));
        for last in 11..15 {
            assert!(progress.can_send(4, 100));
            progress.sent(LogIndex(last), 10, 1);
        }
        assert!(!progress.can_send(4, 100), "window of 4 appends is full");
        progress.acknowledge(LogIndex(12), LogIndex::ZERO);
        assert_eq!(progress.inflights.count(), 2);
        assert!(progress.can_send(4, 100));
    }

    #[test]
    fn snapshot_state_waits_for_an_ack_at_its_index() {
        // Thesis §5: while a snapshot is pending nothing is sent; an ack below the snapshot
        // changes nothing, one at or past it resumes replication (or probing, if the leader
        // compacted past it meanwhile).
        let mut progress = Progress::new(NodeId(2), true, LogIndex(3));
        progress.become_snapshot(LogIndex(20), 10);
        assert!(!progress.can_send(4, 100));
        assert_eq!(progress.next, LogIndex(21));
        assert!(progress.acknowledge(LogIndex(5), LogIndex(20)));
        assert_eq!(
            progress.state,
            ProgressState::Snapshot { last: LogIndex(20) }
        );
        assert!(progress.acknowledge(LogIndex(20), LogIndex(20)));
        assert_eq!(progress.state, ProgressState::Replicate);
        assert_eq!(progress.next, LogIndex(21));
        let mut behind = Progress::new(NodeId(3), true, LogIndex(3));
        behind.become_snapshot(LogIndex(20), 10);
        assert!(behind.acknowledge(LogIndex(20), LogIndex(30)));
        assert_eq!(behind.state, ProgressState::Probe { paused: false });
        assert_eq!(behind.next, LogIndex(21));
    }
}
