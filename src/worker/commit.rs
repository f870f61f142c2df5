//! One optimistic attempt at a batch, in three steps: the store loads, the
//! domain decides, the store commits.

use crate::domain::{self, Outcome, ResourceId, Submission};
use crate::message::OutgoingEvent;
use crate::store::{Commit, Store, StoreError};
use uuid::Uuid;

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
    let now = domain::at(snapshot.now);
    let decision = domain::decide_batch(snapshot, batch, |event| {
        OutgoingEvent::new(event, Uuid::new_v4(), now)
    });
    if !decision.changes.holds_added.is_empty() {
        tx.index_holds(resource, &decision.changes.holds_added)
            .await?;
    }
    match tx.commit(resource, &decision.changes).await? {
        Commit::Committed => Ok(Some(decision.outcomes)),
        Commit::Conflict => Ok(None),
    }
}
