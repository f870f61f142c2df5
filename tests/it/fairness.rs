//! First come, first served. In partitioned mode one replica at a time is
//! the active consumer of a partition, so each resource's commands are
//! decided in queue order, through replicas killed and restarted while a
//! backlog drains: no accepted command was published after a refused one
//! that asked for no more. The default topology lets the replicas'
//! prefetch windows decide out of order: the same run reports its figure.

use crate::fairness_measure::{self, Unfairness, Verdict};
use crate::helpers::*;
use crate::process::WorkerProcess;
use rand::{Rng, SeedableRng};
use reservation_worker::message::CommandBody;
use std::collections::{HashMap, HashSet};

/// Preloads a backlog of reserves on one resource, drains it with three
/// replica processes, one killed early and one killed later while a new one
/// takes over, and measures the decisions' order.
async fn drain_with_failover(partitions: u16) -> Unfairness {
    let app = TestApp::with(|s| s.amqp.partitions = partitions).await;
    app.send(&define("d", "arena", 600, None)).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let bodies: Vec<CommandBody> = (0..1200)
        .map(|i| {
            let customer = format!("fan-{}", rng.random_range(0..400));
            reserve(
                &format!("r{i:04}"),
                "arena",
                &customer,
                rng.random_range(1..=3),
            )
        })
        .collect();
    // One by one, each confirmed before the next: the queue's order is
    // the list's.
    for body in &bodies {
        app.send(body).await;
    }
    // The queue holding the backlog: the partition of "arena", or the
    // one command queue.
    let mut queue = app.settings.amqp.commands_queue.clone();
    for q in reservation_worker::admin::partition_queues(&app.settings.amqp) {
        if app.ready_in(&q).await > 0 {
            queue = q;
        }
    }
    let name = |i: usize| format!("{}-fair-{i}", app.prefix());
    let mut replicas: Vec<WorkerProcess> = (0..3)
        .map(|i| WorkerProcess::spawn(&app.settings, &name(i)))
        .collect();
    // Which replica to kill: in partitioned mode the one deciding "arena"
    // (the active consumer of its partition), so that each kill is a
    // failover; otherwise any.
    let deciding = |fallback: usize| {
        let queue = queue.clone();
        let names: Vec<String> = (0..6).map(name).collect();
        let tag = active_consumer(&queue);
        tag.and_then(|t| names.iter().position(|n| t == format!("{n}@{queue}")))
            .unwrap_or(fallback)
    };
    let answered = |n: usize| {
        let app = &app;
        async move {
            eventually(&format!("{n} commands answered"), || async {
                let ids: HashSet<String> = app
                    .events()
                    .into_iter()
                    .map(|e| e.event.command_id.to_string())
                    .collect();
                (ids.len() >= n).then_some(())
            })
            .await
        }
    };
    answered(300).await;
    let first = deciding(0);
    replicas[first].kill();
    answered(700).await;
    replicas.push(WorkerProcess::spawn(&app.settings, &name(3)));
    let second = deciding((first + 1) % 3);
    replicas[second].kill();
    answered(bodies.len() + 1).await;

    let mut first: HashMap<String, Verdict> = HashMap::new();
    for e in app.events() {
        first
            .entry(e.event.command_id.to_string())
            .or_insert(Verdict::of(&e.event.verdict));
    }
    let unfairness = fairness_measure::of_reserves(&bodies, |id| first.get(id.as_str()).copied());
    let summary = app.store.summary(&rid("arena")).await.unwrap().unwrap();
    assert_eq!(
        summary.reserved, summary.capacity,
        "sold out, never oversold"
    );
    for mut replica in replicas {
        if replica.is_running() {
            assert!(replica.terminate().await.success());
        }
    }
    app.cleanup().await;
    unfairness
}

/// The consumer tag of `queue`'s active consumer, if any.
fn active_consumer(queue: &str) -> Option<String> {
    consumers_of(queue)
        .into_iter()
        .find_map(|(tag, active)| active.then_some(tag))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_mode_decides_each_resource_in_queue_order_through_failovers() {
    let u = drain_with_failover(4).await;
    assert!(u.accepted > 200, "{u:?}");
    assert_eq!(u.inversions, 0, "partitioned: {}", u.describe());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_topology_reports_its_unfairness() {
    let u = drain_with_failover(0).await;
    assert!(u.accepted > 200, "{u:?}");
    // A figure, not a failure: replicas' prefetch windows race.
    eprintln!("default topology, 3 replicas: unfair {}", u.describe());
}
