//! Partitioned mode: commands routed by resource to queues with a single
//! active consumer each.

use crate::helpers::*;
use futures_util::StreamExt;
use reservation_worker::domain::{Reason, Verdict};

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
    // Spread: each partition consumed by exactly one replica, each
    // replica consuming one of the three.
    let owners = eventually("one consumer per partition, on three replicas", || async {
        let mut owners = std::collections::BTreeSet::new();
        for q in &partitions {
            match consumers_of(q).as_slice() {
                [(tag, true)] => owners.insert(tag.split('@').next()?.to_string()),
                _ => return None,
            };
        }
        (owners.len() == 3).then_some(owners)
    })
    .await;
    assert_eq!(owners.len(), 3);
    for q in &partitions {
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

/// Each partition's one consumer, as replica names, once every partition
/// has exactly one consumer and it is active; `None` before.
fn owners(partitions: &[String]) -> Option<Vec<String>> {
    partitions
        .iter()
        .map(|q| match consumers_of(q).as_slice() {
            [(tag, true)] => tag.split('@').next().map(str::to_string),
            _ => None,
        })
        .collect()
}

/// How many partitions each of `names` is the one consumer of.
fn shares(owners: &[String], names: &[&str]) -> Vec<usize> {
    names
        .iter()
        .map(|n| owners.iter().filter(|o| o == n).count())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_spread_over_the_replicas_and_follow_them_as_they_come_and_go() {
    use crate::process::WorkerProcess;
    use std::time::Instant;
    let app = TestApp::with(|s| s.amqp.partitions = 4).await;
    let partitions = reservation_worker::admin::partition_queues(&app.settings.amqp);
    let (a, b) = (format!("{}-a", app.prefix()), format!("{}-b", app.prefix()));
    let spread = |names: Vec<&str>, want: Vec<usize>| {
        let partitions = partitions.clone();
        let names: Vec<String> = names.into_iter().map(str::to_string).collect();
        async move {
            let started = Instant::now();
            eventually(&format!("partitions shared {want:?}"), || async {
                let owners = owners(&partitions)?;
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                (shares(&owners, &names) == want).then_some(())
            })
            .await;
            started.elapsed()
        }
    };

    let mut first = WorkerProcess::spawn(&app.settings, &a);
    let alone = spread(vec![&a], vec![4]).await;
    let mut second = WorkerProcess::spawn(&app.settings, &b);
    let joined = spread(vec![&a, &b], vec![2, 2]).await;
    // Scaled down: SIGTERM, the drain, the leases given back.
    assert!(second.terminate().await.success());
    let left = spread(vec![&a], vec![4]).await;
    // A replica that dies: its heartbeat and leases run out.
    let mut third = WorkerProcess::spawn(&app.settings, &b);
    spread(vec![&a, &b], vec![2, 2]).await;
    first.kill();
    let died = spread(vec![&b], vec![4]).await;
    eprintln!(
        "handover times: first replica {alone:?}, second joins {joined:?}, \
         leaves on SIGTERM {left:?}, first SIGKILLed {died:?}"
    );
    // Every command still decided once, by whichever replica owns it now.
    app.send(&define("d", "after", 5, None)).await;
    app.outcome("d").await;
    assert!(third.terminate().await.success());
    app.cleanup().await;
}

/// What `reservation-worker status --json` prints for `app`.
fn status_json(app: &TestApp) -> serde_json::Value {
    let out = crate::budgets::cli(&app.settings, &["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
}

/// `status` counts the commands waiting in every partition and in the
/// command queue (which workers still drain in partitioned mode), as the
/// autoscaler's trigger does, and shows who consumes each partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_the_command_queue_and_every_partition() {
    use lapin::BasicProperties;
    use lapin::options::BasicPublishOptions;
    let mut app = TestApp::with(|s| s.amqp.partitions = 3).await;
    let partitions = reservation_worker::admin::partition_queues(&app.settings.amqp);
    for i in 0..30 {
        app.send(&define(&format!("d{i}"), &format!("show-{i}"), 1, None))
            .await;
    }
    // One left in the command queue from before partitions were switched on.
    let channel = app.connection.create_channel().await.unwrap();
    let body = define("before", "show-before", 1, None).to_json();
    channel
        .basic_publish(
            "".into(),
            app.settings.amqp.commands_queue.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            BasicProperties::default(),
        )
        .await
        .unwrap();
    let _ = channel.close(200, "".into()).await;

    // No worker yet: everything waits.
    let waiting = eventually("31 commands waiting", || async {
        let s = status_json(&app);
        (s["ready_total"] == 31).then_some(s)
    })
    .await;
    assert_eq!(waiting["commands"]["ready"], 1, "{waiting}");
    let shown: Vec<&str> = waiting["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["queue"].as_str().unwrap())
        .collect();
    assert_eq!(shown, partitions, "{waiting}");
    let in_partitions: u64 = waiting["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["ready"].as_u64().unwrap())
        .sum();
    assert_eq!(in_partitions, 30, "routed to the partitions: {waiting}");
    let text = crate::budgets::cli(&app.settings, &["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("commands total") && l.ends_with(" 31")),
        "{text}"
    );
    assert!(
        text.contains(&format!("note: no worker consumes {};", partitions[0])),
        "{text}"
    );

    // One worker: it drains them all and consumes every partition.
    app.start_worker();
    app.wait_for_events(31).await;
    let consumed = eventually("every queue drained, one consumer each", || async {
        let s = status_json(&app);
        let one_each = std::iter::once(&s["commands"])
            .chain(s["partitions"].as_array()?)
            .all(|q| q["consumers"] == 1);
        (s["ready_total"] == 0 && one_each).then_some(s)
    })
    .await;
    assert_eq!(consumed["partitions"].as_array().unwrap().len(), 3);
    app.cleanup().await;
}
