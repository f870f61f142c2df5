//! Partitioned mode, spread over the replicas. Each partition queue has a
//! single active consumer, which keeps each resource's commands in queue
//! order; which replica that is, is decided here:
//! - every replica sends a heartbeat to Redis each [`ROUND`], and the live
//!   replicas take the partitions in turn (`assign`);
//! - a replica consumes a partition only while it holds the partition's
//!   lease in Redis;
//! - a partition that is no longer a replica's is cancelled first, and its
//!   lease given back only once every delivery taken from it is settled.
//!   Only then may its new owner subscribe, so the new owner's first
//!   delivery comes after the old owner's last decision.
//!
//! A replica that dies loses its heartbeat and leases after [`LEASE`], and
//! the broker returns what it held to the queue, ahead of the rest.

use super::assign;
use super::session::{Deliveries, SessionError, subscribe_one};
use crate::broker::InFlight;
use crate::store::{Store, StoreError};
use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use lapin::types::ShortString as ConsumerTag;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tracing::{info, warn};

/// How often a replica sends its heartbeat and renews its leases.
pub(super) const ROUND: Duration = Duration::from_secs(1);

/// How long a heartbeat or a lease lasts unless renewed: a dead replica's
/// partitions go to the others after this.
pub(super) const LEASE: Duration = Duration::from_secs(3);

/// Which partitions this replica consumes, and those it is handing over.
pub(super) struct Partitions {
    name: String,
    queues: Vec<String>,
    in_flight: Vec<InFlight>,
    consuming: BTreeMap<usize, ConsumerTag>,
    /// Cancelled, deliveries still held: the lease stays until none is.
    handing_over: BTreeSet<usize>,
    /// Whether this replica has announced itself once already.
    announced: bool,
}

impl Partitions {
    /// For the partition queues `queues` (p0, p1, ...), as replica `name`.
    pub(super) fn new(queues: Vec<String>, name: &str) -> Partitions {
        Partitions {
            name: name.to_string(),
            in_flight: queues.iter().map(|_| InFlight::default()).collect(),
            queues,
            consuming: BTreeMap::new(),
            handing_over: BTreeSet::new(),
            announced: false,
        }
    }

    /// The count of partition `p`'s deliveries held.
    pub(super) fn in_flight(&self, p: usize) -> &InFlight {
        &self.in_flight[p]
    }

    /// One round: heartbeat, then give up what is no longer this
    /// replica's, hand over what has drained, and take what is.
    pub(super) async fn round(
        &mut self,
        store: &Store,
        channel: &lapin::Channel,
        deliveries: &mut Deliveries,
    ) -> Result<(), RoundError> {
        let ms = LEASE.as_millis() as u64;
        let live = store.heartbeat(&self.name, ms).await?;
        // The first round only announces this replica: replicas started
        // together all see each other at their second, and take their
        // shares at once rather than everything first and most of it back.
        if !std::mem::replace(&mut self.announced, true) {
            return Ok(());
        }
        let mine: BTreeSet<usize> = assign::owned(self.queues.len(), &live, &self.name)
            .into_iter()
            .collect();
        let held: Vec<usize> = self.consuming.keys().copied().collect();
        for p in held {
            let keep = mine.contains(&p) && store.claim_partition(p, &self.name, ms).await?;
            if !keep {
                self.cancel(channel, p).await;
            }
        }
        self.hand_over(store, &mine).await?;
        for p in mine {
            if self.consuming.contains_key(&p) || !store.claim_partition(p, &self.name, ms).await? {
                continue;
            }
            let (tag, consumer) = subscribe_one(channel, &self.queues[p], &self.name).await?;
            deliveries.push(consumer.map(move |d| (Some(p), d)).boxed());
            self.consuming.insert(p, tag);
            self.handing_over.remove(&p);
            info!(partition = %self.queues[p], "consuming");
        }
        Ok(())
    }

    /// The partitions being handed over, except those in `keep`: each
    /// whose deliveries are all settled is given back; the others' leases
    /// are renewed, so that nobody takes them while they drain.
    pub(super) async fn hand_over(
        &mut self,
        store: &Store,
        keep: &BTreeSet<usize>,
    ) -> Result<(), StoreError> {
        let ms = LEASE.as_millis() as u64;
        for p in self.handing_over.clone() {
            if keep.contains(&p) {
                // Back before it was handed over: nobody else took it.
                continue;
            }
            if self.in_flight[p].count() == 0 {
                store.release_partition(p, &self.name).await?;
                self.handing_over.remove(&p);
                info!(partition = %self.queues[p], "handed over");
            } else {
                store.claim_partition(p, &self.name, ms).await?;
            }
        }
        Ok(())
    }

    /// Stops taking deliveries from every partition (Redis fails, or the
    /// worker stops); each is handed over once drained.
    pub(super) async fn cancel_all(&mut self, channel: &lapin::Channel) {
        let all: Vec<usize> = self.consuming.keys().copied().collect();
        for p in all {
            self.cancel(channel, p).await;
        }
    }

    /// After the drain: every lease given back, and this replica gone from
    /// the live ones, so the others take over at their next round.
    pub(super) async fn leave(&mut self, store: &Store) {
        let partitions: Vec<usize> = self
            .consuming
            .keys()
            .chain(&self.handing_over)
            .copied()
            .collect();
        for p in partitions {
            if let Err(e) = store.release_partition(p, &self.name).await {
                warn!(error = %e, partition = %self.queues[p], "could not give the lease back; it runs out");
            }
        }
        if let Err(e) = store.leave(&self.name).await {
            warn!(error = %e, "could not leave the live replicas; the heartbeat runs out");
        }
    }

    async fn cancel(&mut self, channel: &lapin::Channel, p: usize) {
        if let Some(tag) = self.consuming.remove(&p) {
            if let Err(e) = channel
                .basic_cancel(tag, BasicCancelOptions::default())
                .await
            {
                warn!(error = %e, partition = %self.queues[p], "could not cancel a consumer");
            }
            self.handing_over.insert(p);
        }
    }
}

/// Waits for `drained` (the worker's drain) while handing its partitions
/// over each [`ROUND`]: a drain longer than a lease keeps the partitions
/// still draining, and gives back each one as soon as it is settled.
pub(super) async fn drain_while_handing_over(
    partitions: Option<&mut Partitions>,
    store: &Store,
    drained: impl std::future::Future<Output = ()>,
) {
    let Some(partitions) = partitions else {
        return drained.await;
    };
    tokio::pin!(drained);
    let mut rounds = tokio::time::interval(ROUND);
    loop {
        tokio::select! {
            () = &mut drained => return,
            _ = rounds.tick() => {
                if let Err(e) = partitions.hand_over(store, &BTreeSet::new()).await {
                    warn!(error = %e, "partitions: handing over failed; trying again at the next round");
                }
            }
        }
    }
}

/// Why a round failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum RoundError {
    /// Redis: the round is tried again at the next tick.
    #[error("reading or renewing the partitions' leases")]
    Store(#[from] StoreError),
    /// The broker refused a subscription: the session ends.
    #[error(transparent)]
    Session(#[from] SessionError),
}
