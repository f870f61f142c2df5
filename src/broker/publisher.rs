//! Publishing with publisher confirms.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Persistent delivery mode.
const PERSISTENT: u8 = 2;

/// Why a publish did not reach a queue for sure.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker refused the message (negative confirm).
    #[error("the broker nacked the publish")]
    Nacked,
    /// A mandatory message matched no queue.
    #[error("the message was returned: {code} {text}")]
    Returned {
        /// The AMQP reply code (312 NO_ROUTE).
        code: u16,
        /// The reply text.
        text: String,
    },
    /// No confirm within the timeout; the message may or may not be queued.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The channel or connection failed.
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    /// A name does not fit the protocol.
    #[error("{what} is {bytes} bytes; AMQP allows at most 255")]
    TooLong {
        /// Which name.
        what: &'static str,
        /// Its length.
        bytes: usize,
    },
}

impl PublishError {
    /// The exchange does not exist: the broker closed the channel with 404
    /// NOT_FOUND (the topology was never declared, or was deleted).
    pub fn is_missing_exchange(&self) -> bool {
        matches!(self, PublishError::Broker(e) if super::is_not_found(e))
    }
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
    /// Cancelled by the first publish that fails on a closed channel, so
    /// the one who opened it can replace it ([`Publisher::closed`]).
    closed: CancellationToken,
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
            closed: CancellationToken::new(),
        })
    }

    /// Publishes a persistent JSON message and waits for its confirm.
    ///
    /// Every failure is the caller's to retry; none is final for the
    /// message. A nack, a return or a missing confirm (a quorum queue
    /// electing a leader, a node going away) leaves the channel usable, and
    /// publishing again may succeed. While the broker blocks the connection
    /// (a resource alarm) the publish waits, its frames unsent. A closed
    /// channel can publish no more: the failure also resolves
    /// [`Publisher::closed`].
    pub async fn publish(&self, m: Message<'_>) -> Result<(), PublishError> {
        let published = self.publish_once(m).await;
        if published.is_err() && !self.is_open() {
            self.closed.cancel();
        }
        published
    }

    /// Resolves once a publish found the channel closed: only a new
    /// channel, on a new connection if that one is gone too, publishes
    /// again.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    async fn publish_once(&self, m: Message<'_>) -> Result<(), PublishError> {
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
            return Err(PublishError::Returned {
                code: returned.reply_code,
                text: returned.reply_text.to_string(),
            });
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

fn short(s: &str, what: &'static str) -> Result<ShortString, PublishError> {
    if s.len() > 255 {
        return Err(PublishError::TooLong {
            what,
            bytes: s.len(),
        });
    }
    Ok(s.into())
}
