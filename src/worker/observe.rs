//! Figures a worker reads now and then for its metrics, rather than counts
//! as it works: the commands waiting in each queue it consumes (its
//! backlog, as the broker reports it) and the entries of the holds'
//! due-time index.
//!
//! A failed read leaves the last figure in place and is tried again at the
//! next tick: these are for dashboards, never for decisions.

use crate::metrics as metric;
use crate::store::Store;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Reads every [`metric::OBSERVE_EVERY`] until `stop` is cancelled.
pub(super) async fn run(
    connection: Arc<lapin::Connection>,
    queues: Vec<String>,
    store: Store,
    stop: CancellationToken,
) {
    // A passive declare of a missing queue closes its channel: this one is
    // the observer's own, never the consuming one, and opened again when
    // that happens.
    let mut channel: Option<lapin::Channel> = None;
    let mut tick = tokio::time::interval(metric::OBSERVE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => break,
        }
        if !channel.as_ref().is_some_and(|c| c.status().connected()) {
            channel = match connection.create_channel().await {
                Ok(c) => Some(c),
                Err(e) => {
                    debug!(error = %e, "no channel to read the queues' depth");
                    None
                }
            };
        }
        if let Some(channel) = &channel {
            for queue in &queues {
                match waiting(channel, queue).await {
                    Ok(n) => {
                        metrics::gauge!(metric::QUEUE_MESSAGES, "queue" => queue.clone())
                            .set(f64::from(n));
                    }
                    Err(e) => {
                        debug!(error = %e, queue, "could not read the queue's depth");
                        break;
                    }
                }
            }
        }
        match store.due_index_len().await {
            Ok(n) => metrics::gauge!(metric::HOLD_INDEX_ENTRIES).set(n as f64),
            Err(e) => debug!(error = %e, "could not read the holds' due-time index"),
        }
    }
    // The channel closes with its connection, when the session ends.
}

/// Messages ready in `queue`, by a passive declare.
async fn waiting(channel: &lapin::Channel, queue: &str) -> Result<u32, lapin::Error> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(declared.message_count())
}
