//! Wire formats of the contract: command bodies in, event bodies out.
//!
//! Decoding follows the contract's split: a body whose `command_id` and
//! `resource_id` cannot be read is [`Unreadable`] (dead-lettered); any other
//! problem becomes [`Action::Invalid`], which the domain rejects with reason
//! `invalid`. A body is read in one borrowing pass, never as a tree, so
//! what decoding allocates does not grow with the body: one far over
//! [`MAX_BODY_BYTES`] costs its own bytes and little more.
//!
//! Layout: `decode.rs` is [`decode`] itself and the parsing of each field;
//! `fields.rs` walks the top-level object and keeps each known field's raw
//! JSON text; `raw.rs` reads single values from that text.

use crate::domain::{
    Action, BudgetChange, BudgetEvent, BudgetId, BudgetStep, CommandId, CommandKind, CustomerId,
    Event, LimitChange, Reason, ResourceId,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

mod decode;
mod fields;
mod raw;

pub use decode::{Decoded, decode, decode_any};

/// Largest body the contract accepts; a larger one is `invalid`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A body that cannot be tied to a command: it goes to the dead-letter queue
/// with this text in header `x-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// [`sha256_hex`] of `value`'s JSON, hashed as it is written: no buffer.
fn sha256_hex_of_json(value: &impl Serialize) -> String {
    let mut hasher = Sha256::new();
    serde_json::to_writer(&mut hasher, value).expect("plain struct");
    hex::encode(hasher.finalize())
}

/// A command body as producers write it: the contract's JSON.
///
/// Serialising one gives the canonical body (fixed field order, no unknown
/// fields), which is what the idempotency hash is taken of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CommandBody {
    /// Create a resource or change its capacity and limit.
    Define {
        /// Idempotency key.
        command_id: CommandId,
        /// The resource.
        resource_id: ResourceId,
        /// Total seats.
        capacity: u32,
        /// Most seats per customer. Absent keeps the current limit (none for
        /// a new resource); `null` removes it.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "absent_or_null"
        )]
        #[schemars(with = "Option<u32>", range(min = 1))]
        per_customer_limit: Option<Option<u32>>,
        /// Price per seat in minor units (e.g. cents). Absent keeps the
        /// current price (0 for a new resource).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        price: Option<u32>,
        /// The budget reserves and holds are paid from. Absent keeps the
        /// current one (none for a new resource); `null` detaches it.
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "absent_or_null"
        )]
        #[schemars(with = "Option<BudgetId>")]
        budget_id: Option<Option<BudgetId>>,
    },
    /// Take seats, all or nothing.
    Reserve {
        /// Idempotency key; also the reservation's id.
        command_id: CommandId,
        /// The resource.
        resource_id: ResourceId,
        /// Who the seats are for.
        customer_id: CustomerId,
        /// How many seats.
        #[schemars(range(min = 1))]
        quantity: u32,
    },
    /// Release an accepted reservation, or a live or confirmed hold.
    Cancel {
        /// Idempotency key.
        command_id: CommandId,
        /// The resource.
        resource_id: ResourceId,
        /// The reserve's (or hold's) `command_id`.
        reservation_id: CommandId,
    },
    /// Take seats while the customer pays, all or nothing; they come back
    /// `hold_secs` after the decision unless confirmed.
    Hold {
        /// Idempotency key; also the hold's id.
        command_id: CommandId,
        /// The resource.
        resource_id: ResourceId,
        /// Who the seats are for.
        customer_id: CustomerId,
        /// How many seats.
        #[schemars(range(min = 1))]
        quantity: u32,
        /// How long the hold lasts.
        #[schemars(range(min = 1, max = 86400))]
        hold_secs: u32,
    },
    /// Make a live hold a reservation for good.
    Confirm {
        /// Idempotency key.
        command_id: CommandId,
        /// The resource.
        resource_id: ResourceId,
        /// The hold's `command_id`.
        hold_id: CommandId,
    },
    /// Create a budget or change its cap (routing key = `budget_id`).
    DefineBudget {
        /// Idempotency key (unique per budget).
        command_id: CommandId,
        /// The budget.
        budget_id: BudgetId,
        /// Most one customer may spend on the resources that name the
        /// budget, in minor units.
        #[schemars(range(max = 9007199254740991_u64))]
        per_customer_amount: u64,
    },
}

impl CommandBody {
    fn from_parts(command_id: &CommandId, resource_id: &ResourceId, action: &Action) -> Self {
        let (command_id, resource_id) = (command_id.clone(), resource_id.clone());
        match action {
            Action::Define {
                capacity,
                per_customer_limit,
                price,
                budget,
            } => CommandBody::Define {
                command_id,
                resource_id,
                capacity: *capacity,
                per_customer_limit: match per_customer_limit {
                    LimitChange::Keep => None,
                    LimitChange::Remove => Some(None),
                    LimitChange::Set(n) => Some(Some(*n)),
                },
                price: *price,
                budget_id: match budget {
                    BudgetChange::Keep => None,
                    BudgetChange::Detach => Some(None),
                    BudgetChange::Attach(b) => Some(Some(b.clone())),
                },
            },
            Action::Reserve {
                customer_id,
                quantity,
            } => CommandBody::Reserve {
                command_id,
                resource_id,
                customer_id: customer_id.clone(),
                quantity: *quantity,
            },
            Action::Cancel { reservation_id } => CommandBody::Cancel {
                command_id,
                resource_id,
                reservation_id: reservation_id.clone(),
            },
            Action::Hold {
                customer_id,
                quantity,
                hold_secs,
            } => CommandBody::Hold {
                command_id,
                resource_id,
                customer_id: customer_id.clone(),
                quantity: *quantity,
                hold_secs: *hold_secs,
            },
            Action::Confirm { hold_id } => CommandBody::Confirm {
                command_id,
                resource_id,
                hold_id: hold_id.clone(),
            },
            Action::Invalid { .. } => unreachable!("invalid actions are never encoded"),
        }
    }

    /// The command's idempotency key.
    pub fn command_id(&self) -> &CommandId {
        match self {
            CommandBody::Define { command_id, .. }
            | CommandBody::Reserve { command_id, .. }
            | CommandBody::Cancel { command_id, .. }
            | CommandBody::Hold { command_id, .. }
            | CommandBody::Confirm { command_id, .. }
            | CommandBody::DefineBudget { command_id, .. } => command_id,
        }
    }

    /// The routing key: the resource, or for `define_budget` the budget.
    pub fn routing_key(&self) -> &str {
        match self {
            CommandBody::Define { resource_id, .. }
            | CommandBody::Reserve { resource_id, .. }
            | CommandBody::Cancel { resource_id, .. }
            | CommandBody::Hold { resource_id, .. }
            | CommandBody::Confirm { resource_id, .. } => resource_id.as_str(),
            CommandBody::DefineBudget { budget_id, .. } => budget_id.as_str(),
        }
    }

    /// The JSON body to publish.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct")
    }
}

/// An event as published: the domain event plus its envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EventEnvelope {
    /// Unique per outcome; every redelivery of a command re-publishes it.
    pub event_id: Uuid,
    /// The outcome itself.
    #[serde(flatten)]
    pub event: Event,
    /// When the outcome was decided (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub occurred_at: OffsetDateTime,
}

/// An event ready to publish, in the exact bytes stored for redeliveries,
/// with the fields metrics and routing need kept typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingEvent {
    /// `message_id` on the wire.
    pub event_id: Uuid,
    /// `correlation_id` on the wire.
    pub command_id: CommandId,
    /// The command's kind.
    pub command: CommandKind,
    /// The rejection reason; `None` when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// The aggregate version after the command.
    pub version: u64,
    /// What publishing it must first do to a budget (see
    /// [`Event::budget_step`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<BudgetStep>,
    /// The JSON body.
    #[serde(with = "body_as_raw_json")]
    pub body: Vec<u8>,
}

impl OutgoingEvent {
    /// Wraps a freshly decided event in a new envelope.
    pub fn new(event: Event, event_id: Uuid, occurred_at: OffsetDateTime) -> Self {
        let command_id = event.command_id.clone();
        let command = event.command;
        let reason = event.verdict.reason();
        let version = event.version;
        let step = event.budget_step();
        let envelope = EventEnvelope {
            event_id,
            event,
            occurred_at: to_millis(occurred_at),
        };
        OutgoingEvent {
            event_id,
            command_id,
            command,
            reason,
            version,
            step,
            body: serde_json::to_vec(&envelope).expect("plain struct"),
        }
    }

    /// Wraps a freshly decided `define_budget` outcome in a new envelope.
    pub fn of_budget(event: BudgetEvent, event_id: Uuid, occurred_at: OffsetDateTime) -> Self {
        let envelope = BudgetEnvelope {
            event_id,
            event,
            occurred_at: to_millis(occurred_at),
        };
        OutgoingEvent {
            event_id,
            command_id: envelope.event.command_id.clone(),
            command: CommandKind::DefineBudget,
            reason: envelope.event.verdict.reason(),
            version: envelope.event.version,
            step: None,
            body: serde_json::to_vec(&envelope).expect("plain struct"),
        }
    }

    /// An event as published before, from its exact bytes (as kept in the
    /// history).
    pub fn from_body(body: Vec<u8>) -> Result<OutgoingEvent, serde_json::Error> {
        let envelope: EventEnvelope = serde_json::from_slice(&body)?;
        Ok(OutgoingEvent {
            event_id: envelope.event_id,
            command_id: envelope.event.command_id.clone(),
            command: envelope.event.command,
            reason: envelope.event.verdict.reason(),
            version: envelope.event.version,
            step: envelope.event.budget_step(),
            body,
        })
    }

    /// A `define_budget` event as published before, from its exact bytes.
    pub fn from_budget_body(body: Vec<u8>) -> Result<OutgoingEvent, serde_json::Error> {
        let envelope: BudgetEnvelope = serde_json::from_slice(&body)?;
        Ok(OutgoingEvent {
            event_id: envelope.event_id,
            command_id: envelope.event.command_id.clone(),
            command: CommandKind::DefineBudget,
            reason: envelope.event.verdict.reason(),
            version: envelope.event.version,
            step: None,
            body,
        })
    }

    /// `accepted` or `rejected`.
    pub fn outcome(&self) -> &'static str {
        if self.reason.is_some() {
            "rejected"
        } else {
            "accepted"
        }
    }

    /// The routing key: `<command>.<outcome>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.command.as_str(), self.outcome())
    }
}

/// A `define_budget` event as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BudgetEnvelope {
    /// Unique per outcome; every redelivery of a command re-publishes it.
    pub event_id: Uuid,
    /// The outcome itself.
    #[serde(flatten)]
    pub event: BudgetEvent,
    /// When the outcome was decided (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub occurred_at: OffsetDateTime,
}

/// Milliseconds, the precision of the one clock: an expiry's `occurred_at`
/// is never before its hold's `expires_at`.
fn to_millis(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1_000_000 * 1_000_000)
        .unwrap_or(t)
}

mod absent_or_null {
    //! A field that may be absent (`None`), `null` (`Some(None)`) or a value
    //! (`Some(Some(v))`); with `default` and `skip_serializing_if =
    //! "Option::is_none"` on the field, the three round-trip.
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<T: Serialize, S: Serializer>(
        value: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

mod body_as_raw_json {
    //! Embeds the event body in the idempotency record as JSON, not as an
    //! escaped string: cheaper to write and read, and the bytes stay exact.
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
        let text = std::str::from_utf8(body).map_err(serde::ser::Error::custom)?;
        let raw: &RawValue = serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Ok(raw.get().as_bytes().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Submission;
    use serde_json::Value;

    fn decoded(body: &str) -> Submission {
        decode(body.as_bytes()).expect("readable")
    }

    #[test]
    fn command_body_round_trips_through_decode() {
        let body = CommandBody::Reserve {
            command_id: CommandId::try_from("c").unwrap(),
            resource_id: ResourceId::try_from("r").unwrap(),
            customer_id: CustomerId::try_from("u").unwrap(),
            quantity: 2,
        };
        let d = decode(&body.to_json()).unwrap();
        assert_eq!(
            CommandBody::from_parts(
                &d.command.command_id,
                &d.command.resource_id,
                &d.command.action
            ),
            body
        );
    }

    #[test]
    fn outgoing_event_has_contract_envelope_and_routing_key() {
        let command = decoded(
            r#"{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":1}"#,
        )
        .command;
        let event = crate::domain::idempotency_conflict(&Default::default(), &command);
        let id = Uuid::new_v4();
        let out = OutgoingEvent::new(event, id, OffsetDateTime::UNIX_EPOCH);
        assert_eq!(out.routing_key(), "reserve.rejected");
        assert_eq!(out.reason, Some(Reason::IdempotencyConflict));
        let json: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(json["event_id"], id.to_string());
        assert_eq!(json["occurred_at"], "1970-01-01T00:00:00Z");
        assert_eq!(
            json["reason"],
            serde_json::to_value(Reason::IdempotencyConflict).unwrap()
        );
        let stored = serde_json::to_string(&out).unwrap();
        assert_eq!(serde_json::from_str::<OutgoingEvent>(&stored).unwrap(), out);
        assert_eq!(OutgoingEvent::from_body(out.body.clone()).unwrap(), out);
    }
}
