//! JSON Schemas (draft 2020-12) of the wire formats, generated from the Rust
//! types that read and write them, so the two cannot drift apart.
//!
//! `schema/command.schema.json` and `schema/event.schema.json` are the output
//! of [`command_schema`] and [`event_schema`], committed for producers and
//! event consumers in other languages. A unit test fails when they are stale;
//! `UPDATE_SCHEMAS=1 cargo test --lib schema` rewrites them.

use crate::message::{BudgetEnvelope, CommandBody, EventEnvelope};
use serde_json::Value;

/// Either kind of event body: a resource's, or a budget's (`define_budget`).
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum AnyEvent {
    /// The outcome of a command against a resource, or of a hold's expiry.
    Resource(EventEnvelope),
    /// The outcome of a `define_budget`.
    Budget(BudgetEnvelope),
}

/// The schema of a valid command body (`define`, `reserve`, `cancel`,
/// `hold`, `confirm` or `define_budget`).
///
/// The worker also answers bodies that break it, as the contract says: those
/// with readable `command_id` and `resource_id` are rejected as `invalid`, the
/// rest are dead-lettered. Unknown fields are allowed and ignored.
pub fn command_schema() -> Value {
    titled(
        schemars::schema_for!(CommandBody).to_value(),
        "reservation-worker command (v2)",
        "A command body published to the commands exchange, routing key = \
         resource_id (budget_id for define_budget). Bodies are at most 64 KiB; \
         unknown fields are ignored.",
    )
}

/// The schema of an outcome event body, as the worker publishes it.
pub fn event_schema() -> Value {
    titled(
        schemars::schema_for!(AnyEvent).to_value(),
        "reservation-worker event (v2)",
        "The one outcome event of a command, published to the events exchange \
         with routing key <command>.<outcome>.",
    )
}

/// A schema as committed: pretty-printed, with a trailing newline.
pub fn to_file_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a JSON value");
    text.push('\n');
    text
}

fn titled(mut schema: Value, title: &str, description: &str) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), title.into());
        object.insert("description".into(), description.into());
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{State, apply, decide};
    use crate::message::{OutgoingEvent, decode};
    use std::path::PathBuf;

    fn committed(file: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("schema")
            .join(file)
    }

    #[test]
    fn committed_schemas_match_the_types() {
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v == "1");
        for (file, schema) in [
            ("command.schema.json", command_schema()),
            ("event.schema.json", event_schema()),
        ] {
            let path = committed(file);
            if update {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, to_file_text(&schema)).unwrap();
                continue;
            }
            // Compared as JSON values, so a serde_json feature that changes key
            // order does not make the files look stale.
            let on_disk: Option<Value> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|text| serde_json::from_str(&text).ok());
            assert!(
                on_disk.as_ref() == Some(&schema),
                "{} is missing or differs from the schema generated from the Rust types; \
                 regenerate it with `UPDATE_SCHEMAS=1 cargo test --lib schema` and commit it",
                path.display()
            );
        }
    }

    fn validator(schema: &Value) -> jsonschema::Validator {
        jsonschema::options()
            .should_validate_formats(true)
            .build(schema)
            .expect("a valid schema")
    }

    fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
        v.iter_errors(instance).map(|e| e.to_string()).collect()
    }

    /// The JSON values in the fenced `json` blocks of docs/contract.md.
    fn contract_examples() -> Vec<Value> {
        let doc = include_str!("../docs/contract.md");
        let mut values = Vec::new();
        for block in doc.split("```json\n").skip(1) {
            let block = block.split("```").next().unwrap();
            for value in serde_json::Deserializer::from_str(block).into_iter::<Value>() {
                values.push(value.expect("contract examples are JSON"));
            }
        }
        values
    }

    #[test]
    fn contract_command_examples_validate() {
        let v = validator(&command_schema());
        let commands: Vec<Value> = contract_examples()
            .into_iter()
            .filter(|e| e.get("type").is_some())
            .collect();
        assert_eq!(
            commands.len(),
            7,
            "define, reserve, cancel, hold, confirm, define_budget, a priced define"
        );
        for command in &commands {
            assert_eq!(errors(&v, command), Vec::<String>::new(), "{command}");
        }
    }

    #[test]
    fn contract_event_examples_validate() {
        // The examples elide ids and times ("6f1c...", "..."), so formats
        // are not checked here; real events are, below.
        let v = jsonschema::validator_for(&event_schema()).unwrap();
        let events: Vec<Value> = contract_examples()
            .into_iter()
            .filter(|e| e.get("event_id").is_some())
            .collect();
        assert_eq!(
            events.len(),
            6,
            "accepted, rejected, expiry, define_budget, a paid take, budget_exceeded"
        );
        for event in &events {
            assert_eq!(errors(&v, event), Vec::<String>::new(), "{event}");
        }
    }

    #[test]
    fn events_the_worker_publishes_validate() {
        let v = validator(&event_schema());
        let bodies = [
            r#"{"type":"define","command_id":"c-1","resource_id":"r","capacity":10,"per_customer_limit":4}"#,
            r#"{"type":"reserve","command_id":"c-2","resource_id":"r","customer_id":"u","quantity":2}"#,
            r#"{"type":"cancel","command_id":"c-3","resource_id":"r","reservation_id":"c-2"}"#,
            r#"{"type":"fly","command_id":"c-4","resource_id":"r"}"#,
            r#"{"type":"hold","command_id":"h-1","resource_id":"r","customer_id":"u","quantity":2,"hold_secs":60}"#,
            r#"{"type":"hold","command_id":"h-2","resource_id":"r","customer_id":"u","quantity":1,"hold_secs":1}"#,
            r#"{"type":"confirm","command_id":"k-1","resource_id":"r","hold_id":"h-1"}"#,
            r#"{"type":"confirm","command_id":"k-2","resource_id":"r","hold_id":"nope"}"#,
        ];
        let now = 1_700_000_000_000;
        let mut state = State::default();
        let mut events = Vec::new();
        for body in bodies {
            let command = decode(body.as_bytes()).unwrap().command;
            let event = decide(&state, &command, now);
            state = apply(state, &event);
            events.push(event);
        }
        let r = crate::domain::ResourceId::try_from("r").unwrap();
        let hold = crate::domain::CommandId::try_from("h-2").unwrap();
        events.push(crate::domain::expire(&state, &r, &hold, now + 1_000).unwrap());
        for event in events {
            let out =
                OutgoingEvent::new(event, uuid::Uuid::new_v4(), time::OffsetDateTime::now_utc());
            let json: Value = serde_json::from_slice(&out.body).unwrap();
            assert_eq!(errors(&v, &json), Vec::<String>::new(), "{json}");
        }
        // A rejection too: the resource "other" was never defined.
        let command = decode(
            br#"{"type":"reserve","command_id":"c-5","resource_id":"other","customer_id":"u","quantity":1}"#,
        )
        .unwrap()
        .command;
        let out = OutgoingEvent::new(
            decide(&State::default(), &command, 0),
            uuid::Uuid::new_v4(),
            time::OffsetDateTime::now_utc(),
        );
        let json: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(json["outcome"], "rejected");
        assert_eq!(errors(&v, &json), Vec::<String>::new(), "{json}");
    }

    #[test]
    fn command_schema_rejects_what_the_decoder_rejects() {
        let v = validator(&command_schema());
        let long = "x".repeat(129);
        for bad in [
            serde_json::json!({"type":"reserve","command_id":"","resource_id":"r","customer_id":"u","quantity":1}),
            serde_json::json!({"type":"reserve","command_id":long,"resource_id":"r","customer_id":"u","quantity":1}),
            serde_json::json!({"type":"reserve","command_id":"a\nb","resource_id":"r","customer_id":"u","quantity":1}),
            serde_json::json!({"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u","quantity":0}),
            serde_json::json!({"type":"reserve","command_id":"c","resource_id":"r","customer_id":"u"}),
            serde_json::json!({"type":"define","command_id":"c","resource_id":"r","capacity":5,"per_customer_limit":0}),
            serde_json::json!({"type":"fly","command_id":"c","resource_id":"r"}),
            serde_json::json!({"command_id":"c","resource_id":"r"}),
        ] {
            assert!(!v.is_valid(&bad), "{bad} should not validate");
        }
        // Ids: 128 characters, any printable ones, are fine.
        let ok = serde_json::json!({
            "type": "cancel", "command_id": "é".repeat(128),
            "resource_id": "concert 42 / row A", "reservation_id": "c-2", "note": "ignored"
        });
        assert_eq!(errors(&v, &ok), Vec::<String>::new());
        let id_schema = &command_schema()["$defs"]["CommandId"];
        assert_eq!(id_schema["minLength"], 1);
        assert_eq!(id_schema["maxLength"], 128);
        // All three id types have the same shape.
        for id in ["CommandId", "ResourceId", "CustomerId"] {
            assert_eq!(&command_schema()["$defs"][id], id_schema, "{id}");
        }
    }
}
