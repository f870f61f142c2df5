//! One optimistic attempt at a batch, in three steps: the store loads, the
//! domain decides, the store commits. On a resource with a budget, the
//! decision first asks the budget to set each take's cost aside (step 1 of
//! `docs/budgets.md`), while the resource's WATCH stays on.

use crate::domain::{
    self, Action, BudgetId, Decision, Funds, Outcome, ResourceId, Snapshot, Submission,
};
use crate::failpoint;
use crate::message::OutgoingEvent;
use crate::store::{Commit, Store, StoreError};
use std::collections::BTreeMap;
use uuid::Uuid;

/// How many times one attempt asks budgets for money before it gives up
/// and starts over (a batch whose defines keep changing the price).
const MAX_ASK_ROUNDS: usize = 4;

/// Loads a snapshot under WATCH, decides the batch against it, commits the
/// change set. `None` means another writer changed a watched key first and
/// nothing was written.
///
/// Every event is stamped with the snapshot's time, Redis's clock, which
/// also decided which holds ran out: a replica's own clock plays no part.
pub async fn decide_and_commit(
    store: &Store,
    resource: &ResourceId,
    batch: &[Submission],
) -> Result<Option<Vec<Outcome<OutgoingEvent>>>, StoreError> {
    let mut tx = store.begin().await?;
    let snapshot = tx.load(resource, &domain::reads(batch)).await?;
    let Some(decision) = decide_funded(store, snapshot, batch).await? else {
        return Ok(None);
    };
    if !decision.changes.holds_added.is_empty() {
        tx.index_holds(resource, &decision.changes.holds_added)
            .await?;
    }
    match tx.commit(resource, &decision.changes).await? {
        Commit::Committed => {
            failpoint::hit("budget.after_commit");
            Ok(Some(decision.outcomes))
        }
        Commit::Conflict => Ok(None),
    }
}

/// Decides the batch; when its takes need money no budget has answered
/// for, sets it aside and decides again with the answers. `None` if a
/// budget's transaction lost its race (start over).
async fn decide_funded(
    store: &Store,
    mut snapshot: Snapshot<OutgoingEvent>,
    batch: &[Submission],
) -> Result<Option<Decision<OutgoingEvent>>, StoreError> {
    let now = domain::at(snapshot.now);
    let seal = |event| OutgoingEvent::new(event, Uuid::new_v4(), now);
    // Only a resource with a budget, or a batch that may give it one, can
    // need a second decision: only then is the snapshot worth a copy.
    let may_ask = snapshot
        .state
        .resource
        .as_ref()
        .is_some_and(|r| r.budget_id.is_some())
        || batch
            .iter()
            .any(|s| matches!(s.command.action, Action::Define { .. }));
    if !may_ask {
        return Ok(Some(domain::decide_batch(snapshot, batch, seal)));
    }
    for _ in 0..MAX_ASK_ROUNDS {
        let decision = domain::decide_batch(snapshot.clone(), batch, seal);
        if decision.asks.is_empty() {
            return Ok(Some(decision));
        }
        let mut by_budget: BTreeMap<BudgetId, Vec<domain::Ask>> = BTreeMap::new();
        for (budget, ask) in decision.asks {
            by_budget.entry(budget).or_default().push(ask);
        }
        for (budget, asks) in by_budget {
            let Some(answers) = store.set_aside(&budget, &asks).await? else {
                return Ok(None);
            };
            for (ask, answer) in asks.into_iter().zip(answers) {
                let funds = Funds {
                    budget_id: budget.clone(),
                    amount: ask.amount,
                    answer,
                };
                snapshot.funds.insert(ask.command_id, funds);
            }
        }
        failpoint::hit("budget.after_set_aside");
    }
    Ok(None)
}
