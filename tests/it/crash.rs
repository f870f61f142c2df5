//! A worker that dies between commit and ack.

use crate::helpers::*;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use reservation_worker::message;

/// Simulates the crash by doing a worker's first half by hand (consume,
/// decode, commit in Redis) and then closing the channel without acking or
/// publishing. The real worker then gets the redelivery.
#[tokio::test]
async fn a_worker_killed_between_commit_and_ack_causes_no_double_booking() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d", "venue", 10, None)).await;
    app.outcome("d").await;
    app.stop_workers().await;

    app.send(&reserve("r1", "venue", "alice", 4)).await;
    let channel = app.connection.create_channel().await.unwrap();
    channel
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            app.settings.amqp.commands_queue.as_str().into(),
            "doomed".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = consumer.next().await.unwrap().unwrap();
    let decoded = message::decode(&delivery.data).unwrap();
    let outcomes = app
        .commit(&decoded.command.resource_id, std::slice::from_ref(&decoded))
        .await;
    let committed = outcomes[0].event().clone();
    // The "crash": the channel goes away with the delivery unacked.
    channel.close(200, "crash".into()).await.unwrap();
    drop(consumer);

    app.start_worker();
    let e = app.outcome("r1").await;
    assert_eq!(
        e.event_id, committed.event_id,
        "the committed outcome is re-published"
    );
    let raw = app
        .raw_events()
        .into_iter()
        .find(|b| String::from_utf8_lossy(b).contains("\"r1\""))
        .unwrap();
    assert_eq!(raw, committed.body, "byte for byte");
    let s = app.store.summary(&rid("venue")).await.unwrap().unwrap();
    assert_eq!((s.reserved, s.version), (4, 2), "booked once");
    // Stopping the worker returns anything unacked to the queue.
    app.stop_workers().await;
    assert_eq!(app.commands_pending().await, 0, "the command was acked");
    app.cleanup().await;
}
