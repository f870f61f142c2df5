//! The contract's topology: declaring it (idempotently), removing it, and
//! the names of the queues a worker consumes.

use crate::config::AmqpSettings;
use lapin::options::{
    BasicConsumeOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Declares exchanges, queues and bindings of the contract. Idempotent, as
/// long as the queue arguments (delivery limit) have not changed since the
/// queues were first declared: the broker refuses to redeclare a queue with
/// other arguments.
///
/// With `amqp.partitions` = P > 0, commands are routed instead through a
/// consistent-hash exchange (on the routing key, the resource id) to P quorum
/// queues with a single active consumer each: every resource belongs to one
/// partition, and each partition to one replica at a time. The command queue
/// stays declared but unbound, so workers drain what it still holds.
pub async fn declare_topology(channel: &Channel, s: &AmqpSettings) -> Result<(), TopologyError> {
    declare(channel, s)
        .await
        .map_err(|source| TopologyError::explain(source, s))
}

async fn declare(channel: &Channel, s: &AmqpSettings) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            s.commands_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
        )
        .await?;
    // Events no binding takes go to the alternate exchange and wait in its
    // queue, so an event is never dropped and a worker never waits for a
    // consumer to bind. Declared first: the events exchange names it.
    channel
        .exchange_declare(
            s.unrouted_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;
    let mut unrouted_args = FieldTable::default();
    unrouted_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    unrouted_args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(
            i64::try_from(s.unrouted_retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        ),
    );
    channel
        .queue_declare(
            s.unrouted_queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            unrouted_args,
        )
        .await?;
    channel
        .queue_bind(
            s.unrouted_queue.as_str().into(),
            s.unrouted_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut events_args = FieldTable::default();
    if !s.alternate_exchange_by_policy {
        events_args.insert(
            "alternate-exchange".into(),
            AMQPValue::LongString(s.unrouted_exchange.as_str().into()),
        );
    }
    channel
        .exchange_declare(
            s.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            events_args,
        )
        .await?;
    channel
        .exchange_declare(
            s.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable,
            FieldTable::default(),
        )
        .await?;

    let queue = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(s.dead_letter_queue.as_str().into(), queue, dead_args)
        .await?;
    channel
        .queue_bind(
            s.dead_letter_queue.as_str().into(),
            s.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    channel
        .queue_declare(
            s.commands_queue.as_str().into(),
            queue,
            command_queue_arguments(s),
        )
        .await?;
    if s.partitions == 0 {
        channel
            .queue_bind(
                s.commands_queue.as_str().into(),
                s.commands_exchange.as_str().into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        return Ok(());
    }

    channel
        .exchange_declare(
            s.partition_exchange.as_str().into(),
            ExchangeKind::Custom("x-consistent-hash".into()),
            durable,
            FieldTable::default(),
        )
        .await?;
    channel
        .exchange_bind(
            s.partition_exchange.as_str().into(),
            s.commands_exchange.as_str().into(),
            "#".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    for name in partition_queues(s) {
        let mut args = command_queue_arguments(s);
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        channel
            .queue_declare(name.as_str().into(), queue, args)
            .await?;
        // Equal weights: the hash ring gives each partition a fair share.
        channel
            .queue_bind(
                name.as_str().into(),
                s.partition_exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .queue_unbind(
            s.commands_queue.as_str().into(),
            s.commands_exchange.as_str().into(),
            "#".into(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Deletes every queue and exchange [`declare_topology`] declares, messages
/// included. For tests and benchmarks that declared their own names; errors
/// are ignored, so a half-declared topology is removed as far as it exists.
pub async fn delete_topology(channel: &Channel, s: &AmqpSettings) {
    let queues = consumed_queues(s)
        .into_iter()
        .chain([s.dead_letter_queue.clone(), s.unrouted_queue.clone()]);
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [
        &s.commands_exchange,
        &s.events_exchange,
        &s.unrouted_exchange,
        &s.dead_letter_exchange,
        &s.partition_exchange,
    ] {
        let _ = channel
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// The partition queues: `<commands_queue>.p0` .. `p<P-1>`.
pub fn partition_queues(s: &AmqpSettings) -> Vec<String> {
    (0..s.partitions)
        .map(|i| format!("{}.p{i}", s.commands_queue))
        .collect()
}

/// Every queue a worker consumes: the command queue, and the partitions.
pub fn consumed_queues(s: &AmqpSettings) -> Vec<String> {
    std::iter::once(s.commands_queue.clone())
        .chain(partition_queues(s))
        .collect()
}

/// The broker refused part of the topology.
#[derive(Debug, thiserror::Error)]
#[error("declaring the topology failed{hint}")]
pub struct TopologyError {
    /// What to do about it, when a person can fix it (starts with "; ").
    hint: String,
    /// The broker's answer.
    #[source]
    source: lapin::Error,
}

impl TopologyError {
    /// Adds what to do about an error a person can fix.
    fn explain(source: lapin::Error, s: &AmqpSettings) -> TopologyError {
        let text = source.to_string();
        let hint = if text.contains("alternate-exchange") {
            format!(
                "; {events} exists without the alternate exchange {unrouted} (declared by an \
                 older version). To keep its consumers' bindings, add it with a policy: \
                 `rabbitmqctl set_policy -p <vhost> --apply-to exchanges {events}-unrouted \
                 '^{pattern}$' '{{\"alternate-exchange\":\"{unrouted}\"}}'`, then set \
                 amqp.alternate_exchange_by_policy = true (RW_AMQP__ALTERNATE_EXCHANGE_BY_POLICY=true) \
                 for setup and every worker. With no consumer bound, you may instead delete {events} \
                 and run setup again",
                events = s.events_exchange,
                unrouted = s.unrouted_exchange,
                pattern = s.events_exchange.replace('.', "\\."),
            )
        } else if text.contains("x-consistent-hash") {
            "; partitioned mode needs the consistent-hash exchange plugin: \
             run `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange` on the broker"
                .to_string()
        } else if text.contains("PRECONDITION_FAILED") {
            format!(
                "; a queue exists with other arguments (delivery limit {} or partitioning changed?): \
                 drain and delete it, or keep the old settings",
                s.delivery_limit
            )
        } else {
            String::new()
        };
        TopologyError { hint, source }
    }
}

/// A quorum queue with a delivery limit, dead-lettering at-least-once
/// (which needs `reject-publish` overflow) so a poison message is never
/// dropped on its way to the dead-letter queue.
fn command_queue_arguments(s: &AmqpSettings) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(s.delivery_limit)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(s.dead_letter_exchange.as_str().into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

/// Subscribes to every outcome event through a private queue that the
/// broker deletes with the channel (for tools and tests that watch outcomes;
/// subscribe before publishing, so none is missed). No acks.
pub async fn subscribe_to_events(
    channel: &Channel,
    s: &AmqpSettings,
    consumer_tag: &str,
) -> Result<lapin::Consumer, lapin::Error> {
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), private, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            s.events_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    channel
        .basic_consume(
            queue.name().clone(),
            consumer_tag.into(),
            no_ack,
            FieldTable::default(),
        )
        .await
}
