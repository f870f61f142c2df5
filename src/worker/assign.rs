//! Which partitions a replica consumes in partitioned mode: the live
//! replicas, sorted by name, take the partitions in turn, so each has P/R
//! of them, rounded, and every replica computes the same answer from the
//! same list.

/// The partitions of `partitions` that `me` consumes, given the live
/// replicas `live` (sorted). None if `me` is not among them.
pub(super) fn owned(partitions: usize, live: &[String], me: &str) -> Vec<usize> {
    let Some(index) = live.iter().position(|n| n == me) else {
        return Vec::new();
    };
    (0..partitions)
        .filter(|p| p % live.len() == index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("worker-{i}")).collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_shares_differ_by_at_most_one() {
        for partitions in 1..=12 {
            for replicas in 1..=6 {
                let live = names(replicas);
                let mut owners = vec![0; partitions];
                let mut shares = Vec::new();
                for me in &live {
                    let mine = owned(partitions, &live, me);
                    shares.push(mine.len());
                    for p in mine {
                        owners[p] += 1;
                    }
                }
                assert!(
                    owners.iter().all(|o| *o == 1),
                    "P={partitions} R={replicas}"
                );
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(max.unwrap() - min.unwrap() <= 1, "{shares:?}");
            }
        }
    }

    #[test]
    fn a_replica_not_live_owns_nothing() {
        assert!(owned(4, &names(2), "worker-9").is_empty());
        assert!(owned(4, &[], "worker-0").is_empty());
    }

    #[test]
    fn four_partitions_over_two_replicas() {
        let live = names(2);
        assert_eq!(owned(4, &live, "worker-0"), vec![0, 2]);
        assert_eq!(owned(4, &live, "worker-1"), vec![1, 3]);
    }
}
