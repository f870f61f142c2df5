//! Single values read from their raw JSON text, in memory bounded by what
//! the caller can use rather than by the value's size.

use serde::de::{Deserializer as _, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// Most raw bytes one character can take in a JSON string: a surrogate
/// pair, `\uD83D\uDE00`.
const MAX_ESCAPED_BYTES_PER_CHAR: usize = 12;

/// How many characters of a value an error message echoes.
const SHORT_CHARS: usize = 40;

/// What a raw JSON value is as a string.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Text<'a> {
    /// A string: its characters, borrowed unless it has escapes.
    Chars(Cow<'a, str>),
    /// A string with escapes, longer than the caller can use, left
    /// escaped: how many characters it has.
    Long(usize),
    /// Not a string, or a string with a lone surrogate escape.
    NotAString,
}

/// Reads `raw` as a string. One without escapes is borrowed, whatever its
/// length; one with escapes is unescaped only when it can have at most
/// `max_chars` characters, and otherwise only counted, so a huge escaped
/// value is never copied.
pub(super) fn text(raw: &RawValue, max_chars: usize) -> Text<'_> {
    let json = raw.get();
    let Some(content) = json.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return Text::NotAString;
    };
    if !content.contains('\\') {
        return Text::Chars(Cow::Borrowed(content));
    }
    if content.len() > max_chars * MAX_ESCAPED_BYTES_PER_CHAR {
        return unescaped_chars(content).map_or(Text::NotAString, Text::Long);
    }
    let mut de = serde_json::Deserializer::from_str(json);
    match de.deserialize_str(CowStr) {
        Ok(s) => Text::Chars(s),
        Err(_) => Text::NotAString,
    }
}

/// A string as serde_json hands it over: borrowed from the input when it
/// has no escapes, owned when it had to be unescaped.
struct CowStr;

impl<'de> Visitor<'de> for CowStr {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }

    fn visit_string<E: serde::de::Error>(self, s: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Self::Value, E> {
        Err(E::custom("not UTF-8"))
    }
}

/// How many characters the content of a JSON string (between its quotes,
/// already checked by the parser to be well-formed escapes) stands for, or
/// `None` when a surrogate escape is not part of a pair, which serde_json
/// refuses to unescape.
fn unescaped_chars(content: &str) -> Option<usize> {
    let (mut chars, mut rest) = (0, content);
    while let Some(at) = rest.find('\\') {
        chars += rest[..at].chars().count() + 1;
        let escape = &rest[at + 1..];
        rest = match escape.strip_prefix('u') {
            None => escape.get(1..)?,
            Some(hex) => match unit(hex)? {
                0xD800..=0xDBFF => {
                    let low = hex.get(4..)?.strip_prefix("\\u")?;
                    if !(0xDC00..=0xDFFF).contains(&unit(low)?) {
                        return None;
                    }
                    &low[4..]
                }
                0xDC00..=0xDFFF => return None,
                _ => &hex[4..],
            },
        };
    }
    Some(chars + rest.chars().count())
}

/// The code unit of a `\u` escape's four hex digits at the start of `hex`.
fn unit(hex: &str) -> Option<u16> {
    u16::from_str_radix(hex.get(..4)?, 16).ok()
}

/// A value for an error message, from its raw JSON text: without
/// insignificant whitespace, and cut after 40 characters so a huge field
/// cannot bloat events. Only the echoed prefix is read.
pub(super) fn short(raw: &RawValue) -> String {
    let (mut in_string, mut escaped) = (false, false);
    let mut significant = raw.get().chars().filter(|&c| {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            true
        } else {
            in_string = c == '"';
            !matches!(c, ' ' | '\t' | '\n' | '\r')
        }
    });
    let mut out: String = significant.by_ref().take(SHORT_CHARS).collect();
    if significant.next().is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(json: &str) -> &RawValue {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn strings_without_escapes_are_borrowed_at_any_length() {
        let long = format!("\"{}\"", "x".repeat(10_000));
        assert!(matches!(
            text(raw(&long), 3),
            Text::Chars(Cow::Borrowed(s)) if s.len() == 10_000
        ));
        assert_eq!(text(raw(r#""a\"b""#), 3), Text::Chars("a\"b".into()));
        assert_eq!(text(raw("7"), 3), Text::NotAString);
        assert_eq!(text(raw("null"), 3), Text::NotAString);
        assert_eq!(text(raw(r#"["a"]"#), 3), Text::NotAString);
        assert_eq!(text(raw(r#""\ud800""#), 3), Text::NotAString);
    }

    #[test]
    fn long_escaped_strings_are_counted_not_copied() {
        let json = format!("\"{}\"", r"\n".repeat(5_000));
        assert_eq!(text(raw(&json), 128), Text::Long(5_000));
        let json = format!("\"{}\"", r"\ud83d\ude00".repeat(200));
        assert_eq!(text(raw(&json), 128), Text::Long(200));
        let json = format!("\"{}\\ud800x\"", "y".repeat(2_000));
        assert_eq!(text(raw(&json), 128), Text::NotAString);
    }

    #[test]
    fn short_echoes_compact_json_cut_at_40_characters() {
        assert_eq!(short(raw(r#"[ "u" ]"#)), r#"["u"]"#);
        assert_eq!(short(raw(r#"{ "a b" : "c\" d" }"#)), r#"{"a b":"c\" d"}"#);
        assert_eq!(short(raw("1.5")), "1.5");
        let forty = format!("\"{}\"", "é".repeat(38));
        assert_eq!(short(raw(&forty)), forty);
        let long = format!("\"{}\"", "é".repeat(39));
        assert_eq!(short(raw(&long)), format!("\"{}...", "é".repeat(39)));
    }

    /// Writes every character of `s` as a `\u` escape.
    fn escape_all(s: &str) -> String {
        let mut out = String::from("\"");
        for unit in s.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out + "\""
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// The count agrees with serde_json's unescaping, however the
        /// string is escaped.
        #[test]
        fn counting_agrees_with_unescaping(s in "\\PC{0,40}", all in any::<bool>()) {
            let json = if all { escape_all(&s) } else { serde_json::to_string(&s).unwrap() };
            let content = &json[1..json.len() - 1];
            prop_assert_eq!(unescaped_chars(content), Some(s.chars().count()));
            prop_assert_eq!(text(raw(&json), 40), Text::Chars(s.as_str().into()));
        }

        /// Escapes of single code units, surrogates included: the count
        /// exists exactly when serde_json can unescape.
        #[test]
        fn lone_surrogates_are_refused_as_serde_json_does(
            units in prop::collection::vec(prop_oneof![0xD7F0u16..0xE010, any::<u16>()], 0..6)
        ) {
            let json: String = units.iter().map(|u| format!("\\u{u:04x}")).collect();
            let unescaped = serde_json::from_str::<String>(&format!("\"{json}\"")).ok();
            prop_assert_eq!(unescaped_chars(&json), unescaped.map(|s| s.chars().count()));
        }
    }
}
