//! `events`: outcome events as they are published, for a producer checking
//! its integration. A private queue (exclusive, deleted with the
//! connection) is bound to every routing key of the events exchange, so
//! watching takes nothing from the events' real consumers.

use anyhow::Context as _;
use reservation_worker::admin::is_not_found;
use reservation_worker::config::Settings;
use reservation_worker::domain::ResourceId;
use reservation_worker::producer::{ConnectError, Events};
use std::io::Write as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What to print, and for how long.
#[derive(Debug, clap::Args)]
pub struct EventsOptions {
    /// Only this resource's events (budget definitions have none).
    #[arg(long)]
    pub resource: Option<String>,
    /// Go on printing until Ctrl-C (or SIGTERM) instead of stopping after
    /// --count events.
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many events, unless --follow.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Without --follow: give up, with exit status 1, when --count events
    /// have not come within this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// Prints each event's body, as published, one JSON document per line on
/// stdout; what it is doing goes to stderr.
pub async fn run(
    settings: &Settings,
    options: &EventsOptions,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let resource = options
        .resource
        .as_deref()
        .map(ResourceId::try_from)
        .transpose()
        .context("--resource")?;
    let exchange = &settings.amqp.events_exchange;
    let mut events = match Events::subscribe(&settings.amqp, "reservation-events").await {
        Ok(events) => events,
        Err(ConnectError::Channel(e)) if is_not_found(&e) => anyhow::bail!(
            "the events exchange {exchange:?} does not exist on {}: run `reservation-worker setup` \
             first, which declares the exchanges and queues",
            settings.amqp.url
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("connecting to {}", settings.amqp.url));
        }
    };
    let which = resource
        .as_ref()
        .map_or_else(String::new, |r| format!(" of {r}"));
    let until = if options.follow {
        "until Ctrl-C".to_string()
    } else {
        let verb = if options.count == 1 {
            "arrives"
        } else {
            "arrive"
        };
        format!("until {} {verb}", plural(options.count, "event"))
    };
    eprintln!("listening for outcome events{which} on exchange {exchange:?}, {until}");
    let deadline = (!options.follow)
        .then(|| tokio::time::Instant::now() + Duration::from_secs(options.timeout_secs));
    let mut printed = 0;
    let mut stdout = std::io::stdout().lock();
    let end = loop {
        let next = tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = sleep_until(deadline) => break Err(anyhow::anyhow!(
                "{} of {} within {} s; are workers running? (`reservation-worker status`)",
                plural(printed, "event"),
                options.count,
                options.timeout_secs
            )),
            next = events.next() => next,
        };
        let event = match next {
            Some(Ok(event)) => event,
            Some(Err(e)) => break Err(e).context("receiving events"),
            None => break Err(anyhow::anyhow!("the broker ended the subscription")),
        };
        if let Some(r) = &resource
            && !is_of(&event.body, r)
        {
            continue;
        }
        stdout.write_all(&event.body)?;
        stdout.write_all(b"\n")?;
        stdout.flush()?;
        printed += 1;
        if !options.follow && printed >= options.count {
            break Ok(());
        }
    };
    let _ = events.close().await;
    end
}

/// Whether an event body names `resource`.
fn is_of(body: &[u8], resource: &ResourceId) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("resource_id")?
                .as_str()
                .map(|r| r == resource.as_str())
        })
        .unwrap_or(false)
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_matched_by_its_resource_only() {
        let hall = ResourceId::try_from("hall").unwrap();
        assert!(is_of(
            br#"{"resource_id":"hall","outcome":"accepted"}"#,
            &hall
        ));
        assert!(!is_of(br#"{"resource_id":"hall-2"}"#, &hall));
        assert!(!is_of(br#"{"budget_id":"b"}"#, &hall), "a budget's event");
        assert!(!is_of(b"not json", &hall));
    }

    #[test]
    fn counts_read_as_words() {
        assert_eq!(plural(1, "event"), "1 event");
        assert_eq!(plural(3, "event"), "3 events");
    }
}
