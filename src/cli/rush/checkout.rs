//! Checkout mode: customers hold seats, most of them pay (confirm) and the
//! rest walk away, so their holds run out and the seats come back; then
//! late buyers take the seats that came back.
//!
//! The rush ends when every hold has an outcome, every confirm too, and
//! every accepted hold has ended (confirmed or expired). It then checks the
//! events (`ledger`) and the resource's history: folded back, it never has
//! more seats reserved and held than exist, and it equals the state in
//! Redis.

use super::ledger::{self, Ledger, Seen};
use super::plan::{self, RushOptions};
use super::{Opened, Progress, Timeline, next_event, open, publishing};
use anyhow::Context as _;
use reservation_worker::admin::{Store, Summary};
use reservation_worker::config::Settings;
use reservation_worker::domain::{CommandId, ResourceId};
use std::collections::HashSet;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a checkout rush saw.
#[derive(Debug, Default)]
pub struct CheckoutReport {
    /// The resource sold.
    pub resource: String,
    /// Hold commands published (duplicates included).
    pub published: usize,
    /// Confirms sent.
    pub confirms: usize,
    /// Seats that came back (for sale once every hold ended).
    pub came_back: u32,
    /// Late buyers who got one of them.
    pub sold_back: usize,
    /// Seconds from the first publish to the last outcome.
    pub seconds: f64,
    /// The resource in Redis at the end.
    pub summary: Option<Summary>,
    /// Every broken promise, in words.
    pub problems: Vec<String>,
}

impl CheckoutReport {
    /// Every promise held.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Fires the checkout rush, waits for every hold to end, sells the seats
/// that came back, checks, prints.
pub async fn run(
    settings: &Settings,
    o: &RushOptions,
    cancel: CancellationToken,
) -> anyhow::Result<CheckoutReport> {
    let a = &settings.amqp;
    let Opened {
        resource,
        resource_id,
        define_id,
        connection,
        mut events,
        publisher,
        deadline,
        ..
    } = open(settings, o, &cancel).await?;
    let holds = plan::generate(&resource_id, o);
    let hold_ids: HashSet<CommandId> = holds.iter().map(|b| b.command_id().clone()).collect();
    let (send, sending) = publishing(publisher, a.commands_exchange.clone(), o.in_flight);
    let started = Instant::now();
    let mut timeline = Timeline::new(o.capacity);
    let progress = Progress::new(hold_ids.len() as u64);
    let mut holds_answered = 0;
    let mut report = CheckoutReport {
        resource: resource.clone(),
        published: holds.len(),
        ..CheckoutReport::default()
    };
    for body in holds {
        send.send(body).context("the publishing task ended")?;
    }

    // Phase 1: holds, confirms, expiries.
    let mut ledger = Ledger::default();
    let mut confirms: HashSet<CommandId> = HashSet::new();
    let done = |l: &Ledger, confirms: &HashSet<CommandId>| {
        hold_ids.iter().all(|h| l.answered(h))
            && confirms.iter().all(|c| l.answered(c))
            && l.open_holds() == 0
    };
    while !done(&ledger, &confirms) {
        let Some(envelope) = next_event(&mut events, deadline, &cancel).await? else {
            break;
        };
        if envelope.event.resource_id != resource_id || envelope.event.command_id == define_id {
            continue;
        }
        let id = envelope.event.command_id.clone();
        let seen = ledger.record(&envelope);
        if seen != Seen::Repeat {
            timeline.outcome(&envelope);
        }
        if seen != Seen::Repeat && hold_ids.contains(&id) {
            holds_answered += 1;
            progress.set(holds_answered, started);
        }
        if let Seen::NewHold(hold) = seen
            && plan::pays(&hold, o)
        {
            let body = plan::confirm(&resource_id, &hold);
            confirms.insert(body.command_id().clone());
            send.send(body).context("the publishing task ended")?;
        }
    }
    progress.finish();
    report.confirms = confirms.len();
    if !done(&ledger, &confirms) {
        report.problems.push(format!(
            "gave up waiting: {} holds or confirms without an outcome, {} holds not ended",
            hold_ids
                .iter()
                .chain(&confirms)
                .filter(|c| !ledger.answered(c))
                .count(),
            ledger.open_holds()
        ));
    }

    // Phase 2: the seats that came back, to late buyers.
    let store = Store::new(&settings.redis)?;
    let before = store.summary(&resource_id).await?;
    report.came_back = before.as_ref().map_or(0, |s| s.remaining);
    let late = plan::late_buyers(&resource_id, report.came_back as usize + 10);
    let late_ids: Vec<CommandId> = late.iter().map(|b| b.command_id().clone()).collect();
    for body in late {
        send.send(body).context("the publishing task ended")?;
    }
    drop(send);
    while !late_ids.iter().all(|c| ledger.answered(c)) {
        let Some(envelope) = next_event(&mut events, deadline, &cancel).await? else {
            report
                .problems
                .push("gave up waiting for the late buyers' outcomes".into());
            break;
        };
        if envelope.event.resource_id == resource_id
            && envelope.event.command_id != define_id
            && ledger.record(&envelope) != Seen::Repeat
        {
            timeline.outcome(&envelope);
        }
    }
    report.sold_back = late_ids
        .iter()
        .filter(|c| ledger.was_accepted(c) == Some(true))
        .count();
    report.seconds = started.elapsed().as_secs_f64();
    let published = sending
        .await
        .context("publisher task")?
        .context("publishing commands")?;
    timeline.published(&published);

    report.problems.extend(ledger.problems());
    report.summary = store.summary(&resource_id).await?;
    report
        .problems
        .extend(check_history(&store, &resource_id, report.summary.as_ref()).await?);
    if report.sold_back != report.came_back as usize {
        report.problems.push(format!(
            "{} seats came back but {} late buyers got one",
            report.came_back, report.sold_back
        ));
    }
    let _ = events.close().await;
    let _ = connection.close(200, "rush done".into()).await;
    print(&report, &ledger);
    super::write_report(&timeline, o, &resource)?;
    Ok(report)
}

/// The history, folded, never oversold and equal to the state in Redis.
async fn check_history(
    store: &Store,
    resource: &ResourceId,
    summary: Option<&Summary>,
) -> anyhow::Result<Vec<String>> {
    let history = store.history(resource).await?;
    let folded = match ledger::fold(&history) {
        Ok(state) => state,
        Err(oversold) => return Ok(vec![oversold]),
    };
    let folded = folded
        .resource
        .map(|r| (r.capacity, r.reserved, r.held, r.version));
    let stored = summary.map(|s| (s.capacity, s.reserved, s.held, s.version));
    Ok(if folded == stored {
        Vec::new()
    } else {
        vec![format!(
            "the history folds to (capacity, reserved, held, version) {folded:?} but Redis holds {stored:?}"
        )]
    })
}

fn print(report: &CheckoutReport, ledger: &Ledger) {
    let (held, confirmed, cancelled, expired) = ledger.hold_ends();
    println!();
    println!("checkout rush on {}", report.resource);
    println!(
        "  holds published {:>8}  ({} events in {:.2} s)",
        report.published, ledger.events, report.seconds
    );
    println!("  holds accepted  {held:>8}");
    println!(
        "  confirmed       {confirmed:>8}  ({} confirms sent)",
        report.confirms
    );
    println!("  expired         {expired:>8}");
    if cancelled > 0 {
        println!("  cancelled       {cancelled:>8}");
    }
    for (reason, n) in &ledger.rejected {
        println!("  rejected        {n:>8}  {reason}");
    }
    println!(
        "  came back       {:>8}  seats, {} sold again to late buyers",
        report.came_back, report.sold_back
    );
    if let Some(s) = &report.summary {
        println!(
            "  redis           capacity {} reserved {} held {} remaining {} version {}",
            s.capacity, s.reserved, s.held, s.remaining, s.version
        );
    }
    match report.problems.as_slice() {
        [] => println!(
            "  OK: nothing oversold, every hold ended once, duplicates identical, history = state"
        ),
        problems => problems.iter().for_each(|p| println!("  FAILED: {p}")),
    }
}
