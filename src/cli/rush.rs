//! A ticket rush against running workers: define one resource, publish many
//! reserve commands (with duplicates), collect every outcome event and check
//! the contract's invariants against the events and Redis. In checkout mode
//! (`--holds`), see `checkout`.

mod checkout;
pub mod ledger;
mod plan;
mod timeline;

use crate::cli::fairness::{self, Unfairness};
pub use plan::{RushOptions, generate};
use timeline::Timeline;

use anyhow::Context as _;
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reservation_worker::admin::{self, Message, Publisher, Store, Summary};
use reservation_worker::config::Settings;
use reservation_worker::domain::{CommandId, ResourceId, Verdict};
use reservation_worker::message::{CommandBody, EventEnvelope};
use reservation_worker::producer::Events;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the rush saw.
#[derive(Debug, Default)]
pub struct Report {
    /// The resource sold.
    pub resource: String,
    /// Messages published (duplicates included).
    pub published: usize,
    /// Distinct commands among them.
    pub distinct: usize,
    /// Outcome events received.
    pub events: usize,
    /// Distinct commands with at least one outcome.
    pub answered: usize,
    /// Commands accepted, and the seats they took.
    pub accepted: usize,
    /// Seats taken by accepted commands.
    pub seats_accepted: u64,
    /// Rejections by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Commands whose repeated events differed.
    pub inconsistent_duplicates: usize,
    /// Seconds from the first publish to the last outcome.
    pub seconds: f64,
    /// The resource in Redis afterwards.
    pub summary: Option<Summary>,
    /// Most seats any one customer holds.
    pub max_held: u32,
    /// The per-customer limit in force.
    pub limit: Option<u32>,
    /// Accepted commands published after a refused one that asked for no
    /// more (see `fairness`).
    pub unfairness: Unfairness,
}

impl Report {
    /// Every invariant of the contract held.
    pub fn is_sound(&self) -> bool {
        self.problems().is_empty()
    }

    /// Each broken invariant, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.answered < self.distinct {
            p.push(format!(
                "{} commands got no outcome event",
                self.distinct - self.answered
            ));
        }
        if self.inconsistent_duplicates > 0 {
            p.push(format!(
                "{} commands got differing events",
                self.inconsistent_duplicates
            ));
        }
        match &self.summary {
            None => p.push("the resource is missing from Redis".into()),
            Some(s) => {
                if s.reserved > s.capacity {
                    p.push(format!(
                        "OVERSOLD: {} reserved of {}",
                        s.reserved, s.capacity
                    ));
                }
                if u64::from(s.reserved) != self.seats_accepted {
                    p.push(format!(
                        "Redis says {} reserved but accepted events add up to {}",
                        s.reserved, self.seats_accepted
                    ));
                }
            }
        }
        if let Some(limit) = self.limit
            && self.max_held > limit
        {
            p.push(format!(
                "a customer holds {} seats, over the limit of {limit}",
                self.max_held
            ));
        }
        p
    }

    fn print(&self) {
        let rate = self.events as f64 / self.seconds.max(1e-9);
        println!();
        println!("ticket rush on {}", self.resource);
        println!(
            "  published       {:>8}  ({} distinct commands, {} duplicates)",
            self.published,
            self.distinct,
            self.published - self.distinct
        );
        println!(
            "  outcome events  {:>8}  in {:.2} s = {:.0} commands/s",
            self.events, self.seconds, rate
        );
        println!(
            "  accepted        {:>8}  ({} seats)",
            self.accepted, self.seats_accepted
        );
        for (reason, n) in &self.rejected {
            println!("  rejected        {n:>8}  {reason}");
        }
        if let Some(s) = &self.summary {
            println!(
                "  redis           capacity {} reserved {} remaining {} version {}",
                s.capacity, s.reserved, s.remaining, s.version
            );
        }
        println!(
            "  unfair          {:>8}  of {} accepted ({:.1} %) came after a refused request that asked for no more",
            self.unfairness.inversions,
            self.unfairness.accepted,
            100.0 * self.unfairness.share()
        );
        println!(
            "  busiest customer holds {} seats (limit {})",
            self.max_held,
            self.limit.map_or("none".into(), |l| l.to_string())
        );
        match self.problems().as_slice() {
            [] => println!(
                "  OK: nothing oversold, every command answered once, duplicates identical"
            ),
            problems => problems.iter().for_each(|p| println!("  FAILED: {p}")),
        }
    }
}

/// A rush's connections, with its resource defined.
struct Opened {
    resource: String,
    resource_id: ResourceId,
    define_id: CommandId,
    limit: Option<u32>,
    connection: lapin::Connection,
    events: Events,
    publisher: Publisher,
    deadline: Instant,
}

/// Connects, declares, listens for events and defines the resource.
async fn open(
    settings: &Settings,
    o: &RushOptions,
    cancel: &CancellationToken,
) -> anyhow::Result<Opened> {
    let a = &settings.amqp;
    let resource = o
        .resource
        .clone()
        .unwrap_or_else(|| format!("rush-{}", time::OffsetDateTime::now_utc().unix_timestamp()));
    let resource_id = ResourceId::try_from(resource.clone()).context("--resource")?;
    let connection = admin::connect(a, "reservation-rush")
        .await
        .with_context(|| format!("connecting to {}", a.url))?;
    let channel = connection.create_channel().await?;
    admin::declare_topology(&channel, a).await?;
    let _ = channel.close(200, "declared".into()).await;

    // Listen before publishing so no outcome is missed.
    let mut events = Events::subscribe(a, "reservation-rush-events").await?;
    let publisher = Publisher::open(&connection, a.confirm_timeout()).await?;

    let define_id = CommandId::try_from(format!("{resource}-define"))?;
    let limit = (o.limit > 0).then_some(o.limit);
    let define = CommandBody::Define {
        command_id: define_id.clone(),
        resource_id: resource_id.clone(),
        capacity: o.capacity,
        per_customer_limit: Some(limit),
        price: None,
        budget_id: None,
    };
    publish(&publisher, a.commands_exchange.as_str(), &define).await?;
    let deadline = Instant::now() + Duration::from_secs(o.timeout_secs);
    loop {
        let event = next_event(&mut events, deadline, cancel)
            .await?
            .context("no outcome for the define command")?;
        if event.event.command_id == define_id {
            anyhow::ensure!(
                event.event.is_accepted(),
                "define was rejected: {:?}",
                event.event.verdict
            );
            break;
        }
    }
    Ok(Opened {
        resource,
        resource_id,
        define_id,
        limit,
        connection,
        events,
        publisher,
        deadline,
    })
}

/// Fires the rush, waits for every outcome, prints and returns whether
/// every promise held.
pub async fn run(
    settings: &Settings,
    o: &RushOptions,
    cancel: CancellationToken,
) -> anyhow::Result<bool> {
    if o.holds {
        let report = checkout::run(settings, o, cancel).await?;
        return Ok(report.is_sound());
    }
    Ok(reserves(settings, o, cancel).await?.is_sound())
}

/// The reserve rush.
async fn reserves(
    settings: &Settings,
    o: &RushOptions,
    cancel: CancellationToken,
) -> anyhow::Result<Report> {
    let a = &settings.amqp;
    let Opened {
        resource,
        resource_id,
        define_id,
        limit,
        connection,
        mut events,
        publisher,
        deadline,
    } = open(settings, o, &cancel).await?;

    let bodies = generate(&resource_id, o);
    let distinct = bodies
        .iter()
        .map(|b| b.command_id())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let progress = Progress::new(bodies.len() as u64);
    let started = Instant::now();
    let mut timeline = Timeline::new(o.capacity);
    let (send, pub_task) = publishing(publisher, a.commands_exchange.clone(), o.in_flight);
    for body in &bodies {
        send.send(body.clone())
            .context("the publishing task ended")?;
    }
    drop(send);

    let mut report = Report {
        resource: resource.clone(),
        published: bodies.len(),
        distinct,
        limit,
        ..Report::default()
    };
    let mut seen: HashMap<CommandId, Vec<u8>> = HashMap::with_capacity(distinct);
    let mut verdicts: HashMap<CommandId, fairness::Verdict> = HashMap::with_capacity(distinct);
    // Every publish gets its event, and a redelivery (a worker or a node
    // that died mid-command) may add a replayed one: wait for both, not
    // for a count of events alone.
    while seen.len() < distinct || report.events < bodies.len() {
        let Some(envelope) = next_event(&mut events, deadline, &cancel).await? else {
            break;
        };
        if envelope.event.resource_id != resource_id || envelope.event.command_id == define_id {
            continue;
        }
        report.events += 1;
        progress.set(report.events as u64, started);
        let canonical = serde_json::to_vec(&envelope)?;
        match seen.get(&envelope.event.command_id) {
            Some(first) => {
                if *first != canonical {
                    report.inconsistent_duplicates += 1;
                }
            }
            None => {
                timeline.outcome(&envelope);
                verdicts.insert(
                    envelope.event.command_id.clone(),
                    fairness::Verdict::of(&envelope.event.verdict),
                );
                match &envelope.event.verdict {
                    Verdict::Accepted => {
                        report.accepted += 1;
                        report.seats_accepted +=
                            u64::from(envelope.event.details.quantity.unwrap_or(0));
                    }
                    Verdict::Rejected { reason, .. } => {
                        *report
                            .rejected
                            .entry(reason.as_str().to_string())
                            .or_default() += 1;
                    }
                }
                seen.insert(envelope.event.command_id.clone(), canonical);
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    progress.finish();
    report.answered = seen.len();
    report.unfairness = fairness::of_reserves(&bodies, |id| verdicts.get(id).copied());
    let published = pub_task
        .await
        .context("publisher task")?
        .context("publishing commands")?;
    timeline.published(&published);

    let store = Store::new(&settings.redis)?;
    report.summary = store.summary(&resource_id).await?;
    report.max_held = store
        .holdings(&resource_id)
        .await?
        .into_values()
        .max()
        .unwrap_or(0);
    let _ = events.close().await;
    let _ = connection.close(200, "rush done".into()).await;
    report.print();
    write_report(&timeline, o, &resource)?;
    Ok(report)
}

/// When each command was first published.
type Published = HashMap<CommandId, Instant>;

/// Publishes the bodies sent to it, `in_flight` at once, each with a
/// confirm, until the sender is dropped; the task ends with the first
/// failure, or else with when each command was first published.
fn publishing(
    publisher: Publisher,
    exchange: String,
    in_flight: usize,
) -> (
    mpsc::UnboundedSender<CommandBody>,
    JoinHandle<anyhow::Result<Published>>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<CommandBody>();
    let task = tokio::spawn(async move {
        let mut results = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
            .map(|b| {
                let (publisher, exchange) = (publisher.clone(), exchange.clone());
                async move {
                    let at = Instant::now();
                    publish(&publisher, &exchange, &b).await?;
                    anyhow::Ok((b.command_id().clone(), at))
                }
            })
            .buffer_unordered(in_flight.max(1));
        let mut published = Published::new();
        while let Some(r) = results.next().await {
            let (id, at) = r?;
            published
                .entry(id)
                .and_modify(|first| *first = (*first).min(at))
                .or_insert(at);
        }
        anyhow::Ok(published)
    });
    (tx, task)
}

/// Writes the rush's report where `--report` says, or in the temporary
/// directory, and says where.
fn write_report(timeline: &Timeline, o: &RushOptions, resource: &str) -> anyhow::Result<PathBuf> {
    let path = o.report.clone().unwrap_or_else(|| {
        std::env::temp_dir()
            .join("reservation-rush")
            .join(format!("{resource}.svg"))
    });
    timeline.write(&path, &format!("Ticket rush on {resource}"))?;
    println!("  report          {}", path.display());
    Ok(path)
}

async fn publish(publisher: &Publisher, exchange: &str, body: &CommandBody) -> anyhow::Result<()> {
    let json = body.to_json();
    publisher
        .publish(Message {
            exchange,
            routing_key: body.routing_key(),
            body: &json,
            ..Default::default()
        })
        .await
        .with_context(|| format!("publishing {}", body.command_id()))
}

async fn next_event(
    events: &mut Events,
    deadline: Instant,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<EventEnvelope>> {
    tokio::select! {
        next = tokio::time::timeout_at(deadline.into(), events.next()) => match next {
            Err(_) => Ok(None),
            Ok(None) => anyhow::bail!("the events consumer ended"),
            Ok(Some(event)) => {
                Ok(Some(event?.envelope().context("an event that is not contract JSON")?))
            }
        },
        _ = cancel.cancelled() => Ok(None),
    }
}

/// A progress bar on a terminal, a line every two seconds elsewhere.
struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_line: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{bar:40} {pos}/{len} outcomes  {per_sec}  eta {eta}")
                    .expect("valid template"),
            );
            bar
        });
        Progress {
            bar,
            total,
            last_line: std::cell::Cell::new(Instant::now()),
        }
    }

    fn set(&self, done: u64, started: Instant) {
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if self.last_line.get().elapsed() >= Duration::from_secs(2) => {
                self.last_line.set(Instant::now());
                let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
                eprintln!(
                    "progress: {done}/{} outcomes, {rate:.0} commands/s",
                    self.total
                );
            }
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        o: RushOptions,
    }

    #[test]
    fn generated_traffic_is_deterministic_with_the_asked_duplicates() {
        let o = Wrapper::parse_from(["x", "--commands", "1000", "--duplicates", "0.2"]).o;
        let r = ResourceId::try_from("r").unwrap();
        let a = generate(&r, &o);
        assert_eq!(a, generate(&r, &o));
        assert_eq!(a.len(), 1000);
        let distinct: std::collections::HashSet<_> =
            a.iter().map(|b| b.command_id().clone()).collect();
        assert_eq!(distinct.len(), 800);
    }
}
