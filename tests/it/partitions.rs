//! Partitioned mode: commands routed by resource to queues with a single
//! active consumer each.

use crate::helpers::*;
use futures_util::StreamExt;
use reservation_worker::domain::{Reason, Verdict};

/// (registered, active) consumers of a queue, from the broker.
fn consumers(queue: &str) -> (usize, usize) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_consumers", "queue_name", "active"])
        .output()
        .expect("rabbitmqctl runs (partition tests need a local broker)");
    let text = String::from_utf8_lossy(&out.stdout);
    let mine: Vec<&str> = text
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(queue))
        .collect();
    (
        mine.len(),
        mine.iter().filter(|l| l.ends_with("true")).count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partitioned_replicas_share_resources_without_overselling() {
    let mut app = TestApp::with(|s| s.amqp.partitions = 3).await;
    for _ in 0..3 {
        app.start_worker();
    }
    let resources: Vec<String> = (0..6).map(|i| format!("show-{i}")).collect();
    for r in &resources {
        app.send(&define(&format!("d-{r}"), r, 20, None)).await;
    }
    let bodies: Vec<_> = (0..300)
        .map(|i| {
            let r = &resources[i % resources.len()];
            reserve(&format!("r{i}"), r, &format!("u{i}"), 1)
        })
        .collect();
    futures_util::stream::iter(&bodies)
        .for_each_concurrent(64, |b| app.send(b))
        .await;
    app.wait_for_events(resources.len() + bodies.len()).await;

    for r in &resources {
        let events: Vec<_> = app
            .events()
            .into_iter()
            .filter(|e| e.event.resource_id.as_str() == r)
            .collect();
        let accepted = events.iter().filter(|e| e.event.is_accepted()).count();
        let sold_out = events
            .iter()
            .filter(|e| {
                matches!(
                    e.event.verdict,
                    Verdict::Rejected {
                        reason: Reason::SoldOut,
                        ..
                    }
                )
            })
            .count();
        assert_eq!(
            (accepted, sold_out),
            (21, 30),
            "{r}: the define, 20 seats, 30 sold out"
        );
        let s = app.store.summary(&rid(r)).await.unwrap().unwrap();
        assert_eq!(s.reserved, 20);
    }

    let partitions = reservation_worker::admin::partition_queues(&app.settings.amqp);
    assert_eq!(partitions.len(), 3);
    for q in &partitions {
        assert_eq!(
            consumers(q),
            (3, 1),
            "{q}: every replica subscribed, exactly one active"
        );
        assert_eq!(app.ready_in(q).await, 0, "{q} drained");
    }
    assert_eq!(
        app.commands_pending().await,
        0,
        "the unbound command queue stays empty"
    );

    // cleanup removes the partition queues and exchange too.
    app.cleanup().await;
}
