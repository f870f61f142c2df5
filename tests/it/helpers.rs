//! `TestApp`: an isolated slice of the real RabbitMQ and Redis per test.
//!
//! Every test gets its own exchange and queue names and its own Redis key
//! prefix, so tests run in parallel against shared servers. Workers run as
//! tasks in this process, each with its own broker connection and Redis pool,
//! exactly as separate replicas would.

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use reservation_worker::admin::{self, Store};
use reservation_worker::config::{SecretUrl, Settings};
use reservation_worker::domain::{CommandId, CustomerId, Outcome, ResourceId, Submission};
use reservation_worker::message::{BudgetEnvelope, CommandBody, EventEnvelope, OutgoingEvent};
use reservation_worker::producer::{Events, Producer, ReceivedEvent};
use reservation_worker::startup::{self, Application};
use std::future::Future;
use std::sync::{Arc, Mutex, Once};
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
    /// `define_budget` outcomes, as parsed and as the exact bytes.
    budget_events: Arc<Mutex<Vec<BudgetEnvelope>>>,
    /// Contract violations seen on the events; any fails the test at its
    /// next look at the events.
    violations: Arc<Mutex<Vec<String>>>,
    /// Stops the events listener.
    listening: CancellationToken,
    workers: Vec<RunningWorker>,
    prefix: String,
    /// Set by [`TestApp::cleanup`]; a test that panics before it is
    /// cleaned up on drop.
    cleaned: bool,
}

/// Events as parsed and as the exact bytes published.
type Received = Arc<Mutex<Vec<(EventEnvelope, Vec<u8>)>>>;

/// A worker task and the token that stops it.
type RunningWorker = (CancellationToken, JoinHandle<()>);

/// Logs of in-process workers go to the test's captured output, which the
/// test harness prints only when the test fails. `TEST_LOG` sets the filter
/// (default `info`).
pub fn init_test_logs() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "info".into());
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    });
}

/// The contract's checks on every published event: the body is an event
/// envelope, `message_id` is its `event_id`, and the routing key is
/// `<command>.<outcome>`.
fn check_contract(e: &ReceivedEvent) -> Result<EventEnvelope, String> {
    let envelope = e.envelope().map_err(|err| {
        format!(
            "an event body is not contract JSON ({err}): {}",
            String::from_utf8_lossy(&e.body)
        )
    })?;
    if e.message_id.as_deref() != Some(envelope.event_id.to_string().as_str()) {
        return Err(format!(
            "message_id {:?} is not the event_id {}",
            e.message_id, envelope.event_id
        ));
    }
    if e.routing_key != envelope.event.routing_key() {
        return Err(format!(
            "routing key {} is not {}",
            e.routing_key,
            envelope.event.routing_key()
        ));
    }
    Ok(envelope)
}

/// The contract's checks on a `define_budget` event: a budget envelope
/// with no resource fields, `message_id` its `event_id`, the routing key
/// `define_budget.<outcome>`.
fn check_budget_contract(e: &ReceivedEvent) -> Result<BudgetEnvelope, String> {
    let body = String::from_utf8_lossy(&e.body);
    let envelope: BudgetEnvelope = serde_json::from_slice(&e.body)
        .map_err(|err| format!("a define_budget event is not contract JSON ({err}): {body}"))?;
    let json: serde_json::Value = serde_json::from_slice(&e.body).map_err(|e| e.to_string())?;
    for field in ["resource_id", "remaining", "capacity"] {
        if json.get(field).is_some() {
            return Err(format!("a define_budget event carries {field}: {body}"));
        }
    }
    if e.message_id.as_deref() != Some(envelope.event_id.to_string().as_str()) {
        return Err(format!(
            "message_id {:?} is not the event_id {}",
            e.message_id, envelope.event_id
        ));
    }
    let outcome = if envelope.event.is_accepted() {
        "accepted"
    } else {
        "rejected"
    };
    if e.routing_key != format!("define_budget.{outcome}") {
        return Err(format!("routing key {} for {body}", e.routing_key));
    }
    Ok(envelope)
}

/// Settings with names unique to one test.
pub fn isolated_settings() -> (Settings, String) {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    let prefix = format!("test-{id}");
    let mut s = Settings::defaults().under_prefix(&prefix);
    if let Ok(url) = std::env::var("AMQP_URL") {
        s.amqp.url = SecretUrl::new(url);
    }
    if let Ok(url) = std::env::var("REDIS_URL") {
        s.redis.url = SecretUrl::new(url);
    }
    // In-process workers share the process: no endpoint each.
    s.http.enabled = false;
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
        let app = Self::unobserved(adjust).await;
        app.observe().await;
        app
    }

    /// Like [`TestApp::with`], but nothing is bound to the events exchange
    /// until [`TestApp::observe`].
    pub async fn unobserved(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        init_test_logs();
        let (mut settings, prefix) = isolated_settings();
        adjust(&mut settings);
        startup::setup(&settings)
            .await
            .expect("RabbitMQ must run on 127.0.0.1:5672 (scripts/services.sh starts it)");
        let connection = admin::connect(&settings.amqp, &format!("{prefix}-test"))
            .await
            .expect("connect to RabbitMQ");
        let store = Store::new(&settings.redis).unwrap();
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
            events: Arc::new(Mutex::new(Vec::new())),
            budget_events: Arc::new(Mutex::new(Vec::new())),
            violations: Arc::new(Mutex::new(Vec::new())),
            listening: CancellationToken::new(),
            workers: Vec::new(),
            prefix,
            cleaned: false,
        }
    }

    /// Binds a queue of the test's own to every outcome event and collects
    /// them, checking each against the contract.
    pub async fn observe(&self) {
        let name = format!("{}-events", self.prefix);
        let mut subscription = Events::subscribe(&self.settings.amqp, &name)
            .await
            .expect("subscribe to the events");
        let (sink, budgets, broken, stop) = (
            self.events.clone(),
            self.budget_events.clone(),
            self.violations.clone(),
            self.listening.clone(),
        );
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    next = subscription.next() => next,
                    _ = stop.cancelled() => break,
                };
                match next {
                    Some(Ok(e)) if e.routing_key.starts_with("define_budget.") => {
                        match check_budget_contract(&e) {
                            Ok(envelope) => budgets.lock().unwrap().push(envelope),
                            Err(violation) => broken.lock().unwrap().push(violation),
                        }
                    }
                    Some(Ok(e)) => match check_contract(&e) {
                        Ok(envelope) => sink.lock().unwrap().push((envelope, e.body)),
                        Err(violation) => broken.lock().unwrap().push(violation),
                    },
                    Some(Err(e)) => {
                        broken
                            .lock()
                            .unwrap()
                            .push(format!("the events subscription failed: {e}"));
                        break;
                    }
                    None => {
                        broken
                            .lock()
                            .unwrap()
                            .push("the events subscription ended".into());
                        break;
                    }
                }
            }
            let _ = subscription.close().await;
        });
    }

    /// Starts one more worker replica (its own connections), built exactly
    /// as `reservation-worker run` builds one.
    pub fn start_worker(&mut self) -> usize {
        let token = CancellationToken::new();
        let name = format!("{}-worker-{}", self.prefix, self.workers.len());
        let (settings, stop) = (self.settings.clone(), token.clone());
        let handle = tokio::spawn(async move {
            Application::build(settings, name)
                .await
                .expect("build a worker")
                .run_until(stop)
                .await
        });
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
                .expect("the worker task did not panic");
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

    /// Decides and commits a batch of one resource's commands as a worker
    /// does (for tests that need batches of their choosing).
    pub async fn commit(
        &self,
        resource: &ResourceId,
        batch: &[Submission],
    ) -> Vec<Outcome<OutgoingEvent>> {
        admin::decide_and_commit(&self.store, resource, batch)
            .await
            .expect("redis")
            .expect("no other writer races this test")
            .outcomes
    }

    /// Fails the test if any published event broke the contract.
    fn assert_contract_kept(&self) {
        let violations = self.violations.lock().unwrap();
        assert!(
            violations.is_empty(),
            "published events broke the contract: {violations:#?}"
        );
    }

    /// Every event received so far.
    pub fn events(&self) -> Vec<EventEnvelope> {
        self.assert_contract_kept();
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(e, _)| e.clone())
            .collect()
    }

    /// How many events arrived so far (cheaper than `events().len()`).
    pub fn event_count(&self) -> usize {
        self.assert_contract_kept();
        self.events.lock().unwrap().len()
    }

    /// Every event received so far, parsed and as the exact bytes, in one
    /// consistent snapshot.
    pub fn received(&self) -> Vec<(EventEnvelope, Vec<u8>)> {
        self.assert_contract_kept();
        self.events.lock().unwrap().clone()
    }

    /// The events received after the first `n`, in arrival order.
    pub fn received_since(&self, n: usize) -> Vec<(EventEnvelope, Vec<u8>)> {
        self.assert_contract_kept();
        let events = self.events.lock().unwrap();
        events.get(n..).map(<[_]>::to_vec).unwrap_or_default()
    }

    /// The prefix of this test's queue names and Redis keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Every event received so far, as the exact bytes published.
    pub fn raw_events(&self) -> Vec<Vec<u8>> {
        self.assert_contract_kept();
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

    /// Every `define_budget` outcome so far, in arrival order.
    pub fn budget_events(&self) -> Vec<BudgetEnvelope> {
        self.assert_contract_kept();
        let events = self.budget_events.lock().unwrap();
        events.clone()
    }

    /// Waits for the first `define_budget` event of `command_id`.
    pub async fn budget_outcome(&self, command_id: &str) -> BudgetEnvelope {
        eventually(
            &format!("a define_budget outcome for {command_id}"),
            || async {
                self.assert_contract_kept();
                self.budget_events
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|e| e.event.command_id.as_str() == command_id)
                    .cloned()
            },
        )
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

    /// Deletes the test's queues, exchanges and keys, after checking that
    /// every event kept the contract.
    pub async fn cleanup(mut self) {
        self.stop_workers().await;
        self.listening.cancel();
        cleanup(&self.settings).await;
        self.cleaned = true;
        self.assert_contract_kept();
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
        self.listening.cancel();
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
    if let Ok(connection) = admin::connect(&settings.amqp, "test-cleanup").await {
        if let Ok(channel) = connection.create_channel().await {
            admin::delete_topology(&channel, &settings.amqp).await;
            let _ = channel.close(200, "".into()).await;
        }
        let _ = connection.close(200, "".into()).await;
    }
    if let Ok(store) = Store::new(&settings.redis) {
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
        per_customer_limit: Some(limit),
        price: None,
        budget_id: None,
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

pub fn hold(id: &str, resource: &str, customer: &str, quantity: u32, secs: u32) -> CommandBody {
    CommandBody::Hold {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: rid(resource),
        customer_id: CustomerId::try_from(customer).unwrap(),
        quantity,
        hold_secs: secs,
    }
}

pub fn confirm(id: &str, resource: &str, hold: &str) -> CommandBody {
    CommandBody::Confirm {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: rid(resource),
        hold_id: CommandId::try_from(hold).unwrap(),
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

/// `host:port` of an AMQP URL.
pub fn authority(url: &SecretUrl) -> String {
    let url = url.expose();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:5672")
    }
}

/// `name` and `column` of every queue on the shared broker (`rabbitmqctl
/// list_queues`), by name.
pub async fn queue_column(column: &str) -> std::collections::BTreeMap<String, String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name", column])
        .output()
        .await
        .expect("rabbitmqctl");
    assert!(out.status.success(), "rabbitmqctl list_queues: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, value)| (name.trim().to_string(), value.trim().to_string()))
        .collect()
}

/// Runs `reservation-worker verify --all --json` on `settings`, asserts it
/// exits 0 and reports no difference, and returns its report.
pub async fn verify_all(settings: &Settings) -> serde_json::Value {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_reservation-worker"));
    command
        .args(["verify", "--all", "--json"])
        .env_clear()
        .envs(settings.to_env());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    let out = command.output().await.expect("run verify");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "verify --all failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("a JSON report");
    assert_eq!(report["ok"], true, "{report}");
    report
}

/// The consumers of `queue` on the local broker, as (consumer tag, active),
/// from `rabbitmqctl` (single active consumer shows which one is active).
pub fn consumers_of(queue: &str) -> Vec<(String, bool)> {
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_consumers",
            "queue_name",
            "consumer_tag",
            "active",
        ])
        .output()
        .expect("rabbitmqctl runs (these tests need a local broker)");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() == 3 && fields[0] == queue)
                .then(|| (fields[1].to_string(), fields[2] == "true"))
        })
        .collect()
}
