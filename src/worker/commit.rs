//! One optimistic attempt at a batch, in three steps: the store loads, the
//! domain decides, the store commits. On a resource with a budget, the
//! decision first asks the budget to set each take's cost aside (step 1 of
//! `docs/budgets.md`), then loads and decides again with the answers.

use crate::domain::{self, BudgetId, CommandId, Funds, Outcome, ResourceId, Submission};
use crate::failpoint;
use crate::message::OutgoingEvent;
use crate::store::{Commit, Store, StoreError};
use futures_util::future::try_join_all;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

/// How many times one attempt asks budgets for money before it gives up
/// and starts over (a batch whose defines keep changing the price).
const MAX_ASK_ROUNDS: usize = 4;

/// A committed batch: its outcomes, and the refunds owed to budgets the
/// resource was paid from before (see [`domain::Decision::refunds`]).
#[derive(Debug)]
pub struct Committed {
    /// One per command, in batch order.
    pub outcomes: Vec<Outcome<OutgoingEvent>>,
    /// To settle with the outcomes' own budget steps.
    pub refunds: Vec<domain::BudgetStep>,
}

/// Loads a snapshot under WATCH, decides the batch against it, commits the
/// change set. `None` means another writer changed a watched key first and
/// nothing was written.
///
/// On a resource with a budget, a decision whose takes need money no budget
/// has answered for is not committed: the WATCH is dropped (a transaction
/// never holds two connections, so a busy pool cannot deadlock), the money
/// is set aside, and the batch is loaded and decided again with the
/// answers. Answers for another budget or price than the reloaded state's
/// are asked again.
///
/// Every event is stamped with the snapshot's time, Redis's clock, which
/// also decided which holds ran out: a replica's own clock plays no part.
pub async fn decide_and_commit(
    store: &Store,
    resource: &ResourceId,
    batch: &[Submission],
) -> Result<Option<Committed>, StoreError> {
    let committed = decide_and_commit_all(store, &[(resource, batch)]).await?;
    Ok(committed.map(|mut all| all.remove(0)))
}

/// [`decide_and_commit`] for the batches of several resources in one
/// transaction: one WATCH, one load, one MULTI/EXEC for all of them, so
/// many resources cost the round trips of one. All or none commit: `None`
/// if another writer changed any watched key first. On a cluster the
/// resources must share a hash slot.
pub async fn decide_and_commit_all(
    store: &Store,
    group: &[(&ResourceId, &[Submission])],
) -> Result<Option<Vec<Committed>>, StoreError> {
    let Some((first, _)) = group.first() else {
        return Ok(Some(Vec::new()));
    };
    let reads: Vec<_> = group
        .iter()
        .map(|(_, batch)| domain::reads(batch))
        .collect();
    let loads: Vec<_> = group.iter().map(|(r, _)| *r).zip(&reads).collect();
    let mut funds: HashMap<CommandId, Funds> = HashMap::new();
    for _ in 0..MAX_ASK_ROUNDS {
        let mut tx = store.begin(first).await?;
        let snapshots = tx.load_all(&loads).await?;
        let mut decisions = Vec::with_capacity(group.len());
        let mut asks = Vec::new();
        for (mut snapshot, (_, batch)) in snapshots.into_iter().zip(group) {
            snapshot.funds.clone_from(&funds);
            let now = domain::at(snapshot.now);
            let mut decision = domain::decide_batch(snapshot, batch, |event| {
                OutgoingEvent::new(event, Uuid::new_v4(), now)
            });
            asks.append(&mut decision.asks);
            decisions.push(decision);
        }
        if !asks.is_empty() {
            tx.cancel().await?;
            if !set_aside(store, asks, &mut funds).await? {
                return Ok(None);
            }
            failpoint::hit("budget.after_set_aside");
            continue;
        }
        let holds: Vec<_> = group
            .iter()
            .zip(&decisions)
            .map(|((r, _), d)| (*r, d.changes.holds_added.as_slice()))
            .collect();
        if holds.iter().any(|(_, h)| !h.is_empty()) {
            tx.index_holds(&holds).await?;
        }
        let changes: Vec<_> = group
            .iter()
            .zip(&decisions)
            .map(|((r, _), d)| (*r, &d.changes))
            .collect();
        return match tx.commit_all(&changes).await? {
            Commit::Committed => {
                failpoint::hit("budget.after_commit");
                let committed = decisions.into_iter().map(|d| Committed {
                    outcomes: d.outcomes,
                    refunds: d.refunds,
                });
                Ok(Some(committed.collect()))
            }
            Commit::Conflict => Ok(None),
        };
    }
    Ok(None)
}

/// Step 1: asks each budget to set the takes' costs aside, and records the
/// answers in `funds`. `false` if a budgets' transaction lost its race.
async fn set_aside(
    store: &Store,
    asks: Vec<(BudgetId, domain::Ask)>,
    funds: &mut HashMap<CommandId, Funds>,
) -> Result<bool, StoreError> {
    // One transaction per hash slot the budgets are in (one for all of
    // them on a single Redis), those of different slots at once.
    let mut by_slot: BTreeMap<Option<u16>, BTreeMap<BudgetId, Vec<domain::Ask>>> = BTreeMap::new();
    for (budget, ask) in asks {
        let slot = by_slot.entry(store.budget_slot(&budget)).or_default();
        slot.entry(budget).or_default().push(ask);
    }
    let asking = by_slot.into_values().map(|budgets| async move {
        let group: Vec<(&BudgetId, &[domain::Ask])> =
            budgets.iter().map(|(b, a)| (b, a.as_slice())).collect();
        let answers = store.set_aside_all(&group).await?;
        Ok::<_, StoreError>((budgets, answers))
    });
    let mut all = true;
    for (budgets, answers) in try_join_all(asking).await? {
        let Some(answers) = answers else {
            all = false;
            continue;
        };
        for ((budget, asks), answers) in budgets.into_iter().zip(answers) {
            for (ask, answer) in asks.into_iter().zip(answers) {
                let answered = Funds {
                    budget_id: budget.clone(),
                    amount: ask.amount,
                    answer,
                };
                funds.insert(ask.command_id, answered);
            }
        }
    }
    Ok(all)
}
