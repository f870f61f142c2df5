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

mod chart;
pub mod holds;
mod plan;
mod replicas;
mod report;
mod rig;
mod runs;

pub use plan::BenchOptions;
pub use replicas::null_worker;

use anyhow::Context as _;
use plan::{Mode, Workload, median_rate, ratio};
use reservation_worker::config::Settings;

/// Runs the benchmark and prints (and optionally writes) the results. On
/// SIGTERM or Ctrl-C it stops the replicas and removes what the current run
/// declared, rather than leaving a preloaded queue behind.
pub async fn run(base: &Settings, o: &BenchOptions) -> anyhow::Result<()> {
    let shutdown = reservation_worker::shutdown::on_signal();
    tokio::select! {
        result = run_plan(base, o) => result,
        () = shutdown.cancelled() => {
            // Dropping the plan has killed the replicas.
            eprintln!("interrupted: removing this run's queues, exchanges and keys");
            rig::remove_open_runs().await;
            anyhow::bail!("interrupted")
        }
    }
}

async fn run_plan(base: &Settings, o: &BenchOptions) -> anyhow::Result<()> {
    // The shipped settings unless told otherwise: the null worker and the
    // worker run with the same prefetch.
    let o = &BenchOptions {
        prefetch: Some(o.prefetch.unwrap_or(base.amqp.prefetch)),
        ..o.clone()
    };
    let exe = std::env::current_exe().context("locating this binary")?;
    if o.modes.contains(&Mode::Baseline) {
        let Some(baseline) = &o.baseline_exe else {
            anyhow::bail!("mode `baseline` runs the binary `--baseline-exe` names: give one");
        };
        anyhow::ensure!(
            baseline.is_file(),
            "--baseline-exe {}: no such file",
            baseline.display()
        );
    }
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
            let mut r =
                runs::throughput(base, o, &exe, workload, replicas, mode, partitions).await?;
            r.round = round;
            eprintln!(
                "   {:.0} commands/s ({} in {:.2} s), replica CPU {:.0} us/command, Redis CPU {} us/command, broker CPU {} us/command, {:.2} conflicts/commit, {:.1} commands/commit, mean commit {:.1} ms, mean publish+confirm {:.1} ms, mean receipt-to-ack {:.1} ms",
                r.rate,
                r.commands,
                r.seconds,
                r.replica_us_per_command(),
                r.redis_us_per_command(),
                r.broker_us_per_command(),
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
            let l = runs::latency(base, o, &exe, replicas, mode, n, None).await?;
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
                let mut l = runs::latency(base, o, &exe, replicas, mode, n, Some(rate)).await?;
                l.fraction = Some(fraction);
                eprintln!("   p50 {:?} p99 {:?} max {:?}", l.p50, l.p99, l.max);
                latencies.push(l);
            }
        }
    }
    let Some(path) = &o.out else {
        println!("{}", report::render(o, &results, &latencies, &[]).await);
        return Ok(());
    };
    let charts = chart::write_all(path, &results, &latencies)?;
    let report = report::render(o, &results, &latencies, &charts).await;
    println!("{report}");
    // What the bench writes goes between the markers; the rest of an
    // existing file (sections written by hand) stays.
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    std::fs::write(path, report::splice(&existing, &report))
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("results written to {}", path.display());
    for chart in &charts {
        eprintln!("chart written to {}", chart.path.display());
    }
    Ok(())
}
