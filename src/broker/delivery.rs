//! A delivery this worker holds, until it is settled exactly once.

use super::publisher::{Message, PublishError, Publisher};
use super::settle::{Decision, Settler};
use crate::metrics as metric;
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// A command delivery held by this worker. Its settle methods take it by
/// value, so it is settled at most once; dropped unsettled, it is left for
/// the broker to redeliver when the channel closes. While it exists it
/// counts in the in-flight gauge.
pub struct Delivery {
    inner: lapin::message::Delivery,
    settler: Settler,
    /// The body was let go of (see [`Delivery::release_body`]).
    released: bool,
    _held: Held,
    /// Counted in its queue's [`InFlight`], if any.
    _counted: Option<Counted>,
}

impl Delivery {
    /// Takes charge of a delivery from the channel `settler` settles.
    pub fn new(inner: lapin::message::Delivery, settler: Settler) -> Delivery {
        Delivery {
            inner,
            settler,
            released: false,
            _held: Held::start(),
            _counted: None,
        }
    }

    /// Counts this delivery in `in_flight` until it is settled or dropped.
    pub fn counted(mut self, in_flight: &InFlight) -> Delivery {
        in_flight.0.fetch_add(1, Ordering::Relaxed);
        self._counted = Some(Counted(in_flight.clone()));
        self
    }

    /// The message body (empty once released).
    pub fn body(&self) -> &[u8] {
        &self.inner.data
    }

    /// Frees the body, when nothing will need it again. A delivery without
    /// its body cannot be dead-lettered by the worker; the queue's own
    /// delivery limit dead-letters it, body and all.
    pub fn release_body(&mut self) {
        self.inner.data = Vec::new();
        self.released = true;
    }

    /// Whether the body is still here to be dead-lettered.
    pub fn has_body(&self) -> bool {
        !self.released
    }

    /// Earlier deliveries of this message: the quorum queue's
    /// `x-delivery-count` header, trusted only on a redelivery (on a first
    /// delivery the header, if any, is the producer's).
    pub fn earlier_deliveries(&self) -> u32 {
        let header = self
            .inner
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count"));
        earlier_deliveries(self.inner.redelivered, header)
    }

    /// Done: the broker may forget it.
    pub fn ack(self) {
        self.settler.settle(self.inner.delivery_tag, Decision::Ack);
    }

    /// Not done: back to the queue for another try (the quorum queue counts
    /// it toward its delivery limit).
    pub fn requeue(self) {
        self.settler
            .settle(self.inner.delivery_tag, Decision::Requeue);
    }

    /// Not settled now: the broker redelivers it once the channel closes.
    pub fn leave(self) {}

    /// Publishes the message to `exchange` with the reason in header
    /// `x-error` and its original headers, exchange and routing key, then
    /// acks it. If the publish fails, the delivery comes back with the
    /// error, still unsettled.
    pub async fn dead_letter(
        self,
        publisher: &Publisher,
        exchange: &str,
        why: &str,
    ) -> Result<(), (Delivery, PublishError)> {
        let d = &self.inner;
        let mut headers: FieldTable = d.properties.headers().clone().unwrap_or_default();
        headers.insert("x-error".into(), text(why));
        headers.insert("x-original-exchange".into(), text(d.exchange.as_str()));
        headers.insert(
            "x-original-routing-key".into(),
            text(d.routing_key.as_str()),
        );
        let published = publisher
            .publish(Message {
                exchange,
                routing_key: d.routing_key.as_str(),
                body: &d.data,
                headers: Some(headers),
                mandatory: true,
                ..Default::default()
            })
            .await;
        match published {
            Ok(()) => {
                self.ack();
                Ok(())
            }
            Err(e) => Err((self, e)),
        }
    }
}

/// Earlier deliveries, from the redelivered flag and the
/// `x-delivery-count` header: 0 on a first delivery whatever the header
/// says, at least 1 on a redelivery, saturating at `u32::MAX`.
fn earlier_deliveries(redelivered: bool, header: Option<&AMQPValue>) -> u32 {
    if !redelivered {
        return 0;
    }
    let count = match header {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from((*n).max(0)).unwrap_or(u32::MAX),
        Some(AMQPValue::LongInt(n)) => u32::try_from((*n).max(0)).unwrap_or(u32::MAX),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from((*n).max(0)).unwrap_or(0),
        Some(AMQPValue::ShortShortInt(n)) => u32::try_from((*n).max(0)).unwrap_or(0),
        Some(AMQPValue::ShortUInt(n)) => u32::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(*n),
        _ => 0,
    };
    count.max(1)
}

/// A header value holding text.
fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// How many deliveries of one queue this worker holds: a partition is
/// handed over only once its count is 0.
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// Deliveries held now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One delivery's place in an [`InFlight`] count.
struct Counted(InFlight);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a delivery in the in-flight gauge while it lives, and records its
/// time in the worker when it goes.
struct Held {
    received: Instant,
}

impl Held {
    fn start() -> Held {
        metrics::gauge!(metric::IN_FLIGHT).increment(1.0);
        Held {
            received: Instant::now(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        metrics::gauge!(metric::IN_FLIGHT).decrement(1.0);
        metrics::histogram!(metric::PROCESS_SECONDS).record(self.received.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_forged_delivery_count_on_a_first_delivery_is_ignored() {
        for forged in [
            AMQPValue::LongLongInt(19),
            AMQPValue::LongLongInt(i64::MAX),
            AMQPValue::LongUInt(u32::MAX),
        ] {
            assert_eq!(earlier_deliveries(false, Some(&forged)), 0);
        }
    }

    #[test]
    fn a_redelivery_counts_at_least_one_and_saturates() {
        assert_eq!(earlier_deliveries(true, None), 1);
        assert_eq!(
            earlier_deliveries(true, Some(&AMQPValue::LongLongInt(0))),
            1
        );
        assert_eq!(
            earlier_deliveries(true, Some(&AMQPValue::LongLongInt(3))),
            3
        );
        assert_eq!(
            earlier_deliveries(true, Some(&AMQPValue::LongLongInt(-5))),
            1
        );
        assert_eq!(
            earlier_deliveries(true, Some(&AMQPValue::LongLongInt(i64::MAX))),
            u32::MAX
        );
        assert_eq!(
            earlier_deliveries(true, Some(&AMQPValue::LongUInt(u32::MAX))),
            u32::MAX
        );
        assert_eq!(
            earlier_deliveries(true, Some(&AMQPValue::LongString("7".into()))),
            1
        );
    }
}
