//! The producer API: publish commands with publisher confirms, and watch
//! their outcome events. The `send` and `rush` subcommands use it; Rust
//! producers can call it directly.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use reservation_worker::{config::Settings, message::CommandBody, producer::Producer};
//! let settings = Settings::load(None)?;
//! let producer = Producer::connect(&settings.amqp).await?;
//! let body = CommandBody::Reserve {
//!     command_id: uuid::Uuid::new_v4().to_string().try_into()?,
//!     resource_id: "concert-42".try_into()?,
//!     customer_id: "u-7".try_into()?,
//!     quantity: 2,
//! };
//! producer.send(&body).await?; // returns once the broker confirmed it
//! # Ok(()) }
//! ```

pub use crate::broker::ConnectError;
use crate::broker::{self, Message, PublishError, Publisher};
use crate::config::AmqpSettings;
use crate::message::{CommandBody, EventEnvelope};
use futures_util::StreamExt;

/// A connection to the broker that publishes commands.
pub struct Producer {
    connection: lapin::Connection,
    publisher: Publisher,
    exchange: String,
}

impl Producer {
    /// Connects (to one node of a cluster, see [`crate::admin::connect`])
    /// and opens a confirm-mode channel.
    pub async fn connect(settings: &AmqpSettings) -> Result<Producer, ConnectError> {
        let connection = broker::connect(settings, "reservation-producer").await?;
        let publisher = Publisher::open(&connection, settings.confirm_timeout())
            .await
            .map_err(ConnectError::Channel)?;
        Ok(Producer {
            connection,
            publisher,
            exchange: settings.commands_exchange.clone(),
        })
    }

    /// Publishes one command (persistent, routing key = `resource_id`) and
    /// waits for the broker's confirm. Safe to retry with the same body: the
    /// workers deduplicate by `command_id`. An error means the command may
    /// not be queued, never that it was refused for good: a nack or a
    /// missing confirm (a quorum queue electing a new leader while a node
    /// dies) passes, so retry; after [`PublishError::Broker`] the connection
    /// may be gone, so connect a new `Producer` (to the next node of a
    /// cluster) and retry there.
    pub async fn send(&self, body: &CommandBody) -> Result<(), PublishError> {
        self.publish_raw(body.routing_key(), &body.to_json()).await
    }

    /// Publishes any bytes as a command body, for tools and tests that need
    /// to send what a faulty producer would.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) -> Result<(), PublishError> {
        self.publisher
            .publish(Message {
                exchange: &self.exchange,
                routing_key,
                body,
                ..Default::default()
            })
            .await
    }

    /// Closes the connection cleanly.
    pub async fn close(self) -> Result<(), lapin::Error> {
        self.connection.close(200, "bye".into()).await
    }
}

/// Outcome events as they are published, through a private queue bound to
/// every routing key of the events exchange, which the broker deletes when
/// this subscription's connection closes. Subscribe before publishing the
/// commands whose outcomes you want: none is missed after that.
pub struct Events {
    connection: lapin::Connection,
    consumer: lapin::Consumer,
}

/// One event as received.
#[derive(Debug, Clone)]
pub struct ReceivedEvent {
    /// The body's exact bytes.
    pub body: Vec<u8>,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its `message_id` property (the event id).
    pub message_id: Option<String>,
    /// Its `correlation_id` property (the command id).
    pub correlation_id: Option<String>,
}

impl ReceivedEvent {
    /// The body, parsed.
    pub fn envelope(&self) -> Result<EventEnvelope, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

impl Events {
    /// Subscribes, with a connection named `name`.
    pub async fn subscribe(settings: &AmqpSettings, name: &str) -> Result<Events, ConnectError> {
        let connection = broker::connect(settings, name).await?;
        let channel = connection
            .create_channel()
            .await
            .map_err(ConnectError::Channel)?;
        let consumer = broker::subscribe_to_events(&channel, settings, name)
            .await
            .map_err(ConnectError::Channel)?;
        Ok(Events {
            connection,
            consumer,
        })
    }

    /// The next event; `None` when the subscription ended.
    pub async fn next(&mut self) -> Option<Result<ReceivedEvent, lapin::Error>> {
        let delivery = match self.consumer.next().await? {
            Ok(delivery) => delivery,
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(ReceivedEvent {
            routing_key: delivery.routing_key.to_string(),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string()),
            correlation_id: delivery
                .properties
                .correlation_id()
                .as_ref()
                .map(|c| c.to_string()),
            body: delivery.data,
        }))
    }

    /// Closes the subscription (its queue goes with it).
    pub async fn close(self) -> Result<(), lapin::Error> {
        self.connection.close(200, "bye".into()).await
    }
}
