//! A rush as it happened: seats remaining and outcomes per second over
//! time, and how long each command waited for its outcome, drawn as one SVG
//! report of three charts.

use crate::cli::svg::{BOTTOM, COLOURS, HEIGHT, LEFT, RIGHT, Svg, TOP, WIDTH, nice_ceiling};
use anyhow::Context as _;
use reservation_worker::domain::CommandId;
use reservation_worker::message::EventEnvelope;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// Time slices of the outcome charts: about this many over the rush.
const SLICES: f64 = 120.0;

/// Upper bounds (ms) of the latency histogram's bars; the last bar takes
/// the rest.
const LATENCY_BOUNDS_MS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

/// What the rush saw, in time.
pub struct Timeline {
    started: Instant,
    capacity: u32,
    /// When each command's first outcome came.
    answered: HashMap<CommandId, Instant>,
    /// Each first outcome: seconds since the start, accepted, and the
    /// seats remaining after it with its version.
    outcomes: Vec<(f64, bool, u32, u64)>,
    /// Publish to first outcome, per command.
    latencies: Vec<Duration>,
}

impl Timeline {
    /// A rush on a resource of `capacity` seats, starting now.
    pub fn new(capacity: u32) -> Timeline {
        Timeline {
            started: Instant::now(),
            capacity,
            answered: HashMap::new(),
            outcomes: Vec::new(),
            latencies: Vec::new(),
        }
    }

    /// When each command was first published, once the publishing is
    /// over: each command's wait for its outcome.
    pub fn published(&mut self, published: &HashMap<CommandId, Instant>) {
        self.latencies = self
            .answered
            .iter()
            .filter_map(|(id, at)| Some(at.saturating_duration_since(*published.get(id)?)))
            .collect();
    }

    /// The first outcome of a command, received now.
    pub fn outcome(&mut self, envelope: &EventEnvelope) {
        let now = Instant::now();
        let event = &envelope.event;
        self.outcomes.push((
            now.duration_since(self.started).as_secs_f64(),
            event.is_accepted(),
            event.remaining,
            event.version,
        ));
        self.answered.insert(event.command_id.clone(), now);
    }

    /// p50, p99 and the largest wait, if any was measured.
    pub fn percentiles(&self) -> Option<[Duration; 3]> {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
        (!sorted.is_empty()).then(|| [at(0.5), at(0.99), at(1.0)])
    }

    /// Writes the report to `path` (its directory is created).
    pub fn write(&self, path: &Path, title: &str) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(path, self.svg(title)).with_context(|| format!("writing {}", path.display()))
    }

    /// Three charts stacked: seats remaining, outcomes per second, latency.
    pub fn svg(&self, title: &str) -> String {
        let panels = [self.remaining(title), self.rates(), self.latency()];
        let mut out = String::new();
        let height = HEIGHT * panels.len() as f64;
        let _ = writeln!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"#
        );
        for (i, panel) in panels.iter().enumerate() {
            let y = HEIGHT * i as f64;
            out.push_str(&panel.replacen("<svg ", &format!(r#"<svg x="0" y="{y}" "#), 1));
        }
        out.push_str("</svg>\n");
        out
    }

    /// The time axis's length in seconds: the rush's, rounded up to 1, 2
    /// or 5 times a power of ten, so that its ticks read well.
    fn seconds(&self) -> f64 {
        nice_ceiling(self.outcomes.iter().map(|o| o.0).fold(0.1, f64::max))
    }

    /// Seats remaining over time: after each outcome, the remaining of the
    /// newest version seen so far (events of several replicas arrive out
    /// of order).
    fn remaining(&self, title: &str) -> String {
        let mut svg = Svg::new(&format!("{title}: seats remaining"));
        let top = nice_ceiling(f64::from(self.capacity));
        svg.y_axis(top, "seats remaining");
        let seconds = self.seconds();
        time_axis(&mut svg, seconds);
        let (x_of, y_of) = (x_scale(seconds), y_scale(top));
        let mut newest = (0u64, self.capacity);
        let mut points = vec![format!(
            "{:.1},{:.1}",
            x_of(0.0),
            y_of(f64::from(self.capacity))
        )];
        for &(at, _, remaining, version) in &self.outcomes {
            if version >= newest.0 {
                newest = (version, remaining);
            }
            points.push(format!("{:.1},{:.1}", x_of(at), y_of(f64::from(newest.1))));
        }
        let _ = writeln!(
            svg.body,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            points.join(" "),
            COLOURS[1]
        );
        svg.legend(0, COLOURS[1], "remaining", false);
        svg.finish()
    }

    /// Accepted and rejected outcomes per second, in time slices.
    fn rates(&self) -> String {
        let seconds = self.seconds();
        let slice = (seconds / SLICES).max(0.05);
        let slices = (seconds / slice).ceil() as usize;
        let mut counts = vec![[0u32; 2]; slices];
        for &(at, accepted, _, _) in &self.outcomes {
            let i = ((at / slice) as usize).min(slices - 1);
            counts[i][usize::from(!accepted)] += 1;
        }
        let per_second = |n: u32| f64::from(n) / slice;
        let peak = counts
            .iter()
            .flat_map(|c| c.iter().copied())
            .map(per_second)
            .fold(0.0, f64::max);
        let top = nice_ceiling(peak);
        let mut svg = Svg::new("Outcomes per second");
        svg.y_axis(top, "outcomes/s");
        time_axis(&mut svg, seconds);
        let (x_of, y_of) = (x_scale(seconds), y_scale(top));
        for (k, (name, colour)) in [("accepted", COLOURS[3]), ("rejected", COLOURS[5])]
            .into_iter()
            .enumerate()
        {
            let points: Vec<String> = counts
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let x = x_of((i as f64 + 0.5) * slice);
                    format!("{x:.1},{:.1}", y_of(per_second(c[k])))
                })
                .collect();
            let _ = writeln!(
                svg.body,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                points.join(" ")
            );
            svg.legend(k, colour, name, false);
        }
        svg.finish()
    }

    /// How many commands waited how long, publish to outcome, with p50,
    /// p99 and the largest in the title.
    fn latency(&self) -> String {
        let mut counts = [0u32; LATENCY_BOUNDS_MS.len() + 1];
        for l in &self.latencies {
            let ms = l.as_secs_f64() * 1e3;
            let i = LATENCY_BOUNDS_MS
                .iter()
                .position(|b| ms <= *b)
                .unwrap_or(LATENCY_BOUNDS_MS.len());
            counts[i] += 1;
        }
        let title = match self.percentiles() {
            Some([p50, p99, max]) => format!(
                "Publish to outcome: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} commands)",
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3,
                self.latencies.len()
            ),
            None => "Publish to outcome: nothing measured".to_string(),
        };
        let top = nice_ceiling(f64::from(counts.iter().copied().max().unwrap_or(0)));
        let mut svg = Svg::new(&title);
        svg.y_axis(top, "commands");
        let plot_w = WIDTH - LEFT - RIGHT;
        let bar_w = plot_w / counts.len() as f64;
        for (i, n) in counts.iter().enumerate() {
            let x = LEFT + bar_w * i as f64;
            let h = (HEIGHT - TOP - BOTTOM) * f64::from(*n) / top;
            let label = match LATENCY_BOUNDS_MS.get(i) {
                Some(b) => format!("≤{b}"),
                None => format!(">{}", LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.len() - 1]),
            };
            let _ = writeln!(
                svg.body,
                r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{label} ms: {n}</title></rect>"#,
                x + 1.0,
                HEIGHT - BOTTOM - h,
                bar_w - 2.0,
                COLOURS[1]
            );
            svg.text(
                x + bar_w / 2.0,
                HEIGHT - BOTTOM + 20.0,
                "middle",
                11.0,
                &label,
            );
        }
        svg.x_title("milliseconds");
        svg.finish()
    }
}

fn x_scale(seconds: f64) -> impl Fn(f64) -> f64 {
    move |at| LEFT + (WIDTH - LEFT - RIGHT) * at / seconds
}

fn y_scale(top: f64) -> impl Fn(f64) -> f64 {
    move |v| HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * v / top
}

/// Seconds along the x axis, five ticks.
fn time_axis(svg: &mut Svg, seconds: f64) {
    let x_of = x_scale(seconds);
    // As many decimals as the step between ticks needs.
    let decimals = (-(seconds / 5.0).log10().floor()).max(0.0) as usize;
    for i in 0..=5 {
        let at = seconds * f64::from(i) / 5.0;
        svg.text(
            x_of(at),
            HEIGHT - BOTTOM + 20.0,
            "middle",
            12.0,
            &format!("{at:.decimals$}"),
        );
    }
    svg.x_title("seconds since the first publish");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::svg::assert_well_formed;

    fn envelope(id: &str, accepted: bool, remaining: u32, version: u64) -> EventEnvelope {
        let outcome = if accepted {
            r#""outcome":"accepted""#
        } else {
            r#""outcome":"rejected","reason":"sold_out","detail":"none left""#
        };
        serde_json::from_str(&format!(
            r#"{{"event_id":"00000000-0000-4000-8000-000000000000","command_id":"{id}","command":"reserve",{outcome},"resource_id":"hall","customer_id":"c","quantity":1,"remaining":{remaining},"version":{version},"occurred_at":"2026-11-24T00:00:00Z"}}"#
        ))
        .unwrap()
    }

    #[test]
    fn the_report_draws_remaining_rates_and_latency() {
        let mut t = Timeline::new(2);
        let mut published = HashMap::new();
        for (i, (accepted, remaining, version)) in [(true, 1, 2), (true, 0, 3), (false, 0, 3)]
            .into_iter()
            .enumerate()
        {
            let id = CommandId::try_from(format!("c{i}")).unwrap();
            published.insert(id.clone(), Instant::now());
            t.outcome(&envelope(id.as_str(), accepted, remaining, version));
        }
        t.published(&published);
        let svg = t.svg("Ticket rush on hall");
        assert_well_formed(&svg);
        for text in [
            "Ticket rush on hall: seats remaining",
            "Outcomes per second",
            "Publish to outcome: p50",
            "(3 commands)",
            "accepted",
            "rejected",
        ] {
            assert!(svg.contains(text), "{text} missing from {svg}");
        }
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert_eq!(t.latencies.len(), 3);
    }

    #[test]
    fn remaining_follows_the_newest_version_not_the_last_arrival() {
        let mut t = Timeline::new(3);
        t.outcome(&envelope("a", true, 1, 3));
        // An older version's event, arriving late from another replica.
        t.outcome(&envelope("b", true, 2, 2));
        let svg = t.remaining("r");
        let points = svg
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let ys: Vec<&str> = points
            .split(' ')
            .map(|p| p.split(',').nth(1).unwrap())
            .collect();
        assert_eq!(ys[1], ys[2], "the late event does not raise the line");
    }

    #[test]
    fn an_empty_rush_still_makes_a_report() {
        let t = Timeline::new(10);
        let svg = t.svg("empty");
        assert_well_formed(&svg);
        assert!(svg.contains("nothing measured"));
        assert!(t.percentiles().is_none());
    }
}
