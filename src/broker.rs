//! RabbitMQ: connecting, declaring the contract's topology, and publishing
//! with publisher confirms.

use crate::config::AmqpSettings;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::Arc;
use std::time::Duration;

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// Opens a connection that shows up as `name` in the broker's connection list.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

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
pub async fn declare_topology(channel: &Channel, s: &AmqpSettings) -> Result<(), lapin::Error> {
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
    channel
        .exchange_declare(
            s.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable,
            FieldTable::default(),
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
        .chain([s.dead_letter_queue.clone()]);
    for q in queues {
        let _ = channel
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in [
        &s.commands_exchange,
        &s.events_exchange,
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

/// Adds what to do about a topology error a person can fix.
pub fn explain(e: lapin::Error, s: &AmqpSettings) -> anyhow::Error {
    let text = e.to_string();
    let hint = if text.contains("x-consistent-hash") {
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
    anyhow::anyhow!("declaring the topology: {text}{hint}")
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

/// Why a publish did not reach a queue for sure.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the message (negative confirm).
    #[error("the broker nacked the publish")]
    Nacked,
    /// A mandatory message matched no queue.
    #[error("the message was returned: {0}")]
    Returned(String),
    /// No confirm within the timeout; the message may or may not be queued.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The channel or connection failed.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// A name does not fit the protocol (routing keys are at most 255 bytes).
    #[error("{0}")]
    Invalid(String),
}

/// A message to publish.
#[derive(Debug, Clone, Default)]
pub struct Message<'a> {
    /// Target exchange.
    pub exchange: &'a str,
    /// Routing key.
    pub routing_key: &'a str,
    /// Body (JSON).
    pub body: &'a [u8],
    /// `message_id` property.
    pub message_id: Option<&'a str>,
    /// `correlation_id` property.
    pub correlation_id: Option<&'a str>,
    /// Extra headers.
    pub headers: Option<FieldTable>,
    /// Return the message if no queue takes it.
    pub mandatory: bool,
}

/// A channel in confirm mode: every publish waits for the broker's ack.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
    /// Held while a publish is handed to the channel. Publisher confirms are
    /// matched to messages by sequence number, which lapin assigns and then
    /// queues the frames in the first poll of `basic_publish`; two tasks on
    /// different threads could interleave between the two steps, and a
    /// confirm would then be taken for the wrong message. Only that first
    /// poll is serialised: frames are written and confirms awaited
    /// concurrently. (`faults::publisher_confirms_belong_to_their_own_publish`
    /// fails if this ever stops holding.)
    sending: Arc<std::sync::Mutex<()>>,
}

impl Publisher {
    /// Opens a confirm-mode channel on `connection`.
    pub async fn open(
        connection: &Connection,
        confirm_timeout: Duration,
    ) -> Result<Publisher, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher {
            channel,
            confirm_timeout,
            sending: Arc::new(std::sync::Mutex::new(())),
        })
    }

    /// Publishes a persistent JSON message and waits for its confirm.
    pub async fn publish(&self, m: Message<'_>) -> Result<(), PublishError> {
        let routing_key = short(m.routing_key, "routing key")?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into());
        // Ids may be up to 128 characters, which can exceed the 255 bytes of
        // an AMQP short string; the body always carries them in full.
        if let Some(id) = m.message_id.and_then(|id| short(id, "").ok()) {
            properties = properties.with_message_id(id);
        }
        if let Some(id) = m.correlation_id.and_then(|id| short(id, "").ok()) {
            properties = properties.with_correlation_id(id);
        }
        if let Some(headers) = m.headers {
            properties = properties.with_headers(headers);
        }
        let options = BasicPublishOptions {
            mandatory: m.mandatory,
            ..Default::default()
        };
        let mut publish = std::pin::pin!(self.channel.basic_publish(
            m.exchange.into(),
            routing_key,
            options,
            m.body,
            properties
        ));
        let first = std::future::poll_fn(|cx| {
            let _turn = self.sending.lock().unwrap_or_else(|e| e.into_inner());
            std::task::Poll::Ready(publish.as_mut().poll(cx))
        })
        .await;
        let confirm = match first {
            std::task::Poll::Ready(sent) => sent?,
            std::task::Poll::Pending => publish.await?,
        };
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.confirm_timeout))??;
        if confirmation.is_nack() {
            return Err(PublishError::Nacked);
        }
        if let Some(returned) = confirmation.take_message() {
            return Err(PublishError::Returned(format!(
                "{} {}",
                returned.reply_code, returned.reply_text
            )));
        }
        Ok(())
    }

    /// Whether the channel can still publish.
    pub fn is_open(&self) -> bool {
        self.channel.status().connected()
    }

    /// Closes the channel; errors are ignored, as on a dead connection.
    /// Close channels before their connection: one merely dropped sends
    /// its close after the connection's, and lapin logs that as an error.
    pub async fn close(&self) {
        if self.is_open() {
            let _ = self.channel.close(200, "done".into()).await;
        }
    }
}

fn short(s: &str, what: &str) -> Result<ShortString, PublishError> {
    if s.len() > 255 {
        return Err(PublishError::Invalid(format!(
            "{what} is {} bytes; AMQP allows at most 255",
            s.len()
        )));
    }
    Ok(s.into())
}

/// A header value holding text.
pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}
