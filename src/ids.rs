//! Identifiers and counters shared by every room. Each is a newtype so that a term can never
//! be passed where an index is expected; absence is `Option`, never zero.
//!
//! This module owns no behaviour beyond arithmetic that is checked (release builds keep
//! `overflow-checks = true`), and must not depend on any other room.

use std::fmt;

macro_rules! counter {
    ($(#[$doc:meta])* $name:ident, $inner:ty) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub $inner);

        impl $name {
            pub const ZERO: $name = $name(0);

            pub const fn get(self) -> $inner {
                self.0
            }

            /// The next value; panics on overflow, which no real workload reaches.
            #[must_use]
            pub fn next(self) -> $name {
                $name(self.0 + 1)
            }

            /// The previous value, or `None` at zero.
            #[must_use]
            pub fn prev(self) -> Option<$name> {
                self.0.checked_sub(1).map($name)
            }
        }

        impl fmt::Display for $name {
            // Delegates to the number, so width and alignment flags apply to it.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

counter!(
    /// A Raft term (paper §5.1). Term 0 is the term before any election.
    Term,
    u64
);
counter!(
    /// A position in one group's Raft log. Index 0 is the empty prefix; the first entry is 1.
    LogIndex,
    u64
);
counter!(
    /// A node (server process) of the cluster. Node ids are chosen by the operator, from 1.
    NodeId,
    u64
);
counter!(
    /// A Raft group. Keys map to groups by hash; groups map to cores the same way on every node.
    GroupId,
    u32
);
counter!(
    /// A CPU core of one node, and the shard it runs.
    CoreId,
    u16
);
counter!(
    /// A count of logical clock ticks. The Raft core knows time only as ticks.
    Ticks,
    u32
);

impl LogIndex {
    /// `self + count`, checked.
    #[must_use]
    pub fn plus(self, count: u64) -> LogIndex {
        LogIndex(self.0 + count)
    }

    /// Number of indexes in `(older, self]`; panics if `older > self`.
    pub fn distance_from(self, older: LogIndex) -> u64 {
        assert!(older <= self, "distance_from: older {older} > newer {self}");
        self.0 - older.0
    }
}

/// The identity of one log entry: its index and the term it was created in. Two logs that
/// hold an entry with the same `EntryId` are identical up to it (paper §5.3, Log Matching).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryId {
    pub term: Term,
    pub index: LogIndex,
}

impl EntryId {
    pub const ZERO: EntryId = EntryId {
        term: Term::ZERO,
        index: LogIndex::ZERO,
    };

    pub const fn new(term: Term, index: LogIndex) -> EntryId {
        EntryId { term, index }
    }

    /// Raft's "at least as up-to-date" order (paper §5.4.1): later last term wins, then the
    /// longer log.
    pub fn is_up_to_date_with(self, other: EntryId) -> bool {
        (self.term, self.index) >= (other.term, other.index)
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.index, self.term)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_honours_width() {
        // Status tables align ids and indexes with `{:>6}`; the newtypes must pass it on.
        assert_eq!(format!("[{:>4}]", GroupId(7)), "[   7]");
        assert_eq!(format!("[{:<3}]", Term(12)), "[12 ]");
    }

    #[test]
    fn up_to_date_orders_by_term_then_index() {
        // Paper §5.4.1: the later last term wins, and with equal terms the longer log wins.
        let a = EntryId::new(Term(2), LogIndex(5));
        let b = EntryId::new(Term(3), LogIndex(1));
        assert!(b.is_up_to_date_with(a));
        assert!(!a.is_up_to_date_with(b));
        assert!(a.is_up_to_date_with(EntryId::new(Term(2), LogIndex(4))));
        assert!(a.is_up_to_date_with(a));
    }
}
