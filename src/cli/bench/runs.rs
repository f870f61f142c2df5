//! The two kinds of run: throughput with a preloaded queue, and latency
//! with the commands published while the replicas consume.

use super::plan::{BenchOptions, Latency, Mode, RunResult, Workload, mean};
use super::replicas::{NULL_COMMANDS, cpu_seconds_of, local_broker};
use super::rig::{Rig, progress, traffic};
use crate::cli::fairness;
use futures_util::StreamExt;
use reservation_worker::config::Settings;
use reservation_worker::message::CommandBody;
use std::time::{Duration, Instant};

pub(super) async fn throughput(
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
    // Redis's own CPU over the run: what the worker costs it (nothing else
    // should use it meanwhile; `None` if it cannot say).
    let store = reservation_worker::admin::Store::new(&base.redis).ok();
    let redis_cpu = async || store.as_ref()?.cpu_seconds().await.ok();
    // The broker's too, when it runs here: its share of the machine.
    let broker = local_broker();
    let broker_cpu = || broker.and_then(cpu_seconds_of);
    let redis_before = redis_cpu().await;
    let broker_before = broker_cpu();
    let workers = rig.replicas(o.exe_for(mode, exe), replicas, mode, o.prefetch())?;
    let waited = rig.wait_for_events(total, "outcomes").await;
    let redis_cpu_seconds = redis_before
        .zip(redis_cpu().await)
        .map(|(before, after)| after - before);
    let broker_cpu_seconds = broker_before
        .zip(broker_cpu())
        .map(|(before, after)| after - before);
    let metrics = workers.scrape().await;
    let peak_rss_kib = workers.peak_rss();
    let cpu_seconds = workers.cpu_seconds();
    workers.stop();
    let (first, last, unfairness) = {
        let s = rig.seen.lock().expect("lock");
        let unfairness = (mode != Mode::Null)
            .then(|| fairness::of_reserves(&bodies, |id| s.verdicts.get(id.as_str()).copied()));
        (s.first, s.last, unfairness)
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
        commits: sum(reservation_worker::metrics::COMMITS),
        conflicts: sum(reservation_worker::metrics::WATCH_CONFLICTS),
        per_replica: metrics
            .iter()
            .map(|m| {
                // A null worker exports the worker's counters too, at 0.
                m.get(NULL_COMMANDS)
                    .or(m.get(reservation_worker::metrics::COMMANDS))
                    .copied()
                    .unwrap_or(0.0)
            })
            .collect(),
        peak_rss_kib,
        cpu_seconds,
        redis_cpu_seconds,
        broker_cpu_seconds,
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
        unfairness,
    })
}

/// Publishes `n` `hot` commands while the replicas consume, paced at `pace`
/// commands/s or as fast as the bench can publish, and measures each
/// command's publish-to-outcome latency.
pub(super) async fn latency(
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
    let workers = rig.replicas(o.exe_for(mode, exe), replicas, mode, o.prefetch())?;
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
