//! Holds that run out while nothing else happens to their resource: every
//! worker sweeps the due-time index and turns each due hold into its one
//! `expire.accepted` event.
//!
//! For each resource with due entries, the sweep
//! 1. commits an empty batch: like any batch, it expires the holds due at
//!    Redis's time, under WATCH, so two replicas sweeping at once release a
//!    hold once (the loser finds nothing due);
//! 2. reads the `expire` events recorded for the entries' holds, whoever
//!    recorded them (this sweep, another replica's, or a command batch that
//!    found the hold due first), and publishes each, waiting for its
//!    confirm; a hold confirmed or cancelled in time has none;
//! 3. only then takes the entries out of the index.
//!
//! A worker that dies between the steps leaves the entries in the index, and
//! the next sweep (its own or another replica's) does the steps again: the
//! expiry is recorded once and its event re-published identically.

use super::pipeline::{Failure, Pipeline};
use crate::domain::{Millis, ResourceId};
use crate::health::StoreState;
use crate::metrics as metric;
use crate::store::DueEntry;
use crate::telemetry::chain;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Resources whose due holds one worker releases at once.
const CONCURRENT_RESOURCES: usize = 16;

/// Sweeps until `stop` is cancelled or the session is abandoned.
pub(super) async fn run(pipeline: Arc<Pipeline>, stop: CancellationToken) {
    let every = Duration::from_millis(pipeline.settings().worker.sweep_interval_ms);
    let mut failures: u32 = 0;
    loop {
        let mut more = false;
        if pipeline.health().store() == StoreState::Ok {
            match sweep(&pipeline).await {
                Ok(m) => {
                    more = m;
                    failures = 0;
                }
                Err(Failure::Abandoned) => return,
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        warn!(error = %chain(&e), "sweeping for expired holds failed; trying again");
                    } else {
                        debug!(error = %chain(&e), failures, "sweeping still fails");
                    }
                }
            }
        }
        // A sweep that left due holds behind goes on at once.
        let wait = if more { Duration::ZERO } else { every };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
            _ = pipeline.abandoned() => return,
        }
    }
}

/// One sweep over every shard. `true` if some shard had more due holds
/// than one sweep takes.
async fn sweep(pipeline: &Arc<Pipeline>) -> Result<bool, Failure> {
    let store = pipeline.store();
    let batch = pipeline.settings().worker.sweep_batch;
    let sweep = store.due(batch).await.map_err(Failure::Store)?;
    if sweep.by_resource.is_empty() {
        return Ok(false);
    }
    let looked = Instant::now();
    let now = sweep.now;
    let results: Vec<Result<(), Failure>> =
        futures_util::stream::iter(sweep.by_resource.into_iter().map(|(resource, entries)| {
            let pipeline = pipeline.clone();
            async move { release(&pipeline, &resource, &entries, now, looked).await }
        }))
        .buffer_unordered(CONCURRENT_RESOURCES)
        .collect()
        .await;
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(sweep.more)
}

/// Steps 1 to 3 for one resource's due entries.
async fn release(
    pipeline: &Pipeline,
    resource: &ResourceId,
    entries: &[DueEntry],
    now: Millis,
    looked: Instant,
) -> Result<(), Failure> {
    pipeline.commit(resource, &[]).await?;
    let store = pipeline.store();
    let holds: Vec<_> = entries.iter().map(|e| &e.hold).collect();
    let expiries = store
        .expiries(resource, &holds)
        .await
        .map_err(Failure::Store)?;
    for (entry, expiry) in entries.iter().zip(expiries) {
        let Some(event) = expiry else { continue };
        pipeline.publish_event(&event).await?;
        metrics::counter!(metric::EXPIRIES).increment(1);
        // Redis's time when the sweep looked, plus how long it took since.
        let published = now + looked.elapsed().as_millis() as Millis;
        let lag = published.saturating_sub(entry.expires_at);
        metrics::histogram!(metric::EXPIRY_LAG_SECONDS).record(lag as f64 / 1000.0);
    }
    store.forget_due(entries).await.map_err(Failure::Store)
}
