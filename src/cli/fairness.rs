//! First come, first served, measured: an accepted command is an
//! *inversion* when, on the same resource, a command published before it
//! and asking for no more was refused `sold_out` (or `customer_limit`, for
//! the same customer). In a sale where nothing is given back (no cancels,
//! no expiries), a fair order of decisions has none: what was too much for
//! the earlier request is too much for the later one.
//!
//! Shared by `rush`, `bench` and the integration tests.

use reservation_worker::domain::{self, CommandId, Reason};
use reservation_worker::message::CommandBody;
use std::collections::{HashMap, HashSet};

/// How a command was decided, as far as fairness goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    SoldOut,
    CustomerLimit,
    /// Any other rejection: says nothing about the order.
    Other,
}

impl Verdict {
    /// From an outcome event's verdict.
    pub fn of(outcome: &domain::Verdict) -> Verdict {
        match outcome.reason() {
            None => Verdict::Accepted,
            Some(Reason::SoldOut) => Verdict::SoldOut,
            Some(Reason::CustomerLimit) => Verdict::CustomerLimit,
            Some(_) => Verdict::Other,
        }
    }
}

/// One decided command.
#[derive(Debug, Clone)]
pub struct Decided<'a> {
    /// Its place in the order the commands were published.
    pub order: usize,
    pub resource: &'a str,
    pub customer: &'a str,
    pub quantity: u32,
    pub verdict: Verdict,
}

/// Inversions among the accepted commands.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unfairness {
    /// Commands accepted.
    pub accepted: usize,
    /// Of those, accepted after a refused command that asked for no more.
    pub inversions: usize,
}

impl Unfairness {
    /// The inversions' share of the accepted commands (0 when none was).
    pub fn share(&self) -> f64 {
        self.inversions as f64 / self.accepted.max(1) as f64
    }

    /// `S % (N of M)`: the share, the inversions, the accepted commands.
    pub fn describe(&self) -> String {
        format!(
            "{:.1} % ({} of {})",
            100.0 * self.share(),
            self.inversions,
            self.accepted
        )
    }
}

/// Counts the inversions of `decided`, in any order given.
pub fn measure(mut decided: Vec<Decided<'_>>) -> Unfairness {
    decided.sort_by_key(|d| d.order);
    // The smallest quantity refused so far: per resource for sold_out,
    // per resource and customer for customer_limit.
    let mut sold_out: HashMap<&str, u32> = HashMap::new();
    let mut over_limit: HashMap<(&str, &str), u32> = HashMap::new();
    let mut u = Unfairness::default();
    for d in &decided {
        match d.verdict {
            Verdict::Accepted => {
                u.accepted += 1;
                let refused_before =
                    |smallest: Option<&u32>| smallest.is_some_and(|q| *q <= d.quantity);
                if refused_before(sold_out.get(d.resource))
                    || refused_before(over_limit.get(&(d.resource, d.customer)))
                {
                    u.inversions += 1;
                }
            }
            Verdict::SoldOut => {
                let q = sold_out.entry(d.resource).or_insert(d.quantity);
                *q = (*q).min(d.quantity);
            }
            Verdict::CustomerLimit => {
                let q = over_limit
                    .entry((d.resource, d.customer))
                    .or_insert(d.quantity);
                *q = (*q).min(d.quantity);
            }
            Verdict::Other => {}
        }
    }
    u
}

/// The inversions among `bodies`' reserves, in the order they were
/// published (a repeated command at its first place), each with its first
/// outcome as `verdict` gives it (`None`: not decided, left out).
pub fn of_reserves(
    bodies: &[CommandBody],
    verdict: impl Fn(&CommandId) -> Option<Verdict>,
) -> Unfairness {
    let mut first = HashSet::new();
    let decided = bodies
        .iter()
        .enumerate()
        .filter(|(_, b)| first.insert(b.command_id()))
        .filter_map(|(order, b)| match b {
            CommandBody::Reserve {
                command_id,
                resource_id,
                customer_id,
                quantity,
            } => Some(Decided {
                order,
                resource: resource_id.as_str(),
                customer: customer_id.as_str(),
                quantity: *quantity,
                verdict: verdict(command_id)?,
            }),
            _ => None,
        })
        .collect();
    measure(decided)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(
        order: usize,
        customer: &'static str,
        quantity: u32,
        verdict: Verdict,
    ) -> Decided<'static> {
        Decided {
            order,
            resource: "hall",
            customer,
            quantity,
            verdict,
        }
    }

    #[test]
    fn a_fair_sellout_has_no_inversions() {
        let u = measure(vec![
            d(0, "a", 2, Verdict::Accepted),
            d(1, "b", 2, Verdict::SoldOut),
            // One seat was left: a smaller request after a larger refusal is fair.
            d(2, "c", 1, Verdict::Accepted),
            d(3, "d", 1, Verdict::SoldOut),
        ]);
        assert_eq!(
            u,
            Unfairness {
                accepted: 2,
                inversions: 0
            }
        );
    }

    #[test]
    fn accepted_after_an_equal_or_smaller_refusal_is_an_inversion() {
        let u = measure(vec![
            d(0, "a", 1, Verdict::SoldOut),
            d(1, "b", 1, Verdict::Accepted),
            d(2, "c", 2, Verdict::Accepted),
        ]);
        assert_eq!(
            u,
            Unfairness {
                accepted: 2,
                inversions: 2
            }
        );
        assert_eq!(u.describe(), "100.0 % (2 of 2)");
    }

    #[test]
    fn the_publish_order_counts_not_the_order_given() {
        let u = measure(vec![
            d(5, "b", 1, Verdict::Accepted),
            d(1, "a", 1, Verdict::SoldOut),
        ]);
        assert_eq!(u.inversions, 1);
    }

    #[test]
    fn a_customer_limit_binds_that_customer_only() {
        let u = measure(vec![
            d(0, "a", 2, Verdict::CustomerLimit),
            d(1, "b", 2, Verdict::Accepted),
            d(2, "a", 1, Verdict::Accepted),
            d(3, "a", 2, Verdict::Accepted),
        ]);
        assert_eq!(
            u,
            Unfairness {
                accepted: 3,
                inversions: 1
            }
        );
    }

    #[test]
    fn other_resources_and_other_reasons_do_not_count() {
        let mut list = vec![
            d(0, "a", 1, Verdict::Other),
            d(1, "b", 1, Verdict::Accepted),
        ];
        list.push(Decided {
            order: 2,
            resource: "other-hall",
            customer: "c",
            quantity: 1,
            verdict: Verdict::SoldOut,
        });
        list.push(d(3, "d", 1, Verdict::Accepted));
        assert_eq!(measure(list).inversions, 0);
        let rejected = |reason| domain::Verdict::Rejected {
            reason,
            detail: String::new(),
        };
        assert_eq!(
            Verdict::of(&rejected(Reason::BudgetExceeded)),
            Verdict::Other
        );
        assert_eq!(Verdict::of(&rejected(Reason::SoldOut)), Verdict::SoldOut);
        assert_eq!(Verdict::of(&domain::Verdict::Accepted), Verdict::Accepted);
    }
}
