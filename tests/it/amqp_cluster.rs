//! `AMQP_URL` listing the nodes of a RabbitMQ cluster, against the one
//! shared broker: nodes that are dead from the start are skipped, a list of
//! only dead nodes fails naming each (passwords hidden), and a worker whose
//! node dies mid-traffic carries on through the next node, trying the dead
//! one last, without losing a command. Nodes are [`Proxy`]s in front of the
//! broker (which also check that no delivery is acked before its outcome
//! is confirmed) or ports nothing listens on.
//!
//! And the quorum queues' balanced leader placement: declared with it, or,
//! for queues an older version declared without it (which the broker
//! refuses to redeclare with it), kept as they are, with advice.

use crate::helpers::*;
use crate::process::WorkerProcess;
use crate::proxy::Proxy;
use futures_util::future::join_all;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use reservation_worker::admin::Store;
use reservation_worker::admin::{self, ConnectError};
use reservation_worker::config::{SecretUrl, Settings};
use reservation_worker::message::CommandBody;
use reservation_worker::producer::{Events, Producer};
use reservation_worker::startup::{self, Application};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// `url` with its host and port replaced by `authority` (`host:port`).
fn at(url: &SecretUrl, authority: &str) -> SecretUrl {
    let url = url.expose();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (old, path) = rest.split_at(end);
    let userinfo = old
        .rsplit_once('@')
        .map(|(u, _)| format!("{u}@"))
        .unwrap_or_default();
    SecretUrl::new(format!("{scheme}://{userinfo}{authority}{path}"))
}

/// A local port nothing listens on: bound, then let go.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A list of `nodes`, comma-separated.
fn list(nodes: &[SecretUrl]) -> SecretUrl {
    let urls: Vec<&str> = nodes.iter().map(SecretUrl::expose).collect();
    SecretUrl::new(urls.join(","))
}

/// A worker name (under the test's prefix) whose first connection tries
/// `first` before the other nodes of `url`.
fn name_starting_at(app: &TestApp, url: &SecretUrl, first: &SecretUrl) -> String {
    (0..1000)
        .map(|i| format!("{}-w{i}", app.prefix()))
        .find(|name| admin::node_order(url, name)[0] == *first)
        .expect("some name starts at each node")
}

/// Waits until `worker`'s log contains `text`; returns the log.
async fn logged(worker: &mut WorkerProcess, text: &str) -> String {
    let log = worker.log().clone();
    eventually(&format!("{} to log {text:?}", worker.name()), || {
        worker.assert_running();
        let found = std::fs::read_to_string(&log).unwrap_or_default();
        async move { found.contains(text).then_some(found) }
    })
    .await
}

/// Sends `bodies` and waits for an outcome of each; the accepted ones.
async fn decide_all(app: &TestApp, bodies: &[CommandBody]) -> usize {
    join_all(bodies.iter().map(|b| app.send(b))).await;
    let mut accepted = 0;
    for b in bodies {
        accepted += usize::from(
            app.outcome(b.command_id().as_str())
                .await
                .event
                .is_accepted(),
        );
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_node_is_skipped_and_the_worker_decides_through_the_next() {
    let mut app = TestApp::new().await;
    let live = app.settings.amqp.url.clone();
    let dead = at(&live, &format!("127.0.0.1:{}", closed_port()));
    let url = list(&[dead.clone(), live.clone()]);
    let name = name_starting_at(&app, &url, &dead);
    let mut s = app.settings.clone();
    s.amqp.url = url;
    let mut worker = WorkerProcess::spawn(&s, &name);

    let log = logged(&mut worker, "consuming").await;
    assert!(
        log.contains("a broker node did not accept the connection")
            && log.contains(&dead.redacted()),
        "the dead node was tried first, and skipped: {}",
        worker.log().display()
    );
    app.send(&define("d", "hall", 3, None)).await;
    let reserves: Vec<CommandBody> = (0..5)
        .map(|i| reserve(&format!("r{i}"), "hall", &format!("u{i}"), 1))
        .collect();
    assert_eq!(decide_all(&app, &reserves).await, 3, "3 seats, 5 asking");
    let summary = app.store.summary(&rid("hall")).await.unwrap().unwrap();
    assert_eq!((summary.reserved, summary.remaining), (3, 0));

    assert!(worker.terminate().await.success());
    assert_eq!(app.commands_pending().await, 0, "every command acked");
    app.stop_workers().await;
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_only_dead_nodes_fails_naming_each_without_passwords() {
    let password = "Planted-Cluster-4b1e";
    let (mut s, _) = isolated_settings();
    let nodes: Vec<SecretUrl> = (0..3)
        .map(|_| {
            SecretUrl::new(format!(
                "amqp://guest:{password}@127.0.0.1:{}/%2f",
                closed_port()
            ))
        })
        .collect();
    s.amqp.url = list(&nodes);

    let e = admin::connect(&s.amqp, "dead-cluster").await.unwrap_err();
    assert!(
        matches!(e, ConnectError::Cluster { ref tried } if tried.len() == 3),
        "{e:?}"
    );
    let text = reservation_worker::telemetry::chain(&e);
    for node in &nodes {
        assert!(text.contains(&node.redacted()), "{node} named in: {text}");
    }
    assert!(text.contains("Connection refused"), "{text}");
    assert!(!text.contains(password), "{text}");

    // What an operator sees.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reservation-worker"))
        .arg("status")
        .env_clear()
        .envs(s.to_env())
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{printed}");
    assert!(
        printed.contains("no node of the cluster answered"),
        "{printed}"
    );
    for node in &nodes {
        assert!(printed.contains(&node.redacted()), "{printed}");
    }
    assert!(!printed.contains(password), "{printed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_whose_node_dies_carries_on_through_the_next_and_loses_nothing() {
    let mut app = TestApp::new().await;
    let upstream = authority(&app.settings.amqp.url);
    let (a, b) = (Proxy::start(&upstream).await, Proxy::start(&upstream).await);
    let (node_a, node_b) = (a.url(&app.settings.amqp.url), b.url(&app.settings.amqp.url));
    let url = list(&[node_a.clone(), node_b]);
    let name = name_starting_at(&app, &url, &node_a);
    let mut s = app.settings.clone();
    s.amqp.url = url;
    let mut worker = WorkerProcess::spawn(&s, &name);
    eventually("the worker to consume through node a", || {
        worker.assert_running();
        let consuming = a.consuming_since(0);
        async move { consuming.then_some(()) }
    })
    .await;
    assert_eq!(b.accepted(), 0, "node a was tried first, and answered");

    let capacity = 50;
    app.send(&define("d", "arena", capacity, Some(2))).await;
    let reserves: Vec<CommandBody> = (0..240)
        .map(|i| reserve(&format!("r{i}"), "arena", &format!("u{}", i % 60), 1))
        .collect();
    let (before, during, after) = (&reserves[..80], &reserves[80..160], &reserves[160..]);
    decide_all(&app, before).await;

    // Node a dies with commands in flight: every connection through it
    // drops. It accepts again at once, as a node restarting would, so a
    // worker that went back to the same node first would be seen there.
    // A slow link to node a keeps deliveries in the worker's hands.
    a.set_latency(Duration::from_millis(50));
    join_all(during.iter().map(|body| app.send(body))).await;
    eventually("the worker to hold deliveries through node a", || async {
        (!a.held().is_empty()).then_some(())
    })
    .await;
    let accepted_by_a = a.accepted();
    a.reset();
    eventually("the worker to consume again, through a node", || {
        worker.assert_running();
        let consuming = a.consuming_since(accepted_by_a) || b.consuming_since(0);
        async move { consuming.then_some(()) }
    })
    .await;
    assert_eq!(
        (a.accepted(), b.consuming_since(0)),
        (accepted_by_a, true),
        "after losing node a, the worker reconnected to node b, not to a first"
    );
    let mut report = a.report();
    // Now node a is gone for good: its port refuses.
    drop(a);
    for body in during {
        app.outcome(body.command_id().as_str()).await;
    }
    decide_all(&app, after).await;

    assert!(worker.terminate().await.success());
    report.merge(b.report());
    assert!(
        report.violations.is_empty() && report.early_acks.is_empty(),
        "no ack before its outcome was confirmed: {report:#?}"
    );
    assert_eq!(app.commands_pending().await, 0, "every command acked");
    let events = app.events();
    let answered: HashSet<&str> = events.iter().map(|e| e.event.command_id.as_str()).collect();
    for body in &reserves {
        assert!(
            answered.contains(body.command_id().as_str()),
            "{:?} lost",
            body.command_id()
        );
    }
    let accepted: HashSet<&str> = events
        .iter()
        .filter(|e| e.event.is_accepted() && e.event.command_id.as_str() != "d")
        .map(|e| e.event.command_id.as_str())
        .collect();
    let summary = app.store.summary(&rid("arena")).await.unwrap().unwrap();
    assert_eq!(summary.reserved as usize, accepted.len());
    assert_eq!(summary.reserved, capacity, "sold out, not oversold");
    app.stop_workers().await;
    app.cleanup().await;
}

/// How `rabbitmqctl` lists a balanced leader locator among a queue's
/// arguments.
const BALANCED: &str = r#"{"x-queue-leader-locator","balanced"}"#;

/// The arguments of every queue whose name starts with `prefix`, as the
/// broker lists them, by name.
async fn queue_arguments(prefix: &str) -> std::collections::BTreeMap<String, String> {
    queue_column("arguments")
        .await
        .into_iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .collect()
}

/// Removes what `s` declared and stored.
async fn remove(s: &Settings) {
    let connection = admin::connect(&s.amqp, "test-cleanup").await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    admin::delete_topology(&channel, &s.amqp).await;
    let _ = channel.close(200, "".into()).await;
    let _ = connection.close(200, "".into()).await;
    let _ = Store::new(&s.redis).unwrap().delete_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_declares_every_quorum_queue_with_balanced_leaders_partitions_included() {
    init_test_logs();
    let (mut s, prefix) = isolated_settings();
    s.amqp.partitions = 2;
    // Without the consistent-hash exchange plugin, setup stops at the
    // partitions' exchange: after the queues, which is what is looked at.
    let set_up = startup::setup(&s).await;
    let queues = queue_arguments(&prefix).await;
    remove(&s).await;
    let a = &s.amqp;
    let mut expected = admin::consumed_queues(a);
    expected.extend([a.dead_letter_queue.clone(), a.unrouted_queue.clone()]);
    assert_eq!(expected.len(), 5, "{expected:?}");
    for q in &expected {
        let args = queues
            .get(q)
            .unwrap_or_else(|| panic!("{q} declared ({set_up:?}): {queues:?}"));
        assert!(args.contains(BALANCED), "{q}: {args}");
        assert!(args.contains(r#"{"x-queue-type","quorum"}"#), "{q}: {args}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_an_older_version_declared_are_kept_with_advice_and_worked_on() {
    init_test_logs();
    let (s, prefix) = isolated_settings();
    let a = &s.amqp;
    let connection = admin::connect(a, &format!("{prefix}-old")).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    // The dead-letter and command queues as the version before leader
    // locators declared them.
    let quorum = || {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args
    };
    let mut commands = quorum();
    for (key, value) in [
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(a.delivery_limit)),
        ),
        (
            "x-dead-letter-exchange",
            AMQPValue::LongString(a.dead_letter_exchange.as_str().into()),
        ),
        (
            "x-dead-letter-strategy",
            AMQPValue::LongString("at-least-once".into()),
        ),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ] {
        commands.insert(key.into(), value);
    }
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (queue, args) in [
        (&a.dead_letter_queue, quorum()),
        (&a.commands_queue, commands),
    ] {
        channel
            .queue_declare(queue.as_str().into(), durable, args)
            .await
            .unwrap();
    }

    let declared = admin::declare_topology(&channel, a).await.unwrap();
    assert_eq!(
        declared.unbalanced,
        [a.dead_letter_queue.clone(), a.commands_queue.clone()]
    );
    let advice = declared.advice(a).unwrap();
    for said in [
        "rabbitmqctl set_policy -p '/'",
        r#"'{"queue-leader-locator":"balanced"}'"#,
        "rabbitmq-queues rebalance quorum",
        a.commands_queue.as_str(),
    ] {
        assert!(advice.contains(said), "{said:?} in {advice}");
    }
    startup::setup(&s).await.expect("setup keeps them as well");
    let queues = queue_arguments(&prefix).await;
    assert!(!queues[&a.commands_queue].contains(BALANCED));
    assert!(!queues[&a.dead_letter_queue].contains(BALANCED));
    assert!(
        queues[&a.unrouted_queue].contains(BALANCED),
        "a new queue is balanced"
    );

    // A worker declares the same at its start, and decides.
    let mut events = Events::subscribe(a, &format!("{prefix}-events"))
        .await
        .unwrap();
    let shutdown = CancellationToken::new();
    let worker = Application::build(s.clone(), format!("{prefix}-worker"))
        .await
        .unwrap();
    let running = tokio::spawn(worker.run_until(shutdown.clone()));
    let producer = Producer::connect(a).await.unwrap();
    producer.send(&define("d", "old", 1, None)).await.unwrap();
    let event = tokio::time::timeout(DEADLINE, events.next())
        .await
        .expect("an outcome within the deadline")
        .expect("the subscription is open")
        .unwrap();
    assert_eq!(event.correlation_id.as_deref(), Some("d"));
    shutdown.cancel();
    running.await.unwrap();
    let _ = producer.close().await;
    let _ = events.close().await;
    let _ = connection.close(200, "".into()).await;
    remove(&s).await;
}

/// Every node of an `amqps://` list is reached over TLS: the live broker's
/// plaintext port, second in the list, is refused rather than used without
/// TLS; and a list mixing the two schemes is refused before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_applies_to_every_node_and_never_falls_back_to_plaintext() {
    let (mut s, _) = isolated_settings();
    let plaintext = authority(&s.amqp.url);
    let dead = SecretUrl::new(format!(
        "amqps://guest:guest@127.0.0.1:{}/%2f",
        closed_port()
    ));
    let live_without_tls = SecretUrl::new(format!("amqps://guest:guest@{plaintext}/%2f"));
    s.amqp.url = list(&[dead, live_without_tls]);
    let e = admin::connect(&s.amqp, "tls-cluster").await.unwrap_err();
    let ConnectError::Cluster { tried } = &e else {
        panic!("{e:?}");
    };
    assert_eq!(tried.len(), 2, "{e}");
    assert!(
        tried.iter().any(|node| node.url.contains(&plaintext)),
        "the plaintext port was tried over TLS, and failed: {e}"
    );

    s.amqp.url = list(&[
        SecretUrl::new(format!("amqps://guest:guest@{plaintext}/%2f")),
        SecretUrl::new(format!("amqp://guest:guest@{plaintext}/%2f")),
    ]);
    let e = admin::connect(&s.amqp, "mixed-cluster").await.unwrap_err();
    assert!(matches!(e, ConnectError::MixedSchemes { .. }), "{e:?}");
}
