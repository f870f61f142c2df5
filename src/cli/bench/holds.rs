//! `reservation-worker bench-holds`: holds at scale. Many live holds across
//! many resources, then a wave that falls due at once, swept by worker
//! replicas while the other holds stay live. It measures:
//!
//! - Redis memory per live hold (every key a hold writes: its idempotency
//!   record, history entry, applied entry, reservation, holding and both
//!   due-time index entries), from `INFO memory` before and after;
//! - the sweep: from the wave's `expires_at` to the last `expire.accepted`
//!   event received, and each expiry's lag (receipt, by Redis's clock,
//!   minus `expires_at`), p50 / p99 / max.
//!
//! The holds are decided in the benchmark's own process through the same
//! load / decide / commit path a worker takes (`admin::decide_and_commit`),
//! which sets up a million holds in about a minute instead of publishing
//! them; the wave's expiries go through the real replicas and broker.

use super::plan::Mode;
use super::replicas::Replicas;
use super::rig::{Rig, progress, remove_open_runs};
use anyhow::Context as _;
use futures_util::StreamExt;
use reservation_worker::admin::{self, Store};
use reservation_worker::config::Settings;
use reservation_worker::domain::{CommandId, ResourceId, Submission};
use reservation_worker::message::{self, CommandBody};
use reservation_worker::producer::Events;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Options of `reservation-worker bench-holds`.
#[derive(Debug, Clone, clap::Args)]
pub struct HoldsOptions {
    /// Live holds to set up.
    #[arg(long, default_value_t = 1_000_000)]
    pub holds: usize,
    /// Resources they spread over.
    #[arg(long, default_value_t = 10_000)]
    pub resources: usize,
    /// Holds in the wave that falls due at once (one per resource, round
    /// robin).
    #[arg(long, default_value_t = 10_000)]
    pub wave: usize,
    /// How long the wave's holds last, in seconds.
    #[arg(long, default_value_t = 5)]
    pub wave_secs: u32,
    /// Worker replicas sweeping.
    #[arg(long, default_value_t = 2)]
    pub replicas: usize,
    /// Transactions in flight while setting up.
    #[arg(long, default_value_t = 32)]
    pub in_flight: usize,
    /// Write the results as Markdown to this file.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
}

/// What was measured.
#[derive(Debug, Default)]
struct Figures {
    holds: usize,
    resources: usize,
    bytes_per_hold: f64,
    setup_secs: f64,
    wave: usize,
    /// From the first to the last `expires_at` of the wave, in ms.
    wave_spread_ms: u64,
    /// From the wave's last `expires_at` to its last expiry received.
    sweep_after_last_ms: i64,
    lag_p50_ms: i64,
    lag_p99_ms: i64,
    lag_max_ms: i64,
    replicas: usize,
}

/// Runs it, removing what it made however it ends.
pub async fn run(base: &Settings, o: &HoldsOptions) -> anyhow::Result<()> {
    let shutdown = reservation_worker::shutdown::on_signal();
    tokio::select! {
        result = measure(base, o) => result,
        () = shutdown.cancelled() => {
            eprintln!("interrupted: removing this run's queues, exchanges and keys");
            remove_open_runs().await;
            anyhow::bail!("interrupted")
        }
    }
}

async fn measure(base: &Settings, o: &HoldsOptions) -> anyhow::Result<()> {
    anyhow::ensure!(o.resources > 0, "--resources must be at least 1");
    let exe = std::env::current_exe().context("locating this binary")?;
    let rig = Rig::new(base).await?;
    let result = figures(&rig, &exe, o).await;
    rig.cleanup().await;
    let f = result?;
    let table = render(&f);
    println!("{table}");
    if let Some(path) = &o.out {
        std::fs::write(path, &table).with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
    }
    Ok(())
}

fn resource(i: usize) -> ResourceId {
    ResourceId::try_from(format!("venue-{i}")).expect("short id")
}

fn submission(body: &CommandBody) -> Submission {
    message::decode(&body.to_json()).expect("a well-formed body")
}

/// Commits each batch with the worker's own transaction, `in_flight` at
/// once, retrying lost races.
async fn commit_all(
    store: &Store,
    batches: Vec<(ResourceId, Vec<Submission>)>,
    in_flight: usize,
    what: &str,
) -> anyhow::Result<()> {
    let bar = progress(batches.len() as u64, what);
    let mut commits =
        futures_util::stream::iter(batches.into_iter().map(|(r, batch)| async move {
            loop {
                if admin::decide_and_commit(store, &r, &batch).await?.is_some() {
                    return anyhow::Ok(());
                }
            }
        }))
        .buffer_unordered(in_flight.max(1));
    while let Some(r) = commits.next().await {
        r?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}

async fn figures(rig: &Rig, exe: &std::path::Path, o: &HoldsOptions) -> anyhow::Result<Figures> {
    let store = Store::new(&rig.settings.redis)?;
    let defines = (0..o.resources)
        .map(|i| {
            let body = CommandBody::Define {
                command_id: CommandId::try_from(format!("define-{i}")).expect("id"),
                resource_id: resource(i),
                capacity: u32::MAX,
                per_customer_limit: None,
                price: None,
                budget_id: None,
            };
            (resource(i), vec![submission(&body)])
        })
        .collect();
    commit_all(&store, defines, o.in_flight, "defining resources").await?;

    // The live holds: an hour each, every resource's in one transaction.
    let before = store.used_memory().await?;
    let per = o.holds.div_ceil(o.resources);
    let batches: Vec<(ResourceId, Vec<Submission>)> = (0..o.resources)
        .map(|r| {
            let holds = (0..per)
                .map(|k| r * per + k)
                .filter(|n| *n < o.holds)
                .map(|n| {
                    submission(&CommandBody::Hold {
                        command_id: CommandId::try_from(format!("h-{n}")).expect("id"),
                        resource_id: resource(r),
                        customer_id: format!("u-{n}").as_str().try_into().expect("id"),
                        quantity: 1,
                        hold_secs: 3600,
                    })
                })
                .collect();
            (resource(r), holds)
        })
        .collect();
    let started = Instant::now();
    commit_all(&store, batches, o.in_flight, "taking live holds").await?;
    let setup_secs = started.elapsed().as_secs_f64();
    let after = store.used_memory().await?;
    let bytes_per_hold = after.saturating_sub(before) as f64 / o.holds.max(1) as f64;

    // The replicas sweep from now on; the events are watched before the
    // wave is taken.
    let mut settings = rig.settings.clone();
    settings.http.enabled = true;
    let replicas = Replicas::spawn(exe, &settings, &rig.prefix, o.replicas, Mode::Group, 1000)?;
    let mut events =
        Events::subscribe(&rig.settings.amqp, &format!("{}-holds-events", rig.prefix)).await?;
    // Redis's clock minus this process's, so receipts are timed by Redis's.
    let offset = {
        let local = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        store.time().await? as i128 - local
    };

    let wave: Vec<(ResourceId, Vec<Submission>)> = (0..o.wave)
        .map(|n| {
            let r = resource(n % o.resources);
            let body = CommandBody::Hold {
                command_id: CommandId::try_from(format!("wave-{n}")).expect("id"),
                resource_id: r.clone(),
                customer_id: format!("w-{n}").as_str().try_into().expect("id"),
                quantity: 1,
                hold_secs: o.wave_secs,
            };
            (r, vec![submission(&body)])
        })
        .collect();
    commit_all(&store, wave, o.in_flight, "taking the wave of holds").await?;

    let wanted: HashSet<String> = (0..o.wave).map(|n| format!("expire:wave-{n}")).collect();
    let mut lags: Vec<i64> = Vec::with_capacity(o.wave);
    let mut expires: Vec<i64> = Vec::with_capacity(o.wave);
    let mut last_receipt = 0_i128;
    let mut seen = HashSet::new();
    let bar = progress(o.wave as u64, "waiting for the wave's expiries");
    let deadline = Instant::now() + Duration::from_secs(u64::from(o.wave_secs) + 600);
    while seen.len() < o.wave {
        let next = tokio::time::timeout_at(deadline.into(), events.next())
            .await
            .map_err(|_| anyhow::anyhow!("gave up: {} of {} expiries", seen.len(), o.wave))?;
        let Some(event) = next else {
            anyhow::bail!("the events subscription ended")
        };
        let received = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000 + offset;
        let envelope = event?.envelope()?;
        let id = envelope.event.command_id.as_str();
        if !wanted.contains(id) || !seen.insert(id.to_owned()) {
            continue;
        }
        let expires_at = envelope
            .event
            .details
            .expires_at
            .context("an expiry without expires_at")?
            .unix_timestamp_nanos()
            / 1_000_000;
        lags.push((received - expires_at) as i64);
        expires.push(expires_at as i64);
        last_receipt = last_receipt.max(received);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = events.close().await;
    replicas.stop();
    lags.sort_unstable();
    let pct = |p: f64| lags[((lags.len() - 1) as f64 * p).round() as usize];
    let (first, last) = (
        *expires.iter().min().unwrap_or(&0),
        *expires.iter().max().unwrap_or(&0),
    );
    Ok(Figures {
        holds: o.holds,
        resources: o.resources,
        bytes_per_hold,
        setup_secs,
        wave: o.wave,
        wave_spread_ms: (last - first) as u64,
        sweep_after_last_ms: last_receipt as i64 - last,
        lag_p50_ms: pct(0.5),
        lag_p99_ms: pct(0.99),
        lag_max_ms: *lags.last().unwrap_or(&0),
        replicas: o.replicas,
    })
}

fn render(f: &Figures) -> String {
    format!(
        "| figure | value |\n|---|---|\n\
         | live holds | {} across {} resources (set up in {:.1} s) |\n\
         | Redis memory per live hold | {:.0} bytes |\n\
         | wave falling due | {} holds, `expires_at` spread over {} ms |\n\
         | last expiry received after the wave's last `expires_at` | {} ms ({} replicas sweeping) |\n\
         | expiry lag p50 / p99 / max | {} / {} / {} ms |\n",
        f.holds,
        f.resources,
        f.setup_secs,
        f.bytes_per_hold,
        f.wave,
        f.wave_spread_ms,
        f.sweep_after_last_ms,
        f.replicas,
        f.lag_p50_ms,
        f.lag_p99_ms,
        f.lag_max_ms
    )
}
