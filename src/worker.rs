//! The consumer: one broker session at a time, reconnecting when it is
//! lost; in each session, every delivery goes through `Pipeline::process`:
//! decode, decide, publish, settle.
//!
//! - `session`: one connection: declare, consume, hand each delivery to the
//!   pipeline, drain and tear down.
//! - `pipeline`: the life of one delivery, and the one function that
//!   chooses how it ends.
//! - `lanes`: group commit's waiting room, one lane per resource.
//! - `commit`: one attempt at a batch: load, decide, commit.
//! - `retry`: how long to wait before trying again.
//! - `sweeper`: finds the holds that ran out with nothing else happening to
//!   their resource, and publishes their expiries.
//! - `partitions` and `assign`: in partitioned mode, which partitions this
//!   replica consumes (heartbeats and leases in Redis), and their handover.
//! - `observe`: the backlog and due-index figures the metrics show.

mod assign;
mod commit;
mod lanes;
mod observe;
mod partitions;
mod pipeline;
mod retry;
mod session;
mod sweeper;

pub use commit::{Committed, decide_and_commit, decide_and_commit_all};

use crate::config::Settings;
use crate::health::{Health, StoreState};
use crate::metrics as metric;
use crate::store::{Store, StoreError};
use retry::backoff;
use session::Replica;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// A worker replica.
pub struct Worker {
    settings: Arc<Settings>,
    store: Store,
    health: Health,
    name: String,
}

impl Worker {
    /// A worker named `name` (shown as the broker connection name).
    pub fn new(settings: Settings, store: Store, name: impl Into<String>) -> Worker {
        Worker {
            settings: Arc::new(settings),
            store,
            health: Health::default(),
            name: name.into(),
        }
    }

    /// The readiness state this worker keeps up to date.
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Consumes until `shutdown` is cancelled, reconnecting whenever the
    /// broker session is lost. Returns once in-flight commands finished (or
    /// the grace period ran out).
    pub async fn run(self, shutdown: CancellationToken) {
        let probe = tokio::spawn(probe_redis(
            self.store.clone(),
            self.health.clone(),
            shutdown.clone(),
        ));
        let w = &self.settings.worker;
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let replica = Replica {
                settings: &self.settings,
                store: &self.store,
                health: &self.health,
                name: &self.name,
            };
            match session::run(replica, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    self.health.set_broker(false);
                    metrics::counter!(metric::RECONNECTS).increment(1);
                    // A session that ran for a while was healthy: start the
                    // backoff over rather than punishing a one-off drop.
                    if started.elapsed() > Duration::from_secs(30) {
                        failures = 0;
                    }
                    failures += 1;
                    let delay = backoff(w.reconnect_base_ms, w.reconnect_max_ms, failures);
                    warn!(
                        error = %crate::telemetry::chain(&e),
                        retry_in_ms = delay.as_millis() as u64,
                        "broker session ended; reconnecting"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        probe.abort();
        info!("worker stopped");
    }
}

/// Keeps the store's state honest while no command finds it out: every
/// 2 s, or every 500 ms while Redis fails, so consuming resumes soon after
/// it recovers. Warns once, at the first answer, if Redis may evict keys.
async fn probe_redis(store: Store, health: Health, shutdown: CancellationToken) {
    let mut policy_checked = false;
    loop {
        let state = match store.check().await {
            Ok(()) => StoreState::Ok,
            Err(StoreError::Uninitialised { .. }) => StoreState::Uninitialised,
            Err(_) => StoreState::Failing,
        };
        if health.set_store(state) {
            match state {
                StoreState::Ok => info!("redis works"),
                StoreState::Uninitialised => error!(
                    "redis has lost its data (the setup marker is missing): deciding nothing until \
                     Redis is restored, or `reservation-worker setup` is run to accept an empty store"
                ),
                StoreState::Failing => warn!("redis fails; holding commands until it works"),
            }
        }
        if !policy_checked && state != StoreState::Failing {
            policy_checked = true;
            warn_if_evicting(&store).await;
        }
        let every = match state {
            StoreState::Ok => Duration::from_secs(2),
            _ => Duration::from_millis(500),
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Warns when Redis may evict keys: an evicted state, holding or
/// reservation breaks the aggregate, and an evicted record lets a
/// redelivered rejection be decided again.
async fn warn_if_evicting(store: &Store) {
    match store.eviction_policy().await {
        Ok(Some(policy)) if policy != "noeviction" => warn!(
            maxmemory_policy = %policy,
            "redis may evict keys under memory pressure, and an evicted key loses seats or \
             idempotency; set `maxmemory-policy noeviction` (the worker waits out OOM errors)"
        ),
        _ => {}
    }
}
