//! How long to wait before trying again.

use rand::Rng;
use std::time::Duration;

/// The wait before retry `attempt` (1, 2, ...) while a server is failing:
/// the cap doubles from `2 * base_ms` up to `max_ms`, and the wait is drawn
/// uniformly from the upper half of the cap (never 0, so a failing server
/// is not hammered; jittered, so replicas spread out).
pub fn backoff(base_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let cap = base_ms
        .saturating_mul(1 << attempt.min(20))
        .min(max_ms)
        .max(1);
    Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
}

/// The wait before retry `attempt` after a lost WATCH race: drawn uniformly
/// from zero to a cap that doubles from `2 * base` up to `max` ("full
/// jitter"), so replicas that collided do not collide again in lockstep.
pub fn full_jitter(base: Duration, max: Duration, attempt: u32) -> Duration {
    let cap = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    rand::rng().random_range(Duration::ZERO..=cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_in_the_upper_half_of_a_doubling_capped_window() {
        for attempt in 1..30 {
            let cap = (100u64 << attempt.min(20)).min(5000);
            let d = backoff(100, 5000, attempt).as_millis() as u64;
            assert!((cap / 2..=cap).contains(&d), "attempt {attempt}: {d} ms");
        }
    }

    #[test]
    fn full_jitter_stays_under_a_doubling_capped_window() {
        let (base, max) = (Duration::from_millis(1), Duration::from_millis(50));
        for attempt in 1..30 {
            let cap = (1u64 << attempt.min(16)).min(50);
            assert!(full_jitter(base, max, attempt) <= Duration::from_millis(cap));
        }
    }
}
