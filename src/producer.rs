//! The producer API: publish commands with publisher confirms. The `send`
//! subcommand uses it; Rust producers can call it directly.
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

use crate::broker::{self, Message, PublishError, Publisher};
use crate::config::AmqpSettings;
use crate::message::CommandBody;

/// A connection to the broker that publishes commands.
pub struct Producer {
    connection: lapin::Connection,
    publisher: Publisher,
    exchange: String,
}

impl Producer {
    /// Connects and opens a confirm-mode channel.
    pub async fn connect(settings: &AmqpSettings) -> Result<Producer, lapin::Error> {
        let connection = broker::connect(&settings.url, "reservation-producer").await?;
        let publisher = Publisher::open(&connection, settings.confirm_timeout()).await?;
        Ok(Producer {
            connection,
            publisher,
            exchange: settings.commands_exchange.clone(),
        })
    }

    /// Publishes one command (persistent, routing key = `resource_id`) and
    /// waits for the broker's confirm. Safe to retry with the same body: the
    /// workers deduplicate by `command_id`.
    pub async fn send(&self, body: &CommandBody) -> Result<(), PublishError> {
        self.publish_raw(body.resource_id().as_str(), &body.to_json())
            .await
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
