//! The contract's topology: declaring it (idempotently), removing it, and
//! the names of the queues a worker consumes.

use crate::config::AmqpSettings;
use lapin::options::{
    BasicConsumeOptions, ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ErrorKind, ExchangeKind};
use tracing::{debug, warn};

/// The queue argument that places a quorum queue's leader when the queue
/// is declared (RabbitMQ 3.10 and later).
const LEADER_LOCATOR: &str = "x-queue-leader-locator";

/// Leaders spread over the cluster's nodes, rather than all on the node the
/// declaring client happened to be connected to (`client-local`).
const BALANCED: &str = "balanced";

/// What [`declare_topology`] found besides what it declared.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Declared {
    /// Quorum queues that already existed without a leader locator
    /// (declared by an older version) and were kept as they are: the
    /// broker refuses to redeclare a queue with an argument it lacks.
    pub unbalanced: Vec<String>,
}

impl Declared {
    /// How an operator gets balanced leaders for [`Self::unbalanced`]
    /// queues, if there are any: a broker policy for their future
    /// declarations, and a rebalance for the leaders they have now.
    pub fn advice(&self, s: &AmqpSettings) -> Option<String> {
        if self.unbalanced.is_empty() {
            return None;
        }
        let vhost = s
            .url
            .split()
            .first()
            .and_then(|url| url.expose().parse::<lapin::uri::AMQPUri>().ok())
            .map_or_else(|| "<vhost>".to_string(), |uri| uri.vhost);
        let names: Vec<String> = self
            .unbalanced
            .iter()
            .map(|q| q.replace('.', "\\."))
            .collect();
        let pattern = format!("^({})$", names.join("|"));
        Some(format!(
            "quorum queues {queues} exist without {LEADER_LOCATOR} = {BALANCED} (declared by an \
             older version; the broker refuses to add the argument) and were kept as they are. \
             For balanced leader placement, set it by policy: `rabbitmqctl set_policy -p '{vhost}' \
             --apply-to queues reservation-leaders '{pattern}' '{{\"queue-leader-locator\":\"{BALANCED}\"}}'` \
             (a queue follows one policy: merge the key into any other policy that matches these \
             queues). A locator places a leader when its queue is declared; to spread the leaders \
             these queues have now, run `rabbitmq-queues rebalance quorum --vhost-pattern '^{vhost}$' \
             --queue-pattern '{pattern}'`",
            queues = self.unbalanced.join(", "),
        ))
    }
}

/// Declares exchanges, queues and bindings of the contract. Idempotent, as
/// long as the queue arguments (delivery limit) have not changed since the
/// queues were first declared: the broker refuses to redeclare a queue with
/// other arguments.
///
/// Quorum queues are declared with a balanced leader placement
/// (`x-queue-leader-locator`), so the leaders of the command queue and its
/// partitions spread over a cluster's nodes. A queue that exists without
/// that argument (an older version declared it) is kept as it is, named in
/// [`Declared::unbalanced`] and in a warning saying how to balance it by
/// policy. Finding that out closes `channel` (the broker answers a
/// declaration it refuses by closing the channel): the rest is declared on
/// a connection of its own, and `channel` is of no further use. With a
/// connection at hand, [`declare_topology_on`] uses new channels on it
/// instead.
///
/// With `amqp.partitions` = P > 0, commands are routed instead through a
/// consistent-hash exchange (on the routing key, the resource id) to P quorum
/// queues with a single active consumer each: every resource belongs to one
/// partition, and each partition to one replica at a time. The command queue
/// stays declared but unbound, so workers drain what it still holds.
pub async fn declare_topology(
    channel: &Channel,
    s: &AmqpSettings,
) -> Result<Declared, TopologyError> {
    Declaring {
        s,
        channel: channel.clone(),
        more: More::Spare(None),
        declared: Declared::default(),
    }
    .run()
    .await
}

/// [`declare_topology`] on channels of its own on `connection`.
pub async fn declare_topology_on(
    connection: &Connection,
    s: &AmqpSettings,
) -> Result<Declared, TopologyError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(|source| TopologyError::explain(source, s))?;
    Declaring {
        s,
        channel,
        more: More::Connection(connection),
        declared: Declared::default(),
    }
    .run()
    .await
}

/// A declaration of the topology under way.
struct Declaring<'a> {
    s: &'a AmqpSettings,
    /// The channel declarations go to.
    channel: Channel,
    /// Where the next channel comes from once the broker closed this one.
    more: More<'a>,
    declared: Declared,
}

/// Where a declaration gets a new channel.
enum More<'a> {
    /// The caller's connection.
    Connection(&'a Connection),
    /// A connection of the declaration's own, opened when first needed.
    Spare(Option<Box<Connection>>),
}

impl Declaring<'_> {
    /// Declares everything, then closes what it opened itself.
    async fn run(mut self) -> Result<Declared, TopologyError> {
        let result = self.declare().await;
        let mine = match &self.more {
            More::Connection(_) => true,
            More::Spare(spare) => spare.is_some(),
        };
        if mine && self.channel.status().connected() {
            let _ = self.channel.close(200, "topology declared".into()).await;
        }
        if let More::Spare(Some(spare)) = &self.more {
            let _ = spare.close(200, "topology declared".into()).await;
        }
        result?;
        if let Some(advice) = self.declared.advice(self.s) {
            warn!("{advice}");
        }
        Ok(self.declared)
    }

    /// A new channel, for after the broker closed the last one.
    async fn reopen(&mut self) -> Result<(), TopologyError> {
        let s = self.s;
        let connection = match &mut self.more {
            More::Connection(connection) => *connection,
            More::Spare(spare) => match spare {
                Some(connection) => &*connection,
                None => {
                    let connection = super::connect(s, "reservation-topology")
                        .await
                        .map_err(|e| TopologyError::Reconnect(Box::new(e)))?;
                    &**spare.insert(Box::new(connection))
                }
            },
        };
        self.channel = connection
            .create_channel()
            .await
            .map_err(|source| TopologyError::explain(source, s))?;
        Ok(())
    }

    /// Declares a durable quorum queue with `args` and a balanced leader
    /// placement, or, if it exists without a leader locator, as it is.
    async fn quorum_queue(&mut self, name: &str, args: FieldTable) -> Result<(), TopologyError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut balanced = args.clone();
        balanced.insert(
            LEADER_LOCATOR.into(),
            AMQPValue::LongString(BALANCED.into()),
        );
        let refused = match self
            .channel
            .queue_declare(name.into(), durable, balanced)
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if lacks_leader_locator(&e) => e,
            Err(e) => return Err(TopologyError::explain(e, self.s)),
        };
        debug!(queue = name, error = %refused, "the queue exists without a leader locator");
        self.reopen().await?;
        self.channel
            .queue_declare(name.into(), durable, args)
            .await
            .map_err(|source| TopologyError::explain(source, self.s))?;
        self.declared.unbalanced.push(name.to_string());
        Ok(())
    }

    /// Exchanges, then queues, then bindings.
    async fn declare(&mut self) -> Result<(), TopologyError> {
        let s = self.s;
        let explain = |source| TopologyError::explain(source, s);
        self.exchanges().await.map_err(explain)?;
        self.quorum_queue(&s.unrouted_queue, unrouted_queue_arguments(s))
            .await?;
        self.quorum_queue(&s.dead_letter_queue, quorum()).await?;
        self.quorum_queue(&s.commands_queue, command_queue_arguments(s))
            .await?;
        for name in partition_queues(s) {
            let mut args = command_queue_arguments(s);
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
            self.quorum_queue(&name, args).await?;
        }
        self.bindings().await.map_err(explain)
    }

    /// The exchanges every mode has. The unrouted exchange comes before the
    /// events exchange, which names it.
    async fn exchanges(&self) -> Result<(), lapin::Error> {
        let s = self.s;
        self.exchange(
            &s.commands_exchange,
            ExchangeKind::Topic,
            FieldTable::default(),
        )
        .await?;
        // Events no binding takes go to the alternate exchange and wait in
        // its queue, so an event is never dropped and a worker never waits
        // for a consumer to bind.
        self.exchange(
            &s.unrouted_exchange,
            ExchangeKind::Fanout,
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
        self.exchange(&s.events_exchange, ExchangeKind::Topic, events_args)
            .await?;
        self.exchange(
            &s.dead_letter_exchange,
            ExchangeKind::Fanout,
            FieldTable::default(),
        )
        .await
    }

    /// The bindings of the unrouted and dead-letter queues, and of the
    /// command queue; in partitioned mode, of the partitions through their
    /// exchange instead, the command queue unbound to drain.
    async fn bindings(&self) -> Result<(), lapin::Error> {
        let s = self.s;
        self.bind(&s.unrouted_queue, &s.unrouted_exchange, "")
            .await?;
        self.bind(&s.dead_letter_queue, &s.dead_letter_exchange, "")
            .await?;
        if s.partitions == 0 {
            return self
                .bind(&s.commands_queue, &s.commands_exchange, "#")
                .await;
        }
        self.exchange(
            &s.partition_exchange,
            ExchangeKind::Custom("x-consistent-hash".into()),
            FieldTable::default(),
        )
        .await?;
        self.channel
            .exchange_bind(
                s.partition_exchange.as_str().into(),
                s.commands_exchange.as_str().into(),
                "#".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for name in partition_queues(s) {
            // Equal weights: the hash ring gives each partition a fair share.
            self.bind(&name, &s.partition_exchange, "1").await?;
        }
        self.channel
            .queue_unbind(
                s.commands_queue.as_str().into(),
                s.commands_exchange.as_str().into(),
                "#".into(),
                FieldTable::default(),
            )
            .await
    }

    async fn exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        args: FieldTable,
    ) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .exchange_declare(name.into(), kind, durable, args)
            .await
    }

    async fn bind(&self, queue: &str, exchange: &str, key: &str) -> Result<(), lapin::Error> {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }
}

/// Whether the broker refused a queue declaration only because the queue
/// exists without a leader locator: `PRECONDITION_FAILED - inequivalent
/// arg 'x-queue-leader-locator' ... but current is none`.
fn lacks_leader_locator(e: &lapin::Error) -> bool {
    let ErrorKind::ProtocolError(amqp) = e.kind() else {
        return false;
    };
    let text = amqp.get_message().as_str();
    *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
        && text.contains(&format!("inequivalent arg '{LEADER_LOCATOR}'"))
        && text.ends_with("but current is none")
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

/// Why the topology could not be declared.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// The broker refused part of it.
    #[error("declaring the topology failed{hint}")]
    Refused {
        /// What to do about it, when a person can fix it (starts with "; ").
        hint: String,
        /// The broker's answer.
        #[source]
        source: lapin::Error,
    },
    /// The channel closed by a refused declaration could not be replaced.
    #[error("declaring the topology failed: no connection for the rest of it")]
    Reconnect(#[source] Box<super::ConnectError>),
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
        } else if text.contains(LEADER_LOCATOR) {
            format!(
                "; a queue exists with another {LEADER_LOCATOR} than {BALANCED} (declared by hand?): \
                 drain and delete it so that setup declares it again, or keep the workers' version \
                 that declared it"
            )
        } else if text.contains("PRECONDITION_FAILED") {
            format!(
                "; a queue exists with other arguments (delivery limit {} or partitioning changed?): \
                 drain and delete it, or keep the old settings",
                s.delivery_limit
            )
        } else {
            String::new()
        };
        TopologyError::Refused { hint, source }
    }
}

/// A quorum queue.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// The unrouted events' quorum queue, which keeps each event for
/// `amqp.unrouted_retention_secs`.
fn unrouted_queue_arguments(s: &AmqpSettings) -> FieldTable {
    let mut args = quorum();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(
            i64::try_from(s.unrouted_retention_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        ),
    );
    args
}

/// A quorum queue with a delivery limit, dead-lettering at-least-once
/// (which needs `reject-publish` overflow) so a poison message is never
/// dropped on its way to the dead-letter queue.
fn command_queue_arguments(s: &AmqpSettings) -> FieldTable {
    let mut args = quorum();
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
