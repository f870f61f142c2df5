//! `TestApp`: an isolated slice of the real RabbitMQ and Redis per test.
//!
//! Every test gets its own exchange and queue names and its own Redis key
//! prefix, so tests run in parallel against shared servers. Workers run as
//! tasks in this process, each with its own broker connection and Redis pool,
//! exactly as separate replicas would.

use futures_util::StreamExt;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use reservation_worker::config::Settings;
use reservation_worker::domain::{CommandId, CustomerId, ResourceId};
use reservation_worker::message::{CommandBody, EventEnvelope};
use reservation_worker::producer::Producer;
use reservation_worker::store::Store;
use reservation_worker::worker::Worker;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct TestApp {
    pub settings: Settings,
    pub store: Store,
    pub producer: Producer,
    pub connection: lapin::Connection,
    events: Received,
    workers: Vec<RunningWorker>,
    prefix: String,
    /// Set by [`TestApp::cleanup`]; a test that panics before it is
    /// cleaned up on drop.
    cleaned: bool,
}

/// Events as parsed and as the exact bytes published.
type Received = Arc<Mutex<Vec<(EventEnvelope, Vec<u8>)>>>;

/// A worker task and the token that stops it.
type RunningWorker = (CancellationToken, JoinHandle<anyhow::Result<()>>);

/// Settings with names unique to one test.
pub fn isolated_settings() -> (Settings, String) {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let prefix = format!("test-{id}");
    let mut s = Settings::defaults().under_prefix(&prefix);
    if let Ok(url) = std::env::var("AMQP_URL") {
        s.amqp.url = url;
    }
    if let Ok(url) = std::env::var("REDIS_URL") {
        s.redis.url = url;
    }
    s.redis.pool_size = 8;
    s.amqp.prefetch = 64;
    s.worker.reconnect_base_ms = 20;
    s.worker.reconnect_max_ms = 500;
    s.worker.shutdown_grace_secs = 10;
    (s, prefix)
}

impl TestApp {
    /// Topology declared, an events listener bound, no worker yet.
    pub async fn new() -> TestApp {
        Self::with(|_| {}).await
    }

    /// Like [`TestApp::new`], with settings adjusted first.
    pub async fn with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let (mut settings, prefix) = isolated_settings();
        adjust(&mut settings);
        let connection =
            reservation_worker::broker::connect(&settings.amqp.url, &format!("{prefix}-test"))
                .await
                .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/services.sh starts it)");
        let channel = connection.create_channel().await.unwrap();
        reservation_worker::broker::declare_topology(&channel, &settings.amqp)
            .await
            .expect("declare topology");
        let mut consumer =
            reservation_worker::broker::subscribe_to_events(&channel, &settings.amqp, "events")
                .await
                .unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let envelope: EventEnvelope =
                    serde_json::from_slice(&d.data).expect("events follow the contract");
                assert_eq!(
                    d.properties.message_id().as_ref().map(|m| m.to_string()),
                    Some(envelope.event_id.to_string()),
                    "message_id is the event_id"
                );
                assert_eq!(
                    d.routing_key.as_str(),
                    reservation_worker::message::routing_key(&envelope.event)
                );
                sink.lock().unwrap().push((envelope, d.data));
            }
        });
        let store = Store::new(&settings.redis, &settings.worker).unwrap();
        store
            .ping()
            .await
            .expect("Redis must run on 127.0.0.1:6379 (scripts/services.sh starts it)");
        let producer = Producer::connect(&settings.amqp).await.unwrap();
        TestApp {
            settings,
            store,
            producer,
            connection,
            events,
            workers: Vec::new(),
            prefix,
            cleaned: false,
        }
    }

    /// Starts one more worker replica (its own connections).
    pub fn start_worker(&mut self) -> usize {
        let token = CancellationToken::new();
        let name = format!("{}-worker-{}", self.prefix, self.workers.len());
        let store = Store::named(&self.settings.redis, &self.settings.worker, Some(&name)).unwrap();
        let worker = Worker::new(self.settings.clone(), store, name);
        let handle = tokio::spawn(worker.run(token.clone()));
        self.workers.push((token, handle));
        self.workers.len() - 1
    }

    /// Stops every worker and waits for them to drain.
    pub async fn stop_workers(&mut self) {
        for (token, _) in &self.workers {
            token.cancel();
        }
        for (_, handle) in self.workers.drain(..) {
            tokio::time::timeout(DEADLINE, handle)
                .await
                .expect("worker drains within the deadline")
                .unwrap()
                .unwrap();
        }
    }

    pub fn worker_finished(&self, i: usize) -> bool {
        self.workers[i].1.is_finished()
    }

    pub async fn send(&self, body: &CommandBody) {
        self.producer.send(body).await.expect("publish confirmed");
    }

    pub async fn send_raw(&self, body: &[u8]) {
        self.producer
            .publish_raw("raw", body)
            .await
            .expect("publish confirmed");
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<EventEnvelope> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// How many events arrived so far (cheaper than `events().len()`).
    pub fn event_count(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Every event received so far, parsed and as the exact bytes, in one
    /// consistent snapshot.
    pub fn received(&self) -> Vec<(EventEnvelope, Vec<u8>)> {
        self.events.lock().unwrap().clone()
    }

    /// The prefix of this test's queue names and Redis keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every event received so far, as the exact bytes published.
    pub fn raw_events(&self) -> Vec<Vec<u8>> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// The events of one command.
    pub fn events_for(&self, command_id: &str) -> Vec<EventEnvelope> {
        self.events()
            .into_iter()
            .filter(|e| e.event.command_id.as_str() == command_id)
            .collect()
    }

    /// Waits until at least `n` events arrived; returns them all.
    pub async fn wait_for_events(&self, n: usize) -> Vec<EventEnvelope> {
        eventually(&format!("{n} events"), || async {
            let events = self.events();
            (events.len() >= n).then_some(events)
        })
        .await
    }

    /// Waits until `command_id` has `n` outcome events; returns them,
    /// parsed and as the exact bytes, in arrival order.
    pub async fn outcomes(&self, command_id: &str, n: usize) -> Vec<(EventEnvelope, Vec<u8>)> {
        eventually(&format!("{n} events for {command_id}"), || async {
            let events: Vec<_> = self
                .received()
                .into_iter()
                .filter(|(e, _)| e.event.command_id.as_str() == command_id)
                .collect();
            (events.len() >= n).then_some(events)
        })
        .await
    }

    /// Waits for the first event of `command_id`.
    pub async fn outcome(&self, command_id: &str) -> EventEnvelope {
        eventually(&format!("an outcome for {command_id}"), || async {
            self.events_for(command_id).into_iter().next()
        })
        .await
    }

    /// Takes `n` messages from the dead-letter queue, waiting for them.
    pub async fn dead_letters(&self, n: usize) -> Vec<lapin::message::BasicGetMessage> {
        let channel = self.connection.create_channel().await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while got.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} dead letters, got {}",
                got.len()
            );
            match channel
                .basic_get(
                    self.settings.amqp.dead_letter_queue.as_str().into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap()
            {
                Some(m) => got.push(m),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        got
    }

    /// Messages ready in the command queue (the broker's passive declare does
    /// not count unacked ones: stop the workers first to include those).
    pub async fn commands_pending(&self) -> u32 {
        self.ready_in(&self.settings.amqp.commands_queue).await
    }

    /// Messages ready in `queue` (unacked ones not counted).
    pub async fn ready_in(&self, queue: &str) -> u32 {
        let channel = self.connection.create_channel().await.unwrap();
        let q = channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = channel.close(200, "".into()).await;
        q.message_count()
    }

    /// Deletes the test's queues, exchanges and keys.
    pub async fn cleanup(mut self) {
        self.stop_workers().await;
        cleanup(&self.settings).await;
        self.cleaned = true;
    }
}

impl Drop for TestApp {
    /// A failing test panics before its `cleanup`: stop its workers (a
    /// stopped worker never re-declares) and remove its queues, exchanges
    /// and keys, on a thread and runtime of its own since the test's
    /// runtime is unwinding.
    fn drop(&mut self) {
        if self.cleaned || !std::thread::panicking() {
            return;
        }
        for (token, _) in &self.workers {
            token.cancel();
        }
        let settings = self.settings.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(cleanup(&settings));
            }
        })
        .join();
    }
}

async fn cleanup(settings: &Settings) {
    if let Ok(connection) =
        reservation_worker::broker::connect(&settings.amqp.url, "test-cleanup").await
    {
        if let Ok(channel) = connection.create_channel().await {
            reservation_worker::broker::delete_topology(&channel, &settings.amqp).await;
            let _ = channel.close(200, "".into()).await;
        }
        let _ = connection.close(200, "".into()).await;
    }
    if let Ok(store) = Store::new(&settings.redis, &settings.worker) {
        let _ = store.delete_all().await;
    }
}

/// Polls `check` until it yields a value, failing the test at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn rid(s: &str) -> ResourceId {
    ResourceId::try_from(s).unwrap()
}

pub fn define(id: &str, resource: &str, capacity: u32, limit: Option<u32>) -> CommandBody {
    CommandBody::Define {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: rid(resource),
        capacity,
        per_customer_limit: limit,
    }
}

pub fn reserve(id: &str, resource: &str, customer: &str, quantity: u32) -> CommandBody {
    CommandBody::Reserve {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: rid(resource),
        customer_id: CustomerId::try_from(customer).unwrap(),
        quantity,
    }
}

pub fn cancel(id: &str, resource: &str, reservation: &str) -> CommandBody {
    CommandBody::Cancel {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: rid(resource),
        reservation_id: CommandId::try_from(reservation).unwrap(),
    }
}

/// A header's text value.
pub fn header_text(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// The broker's connections whose name starts with `prefix`, as
/// `(pid, name)` (`rabbitmqctl list_connections`).
pub async fn broker_connections(prefix: &str) -> Vec<(String, String)> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "client_properties",
        ])
        .output()
        .await
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl list_connections: {out:?}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let (pid, properties) = line.split_once('\t')?;
            let name = properties
                .split_once("{\"connection_name\",\"")?
                .1
                .split('"')
                .next()?;
            name.starts_with(prefix)
                .then(|| (pid.trim().to_string(), name.to_string()))
        })
        .collect()
}
