//! One run's world: its own topology and key prefix, a listener on the
//! outcome events, a confirm publisher, and the traffic of each workload.

use super::plan::Workload;
use crate::cli::fairness;
use anyhow::Context as _;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reservation_worker::admin::{self, Message, Publisher, Store};
use reservation_worker::config::Settings;
use reservation_worker::domain::{BudgetId, CommandId, CustomerId, ResourceId};
use reservation_worker::message::CommandBody;
use reservation_worker::producer::Events;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Settings of the runs whose queues, exchanges and keys still exist, so an
/// interrupted bench can remove them.
static OPEN_RUNS: Mutex<Vec<Settings>> = Mutex::new(Vec::new());

/// Deletes a run's topology and Redis keys.
async fn remove_run(connection: &lapin::Connection, settings: &Settings) {
    // Channels are closed before the connection: one merely dropped sends
    // its close too late and lapin logs the race as an error.
    if let Ok(channel) = connection.create_channel().await {
        admin::delete_topology(&channel, &settings.amqp).await;
        let _ = channel.close(200, "bench done".into()).await;
    }
    if let Ok(store) = Store::new(&settings.redis) {
        let _ = store.delete_all().await;
    }
    OPEN_RUNS
        .lock()
        .expect("lock")
        .retain(|s| s.redis.key_prefix != settings.redis.key_prefix);
}

/// Removes what every run still open declared (after an interrupt).
pub(super) async fn remove_open_runs() {
    let open = std::mem::take(&mut *OPEN_RUNS.lock().expect("lock"));
    for settings in open {
        let name = format!(
            "{}-cleanup",
            settings.redis.key_prefix.trim_end_matches(':')
        );
        if let Ok(connection) = admin::connect(&settings.amqp, &name).await {
            remove_run(&connection, &settings).await;
            let _ = connection.close(200, "bench interrupted".into()).await;
        }
    }
}

/// A progress bar on a terminal, nothing otherwise.
pub(super) fn progress(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("   {msg:>10} {bar:40} {pos}/{len} {per_sec}")
            .expect("template"),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Settings with names unique to one run.
pub(super) fn isolated(base: &Settings) -> (Settings, String) {
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    (base.clone().under_prefix(&prefix), prefix)
}

/// Commands for a workload, plus the defines that must precede them.
pub(super) fn traffic(
    workload: Workload,
    n: usize,
    duplicates: f64,
    seed: u64,
) -> (Vec<CommandBody>, Vec<CommandBody>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let resources: Vec<ResourceId> = match workload {
        Workload::Hot | Workload::HotBudget | Workload::Sellout => {
            vec![ResourceId::try_from("hot").expect("id")]
        }
        Workload::Uniform | Workload::UniformBudget => (0..10_000)
            .map(|i| ResourceId::try_from(format!("res-{i}")).expect("id"))
            .collect(),
    };
    let capacity = match workload {
        Workload::Hot | Workload::HotBudget => u32::try_from(n * 2).unwrap_or(u32::MAX),
        Workload::Sellout => u32::try_from(n / 100).unwrap_or(u32::MAX).max(1),
        Workload::Uniform | Workload::UniformBudget => u32::try_from(n * 2 / resources.len())
            .unwrap_or(u32::MAX)
            .max(1),
    };
    // The budgeted workload: each seat costs 10, each customer may spend 30.
    let budget = matches!(workload, Workload::HotBudget | Workload::UniformBudget)
        .then(|| BudgetId::try_from("bench-budget").expect("id"));
    let mut defines: Vec<CommandBody> = budget
        .iter()
        .map(|b| CommandBody::DefineBudget {
            command_id: CommandId::try_from("define-budget").expect("id"),
            budget_id: b.clone(),
            per_customer_amount: 30,
        })
        .collect();
    defines.extend(resources.iter().map(|r| CommandBody::Define {
        command_id: CommandId::try_from(format!("define-{r}")).expect("id"),
        resource_id: r.clone(),
        capacity,
        per_customer_limit: None,
        price: budget.as_ref().map(|_| 10),
        budget_id: budget.clone().map(Some),
    }));
    let distinct = n - ((n as f64) * duplicates.clamp(0.0, 0.9)) as usize;
    let mut bodies: Vec<CommandBody> = (0..distinct)
        .map(|i| CommandBody::Reserve {
            command_id: CommandId::try_from(format!("c-{i}")).expect("id"),
            resource_id: resources[rng.random_range(0..resources.len())].clone(),
            customer_id: CustomerId::try_from(format!("u-{}", rng.random_range(0..50_000)))
                .expect("id"),
            quantity: 1,
        })
        .collect();
    while bodies.len() < n {
        let dup = bodies[rng.random_range(0..distinct)].clone();
        let at = rng.random_range(0..=bodies.len());
        bodies.insert(at, dup);
    }
    (defines, bodies)
}

/// Declared topology, a listener on the events and a confirm publisher.
pub(super) struct Rig {
    pub(super) settings: Settings,
    pub(super) prefix: String,
    connection: lapin::Connection,
    /// Stops the events listener, which closes its subscription before the
    /// topology goes.
    listener: (CancellationToken, tokio::task::JoinHandle<()>),
    publisher: Publisher,
    /// Outcome event arrival times, by command id (first arrival only).
    pub(super) seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
pub(super) struct Seen {
    pub(super) events: usize,
    pub(super) first: Option<Instant>,
    pub(super) last: Option<Instant>,
    pub(super) published_at: HashMap<String, Instant>,
    pub(super) latencies: Vec<Duration>,
    /// Each command's first outcome, by command id.
    pub(super) verdicts: HashMap<String, fairness::Verdict>,
}

impl Rig {
    pub(super) async fn new(base: &Settings) -> anyhow::Result<Rig> {
        let (settings, prefix) = isolated(base);
        OPEN_RUNS.lock().expect("lock").push(settings.clone());
        let a = &settings.amqp;
        let connection = admin::connect(a, &format!("{prefix}-bench"))
            .await
            .context("connecting to the broker")?;
        // The run's own topology and store, set up as `setup` does.
        reservation_worker::startup::setup(&settings).await?;
        let mut events = Events::subscribe(a, &format!("{prefix}-bench-events")).await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let listener = tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    event = events.next() => event,
                    _ = stopped.cancelled() => break,
                };
                let Some(Ok(event)) = event else { break };
                let now = Instant::now();
                let verdict = event.envelope().ok().map(|e| {
                    (
                        e.event.command_id.to_string(),
                        fairness::Verdict::of(&e.event.verdict),
                    )
                });
                let mut s = sink.lock().expect("lock");
                if let Some((id, verdict)) = verdict {
                    s.verdicts.entry(id).or_insert(verdict);
                }
                s.events += 1;
                s.first.get_or_insert(now);
                s.last = Some(now);
                if let Some(at) = event
                    .correlation_id
                    .and_then(|id| s.published_at.remove(&id))
                {
                    s.latencies.push(now - at);
                }
            }
            let _ = events.close().await;
        });
        let publisher = Publisher::open(&connection, a.confirm_timeout()).await?;
        Ok(Rig {
            settings,
            prefix,
            connection,
            listener: (stop, listener),
            publisher,
            seen,
        })
    }

    /// Starts `replicas` replicas of `mode` on this run's queues and keys.
    pub(super) fn replicas(
        &self,
        exe: &std::path::Path,
        replicas: usize,
        mode: super::plan::Mode,
        prefetch: u16,
    ) -> anyhow::Result<super::replicas::Replicas> {
        super::replicas::Replicas::spawn(
            exe,
            &self.settings,
            &self.prefix,
            replicas,
            mode,
            prefetch,
        )
    }

    /// One command published with a confirm; the future owns what it needs,
    /// so it can be spawned.
    pub(super) fn publish(
        &self,
        body: &CommandBody,
    ) -> impl std::future::Future<Output = Result<(), admin::PublishError>> + Send + 'static {
        let (publisher, exchange) = (
            self.publisher.clone(),
            self.settings.amqp.commands_exchange.clone(),
        );
        let (routing_key, json) = (body.routing_key().to_string(), body.to_json());
        async move {
            publisher
                .publish(Message {
                    exchange: &exchange,
                    routing_key: &routing_key,
                    body: &json,
                    ..Default::default()
                })
                .await
        }
    }

    pub(super) async fn publish_all(
        &self,
        bodies: &[CommandBody],
        what: &str,
    ) -> anyhow::Result<()> {
        let bar = progress(bodies.len() as u64, what);
        let mut stream = futures_util::stream::iter(bodies.iter().map(|b| self.publish(b)))
            .buffer_unordered(512);
        while let Some(r) = stream.next().await {
            r?;
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(())
    }

    pub(super) async fn wait_for_events(&self, n: usize, what: &str) -> anyhow::Result<()> {
        let bar = progress(n as u64, what);
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut last = (0, Instant::now());
        loop {
            let got = self.seen.lock().expect("lock").events;
            bar.set_position(got as u64);
            if got >= n {
                break;
            }
            if got != last.0 {
                last = (got, Instant::now());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "gave up waiting: {got} of {n} outcome events"
            );
            anyhow::ensure!(
                last.1.elapsed() < Duration::from_secs(60),
                "no progress for 60 s: {got} of {n} outcome events"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bar.finish_and_clear();
        Ok(())
    }

    pub(super) fn reset(&self) {
        *self.seen.lock().expect("lock") = Seen::default();
    }

    pub(super) async fn cleanup(self) {
        let (stop, listener) = self.listener;
        stop.cancel();
        let _ = listener.await;
        remove_run(&self.connection, &self.settings).await;
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}
