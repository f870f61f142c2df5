//! Structured logs with `tracing` on stderr (stdout is for command output):
//! JSON when stderr is not a terminal (for log shippers), human-readable on
//! one.

use crate::config::{LogFormat, LogSettings};
use std::io::IsTerminal;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber. `RUST_LOG` wins over the configured level.
pub fn init(settings: &LogSettings) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| settings.level.clone());
    let filter = filter(&directives);
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let layer = if json {
        layer
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        layer.boxed()
    };
    let result = tracing_subscriber::registry()
        .with(
            layer
                .with_filter(filter)
                .with_filter(filter_fn(never_frames)),
        )
        .try_init();
    // A second init (tests) keeps the first subscriber.
    let _ = result;
}

/// The AMQP client traces every frame it reads and writes, and frames hold
/// the login's password (as bytes) and message bodies: those are never
/// logged, whatever the filter asks for.
fn never_frames(meta: &tracing::Metadata<'_>) -> bool {
    !(*meta.level() == tracing::Level::TRACE && meta.target().starts_with("lapin"))
}

/// The filter for `directives`. The AMQP client's own logs stay out unless
/// the directives name it: everything it reports that matters reaches the
/// log through this crate's errors, in one line, without message bodies
/// (it logs a returned message with its body, as bytes).
fn filter(directives: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    if !directives.contains("lapin") {
        filter = filter.add_directive("lapin=off".parse().expect("a valid directive"));
    }
    filter
}

/// An error and its causes, joined by ": ", for logs and messages.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_amqp_client_is_quiet_unless_asked_for() {
        assert!(filter("info").to_string().contains("lapin=off"));
        assert!(!filter("info,lapin=debug").to_string().contains("lapin=off"));
    }

    #[test]
    fn chain_joins_every_cause() {
        let io = std::io::Error::other("refused");
        let e = anyhow::Error::new(io).context("connecting");
        let boxed: Box<dyn std::error::Error + Send + Sync> = e.into();
        assert_eq!(chain(&*boxed), "connecting: refused");
    }
}
