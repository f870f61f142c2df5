//! What the bench runs and what it measures: the options, the workloads
//! and modes, one run's result, and the statistics over rounds.

use crate::cli::fairness::Unfairness;
use std::time::Duration;

/// Which traffic to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Every command on one resource, capacity for nearly all of them.
    Hot,
    /// `hot` with the resource priced and paid from one budget that lets
    /// each customer buy at most 3 seats in total.
    HotBudget,
    /// One resource that sells out early: most commands are rejections.
    Sellout,
    /// 10,000 resources, commands spread evenly.
    Uniform,
    /// `uniform` with every resource priced and paid from one budget that
    /// lets each customer buy at most 3 seats in total: every take sets
    /// money aside, decides, settles.
    UniformBudget,
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
    /// The worker with group commit, from another build
    /// (`--baseline-exe`): a change's effect, measured in the same run.
    Baseline,
}

/// Options of `reservation-worker bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Commands per run (duplicates included).
    #[arg(long, default_value_t = 100_000)]
    pub commands: usize,
    /// Workloads to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hot,hot-budget,sellout,uniform,uniform-budget"
    )]
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
    /// Prefetch of every replica, the null worker's included [default: the
    /// settings' `amqp.prefetch`, 256 as shipped]
    #[arg(long)]
    pub prefetch: Option<u16>,
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
    /// The binary mode `baseline` runs (`run`, with this run's settings):
    /// another build of the worker, such as the one before a change, built
    /// in a checkout of its own.
    #[arg(long)]
    pub baseline_exe: Option<std::path::PathBuf>,
    /// Seed for the generated traffic.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

impl BenchOptions {
    /// The binary that runs `mode`'s replicas: `this` one, or for
    /// [`Mode::Baseline`] the one [`BenchOptions::baseline_exe`] names.
    pub fn exe_for<'a>(&'a self, mode: Mode, this: &'a std::path::Path) -> &'a std::path::Path {
        match (mode, &self.baseline_exe) {
            (Mode::Baseline, Some(baseline)) => baseline,
            _ => this,
        }
    }

    /// The prefetch every replica runs with, once [`BenchOptions::prefetch`]
    /// is resolved against the settings.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
            .expect("resolved against the settings before the plan runs")
    }
}

/// One measured run.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub round: u32,
    pub workload: Workload,
    pub mode: Mode,
    pub partitions: u16,
    pub replicas: usize,
    pub commands: usize,
    pub seconds: f64,
    pub rate: f64,
    pub commits: f64,
    pub conflicts: f64,
    pub per_replica: Vec<f64>,
    pub peak_rss_kib: Vec<u64>,
    /// CPU time (user + system) all replicas used, in seconds.
    pub cpu_seconds: f64,
    /// CPU time Redis used over the same span, in seconds, if it says.
    pub redis_cpu_seconds: Option<f64>,
    /// CPU time the broker used over the same span, in seconds, when it
    /// runs on this machine: serving the replicas and the bench's event
    /// consumer.
    pub broker_cpu_seconds: Option<f64>,
    /// Mean commit time and mean receipt-to-ack time inside the workers.
    pub mean_commit: Duration,
    pub mean_publish: Duration,
    pub mean_process: Duration,
    /// Accepted commands decided after a refused one published before
    /// them that asked for no more (`None` for the null worker, which
    /// decides nothing).
    pub unfairness: Option<Unfairness>,
}

impl RunResult {
    /// The replicas' CPU per command, in µs.
    pub fn replica_us_per_command(&self) -> f64 {
        1e6 * ratio(self.cpu_seconds, self.commands as f64)
    }

    /// Redis's CPU per command, in µs, as a table shows it: `-` when Redis
    /// did not say.
    pub fn redis_us_per_command(&self) -> String {
        self.us_per_command(self.redis_cpu_seconds)
    }

    /// The broker's CPU per command, in µs, as a table shows it: `-` when
    /// it does not run on this machine.
    pub fn broker_us_per_command(&self) -> String {
        self.us_per_command(self.broker_cpu_seconds)
    }

    fn us_per_command(&self, seconds: Option<f64>) -> String {
        seconds.map_or("-".to_string(), |s| {
            format!("{:.0}", 1e6 * ratio(s, self.commands as f64))
        })
    }
}

/// Publish-to-outcome latency with the commands published while the
/// replicas consume: paced, or as fast as the bench can publish.
#[derive(Debug, Clone)]
pub struct Latency {
    pub mode: Mode,
    /// Fraction of the live peak; `None` for the live-peak run itself.
    pub fraction: Option<f64>,
    /// Offered rate (paced runs) or achieved outcome rate (live peak).
    pub rate: f64,
    pub samples: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The median rate of the runs of one plan entry (without partitions).
pub fn median_rate(results: &[RunResult], w: Workload, n: usize, m: Mode) -> f64 {
    let mut rates: Vec<f64> = results
        .iter()
        .filter(|r| r.workload == w && r.replicas == n && r.mode == m && r.partitions == 0)
        .map(|r| r.rate)
        .collect();
    median(&mut rates).unwrap_or(0.0)
}

pub fn median(values: &mut [f64]) -> Option<f64> {
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
pub fn by_entry(results: &[RunResult]) -> Vec<Vec<&RunResult>> {
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

/// `a / b`, 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 { 0.0 } else { a / b }
}

/// The mean of `count` durations summing to `total_seconds`.
pub fn mean(total_seconds: f64, count: f64) -> Duration {
    Duration::from_secs_f64(ratio(total_seconds, count).max(0.0))
}
