//! Events nobody has bound a queue for yet: kept in the unrouted queue by
//! the events exchange's alternate exchange, so a worker never waits for a
//! consumer and no command is dead-lettered for it. And an events exchange
//! declared by v1, without that alternate exchange: `setup` says how to
//! migrate, and the policy-based migration works.

use crate::helpers::*;
use reservation_worker::message::CommandBody;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_without_a_binding_are_kept_and_never_stall_the_worker() {
    let mut app = TestApp::unobserved(|s| s.amqp.delivery_limit = 3).await;
    app.start_worker();
    let mut bodies = vec![define("d", "quiet", 10, None)];
    bodies.extend((0..20).map(|i| reserve(&format!("r{i}"), "quiet", &format!("u{i}"), 1)));
    for b in &bodies {
        app.send(b).await;
    }
    let unrouted = app.settings.amqp.unrouted_queue.clone();
    eventually("every event in the unrouted queue", || async {
        (app.ready_in(&unrouted).await as usize == bodies.len()).then_some(())
    })
    .await;
    assert_eq!(app.ready_in(&app.settings.amqp.dead_letter_queue).await, 0);
    let s = app.store.summary(&rid("quiet")).await.unwrap().unwrap();
    assert_eq!(s.reserved, 10, "decided, not waiting for a consumer");

    // A consumer binds: from then on it gets the events, and what was kept
    // stays kept.
    app.observe().await;
    let late = reserve("late", "quiet", "u-late", 1);
    app.send(&late).await;
    assert_eq!(app.outcome("late").await.event.command_id.as_str(), "late");
    assert_eq!(app.ready_in(&unrouted).await as usize, bodies.len());
    app.stop_workers().await;
    assert_eq!(app.commands_pending().await, 0, "every command acked");
    app.cleanup().await;
}

/// Runs `rabbitmqctl` with `args`; panics unless it succeeds.
async fn rabbitmqctl(args: &[&str]) {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {out:?}");
}

/// A vhost of the test's own, deleted when dropped (a failing test too).
struct Vhost(String);

impl Vhost {
    async fn create(name: &str) -> Vhost {
        rabbitmqctl(&["add_vhost", name]).await;
        let vhost = Vhost(name.to_string());
        rabbitmqctl(&["set_permissions", "-p", name, "guest", ".*", ".*", ".*"]).await;
        vhost
    }
}

impl Drop for Vhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.0])
            .output();
    }
}

/// An events exchange declared by v1 (no alternate exchange) and a
/// consumer bound to it, in a vhost of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_events_exchange_is_migrated_by_policy_keeping_its_bindings() {
    init_test_logs();
    let (mut settings, prefix) = isolated_settings();
    let guard = Vhost::create(&prefix).await;
    let vhost = guard.0.clone();
    let base = settings.amqp.url.expose().to_string();
    let url = format!("{}/{vhost}", base.rsplit_once('/').unwrap().0);
    settings.amqp.url = reservation_worker::config::SecretUrl::new(url);
    let result = async {
        // v1's declaration, and a consumer's queue bound to it.
        let connection = reservation_worker::admin::connect(&settings.amqp, "v1")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let events = settings.amqp.events_exchange.clone();
        channel
            .exchange_declare(
                events.as_str().into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        channel
            .queue_declare("consumer".into(), Default::default(), Default::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                "consumer".into(),
                events.as_str().into(),
                "reserve.*".into(),
                Default::default(),
                Default::default(),
            )
            .await
            .unwrap();

        let refused = reservation_worker::startup::setup(&settings)
            .await
            .unwrap_err();
        let said = format!("{refused:#}");
        assert!(
            said.contains("set_policy") && said.contains("alternate_exchange_by_policy"),
            "setup says how to migrate: {said}"
        );
        let pattern = format!("^{}$", events.replace('.', "\\."));
        let definition = format!(
            r#"{{"alternate-exchange":"{}"}}"#,
            settings.amqp.unrouted_exchange
        );
        rabbitmqctl(&[
            "set_policy",
            "-p",
            &vhost,
            "--apply-to",
            "exchanges",
            "unrouted",
            &pattern,
            &definition,
        ])
        .await;
        settings.amqp.alternate_exchange_by_policy = true;
        reservation_worker::startup::setup(&settings).await.unwrap();

        let app_settings = settings.clone();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let worker =
            reservation_worker::startup::Application::build(app_settings.clone(), "v1-worker")
                .await
                .unwrap();
        let running = tokio::spawn(worker.run_until(shutdown.clone()));
        let producer = reservation_worker::producer::Producer::connect(&app_settings.amqp)
            .await
            .unwrap();
        let bodies: Vec<CommandBody> = vec![define("d", "v1", 5, None), reserve("r", "v1", "u", 1)];
        for b in &bodies {
            producer.send(b).await.unwrap();
        }
        // The define's event matched no binding: the policy's alternate
        // exchange kept it. The reserve's went to the consumer's queue.
        let ready = |queue: String| {
            let channel = channel.clone();
            async move {
                channel
                    .queue_declare(
                        queue.as_str().into(),
                        lapin::options::QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await
                    .unwrap()
                    .message_count()
            }
        };
        eventually(
            "the define's event kept, the reserve's delivered",
            || async {
                let unrouted = ready(settings.amqp.unrouted_queue.clone()).await;
                let consumer = ready("consumer".to_string()).await;
                (unrouted == 1 && consumer == 1).then_some(())
            },
        )
        .await;
        shutdown.cancel();
        running.await.unwrap();
        let _ = producer.close().await;
        let _ = connection.close(200, "".into()).await;
    };
    result.await;
    drop(guard);
}
