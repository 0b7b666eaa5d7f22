//! Majority arithmetic for one group's voters: the highest value a majority has reached
//! (commit index §5.3/§5.4, confirmed ReadIndex round §6.4) and vote tallies (§5.2).
//! Pure functions over small slices; must not know roles, messages or the log.

/// The largest value `v` such that at least a majority of `values` is `>= v`: the
/// `quorum`-th largest. Reorders `values` (the caller passes a scratch copy). Runs in
/// O(n) with no allocation. An empty slice yields `None`.
pub fn majority_value(values: &mut [u64]) -> Option<u64> {
    if values.is_empty() {
        return None;
    }
    let quorum = values.len() / 2 + 1;
    // The quorum-th largest is at position len - quorum in ascending order.
    let position = values.len() - quorum;
    let (_, value, _) = values.select_nth_unstable(position);
    Some(*value)
}

/// The same as `majority_value`, computed the obvious way: try every value and keep the
/// largest that a majority reaches. Quadratic; for the property test only.
pub fn majority_value_naive(values: &[u64]) -> Option<u64> {
    let quorum = values.len() / 2 + 1;
    values
        .iter()
        .copied()
        .filter(|&candidate| values.iter().filter(|&&v| v >= candidate).count() >= quorum)
        .max()
}

/// The outcome of an election so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteResult {
    Won,
    Lost,
    Pending,
}

/// Tally `granted` and `rejected` votes out of `voter_count` voters (§5.2: a majority wins;
/// once a majority can no longer be reached, the election is lost).
pub fn tally(granted: usize, rejected: usize, voter_count: usize) -> VoteResult {
    assert!(
        granted + rejected <= voter_count,
        "tally: granted {granted} + rejected {rejected} > voters {voter_count}"
    );
    let quorum = voter_count / 2 + 1;
    if granted >= quorum {
        VoteResult::Won
    } else if voter_count - rejected < quorum {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn majority_value_fast_matches_naive(values in proptest::collection::vec(0u64..20, 0..12)) {
            // The O(n) selection agrees with the quadratic definition on every input (§5.3).
            let mut scratch = values.clone();
            prop_assert_eq!(majority_value(&mut scratch), majority_value_naive(&values));
        }

        #[test]
        fn tally_never_both_won_and_lost(voters in 1usize..10, granted in 0usize..10, rejected in 0usize..10) {
            // A tally is Won exactly when a majority granted, Lost exactly when a majority
            // can no longer be reached (§5.2).
            prop_assume!(granted + rejected <= voters);
            let quorum = voters / 2 + 1;
            let result = tally(granted, rejected, voters);
            prop_assert_eq!(result == VoteResult::Won, granted >= quorum);
            prop_assert_eq!(result == VoteResult::Lost, granted < quorum && voters - rejected < quorum);
        }
    }

    #[test]
    fn majority_of_three_is_the_median() {
        // With three voters the commit index is the second largest match (§5.3).
        assert_eq!(majority_value(&mut [5, 1, 3]), Some(3));
        assert_eq!(majority_value(&mut [7]), Some(7));
        assert_eq!(majority_value(&mut [4, 9]), Some(4));
        assert_eq!(majority_value(&mut []), None);
    }
}
