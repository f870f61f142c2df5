//! The Markdown report: the command line, the machine, every figure.

use super::chart::{Chart, Section};
use super::plan::{BenchOptions, Latency, Mode, RunResult, Workload, by_entry, median, ratio};
use std::fmt::Write as _;
use std::process::Command;

/// Where the generated part of a report file begins and ends; what is
/// outside stays when the bench writes the file again.
const BEGIN: &str =
    "<!-- bench:begin (written by `reservation-worker bench --out`; edit outside the markers) -->";
const END: &str = "<!-- bench:end -->";

/// `existing` with its generated part replaced by `report` (or `report`
/// alone when there is none).
pub(super) fn splice(existing: &str, report: &str) -> String {
    let generated = format!("{BEGIN}\n{}\n{END}\n", report.trim_end());
    let begin = existing.find("<!-- bench:begin");
    let end = existing.find(END);
    match (begin, end) {
        (Some(b), Some(e)) if b < e => {
            let after = existing[e + END.len()..].trim_start_matches('\n');
            let mut out = existing[..b].to_string();
            out.push_str(&generated);
            if !after.is_empty() {
                out.push('\n');
                out.push_str(after);
            }
            out
        }
        _ => generated,
    }
}

/// Links the charts of `section`, relative to the report.
fn embed(md: &mut String, charts: &[Chart], section: Section) {
    for c in charts.iter().filter(|c| c.section == section) {
        let file = c
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(md, "\n![{}]({file})", c.title);
    }
}

pub(super) async fn render(
    o: &BenchOptions,
    results: &[RunResult],
    latencies: &[Latency],
    charts: &[Chart],
) -> String {
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
        "Each run preloads {} commands ({:.0} % duplicates) into a fresh quorum queue, then starts the replicas as separate processes (prefetch {}) and measures from the first outcome event to the last; broker, Redis, replicas and the bench share the machine. `null` consumes, publishes an outcome of the same size with a confirm and acks, with no Redis: the broker's limit. `group` is the worker with group commit (default), `naive` the same worker with one WATCH/MULTI transaction per command. The CPU columns are per command: the replicas' own (user + system), Redis's as `INFO cpu` reports it over the same span (the null worker's is Redis idling), and the broker's (its Erlang VM, when it runs on this machine) over the same span, serving the replicas and the bench's event consumer. Replica and Redis together are what a decision costs on top of the broker's work; the machine is CPU-bound, so what they add comes out of the broker's share. `unfair` counts the accepted commands decided after a refused one published before them that asked for no more (`sold_out` on the same resource, or `customer_limit` for the same customer): first come, first served broken (README, \"Ordering\"); only `sellout` refuses any.\n",
        o.commands,
        o.duplicates * 100.0,
        o.prefetch()
    );
    if let Some(baseline) = o
        .baseline_exe
        .as_ref()
        .filter(|_| o.modes.contains(&Mode::Baseline))
    {
        let _ = writeln!(
            md,
            "`baseline` is the worker with group commit as `{}` builds it, run with the same settings: another build, measured in the same run.\n",
            baseline.display()
        );
    }
    if o.repeat > 1 {
        let _ = writeln!(
            md,
            "The plan ran {} rounds, one entry after another in each round. Each row shows the median of its entry's commands/s; `range` is the slowest and fastest run; peak RSS is the largest of all its runs, and the other columns come from the run with the median rate (the upper one of the middle two for an even count). Ratios are taken between runs of the same round, and the table gives their median and every round's value.\n",
            o.repeat
        );
    }
    let _ = writeln!(
        md,
        "| workload | replicas | mode | commands/s | range | seconds | replica CPU (µs/command) | Redis CPU (µs/command) | broker CPU (µs/command) | conflicts/commit | commands/commit | per-replica share | unfair | peak RSS (MiB) |"
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
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
        let unfair = r.unfairness.map_or("-".to_string(), |u| u.describe());
        let _ = writeln!(
            md,
            "| {:?} | {} | {} | {:.0} | {} | {:.2} | {:.0} | {} | {} | {} | {} | {} | {} | {:.1} |",
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
            r.replica_us_per_command(),
            r.redis_us_per_command(),
            r.broker_us_per_command(),
            conflicts,
            per_commit,
            shares.join(" / "),
            unfair,
            rss
        );
    }
    embed(&mut md, charts, Section::Throughput);
    let _ = writeln!(md, "\n## Ratios (same round)\n");
    // Against another build only when the plan ran one.
    let baseline = results.iter().any(|r| r.mode == Mode::Baseline);
    let _ = writeln!(
        md,
        "| workload | replicas | group / null | group / naive |{}",
        if baseline { " group / baseline |" } else { "" }
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|{}",
        if baseline { "---|" } else { "" }
    );
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
            "| {w:?} | {n} | {} | {} |{}",
            paired(Mode::Null),
            paired(Mode::Naive),
            if baseline {
                format!(" {} |", paired(Mode::Baseline))
            } else {
                String::new()
            }
        );
    }
    if !latencies.is_empty() {
        let _ = writeln!(
            md,
            "\n## Latency\n\nPublish-to-outcome-event latency with `hot` traffic, the commands published while the replicas consume, so the broker takes the commands' publishes as well as serving the replicas (in the throughput runs above the queue was preloaded). The `live peak` rows publish as fast as the bench can; their rate is the outcomes/s achieved, and their latency is mostly time queued behind the backlog. The other rows are paced at a fraction of the group worker's live peak, for the null worker and the group worker alike.\n"
        );
        embed(&mut md, charts, Section::Latency);
        let _ = writeln!(
            md,
            "\n| mode | rate | of live peak | samples | p50 ms | p99 ms | max ms |"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_the_generated_part_between_markers() {
        let out = splice("", "# Benchmarks\n\nfigures\n");
        assert!(out.starts_with("<!-- bench:begin"), "{out}");
        assert!(
            out.contains("# Benchmarks\n\nfigures\n<!-- bench:end -->"),
            "{out}"
        );
    }

    #[test]
    fn what_is_outside_the_markers_stays() {
        let first = splice("", "old figures");
        let existing = format!("Intro by hand\n{first}\n## Clusters\n\nby hand\n");
        let out = splice(&existing, "new figures");
        assert!(out.starts_with("Intro by hand\n<!-- bench:begin"), "{out}");
        assert!(
            out.contains("new figures\n<!-- bench:end -->\n\n## Clusters\n\nby hand\n"),
            "{out}"
        );
        assert!(!out.contains("old figures"), "{out}");
        assert_eq!(
            splice(&out, "new figures"),
            out,
            "writing again changes nothing"
        );
    }

    #[test]
    fn a_file_without_markers_is_replaced() {
        assert_eq!(splice("hand-written", "x"), splice("", "x"));
    }
}
