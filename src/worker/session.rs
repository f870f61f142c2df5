//! One broker session: connect, declare the topology, consume and hand
//! every delivery to the pipeline; on shutdown drain, and in every case
//! tear down within bounded time.

use super::partitions::{self, Partitions, RoundError};
use super::pipeline::{Pipeline, Seen};
use crate::broker::{self, Delivery, Publisher, Settler, TopologyError};
use crate::config::Settings;
use crate::health::{Health, StoreState};
use crate::store::Store;
use futures_util::StreamExt;
use futures_util::stream::{BoxStream, SelectAll};
use lapin::Consumer;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::types::ShortString as ConsumerTag;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Why a session ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No connection.
    #[error(transparent)]
    Connect(broker::ConnectError),
    /// The topology could not be declared.
    #[error(transparent)]
    Topology(#[from] TopologyError),
    /// A channel or its settings were refused.
    #[error("opening a channel")]
    Channel(#[source] lapin::Error),
    /// A queue could not be consumed.
    #[error("subscribing to {queue}")]
    Subscribe {
        /// The queue.
        queue: String,
        /// Why.
        #[source]
        source: lapin::Error,
    },
    /// The delivery stream failed.
    #[error("consuming")]
    Consume(#[source] lapin::Error),
    /// The delivery stream ended.
    #[error("the broker cancelled the consumer")]
    Cancelled,
    /// A publish found the publishing channel closed.
    #[error("the publishing channel closed")]
    PublishingChannelClosed,
}

/// How long each step of tearing a session down may take.
const TEARDOWN: Duration = Duration::from_secs(5);

/// Finished deliveries allowed to wait behind an unfinished one before they
/// are acked one by one. Small, so one slow command cannot hold a large part
/// of the prefetch window hostage (measured: prefetch / 2 let backlogs build
/// at half the peak rate).
const ACKS_WAITING_BEHIND_A_GAP: usize = 64;

/// What a session needs from its worker.
pub struct Replica<'a> {
    /// All settings.
    pub settings: &'a Arc<Settings>,
    /// The Redis side.
    pub store: &'a Store,
    /// Readiness flags to keep current.
    pub health: &'a Health,
    /// The broker connection name.
    pub name: &'a str,
}

/// One connection: declare, consume, dispatch. `Ok` only on shutdown.
pub async fn run(replica: Replica<'_>, shutdown: &CancellationToken) -> Result<(), SessionError> {
    let Replica {
        settings,
        store,
        health,
        name,
    } = replica;
    let amqp = &settings.amqp;
    // With a cluster's nodes in `amqp.url`, this connects to the node after
    // the one the last session used: a session ends when its connection is
    // lost, and that node may be gone.
    // Shared with the observer task, which opens its own channel on it.
    let connection = Arc::new(
        broker::connect(amqp, name)
            .await
            .map_err(SessionError::Connect)?,
    );
    broker::declare_topology_on(&connection, amqp).await?;
    // Events go out on the consuming connection unless configured
    // otherwise: a second connection is a second I/O thread, and the
    // flow-control isolation it buys matters little when every ack waits
    // for an event's confirm anyway.
    let publishing = if amqp.separate_publisher_connection {
        let name = format!("{name}-publisher");
        Some(
            broker::connect(amqp, &name)
                .await
                .map_err(SessionError::Connect)?,
        )
    } else {
        None
    };
    let publisher = Publisher::open(
        publishing.as_ref().unwrap_or(&connection),
        amqp.confirm_timeout(),
    )
    .await
    .map_err(SessionError::Channel)?;
    let channel = connection
        .create_channel()
        .await
        .map_err(SessionError::Channel)?;
    channel
        .basic_qos(amqp.prefetch, BasicQosOptions::default())
        .await
        .map_err(SessionError::Channel)?;
    // The command queue; in partitioned mode also the partitions this
    // replica is given, round by round (`partitions`).
    let queues = vec![amqp.commands_queue.clone()];
    let (mut tags, consumers) = subscribe(&channel, &queues, name).await?;
    let mut deliveries: Deliveries = consumers
        .into_iter()
        .map(|c| c.map(|d| (None, d)).boxed())
        .collect();
    let mut partitioned =
        (amqp.partitions > 0).then(|| Partitions::new(broker::partition_queues(amqp), name));
    let mut rounds = tokio::time::interval(partitions::ROUND);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.set_broker(true);
    health.set_consuming(true);
    info!(queue = %amqp.commands_queue, partitions = amqp.partitions, prefetch = amqp.prefetch, "consuming");

    let tracker = TaskTracker::new();
    let (settler, settling) = Settler::spawn(channel.clone(), ACKS_WAITING_BEHIND_A_GAP);
    let pipeline = Arc::new(Pipeline::new(
        settings.clone(),
        store.clone(),
        health.clone(),
        publisher.clone(),
        tracker.clone(),
    ));
    // Holds that run out are found and released by every replica's sweep;
    // it stops at shutdown, between two sweeps.
    let sweeping = CancellationToken::new();
    tracker.spawn(super::sweeper::run(pipeline.clone(), sweeping.clone()));
    // The metrics' backlog and holds figures, read until the session ends
    // however it ends; nothing waits for them to stop.
    let observing = CancellationToken::new();
    let _stop_observing = observing.clone().drop_guard();
    tokio::spawn(super::observe::run(
        connection.clone(),
        broker::consumed_queues(amqp),
        store.clone(),
        observing,
    ));
    let mut store_state = health.watch_store();
    let end = loop {
        let consuming = !tags.is_empty();
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = rounds.tick(), if consuming && partitioned.is_some() => {
                let Some(p) = partitioned.as_mut() else { continue };
                match p.round(store, &channel, &mut deliveries).await {
                    Ok(()) => {}
                    Err(RoundError::Store(e)) => {
                        warn!(error = %e, "partitions: this round failed; trying again at the next");
                    }
                    Err(RoundError::Session(e)) => break Err(e),
                }
            }
            // Events, dead letters and expiries all publish on this channel;
            // once it is closed, deliveries can only be left for redelivery.
            _ = pipeline.broken().cancelled() => break Err(SessionError::PublishingChannelClosed),
            _ = publisher.closed() => break Err(SessionError::PublishingChannelClosed),
            // While Redis fails, take no new deliveries: those held wait in
            // their lanes, retried in place, without spending their
            // delivery count; the rest stay in the queue for whichever
            // replica can decide them first.
            Ok(()) = store_state.changed() => {
                let works = *store_state.borrow_and_update() == StoreState::Ok;
                if !works && consuming {
                    // What the broker sent before the cancel still arrives
                    // on the old consumers: it is taken as usual.
                    cancel(&channel, std::mem::take(&mut tags)).await;
                    if let Some(p) = partitioned.as_mut() {
                        p.cancel_all(&channel).await;
                    }
                    health.set_consuming(false);
                    warn!("redis fails: stopped taking deliveries until it works");
                } else if works && !consuming {
                    let consumers;
                    (tags, consumers) = subscribe(&channel, &queues, name).await?;
                    deliveries.extend(consumers.into_iter().map(|c| c.map(|d| (None, d)).boxed()));
                    health.set_consuming(true);
                    info!("redis works: taking deliveries again");
                }
            }
            next = deliveries.next(), if !deliveries.is_empty() => match next {
                Some((partition, Ok(delivery))) => {
                    let seen = Seen {
                        delivery_tag: delivery.delivery_tag,
                        redelivered: delivery.redelivered,
                    };
                    let mut delivery = Delivery::new(delivery, settler.clone());
                    if let (Some(p), Some(parts)) = (partition, &partitioned) {
                        delivery = delivery.counted(parts.in_flight(p));
                    }
                    pipeline.process(delivery, seen);
                }
                Some((_, Err(e))) => break Err(SessionError::Consume(e)),
                // Every consumer ended: cancelled by us while Redis fails,
                // or else by the broker.
                None if consuming => break Err(SessionError::Cancelled),
                None => {}
            },
        }
    };
    health.set_consuming(false);
    sweeping.cancel();
    tracker.close();
    if end.is_ok() {
        // Shutdown: take no more deliveries, let in-flight ones finish.
        cancel(&channel, tags).await;
        if let Some(p) = partitioned.as_mut() {
            p.cancel_all(&channel).await;
        }
        let grace = Duration::from_secs(settings.worker.shutdown_grace_secs);
        info!(grace_secs = grace.as_secs(), "draining");
        let drained =
            partitions::drain_while_handing_over(partitioned.as_mut(), store, tracker.wait());
        if timeout(grace, drained).await.is_err() {
            warn!("grace period over; unfinished commands will be redelivered");
        }
    }
    pipeline.abandon();
    // The partitions go to the other replicas at their next round.
    if let Some(mut p) = partitioned {
        let _ = timeout(TEARDOWN, p.leave(store)).await;
    }
    // Every wait below is bounded: on a dying socket an ack or a close
    // can hang, and a worker stuck here would never reconnect. Whatever
    // is cut short is unacked, and the broker redelivers it.
    if timeout(TEARDOWN, tracker.wait()).await.is_err() {
        warn!("in-flight commands did not stop; leaving them for redelivery");
    }
    // Every decision is made; let the last acks go out before closing:
    // the settling task ends once the last settler handle is gone.
    drop((settler, pipeline));
    if timeout(TEARDOWN, settling).await.is_err() {
        warn!("the last acks could not be sent; those commands will be redelivered");
    }
    // Unacked deliveries go back to the queue when the channel closes.
    let _ = timeout(TEARDOWN, publisher.close()).await;
    if channel.status().connected() {
        let _ = timeout(TEARDOWN, channel.close(200, "worker stopping".into())).await;
    }
    let _ = timeout(TEARDOWN, connection.close(200, "worker stopping".into())).await;
    if let Some(publishing) = publishing {
        let _ = timeout(TEARDOWN, publishing.close(200, "worker stopping".into())).await;
    }
    end
}

/// The consumers of one subscription, and their tags.
type Subscription = (Vec<ConsumerTag>, Vec<Consumer>);

/// The deliveries of every queue this replica consumes, each with its
/// partition (`None` for the command queue).
pub(super) type Deliveries = SelectAll<
    BoxStream<
        'static,
        (
            Option<usize>,
            Result<lapin::message::Delivery, lapin::Error>,
        ),
    >,
>;

/// Subscribes to every queue.
async fn subscribe(
    channel: &lapin::Channel,
    queues: &[String],
    name: &str,
) -> Result<Subscription, SessionError> {
    let mut consumers = Vec::new();
    let mut tags = Vec::new();
    for queue in queues {
        let (tag, consumer) = subscribe_one(channel, queue, name).await?;
        tags.push(tag);
        consumers.push(consumer);
    }
    Ok((tags, consumers))
}

/// Subscribes to one queue, as `<name>@<queue>`.
pub(super) async fn subscribe_one(
    channel: &lapin::Channel,
    queue: &str,
    name: &str,
) -> Result<(ConsumerTag, Consumer), SessionError> {
    let consumer = channel
        .basic_consume(
            queue.into(),
            format!("{name}@{queue}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|source| SessionError::Subscribe {
            queue: queue.to_string(),
            source,
        })?;
    Ok((consumer.tag(), consumer))
}

/// Stops the consumers: no more deliveries; those held stay held.
async fn cancel(channel: &lapin::Channel, tags: Vec<ConsumerTag>) {
    for tag in tags {
        if let Err(e) = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "could not cancel a consumer");
        }
    }
}
