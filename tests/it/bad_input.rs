//! Every class of bad input reaches its contract outcome, and the worker
//! keeps consuming.

use crate::helpers::*;
use reservation_worker::domain::{Reason, Verdict};

/// Bodies that cannot be tied to a command: dead-lettered with `x-error`.
#[tokio::test]
async fn unreadable_bodies_go_to_the_dead_letter_queue_with_x_error() {
    let mut app = TestApp::new().await;
    app.start_worker();
    let long_id = "x".repeat(129);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"this is not json".to_vec(), "not JSON"),
        (b"\xff\xfe\xfd invalid utf-8".to_vec(), "UTF-8"),
        (br#"["an","array"]"#.to_vec(), "not a JSON object"),
        (
            br#"{"type":"reserve","resource_id":"r","customer_id":"u","quantity":1}"#.to_vec(),
            "command_id is required",
        ),
        (
            br#"{"type":"reserve","command_id":"c","customer_id":"u","quantity":1}"#.to_vec(),
            "resource_id is required",
        ),
        (
            format!(r#"{{"type":"reserve","command_id":"{long_id}","resource_id":"r"}}"#)
                .into_bytes(),
            "at most 128",
        ),
        (
            format!(r#"{{"type":"reserve","command_id":"c","resource_id":"{long_id}"}}"#)
                .into_bytes(),
            "at most 128",
        ),
    ];
    for (body, _) in &cases {
        app.send_raw(body).await;
    }
    let dead = app.dead_letters(cases.len()).await;
    for (body, why) in &cases {
        let m = dead
            .iter()
            .find(|m| &m.delivery.data == body)
            .unwrap_or_else(|| panic!("{why} was dead-lettered"));
        let error =
            header_text(m.delivery.properties.headers(), "x-error").expect("x-error header");
        assert!(error.contains(why), "x-error {error:?} mentions {why}");
    }
    assert!(app.events().is_empty(), "no event for unreadable bodies");

    // The worker is still consuming.
    app.send(&define("d", "after", 1, None)).await;
    assert!(app.outcome("d").await.event.is_accepted());
    assert_eq!(app.commands_pending().await, 0);
    app.cleanup().await;
}

/// Readable ids, invalid rest: a `rejected` event with reason `invalid`.
#[tokio::test]
async fn invalid_commands_are_rejected_with_reason_invalid() {
    let mut app = TestApp::new().await;
    app.start_worker();
    let long_id = "y".repeat(129);
    let pad = "p".repeat(1024 * 1024);
    let cases: Vec<(&str, String, &str)> = vec![
        ("wrong-shape", r#"{"type":"reserve","command_id":"wrong-shape","resource_id":"r","customer_id":["u"],"quantity":{"n":1}}"#.into(), "customer_id must be a string"),
        ("unknown-type", r#"{"type":"teleport","command_id":"unknown-type","resource_id":"r"}"#.into(), "not one of"),
        ("no-type", r#"{"command_id":"no-type","resource_id":"r"}"#.into(), "type is required"),
        ("no-quantity", r#"{"type":"reserve","command_id":"no-quantity","resource_id":"r","customer_id":"u"}"#.into(), "quantity is required"),
        ("no-capacity", r#"{"type":"define","command_id":"no-capacity","resource_id":"r"}"#.into(), "capacity is required"),
        ("no-reservation", r#"{"type":"cancel","command_id":"no-reservation","resource_id":"r"}"#.into(), "reservation_id is required"),
        ("q-zero", r#"{"type":"reserve","command_id":"q-zero","resource_id":"r","customer_id":"u","quantity":0}"#.into(), "quantity must be"),
        ("q-negative", r#"{"type":"reserve","command_id":"q-negative","resource_id":"r","customer_id":"u","quantity":-3}"#.into(), "quantity must be"),
        ("q-fraction", r#"{"type":"reserve","command_id":"q-fraction","resource_id":"r","customer_id":"u","quantity":1.5}"#.into(), "quantity must be"),
        ("q-string", r#"{"type":"reserve","command_id":"q-string","resource_id":"r","customer_id":"u","quantity":"2"}"#.into(), "quantity must be"),
        ("q-huge", r#"{"type":"reserve","command_id":"q-huge","resource_id":"r","customer_id":"u","quantity":1e300}"#.into(), "quantity must be"),
        ("q-u64", r#"{"type":"reserve","command_id":"q-u64","resource_id":"r","customer_id":"u","quantity":18446744073709551616}"#.into(), "quantity must be"),
        ("customer-long", format!(r#"{{"type":"reserve","command_id":"customer-long","resource_id":"r","customer_id":"{long_id}","quantity":1}}"#), "at most 128"),
        ("one-mebibyte", format!(r#"{{"type":"reserve","command_id":"one-mebibyte","resource_id":"r","customer_id":"u","quantity":1,"pad":"{pad}"}}"#), "at most 65536"),
    ];
    for (_, body, _) in &cases {
        app.send_raw(body.as_bytes()).await;
    }
    for (id, _, why) in &cases {
        let e = app.outcome(id).await;
        match &e.event.verdict {
            Verdict::Rejected {
                reason: Reason::Invalid,
                detail,
            } => {
                assert!(detail.contains(why), "{id}: {detail:?} mentions {why}");
                assert!(detail.len() < 300, "{id}: detail stays short");
            }
            other => panic!("{id}: expected invalid, got {other:?}"),
        }
    }
    // Redelivery of an invalid command repeats its event.
    app.send_raw(cases[6].1.as_bytes()).await;
    let repeated = eventually("a second q-zero event", || async {
        let e = app.events_for("q-zero");
        (e.len() == 2).then_some(e)
    })
    .await;
    assert_eq!(repeated[0], repeated[1]);

    app.send(&define("d", "after", 1, None)).await;
    assert!(
        app.outcome("d").await.event.is_accepted(),
        "the worker keeps consuming"
    );
    assert_eq!(app.commands_pending().await, 0);
    assert!(!app.worker_finished(0));
    app.cleanup().await;
}

/// A producer's own `x-delivery-count` header is not the broker's: on a
/// first delivery it is ignored, and a huge one overflows nothing. Commands
/// on a resource whose stored state cannot be read fail every delivery and
/// are dead-lettered at the queue's real count, with the error.
#[tokio::test]
async fn a_forged_delivery_count_is_not_trusted() {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable};
    let mut app = TestApp::with(|s| s.amqp.delivery_limit = 3).await;
    app.start_worker();
    let state = app.store.keys().state(&rid("broken"));
    let client = redis::Client::open(app.settings.redis.url.expose()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&state)
        .arg("not json")
        .query_async(&mut redis)
        .await
        .unwrap();
    let channel = app.connection.create_channel().await.unwrap();
    let forged = [
        ("forged-19", AMQPValue::LongLongInt(19)),
        ("forged-huge", AMQPValue::LongLongInt(i64::MAX)),
        ("forged-u32", AMQPValue::LongUInt(u32::MAX)),
    ];
    for (id, count) in &forged {
        let mut headers = FieldTable::default();
        headers.insert("x-delivery-count".into(), count.clone());
        let body = reserve(id, "broken", "u", 1).to_json();
        channel
            .basic_publish(
                app.settings.amqp.commands_exchange.as_str().into(),
                "broken".into(),
                BasicPublishOptions::default(),
                &body,
                lapin::BasicProperties::default().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let dead = app.dead_letters(forged.len()).await;
    for m in &dead {
        let error = header_text(m.delivery.properties.headers(), "x-error").unwrap();
        assert!(
            error.starts_with("failed 3 deliveries") && error.contains(&state),
            "counted by the queue, not the producer: {error:?}"
        );
    }
    app.send(&define("d", "after", 1, None)).await;
    assert!(
        app.outcome("d").await.event.is_accepted(),
        "still consuming"
    );
    assert!(!app.worker_finished(0));
    app.cleanup().await;
}

/// A setting out of its range stops the binary before it connects, with
/// exit code 2 and a message that names the key, its variable and the
/// allowed range.
#[test]
fn an_invalid_setting_is_refused_with_its_key_and_range() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reservation-worker"))
        .args(["run", "--name", "invalid"])
        .env("RW_AMQP__PREFETCH", "0")
        .env("RW_REDIS__IDEMPOTENCY_RETENTION_SECS", "0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "amqp.prefetch (RW_AMQP__PREFETCH) is 0; it must be from 1 to 65535",
        "redis.idempotency_retention_secs (RW_REDIS__IDEMPOTENCY_RETENTION_SECS) is 0",
    ] {
        assert!(stderr.contains(expected), "{stderr}");
    }
}
