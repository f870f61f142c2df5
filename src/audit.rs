//! The audit: what the histories say the state is, compared with what the
//! store holds.
//!
//! A resource's state is folded from its event history alone, from scratch
//! ([`fold`]), and compared field by field with the stored aggregate
//! ([`resource_differences`]). A budget is checked three ways
//! ([`budget_differences`]): its cap against its own history, each
//! customer's `spent` against the sum of their entries, and that sum
//! against the amounts the resources recorded on the customer's live
//! reservations and holds ([`Recorded`]). Nothing here does I/O: `verify`
//! reads, these compare.

use crate::domain::{
    Budget, BudgetEvent, BudgetId, CustomerId, EntryKey, Event, ResourceId, Spending, State,
    Status, apply, apply_budget,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// What differs about one resource or budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `resource` or `budget`.
    pub kind: &'static str,
    /// Its id.
    pub id: String,
    /// Each difference, for humans.
    pub differences: Vec<String>,
}

/// The state a history leads to: every accepted event applied in order,
/// from an empty state. With `until`, only the events up to that version:
/// the state as of that version.
pub fn fold<'a>(history: impl IntoIterator<Item = &'a Event>, until: Option<u64>) -> State {
    history
        .into_iter()
        .take_while(|e| until.is_none_or(|v| e.version <= v))
        .fold(State::default(), apply)
}

/// A budget's history folded from nothing.
pub fn fold_budget<'a>(history: impl IntoIterator<Item = &'a BudgetEvent>) -> Option<Budget> {
    history.into_iter().fold(None, apply_budget)
}

/// How `stored` differs from `folded`, field by field. A holding of 0 and
/// an absent one are the same.
pub fn resource_differences(folded: &State, stored: &State) -> Vec<String> {
    let mut out = Vec::new();
    match (&folded.resource, &stored.resource) {
        (None, None) => {}
        (Some(_), None) => out.push("the history defines it but no state is stored".into()),
        (None, Some(_)) => out.push("a state is stored but the history never defines it".into()),
        (Some(f), Some(s)) => {
            let fields = [
                ("capacity", f.capacity.to_string(), s.capacity.to_string()),
                ("reserved", f.reserved.to_string(), s.reserved.to_string()),
                ("held", f.held.to_string(), s.held.to_string()),
                (
                    "per_customer_limit",
                    format!("{:?}", f.per_customer_limit),
                    format!("{:?}", s.per_customer_limit),
                ),
                ("price", f.price.to_string(), s.price.to_string()),
                (
                    "budget_id",
                    format!("{:?}", f.budget_id.as_ref().map(|b| b.as_str())),
                    format!("{:?}", s.budget_id.as_ref().map(|b| b.as_str())),
                ),
                ("version", f.version.to_string(), s.version.to_string()),
            ];
            for (name, want, got) in fields {
                if want != got {
                    out.push(format!("{name}: history says {want}, stored {got}"));
                }
            }
        }
    }
    let customers: BTreeSet<&CustomerId> = folded
        .holdings
        .keys()
        .chain(stored.holdings.keys())
        .collect();
    for c in customers {
        let (want, got) = (folded.held_by(c), stored.held_by(c));
        if want != got {
            out.push(format!(
                "holding of customer {c}: history says {want}, stored {got}"
            ));
        }
    }
    let ids: BTreeSet<_> = folded
        .reservations
        .keys()
        .chain(stored.reservations.keys())
        .collect();
    for id in ids {
        match (folded.reservations.get(id), stored.reservations.get(id)) {
            (Some(want), Some(got)) if want == got => {}
            (Some(want), Some(got)) => out.push(format!(
                "reservation {id}: history says {}, stored {}",
                json(want),
                json(got)
            )),
            (Some(_), None) => out.push(format!("reservation {id}: in the history, not stored")),
            (None, Some(_)) => out.push(format!("reservation {id}: stored, not in the history")),
            (None, None) => {}
        }
    }
    out
}

fn json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// What resources recorded as spent, per budget and customer: the amount
/// of each live reservation and hold (reserved, held, confirmed), by its
/// entry (resource, reservation).
pub type RecordedSpending = BTreeMap<CustomerId, BTreeMap<EntryKey, u64>>;

/// [`RecordedSpending`] of every budget.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recorded(pub BTreeMap<BudgetId, RecordedSpending>);

impl Recorded {
    /// Adds one resource's live reservations.
    pub fn add(&mut self, resource: &ResourceId, state: &State) {
        for (id, r) in &state.reservations {
            let live = matches!(
                r.status,
                Status::Reserved | Status::Held | Status::Confirmed
            );
            if let (true, Some(budget), Some(amount)) = (live, &r.budget_id, r.amount) {
                self.0
                    .entry(budget.clone())
                    .or_default()
                    .entry(r.customer_id.clone())
                    .or_default()
                    .insert((resource.clone(), id.clone()), amount);
            }
        }
    }
}

/// How a budget differs from its history and from what its resources
/// recorded. `recorded` is what the resources hold for this budget (empty
/// when none names it).
pub fn budget_differences(
    folded: Option<&Budget>,
    stored: Option<&Budget>,
    spendings: &BTreeMap<CustomerId, Spending>,
    recorded: &RecordedSpending,
) -> Vec<String> {
    let mut out = Vec::new();
    if folded != stored {
        out.push(format!(
            "cap: history says {}, stored {}",
            describe(folded),
            describe(stored)
        ));
    }
    let customers: BTreeSet<&CustomerId> = spendings.keys().chain(recorded.keys()).collect();
    for c in customers {
        let spending = spendings.get(c).cloned().unwrap_or_default();
        let entries: u64 = spending.entries.values().map(|e| e.counted()).sum();
        if spending.spent != entries {
            out.push(format!(
                "customer {c}: spent is {} but their entries add up to {entries}",
                spending.spent
            ));
        }
        let mut unsettled: Vec<_> = spending
            .entries
            .iter()
            .filter(|(_, e)| !e.open.is_empty())
            .collect();
        unsettled.sort_by(|a, b| a.0.cmp(b.0));
        for ((resource, command), entry) in unsettled {
            out.push(format!(
                "customer {c}: {:?} set aside for take {command} on {resource} is not settled \
                 (a decision in flight, or one whose command never came back)",
                entry.open
            ));
        }
        // Entry by entry: what the budget keeps for each take is what the
        // resource recorded for that reservation, while it is live.
        let live = recorded.get(c).cloned().unwrap_or_default();
        let keys: BTreeSet<&EntryKey> = live
            .keys()
            .chain(
                spending
                    .entries
                    .iter()
                    .filter(|(_, e)| e.kept.is_some())
                    .map(|(k, _)| k),
            )
            .collect();
        for key in keys {
            let kept = spending.entries.get(key).and_then(|e| e.kept);
            let want = live.get(key).copied();
            if kept != want {
                let (resource, take) = key;
                out.push(format!(
                    "customer {c}: take {take} on {resource}: the budget keeps {}, the resource recorded {}",
                    kept.map_or("nothing".into(), |k| k.to_string()),
                    want.map_or("no live reservation".into(), |w| w.to_string()),
                ));
            }
        }
    }
    out
}

fn describe(budget: Option<&Budget>) -> String {
    budget.map_or("nothing".into(), |b| {
        format!(
            "{} per customer at version {}",
            b.per_customer_amount, b.version
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Entry, Reservation, Resource};

    fn customer(s: &str) -> CustomerId {
        CustomerId::try_from(s).unwrap()
    }

    fn budget(s: &str) -> BudgetId {
        BudgetId::try_from(s).unwrap()
    }

    fn resource(capacity: u32, reserved: u32) -> Resource {
        Resource {
            capacity,
            reserved,
            held: 0,
            per_customer_limit: None,
            price: 10,
            budget_id: Some(budget("b")),
            former_budgets: Vec::new(),
            version: 2,
        }
    }

    #[test]
    fn equal_states_have_no_differences_and_a_tampered_one_is_named() {
        let mut state = State {
            resource: Some(resource(10, 2)),
            ..State::default()
        };
        state.holdings.insert(customer("u"), 2);
        assert!(resource_differences(&state, &state).is_empty());
        let mut tampered = state.clone();
        tampered.resource = Some(resource(10, 3));
        tampered.holdings.insert(customer("u"), 0);
        tampered.holdings.insert(customer("v"), 0);
        assert_eq!(
            resource_differences(&state, &tampered),
            [
                "reserved: history says 2, stored 3",
                "holding of customer u: history says 2, stored 0",
            ]
        );
    }

    #[test]
    fn a_budget_must_keep_what_its_resources_recorded() {
        let mut state = State::default();
        state.reservations.insert(
            crate::domain::CommandId::try_from("c").unwrap(),
            Reservation {
                customer_id: customer("u"),
                quantity: 1,
                status: Status::Reserved,
                expires_at: None,
                amount: Some(30),
                budget_id: Some(budget("b")),
            },
        );
        let mut recorded = Recorded::default();
        recorded.add(&crate::domain::ResourceId::try_from("r").unwrap(), &state);
        let recorded = &recorded.0[&budget("b")];
        let entry = |kept| Entry {
            open: Vec::new(),
            kept: Some(kept),
            closed: false,
        };
        let spendings = |kept: u64, spent: u64| {
            let mut s = Spending {
                spent,
                ..Spending::default()
            };
            s.entries.insert(
                (
                    crate::domain::ResourceId::try_from("r").unwrap(),
                    crate::domain::CommandId::try_from("c").unwrap(),
                ),
                entry(kept),
            );
            BTreeMap::from([(customer("u"), s)])
        };
        assert!(budget_differences(None, None, &spendings(30, 30), recorded).is_empty());
        assert_eq!(
            budget_differences(None, None, &spendings(30, 40), recorded),
            ["customer u: spent is 40 but their entries add up to 30"]
        );
        assert_eq!(
            budget_differences(None, None, &spendings(20, 20), recorded),
            ["customer u: take c on r: the budget keeps 20, the resource recorded 30"]
        );
    }
}
