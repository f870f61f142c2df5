//! Every class of body [`decode`] meets: the contract's examples, what is
//! dead-lettered, what is `invalid`, and what must not change the hash.

use super::*;
use crate::domain::{BudgetCommand, CustomerId, Submission};

fn decoded(body: &str) -> Submission {
    decode(body.as_bytes()).expect("readable")
}

fn invalid_detail(body: &[u8]) -> String {
    match decode(body).expect("readable").command.action {
        Action::Invalid { detail, .. } => detail,
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn unreadable(body: &[u8]) -> String {
    decode(body).expect_err("unreadable").0
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
            per_customer_limit: LimitChange::Set(4),
            price: None,
            budget: Default::default(),
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

/// A reserve with `extra` spliced in before the closing brace.
fn reserve_with(extra: &str) -> String {
    format!(
        r#"{{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":2{extra}}}"#
    )
}

#[test]
fn field_errors_keep_their_exact_wording() {
    let reserve = |fields: &str| {
        format!(r#"{{"type":"reserve","command_id":"c","resource_id":"r"{fields}}}"#)
    };
    for (body, detail) in [
        (
            reserve(r#","customer_id":[ "u" ],"quantity":1"#),
            r#"customer_id must be a string, got ["u"]"#,
        ),
        (
            reserve(r#","customer_id":"u","quantity":1.5"#),
            "quantity must be an integer from 1 to 4294967295, got 1.5",
        ),
        (
            r#"{"type":"define","command_id":"c","resource_id":"r","capacity":null}"#.into(),
            "capacity is required",
        ),
        (
            r#"{"command_id":"c","resource_id":"r"}"#.into(),
            "type is required: one of define, reserve, cancel, hold, confirm, define_budget",
        ),
        (
            r#"{"type":"fly","command_id":"c","resource_id":"r"}"#.into(),
            r#"type "fly" is not one of define, reserve, cancel, hold, confirm, define_budget"#,
        ),
        (
            r#"{"type":null,"command_id":"c","resource_id":"r"}"#.into(),
            "type null is not one of define, reserve, cancel, hold, confirm, define_budget",
        ),
        (
            reserve(r#","customer_id":"u\nv","quantity":1"#),
            "customer_id contains a non-printable character",
        ),
        (
            r#"{"type":"define","command_id":"c","resource_id":"r","capacity":1,"per_customer_limit":0}"#.into(),
            "per_customer_limit must be an integer from 1 to 4294967295, got 0",
        ),
        (
            r#"{"type":"define","command_id":"c","resource_id":"r","capacity":4294967296}"#.into(),
            "capacity must be an integer from 0 to 4294967295, got 4294967296",
        ),
        (
            r#"{"type":"hold","command_id":"c","resource_id":"r","customer_id":"u","quantity":1}"#.into(),
            "hold_secs is required",
        ),
        (
            r#"{"type":"hold","command_id":"c","resource_id":"r","customer_id":"u","quantity":1,"hold_secs":0}"#.into(),
            "hold_secs must be an integer from 1 to 86400, got 0",
        ),
        (
            r#"{"type":"hold","command_id":"c","resource_id":"r","customer_id":"u","quantity":1,"hold_secs":86401}"#.into(),
            "hold_secs must be an integer from 1 to 86400, got 86401",
        ),
        (
            r#"{"type":"hold","command_id":"c","resource_id":"r","customer_id":"u","hold_secs":5}"#.into(),
            "quantity is required",
        ),
        (
            r#"{"type":"confirm","command_id":"c","resource_id":"r"}"#.into(),
            "hold_id is required",
        ),
        (
            r#"{"type":"confirm","command_id":"expire:h","resource_id":"r","hold_id":"h"}"#.into(),
            "command_id may not start with \"expire:\": such ids name the expiries of holds",
        ),
        (
            r#"{"type":"expire","command_id":"c","resource_id":"r"}"#.into(),
            "type \"expire\" is not one of define, reserve, cancel, hold, confirm, define_budget",
        ),
    ] {
        assert_eq!(invalid_detail(body.as_bytes()), detail, "{body}");
    }
}

#[test]
fn echoed_values_are_cut_after_40_characters() {
    let body = reserve(&format!(r#""customer_id":{{"k": "{}"}}"#, "v".repeat(100)));
    assert_eq!(
        invalid_detail(body.as_bytes()),
        format!(
            r#"customer_id must be a string, got {{"k":"{}..."#,
            "v".repeat(34)
        )
    );

    fn reserve(fields: &str) -> String {
        format!(r#"{{"type":"reserve","command_id":"c","resource_id":"r","quantity":1,{fields}}}"#)
    }
}

#[test]
fn counts_refuse_what_is_not_an_integer_in_range() {
    for quantity in [
        "1e300",
        "-1",
        "1.5",
        r#""2""#,
        "18446744073709551616",
        "0",
        "1.0",
        "1e2",
        "-0",
        "[1]",
        "true",
    ] {
        let body = format!(
            r#"{{"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":{quantity}}}"#
        );
        assert_eq!(
            invalid_detail(body.as_bytes()),
            format!("quantity must be an integer from 1 to 4294967295, got {quantity}"),
        );
    }
    let capacity = |n: &str| {
        decoded(&format!(
            r#"{{"type":"define","command_id":"c","resource_id":"r","capacity":{n}}}"#
        ))
        .command
        .action
    };
    assert!(matches!(capacity("0"), Action::Define { capacity: 0, .. }));
    assert!(matches!(
        capacity("4294967295"),
        Action::Define {
            capacity: u32::MAX,
            ..
        }
    ));
}

#[test]
fn an_oversized_body_with_readable_ids_is_invalid_and_hashed_raw() {
    let body = reserve_with(&format!(r#","pad":"{}""#, "x".repeat(MAX_BODY_BYTES)));
    let d = decode(body.as_bytes()).unwrap();
    assert_eq!(
        d.command.action,
        Action::Invalid {
            kind: CommandKind::Reserve,
            detail: format!("body is {} bytes; at most 65536 are allowed", body.len()),
        }
    );
    assert_eq!(&*d.body_hash, sha256_hex(body.as_bytes()));
    // Exactly at the limit, it is a command like any other.
    let fits = reserve_with(&format!(
        r#","pad":"{}""#,
        "x".repeat(2 * MAX_BODY_BYTES - body.len())
    ));
    assert_eq!(fits.len(), MAX_BODY_BYTES);
    assert_eq!(decoded(&fits).command.action.kind(), CommandKind::Reserve);
}

#[test]
fn an_oversized_body_has_its_ids_read_after_huge_fields() {
    let huge_string = format!(r#""{}""#, r#"\u00e9\"{["#.repeat(40_000));
    let huge_array = format!("[{}1]", r#"{"a":[1,"b"]},"#.repeat(40_000));
    for pad in [huge_string, huge_array] {
        let body = format!(
            r#"{{"pad":{pad},"customer_id":{pad},"quantity":{pad},"type":"cancel","resource_id":"r-1","command_id":"c-1"}}"#
        );
        let d = decode(body.as_bytes()).expect("ids readable");
        assert_eq!(d.command.command_id.as_str(), "c-1");
        assert_eq!(d.command.resource_id.as_str(), "r-1");
        match d.command.action {
            Action::Invalid { kind, detail } => {
                assert_eq!(kind, CommandKind::Cancel);
                assert!(
                    detail.starts_with("body is "),
                    "only the size is judged: {detail}"
                );
            }
            other => panic!("expected invalid, got {other:?}"),
        }
    }
}

#[test]
fn an_oversized_body_without_readable_ids_is_unreadable() {
    let pad = "x".repeat(MAX_BODY_BYTES);
    let no_id = format!(r#"{{"type":"reserve","resource_id":"r","pad":"{pad}"}}"#);
    assert_eq!(unreadable(no_id.as_bytes()), "command_id is required");
    let huge_id = format!(r#"{{"command_id":"{pad}","resource_id":"r"}}"#);
    assert_eq!(
        unreadable(huge_id.as_bytes()),
        "command_id is 65536 characters long; at most 128 are allowed"
    );
    // Escaped, it is counted rather than unescaped, to the same number.
    let escaped = format!(
        r#"{{"command_id":"c","resource_id":"{}"}}"#,
        r"\ud83d\ude00".repeat(40_000)
    );
    assert_eq!(
        unreadable(escaped.as_bytes()),
        "resource_id is 40000 characters long; at most 128 are allowed"
    );
    let broken = format!(r#"{{"command_id":"c","resource_id":"r","pad":"{pad}""#);
    assert!(unreadable(broken.as_bytes()).starts_with("body is not JSON"));
}

#[test]
fn a_duplicated_id_is_unreadable() {
    for (body, why) in [
        (
            r#"{"command_id":"a","resource_id":"r","command_id":"a"}"#,
            "duplicate key command_id",
        ),
        (
            r#"{"command_id":"a","resource_id":"r","command_id":"b"}"#,
            "duplicate key command_id",
        ),
        (
            r#"{"command_id":"a","resource_id":"r","resource_id":"s"}"#,
            "duplicate key resource_id",
        ),
        (
            r#"{"command_id":"a","resource_id":"r","command\u005fid":"b"}"#,
            "duplicate key command_id",
        ),
    ] {
        assert_eq!(unreadable(body.as_bytes()), why, "{body}");
    }
}

#[test]
fn another_duplicated_known_key_is_invalid() {
    let d = decoded(&reserve_with(r#","quantity":2"#));
    assert_eq!(
        d.command.action,
        Action::Invalid {
            kind: CommandKind::Reserve,
            detail: "duplicate key quantity".into()
        }
    );
    // Even a field the command's kind does not use.
    assert_eq!(
        invalid_detail(reserve_with(r#","capacity":1,"capacity":1"#).as_bytes()),
        "duplicate key capacity"
    );
    let twice =
        decoded(r#"{"type":"reserve","type":"reserve","command_id":"c","resource_id":"r"}"#);
    assert_eq!(
        twice.command.action,
        Action::Invalid {
            kind: CommandKind::Unknown,
            detail: "duplicate key type".into()
        }
    );
}

#[test]
fn duplicated_unknown_keys_are_ignored() {
    let plain = decoded(&reserve_with(""));
    let noisy = decoded(&reserve_with(
        r#","note":1,"note":{"quantity":5,"quantity":6}"#,
    ));
    assert_eq!(noisy, plain);
}

#[test]
fn nesting_past_the_limit_is_unreadable_anywhere() {
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let top = deep(200);
    assert!(unreadable(top.as_bytes()).contains("nested more than 127 levels deep"));
    let inside = reserve_with(&format!(r#","note":{}"#, deep(200)));
    assert!(unreadable(inside.as_bytes()).contains("nested more than 127 levels deep"));
    let in_a_known_field = reserve_with(&format!(r#","capacity":{}"#, deep(200)));
    assert!(unreadable(in_a_known_field.as_bytes()).contains("nested more than 127"));
    // Within the limit (the object itself is one level), it is just ignored.
    let fine = reserve_with(&format!(r#","note":{}"#, deep(126)));
    assert_eq!(decoded(&fine), decoded(&reserve_with("")));
}

#[test]
fn invalid_utf8_anywhere_is_unreadable() {
    for body in [
        b"{\"type\":\"reserve\",\"command_id\":\"c\xff\",\"resource_id\":\"r\"}".to_vec(),
        b"{\"type\":\"reserve\",\"command_id\":\"c\",\"resource_id\":\"r\",\"note\":\"\xc3\x28\"}"
            .to_vec(),
        b"{\"type\":\"reserve\",\"command_id\":\"c\",\"resource_id\":\"r\",\"\xed\xa0\x80\":1}"
            .to_vec(),
    ] {
        assert!(
            unreadable(&body).starts_with("body is not valid UTF-8"),
            "{body:?}"
        );
    }
}

#[test]
fn trailing_garbage_and_other_tops_are_unreadable() {
    for (body, why) in [
        (
            reserve_with("") + " {}",
            "body is not JSON: trailing characters",
        ),
        (
            reserve_with("") + "}",
            "body is not JSON: trailing characters",
        ),
        ("\"reserve\"".into(), "body is not a JSON object"),
        ("null".into(), "body is not a JSON object"),
        ("".into(), "body is not JSON"),
        ("{".into(), "body is not JSON"),
    ] {
        assert!(unreadable(body.as_bytes()).starts_with(why), "{body:?}");
    }
    // Whitespace around the object is fine.
    assert_eq!(
        decoded(&format!(" \n{}\r\n\t", reserve_with(""))),
        decoded(&reserve_with(""))
    );
}

#[test]
fn control_characters_in_ids_are_refused_by_the_id_types() {
    for control in [r"\u0000", r"\n", r"\t", r"\u007f", r"\u0085"] {
        let id = format!("a{control}b");
        for key in ["command_id", "resource_id"] {
            let body = format!(r#"{{"type":"cancel","command_id":"c","resource_id":"r","reservation_id":"c","{key}":"{id}"}}"#)
                .replacen(&format!(r#""{key}":"#), r#""_was":"#, 1);
            assert_eq!(
                unreadable(body.as_bytes()),
                format!("{key} contains a non-printable character"),
                "{body}"
            );
        }
        let customer =
            reserve_with("").replace(r#""customer_id":"u""#, &format!(r#""customer_id":"{id}""#));
        assert_eq!(
            invalid_detail(customer.as_bytes()),
            "customer_id contains a non-printable character"
        );
        let cancel = format!(
            r#"{{"type":"cancel","command_id":"c","resource_id":"r","reservation_id":"{id}"}}"#
        );
        assert_eq!(
            invalid_detail(cancel.as_bytes()),
            "reservation_id contains a non-printable character"
        );
    }
    // A raw control character inside a string is not JSON at all.
    assert!(
        unreadable(b"{\"command_id\":\"a\x01b\",\"resource_id\":\"r\"}")
            .starts_with("body is not JSON")
    );
}

#[test]
fn ids_may_hold_braces_colons_percent_signs_and_any_printable_unicode() {
    let body = r#"{"type":"reserve","command_id":"{c}:%41","resource_id":"r:{1}%\"\\/","customer_id":"ü:{}%20 😀\u00e9","quantity":1}"#;
    let d = decoded(body);
    assert_eq!(d.command.command_id.as_str(), "{c}:%41");
    assert_eq!(d.command.resource_id.as_str(), r#"r:{1}%"\/"#);
    assert_eq!(
        d.command.action,
        Action::Reserve {
            customer_id: CustomerId::try_from("ü:{}%20 😀é").unwrap(),
            quantity: 1
        }
    );
    let canonical = CommandBody::from_parts(
        &d.command.command_id,
        &d.command.resource_id,
        &d.command.action,
    );
    assert_eq!(&*d.body_hash, sha256_hex(&canonical.to_json()));
}

#[test]
fn escaped_keys_and_type_read_as_their_text() {
    let escaped = decoded(
        r#"{"t\u0079pe":"d\u0065fine","command_id":"c","resource_id":"r","c\u0061pacity":3}"#,
    );
    let plain = decoded(r#"{"type":"define","command_id":"c","resource_id":"r","capacity":3}"#);
    assert_eq!(escaped, plain);
}

// Budgets (contract v2).

/// A `define_budget` for budget `festival-2026` with `fields` spliced in
/// after its ids.
fn define_budget_with(fields: &str) -> String {
    format!(r#"{{"type":"define_budget","command_id":"b-1","budget_id":"festival-2026"{fields}}}"#)
}

fn decoded_budget(body: &str) -> (BudgetCommand, String) {
    match decode_any(body.as_bytes()).expect("readable") {
        Decoded::Budget(command, hash) => (command, hash),
        other => panic!("expected a define_budget, got {other:?}"),
    }
}

#[test]
fn decodes_the_contract_define_budget_example() {
    let body = r#"{"type":"define_budget","command_id":"b-1","budget_id":"festival-2026","per_customer_amount":50000}"#;
    let (command, hash) = decoded_budget(body);
    assert_eq!(
        command,
        BudgetCommand {
            command_id: CommandId::try_from("b-1").unwrap(),
            budget_id: BudgetId::try_from("festival-2026").unwrap(),
            action: Ok(50_000),
        }
    );
    let canonical = CommandBody::DefineBudget {
        command_id: command.command_id.clone(),
        budget_id: command.budget_id.clone(),
        per_customer_amount: 50_000,
    };
    assert_eq!(hash, sha256_hex(&canonical.to_json()));
    assert_eq!(canonical.routing_key(), "festival-2026");
    assert_eq!(
        decoded_budget(&String::from_utf8(canonical.to_json()).unwrap()).1,
        hash
    );
}

#[test]
fn a_budget_cap_is_any_integer_json_carries_exactly() {
    for (amount, expected) in [("0", 0), ("1", 1), ("9007199254740991", MAX_AMOUNT)] {
        let (command, _) = decoded_budget(&define_budget_with(&format!(
            r#","per_customer_amount":{amount}"#
        )));
        assert_eq!(command.action, Ok(expected), "{amount}");
    }
}

#[test]
fn a_define_budget_without_a_valid_cap_is_invalid_and_hashed_raw() {
    let range = "per_customer_amount must be an integer from 0 to 9007199254740991, got";
    for (fields, detail) in [
        (String::new(), "per_customer_amount is required".to_string()),
        (
            r#","per_customer_amount":null"#.into(),
            "per_customer_amount is required".into(),
        ),
        (r#","per_customer_amount":-1"#.into(), format!("{range} -1")),
        (
            r#","per_customer_amount":9007199254740992"#.into(),
            format!("{range} 9007199254740992"),
        ),
        (
            r#","per_customer_amount":18446744073709551616"#.into(),
            format!("{range} 18446744073709551616"),
        ),
        (
            r#","per_customer_amount":1.5"#.into(),
            format!("{range} 1.5"),
        ),
        (
            r#","per_customer_amount":1e3"#.into(),
            format!("{range} 1e3"),
        ),
        (
            r#","per_customer_amount":"5""#.into(),
            format!(r#"{range} "5""#),
        ),
        (
            r#","per_customer_amount":true"#.into(),
            format!("{range} true"),
        ),
        (
            r#","per_customer_amount":1,"per_customer_amount":1"#.into(),
            "duplicate key per_customer_amount".into(),
        ),
    ] {
        let body = define_budget_with(&fields);
        let (command, hash) = decoded_budget(&body);
        assert_eq!(command.action, Err(detail), "{body}");
        assert_eq!(command.budget_id.as_str(), "festival-2026");
        assert_eq!(hash, sha256_hex(body.as_bytes()), "{body}");
    }
}

#[test]
fn a_define_budget_with_a_reserved_id_or_too_big_is_invalid() {
    let (command, _) = decoded_budget(
        r#"{"type":"define_budget","command_id":"expire:h","budget_id":"b","per_customer_amount":1}"#,
    );
    assert!(
        command
            .action
            .unwrap_err()
            .starts_with("command_id may not start with \"expire:\"")
    );
    let body = define_budget_with(&format!(
        r#","per_customer_amount":1,"pad":"{}""#,
        "x".repeat(MAX_BODY_BYTES)
    ));
    let (command, hash) = decoded_budget(&body);
    assert_eq!(
        command.action,
        Err(format!(
            "body is {} bytes; at most 65536 are allowed",
            body.len()
        ))
    );
    assert_eq!(hash, sha256_hex(body.as_bytes()));
}

#[test]
fn a_define_budget_that_cannot_be_tied_to_its_budget_is_unreadable() {
    for (body, why) in [
        (
            r#"{"type":"define_budget","command_id":"b-1","per_customer_amount":5}"#,
            "budget_id is required",
        ),
        (
            r#"{"type":"define_budget","command_id":"b-1","resource_id":"r","per_customer_amount":5}"#,
            "budget_id is required",
        ),
        (
            r#"{"type":"define_budget","command_id":"b-1","budget_id":null,"per_customer_amount":5}"#,
            "budget_id is required",
        ),
        (
            r#"{"type":"define_budget","command_id":"b-1","budget_id":"","per_customer_amount":5}"#,
            "budget_id must not be empty",
        ),
        (
            r#"{"type":"define_budget","command_id":"b-1","budget_id":7,"per_customer_amount":5}"#,
            "budget_id must be a string, got 7",
        ),
        (
            r#"{"type":"define_budget","command_id":"b-1","budget_id":"a","budget_id":"a","per_customer_amount":5}"#,
            "duplicate key budget_id",
        ),
        (
            r#"{"type":"define_budget","budget_id":"b","per_customer_amount":5}"#,
            "command_id is required",
        ),
    ] {
        let err = decode_any(body.as_bytes()).expect_err("unreadable");
        assert_eq!(err.0, why, "{body}");
    }
}

#[test]
fn a_define_budget_hash_ignores_order_whitespace_and_unknown_fields() {
    let (_, a) = decoded_budget(&define_budget_with(r#","per_customer_amount":500"#));
    let (_, b) = decoded_budget(
        r#"{ "per_customer_amount": 500, "note": [1], "budget_id": "festival-2026", "command_id": "b-1", "type": "define_budget" }"#,
    );
    assert_eq!(a, b);
    let (_, c) = decoded_budget(&define_budget_with(r#","per_customer_amount":501"#));
    assert_ne!(a, c);
    let (_, other_budget) = decoded_budget(
        r#"{"type":"define_budget","command_id":"b-1","budget_id":"other","per_customer_amount":500}"#,
    );
    assert_ne!(a, other_budget);
}

#[test]
fn decode_any_decodes_other_commands_as_decode_does() {
    for body in [
        reserve_with(""),
        reserve_with(r#","quantity":2"#),
        r#"{"type":"define","command_id":"c","resource_id":"r","capacity":5,"price":450,"budget_id":"b"}"#
            .into(),
        r#"{"type":"fly","command_id":"c","resource_id":"r"}"#.into(),
    ] {
        assert_eq!(
            decode_any(body.as_bytes()),
            Ok(Decoded::Resource(decoded(&body))),
            "{body}"
        );
    }
    assert_eq!(
        decode_any(br#"{"type":"reserve","command_id":"c"}"#).unwrap_err(),
        decode(br#"{"type":"reserve","command_id":"c"}"#).unwrap_err()
    );
}

/// A define of resource `r` with `fields` spliced in after its capacity.
fn define_with(fields: &str) -> Submission {
    decoded(&format!(
        r#"{{"type":"define","command_id":"c","resource_id":"r","capacity":5{fields}}}"#
    ))
}

fn price_and_budget(d: &Submission) -> (Option<u32>, BudgetChange) {
    match &d.command.action {
        Action::Define { price, budget, .. } => (*price, budget.clone()),
        other => panic!("expected a define, got {other:?}"),
    }
}

#[test]
fn a_define_may_set_a_price_or_keep_it() {
    let absent = define_with("");
    let null = define_with(r#","price":null"#);
    let zero = define_with(r#","price":0"#);
    let set = define_with(r#","price":450"#);
    let max = define_with(r#","price":4294967295"#);
    assert_eq!(price_and_budget(&absent).0, None);
    assert_eq!(
        price_and_budget(&null).0,
        None,
        "null keeps it, as absent does"
    );
    assert_eq!(price_and_budget(&zero).0, Some(0));
    assert_eq!(price_and_budget(&set).0, Some(450));
    assert_eq!(price_and_budget(&max).0, Some(u32::MAX));
    assert_eq!(absent.body_hash, null.body_hash);
    assert_ne!(absent.body_hash, zero.body_hash);
    assert_ne!(zero.body_hash, set.body_hash);
    for price in ["-1", "1.5", "4294967296", r#""450""#, "true"] {
        assert_eq!(
            invalid_detail(
                format!(
                    r#"{{"type":"define","command_id":"c","resource_id":"r","capacity":5,"price":{price}}}"#
                )
                .as_bytes()
            ),
            format!("price must be an integer from 0 to 4294967295, got {price}")
        );
    }
}

#[test]
fn an_absent_budget_keeps_a_null_one_detaches_and_they_hash_apart() {
    let absent = define_with("");
    let null = define_with(r#","budget_id":null"#);
    let named = define_with(r#","budget_id":"festival-2026""#);
    assert_eq!(price_and_budget(&absent).1, BudgetChange::Keep);
    assert_eq!(price_and_budget(&null).1, BudgetChange::Detach);
    assert_eq!(
        price_and_budget(&named).1,
        BudgetChange::Attach(BudgetId::try_from("festival-2026").unwrap())
    );
    assert_ne!(absent.body_hash, null.body_hash);
    assert_ne!(null.body_hash, named.body_hash);
    assert_ne!(absent.body_hash, named.body_hash);
    for (budget, detail) in [
        (r#""""#, "budget_id must not be empty"),
        ("7", "budget_id must be a string, got 7"),
        (r#""a\nb""#, "budget_id contains a non-printable character"),
    ] {
        let body = format!(
            r#"{{"type":"define","command_id":"c","resource_id":"r","capacity":5,"budget_id":{budget}}}"#
        );
        assert_eq!(invalid_detail(body.as_bytes()), detail, "{body}");
    }
}

#[test]
fn a_priced_define_round_trips_and_hashes_its_canonical_body() {
    let contract = define_with(r#","price":4500,"budget_id":"festival-2026""#);
    let reordered = decoded(
        r#"{"budget_id":"festival-2026","capacity":5,"price":4500,"resource_id":"r","command_id":"c","type":"define","x":1}"#,
    );
    assert_eq!(contract, reordered);
    for d in [
        contract,
        define_with(r#","budget_id":null"#),
        define_with(r#","price":0,"budget_id":"b""#),
        define_with(""),
    ] {
        let canonical = CommandBody::from_parts(
            &d.command.command_id,
            &d.command.resource_id,
            &d.command.action,
        );
        assert_eq!(&*d.body_hash, sha256_hex(&canonical.to_json()));
        assert_eq!(decode(&canonical.to_json()).unwrap(), d, "round trip");
    }
}
