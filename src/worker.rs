//! The consumer: one broker session at a time; each command goes decode ->
//! dedupe/load/decide/commit (one Redis transaction) -> publish the outcome
//! with a confirm -> ack.
//!
//! A command is acked only after both the commit and the confirm; any failure
//! before that leaves it unacked, so the broker redelivers it and the
//! idempotency record turns the redelivery into a re-publish of the same
//! event.
//!
//! Group commit (the default): commands for one resource queue in a lane, and
//! the lane commits everything that arrived while its previous transaction
//! ran in one WATCH/MULTI transaction. Within a replica a hot resource then
//! never conflicts with itself, and one Redis round trip serves many commands.

use crate::broker::{self, Message, PublishError, Publisher};
use crate::config::Settings;
use crate::domain::ResourceId;
use crate::health::Health;
use crate::message::{self, Decoded, OutgoingEvent};
use crate::metrics as metric;
use crate::settle::{Decision, Settler};
use crate::store::{Outcome, Store, StoreError};
use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use rand::Rng;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, field, info, info_span, warn};

/// A worker replica.
pub struct Worker {
    settings: Arc<Settings>,
    store: Store,
    health: Health,
    name: String,
}

/// Why a delivery was not acked.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Put it back for another try (counts toward the delivery limit).
    #[error("{0}")]
    Requeue(String),
    /// The session is going away; the broker redelivers on its own.
    #[error("abandoned: the broker session ended or the grace period ran out")]
    Abandoned,
}

impl From<PublishError> for Failure {
    fn from(e: PublishError) -> Self {
        Failure::Requeue(format!("publish failed: {e}"))
    }
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
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let probe = tokio::spawn(probe_redis(
            self.store.clone(),
            self.health.clone(),
            shutdown.clone(),
        ));
        let w = &self.settings.worker;
        let mut failures: u32 = 0;
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            match self.session(&shutdown).await {
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
                        error = format!("{e:#}"),
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
        Ok(())
    }

    /// One connection: declare, consume, dispatch. `Ok` only on shutdown.
    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let amqp = &self.settings.amqp;
        let connection = broker::connect(&amqp.url, &self.name)
            .await
            .context("connecting to the broker")?;
        let setup = connection.create_channel().await?;
        broker::declare_topology(&setup, amqp)
            .await
            .map_err(|e| broker::explain(e, amqp))?;
        let _ = timeout(TEARDOWN, setup.close(200, "topology declared".into())).await;
        // Events go out on the consuming connection unless configured
        // otherwise: a second connection is a second I/O thread, and the
        // flow-control isolation it buys matters little when every ack waits
        // for an event's confirm anyway.
        let publishing = if amqp.separate_publisher_connection {
            Some(
                broker::connect(&amqp.url, &format!("{}-publisher", self.name))
                    .await
                    .context("connecting to the broker")?,
            )
        } else {
            None
        };
        let events = Publisher::open(
            publishing.as_ref().unwrap_or(&connection),
            amqp.confirm_timeout(),
        )
        .await?;
        let channel = connection.create_channel().await?;
        channel
            .basic_qos(amqp.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumers = Vec::new();
        // The broker makes the first subscriber of a partition its active
        // consumer; starting each replica at a different partition spreads
        // the partitions over the replicas instead of giving all to one.
        let mut queues = broker::consumed_queues(amqp);
        if queues.len() > 2 {
            let start = rotation(&self.name, queues.len() - 1);
            queues[1..].rotate_left(start);
        }
        for queue in queues {
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    format!("{}@{queue}", self.name).as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("subscribing to {queue}"))?;
            consumers.push(consumer);
        }
        let tags: Vec<_> = consumers.iter().map(|c| c.tag()).collect();
        let mut deliveries = futures_util::stream::select_all(consumers);
        self.health.set_broker(true);
        self.health.set_consuming(true);
        info!(queue = %amqp.commands_queue, partitions = amqp.partitions, prefetch = amqp.prefetch, "consuming");

        // Cancelled when in-flight work must stop waiting: the session died,
        // or the shutdown grace period ran out.
        let abandon = CancellationToken::new();
        // Cancelled by a task that finds the publishing channel dead.
        let broken = CancellationToken::new();
        let tracker = TaskTracker::new();
        let (settler, settling) = Settler::spawn(channel.clone(), ACKS_WAITING_BEHIND_A_GAP);
        let handler = Arc::new(Handler {
            settings: self.settings.clone(),
            store: self.store.clone(),
            health: self.health.clone(),
            publisher: events.clone(),
            abandon: abandon.clone(),
            broken: broken.clone(),
            lanes: Mutex::new(HashMap::new()),
            tracker: tracker.clone(),
            settler,
        });
        let end: anyhow::Result<()> = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = broken.cancelled() => break Err(anyhow::anyhow!("the publishing channel closed")),
                next = deliveries.next() => match next {
                    Some(Ok(delivery)) => handler.accept(delivery),
                    Some(Err(e)) => break Err(anyhow::Error::new(e).context("consuming")),
                    None => break Err(anyhow::anyhow!("the broker cancelled the consumer")),
                },
            }
        };
        self.health.set_consuming(false);
        tracker.close();
        if end.is_ok() {
            // Shutdown: take no more deliveries, let in-flight ones finish.
            for tag in tags {
                if let Err(e) = channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await
                {
                    warn!(error = %e, "could not cancel a consumer");
                }
            }
            let grace = Duration::from_secs(self.settings.worker.shutdown_grace_secs);
            info!(grace_secs = grace.as_secs(), "draining");
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                warn!("grace period over; unfinished commands will be redelivered");
            }
        }
        abandon.cancel();
        // Every wait below is bounded: on a dying socket an ack or a close
        // can hang, and a worker stuck here would never reconnect. Whatever
        // is cut short is unacked, and the broker redelivers it.
        if timeout(TEARDOWN, tracker.wait()).await.is_err() {
            warn!("in-flight commands did not stop; leaving them for redelivery");
        }
        // Every decision is made; let the last acks go out before closing.
        drop(handler);
        if timeout(TEARDOWN, settling).await.is_err() {
            warn!("the last acks could not be sent; those commands will be redelivered");
        }
        // Unacked deliveries go back to the queue when the channel closes.
        let _ = timeout(TEARDOWN, events.close()).await;
        if channel.status().connected() {
            let _ = timeout(TEARDOWN, channel.close(200, "worker stopping".into())).await;
        }
        let _ = timeout(TEARDOWN, connection.close(200, "worker stopping".into())).await;
        if let Some(publishing) = publishing {
            let _ = timeout(TEARDOWN, publishing.close(200, "worker stopping".into())).await;
        }
        end
    }
}

/// A stable position in `0..n` for a replica name (FNV-1a).
fn rotation(name: &str, n: usize) -> usize {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % n as u64) as usize
}

/// How long each step of tearing a session down may take.
const TEARDOWN: Duration = Duration::from_secs(5);

/// Finished deliveries allowed to wait behind an unfinished one before they
/// are acked one by one. Small, so one slow command cannot hold a large part
/// of the prefetch window hostage (measured: prefetch / 2 let backlogs build
/// at half the peak rate).
const ACKS_WAITING_BEHIND_A_GAP: usize = 64;

/// A received command waiting for its batch.
struct Pending {
    delivery: Delivery,
    decoded: Decoded,
    span: Span,
    received: Instant,
}

/// What the session's tasks share.
struct Handler {
    settings: Arc<Settings>,
    store: Store,
    health: Health,
    publisher: Publisher,
    abandon: CancellationToken,
    broken: CancellationToken,
    /// Group commit: commands waiting per resource. A resource has an entry
    /// exactly while a lane task runs for it.
    lanes: Mutex<HashMap<ResourceId, Vec<Pending>>>,
    tracker: TaskTracker,
    /// Acks and requeues, coalesced into multiple acks.
    settler: Settler,
}

impl Handler {
    /// Takes one delivery: decodes it and hands it to a task. With group
    /// commit, commands for a resource queue behind its lane, and each lane
    /// commits whatever accumulated while its previous transaction ran, in
    /// one transaction; without it, every command races on its own.
    fn accept(self: &Arc<Self>, delivery: Delivery) {
        metrics::gauge!(metric::IN_FLIGHT).increment(1.0);
        let received = Instant::now();
        let span = info_span!(
            "command",
            delivery_tag = delivery.delivery_tag,
            redelivered = delivery.redelivered,
            command_id = field::Empty,
            resource_id = field::Empty,
            outcome = field::Empty,
        );
        let decoded = match message::decode(&delivery.data) {
            Ok(decoded) => decoded,
            Err(unreadable) => {
                let this = self.clone();
                let task = async move {
                    this.dead_letter_unreadable(&delivery, &unreadable.0).await;
                    done(received);
                };
                self.tracker.spawn(task.instrument(span));
                return;
            }
        };
        let resource = decoded.command.resource_id.clone();
        span.record("command_id", decoded.command.command_id.as_str());
        span.record("resource_id", resource.as_str());
        let pending = Pending {
            delivery,
            decoded,
            span,
            received,
        };
        let this = self.clone();
        if !self.settings.worker.group_commit {
            self.tracker
                .spawn(async move { this.settle(&resource, vec![pending]).await });
            return;
        }
        let mut lanes = self.lanes.lock().expect("lanes lock");
        match lanes.entry(resource) {
            Entry::Occupied(mut queue) => queue.get_mut().push(pending),
            Entry::Vacant(slot) => {
                let resource = slot.key().clone();
                slot.insert(vec![pending]);
                self.tracker
                    .spawn(async move { this.run_lane(resource).await });
            }
        }
    }

    /// Commits batches for one resource until its queue is empty.
    async fn run_lane(self: Arc<Self>, resource: ResourceId) {
        let max = self.settings.worker.max_batch.max(1);
        loop {
            let batch: Vec<Pending> = {
                let mut lanes = self.lanes.lock().expect("lanes lock");
                let queue = lanes
                    .get_mut(&resource)
                    .expect("a running lane has an entry");
                if queue.is_empty() || self.abandon.is_cancelled() {
                    // Left unacked on abandon: the broker redelivers them.
                    let dropped = lanes.remove(&resource).map_or(0, |q| q.len());
                    metrics::gauge!(metric::IN_FLIGHT).decrement(dropped as f64);
                    return;
                }
                let n = queue.len().min(max);
                queue.drain(..n).collect()
            };
            self.settle(&resource, batch).await;
        }
    }

    /// commit -> publish -> ack for a batch of commands on one resource.
    ///
    /// Returns once the batch is committed: publishing and acking go on in a
    /// task of their own, so the lane's next transaction overlaps this
    /// batch's publisher confirms.
    async fn settle(self: &Arc<Self>, resource: &ResourceId, batch: Vec<Pending>) {
        let decoded: Vec<Decoded> = batch.iter().map(|p| p.decoded.clone()).collect();
        metrics::histogram!(metric::BATCH_SIZE).record(batch.len() as f64);
        match self.commit(resource, &decoded).await {
            Ok(outcomes) => {
                let this = self.clone();
                self.tracker
                    .spawn(async move { this.publish_and_ack(batch, outcomes).await });
            }
            Err(Failure::Requeue(why)) if batch.len() > 1 => {
                // One bad command must not take its batch down with it:
                // retry each alone so only the culprit is requeued.
                warn!(error = %why, size = batch.len(), "batch failed; committing its commands one by one");
                for p in batch {
                    Box::pin(self.settle(resource, vec![p])).await;
                }
            }
            Err(failure) => {
                for p in batch {
                    let span = p.span.clone();
                    async {
                        match &failure {
                            Failure::Requeue(why) => self.give_back(&p.delivery, why).await,
                            Failure::Abandoned => debug!("left unacked for redelivery"),
                        }
                        done(p.received);
                    }
                    .instrument(span)
                    .await;
                }
            }
        }
    }

    /// Publishes a committed batch with confirms in flight together; each
    /// command is acked as soon as its own event is confirmed.
    async fn publish_and_ack(&self, batch: Vec<Pending>, outcomes: Vec<Outcome>) {
        let finishing = batch.into_iter().zip(outcomes).map(|(p, outcome)| {
            let span = p.span.clone();
            async move {
                record_outcome(&outcome);
                match self.publish_event(outcome.event()).await {
                    Ok(()) => self.settler.settle(p.delivery.delivery_tag, Decision::Ack),
                    Err(Failure::Requeue(why)) => self.give_back(&p.delivery, &why).await,
                    Err(Failure::Abandoned) => debug!("left unacked for redelivery"),
                }
                done(p.received);
            }
            .instrument(span)
        });
        futures_util::future::join_all(finishing).await;
    }

    /// Commits the batch, waiting out Redis outages in place: an outage is
    /// no reason to burn the messages' delivery attempts.
    async fn commit(
        &self,
        resource: &ResourceId,
        batch: &[Decoded],
    ) -> Result<Vec<Outcome>, Failure> {
        let w = &self.settings.worker;
        let mut failures = 0;
        loop {
            let started = Instant::now();
            match self.store.execute(resource, batch).await {
                Ok(outcomes) => {
                    metrics::histogram!(metric::COMMIT_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    self.health.set_redis(true);
                    return Ok(outcomes);
                }
                Err(StoreError::Unavailable(e)) => {
                    metrics::counter!(metric::REDIS_ERRORS).increment(1);
                    self.health.set_redis(false);
                    failures += 1;
                    let delay = backoff(w.reconnect_base_ms, w.reconnect_max_ms, failures);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "redis unavailable; retrying");
                    if !self.pause(delay).await {
                        return Err(Failure::Abandoned);
                    }
                }
                Err(e) => return Err(Failure::Requeue(e.to_string())),
            }
        }
    }

    /// Returns a delivery that failed: requeued for another try, or, on its
    /// last allowed delivery, moved to the dead-letter queue with the error
    /// in `x-error` (the queue's own delivery limit would drop that reason).
    async fn give_back(&self, delivery: &Delivery, why: &str) {
        let limit = self.settings.amqp.delivery_limit;
        let deliveries = delivery_count(delivery) + 1;
        if deliveries >= limit {
            let why = format!("failed {deliveries} deliveries; last error: {why}");
            warn!(error = %why, "poison command; dead-lettering it");
            if self.dead_letter(delivery, &why).await.is_ok() {
                metrics::counter!(metric::DEAD_LETTERED, "cause" => "delivery_limit").increment(1);
                self.settler.settle(delivery.delivery_tag, Decision::Ack);
                return;
            }
        } else {
            warn!(error = %why, deliveries, "command not done; requeueing it");
        }
        metrics::counter!(metric::REQUEUED).increment(1);
        // A short pause keeps a failing command from spinning through the
        // queue at full speed.
        let w = &self.settings.worker;
        if self
            .pause(backoff(w.reconnect_base_ms, w.reconnect_max_ms, 1))
            .await
        {
            self.settler
                .settle(delivery.delivery_tag, Decision::Requeue);
        }
    }

    /// Publishes the outcome, retrying in place a few times: a nack, a
    /// return or a missing confirm is usually brief, and retrying here does
    /// not spend the command's delivery attempts.
    async fn publish_event(&self, event: &OutgoingEvent) -> Result<(), Failure> {
        let amqp = &self.settings.amqp;
        let w = &self.settings.worker;
        let event_id = event.event_id.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let publish = self.publisher.publish(Message {
                exchange: &amqp.events_exchange,
                routing_key: &event.routing_key,
                body: &event.body,
                message_id: Some(&event_id),
                correlation_id: Some(event.command_id.as_str()),
                headers: None,
                mandatory: amqp.mandatory_events,
            });
            let started = Instant::now();
            let result = tokio::select! {
                result = publish => result,
                _ = self.abandon.cancelled() => return Err(Failure::Abandoned),
            };
            match result {
                Ok(()) => {
                    metrics::histogram!(metric::PUBLISH_SECONDS)
                        .record(started.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(e) if !self.publisher.is_open() => {
                    // The channel is gone: only a new session can publish.
                    self.broken.cancel();
                    warn!(error = %e, "publishing channel closed");
                    return Err(Failure::Abandoned);
                }
                Err(e) => {
                    metrics::counter!(metric::PUBLISH_FAILURES).increment(1);
                    if attempt >= w.publish_attempts {
                        return Err(e.into());
                    }
                    let delay = backoff(w.reconnect_base_ms, w.reconnect_max_ms, attempt);
                    warn!(error = %e, attempt, retry_in_ms = delay.as_millis() as u64, "event not confirmed; publishing again");
                    if !self.pause(delay).await {
                        return Err(Failure::Abandoned);
                    }
                }
            }
        }
    }

    /// Dead-letters a body that names no command, then acks it.
    async fn dead_letter_unreadable(&self, delivery: &Delivery, why: &str) {
        tracing::Span::current().record("outcome", "dead_lettered");
        warn!(error = %why, "unreadable command; dead-lettering it");
        match self.dead_letter(delivery, why).await {
            Ok(()) => {
                metrics::counter!(metric::DEAD_LETTERED, "cause" => "unreadable").increment(1);
                self.settler.settle(delivery.delivery_tag, Decision::Ack);
            }
            Err(Failure::Requeue(e)) => self.give_back(delivery, &e).await,
            Err(Failure::Abandoned) => {}
        }
    }

    /// Moves a delivery to the dead-letter exchange with the reason in
    /// `x-error`, keeping the original headers.
    async fn dead_letter(&self, delivery: &Delivery, why: &str) -> Result<(), Failure> {
        let amqp = &self.settings.amqp;
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert("x-error".into(), broker::text(why));
        headers.insert(
            "x-original-exchange".into(),
            broker::text(delivery.exchange.as_str()),
        );
        headers.insert(
            "x-original-routing-key".into(),
            AMQPValue::LongString(delivery.routing_key.as_str().into()),
        );
        let publish = self.publisher.publish(Message {
            exchange: &amqp.dead_letter_exchange,
            routing_key: delivery.routing_key.as_str(),
            body: &delivery.data,
            headers: Some(headers),
            mandatory: true,
            ..Default::default()
        });
        tokio::select! {
            result = publish => Ok(result?),
            _ = self.abandon.cancelled() => Err(Failure::Abandoned),
        }
    }

    /// Sleeps unless the session is abandoned; `false` if it was.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.abandon.cancelled() => false,
        }
    }
}

/// Counts and logs one command's outcome, inside its span.
fn record_outcome(outcome: &Outcome) {
    let event = outcome.event();
    tracing::Span::current().record("outcome", event.routing_key.as_str());
    match outcome {
        Outcome::Decided(_) => debug!("decided"),
        Outcome::Replayed(_) => {
            metrics::counter!(metric::DUPLICATES).increment(1);
            info!("duplicate delivery; re-publishing the stored outcome")
        }
        Outcome::Conflict(_) => warn!("command_id reused with a different body"),
    }
    let (command, outcome_name) = event
        .routing_key
        .split_once('.')
        .unwrap_or((event.routing_key.as_str(), ""));
    metrics::counter!(metric::COMMANDS, "command" => command.to_owned(), "outcome" => outcome_name.to_owned())
        .increment(1);
    if let Some(reason) = &event.reason {
        metrics::counter!(metric::REJECTIONS, "reason" => reason.clone()).increment(1);
    }
}

/// A delivery left the worker's hands (acked, requeued or abandoned).
fn done(received: Instant) {
    metrics::gauge!(metric::IN_FLIGHT).decrement(1.0);
    metrics::histogram!(metric::PROCESS_SECONDS).record(received.elapsed().as_secs_f64());
}

/// Earlier deliveries of this message, from the quorum queue's
/// `x-delivery-count` header (absent on the first delivery).
fn delivery_count(delivery: &Delivery) -> u32 {
    let value = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    match value {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from(n).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(n).unwrap_or(0),
        Some(AMQPValue::ShortShortInt(n)) => u32::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// Keeps the Redis readiness flag honest while no commands arrive.
async fn probe_redis(store: Store, health: Health, shutdown: CancellationToken) {
    loop {
        health.set_redis(store.ping().await.is_ok());
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Exponential backoff with full jitter, capped.
fn backoff(base_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let cap = base_ms
        .saturating_mul(1 << attempt.min(20))
        .min(max_ms)
        .max(1);
    Duration::from_millis(rand::rng().random_range(cap / 2..=cap))
}

#[cfg(test)]
mod tests {
    use super::rotation;

    #[test]
    fn rotation_is_stable_and_spreads_replica_names() {
        assert_eq!(rotation("worker-a", 4), rotation("worker-a", 4));
        let starts: std::collections::HashSet<_> = (0..16)
            .map(|i| rotation(&format!("reservation-worker-{i}"), 4))
            .collect();
        assert!(starts.len() >= 3, "{starts:?}");
    }
}
