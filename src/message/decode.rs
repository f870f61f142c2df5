//! Decoding a command body into a [`Submission`]: one borrowing pass over
//! the body ([`Fields::read`]), then each field parsed from its raw text.
//!
//! The size limit is checked before anything is parsed: an oversized body
//! is still walked (to tell unreadable from `invalid`), but only its ids
//! and `type` are read from it, and no value is copied.

use super::fields::{Fields, Key, Malformed};
use super::raw::{self, Text};
use super::{CommandBody, MAX_BODY_BYTES, Unreadable, sha256_hex, sha256_hex_of_json};
use crate::domain::{
    Action, BudgetChange, BudgetCommand, BudgetId, Command, CommandId, CommandKind, EXPIRY_PREFIX,
    IdError, LimitChange, MAX_AMOUNT, MAX_HOLD_SECS, MAX_ID_CHARS, ResourceId, Submission,
};
use std::borrow::Cow;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

/// A decoded body: a command against a resource, or a `define_budget`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Routed by `resource_id`.
    Resource(Submission),
    /// Routed by `budget_id`, with the hash of its body.
    Budget(BudgetCommand, String),
}

/// Decodes one delivery body: a `define_budget` (tied to its command by
/// `command_id` and `budget_id`) or any other command.
pub fn decode_any(body: &[u8]) -> Result<Decoded, Unreadable> {
    let fields = Fields::read(body)?;
    if kind(&fields) == CommandKind::DefineBudget {
        decode_budget(body, &fields).map(|(c, hash)| Decoded::Budget(c, hash))
    } else {
        decode_fields(body, &fields).map(Decoded::Resource)
    }
}

/// Decodes one delivery body into a command (possibly [`Action::Invalid`])
/// and the hash that identifies its body for idempotency.
pub fn decode(body: &[u8]) -> Result<Submission, Unreadable> {
    decode_fields(body, &Fields::read(body)?)
}

/// Why a body with readable ids is invalid before its fields are looked
/// at: its size, or a reserved `command_id`.
fn refused(body: &[u8], command_id: &CommandId) -> Option<String> {
    if body.len() > MAX_BODY_BYTES {
        Some(format!(
            "body is {} bytes; at most {MAX_BODY_BYTES} are allowed",
            body.len()
        ))
    } else if command_id.as_str().starts_with(EXPIRY_PREFIX) {
        Some(format!(
            "command_id may not start with {EXPIRY_PREFIX:?}: such ids name the expiries of holds"
        ))
    } else {
        None
    }
}

fn decode_budget(body: &[u8], fields: &Fields) -> Result<(BudgetCommand, String), Unreadable> {
    let command_id: CommandId = tie_id(fields, Key::CommandId).map_err(Unreadable)?;
    let budget_id: BudgetId = tie_id(fields, Key::BudgetId).map_err(Unreadable)?;
    let action = match refused(body, &command_id) {
        Some(why) => Err(why),
        None => match fields.first_duplicate() {
            Some(key) => Err(format!("duplicate key {}", key.name())),
            None => amount(fields, Key::PerCustomerAmount)
                .and_then(|a| a.ok_or_else(|| "per_customer_amount is required".to_string())),
        },
    };
    let hash = match &action {
        Ok(per_customer_amount) => {
            let canonical = CommandBody::DefineBudget {
                command_id: command_id.clone(),
                budget_id: budget_id.clone(),
                per_customer_amount: *per_customer_amount,
            };
            sha256_hex_of_json(&canonical)
        }
        Err(_) => sha256_hex(body),
    };
    let command = BudgetCommand {
        command_id,
        budget_id,
        action,
    };
    Ok((command, hash))
}

fn decode_fields(body: &[u8], fields: &Fields) -> Result<Submission, Unreadable> {
    let command_id: CommandId = tie_id(fields, Key::CommandId).map_err(Unreadable)?;
    let resource_id: ResourceId = tie_id(fields, Key::ResourceId).map_err(Unreadable)?;
    let kind = kind(fields);
    let action = match refused(body, &command_id) {
        Some(why) => Err(why),
        None => parse_action(kind, fields),
    };
    let (action, body_hash) = match action {
        Ok(action) => {
            let canonical = CommandBody::from_parts(&command_id, &resource_id, &action);
            let hash = sha256_hex_of_json(&canonical);
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
        body_hash: body_hash.into(),
    })
}

impl From<Malformed> for Unreadable {
    fn from(malformed: Malformed) -> Self {
        Unreadable(malformed.to_string())
    }
}

/// One of the two ids that tie a body to a command; given twice, neither
/// copy can be trusted to be the one the producer meant.
fn tie_id<T>(f: &Fields, key: Key) -> Result<T, String>
where
    T: for<'a> TryFrom<&'a str, Error = IdError> + TryFrom<String, Error = IdError>,
{
    if f.is_duplicated(key) {
        return Err(format!("duplicate key {}", key.name()));
    }
    required_id(f, key)
}

/// The command's kind; a duplicated `type` names none.
fn kind(f: &Fields) -> CommandKind {
    if f.is_duplicated(Key::Type) {
        return CommandKind::Unknown;
    }
    let Some(Text::Chars(name)) = f
        .get(Key::Type)
        .map(|raw| raw::text(raw, "define_budget".len()))
    else {
        return CommandKind::Unknown;
    };
    match name.as_ref() {
        "define" => CommandKind::Define,
        "reserve" => CommandKind::Reserve,
        "cancel" => CommandKind::Cancel,
        "hold" => CommandKind::Hold,
        "confirm" => CommandKind::Confirm,
        "define_budget" => CommandKind::DefineBudget,
        _ => CommandKind::Unknown,
    }
}

/// The command types of the contract.
const TYPES: &str = "define, reserve, cancel, hold, confirm, define_budget";

fn parse_action(kind: CommandKind, f: &Fields) -> Result<Action, String> {
    if let Some(key) = f.first_duplicate() {
        return Err(format!("duplicate key {}", key.name()));
    }
    match kind {
        CommandKind::Define => Ok(Action::Define {
            capacity: count(f, Key::Capacity, 0)?.ok_or("capacity is required")?,
            per_customer_limit: match f.get(Key::PerCustomerLimit).map(|raw| raw.get()) {
                None => LimitChange::Keep,
                Some("null") => LimitChange::Remove,
                Some(_) => LimitChange::Set(count(f, Key::PerCustomerLimit, 1)?.expect("present")),
            },
            price: count(f, Key::Price, 0)?,
            budget: match f.get(Key::BudgetId).map(|raw| raw.get()) {
                None => BudgetChange::Keep,
                Some("null") => BudgetChange::Detach,
                Some(_) => BudgetChange::Attach(required_id(f, Key::BudgetId)?),
            },
        }),
        CommandKind::Reserve => Ok(Action::Reserve {
            customer_id: required_id(f, Key::CustomerId)?,
            quantity: count(f, Key::Quantity, 1)?.ok_or("quantity is required")?,
        }),
        CommandKind::Cancel => Ok(Action::Cancel {
            reservation_id: required_id(f, Key::ReservationId)?,
        }),
        CommandKind::Hold => Ok(Action::Hold {
            customer_id: required_id(f, Key::CustomerId)?,
            quantity: count(f, Key::Quantity, 1)?.ok_or("quantity is required")?,
            hold_secs: count_in(f, Key::HoldSecs, 1, MAX_HOLD_SECS)?
                .ok_or("hold_secs is required")?,
        }),
        CommandKind::Confirm => Ok(Action::Confirm {
            hold_id: required_id(f, Key::HoldId)?,
        }),
        // An expiry is not a command: its name is as unknown as any other.
        // A define_budget never gets here (it names no resource).
        CommandKind::Unknown | CommandKind::Expire | CommandKind::DefineBudget => {
            Err(match f.get(Key::Type) {
                None => format!("type is required: one of {TYPES}"),
                Some(t) => format!("type {} is not one of {TYPES}", raw::short(t)),
            })
        }
    }
}

fn required_id<T>(f: &Fields, key: Key) -> Result<T, String>
where
    T: for<'a> TryFrom<&'a str, Error = IdError> + TryFrom<String, Error = IdError>,
{
    let name = key.name();
    let raw = match f.get(key) {
        None => return Err(format!("{name} is required")),
        Some(raw) if raw.get() == "null" => return Err(format!("{name} is required")),
        Some(raw) => raw,
    };
    let id = match raw::text(raw, MAX_ID_CHARS) {
        Text::Chars(Cow::Borrowed(s)) => T::try_from(s),
        Text::Chars(Cow::Owned(s)) => T::try_from(s),
        Text::Long(chars) => Err(IdError::TooLong(chars)),
        Text::NotAString => {
            return Err(format!("{name} must be a string, got {}", raw::short(raw)));
        }
    };
    id.map_err(|e| format!("{name} {e}"))
}

/// An optional amount of money: an integer in `0..=MAX_AMOUNT`.
fn amount(f: &Fields, key: Key) -> Result<Option<u64>, String> {
    integer(f, key, 0, MAX_AMOUNT)
}

/// An optional integer field in `min..=u32::MAX`.
fn count(f: &Fields, key: Key, min: u32) -> Result<Option<u32>, String> {
    count_in(f, key, min, u32::MAX)
}

/// An optional integer in `min..=max`, as a `u32`.
fn count_in(f: &Fields, key: Key, min: u32, max: u32) -> Result<Option<u32>, String> {
    let n = integer(f, key, u64::from(min), u64::from(max))?;
    Ok(n.map(|n| u32::try_from(n).expect("at most a u32's max")))
}

/// An optional integer in `min..=max`.
fn integer(f: &Fields, key: Key, min: u64, max: u64) -> Result<Option<u64>, String> {
    let raw = match f.get(key) {
        None => return Ok(None),
        Some(raw) if raw.get() == "null" => return Ok(None),
        Some(raw) => raw,
    };
    // Only an integer literal reads as a u64: a fraction, an exponent or a
    // number past u64 is refused by serde_json itself. Anything that is not
    // a number is refused before serde_json would copy it into its error.
    Some(raw.get())
        .filter(|json| json.starts_with(|c: char| c == '-' || c.is_ascii_digit()))
        .and_then(|json| serde_json::from_str::<u64>(json).ok())
        .filter(|n| (min..=max).contains(n))
        .map(Some)
        .ok_or_else(|| {
            format!(
                "{} must be an integer from {min} to {max}, got {}",
                key.name(),
                raw::short(raw)
            )
        })
}
