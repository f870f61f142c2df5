//! The life of one delivery, top to bottom, in [`Pipeline::process`]:
//! decode, decide (together with the other waiting commands of its
//! resource), publish the outcome and wait for the broker's confirm, then
//! settle. How a delivery ends is chosen in one place, [`disposition`].
//!
//! A delivery is acked only after its outcome is both committed and
//! confirmed; any failure before that leaves it unacked, so the broker
//! redelivers it and the idempotency record turns the redelivery into a
//! re-publish of the same event.

use super::commit::decide_and_commit_all;
use super::lanes::Lanes;
use super::retry::{backoff, full_jitter};
use crate::broker::{Delivery, Message, PublishError, Publisher};
use crate::config::Settings;
use crate::domain::{BudgetCommand, BudgetId, BudgetStep, Outcome, ResourceId, Submission};
use crate::health::{Health, StoreState};
use crate::message::{self, Decoded, OutgoingEvent, Unreadable};
use crate::metrics as metric;
use crate::store::{Store, StoreError};
use crate::telemetry::chain;
use futures_util::future::join_all;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, error, field, info, info_span, warn};

/// What one broker session's delivery tasks share.
pub(super) struct Pipeline {
    settings: Arc<Settings>,
    store: Store,
    health: Health,
    publisher: Publisher,
    lanes: Lanes<Pending>,
    /// The session's delivery and lane tasks.
    tracker: TaskTracker,
    /// Cancelled when in-flight work must stop waiting: the session died,
    /// or the shutdown grace period ran out.
    abandon: CancellationToken,
    /// Cancelled by a task that finds the publishing channel dead.
    broken: CancellationToken,
}

/// A delivery whose command waits for its decision.
struct Pending {
    delivery: Delivery,
    /// The delivery's span, for the part that runs after the decision.
    span: Span,
}

/// What the broker said of a delivery, for its span.
pub(super) struct Seen {
    pub delivery_tag: u64,
    pub redelivered: bool,
}

/// A delivery's span, made once its command is decoded, so its ids are
/// fields from the start: the JSON log format re-parses and re-encodes a
/// span's fields for every field recorded later, and that was three times
/// per command. Only the outcome is recorded later.
fn command_span(seen: &Seen, command_id: Option<&str>, resource_id: Option<&str>) -> Span {
    info_span!(
        "command",
        delivery_tag = seen.delivery_tag,
        redelivered = seen.redelivered,
        command_id,
        resource_id,
        outcome = field::Empty,
    )
}

/// A command's decision: its outcome, or why there is none.
type Decided = Result<Outcome<OutgoingEvent>, Failure>;

/// Why a delivery is not done.
#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    /// The body names no command.
    #[error("unreadable command: {0}")]
    Unreadable(#[from] Unreadable),
    /// Redis refused, or holds data this worker cannot read.
    #[error("could not commit")]
    Store(#[source] StoreError),
    /// A message could not be published (to the dead-letter exchange).
    #[error("could not publish")]
    Publish(#[source] PublishError),
    /// The session is going away, or the grace period ran out.
    #[error("abandoned: the broker session ended or the grace period ran out")]
    Abandoned,
}

/// How a delivery ends.
#[derive(Debug)]
pub(super) enum Disposition {
    /// Done: its outcome is committed and confirmed.
    Ack,
    /// Not done: back to the queue for another try.
    Requeue(Failure),
    /// It can never be processed: to the dead-letter queue, with why.
    DeadLetter {
        /// The `cause` label of the dead-letter metric.
        cause: &'static str,
        /// The `x-error` header.
        why: String,
    },
    /// The session is going away: the broker redelivers it.
    Leave,
}

/// How a delivery ends, given how its processing went and how often the
/// broker delivered it before.
pub(super) fn disposition(
    result: Result<(), Failure>,
    earlier_deliveries: u32,
    delivery_limit: u32,
    has_body: bool,
) -> Disposition {
    match result {
        Ok(()) => Disposition::Ack,
        Err(Failure::Abandoned) => Disposition::Leave,
        Err(Failure::Unreadable(why)) => Disposition::DeadLetter {
            cause: metric::CAUSE_UNREADABLE,
            why: why.0,
        },
        Err(failure) => {
            let deliveries = earlier_deliveries.saturating_add(1);
            // Without its body the message cannot be dead-lettered from
            // here: the queue's own delivery limit does it.
            if deliveries >= delivery_limit && has_body {
                // The queue's own delivery limit would drop the reason:
                // dead-letter it here, with the error in `x-error`.
                Disposition::DeadLetter {
                    cause: metric::CAUSE_DELIVERY_LIMIT,
                    why: format!(
                        "failed {deliveries} deliveries; last error: {}",
                        chain(&failure)
                    ),
                }
            } else {
                Disposition::Requeue(failure)
            }
        }
    }
}

impl Pipeline {
    /// A pipeline for one session; its tasks run on `tracker`.
    pub(super) fn new(
        settings: Arc<Settings>,
        store: Store,
        health: Health,
        publisher: Publisher,
        tracker: TaskTracker,
    ) -> Pipeline {
        Pipeline {
            settings,
            store,
            health,
            publisher,
            lanes: Lanes::default(),
            tracker,
            abandon: CancellationToken::new(),
            broken: CancellationToken::new(),
        }
    }

    /// Cancelled when a publish finds the publishing channel dead: the
    /// session must end.
    pub(super) fn broken(&self) -> &CancellationToken {
        &self.broken
    }

    /// Makes every task stop waiting: what is unsettled is left for
    /// redelivery.
    pub(super) fn abandon(&self) {
        self.abandon.cancel();
    }

    /// Resolves once the session is abandoned.
    pub(super) async fn abandoned(&self) {
        self.abandon.cancelled().await
    }

    /// The worker's settings.
    pub(super) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The Redis side.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// The readiness flags.
    pub(super) fn health(&self) -> &Health {
        &self.health
    }

    /// One delivery, from receipt to settlement, part one: decoded and
    /// queued for its decision now, in the order the broker delivered it,
    /// so the commands of one resource are decided in that order. Once
    /// decided (in its lane, with its batch), it goes on in [`Self::finish`].
    pub(super) fn process(self: &Arc<Self>, mut delivery: Delivery, seen: Seen) {
        match message::decode_any(delivery.body()) {
            Ok(Decoded::Budget(command, hash)) => {
                let span = command_span(
                    &seen,
                    Some(command.command_id.as_str()),
                    Some(command.budget_id.as_str()),
                );
                let this = self.clone();
                self.tracker.spawn(async move {
                    let decided = this.define_budget(&command, &hash).await;
                    this.finish(Pending { delivery, span }, decided).await
                });
            }
            Ok(Decoded::Resource(submission)) => {
                // An oversized body is `invalid` whatever it holds, and
                // decoding it kept only its ids and hash: let it go now, so
                // a burst of huge bodies costs each one's memory only while
                // it is decoded.
                if delivery.body().len() > message::MAX_BODY_BYTES {
                    delivery.release_body();
                }
                let command = &submission.command;
                let span = command_span(
                    &seen,
                    Some(command.command_id.as_str()),
                    Some(command.resource_id.as_str()),
                );
                self.queue(submission, Pending { delivery, span });
            }
            Err(unreadable) => {
                let decided = Err(Failure::Unreadable(unreadable));
                let pending = Pending {
                    delivery,
                    span: command_span(&seen, None, None),
                };
                self.tracker.spawn(self.clone().finish(pending, decided));
            }
        }
    }

    /// One delivery, part two, once its command is decided: publish the
    /// outcome and wait for the confirm, choose the delivery's
    /// [`disposition`], settle it.
    fn finish(self: Arc<Self>, pending: Pending, decided: Decided) -> impl Future<Output = ()> {
        let Pending { delivery, span } = pending;
        async move {
            let published = match decided {
                Ok(outcome) => {
                    record_outcome(&outcome);
                    self.publish_event(outcome.event()).await
                }
                Err(failure) => Err(failure),
            };
            let limit = self.settings.amqp.delivery_limit;
            let earlier = delivery.earlier_deliveries();
            let disposition = disposition(published, earlier, limit, delivery.has_body());
            self.settle(delivery, disposition).await;
        }
        .instrument(span)
    }

    /// Queues a command for its decision: with group commit, behind its
    /// resource's lane, to be decided with whatever else waits there and
    /// in other ready lanes (a committer starts if work is ready and fewer
    /// than the limit run); without, on its own.
    fn queue(self: &Arc<Self>, submission: Submission, pending: Pending) {
        let this = self.clone();
        if !self.settings.worker.group_commit {
            self.tracker.spawn(async move {
                let resource = submission.command.resource_id.clone();
                let decided = this.commit(&resource, &[submission]).await;
                let decided = decided.map(|mut outcomes| outcomes.remove(0));
                this.finish(pending, decided).await
            });
        } else if self.lanes.push(submission, pending, self.committers()) {
            self.tracker
                .spawn(async move { this.run_committer().await });
        }
    }

    /// How many transactions of grouped batches may run at once:
    /// `worker.committers` per master. Work that arrives while all run
    /// waits in its lanes, and the next group takes it together. On a
    /// cluster a group holds one hash slot's resources, so spread traffic
    /// seldom groups: there, as many run as the pools allow.
    fn committers(&self) -> usize {
        let per_master = if self.store.keys().is_cluster() {
            self.settings
                .worker
                .committers
                .max(self.settings.redis.pool_size)
        } else {
            self.settings.worker.committers
        };
        per_master * self.store.master_count()
    }

    /// Commits groups of ready lanes until none is ready. Each committed
    /// group's commands are published and settled together in one task,
    /// while the committer goes on to its next transaction.
    async fn run_committer(self: Arc<Self>) {
        let max = self.settings.worker.max_batch;
        let slot = |r: &ResourceId| self.store.transaction_slot(r);
        while let Some(group) = self
            .lanes
            .next_group(max, slot, self.abandon.is_cancelled())
        {
            let mut batches = Vec::with_capacity(group.len());
            let mut pending = Vec::new();
            for (resource, waiting) in group {
                let (batch, then): (Vec<Submission>, Vec<Pending>) = waiting.into_iter().unzip();
                batches.push((resource, batch));
                pending.extend(then);
            }
            let decided = self.decide_group(&batches).await;
            self.lanes.done(batches.iter().map(|(r, _)| r));
            let finishing = pending
                .into_iter()
                .zip(decided.into_iter().flatten())
                .map(|(p, d)| self.clone().finish(p, d));
            self.tracker.spawn(join_all(finishing));
        }
    }

    /// Decides a group's batches in one transaction, each command's result
    /// in group order. A group that loses a WATCH race, or that Redis
    /// refuses, is split in halves that go on alone, so a retry touches
    /// only the part where the race or the culprit is.
    fn decide_group<'a>(
        &'a self,
        group: &'a [(ResourceId, Vec<Submission>)],
    ) -> futures_util::future::BoxFuture<'a, Vec<Vec<Decided>>> {
        Box::pin(async move {
            if let [(resource, batch)] = group {
                return vec![self.decide_batch(resource, batch).await];
            }
            let batches: Vec<(&ResourceId, &[Submission])> =
                group.iter().map(|(r, b)| (r, b.as_slice())).collect();
            match self.commit_all(&batches, false).await {
                Ok(Some(outcomes)) => outcomes
                    .into_iter()
                    .map(|o| o.into_iter().map(Ok).collect())
                    .collect(),
                Ok(None) | Err(Failure::Store(_)) => {
                    let (left, right) = group.split_at(group.len() / 2);
                    let (mut left, right) =
                        tokio::join!(self.decide_group(left), self.decide_group(right));
                    left.extend(right);
                    left
                }
                Err(_) => group
                    .iter()
                    .map(|(_, batch)| batch.iter().map(|_| Err(Failure::Abandoned)).collect())
                    .collect(),
            }
        })
    }

    /// Decides one resource's batch, each command's result in batch order.
    /// One bad command must not take its batch down with it: if Redis
    /// refuses the batch, each command is committed alone so only the
    /// culprit fails.
    async fn decide_batch(&self, resource: &ResourceId, batch: &[Submission]) -> Vec<Decided> {
        match self.commit(resource, batch).await {
            Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
            Err(failure) if batch.len() > 1 && !matches!(failure, Failure::Abandoned) => {
                warn!(error = %chain(&failure), size = batch.len(), "batch failed; committing its commands one by one");
                let mut decided = Vec::with_capacity(batch.len());
                for submission in batch {
                    let alone = self.commit(resource, std::slice::from_ref(submission));
                    decided.push(alone.await.map(|mut outcomes| outcomes.remove(0)));
                }
                decided
            }
            Err(failure) => {
                let mut decided = vec![Err(failure)];
                decided.resize_with(batch.len(), || Err(Failure::Abandoned));
                decided
            }
        }
    }

    /// Commits a batch of one resource's commands (retrying lost races and
    /// waiting out outages), then settles what the outcomes owe budgets.
    pub(super) async fn commit(
        &self,
        resource: &ResourceId,
        batch: &[Submission],
    ) -> Result<Vec<Outcome<OutgoingEvent>>, Failure> {
        let mut committed = self
            .commit_all(&[(resource, batch)], true)
            .await?
            .expect("retried until committed");
        Ok(committed.remove(0))
    }

    /// Commits the batches of several resources in one transaction,
    /// waiting out outages, then settles what the outcomes owe budgets.
    /// A lost WATCH race is retried when `retry_conflicts`, else `None`.
    async fn commit_all(
        &self,
        group: &[(&ResourceId, &[Submission])],
        retry_conflicts: bool,
    ) -> Result<Option<Vec<Vec<Outcome<OutgoingEvent>>>>, Failure> {
        let started = Instant::now();
        let attempt = || decide_and_commit_all(&self.store, group);
        let Some(committed) = self.attempting(attempt, retry_conflicts).await? else {
            return Ok(None);
        };
        let commands: usize = group.iter().map(|(_, batch)| batch.len()).sum();
        // A sweep's empty batch is not a batch of commands.
        if commands > 0 {
            metrics::histogram!(metric::BATCH_SIZE).record(commands as f64);
        }
        metrics::counter!(metric::COMMITS).increment(1);
        metrics::histogram!(metric::COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        // Step 3 of a budgeted take, cancel or expiry: the budget agrees
        // with the outcome before anyone hears of it.
        let mut steps: Vec<&BudgetStep> = Vec::new();
        for c in &committed {
            steps.extend(c.outcomes.iter().filter_map(|o| o.event().step.as_ref()));
            steps.extend(&c.refunds);
        }
        self.settle_budgets(steps.into_iter()).await?;
        Ok(Some(committed.into_iter().map(|c| c.outcomes).collect()))
    }

    /// Makes each event's budget agree with it (see
    /// [`crate::domain::BudgetStep`]); idempotent, so a redelivery that
    /// replays an outcome settles again harmlessly.
    pub(super) async fn settle_budgets<'e>(
        &self,
        steps: impl Iterator<Item = &'e BudgetStep>,
    ) -> Result<(), Failure> {
        // One transaction per hash slot the budgets are in (one for all of
        // them on a single Redis), those of different slots at once.
        let mut by_slot: BTreeMap<Option<u16>, BTreeMap<&BudgetId, Vec<BudgetStep>>> =
            BTreeMap::new();
        for step in steps {
            let slot = by_slot
                .entry(self.store.budget_slot(&step.budget_id))
                .or_default();
            slot.entry(&step.budget_id).or_default().push(step.clone());
        }
        let settling = by_slot.into_values().map(|budgets| async move {
            let group: Vec<(&BudgetId, &[BudgetStep])> =
                budgets.iter().map(|(b, s)| (*b, s.as_slice())).collect();
            self.retrying(|| async {
                match self.store.settle_all(&group).await {
                    Ok(settled) => Ok(settled.then_some(())),
                    // The outcomes are committed: their commands must never
                    // be dead-lettered before their events go out, so even
                    // a budget that cannot be read is waited for (an
                    // operator repairs it; `verify` names it).
                    Err(e) if !e.is_transient() => Err(StoreError::Unavailable(Box::new(e))),
                    Err(e) => Err(e),
                }
            })
            .await
        });
        for settled in join_all(settling).await {
            settled?;
        }
        Ok(())
    }

    /// Decides a `define_budget` (no batching: budgets change rarely).
    async fn define_budget(
        &self,
        command: &BudgetCommand,
        body_hash: &str,
    ) -> Result<Outcome<OutgoingEvent>, Failure> {
        self.retrying(|| self.store.define_budget(command, body_hash))
            .await
    }

    /// Runs one optimistic transaction until it commits, retrying lost
    /// WATCH races (`Ok(None)`) with jittered backoff and waiting out Redis
    /// outages in place: an outage is no reason to burn the messages'
    /// delivery attempts.
    async fn retrying<T, F>(&self, attempt: impl FnMut() -> F) -> Result<T, Failure>
    where
        F: Future<Output = Result<Option<T>, StoreError>>,
    {
        let done = self.attempting(attempt, true).await?;
        Ok(done.expect("retried until done"))
    }

    /// [`Self::retrying`], or, unless `retry_conflicts`, `None` at the
    /// first lost race.
    async fn attempting<T, F>(
        &self,
        mut attempt: impl FnMut() -> F,
        retry_conflicts: bool,
    ) -> Result<Option<T>, Failure>
    where
        F: Future<Output = Result<Option<T>, StoreError>>,
    {
        let w = &self.settings.worker;
        let max_attempts = w.max_commit_attempts.max(1);
        let (mut conflicts, mut outages) = (0, 0);
        loop {
            let delay = match attempt().await {
                Ok(Some(done)) => {
                    if self.health.set_store(StoreState::Ok) {
                        info!("redis works again; deciding");
                    }
                    return Ok(Some(done));
                }
                Ok(None) => {
                    metrics::counter!(metric::WATCH_CONFLICTS).increment(1);
                    if !retry_conflicts {
                        return Ok(None);
                    }
                    conflicts += 1;
                    if conflicts % max_attempts == 0 {
                        // Other writers keep winning: step back for longer,
                        // then start over. Contention passes; a command is
                        // never given up for it.
                        metrics::counter!(metric::CONTENTION_PAUSES).increment(1);
                        let rounds = conflicts / max_attempts;
                        let delay = backoff(w.reconnect_base_ms, w.reconnect_max_ms, rounds);
                        warn!(
                            conflicts,
                            pause_ms = delay.as_millis() as u64,
                            "other writers keep winning the WATCH race; pausing"
                        );
                        delay
                    } else {
                        full_jitter(
                            Duration::from_millis(w.retry_base_ms),
                            Duration::from_millis(w.retry_max_ms),
                            conflicts,
                        )
                    }
                }
                Err(e) if e.is_transient() => {
                    metrics::counter!(metric::REDIS_ERRORS).increment(1);
                    outages += 1;
                    let delay = backoff(w.reconnect_base_ms, w.reconnect_max_ms, outages);
                    let state = match e {
                        StoreError::Uninitialised { .. } => StoreState::Uninitialised,
                        _ => StoreState::Failing,
                    };
                    // Said once per outage; every lane waits the same way.
                    if self.health.set_store(state) {
                        warn!(error = %chain(&e), "redis fails; holding commands and retrying until it works");
                    } else {
                        debug!(error = %chain(&e), retry_in_ms = delay.as_millis() as u64, "redis still fails");
                    }
                    delay
                }
                Err(e) => return Err(Failure::Store(e)),
            };
            if !self.pause(delay).await {
                return Err(Failure::Abandoned);
            }
        }
    }

    /// Sleeps unless the session is abandoned; `false` if it was.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.abandon.cancelled() => false,
        }
    }

    /// Carries out a disposition.
    async fn settle(&self, delivery: Delivery, disposition: Disposition) {
        match disposition {
            Disposition::Ack => delivery.ack(),
            Disposition::Leave => {
                debug!("left unacked for redelivery");
                delivery.leave();
            }
            // The rare ways to end are boxed: inline, their state would make
            // every delivery's future (prefetch of them in flight) twice as
            // large.
            Disposition::Requeue(failure) => Box::pin(self.requeue(delivery, &failure)).await,
            Disposition::DeadLetter { cause, why } => {
                Box::pin(self.dead_letter(delivery, cause, &why)).await
            }
        }
    }

    /// Moves a delivery to the dead-letter queue, or requeues it if that
    /// fails.
    async fn dead_letter(&self, delivery: Delivery, cause: &'static str, why: &str) {
        {
            {
                Span::current().record("outcome", "dead_lettered");
                warn!(error = %why, cause, "dead-lettering the command");
                let exchange = &self.settings.amqp.dead_letter_exchange;
                let dead_lettered = tokio::select! {
                    result = delivery.dead_letter(&self.publisher, exchange, why) => result,
                    // Dropped mid-publish: left for redelivery.
                    _ = self.abandon.cancelled() => return,
                };
                match dead_lettered {
                    Ok(()) => {
                        metrics::counter!(metric::DEAD_LETTERED, "cause" => cause).increment(1)
                    }
                    Err((delivery, e)) => self.requeue(delivery, &Failure::Publish(e)).await,
                }
            }
        }
    }

    /// Puts a delivery back for another try, after a short pause that keeps
    /// a failing command from spinning through the queue at full speed.
    async fn requeue(&self, delivery: Delivery, failure: &Failure) {
        let deliveries = delivery.earlier_deliveries().saturating_add(1);
        warn!(error = %chain(failure), deliveries, "command not done; requeueing it");
        metrics::counter!(metric::REQUEUED).increment(1);
        let w = &self.settings.worker;
        if self
            .pause(backoff(w.reconnect_base_ms, w.reconnect_max_ms, 1))
            .await
        {
            delivery.requeue();
        }
    }

    /// Publishes the outcome, retrying in place a few times: a nack, a
    /// return or a missing confirm is usually brief, and retrying here does
    /// not spend the command's delivery attempts.
    pub(super) async fn publish_event(&self, event: &OutgoingEvent) -> Result<(), Failure> {
        let amqp = &self.settings.amqp;
        let w = &self.settings.worker;
        let event_id = event.event_id.to_string();
        let routing_key = event.routing_key();
        let mut failures = 0;
        loop {
            let publish = self.publisher.publish(Message {
                exchange: &amqp.events_exchange,
                routing_key: &routing_key,
                body: &event.body,
                message_id: Some(&event_id),
                correlation_id: Some(event.command_id.as_str()),
                headers: None,
                // With the alternate exchange in place nothing is returned;
                // without it, a return says so instead of losing the event.
                mandatory: true,
            });
            let started = Instant::now();
            let result = tokio::select! {
                result = publish => result,
                _ = self.abandon.cancelled() => return Err(Failure::Abandoned),
            };
            let e = match result {
                Ok(()) => {
                    metrics::histogram!(metric::PUBLISH_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(e) if !self.publisher.is_open() => {
                    // The channel is gone: only a new session can publish.
                    // The delivery goes back to the queue, and its
                    // redelivery re-publishes the stored event.
                    self.broken.cancel();
                    warn!(error = %chain(&e), "publishing channel closed");
                    return Err(Failure::Abandoned);
                }
                Err(e) => e,
            };
            // Committed means published: the event goes out again, the same
            // bytes, until the broker confirms it; its command is never acked
            // or dead-lettered before.
            metrics::counter!(metric::PUBLISH_FAILURES).increment(1);
            failures += 1;
            let delay = backoff(w.reconnect_base_ms, w.reconnect_max_ms, failures);
            let retry_in_ms = delay.as_millis() as u64;
            match &e {
                PublishError::Returned { .. } if failures == 1 => error!(
                    error = %chain(&e), retry_in_ms,
                    exchange = %amqp.events_exchange,
                    "an outcome event matched no queue: the events exchange has no alternate \
                     exchange; run `reservation-worker setup` and follow what it says"
                ),
                _ if failures == 1 => {
                    warn!(error = %chain(&e), retry_in_ms, "event not confirmed; publishing it again")
                }
                _ => debug!(error = %chain(&e), failures, retry_in_ms, "event still not confirmed"),
            }
            if !self.pause(delay).await {
                return Err(Failure::Abandoned);
            }
        }
    }
}

/// Counts and logs one command's outcome, inside its span.
fn record_outcome(outcome: &Outcome<OutgoingEvent>) {
    let event = outcome.event();
    Span::current().record("outcome", event.routing_key().as_str());
    match outcome {
        Outcome::Decided(_) => debug!("decided"),
        Outcome::Replayed(_) => {
            metrics::counter!(metric::DUPLICATES).increment(1);
            info!("duplicate delivery; re-publishing the stored outcome")
        }
        Outcome::Conflict(_) => warn!("command_id reused with a different body"),
    }
    metrics::counter!(metric::COMMANDS, "command" => event.command.as_str(), "outcome" => event.outcome())
        .increment(1);
    if let Some(reason) = event.reason {
        metrics::counter!(metric::REJECTIONS, "reason" => reason.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_that_went_well_is_acked() {
        assert!(matches!(disposition(Ok(()), 0, 20, true), Disposition::Ack));
    }

    #[test]
    fn an_abandoned_delivery_is_left_for_redelivery() {
        assert!(matches!(
            disposition(Err(Failure::Abandoned), 19, 20, true),
            Disposition::Leave
        ));
    }

    #[test]
    fn an_unreadable_body_is_dead_lettered_at_once_with_its_reason() {
        let d = disposition(
            Err(Failure::Unreadable(Unreadable("not JSON".into()))),
            0,
            20,
            true,
        );
        assert!(
            matches!(d, Disposition::DeadLetter { cause: metric::CAUSE_UNREADABLE, ref why } if why == "not JSON")
        );
    }

    #[test]
    fn a_failure_is_requeued_until_the_delivery_limit_then_dead_lettered() {
        let failure = || {
            let e = redis::make_extension_error("WRONGTYPE".into(), None);
            Err(Failure::Store(StoreError::from(e)))
        };
        assert!(matches!(
            disposition(failure(), 0, 20, true),
            Disposition::Requeue(_)
        ));
        assert!(matches!(
            disposition(failure(), 18, 20, true),
            Disposition::Requeue(_)
        ));
        match disposition(failure(), 19, 20, true) {
            Disposition::DeadLetter { cause, why } => {
                assert_eq!(cause, "delivery_limit");
                assert!(
                    why.starts_with("failed 20 deliveries; last error:"),
                    "{why}"
                );
            }
            other => panic!("expected a dead letter, got {other:?}"),
        }
        assert!(matches!(
            disposition(failure(), u32::MAX, 20, true),
            Disposition::DeadLetter { .. }
        ));
        assert!(
            matches!(
                disposition(failure(), 19, 20, false),
                Disposition::Requeue(_)
            ),
            "a released body is left to the queue's own delivery limit"
        );
    }
}
