//! The report's charts, as SVG files beside the Markdown: throughput per
//! workload and mode, and latency against offered rate. They are a few
//! rectangles, lines and labels, written directly: nothing to install,
//! no fonts needed to produce them, and the files diff well.

use super::plan::{Latency, Mode, RunResult, by_entry, median};
use crate::cli::svg::{
    BOTTOM, COLOURS, HEIGHT, LEFT, RIGHT, Svg, TOP, WIDTH, escape, nice_ceiling,
};
use anyhow::Context as _;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A chart written next to the report.
pub(super) struct Chart {
    /// Where it was written.
    pub path: PathBuf,
    /// Its alt text and caption.
    pub title: &'static str,
    /// Which section of the report it belongs to.
    pub section: Section,
}

/// The report section a chart goes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    Throughput,
    Latency,
}

/// Writes the charts beside `report` (`<stem>-throughput.svg`,
/// `<stem>-latency.svg`), and says what it wrote.
pub(super) fn write_all(
    report: &Path,
    results: &[RunResult],
    latencies: &[Latency],
) -> anyhow::Result<Vec<Chart>> {
    let stem = report
        .file_stem()
        .map_or("benchmarks".into(), |s| s.to_string_lossy().into_owned());
    let dir = report.parent().unwrap_or(Path::new("."));
    let mut charts = Vec::new();
    let mut write = |name: &str, svg: String, title, section| -> anyhow::Result<()> {
        let path = dir.join(format!("{stem}-{name}.svg"));
        std::fs::write(&path, svg).with_context(|| format!("writing {}", path.display()))?;
        charts.push(Chart {
            path,
            title,
            section,
        });
        Ok(())
    };
    if !results.is_empty() {
        write(
            "throughput",
            throughput(results),
            "Throughput per workload and mode (median commands/s)",
            Section::Throughput,
        )?;
    }
    if latencies.iter().any(|l| l.fraction.is_some()) {
        write(
            "latency",
            latency(latencies),
            "Publish-to-event latency against offered rate (hot)",
            Section::Latency,
        )?;
    }
    Ok(charts)
}

/// A series' name in the legend.
fn series_name(mode: Mode, partitions: u16) -> String {
    let mode = format!("{mode:?}").to_lowercase();
    if partitions > 0 {
        format!("{mode} P={partitions}")
    } else {
        mode
    }
}

/// Grouped bars: one group per workload and replica count, one bar per
/// mode, each the median rate of its runs, labelled with its value.
pub(super) fn throughput(results: &[RunResult]) -> String {
    let mut categories: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    let mut bars: Vec<(usize, usize, f64)> = Vec::new();
    for runs in by_entry(results) {
        let r = runs[0];
        let category = format!("{} x{}", workload_name(r), r.replicas);
        let name = series_name(r.mode, r.partitions);
        let c = position(&mut categories, category);
        let s = position(&mut series, name);
        let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        bars.push((c, s, median(&mut rates).unwrap_or(0.0)));
    }
    let top = nice_ceiling(bars.iter().map(|b| b.2).fold(0.0, f64::max));
    let mut svg = Svg::new("Throughput: median commands/s per workload and mode");
    svg.y_axis(top, "commands/s");
    let plot_w = WIDTH - LEFT - RIGHT;
    let per_category = plot_w / categories.len().max(1) as f64;
    let bar_w = (per_category * 0.8) / series.len().max(1) as f64;
    for (c, name) in categories.iter().enumerate() {
        let x = LEFT + per_category * (c as f64 + 0.5);
        svg.text(x, HEIGHT - BOTTOM + 20.0, "middle", 13.0, name);
    }
    for &(c, s, rate) in &bars {
        let x = LEFT + per_category * (c as f64 + 0.1) + bar_w * s as f64;
        let h = (HEIGHT - TOP - BOTTOM) * rate / top;
        let y = HEIGHT - BOTTOM - h;
        let _ = writeln!(
            svg.body,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {rate:.0}/s</title></rect>"#,
            bar_w - 2.0,
            COLOURS[s % COLOURS.len()],
            escape(&series[s]),
        );
        let label = if rate >= 1000.0 {
            format!("{:.1}k", rate / 1000.0)
        } else {
            format!("{rate:.0}")
        };
        svg.text(x + bar_w / 2.0 - 1.0, y - 4.0, "middle", 10.0, &label);
    }
    for (s, name) in series.iter().enumerate() {
        svg.legend(s, COLOURS[s % COLOURS.len()], name, false);
    }
    svg.finish()
}

/// Lines of p50 and p99 against the offered rate, for each mode, from the
/// paced runs (the live-peak runs are left out: their latency is queueing
/// behind a backlog, not the worker's). A dashed line marks 50 ms.
pub(super) fn latency(latencies: &[Latency]) -> String {
    let paced: Vec<&Latency> = latencies.iter().filter(|l| l.fraction.is_some()).collect();
    let max_rate = nice_ceiling(paced.iter().map(|l| l.rate).fold(0.0, f64::max));
    let max_ms = nice_ceiling(
        paced
            .iter()
            .map(|l| l.p99.as_secs_f64() * 1e3)
            .fold(50.0, f64::max),
    );
    let mut svg = Svg::new("Latency: publish to outcome event, hot, paced");
    svg.y_axis(max_ms, "ms");
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x_of = |rate: f64| LEFT + plot_w * rate / max_rate;
    let y_of = |ms: f64| HEIGHT - BOTTOM - plot_h * ms / max_ms;
    for i in 0..=5 {
        let rate = max_rate * f64::from(i) / 5.0;
        svg.text(
            x_of(rate),
            HEIGHT - BOTTOM + 20.0,
            "middle",
            12.0,
            &format!("{rate:.0}"),
        );
    }
    svg.x_title("offered rate (commands/s)");
    let target = y_of(50.0);
    let _ = writeln!(
        svg.body,
        r##"<line x1="{LEFT}" y1="{target:.1}" x2="{:.1}" y2="{target:.1}" stroke="#D55E00" stroke-dasharray="6 4"/>"##,
        LEFT + plot_w
    );
    svg.text(LEFT + plot_w - 4.0, target - 6.0, "end", 11.0, "50 ms");
    let mut modes: Vec<Mode> = Vec::new();
    for l in &paced {
        if !modes.contains(&l.mode) {
            modes.push(l.mode);
        }
    }
    let mut entry = 0;
    for mode in modes {
        let mut points: Vec<&&Latency> = paced.iter().filter(|l| l.mode == mode).collect();
        points.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        for (name, dashed, pick) in [
            (
                "p50",
                true,
                (|l: &Latency| l.p50) as fn(&Latency) -> std::time::Duration,
            ),
            ("p99", false, |l: &Latency| l.p99),
        ] {
            let colour = COLOURS[(1 + modes_index(mode)) % COLOURS.len()];
            let line: Vec<String> = points
                .iter()
                .map(|l| {
                    let (x, y) = (x_of(l.rate), y_of(pick(l).as_secs_f64() * 1e3));
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let dash = if dashed {
                r#" stroke-dasharray="3 3""#
            } else {
                ""
            };
            let _ = writeln!(
                svg.body,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>"#,
                line.join(" ")
            );
            for l in &points {
                let ms = pick(l).as_secs_f64() * 1e3;
                let _ = writeln!(
                    svg.body,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"><title>{mode:?} {name}: {ms:.1} ms at {:.0}/s</title></circle>"#,
                    x_of(l.rate),
                    y_of(ms),
                    l.rate
                );
            }
            let label = format!("{} {name}", series_name(mode, 0));
            svg.legend(entry, colour, &label, dashed);
            entry += 1;
        }
    }
    svg.finish()
}

/// A stable colour index per mode.
fn modes_index(mode: Mode) -> usize {
    match mode {
        Mode::Null => 0,
        Mode::Group => 1,
        Mode::Naive => 2,
        Mode::Baseline => 3,
    }
}

fn workload_name(r: &RunResult) -> String {
    let name = format!("{:?}", r.workload);
    // `UniformBudget` reads as the CLI spells it: `uniform-budget`.
    let mut out = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_uppercase() && i > 0 {
            out.push('-');
        }
        out.extend(ch.to_lowercase());
    }
    out
}

/// The index of `item` in `list`, added at the end if new.
fn position(list: &mut Vec<String>, item: String) -> usize {
    match list.iter().position(|x| *x == item) {
        Some(i) => i,
        None => {
            list.push(item);
            list.len() - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::plan::Workload;
    use super::*;
    use crate::cli::svg::assert_well_formed;
    use std::time::Duration;

    fn run(workload: Workload, mode: Mode, rate: f64) -> RunResult {
        RunResult {
            round: 1,
            workload,
            mode,
            partitions: 0,
            replicas: 2,
            commands: 1000,
            seconds: 1000.0 / rate,
            rate,
            commits: 10.0,
            conflicts: 0.0,
            per_replica: vec![500.0, 500.0],
            peak_rss_kib: vec![20_000],
            cpu_seconds: 0.05,
            redis_cpu_seconds: None,
            broker_cpu_seconds: None,
            mean_commit: Duration::from_millis(1),
            mean_publish: Duration::from_millis(1),
            mean_process: Duration::from_millis(2),
            unfairness: None,
        }
    }

    fn latency(mode: Mode, rate: f64, p99_ms: u64) -> Latency {
        Latency {
            mode,
            fraction: Some(0.5),
            rate,
            samples: 100,
            p50: Duration::from_millis(p99_ms / 2),
            p99: Duration::from_millis(p99_ms),
            max: Duration::from_millis(p99_ms * 2),
        }
    }

    #[test]
    fn the_throughput_chart_has_a_bar_per_workload_and_mode_with_its_rate() {
        let results = vec![
            run(Workload::Hot, Mode::Null, 18_000.0),
            run(Workload::Hot, Mode::Group, 16_500.0),
            run(Workload::UniformBudget, Mode::Null, 17_000.0),
            run(Workload::UniformBudget, Mode::Group, 7_000.0),
        ];
        let svg = throughput(&results);
        assert_well_formed(&svg);
        for text in [
            "hot x2",
            "uniform-budget x2",
            "null",
            "group",
            "16.5k",
            "7.0k",
        ] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
        assert_eq!(svg.matches("<rect x=").count(), 4, "one bar per run");
    }

    #[test]
    fn the_latency_chart_draws_p50_and_p99_per_mode_and_the_50_ms_line() {
        let latencies = vec![
            latency(Mode::Null, 1000.0, 5),
            latency(Mode::Null, 5000.0, 9),
            latency(Mode::Group, 1000.0, 7),
            latency(Mode::Group, 5000.0, 15),
        ];
        let svg = super::latency(&latencies);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<polyline").count(), 4);
        for text in ["null p99", "group p50", "50 ms", "offered rate"] {
            assert!(svg.contains(text), "{text} missing");
        }
    }

    #[test]
    fn written_beside_the_report_and_only_with_data() {
        let dir = std::env::temp_dir().join(format!("rw-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("benchmarks.md");
        let charts = write_all(&report, &[run(Workload::Hot, Mode::Null, 1.0)], &[]).unwrap();
        assert_eq!(charts.len(), 1, "no latency rows: no latency chart");
        assert_eq!(charts[0].path, dir.join("benchmarks-throughput.svg"));
        assert_well_formed(&std::fs::read_to_string(&charts[0].path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn axes_end_at_a_round_number() {
        assert_eq!(nice_ceiling(17_300.0), 20_000.0);
        assert_eq!(nice_ceiling(4.2), 5.0);
        assert_eq!(nice_ceiling(100.0), 100.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
    }
}
