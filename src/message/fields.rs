//! The one pass over a command body: a borrowing walk of its top-level
//! object that keeps the raw JSON text of each known field and skips
//! everything else.
//!
//! Nothing is built from the body: known values are slices of it
//! ([`RawValue`]), unknown ones are skipped with [`IgnoredAny`], and keys
//! are read raw too, so a key or value with escapes is never unescaped into
//! a buffer of its size. What the walk allocates is bounded by
//! [`MAX_DEPTH`], whatever the body's size.

use super::raw;
use serde::Deserializer as _;
use serde::de::{IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Deepest nesting of arrays and objects a body may have, the top-level
/// object included: the limit `serde_json` applies when it builds a tree.
pub(super) const MAX_DEPTH: usize = 127;

/// Why a body is not a JSON object at all.
#[derive(Debug, thiserror::Error)]
pub(super) enum Malformed {
    /// Not UTF-8, so not JSON.
    #[error("body is not valid UTF-8: {0}")]
    Utf8(#[source] std::str::Utf8Error),
    /// Not JSON: a syntax error or trailing characters.
    #[error("body is not JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// Arrays or objects nested deeper than [`MAX_DEPTH`].
    #[error("body is not JSON: nested more than {MAX_DEPTH} levels deep at byte {0}")]
    TooDeep(usize),
    /// JSON, but not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
}

/// The fields of the contract, in the order problems are reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Key {
    Type,
    CommandId,
    ResourceId,
    CustomerId,
    Quantity,
    Capacity,
    PerCustomerLimit,
    ReservationId,
    HoldSecs,
    HoldId,
    Price,
    BudgetId,
    PerCustomerAmount,
}

impl Key {
    const ALL: [Key; 13] = [
        Key::Type,
        Key::CommandId,
        Key::ResourceId,
        Key::CustomerId,
        Key::Quantity,
        Key::Capacity,
        Key::PerCustomerLimit,
        Key::ReservationId,
        Key::HoldSecs,
        Key::HoldId,
        Key::Price,
        Key::BudgetId,
        Key::PerCustomerAmount,
    ];

    /// The longest name, in characters.
    const LONGEST: usize = "per_customer_amount".len();

    /// The field's name on the wire.
    pub(super) fn name(self) -> &'static str {
        match self {
            Key::Type => "type",
            Key::CommandId => "command_id",
            Key::ResourceId => "resource_id",
            Key::CustomerId => "customer_id",
            Key::Quantity => "quantity",
            Key::Capacity => "capacity",
            Key::PerCustomerLimit => "per_customer_limit",
            Key::ReservationId => "reservation_id",
            Key::HoldSecs => "hold_secs",
            Key::HoldId => "hold_id",
            Key::Price => "price",
            Key::BudgetId => "budget_id",
            Key::PerCustomerAmount => "per_customer_amount",
        }
    }

    /// The known field a raw JSON key names, if any. A key spelled with
    /// escapes (`"qu\u0061ntity"`) names its field too, as it would in a
    /// tree; one too long to be any known name is not unescaped.
    fn from_raw(key: &RawValue) -> Option<Key> {
        match raw::text(key, Key::LONGEST) {
            raw::Text::Chars(name) => Key::ALL.into_iter().find(|k| k.name() == name),
            raw::Text::Long(_) | raw::Text::NotAString => None,
        }
    }
}

/// The known fields of one body: each one's raw JSON text, borrowed from
/// the body, and whether it appeared more than once.
#[derive(Debug, Default)]
pub(super) struct Fields<'a> {
    values: [Option<&'a RawValue>; Key::ALL.len()],
    duplicated: [bool; Key::ALL.len()],
}

impl<'a> Fields<'a> {
    /// Walks `body`, which must be a JSON object nested at most
    /// [`MAX_DEPTH`] deep, with nothing after it but whitespace.
    pub(super) fn read(body: &'a [u8]) -> Result<Fields<'a>, Malformed> {
        let text = std::str::from_utf8(body).map_err(Malformed::Utf8)?;
        // Before the walk: skipping a value costs serde_json a byte per
        // level of nesting, so this bounds the walk's memory too.
        check_depth(text)?;
        if !text.trim_start_matches(is_json_whitespace).starts_with('{') {
            // Only to tell "not JSON" from "not an object": skipping
            // allocates nothing but the (bounded) nesting stack.
            return Err(match serde_json::from_str::<IgnoredAny>(text) {
                Ok(_) => Malformed::NotAnObject,
                Err(e) => Malformed::Json(e),
            });
        }
        // The text is known to be UTF-8, so the str reader need not check
        // every borrowed slice again.
        let mut de = serde_json::Deserializer::from_str(text);
        let fields = de.deserialize_map(FieldsVisitor).map_err(Malformed::Json)?;
        de.end().map_err(Malformed::Json)?;
        Ok(fields)
    }

    /// The raw JSON text of a field (the last one, when duplicated).
    pub(super) fn get(&self, key: Key) -> Option<&'a RawValue> {
        self.values[key as usize]
    }

    /// Whether the body has the field more than once.
    pub(super) fn is_duplicated(&self, key: Key) -> bool {
        self.duplicated[key as usize]
    }

    /// The first duplicated field, in [`Key`] order.
    pub(super) fn first_duplicate(&self) -> Option<Key> {
        Key::ALL.into_iter().find(|k| self.is_duplicated(*k))
    }

    fn put(&mut self, key: Key, value: &'a RawValue) {
        let slot = &mut self.values[key as usize];
        self.duplicated[key as usize] |= slot.is_some();
        *slot = Some(value);
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut fields = Fields::default();
        // serde_json only hands string keys to the seed, so a raw key is
        // always a JSON string.
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            match Key::from_raw(key) {
                Some(known) => fields.put(known, map.next_value()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Fails at the first `[` or `{` outside a string that opens a level deeper
/// than [`MAX_DEPTH`]. Exact for valid JSON; on invalid JSON either verdict
/// is fine, as the walk fails anyway.
fn check_depth(text: &str) -> Result<(), Malformed> {
    let bytes = text.as_bytes();
    let (mut depth, mut at) = (0usize, 0usize);
    while at < bytes.len() {
        match bytes[at] {
            // A string: jump to its closing quote, past escaped characters
            // (most of a huge body is one string, so this is the fast path).
            b'"' => {
                at += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &bytes[at..]) {
                        Some(i) if bytes[at + i] == b'\\' => at = (at + i + 2).min(bytes.len()),
                        Some(i) => {
                            at += i;
                            break;
                        }
                        None => return Ok(()),
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(Malformed::TooDeep(at));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(depth: usize, inner: &str) -> String {
        format!("{}{inner}{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn the_depth_limit_is_serde_jsons() {
        for depth in [1, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 200] {
            let text = nested(depth, "");
            assert_eq!(
                check_depth(&text).is_ok(),
                serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                "depth {depth}"
            );
        }
        let objects = format!("{}{}", r#"{"a":"#.repeat(MAX_DEPTH), "}".repeat(MAX_DEPTH));
        assert!(check_depth(&objects).is_ok());
        let objects = format!("{{\"b\":{objects}}}");
        assert!(matches!(check_depth(&objects), Err(Malformed::TooDeep(_))));
    }

    #[test]
    fn brackets_inside_strings_do_not_nest() {
        let text = format!(r#"{{"a":"{}","b":"\"[[","c":[["\\"]]}}"#, "[{".repeat(200));
        assert!(check_depth(&text).is_ok());
        assert!(Fields::read(text.as_bytes()).is_ok());
    }

    #[test]
    fn keeps_known_fields_raw_and_flags_duplicates() {
        let body = br#"{ "quantity" : 2 , "x": {"quantity": 1}, "qu\u0061ntity": [1, 2],
            "command_id": "c", "x": null }"#;
        let fields = Fields::read(body).unwrap();
        assert_eq!(fields.get(Key::Quantity).unwrap().get(), "[1, 2]");
        assert!(fields.is_duplicated(Key::Quantity));
        assert_eq!(fields.get(Key::CommandId).unwrap().get(), r#""c""#);
        assert!(!fields.is_duplicated(Key::CommandId));
        assert!(fields.get(Key::Type).is_none());
        assert_eq!(fields.first_duplicate(), Some(Key::Quantity));
    }

    #[test]
    fn malformed_bodies_say_why() {
        for (body, expected) in [
            (&b""[..], "body is not JSON: EOF"),
            (b"\xef\xbb\xbf{}", "body is not JSON"),
            (b"{} x", "body is not JSON: trailing characters"),
            (b"{1:2}", "body is not JSON: key must be a string"),
            (b"{\"a\":1,}", "body is not JSON: trailing comma"),
            (b"{\"a\" 1}", "body is not JSON: expected `:`"),
            (b" [1] ", "body is not a JSON object"),
            (b"\"{}\"", "body is not a JSON object"),
            (b"{\"a\":\"\xff\"}", "body is not valid UTF-8"),
        ] {
            let err = Fields::read(body).unwrap_err().to_string();
            assert!(err.starts_with(expected), "{body:?}: {err}");
        }
        let deep = nested(200, "");
        assert_eq!(
            Fields::read(deep.as_bytes()).unwrap_err().to_string(),
            "body is not JSON: nested more than 127 levels deep at byte 127"
        );
    }
}
