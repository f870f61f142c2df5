//! `reservation-worker status`: the deployment seen from outside, for
//! operators: how many commands wait, in the command queue and in each
//! partition (`amqp.partitions`), how many workers consume them, how many
//! messages were dead-lettered, and optionally one resource's state.
//!
//! [`collect`] asks the servers; [`render_human`] and [`render_json`] are
//! pure, so the output format is unit-tested without them.

use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use reservation_worker::admin::{self, Store, StoreError, Summary};
use reservation_worker::config::Settings;
use reservation_worker::domain::ResourceId;
use serde::Serialize;
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::time::Duration;

/// How long to wait for the broker to accept a connection: an unreachable
/// host should fail the command, not hang it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One queue, as a passive `queue.declare` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// The queue's name.
    pub queue: String,
    /// Messages ready for delivery (unacknowledged ones are not counted).
    pub ready: u32,
    /// Subscribed consumers: for the commands queue, roughly the workers.
    pub consumers: u32,
}

/// The resource asked for with `--resource`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceStatus {
    /// The resource.
    pub resource_id: ResourceId,
    /// Its state; `None` if it was never defined.
    pub state: Option<Summary>,
}

/// Everything `status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// The command queue (in partitioned mode unbound, draining).
    pub commands: QueueStatus,
    /// The partitions, in partitioned mode: the rest of the queues the
    /// workers consume ([`admin::consumed_queues`]).
    pub partitions: Vec<QueueStatus>,
    /// The dead-letter queue.
    pub dead_letters: QueueStatus,
    /// The resource, when one was asked for.
    pub resource: Option<ResourceStatus>,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No connection to the broker (down, wrong URL, wrong credentials).
    #[error("cannot connect to RabbitMQ at {url}: {reason}")]
    BrokerUnreachable {
        /// The broker URL, password hidden.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The topology was never declared.
    #[error(
        "queue {queue} does not exist yet; run `reservation-worker setup` to declare the topology"
    )]
    QueueMissing {
        /// The missing queue.
        queue: String,
    },
    /// The broker failed while answering.
    #[error("asking RabbitMQ about queue {queue}: {error}")]
    Broker {
        /// The queue asked about.
        queue: String,
        /// The broker's error (in the message, so it is not printed twice).
        error: lapin::Error,
    },
    /// Redis could not be read.
    #[error("reading resource {resource} from Redis at {url}: {error}")]
    Redis {
        /// The resource asked about.
        resource: ResourceId,
        /// The Redis URL, password hidden.
        url: String,
        /// The store's error (in the message, so it is not printed twice).
        error: StoreError,
    },
    /// The Redis settings are unusable (e.g. a malformed URL).
    #[error("Redis settings: {0}")]
    RedisConfig(String),
}

/// Asks the broker (and, for `resource`, Redis) for the current status of the
/// configured topology.
pub async fn collect(
    settings: &Settings,
    resource: Option<&ResourceId>,
) -> Result<StatusReport, StatusError> {
    let a = &settings.amqp;
    let url = a.url.to_string();
    let unreachable = |reason: String| StatusError::BrokerUnreachable {
        url: url.clone(),
        reason,
    };
    let connection = tokio::time::timeout(CONNECT_TIMEOUT, admin::connect(a, "reservation-status"))
        .await
        .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(reservation_worker::telemetry::chain(&e)))?;

    let queues = async {
        // Every queue the workers consume: the command queue first, then
        // the partitions.
        let mut consumed = Vec::new();
        for queue in admin::consumed_queues(a) {
            consumed.push(inspect_queue(&connection, &queue).await?);
        }
        let dead_letters = inspect_queue(&connection, &a.dead_letter_queue).await?;
        Ok::<_, StatusError>((consumed, dead_letters))
    }
    .await;
    // Best effort: the answer is already in hand, or the error is the news.
    let _ = connection.close(200, "done".into()).await;
    let (mut consumed, dead_letters) = queues?;
    let partitions = consumed.split_off(1);
    let commands = consumed.remove(0);

    let resource = match resource {
        None => None,
        Some(id) => {
            let store = Store::new(&settings.redis)
                .map_err(|e| StatusError::RedisConfig(format!("{e:#}")))?;
            let state = store
                .summary(id)
                .await
                .map_err(|error| StatusError::Redis {
                    resource: id.clone(),
                    url: settings.redis.url.to_string(),
                    error,
                })?;
            Some(ResourceStatus {
                resource_id: id.clone(),
                state,
            })
        }
    };
    Ok(StatusReport {
        commands,
        partitions,
        dead_letters,
        resource,
    })
}

/// The `status` subcommand: collects the report and prints it, as text or
/// (with `json`) as one JSON object on one line.
pub async fn run(settings: &Settings, resource: Option<&str>, json: bool) -> anyhow::Result<()> {
    let resource = resource
        .map(ResourceId::try_from)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--resource {e}"))?;
    let report = collect(settings, resource.as_ref()).await?;
    if json {
        println!("{}", render_json(&report));
    } else {
        print!("{}", render_human(&report));
    }
    Ok(())
}

/// A passive declare: reads the queue's counters without creating it. The
/// broker closes the channel when the queue is missing, so each queue gets a
/// channel of its own.
async fn inspect_queue(connection: &Connection, queue: &str) -> Result<QueueStatus, StatusError> {
    let broker_error = |error: lapin::Error| {
        if admin::is_not_found(&error) {
            StatusError::QueueMissing {
                queue: queue.to_string(),
            }
        } else {
            StatusError::Broker {
                queue: queue.to_string(),
                error,
            }
        }
    };
    let channel = connection.create_channel().await.map_err(broker_error)?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map_err(broker_error)?;
    let _ = channel.close(200, "done".into()).await;
    Ok(QueueStatus {
        queue: queue.to_string(),
        ready: declared.message_count(),
        consumers: declared.consumer_count(),
    })
}

impl StatusReport {
    /// Commands waiting in every queue the workers consume.
    pub fn ready_total(&self) -> u64 {
        std::iter::once(&self.commands)
            .chain(&self.partitions)
            .map(|q| u64::from(q.ready))
            .sum()
    }
}

/// The report for a terminal: one line per item, then notes on anything an
/// operator should look at.
pub fn render_human(report: &StatusReport) -> String {
    let c = &report.commands;
    let d = &report.dead_letters;
    let name_width = std::iter::once(c)
        .chain(&report.partitions)
        .chain([d])
        .map(|q| q.queue.len())
        .max()
        .unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "commands queue  {:<name_width$}  ready {:>7}  consumers {}",
        c.queue, c.ready, c.consumers
    );
    for p in &report.partitions {
        let _ = writeln!(
            out,
            "partition       {:<name_width$}  ready {:>7}  consumers {}",
            p.queue, p.ready, p.consumers
        );
    }
    if !report.partitions.is_empty() {
        let _ = writeln!(
            out,
            "commands total  {:<name_width$}  ready {:>7}",
            "",
            report.ready_total()
        );
    }
    let _ = writeln!(
        out,
        "dead letters    {:<name_width$}  ready {:>7}",
        d.queue, d.ready
    );
    if let Some(r) = &report.resource {
        match &r.state {
            Some(s) => {
                let limit = s
                    .per_customer_limit
                    .map_or_else(|| "none".to_string(), |l| l.to_string());
                let _ = writeln!(
                    out,
                    "resource        {}  capacity {}  reserved {}  held {}  remaining {}  limit {}  version {}",
                    s.resource_id, s.capacity, s.reserved, s.held, s.remaining, limit, s.version
                );
            }
            None => {
                let _ = writeln!(out, "resource        {}  not defined", r.resource_id);
            }
        }
    }
    for q in std::iter::once(c).chain(&report.partitions) {
        if q.consumers == 0 {
            let _ = writeln!(
                out,
                "note: no worker consumes {}; start one with `reservation-worker run`",
                q.queue
            );
        }
    }
    if d.ready > 0 {
        let _ = writeln!(
            out,
            "note: {} message(s) in {} could not be processed; each one's reason is in header x-error",
            d.ready, d.queue
        );
    }
    out
}

/// The report as one JSON object: `commands`, each of `partitions` (empty
/// unless partitioned) and `dead_letters` (`queue`, `ready`, `consumers`),
/// `ready_total` (commands waiting in all the queues the workers consume),
/// and with `--resource` a `resource` object with `resource_id`, `defined`
/// and, when defined, the state's fields.
pub fn render_json(report: &StatusReport) -> Value {
    let mut out = json!({
        "commands": report.commands,
        "partitions": report.partitions,
        "ready_total": report.ready_total(),
        "dead_letters": report.dead_letters,
    });
    if let Some(r) = &report.resource {
        let mut resource = match &r.state {
            Some(s) => serde_json::to_value(s).expect("plain struct"),
            None => json!({ "resource_id": r.resource_id.as_str() }),
        };
        resource["defined"] = r.state.is_some().into();
        out["resource"] = resource;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(consumers: u32, dead: u32, resource: Option<ResourceStatus>) -> StatusReport {
        StatusReport {
            commands: QueueStatus {
                queue: "reservations.commands".into(),
                ready: 12,
                consumers,
            },
            partitions: Vec::new(),
            dead_letters: QueueStatus {
                queue: "reservations.commands.dead".into(),
                ready: dead,
                consumers: 0,
            },
            resource,
        }
    }

    fn concert(state: bool) -> ResourceStatus {
        let resource_id = ResourceId::try_from("concert-42").unwrap();
        ResourceStatus {
            state: state.then(|| Summary {
                resource_id: resource_id.clone(),
                capacity: 1000,
                reserved: 4,
                held: 0,
                remaining: 996,
                per_customer_limit: Some(4),
                price: 0,
                budget_id: None,
                version: 3,
            }),
            resource_id,
        }
    }

    #[test]
    fn human_output_lists_queues_and_resource() {
        let text = render_human(&report(4, 0, Some(concert(true))));
        assert_eq!(
            text,
            "commands queue  reservations.commands       ready      12  consumers 4\n\
             dead letters    reservations.commands.dead  ready       0\n\
             resource        concert-42  capacity 1000  reserved 4  held 0  remaining 996  limit 4  version 3\n"
        );
    }

    #[test]
    fn human_output_notes_what_needs_attention() {
        let text = render_human(&report(0, 3, Some(concert(false))));
        assert!(
            text.contains("resource        concert-42  not defined\n"),
            "{text}"
        );
        assert!(
            text.contains("note: no worker consumes reservations.commands"),
            "{text}"
        );
        assert!(
            text.contains("note: 3 message(s) in reservations.commands.dead"),
            "{text}"
        );
        let quiet = render_human(&report(1, 0, None));
        assert!(!quiet.contains("note:"), "{quiet}");
        assert!(!quiet.contains("resource"), "{quiet}");
    }

    #[test]
    fn json_output_is_one_object() {
        assert_eq!(
            render_json(&report(4, 0, Some(concert(true)))),
            json!({
                "commands": {"queue": "reservations.commands", "ready": 12, "consumers": 4},
                "partitions": [],
                "ready_total": 12,
                "dead_letters": {"queue": "reservations.commands.dead", "ready": 0, "consumers": 0},
                "resource": {
                    "resource_id": "concert-42", "defined": true, "capacity": 1000,
                    "reserved": 4, "held": 0, "remaining": 996, "per_customer_limit": 4,
                    "price": 0, "budget_id": null, "version": 3
                }
            })
        );
        assert_eq!(
            render_json(&report(4, 0, Some(concert(false))))["resource"],
            json!({"resource_id": "concert-42", "defined": false})
        );
        assert!(render_json(&report(4, 0, None)).get("resource").is_none());
    }

    fn partitioned(consumers: [u32; 2]) -> StatusReport {
        let mut r = report(2, 0, None);
        r.commands.ready = 1;
        r.partitions = (0..2)
            .map(|i| QueueStatus {
                queue: format!("reservations.commands.p{i}"),
                ready: 100 * (i + 1),
                consumers: consumers[i as usize],
            })
            .collect();
        r
    }

    #[test]
    fn every_partition_is_shown_and_counted() {
        let r = partitioned([2, 2]);
        assert_eq!(r.ready_total(), 301);
        assert_eq!(
            render_human(&r),
            "commands queue  reservations.commands       ready       1  consumers 2\n\
             partition       reservations.commands.p0    ready     100  consumers 2\n\
             partition       reservations.commands.p1    ready     200  consumers 2\n\
             commands total                              ready     301\n\
             dead letters    reservations.commands.dead  ready       0\n"
        );
        let json = render_json(&r);
        assert_eq!(json["ready_total"], 301);
        assert_eq!(
            json["partitions"][1],
            json!({"queue": "reservations.commands.p1", "ready": 200, "consumers": 2})
        );
    }

    #[test]
    fn a_partition_nobody_consumes_is_noted() {
        let text = render_human(&partitioned([2, 0]));
        assert!(
            text.contains("note: no worker consumes reservations.commands.p1;"),
            "{text}"
        );
        assert!(
            !text.contains("consumes reservations.commands.p0"),
            "{text}"
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        let missing = StatusError::QueueMissing {
            queue: "reservations.commands".into(),
        };
        assert!(missing.to_string().contains("reservation-worker setup"));
        let down = StatusError::BrokerUnreachable {
            url: reservation_worker::config::SecretUrl::new(
                "amqp://guest:secret@10.0.0.1:5672/%2f",
            )
            .to_string(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            down.to_string(),
            "cannot connect to RabbitMQ at amqp://guest:***@10.0.0.1:5672/%2f: connection refused"
        );
    }
}
