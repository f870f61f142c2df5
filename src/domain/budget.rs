//! Budgets: a cap on what one customer spends, in total, on every resource
//! that names the budget (contract v2).
//!
//! A customer's spending and a resource's seats live in different
//! aggregates (on Redis Cluster, on different hash slots), so no one
//! transaction sees both. A reserve or hold on a budgeted resource is
//! therefore a small state machine, each step idempotent and keyed by the
//! resource and the command:
//!
//! 1. **Set aside** ([`Ledger::set_aside`]): the budget puts the cost aside
//!    for `(resource, command)` if the customer's spending, amounts set
//!    aside included, stays within the cap. Asking again for the same
//!    amount answers the same and adds nothing.
//! 2. **Decide**: the resource decides the take with the budget's
//!    [`Answer`] as one more input, and commits.
//! 3. **Settle** ([`Ledger::settle`]): the outcome's [`BudgetStep`] makes
//!    the budget agree with what the resource recorded: an accepted take
//!    keeps exactly its recorded amount, a refused one gets everything set
//!    aside back, a cancel or expiry gives the kept amount back for good.
//!
//! A crash between any two steps is recovered by the redelivery of the
//! command, which replays steps 1 and 3 (no-ops the second time) around
//! step 2 (a replay of the recorded outcome once it is committed).

use super::command::CommandKind;
use super::event::{Reason, Verdict};
use super::ids::{BudgetId, CommandId, CustomerId, ResourceId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The largest `per_customer_amount` (and price times quantity) JSON
/// carries exactly: 2^53 - 1.
pub const MAX_AMOUNT: u64 = (1 << 53) - 1;

/// A budget as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Most one customer may spend, in minor units.
    pub per_customer_amount: u64,
    /// Bumped by every accepted `define_budget`.
    pub version: u64,
}

/// A `define_budget` command, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetCommand {
    /// The idempotency key (unique per budget).
    pub command_id: CommandId,
    /// The budget it creates or changes.
    pub budget_id: BudgetId,
    /// The new cap, or why the body is invalid.
    pub action: Result<u64, String>,
}

/// The outcome event of a `define_budget`: budget fields, no resource
/// fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct BudgetEvent {
    /// The command this is the outcome of.
    pub command_id: CommandId,
    /// Always `define_budget`.
    pub command: CommandKind,
    /// `outcome`, and for rejections `reason` and `detail`.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The budget.
    pub budget_id: BudgetId,
    /// The cap after the command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_customer_amount: Option<u64>,
    /// The budget's version after the command (unchanged by a rejection).
    pub version: u64,
}

impl BudgetEvent {
    /// Whether the command changed the budget.
    pub fn is_accepted(&self) -> bool {
        self.verdict == Verdict::Accepted
    }
}

/// Decides a `define_budget` against the budget as it stands.
pub fn decide_budget(budget: Option<&Budget>, command: &BudgetCommand) -> BudgetEvent {
    let version = budget.map_or(0, |b| b.version);
    let (verdict, amount, version) = match &command.action {
        Ok(amount) => (Verdict::Accepted, Some(*amount), version + 1),
        Err(detail) => (
            Verdict::Rejected {
                reason: Reason::Invalid,
                detail: detail.clone(),
            },
            budget.map(|b| b.per_customer_amount),
            version,
        ),
    };
    BudgetEvent {
        command_id: command.command_id.clone(),
        command: CommandKind::DefineBudget,
        verdict,
        budget_id: command.budget_id.clone(),
        per_customer_amount: amount,
        version,
    }
}

/// The rejection of a `define_budget` whose id was decided before with
/// another body.
pub fn budget_conflict(budget: Option<&Budget>, command: &BudgetCommand) -> BudgetEvent {
    BudgetEvent {
        command_id: command.command_id.clone(),
        command: CommandKind::DefineBudget,
        verdict: Verdict::Rejected {
            reason: Reason::IdempotencyConflict,
            detail: "command_id was already used with a different body".into(),
        },
        budget_id: command.budget_id.clone(),
        per_customer_amount: budget.map(|b| b.per_customer_amount),
        version: budget.map_or(0, |b| b.version),
    }
}

/// Folds a `define_budget` event into the budget.
pub fn apply_budget(budget: Option<Budget>, event: &BudgetEvent) -> Option<Budget> {
    match (event.is_accepted(), event.per_customer_amount) {
        (true, Some(amount)) => Some(Budget {
            per_customer_amount: amount,
            version: event.version,
        }),
        _ => budget,
    }
}

/// What a budget answers when asked to set an amount aside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Set aside (now, or by an earlier ask for the same amount).
    SetAside,
    /// The customer's spending would go over the cap: nothing set aside.
    Exceeds,
    /// The budget was never defined: nothing set aside.
    Unknown,
}

/// The cost of one take, and what its budget answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Funds {
    /// The budget asked.
    pub budget_id: BudgetId,
    /// The amount asked for.
    pub amount: u64,
    /// Its answer.
    pub answer: Answer,
}

/// A take's ask: set `amount` aside for `customer` under the entry
/// `(resource, command)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    /// Whose money.
    pub customer_id: CustomerId,
    /// The resource that decides the take.
    pub resource_id: ResourceId,
    /// The take (its `command_id`).
    pub command_id: CommandId,
    /// What it costs at the price in force.
    pub amount: u64,
}

/// What a decided outcome does to its budget (step 3).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetStep {
    /// The budget the money was set aside on.
    pub budget_id: BudgetId,
    /// Whose money.
    pub customer_id: CustomerId,
    /// The entry: the resource ...
    pub resource_id: ResourceId,
    /// ... and the reserve or hold that took the seats.
    pub reservation_id: CommandId,
    /// What happens to it.
    pub kind: StepKind,
}

/// The three ways a budget entry is settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    /// The take was accepted at this amount: keep it, give back the rest.
    Keep {
        /// The recorded amount.
        amount: u64,
    },
    /// The take was refused: give back whatever was set aside.
    Refund,
    /// The reservation was cancelled or the hold ran out: give everything
    /// back, for good.
    Release,
}

/// The money one budget holds for one take, as the budget keeps it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Amounts set aside, not settled yet (more than one only when the
    /// price changed while the take was being decided).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open: Vec<u64>,
    /// The amount an accepted take keeps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept: Option<u64>,
    /// Given back for good: nothing may be kept again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub closed: bool,
}

impl Entry {
    /// What the entry counts against the cap.
    pub fn counted(&self) -> u64 {
        self.open.iter().sum::<u64>() + self.kept.unwrap_or(0)
    }

    /// Whether it holds nothing worth keeping.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.kept.is_none() && !self.closed
    }
}

/// An entry's key: the resource and the take.
pub type EntryKey = (ResourceId, CommandId);

/// One customer's spending on a budget: the total counted against the cap
/// (kept and set aside) and the entries a step touches.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Spending {
    /// Kept plus set-aside amounts, over all of the customer's entries.
    pub spent: u64,
    /// The entries loaded (absent ones are empty).
    pub entries: HashMap<EntryKey, Entry>,
}

/// The part of one budget that a set of steps touches: its cap and the
/// spending of the customers they name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    /// `None` until a `define_budget` is accepted.
    pub budget: Option<Budget>,
    /// Per customer.
    pub customers: HashMap<CustomerId, Spending>,
}

impl Ledger {
    fn entry(&mut self, customer: &CustomerId, key: EntryKey) -> (&mut u64, &mut Entry) {
        let spending = self.customers.entry(customer.clone()).or_default();
        (
            &mut spending.spent,
            spending.entries.entry(key).or_default(),
        )
    }

    /// Step 1 for each ask, in order: each sees what the ones before set
    /// aside.
    pub fn set_aside(&mut self, asks: &[Ask]) -> Vec<Answer> {
        let Some(cap) = self.budget.as_ref().map(|b| b.per_customer_amount) else {
            return vec![Answer::Unknown; asks.len()];
        };
        asks.iter()
            .map(|ask| {
                let key = (ask.resource_id.clone(), ask.command_id.clone());
                let (spent, entry) = self.entry(&ask.customer_id, key);
                if entry.closed || entry.kept.is_some() || entry.open.contains(&ask.amount) {
                    // Decided before, or asked before for this amount: the
                    // resource's commit will tell (it replays the outcome).
                    return Answer::SetAside;
                }
                if u128::from(*spent) + u128::from(ask.amount) > u128::from(cap) {
                    return Answer::Exceeds;
                }
                entry.open.push(ask.amount);
                *spent += ask.amount;
                Answer::SetAside
            })
            .collect()
    }

    /// Step 3: makes each step's entry agree with the recorded outcome.
    /// Every step is idempotent, and a released entry stays released.
    pub fn settle(&mut self, steps: &[BudgetStep]) {
        for step in steps {
            let key = (step.resource_id.clone(), step.reservation_id.clone());
            let (spent, entry) = self.entry(&step.customer_id, key);
            if entry.closed {
                continue;
            }
            let before = entry.counted();
            match step.kind {
                StepKind::Keep { amount } => {
                    if entry.kept.is_none() {
                        // The amount set aside for the recorded price; were
                        // it missing, the record still is the truth.
                        if let Some(i) = entry.open.iter().position(|a| *a == amount) {
                            entry.open.swap_remove(i);
                        }
                        entry.kept = Some(amount);
                    }
                    entry.open.clear();
                }
                StepKind::Refund => entry.open.clear(),
                StepKind::Release => {
                    entry.open.clear();
                    entry.kept = None;
                    entry.closed = true;
                }
            }
            let after = entry.counted();
            *spent = (*spent + after).saturating_sub(before);
        }
    }
}

#[cfg(test)]
mod tests;
