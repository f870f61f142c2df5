//! Holds that run out while nothing else happens to their resource: every
//! worker sweeps the due-time index and turns each due hold into its one
//! `expire.accepted` event.
//!
//! The sweep goes through the index's shards one by one, each replica
//! starting at a random one, so replicas sweeping at once mostly split the
//! work (what one has finished, the others no longer find). For the due
//! entries of a shard, it
//! 1. commits an empty batch for each resource: like any batch, it expires
//!    the holds due at Redis's time, under WATCH, so two replicas sweeping
//!    at once release a hold once (the loser finds nothing due);
//! 2. reads the `expire` events recorded for the entries' holds, whoever
//!    recorded them (this sweep, another replica's, or a command batch that
//!    found the hold due first), and publishes each, waiting for its
//!    confirm; a hold confirmed or cancelled in time has none;
//! 3. only then takes the entries out of the index.
//!
//! Between 2's read and its publishing, the expiries of holds paid from a
//! budget give their money back (`Pipeline::settle_budgets`).
//!
//! A worker that dies between the steps leaves the entries in the index, and
//! the next sweep (its own or another replica's) does the steps again: the
//! expiry is recorded once and its event re-published identically.

use super::pipeline::{Failure, Pipeline};
use crate::domain::{Millis, ResourceId};
use crate::health::StoreState;
use crate::message::OutgoingEvent;
use crate::metrics as metric;
use crate::store::{DUE_SHARDS, DueEntry};
use crate::telemetry::chain;
use futures_util::{StreamExt, TryStreamExt};
use rand::Rng;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Resources whose due holds one worker releases at once.
const CONCURRENT_RESOURCES: usize = 64;

/// Expiry events one worker has waiting for their confirm at once.
const CONCURRENT_PUBLISHES: usize = 256;

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
async fn sweep(pipeline: &Pipeline) -> Result<bool, Failure> {
    let store = pipeline.store();
    let limit = pipeline.settings().worker.sweep_batch;
    let now = store.time().await.map_err(Failure::Store)?;
    let looked = Instant::now();
    let start = rand::rng().random_range(0..DUE_SHARDS);
    let mut more = false;
    for shard in (0..DUE_SHARDS).map(|i| (start + i) % DUE_SHARDS) {
        let entries = store
            .due_in(shard, now, limit)
            .await
            .map_err(Failure::Store)?;
        if entries.is_empty() {
            continue;
        }
        more |= entries.len() >= limit;
        release(pipeline, &entries, now, looked).await?;
    }
    Ok(more)
}

/// Steps 1 to 3 for one shard's due entries.
async fn release(
    pipeline: &Pipeline,
    entries: &[DueEntry],
    now: Millis,
    looked: Instant,
) -> Result<(), Failure> {
    // Owned items: the futures are spawned, and borrowed stream items
    // would tie them to one lifetime.
    let resources: BTreeSet<ResourceId> = entries.iter().map(|e| e.resource.clone()).collect();
    let store = pipeline.store();
    // On a Redis Cluster each master has its own clock, and the resource's
    // master decides whether its hold ran out: an entry not yet due by that
    // clock stays in the index for a later sweep, never forgotten with its
    // hold still live.
    let entries: Vec<DueEntry> = {
        let listed: Vec<ResourceId> = resources.iter().cloned().collect();
        match store.clocks(&listed).await.map_err(Failure::Store)? {
            None => entries.to_vec(),
            Some(clocks) => {
                let clock: std::collections::HashMap<&ResourceId, Millis> =
                    listed.iter().zip(clocks).collect();
                entries
                    .iter()
                    .filter(|e| e.expires_at <= clock[&e.resource])
                    .cloned()
                    .collect()
            }
        }
    };
    let entries = entries.as_slice();
    let resources: BTreeSet<ResourceId> = entries.iter().map(|e| e.resource.clone()).collect();
    futures_util::stream::iter(resources)
        .map(|resource| async move { pipeline.commit(&resource, &[]).await })
        .buffer_unordered(CONCURRENT_RESOURCES)
        .try_collect::<Vec<_>>()
        .await?;
    let expiries = store.expiries(entries).await.map_err(Failure::Store)?;
    let recorded: Vec<(Millis, OutgoingEvent)> = entries
        .iter()
        .zip(expiries)
        .filter_map(|(entry, expiry)| Some((entry.expires_at, expiry?)))
        .collect();
    // A hold paid from a budget gives the money back before its expiry is
    // told (again, harmlessly, when an earlier sweep died after it).
    pipeline
        .settle_budgets(recorded.iter().filter_map(|(_, e)| e.step.as_ref()))
        .await?;
    futures_util::stream::iter(recorded)
        .map(|(expires_at, event)| async move {
            pipeline.publish_event(&event).await?;
            metrics::counter!(metric::EXPIRIES).increment(1);
            // Redis's time when the sweep looked, plus how long it took since.
            let published = now + looked.elapsed().as_millis() as Millis;
            let lag = published.saturating_sub(expires_at);
            metrics::histogram!(metric::EXPIRY_LAG_SECONDS).record(lag as f64 / 1000.0);
            Ok::<(), Failure>(())
        })
        .buffer_unordered(CONCURRENT_PUBLISHES)
        .try_collect::<Vec<()>>()
        .await?;
    store.forget_due(entries).await.map_err(Failure::Store)
}
