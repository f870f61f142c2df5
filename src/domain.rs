//! The pure core: one resource's capacity aggregate, the commands against
//! it (reserve, hold, confirm, cancel, define), the events they produce,
//! the expiry of holds, and the decision of a whole batch.
//!
//! `decide(&State, &Command, now) -> Event` is the business logic of one
//! command and `apply(State, &Event) -> State` folds an event into the
//! state; [`decide_batch`] decides the commands one transaction commits
//! together, idempotency included, and returns the [`ChangeSet`] to write.
//! Nothing here does I/O: the shell loads a [`Snapshot`], calls these and
//! commits what they return.

mod batch;
mod budget;
mod command;
mod event;
mod ids;
#[cfg(test)]
mod props;
mod resource;
#[cfg(test)]
mod testing;

pub use batch::{
    Applied, ChangeSet, Conflict, Decision, DueHold, Holding, MAX_STORED_CONFLICTS, Outcome, Reads,
    Record, Snapshot, Submission, decide_batch, reads, remembered,
};
pub use budget::{
    Answer, Ask, Budget, BudgetCommand, BudgetEvent, BudgetStep, Entry, EntryKey, Funds, Ledger,
    MAX_AMOUNT, Spending, StepKind, apply_budget, budget_conflict, decide_budget,
};
pub use command::{Action, BudgetChange, Command, CommandKind, LimitChange};
pub use event::{Details, Event, Reason, Verdict};
pub use ids::{BudgetId, CommandId, CustomerId, EXPIRY_PREFIX, IdError, MAX_ID_CHARS, ResourceId};
pub use resource::{
    MAX_HOLD_SECS, Millis, Reservation, Resource, State, Status, apply, at, cost, decide,
    decide_funded, expire, idempotency_conflict, millis,
};
