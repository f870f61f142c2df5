//! The pure core: one resource's capacity aggregate, the commands against
//! it, the events they produce, and the decision of a whole batch.
//!
//! `decide(&State, &Command) -> Event` is the business logic of one
//! command and `apply(State, &Event) -> State` folds an event into the
//! state; [`decide_batch`] decides the commands one transaction commits
//! together, idempotency included, and returns the [`ChangeSet`] to write.
//! Nothing here does I/O: the shell loads a [`Snapshot`], calls these and
//! commits what they return.

mod batch;
mod command;
mod event;
mod ids;
mod resource;
#[cfg(test)]
mod testing;

pub use batch::{
    Applied, ChangeSet, Conflict, Decision, Holding, MAX_STORED_CONFLICTS, Outcome, Reads, Record,
    Snapshot, Submission, decide_batch, reads,
};
pub use command::{Action, Command, CommandKind, LimitChange};
pub use event::{Details, Event, Reason, Verdict};
pub use ids::{CommandId, CustomerId, IdError, MAX_ID_CHARS, ResourceId};
pub use resource::{Reservation, Resource, State, apply, decide, idempotency_conflict};
