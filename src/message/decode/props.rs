//! Properties of [`decode`] over generated bodies: it never panics, a valid
//! command's hash depends on nothing but the command, and the canonical
//! body of a command decodes back to it.

use super::*;
use crate::domain::CustomerId;
use proptest::prelude::*;
use serde_json::{Map, Value};

const KNOWN: [&str; 8] = [
    "type",
    "command_id",
    "resource_id",
    "customer_id",
    "quantity",
    "capacity",
    "per_customer_limit",
    "reservation_id",
];

/// What must hold for every body `decode` accepts: an invalid command is
/// hashed raw, and a valid one's canonical body decodes to the same
/// command and hash.
fn check_accepted(body: &[u8], submission: &Submission) -> Result<(), TestCaseError> {
    let command = &submission.command;
    if let Action::Invalid { .. } = command.action {
        prop_assert_eq!(&*submission.body_hash, sha256_hex(body));
        return Ok(());
    }
    let canonical =
        CommandBody::from_parts(&command.command_id, &command.resource_id, &command.action);
    let again = decode(&canonical.to_json()).expect("a canonical body decodes");
    prop_assert_eq!(&again, submission);
    Ok(())
}

/// An id: plain, full of JSON and URL punctuation, or any printable text.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9-]{1,12}",
        r#"[{}\[\]:%"\\/ a-zA-Z0-9]{1,16}"#,
        r"[^\p{Cc}]{1,24}",
    ]
}

fn command() -> impl Strategy<Value = CommandBody> {
    let ids = || (id(), id());
    let limit = prop_oneof![
        Just(None),
        Just(Some(None)),
        (1..=u32::MAX).prop_map(|n| Some(Some(n))),
    ];
    let define =
        (ids(), any::<u32>(), limit).prop_map(|((c, r), capacity, limit)| CommandBody::Define {
            command_id: CommandId::try_from(c).unwrap(),
            resource_id: ResourceId::try_from(r).unwrap(),
            capacity,
            per_customer_limit: limit,
            price: None,
            budget_id: None,
        });
    let reserve =
        (ids(), id(), 1..=u32::MAX).prop_map(|((c, r), customer, quantity)| CommandBody::Reserve {
            command_id: CommandId::try_from(c).unwrap(),
            resource_id: ResourceId::try_from(r).unwrap(),
            customer_id: CustomerId::try_from(customer).unwrap(),
            quantity,
        });
    let cancel = (ids(), id()).prop_map(|((c, r), reservation)| CommandBody::Cancel {
        command_id: CommandId::try_from(c).unwrap(),
        resource_id: ResourceId::try_from(r).unwrap(),
        reservation_id: CommandId::try_from(reservation).unwrap(),
    });
    prop_oneof![define, reserve, cancel]
}

/// Any JSON value, nested a few levels; nested objects may reuse the
/// contract's field names, which mean nothing below the top level.
fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        r"\PC{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        let key = prop_oneof![
            r"[a-z_]{0,8}",
            prop::sample::select(&KNOWN[..]).prop_map(String::from)
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((key, inner), 0..4)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A field the contract does not know, with any value.
fn unknown_field() -> impl Strategy<Value = (String, Value)> {
    (
        r"[a-z_]{1,10}".prop_filter("unknown", |k| !KNOWN.contains(&k.as_str())),
        json(),
    )
}

/// Writes a string with every character as a `\u` escape.
fn escape_all(s: &str) -> String {
    let escapes: String = s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
    format!("\"{escapes}\"")
}

/// How one generated body is written: the fields in some order, with
/// insignificant whitespace between tokens, strings escaped or not.
#[derive(Debug, Clone)]
struct Spelling {
    fields: Vec<(String, Value)>,
    whitespace: Vec<String>,
    escape: Vec<bool>,
}

impl Spelling {
    fn write(&self) -> String {
        let mut ws = self.whitespace.iter().cycle();
        let mut escape = self.escape.iter().copied().cycle();
        let mut flag = move || escape.next().unwrap();
        let string = |s: &str, escaped: bool| {
            if escaped {
                escape_all(s)
            } else {
                serde_json::to_string(s).unwrap()
            }
        };
        let mut out = format!("{}{{", ws.next().unwrap());
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let key = string(key, flag());
            let value = match value {
                Value::String(s) => string(s, flag()),
                other if flag() => serde_json::to_string_pretty(other).unwrap(),
                other => other.to_string(),
            };
            let mut ws = || ws.next().unwrap();
            out.push_str(&format!("{}{key}{}:{}{value}{}", ws(), ws(), ws(), ws()));
        }
        out + "}" + ws.next().unwrap()
    }
}

/// A valid command, and one way of writing it with shuffled fields,
/// whitespace, escapes and unknown fields.
fn spelled_command() -> impl Strategy<Value = (CommandBody, Spelling)> {
    let extra = prop::collection::vec(unknown_field(), 0..4);
    (command(), extra).prop_flat_map(|(command, extra)| {
        let Value::Object(known) = serde_json::to_value(&command).unwrap() else {
            unreachable!("a command body is an object")
        };
        let fields: Vec<_> = known.into_iter().chain(extra).collect();
        let spelling = (
            Just(fields).prop_shuffle(),
            prop::collection::vec("[ \t\r\n]{0,2}", 1..16),
            prop::collection::vec(any::<bool>(), 1..8),
        )
            .prop_map(|(fields, whitespace, escape)| Spelling {
                fields,
                whitespace,
                escape,
            });
        (Just(command), spelling)
    })
}

/// Bodies made of JSON's tokens and the contract's names and values, most
/// of them not JSON, some of them nearly commands.
fn token_soup() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        " ",
        "\n",
        "\"",
        "\\",
        r#""type""#,
        r#""command_id""#,
        r#""resource_id""#,
        r#""customer_id""#,
        r#""quantity""#,
        r#""capacity""#,
        r#""per_customer_limit""#,
        r#""reservation_id""#,
        r#""reserve""#,
        r#""define""#,
        r#""cancel""#,
        r#""c""#,
        r#""r""#,
        "1",
        "0",
        "-1",
        "1.5",
        "1e300",
        "null",
        "true",
        r#""\u0000""#,
        r#""\ud800""#,
        r#""a\"b""#,
        "18446744073709551616",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn never_panics_on_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(submission) = decode(&body) {
            check_accepted(&body, &submission)?;
        }
    }

    #[test]
    fn never_panics_on_json_ish_text(body in prop_oneof![token_soup(), r#"[{}\[\]":,0-9a-z_\\. eE+-]{0,64}"#]) {
        if let Ok(submission) = decode(body.as_bytes()) {
            check_accepted(body.as_bytes(), &submission)?;
        }
    }

    /// Objects of the contract's fields with any values: every one is
    /// decoded or refused, never a panic, and what is accepted is coherent.
    #[test]
    fn never_panics_on_objects_of_any_values(
        fields in prop::collection::vec(
            (prop_oneof![prop::sample::select(&KNOWN[..]).prop_map(String::from), r"[a-z_]{1,4}"], json()),
            0..10,
        ),
        ids in (id(), id()),
    ) {
        // Readable ids more often than chance would give them; the fields
        // may name them again.
        let mut body = format!(
            r#"{{"command_id":{},"resource_id":{}"#,
            Value::from(ids.0),
            Value::from(ids.1)
        );
        for (key, value) in fields {
            body.push_str(&format!(",{}:{value}", Value::from(key)));
        }
        body.push('}');
        if let Ok(submission) = decode(body.as_bytes()) {
            check_accepted(body.as_bytes(), &submission)?;
        }
    }

    /// The hash is the command's, not the spelling's.
    #[test]
    fn a_command_hashes_the_same_however_it_is_spelled((command, spelling) in spelled_command()) {
        let body = spelling.write();
        let d = decode(body.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {body}")))?;
        prop_assert_eq!(
            CommandBody::from_parts(&d.command.command_id, &d.command.resource_id, &d.command.action),
            command.clone(),
            "{}", body
        );
        prop_assert_eq!(&*d.body_hash, sha256_hex(&command.to_json()), "{}", body);
    }

    #[test]
    fn the_canonical_body_round_trips(command in command()) {
        let d = decode(&command.to_json()).expect("a canonical body decodes");
        prop_assert_eq!(
            CommandBody::from_parts(&d.command.command_id, &d.command.resource_id, &d.command.action),
            command.clone()
        );
        prop_assert_eq!(&*d.body_hash, sha256_hex(&command.to_json()));
    }
}
