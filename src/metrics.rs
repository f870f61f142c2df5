//! Metric names and the Prometheus recorder.
//!
//! Every metric the worker emits is named here, so the README's alerting
//! table and the code cannot drift apart. Every counter and gauge exists
//! from the start, at 0, for each of its known label values: a dashboard
//! shows 0 rather than "no data", and `increase()` sees the first event.

use crate::domain::{CommandKind, Reason};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Commands settled, by `command` and `outcome` (accepted / rejected).
pub const COMMANDS: &str = "reservation_commands_total";
/// Rejections by `reason`.
pub const REJECTIONS: &str = "reservation_rejections_total";
/// Deliveries whose command was already decided (re-published outcome).
pub const DUPLICATES: &str = "reservation_duplicates_total";
/// Transactions committed.
pub const COMMITS: &str = "reservation_commits_total";
/// Transactions aborted because a watched key changed (then retried).
pub const WATCH_CONFLICTS: &str = "reservation_watch_conflicts_total";
/// Batches that lost `worker.max_commit_attempts` WATCH races in a row and
/// paused before starting over.
pub const CONTENTION_PAUSES: &str = "reservation_contention_pauses_total";
/// Commands per transaction.
pub const BATCH_SIZE: &str = "reservation_batch_size";
/// Time to commit one batch, retries included.
pub const COMMIT_SECONDS: &str = "reservation_commit_seconds";
/// Time to publish one outcome event and get its confirm.
pub const PUBLISH_SECONDS: &str = "reservation_publish_seconds";
/// Time from receiving a delivery to acking (or returning) it.
pub const PROCESS_SECONDS: &str = "reservation_process_seconds";
/// Deliveries held by this worker right now.
pub const IN_FLIGHT: &str = "reservation_in_flight";
/// `basic.ack` frames sent (one multiple ack can settle many commands).
pub const ACK_FRAMES: &str = "reservation_ack_frames_total";
/// Broker sessions lost and re-established.
pub const RECONNECTS: &str = "reservation_reconnects_total";
/// Redis requests that failed in a way that passes (unreachable, loading,
/// read-only, out of memory, lost data), each retried.
pub const REDIS_ERRORS: &str = "reservation_redis_errors_total";
/// Event publishes nacked, returned or unconfirmed.
pub const PUBLISH_FAILURES: &str = "reservation_publish_failures_total";
/// Deliveries returned to the queue for another try.
pub const REQUEUED: &str = "reservation_requeued_total";
/// Messages this worker moved to the dead-letter queue, by `cause`.
pub const DEAD_LETTERED: &str = "reservation_dead_lettered_total";
/// The `cause` of a message that is not a command (not JSON, no
/// `command_id`, too large).
pub const CAUSE_UNREADABLE: &str = "unreadable";
/// The `cause` of a command delivered `amqp.delivery_limit` times.
pub const CAUSE_DELIVERY_LIMIT: &str = "delivery_limit";
/// Every `cause` of [`DEAD_LETTERED`].
pub const DEAD_LETTER_CAUSES: [&str; 2] = [CAUSE_UNREADABLE, CAUSE_DELIVERY_LIMIT];
/// Commands waiting in each queue this worker consumes, by `queue`, as the
/// worker last read them (every [`OBSERVE_EVERY`]).
pub const QUEUE_MESSAGES: &str = "reservation_queue_messages";
/// Entries of the holds' due-time index: holds whose expiry time the sweep
/// has not handled yet (live holds, and those confirmed or cancelled before
/// it), read every [`OBSERVE_EVERY`].
pub const HOLD_INDEX_ENTRIES: &str = "reservation_hold_index_entries";
/// How often the worker reads [`QUEUE_MESSAGES`] and [`HOLD_INDEX_ENTRIES`].
pub const OBSERVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// 1 while Redis has lost its data (the setup marker is missing) and
/// nothing is decided, else 0.
pub const STORE_UNINITIALISED: &str = "reservation_store_uninitialised";
/// `expire.accepted` events published (a re-publication counts again).
pub const EXPIRIES: &str = "reservation_expiries_total";
/// From a hold's `expires_at` to its expiry's publish confirm, by Redis's
/// clock.
pub const EXPIRY_LAG_SECONDS: &str = "reservation_expiry_lag_seconds";
/// 1 when ready (broker, Redis, consuming), else 0.
pub const READY: &str = "reservation_ready";

/// Installs the global recorder and returns the handle that renders it.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let seconds = [
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(
            Matcher::Full(BATCH_SIZE.into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        )?
        .install_recorder()?;
    describe();
    zero();
    Ok(handle)
}

/// Every counter and gauge at 0, for every known label value, so that each
/// series exists before its first event. The queue gauge is labelled by
/// the queues a worker consumes, which it sets when it starts consuming.
fn zero() {
    for kind in CommandKind::ALL {
        for outcome in ["accepted", "rejected"] {
            metrics::counter!(COMMANDS, "command" => kind.as_str(), "outcome" => outcome)
                .absolute(0);
        }
    }
    for reason in Reason::ALL {
        metrics::counter!(REJECTIONS, "reason" => reason.as_str()).absolute(0);
    }
    for cause in DEAD_LETTER_CAUSES {
        metrics::counter!(DEAD_LETTERED, "cause" => cause).absolute(0);
    }
    for counter in [
        DUPLICATES,
        COMMITS,
        WATCH_CONFLICTS,
        CONTENTION_PAUSES,
        ACK_FRAMES,
        RECONNECTS,
        REDIS_ERRORS,
        PUBLISH_FAILURES,
        REQUEUED,
        EXPIRIES,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for gauge in [IN_FLIGHT, STORE_UNINITIALISED, READY, HOLD_INDEX_ENTRIES] {
        metrics::gauge!(gauge).set(0.0);
    }
}

fn describe() {
    describe_counter!(COMMANDS, "Commands settled, by command and outcome");
    describe_counter!(REJECTIONS, "Rejected commands by reason");
    describe_counter!(
        DUPLICATES,
        "Duplicate deliveries answered from the idempotency record"
    );
    describe_counter!(COMMITS, "Redis transactions committed");
    describe_counter!(
        WATCH_CONFLICTS,
        "Redis transactions aborted by a concurrent writer and retried"
    );
    describe_counter!(
        CONTENTION_PAUSES,
        "Batches that lost max_commit_attempts WATCH races in a row and paused"
    );
    describe_histogram!(BATCH_SIZE, "Commands per Redis transaction");
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "Time to commit one batch, retries included"
    );
    describe_histogram!(
        PUBLISH_SECONDS,
        Unit::Seconds,
        "Time to publish one outcome event and get its confirm"
    );
    describe_histogram!(
        PROCESS_SECONDS,
        Unit::Seconds,
        "Time from receiving a delivery to acking or returning it"
    );
    describe_counter!(
        ACK_FRAMES,
        "basic.ack frames sent; one multiple ack settles many commands"
    );
    describe_gauge!(IN_FLIGHT, "Deliveries held by this worker");
    describe_counter!(RECONNECTS, "Broker sessions lost and re-established");
    describe_counter!(
        REDIS_ERRORS,
        "Redis requests that failed for lack of a connection"
    );
    describe_counter!(
        PUBLISH_FAILURES,
        "Event publishes nacked, returned or unconfirmed"
    );
    describe_counter!(REQUEUED, "Deliveries returned to the queue for another try");
    describe_counter!(
        DEAD_LETTERED,
        "Messages moved to the dead-letter queue, by cause"
    );
    describe_gauge!(
        STORE_UNINITIALISED,
        "1 while Redis has lost its data and nothing is decided (run setup or restore Redis)"
    );
    describe_counter!(
        EXPIRIES,
        "expire.accepted events published (re-publications count again)"
    );
    describe_histogram!(
        EXPIRY_LAG_SECONDS,
        Unit::Seconds,
        "Time from a hold's expires_at to its expire event's confirm, by Redis's clock"
    );
    describe_gauge!(
        QUEUE_MESSAGES,
        "Commands waiting in each queue this worker consumes, as last read"
    );
    describe_gauge!(
        HOLD_INDEX_ENTRIES,
        "Holds whose expiry time the sweep has not handled yet (the due-time index's entries)"
    );
    describe_gauge!(
        READY,
        "1 when broker and Redis are reachable and the worker consumes"
    );
}
