//! `reservation-worker bench`: throughput and latency under a ticket rush,
//! measured side by side with two baselines in the same run.
//!
//! For each workload the bench preloads the command queue, starts worker
//! replicas (separate processes of this binary) and measures commands/s from
//! the first outcome event to the last. It does this for three kinds of
//! replica:
//!
//! - `null`: consumes, publishes one outcome of the same size with a
//!   confirm, acks; no Redis. The broker's own limit on this machine.
//! - `group`: the real worker with group commit (the default).
//! - `naive`: the real worker with group commit off: one WATCH/MULTI
//!   transaction per command, every command racing on its own.
//!
//! Each run gets its own queues, exchanges and Redis key prefix, removed at
//! the end.

use crate::broker::{self, Message, Publisher};
use crate::config::Settings;
use crate::domain::{CommandId, CustomerId, ResourceId};
use crate::message::CommandBody;
use crate::store::Store;
use anyhow::Context as _;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Which traffic to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Every command on one resource, capacity for nearly all of them.
    Hot,
    /// One resource that sells out early: most commands are rejections.
    Sellout,
    /// 10,000 resources, commands spread evenly.
    Uniform,
}

/// Which replica to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// The broker-only baseline.
    Null,
    /// The worker with group commit.
    Group,
    /// The worker with one transaction per command.
    Naive,
}

/// Options of `reservation-worker bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Commands per run (duplicates included).
    #[arg(long, default_value_t = 100_000)]
    pub commands: usize,
    /// Workloads to run.
    #[arg(long, value_delimiter = ',', default_value = "hot,sellout,uniform")]
    pub workloads: Vec<Workload>,
    /// Replica counts to run each workload with.
    #[arg(long, value_delimiter = ',', default_values_t = [2])]
    pub replicas: Vec<usize>,
    /// Also run `hot` with this many replicas (group vs naive, per-replica share).
    #[arg(long, default_value_t = 4)]
    pub hot_replicas: usize,
    /// Modes to run.
    #[arg(long, value_delimiter = ',', default_value = "null,group,naive")]
    pub modes: Vec<Mode>,
    /// Also run each workload in partitioned mode with this many partitions
    /// (group commit, `--hot-replicas` replicas); 0 skips it.
    #[arg(long, default_value_t = 0)]
    pub partitions: u16,
    /// Prefetch of every replica.
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Share of commands that repeat an earlier one.
    #[arg(long, default_value_t = 0.1)]
    pub duplicates: f64,
    /// Rounds of the whole throughput plan; the report gives the median of
    /// each figure and the spread, and ratios paired within a round.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Seconds of paced traffic per latency measurement.
    #[arg(long, default_value_t = 10)]
    pub latency_secs: u64,
    /// Rates to measure latency at, as fractions of the live peak: the `hot`
    /// rate with the commands published while the replicas consume.
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.25")]
    pub latency_at: Vec<f64>,
    /// Write the results as Markdown to this file.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Seed for the generated traffic.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// One measured run.
#[derive(Debug, Clone)]
struct RunResult {
    round: u32,
    workload: Workload,
    mode: Mode,
    partitions: u16,
    replicas: usize,
    commands: usize,
    seconds: f64,
    rate: f64,
    commits: f64,
    conflicts: f64,
    per_replica: Vec<f64>,
    peak_rss_kib: Vec<u64>,
    /// CPU time (user + system) all replicas used, in seconds.
    cpu_seconds: f64,
    /// Mean commit time and mean receipt-to-ack time inside the workers.
    mean_commit: Duration,
    mean_publish: Duration,
    mean_process: Duration,
}

/// Publish-to-outcome latency with the commands published while the
/// replicas consume: paced, or as fast as the bench can publish.
#[derive(Debug, Clone)]
struct Latency {
    mode: Mode,
    /// Fraction of the live peak; `None` for the live-peak run itself.
    fraction: Option<f64>,
    /// Offered rate (paced runs) or achieved outcome rate (live peak).
    rate: f64,
    samples: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// Settings of the runs whose queues, exchanges and keys still exist, so an
/// interrupted bench can remove them.
static OPEN_RUNS: Mutex<Vec<Settings>> = Mutex::new(Vec::new());

/// Runs the benchmark and prints (and optionally writes) the results. On
/// SIGTERM or Ctrl-C it stops the replicas and removes what the current run
/// declared, rather than leaving a preloaded queue behind.
pub async fn run(base: &Settings, o: &BenchOptions) -> anyhow::Result<()> {
    let shutdown = crate::shutdown::on_signal();
    tokio::select! {
        result = run_plan(base, o) => result,
        () = shutdown.cancelled() => {
            // Dropping the plan has killed the replicas.
            eprintln!("interrupted: removing this run's queues, exchanges and keys");
            let open = std::mem::take(&mut *OPEN_RUNS.lock().expect("lock"));
            for settings in open {
                let name = format!("{}-cleanup", settings.redis.key_prefix.trim_end_matches(':'));
                if let Ok(connection) = broker::connect(&settings.amqp.url, &name).await {
                    remove_run(&connection, &settings).await;
                    let _ = connection.close(200, "bench interrupted".into()).await;
                }
            }
            anyhow::bail!("interrupted")
        }
    }
}

/// Deletes a run's topology and Redis keys.
async fn remove_run(connection: &lapin::Connection, settings: &Settings) {
    // Channels are closed before the connection: one merely dropped sends
    // its close too late and lapin logs the race as an error.
    if let Ok(channel) = connection.create_channel().await {
        broker::delete_topology(&channel, &settings.amqp).await;
        let _ = channel.close(200, "bench done".into()).await;
    }
    if let Ok(store) = Store::new(&settings.redis, &settings.worker) {
        let _ = store.delete_all().await;
    }
    OPEN_RUNS
        .lock()
        .expect("lock")
        .retain(|s| s.redis.key_prefix != settings.redis.key_prefix);
}

async fn run_plan(base: &Settings, o: &BenchOptions) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locating this binary")?;
    let mut plan: Vec<(Workload, usize, Mode)> = Vec::new();
    for &w in &o.workloads {
        for &r in &o.replicas {
            for &m in &o.modes {
                plan.push((w, r, m));
            }
        }
    }
    if o.workloads.contains(&Workload::Hot)
        && !o.replicas.contains(&o.hot_replicas)
        && o.hot_replicas > 0
    {
        for m in [Mode::Group, Mode::Naive] {
            if o.modes.contains(&m) {
                plan.push((Workload::Hot, o.hot_replicas, m));
            }
        }
    }
    let mut plan: Vec<(Workload, usize, Mode, u16)> =
        plan.into_iter().map(|(w, r, m)| (w, r, m, 0)).collect();
    if o.partitions > 0 {
        for &w in &o.workloads {
            plan.push((w, o.hot_replicas.max(1), Mode::Group, o.partitions));
        }
    }
    let runs = plan.len() * o.repeat as usize;
    let mut results = Vec::new();
    for round in 1..=o.repeat {
        for &(workload, replicas, mode, partitions) in &plan {
            let partitioned = if partitions > 0 {
                format!(" partitioned P={partitions}")
            } else {
                String::new()
            };
            eprintln!(
                "== run {}/{runs}: {workload:?} x{replicas} {mode:?}{partitioned}",
                results.len() + 1,
            );
            let mut r = throughput_run(base, o, &exe, workload, replicas, mode, partitions).await?;
            r.round = round;
            eprintln!(
                "   {:.0} commands/s ({} in {:.2} s), replica CPU {:.0} us/command, {:.2} conflicts/commit, {:.1} commands/commit, mean commit {:.1} ms, mean publish+confirm {:.1} ms, mean receipt-to-ack {:.1} ms",
                r.rate,
                r.commands,
                r.seconds,
                1e6 * ratio(r.cpu_seconds, r.commands as f64),
                ratio(r.conflicts, r.commits),
                ratio(r.commands as f64, r.commits),
                r.mean_commit.as_secs_f64() * 1e3,
                r.mean_publish.as_secs_f64() * 1e3,
                r.mean_process.as_secs_f64() * 1e3,
            );
            results.push(r);
        }
    }
    let mut latencies = Vec::new();
    let hot_replicas = results
        .iter()
        .find(|r| r.workload == Workload::Hot && r.mode == Mode::Group && r.partitions == 0)
        .map(|r| r.replicas);
    if let Some(replicas) = hot_replicas
        && o.latency_secs > 0
    {
        // The preloaded peak overstates what the broker sustains while it
        // also takes the commands' publishes, so the paced rates are
        // fractions of the peak measured that way.
        let hot = median_rate(&results, Workload::Hot, replicas, Mode::Group);
        let mut peak = 0.0;
        for mode in [Mode::Null, Mode::Group] {
            eprintln!("== live peak: hot x{replicas} {mode:?}, publishing while consuming");
            let n = ((hot * o.latency_secs as f64) as usize).max(1000);
            let l = latency_run(base, o, &exe, replicas, mode, n, None).await?;
            eprintln!("   {:.0} commands/s, p99 {:?}", l.rate, l.p99);
            if mode == Mode::Group {
                peak = l.rate;
            }
            latencies.push(l);
        }
        for &fraction in &o.latency_at {
            for mode in [Mode::Null, Mode::Group] {
                let rate = peak * fraction;
                eprintln!(
                    "== latency: hot x{replicas} {mode:?} at {rate:.0} commands/s ({fraction} x live peak) for {} s",
                    o.latency_secs
                );
                let n = ((rate * o.latency_secs as f64) as usize).max(100);
                let mut l = latency_run(base, o, &exe, replicas, mode, n, Some(rate)).await?;
                l.fraction = Some(fraction);
                eprintln!("   p50 {:?} p99 {:?} max {:?}", l.p50, l.p99, l.max);
                latencies.push(l);
            }
        }
    }
    let report = render(o, &results, &latencies).await;
    println!("{report}");
    if let Some(path) = &o.out {
        std::fs::write(path, &report).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}

/// Settings with names unique to one run.
fn isolated(base: &Settings) -> (Settings, String) {
    let prefix = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    (base.clone().under_prefix(&prefix), prefix)
}

/// Commands for a workload, plus the defines that must precede them.
fn traffic(
    workload: Workload,
    n: usize,
    duplicates: f64,
    seed: u64,
) -> (Vec<CommandBody>, Vec<CommandBody>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let resources: Vec<ResourceId> = match workload {
        Workload::Hot | Workload::Sellout => vec![ResourceId::try_from("hot").expect("id")],
        Workload::Uniform => (0..10_000)
            .map(|i| ResourceId::try_from(format!("res-{i}")).expect("id"))
            .collect(),
    };
    let capacity = match workload {
        Workload::Hot => u32::try_from(n * 2).unwrap_or(u32::MAX),
        Workload::Sellout => u32::try_from(n / 100).unwrap_or(u32::MAX).max(1),
        Workload::Uniform => u32::try_from(n * 2 / resources.len())
            .unwrap_or(u32::MAX)
            .max(1),
    };
    let defines = resources
        .iter()
        .map(|r| CommandBody::Define {
            command_id: CommandId::try_from(format!("define-{r}")).expect("id"),
            resource_id: r.clone(),
            capacity,
            per_customer_limit: None,
        })
        .collect();
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
struct Rig {
    settings: Settings,
    prefix: String,
    connection: lapin::Connection,
    /// The channel consuming the events, closed before the topology goes.
    events: lapin::Channel,
    publisher: Publisher,
    /// Outcome event arrival times, by command id (first arrival only).
    seen: Arc<Mutex<Seen>>,
}

#[derive(Default)]
struct Seen {
    events: usize,
    first: Option<Instant>,
    last: Option<Instant>,
    published_at: HashMap<String, Instant>,
    latencies: Vec<Duration>,
}

impl Rig {
    async fn new(base: &Settings) -> anyhow::Result<Rig> {
        let (settings, prefix) = isolated(base);
        OPEN_RUNS.lock().expect("lock").push(settings.clone());
        let a = &settings.amqp;
        let connection = broker::connect(&a.url, &format!("{prefix}-bench"))
            .await
            .context("connecting to the broker")?;
        let events = connection.create_channel().await?;
        broker::declare_topology(&events, a).await?;
        let mut consumer = broker::subscribe_to_events(&events, a, "bench").await?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let now = Instant::now();
                let id = d
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(|c| c.to_string());
                let mut s = sink.lock().expect("lock");
                s.events += 1;
                s.first.get_or_insert(now);
                s.last = Some(now);
                if let Some(at) = id.and_then(|id| s.published_at.remove(&id)) {
                    s.latencies.push(now - at);
                }
            }
        });
        let publisher = Publisher::open(&connection, a.confirm_timeout()).await?;
        Ok(Rig {
            settings,
            prefix,
            connection,
            events,
            publisher,
            seen,
        })
    }

    /// One command published with a confirm; the future owns what it needs,
    /// so it can be spawned.
    fn publish(
        &self,
        body: &CommandBody,
    ) -> impl std::future::Future<Output = Result<(), broker::PublishError>> + Send + 'static {
        let (publisher, exchange) = (
            self.publisher.clone(),
            self.settings.amqp.commands_exchange.clone(),
        );
        let (routing_key, json) = (body.resource_id().to_string(), body.to_json());
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

    async fn publish_all(&self, bodies: &[CommandBody], what: &str) -> anyhow::Result<()> {
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

    async fn wait_for_events(&self, n: usize, what: &str) -> anyhow::Result<()> {
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

    fn reset(&self) {
        *self.seen.lock().expect("lock") = Seen::default();
    }

    async fn cleanup(self) {
        let _ = self.events.close(200, "bench done".into()).await;
        remove_run(&self.connection, &self.settings).await;
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// Worker replica processes of one run.
struct Replicas {
    children: Vec<(Child, u16)>,
}

impl Replicas {
    fn spawn(
        exe: &std::path::Path,
        settings: &Settings,
        prefix: &str,
        n: usize,
        mode: Mode,
        prefetch: u16,
    ) -> anyhow::Result<Replicas> {
        let a = &settings.amqp;
        let mut children = Vec::new();
        for i in 0..n {
            let port = free_port()?;
            let mut cmd = Command::new(exe);
            match mode {
                Mode::Null => cmd.arg("null-worker"),
                Mode::Group | Mode::Naive => cmd.arg("run"),
            };
            cmd.args(["--name", &format!("{prefix}-w{i}")])
                .env("AMQP_URL", &a.url)
                .env("REDIS_URL", &settings.redis.url)
                .env("RW_AMQP__COMMANDS_EXCHANGE", &a.commands_exchange)
                .env("RW_AMQP__COMMANDS_QUEUE", &a.commands_queue)
                .env("RW_AMQP__DEAD_LETTER_EXCHANGE", &a.dead_letter_exchange)
                .env("RW_AMQP__DEAD_LETTER_QUEUE", &a.dead_letter_queue)
                .env("RW_AMQP__EVENTS_EXCHANGE", &a.events_exchange)
                .env("RW_AMQP__PREFETCH", prefetch.to_string())
                .env("RW_AMQP__PARTITIONS", a.partitions.to_string())
                .env("RW_AMQP__PARTITION_EXCHANGE", &a.partition_exchange)
                .env("RW_REDIS__KEY_PREFIX", &settings.redis.key_prefix)
                .env("RW_WORKER__GROUP_COMMIT", (mode != Mode::Naive).to_string())
                .env("RW_HTTP__PORT", port.to_string())
                .env("RW_HTTP__BIND", "127.0.0.1")
                .env("RW_LOG__LEVEL", "warn")
                .env("RW_LOG__FORMAT", "json")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            children.push((cmd.spawn().context("starting a replica")?, port));
        }
        Ok(Replicas { children })
    }

    /// CPU time (user + system) the replicas have used so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        // utime and stime are fields 14 and 15 of /proc/PID/stat, counted
        // after the parenthesised command name, in clock ticks: USER_HZ,
        // which Linux fixes at 100 for this interface. Counted from the
        // replica's start, so its start-up is included (a few ms).
        self.children
            .iter()
            .filter_map(|(c, _)| {
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", c.id())).ok()?;
                let after_name = stat.rsplit_once(')')?.1;
                let fields: Vec<&str> = after_name.split_whitespace().collect();
                let ticks =
                    fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
                Some(ticks as f64 / 100.0)
            })
            .sum()
    }

    /// Peak resident memory of each replica (VmHWM), in KiB.
    fn peak_rss(&self) -> Vec<u64> {
        self.children
            .iter()
            .map(|(c, _)| {
                std::fs::read_to_string(format!("/proc/{}/status", c.id()))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmHWM:"))
                            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Sums of selected counters, per replica, from `/metrics`.
    async fn scrape(&self) -> Vec<HashMap<String, f64>> {
        let mut all = Vec::new();
        for (_, port) in &self.children {
            all.push(scrape(*port).await.unwrap_or_default());
        }
        all
    }

    fn stop(mut self) {
        for (c, _) in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for (c, _) in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for (c, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn throughput_run(
    base: &Settings,
    o: &BenchOptions,
    exe: &std::path::Path,
    workload: Workload,
    replicas: usize,
    mode: Mode,
    partitions: u16,
) -> anyhow::Result<RunResult> {
    let mut base = base.clone();
    base.amqp.partitions = partitions;
    let rig = Rig::new(&base).await?;
    let (defines, bodies) = traffic(workload, o.commands, o.duplicates, o.seed);
    rig.publish_all(&defines, "defining").await?;
    rig.publish_all(&bodies, "preloading").await?;
    let total = defines.len() + bodies.len();
    let workers = Replicas::spawn(exe, &rig.settings, &rig.prefix, replicas, mode, o.prefetch)?;
    let waited = rig.wait_for_events(total, "outcomes").await;
    let metrics = workers.scrape().await;
    let peak_rss_kib = workers.peak_rss();
    let cpu_seconds = workers.cpu_seconds();
    workers.stop();
    let (first, last) = {
        let s = rig.seen.lock().expect("lock");
        (s.first, s.last)
    };
    rig.cleanup().await;
    waited?;
    let seconds = match (first, last) {
        (Some(f), Some(l)) => (l - f).as_secs_f64(),
        _ => 0.0,
    };
    let sum = |name: &str| {
        metrics
            .iter()
            .map(|m| m.get(name).copied().unwrap_or(0.0))
            .sum::<f64>()
    };
    Ok(RunResult {
        round: 0,
        workload,
        mode,
        partitions,
        replicas,
        commands: total,
        seconds,
        rate: (total.saturating_sub(1)) as f64 / seconds.max(1e-9),
        commits: sum(crate::metrics::COMMITS),
        conflicts: sum(crate::metrics::WATCH_CONFLICTS),
        per_replica: metrics
            .iter()
            .map(|m| {
                m.get(crate::metrics::COMMANDS)
                    .or(m.get(NULL_COMMANDS))
                    .copied()
                    .unwrap_or(0.0)
            })
            .collect(),
        peak_rss_kib,
        cpu_seconds,
        mean_commit: mean(
            sum("reservation_commit_seconds_sum"),
            sum("reservation_commit_seconds_count"),
        ),
        mean_publish: mean(
            sum("reservation_publish_seconds_sum"),
            sum("reservation_publish_seconds_count"),
        ),
        mean_process: mean(
            sum("reservation_process_seconds_sum"),
            sum("reservation_process_seconds_count"),
        ),
    })
}

fn mean(total_seconds: f64, count: f64) -> Duration {
    Duration::from_secs_f64(ratio(total_seconds, count).max(0.0))
}

/// Publishes `n` `hot` commands while the replicas consume, paced at `pace`
/// commands/s or as fast as the bench can publish, and measures each
/// command's publish-to-outcome latency.
async fn latency_run(
    base: &Settings,
    o: &BenchOptions,
    exe: &std::path::Path,
    replicas: usize,
    mode: Mode,
    n: usize,
    pace: Option<f64>,
) -> anyhow::Result<Latency> {
    let rig = Rig::new(base).await?;
    let (defines, bodies) = traffic(Workload::Hot, n, 0.0, o.seed + 1);
    rig.publish_all(&defines, "defining").await?;
    let workers = Replicas::spawn(exe, &rig.settings, &rig.prefix, replicas, mode, o.prefetch)?;
    rig.wait_for_events(defines.len(), "defining").await?;
    rig.reset();
    let bar = progress(n as u64, if pace.is_some() { "paced" } else { "live" });
    let stamp = |chunk: &[CommandBody]| {
        let mut s = rig.seen.lock().expect("lock");
        let now = Instant::now();
        for b in chunk {
            s.published_at.insert(b.command_id().to_string(), now);
        }
    };
    match pace {
        Some(rate) => {
            // Every 10 ms, the commands due by then.
            let started = Instant::now();
            let mut sent = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while sent < n {
                tick.tick().await;
                let due = ((started.elapsed().as_secs_f64() * rate) as usize).min(n);
                let chunk = &bodies[sent..due];
                stamp(chunk);
                let publishes: Vec<_> = chunk.iter().map(|b| rig.publish(b)).collect();
                // Confirms are awaited concurrently so pacing is not held up
                // by them.
                tokio::spawn(futures_util::future::join_all(publishes));
                sent = due;
                bar.set_position(sent as u64);
            }
        }
        None => {
            // As fast as confirms allow, the same window as `publish_all`.
            let mut stream = futures_util::stream::iter(bodies.iter().map(|b| {
                stamp(std::slice::from_ref(b));
                rig.publish(b)
            }))
            .buffer_unordered(512);
            while let Some(r) = stream.next().await {
                r?;
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let waited = rig.wait_for_events(n, "outcomes").await;
    workers.stop();
    let (mut latencies, first, last) = {
        let mut s = rig.seen.lock().expect("lock");
        (std::mem::take(&mut s.latencies), s.first, s.last)
    };
    rig.cleanup().await;
    waited?;
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let achieved = match (first, last) {
        (Some(f), Some(l)) => n.saturating_sub(1) as f64 / (l - f).as_secs_f64().max(1e-9),
        _ => 0.0,
    };
    Ok(Latency {
        mode,
        fraction: None,
        rate: pace.unwrap_or(achieved),
        samples: latencies.len(),
        p50: pick(0.50),
        p99: pick(0.99),
        max: *latencies.last().expect("samples"),
    })
}

/// The median rate of the runs of one plan entry (without partitions).
fn median_rate(results: &[RunResult], w: Workload, n: usize, m: Mode) -> f64 {
    let mut rates: Vec<f64> = results
        .iter()
        .filter(|r| r.workload == w && r.replicas == n && r.mode == m && r.partitions == 0)
        .map(|r| r.rate)
        .collect();
    median(&mut rates).unwrap_or(0.0)
}

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// The runs of each plan entry, in plan order, each entry's runs sorted by
/// rate.
fn by_entry(results: &[RunResult]) -> Vec<Vec<&RunResult>> {
    let mut entries: Vec<Vec<&RunResult>> = Vec::new();
    for r in results {
        let same = |x: &&RunResult| {
            (x.workload, x.replicas, x.mode, x.partitions)
                == (r.workload, r.replicas, r.mode, r.partitions)
        };
        match entries.iter_mut().find(|e| same(&e[0])) {
            Some(e) => e.push(r),
            None => entries.push(vec![r]),
        }
    }
    for e in &mut entries {
        e.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    }
    entries
}

/// The null worker's command counter.
const NULL_COMMANDS: &str = "null_commands_total";

/// `reservation-worker null-worker`: consume, publish an outcome of the same
/// size with a confirm, ack. No Redis, no decoding: the broker's limit.
pub async fn null_worker(
    settings: &Settings,
    name: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let a = &settings.amqp;
    let connection = broker::connect(&a.url, name).await?;
    let publisher = Publisher::open(&connection, a.confirm_timeout()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(a.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            a.commands_queue.as_str().into(),
            name.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // The size of a typical accepted reserve event.
    let body = format!(
        r#"{{"event_id":"{}","command_id":"c-000000","command":"reserve","outcome":"accepted","resource_id":"hot","customer_id":"u-00000","quantity":1,"remaining":100000,"version":100000,"occurred_at":"2026-11-23T10:00:00Z"}}"#,
        uuid::Uuid::nil()
    );
    let body = Arc::new(body.into_bytes());
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = consumer.next() => match d { Some(d) => d?, None => break },
        };
        let (publisher, body, exchange) =
            (publisher.clone(), body.clone(), a.events_exchange.clone());
        tracker.spawn(async move {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let correlation = String::from_utf8_lossy(&delivery.data)
                .split("\"command_id\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_default()
                .to_owned();
            let published = publisher
                .publish(Message {
                    exchange: &exchange,
                    routing_key: "reserve.accepted",
                    body: &body,
                    message_id: Some(&id),
                    correlation_id: Some(&correlation),
                    ..Default::default()
                })
                .await;
            if published.is_ok() && delivery.ack(BasicAckOptions::default()).await.is_ok() {
                metrics::counter!(NULL_COMMANDS).increment(1);
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    publisher.close().await;
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

async fn scrape(port: u16) -> anyhow::Result<HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let mut sums = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or(name_labels);
        if let Ok(v) = value.parse::<f64>() {
            *sums.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    Ok(sums)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn progress(len: u64, what: &str) -> ProgressBar {
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

fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

async fn render(o: &BenchOptions, results: &[RunResult], latencies: &[Latency]) -> String {
    let mut md = String::new();
    let args: Vec<String> = std::env::args().collect();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `{}` on {} UTC.\n",
        args.join(" ").replace(
            &*std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            "reservation-worker"
        ),
        time::OffsetDateTime::now_utc().date()
    );
    let _ = writeln!(md, "Machine: {}.\n", machine());
    let _ = writeln!(
        md,
        "Each run preloads {} commands ({:.0} % duplicates) into a fresh quorum queue, then starts the replicas as separate processes (prefetch {}) and measures from the first outcome event to the last; broker, Redis, replicas and the bench share the machine. `null` consumes, publishes an outcome of the same size with a confirm and acks, with no Redis: the broker's limit. `group` is the worker with group commit (default), `naive` the same worker with one WATCH/MULTI transaction per command.\n",
        o.commands,
        o.duplicates * 100.0,
        o.prefetch
    );
    if o.repeat > 1 {
        let _ = writeln!(
            md,
            "The plan ran {} rounds, one entry after another in each round. Each row shows the median of its entry's commands/s; `range` is the slowest and fastest run; peak RSS is the largest of all its runs, and the other columns come from the run with the median rate (the upper one of the middle two for an even count). Ratios are taken between runs of the same round, and the table gives their median and every round's value.\n",
            o.repeat
        );
    }
    let _ = writeln!(
        md,
        "| workload | replicas | mode | commands/s | range | seconds | replica CPU (µs/command) | conflicts/commit | commands/commit | per-replica share | peak RSS (MiB) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for runs in by_entry(results) {
        let r = runs[runs.len() / 2];
        let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        let rate = median(&mut rates).unwrap_or(0.0);
        let range = format!("{:.0}–{:.0}", rates[0], rates[rates.len() - 1]);
        let total: f64 = r.per_replica.iter().sum();
        let shares: Vec<String> = r
            .per_replica
            .iter()
            .map(|c| format!("{:.0}%", 100.0 * ratio(*c, total)))
            .collect();
        let rss = runs
            .iter()
            .flat_map(|r| &r.peak_rss_kib)
            .map(|k| *k as f64 / 1024.0)
            .fold(0.0, f64::max);
        let (conflicts, per_commit) = if r.mode == Mode::Null {
            ("-".to_string(), "-".to_string())
        } else {
            (
                format!("{:.2}", ratio(r.conflicts, r.commits)),
                format!("{:.1}", ratio(r.commands as f64, r.commits)),
            )
        };
        let _ = writeln!(
            md,
            "| {:?} | {} | {} | {:.0} | {} | {:.2} | {:.0} | {} | {} | {} | {:.1} |",
            r.workload,
            r.replicas,
            if r.partitions > 0 {
                format!("{:?} P={}", r.mode, r.partitions)
            } else {
                format!("{:?}", r.mode)
            },
            rate,
            range,
            r.seconds,
            1e6 * ratio(r.cpu_seconds, r.commands as f64),
            conflicts,
            per_commit,
            shares.join(" / "),
            rss
        );
    }
    let _ = writeln!(md, "\n## Ratios (same round)\n");
    let _ = writeln!(md, "| workload | replicas | group / null | group / naive |");
    let _ = writeln!(md, "|---|---|---|---|");
    let mut pairs: Vec<(Workload, usize)> = results
        .iter()
        .filter(|r| r.partitions == 0)
        .map(|r| (r.workload, r.replicas))
        .collect();
    pairs.sort_by_key(|&(w, n)| (n, w as u8));
    pairs.dedup();
    for (w, n) in pairs {
        let paired = |other: Mode| {
            let mut per_round: Vec<f64> = (1..=o.repeat)
                .filter_map(|round| {
                    let find = |m: Mode| {
                        results.iter().find(|r| {
                            r.round == round
                                && r.workload == w
                                && r.replicas == n
                                && r.mode == m
                                && r.partitions == 0
                        })
                    };
                    Some(ratio(find(Mode::Group)?.rate, find(other)?.rate))
                })
                .collect();
            let listed: Vec<String> = per_round.iter().map(|x| format!("{x:.2}")).collect();
            match median(&mut per_round) {
                None => "-".to_string(),
                Some(m) if listed.len() == 1 => format!("{m:.2}"),
                Some(m) => format!("**{m:.2}** ({})", listed.join(", ")),
            }
        };
        let _ = writeln!(
            md,
            "| {w:?} | {n} | {} | {} |",
            paired(Mode::Null),
            paired(Mode::Naive)
        );
    }
    if !latencies.is_empty() {
        let _ = writeln!(
            md,
            "\n## Latency\n\nPublish-to-outcome-event latency with `hot` traffic, the commands published while the replicas consume, so the broker takes the commands' publishes as well as serving the replicas (in the throughput runs above the queue was preloaded). The `live peak` rows publish as fast as the bench can; their rate is the outcomes/s achieved, and their latency is mostly time queued behind the backlog. The other rows are paced at a fraction of the group worker's live peak, for the null worker and the group worker alike.\n"
        );
        let _ = writeln!(
            md,
            "| mode | rate | of live peak | samples | p50 ms | p99 ms | max ms |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for l in latencies {
            let _ = writeln!(
                md,
                "| {:?} | {:.0}/s | {} | {} | {:.1} | {:.1} | {:.1} |",
                l.mode,
                l.rate,
                l.fraction
                    .map_or("live peak".to_string(), |f| format!("{f:.2}")),
                l.samples,
                l.p50.as_secs_f64() * 1e3,
                l.p99.as_secs_f64() * 1e3,
                l.max.as_secs_f64() * 1e3
            );
        }
    }
    md
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.0} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let redis = Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .nth(2)
                .unwrap_or("")
                .trim_start_matches("v=")
                .to_owned()
        })
        .unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM, Redis {redis}, RabbitMQ on the same host")
}
