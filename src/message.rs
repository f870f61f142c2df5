//! Wire formats of the contract: command bodies in, event bodies out.
//!
//! Decoding follows the contract's split: a body whose `command_id` and
//! `resource_id` cannot be read is [`Unreadable`] (dead-lettered); any other
//! problem becomes [`Action::Invalid`], which the domain rejects with reason
//! `invalid`.

use crate::domain::{
    Action, Command, CommandId, CommandKind, CustomerId, Event, LimitChange, Reason, ResourceId,
    Submission,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

/// Largest body the contract accepts; a larger one is `invalid`.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A body that cannot be tied to a command: it goes to the dead-letter queue
/// with this text in header `x-error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// Decodes one delivery body into a command (possibly [`Action::Invalid`])
/// and the hash that identifies its body for idempotency.
pub fn decode(body: &[u8]) -> Result<Submission, Unreadable> {
    let text = std::str::from_utf8(body)
        .map_err(|e| Unreadable(format!("body is not valid UTF-8: {e}")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| Unreadable(format!("body is not JSON: {e}")))?;
    let Value::Object(fields) = value else {
        return Err(Unreadable("body is not a JSON object".into()));
    };
    let command_id: CommandId = required_id(&fields, "command_id").map_err(Unreadable)?;
    let resource_id: ResourceId = required_id(&fields, "resource_id").map_err(Unreadable)?;

    let kind = match fields.get("type").and_then(Value::as_str) {
        Some("define") => CommandKind::Define,
        Some("reserve") => CommandKind::Reserve,
        Some("cancel") => CommandKind::Cancel,
        _ => CommandKind::Unknown,
    };
    let action = if body.len() > MAX_BODY_BYTES {
        Err(format!(
            "body is {} bytes; at most {MAX_BODY_BYTES} are allowed",
            body.len()
        ))
    } else {
        parse_action(kind, &fields)
    };
    let (action, body_hash) = match action {
        Ok(action) => {
            let canonical = CommandBody::from_parts(&command_id, &resource_id, &action);
            let hash = sha256_hex(&serde_json::to_vec(&canonical).expect("plain struct"));
            (action, hash)
        }
        Err(detail) => (Action::Invalid { kind, detail }, sha256_hex(body)),
    };
    Ok(Submission {
        command: Command {
            command_id,
            resource_id,
            action,
        },
        body_hash,
    })
}

fn parse_action(kind: CommandKind, f: &Map<String, Value>) -> Result<Action, String> {
    match kind {
        CommandKind::Define => Ok(Action::Define {
            capacity: count(f, "capacity", 0)?.ok_or("capacity is required")?,
            per_customer_limit: match f.get("per_customer_limit") {
                None => LimitChange::Keep,
                Some(Value::Null) => LimitChange::Remove,
                Some(_) => LimitChange::Set(count(f, "per_customer_limit", 1)?.expect("present")),
            },
        }),
        CommandKind::Reserve => Ok(Action::Reserve {
            customer_id: required_id(f, "customer_id")?,
            quantity: count(f, "quantity", 1)?.ok_or("quantity is required")?,
        }),
        CommandKind::Cancel => Ok(Action::Cancel {
            reservation_id: required_id(f, "reservation_id")?,
        }),
        CommandKind::Unknown => Err(match f.get("type") {
            None => "type is required: one of define, reserve, cancel".into(),
            Some(t) => format!("type {} is not one of define, reserve, cancel", short(t)),
        }),
    }
}

fn required_id<T: TryFrom<String, Error = crate::domain::IdError>>(
    f: &Map<String, Value>,
    name: &str,
) -> Result<T, String> {
    match f.get(name) {
        None | Some(Value::Null) => Err(format!("{name} is required")),
        Some(Value::String(s)) => T::try_from(s.clone()).map_err(|e| format!("{name} {e}")),
        Some(other) => Err(format!("{name} must be a string, got {}", short(other))),
    }
}

/// An optional integer field in `min..=u32::MAX`.
fn count(f: &Map<String, Value>, name: &str, min: u32) -> Result<Option<u32>, String> {
    match f.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= min)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "{name} must be an integer from {min} to {}, got {}",
                    u32::MAX,
                    short(v)
                )
            }),
    }
}

/// A value for an error message, cut so a huge field cannot bloat events.
fn short(v: &Value) -> String {
    let s = v.to_string();
    match s.char_indices().nth(40) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
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
    /// Release an accepted reservation.
    Cancel {
        /// Idempotency key.
        command_id: CommandId,
        /// The resource.
        resource_id: ResourceId,
        /// The reserve command's `command_id`.
        reservation_id: CommandId,
    },
}

impl CommandBody {
    fn from_parts(command_id: &CommandId, resource_id: &ResourceId, action: &Action) -> Self {
        let (command_id, resource_id) = (command_id.clone(), resource_id.clone());
        match action {
            Action::Define {
                capacity,
                per_customer_limit,
            } => CommandBody::Define {
                command_id,
                resource_id,
                capacity: *capacity,
                per_customer_limit: match per_customer_limit {
                    LimitChange::Keep => None,
                    LimitChange::Remove => Some(None),
                    LimitChange::Set(n) => Some(Some(*n)),
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
            Action::Invalid { .. } => unreachable!("invalid actions are never encoded"),
        }
    }

    /// The command's idempotency key.
    pub fn command_id(&self) -> &CommandId {
        match self {
            CommandBody::Define { command_id, .. }
            | CommandBody::Reserve { command_id, .. }
            | CommandBody::Cancel { command_id, .. } => command_id,
        }
    }

    /// The resource, which is also the routing key.
    pub fn resource_id(&self) -> &ResourceId {
        match self {
            CommandBody::Define { resource_id, .. }
            | CommandBody::Reserve { resource_id, .. }
            | CommandBody::Cancel { resource_id, .. } => resource_id,
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
        let envelope = EventEnvelope {
            event_id,
            event,
            occurred_at: occurred_at.replace_nanosecond(0).unwrap_or(occurred_at),
        };
        OutgoingEvent {
            event_id,
            command_id,
            command,
            reason,
            version,
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

    fn decoded(body: &str) -> Submission {
        decode(body.as_bytes()).expect("readable")
    }

    fn invalid_detail(body: &[u8]) -> String {
        match decode(body).expect("readable").command.action {
            Action::Invalid { detail, .. } => detail,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn decodes_the_three_contract_examples() {
        let d = decoded(
            r#"{"type":"define","command_id":"c-1","resource_id":"concert-42","capacity":1000,"per_customer_limit":4}"#,
        );
        assert_eq!(
            d.command.action,
            Action::Define {
                capacity: 1000,
                per_customer_limit: LimitChange::Set(4)
            }
        );
        let d = decoded(
            r#"{"type":"reserve","command_id":"c-2","resource_id":"concert-42","customer_id":"u-7","quantity":2}"#,
        );
        assert_eq!(d.command.action.kind(), CommandKind::Reserve);
        let d = decoded(
            r#"{"type":"cancel","command_id":"c-3","resource_id":"concert-42","reservation_id":"c-2"}"#,
        );
        assert_eq!(d.command.action.kind(), CommandKind::Cancel);
    }

    #[test]
    fn an_absent_limit_keeps_a_null_one_removes_and_they_hash_apart() {
        let body = |limit: &str| {
            decoded(&format!(
                r#"{{"type":"define","command_id":"c","resource_id":"r","capacity":5{limit}}}"#
            ))
        };
        let (absent, null, four) = (
            body(""),
            body(r#","per_customer_limit":null"#),
            body(r#","per_customer_limit":4"#),
        );
        let limit = |d: &Submission| match d.command.action {
            Action::Define {
                per_customer_limit, ..
            } => per_customer_limit,
            _ => unreachable!(),
        };
        assert_eq!(limit(&absent), LimitChange::Keep);
        assert_eq!(limit(&null), LimitChange::Remove);
        assert_eq!(limit(&four), LimitChange::Set(4));
        assert_ne!(absent.body_hash, null.body_hash);
        assert_ne!(null.body_hash, four.body_hash);
        for d in [absent, null, four] {
            let body = CommandBody::from_parts(
                &d.command.command_id,
                &d.command.resource_id,
                &d.command.action,
            );
            assert_eq!(decode(&body.to_json()).unwrap(), d, "round trip");
        }
    }

    #[test]
    fn hash_ignores_field_order_whitespace_and_unknown_fields() {
        let a = decoded(
            r#"{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":2}"#,
        );
        let b = decoded(
            r#"{ "quantity": 2, "customer_id": "u", "resource_id": "r", "command_id": "c", "type": "reserve", "note": "x" }"#,
        );
        assert_eq!(a.body_hash, b.body_hash);
        let c = decoded(
            r#"{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":3}"#,
        );
        assert_ne!(a.body_hash, c.body_hash);
    }

    #[test]
    fn unreadable_bodies_are_dead_lettered() {
        for (body, why) in [
            (&b"not json"[..], "not JSON"),
            (&b"\xff\xfe{}"[..], "UTF-8"),
            (&b"[1,2]"[..], "not a JSON object"),
            (
                &br#"{"type":"reserve","resource_id":"r"}"#[..],
                "command_id is required",
            ),
            (
                &br#"{"type":"reserve","command_id":"c"}"#[..],
                "resource_id is required",
            ),
            (
                &br#"{"command_id":7,"resource_id":"r"}"#[..],
                "command_id must be a string",
            ),
        ] {
            let err = decode(body).expect_err("unreadable");
            assert!(err.0.contains(why), "{err} should mention {why}");
        }
        let long = format!(
            r#"{{"command_id":"{}","resource_id":"r"}}"#,
            "x".repeat(129)
        );
        assert!(
            decode(long.as_bytes())
                .unwrap_err()
                .0
                .contains("at most 128")
        );
    }

    #[test]
    fn readable_but_wrong_commands_are_invalid() {
        let cases: [(&str, &str); 9] = [
            (
                r#"{"type":"fly","command_id":"c","resource_id":"r"}"#,
                "not one of",
            ),
            (
                r#"{"command_id":"c","resource_id":"r"}"#,
                "type is required",
            ),
            (
                r#"{"type":"reserve","command_id":"c","resource_id":"r","quantity":1}"#,
                "customer_id is required",
            ),
            (
                r#"{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":0}"#,
                "quantity must be",
            ),
            (
                r#"{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":-2}"#,
                "quantity must be",
            ),
            (
                r#"{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":1.5}"#,
                "quantity must be",
            ),
            (
                r#"{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":99999999999999999999}"#,
                "quantity must be",
            ),
            (
                r#"{"type":"define","command_id":"c","resource_id":"r"}"#,
                "capacity is required",
            ),
            (
                r#"{"type":"cancel","command_id":"c","resource_id":"r","reservation_id":""}"#,
                "reservation_id must not be empty",
            ),
        ];
        for (body, why) in cases {
            let detail = invalid_detail(body.as_bytes());
            assert!(
                detail.contains(why),
                "{body}: {detail} should mention {why}"
            );
        }
    }

    #[test]
    fn an_oversized_body_is_invalid() {
        let body = format!(
            r#"{{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":1,"pad":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        assert!(invalid_detail(body.as_bytes()).contains("at most 65536"));
    }

    #[test]
    fn invalid_command_keeps_its_kind_and_hashes_the_raw_body() {
        let a = decoded(r#"{"type":"reserve","command_id":"c","resource_id":"r","quantity":0}"#);
        let b = decoded(r#"{"type":"reserve","command_id":"c","resource_id":"r","quantity":-1}"#);
        assert_eq!(a.command.action.kind(), CommandKind::Reserve);
        assert_ne!(a.body_hash, b.body_hash);
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
