//! The command line: `setup`, `run`, `send`, `inspect`, `events`, `status`,
//! `rush`, `bench`: programs on top of the library.

mod bench;
mod events;
mod fairness;
mod rush;
mod status;
mod svg;
mod verify;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use reservation_worker::admin::{self, Store, Summary};
use reservation_worker::audit;
use reservation_worker::config::Settings;
use reservation_worker::domain::{BudgetId, CommandId, CustomerId, ResourceId};
use reservation_worker::message::CommandBody;
use reservation_worker::producer::Producer;
use reservation_worker::startup::{self, Application};
use rush::RushOptions;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

/// Sells limited capacity safely under a rush: commands from RabbitMQ,
/// aggregates in Redis, one outcome event per command.
#[derive(Debug, Parser)]
#[command(name = "reservation-worker", version, about)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (config/default.toml).
    #[arg(long, global = true, env = "RW_CONFIG")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Declare the exchanges and queues of the contract (idempotent).
    Setup,
    /// Consume commands until SIGTERM / Ctrl-C.
    Run {
        /// Name of this replica, shown as the broker connection name.
        #[arg(long, env = "RW_WORKER_NAME")]
        name: Option<String>,
    },
    /// Publish one command (with a publisher confirm) and print its command_id.
    Send {
        /// The command.
        #[command(subcommand)]
        command: SendCommand,
    },
    /// Print a resource's state as JSON; with --history, its events in order.
    Inspect {
        /// The resource id.
        resource: String,
        /// Print the event history (JSON lines) after the state.
        #[arg(long)]
        history: bool,
        /// Show the state as of this version, folded from the history.
        #[arg(long, value_name = "VERSION")]
        at: Option<u64>,
    },
    /// Fold every resource's history from scratch and compare it with the
    /// stored state, and every budget's spending with the amounts its
    /// resources recorded; exit 1 if anything differs.
    Verify {
        /// The resources to verify.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        resources: Vec<String>,
        /// Every resource and every budget.
        #[arg(long)]
        all: bool,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Fire a ticket rush at running workers and check the result.
    Rush(RushOptions),
    /// Measure throughput and latency against the null-worker and
    /// one-transaction-per-command baselines (see docs/benchmarks.md).
    Bench(bench::BenchOptions),
    /// Measure holds at scale: Redis memory per live hold, and how fast a
    /// wave of holds falling due at once is swept (see docs/benchmarks.md).
    BenchHolds(bench::holds::HoldsOptions),
    /// The bench's baseline replica: consume, publish, ack; no Redis.
    #[command(hide = true)]
    NullWorker {
        /// Connection name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print outcome events as they are published (JSON lines), all or one
    /// resource's: the next --count of them, or with --follow every one
    /// until Ctrl-C.
    Events(events::EventsOptions),
    /// Show queue depths, consumers and dead letters; with --resource, its state.
    Status {
        /// Also show this resource's state (from Redis).
        #[arg(long)]
        resource: Option<String>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// A command to send.
#[derive(Debug, Subcommand)]
pub enum SendCommand {
    /// Create a resource or change its capacity / limit.
    Define {
        /// The resource id.
        #[arg(long)]
        resource: String,
        /// Total seats.
        #[arg(long)]
        capacity: u32,
        /// Most seats one customer may hold (without it, or --no-limit, an
        /// existing resource keeps its limit).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "no_limit")]
        limit: Option<u32>,
        /// Remove the per-customer limit.
        #[arg(long)]
        no_limit: bool,
        /// Price per seat in minor units (without it, an existing resource
        /// keeps its price; a new one is free).
        #[arg(long)]
        price: Option<u32>,
        /// The budget reserves and holds are paid from (without it, or
        /// --no-budget, an existing resource keeps its budget).
        #[arg(long, conflicts_with = "no_budget")]
        budget: Option<String>,
        /// Detach the resource from its budget.
        #[arg(long)]
        no_budget: bool,
        /// Idempotency key (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
    },
    /// Create a budget or change its cap: no customer may spend more than
    /// the amount, in total, on the resources that name the budget.
    DefineBudget {
        /// The budget id.
        #[arg(long)]
        budget: String,
        /// Most one customer may spend, in minor units.
        #[arg(long)]
        amount: u64,
        /// Idempotency key (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
    },
    /// Reserve seats for a customer, all or nothing.
    Reserve {
        /// The resource id.
        #[arg(long)]
        resource: String,
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// Seats.
        #[arg(long, default_value_t = 1)]
        quantity: u32,
        /// Idempotency key (default: a new UUID); also the reservation id.
        #[arg(long)]
        id: Option<String>,
    },
    /// Hold seats for a customer while they pay, all or nothing; they come
    /// back after --secs unless confirmed.
    Hold {
        /// The resource id.
        #[arg(long)]
        resource: String,
        /// The customer id.
        #[arg(long)]
        customer: String,
        /// Seats.
        #[arg(long, default_value_t = 1)]
        quantity: u32,
        /// How long the hold lasts, in seconds (1 to 86400).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=86_400))]
        secs: u32,
        /// Idempotency key (default: a new UUID); also the hold id.
        #[arg(long)]
        id: Option<String>,
    },
    /// Make a live hold a reservation for good.
    Confirm {
        /// The resource id.
        #[arg(long)]
        resource: String,
        /// The hold command's command_id.
        #[arg(long)]
        hold: String,
        /// Idempotency key (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
    },
    /// Release the seats of an accepted reservation, or of a live or
    /// confirmed hold.
    Cancel {
        /// The resource id.
        #[arg(long)]
        resource: String,
        /// The reserve (or hold) command's command_id.
        #[arg(long)]
        reservation: String,
        /// Idempotency key (default: a new UUID).
        #[arg(long)]
        id: Option<String>,
    },
}

/// The runtime `cli` runs on: a worker replica's (`run`, and the bench's
/// `null-worker`, so the limit it measures runs the same way) has
/// `worker.threads` threads; the tools one per core.
pub fn runtime(cli: &Cli, settings: &Settings) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match cli.command {
        CliCommand::Run { .. } | CliCommand::NullWorker { .. } => settings.worker.threads,
        _ => 0,
    };
    startup::runtime(threads)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli, settings: Settings) -> anyhow::Result<()> {
    match cli.command {
        CliCommand::Setup => setup(&settings).await,
        CliCommand::Run { name } => {
            let name = name.unwrap_or_else(default_worker_name);
            let app = Application::build(settings, name).await?;
            app.run_until(reservation_worker::shutdown::on_signal())
                .await;
            Ok(())
        }
        CliCommand::Send { command } => send(&settings, command).await,
        CliCommand::Inspect {
            resource,
            history,
            at,
        } => inspect(&settings, &resource, history, at).await,
        CliCommand::Verify {
            resources,
            all,
            json,
        } => {
            let agree = verify::run(&settings, &resources, all, json).await?;
            if !agree {
                // Said above; the exit status is for scripts.
                std::process::exit(1);
            }
            Ok(())
        }
        CliCommand::Bench(options) => bench::run(&settings, &options).await,
        CliCommand::BenchHolds(options) => bench::holds::run(&settings, &options).await,
        CliCommand::NullWorker { name } => {
            let name = name.unwrap_or_else(default_worker_name);
            let shutdown = reservation_worker::shutdown::on_signal();
            bench::null_worker(&settings, &name, shutdown).await
        }
        CliCommand::Rush(options) => {
            let sound = rush::run(&settings, &options, CancellationToken::new()).await?;
            anyhow::ensure!(sound, "the rush broke an invariant (see above)");
            Ok(())
        }
        CliCommand::Events(options) => {
            let stop = reservation_worker::shutdown::on_signal();
            events::run(&settings, &options, stop).await
        }
        CliCommand::Status { resource, json } => {
            status::run(&settings, resource.as_deref(), json).await
        }
    }
}

/// The host name (a pod or container name, unique per replica), else the
/// process id.
fn default_worker_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .map(|h| format!("reservation-worker-{h}"))
        .unwrap_or_else(|| format!("reservation-worker-{}", std::process::id()))
}

async fn setup(settings: &Settings) -> anyhow::Result<()> {
    let a = &settings.amqp;
    let done = startup::setup(settings).await?;
    println!(
        "declared: exchanges {}, {} (alternate exchange {}), {}; queues {} (quorum, delivery \
         limit {}), {}, {} (unrouted events, kept {} s)",
        a.commands_exchange,
        a.events_exchange,
        a.unrouted_exchange,
        a.dead_letter_exchange,
        a.commands_queue,
        a.delivery_limit,
        a.dead_letter_queue,
        a.unrouted_queue,
        a.unrouted_retention_secs,
    );
    if done.store_initialised {
        println!(
            "store: marked as initialised at {}: workers decide against what it holds now \
             (if Redis lost its data, that is an empty store)",
            settings.redis.url
        );
    } else {
        println!("store: already initialised at {}", settings.redis.url);
    }
    if a.partitions > 0 {
        println!(
            "partitioned: {} -> {} (consistent hash) -> {} (single active consumer each); {} unbound",
            a.commands_exchange,
            a.partition_exchange,
            admin::partition_queues(a).join(", "),
            a.commands_queue
        );
    }
    Ok(())
}

async fn send(settings: &Settings, command: SendCommand) -> anyhow::Result<()> {
    let new_id = |id: Option<String>| -> anyhow::Result<CommandId> {
        let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        CommandId::try_from(id).context("--id")
    };
    let resource = |r: String| ResourceId::try_from(r).context("--resource");
    let body = match command {
        SendCommand::Define {
            resource: r,
            capacity,
            limit,
            no_limit,
            price,
            budget,
            no_budget,
            id,
        } => CommandBody::Define {
            command_id: new_id(id)?,
            resource_id: resource(r)?,
            capacity,
            per_customer_limit: match (limit, no_limit) {
                (Some(n), _) => Some(Some(n)),
                (None, true) => Some(None),
                (None, false) => None,
            },
            price,
            budget_id: match (budget, no_budget) {
                (Some(b), _) => Some(Some(BudgetId::try_from(b).context("--budget")?)),
                (None, true) => Some(None),
                (None, false) => None,
            },
        },
        SendCommand::DefineBudget { budget, amount, id } => CommandBody::DefineBudget {
            command_id: new_id(id)?,
            budget_id: BudgetId::try_from(budget).context("--budget")?,
            per_customer_amount: amount,
        },
        SendCommand::Reserve {
            resource: r,
            customer,
            quantity,
            id,
        } => CommandBody::Reserve {
            command_id: new_id(id)?,
            resource_id: resource(r)?,
            customer_id: CustomerId::try_from(customer).context("--customer")?,
            quantity,
        },
        SendCommand::Hold {
            resource: r,
            customer,
            quantity,
            secs,
            id,
        } => CommandBody::Hold {
            command_id: new_id(id)?,
            resource_id: resource(r)?,
            customer_id: CustomerId::try_from(customer).context("--customer")?,
            quantity,
            hold_secs: secs,
        },
        SendCommand::Confirm {
            resource: r,
            hold,
            id,
        } => CommandBody::Confirm {
            command_id: new_id(id)?,
            resource_id: resource(r)?,
            hold_id: CommandId::try_from(hold).context("--hold")?,
        },
        SendCommand::Cancel {
            resource: r,
            reservation,
            id,
        } => CommandBody::Cancel {
            command_id: new_id(id)?,
            resource_id: resource(r)?,
            reservation_id: CommandId::try_from(reservation).context("--reservation")?,
        },
    };
    let producer = Producer::connect(&settings.amqp)
        .await
        .with_context(|| format!("connecting to {}", settings.amqp.url))?;
    if let Err(e) = producer.send(&body).await {
        anyhow::ensure!(
            !e.is_missing_exchange(),
            "the commands exchange {:?} does not exist on {}: run `reservation-worker setup` first, \
             which declares the exchanges and queues",
            settings.amqp.commands_exchange,
            settings.amqp.url
        );
        return Err(e).context("publishing the command");
    }
    producer.close().await?;
    println!("{}", body.command_id());
    Ok(())
}

async fn inspect(
    settings: &Settings,
    resource: &str,
    history: bool,
    at: Option<u64>,
) -> anyhow::Result<()> {
    let resource = ResourceId::try_from(resource).context("RESOURCE")?;
    let store = Store::new(&settings.redis)?;
    let reading = || format!("reading {resource} from {}", settings.redis.url);
    let summary = match at {
        None => store.summary(&resource).await.with_context(reading)?,
        Some(version) => {
            let events = store.history(&resource).await.with_context(reading)?;
            let state = audit::fold(events.iter().map(|e| &e.event), Some(version));
            let summary = state.resource.map(|r| Summary::of(&resource, &r));
            if let Some(s) = &summary {
                anyhow::ensure!(
                    s.version == version,
                    "resource {resource} has no version {version}: it is at version {}",
                    s.version
                );
            }
            summary
        }
    };
    match summary {
        Some(s) => println!("{}", serde_json::to_string_pretty(&s)?),
        None => {
            // Before `setup`, or after Redis lost its data, say so rather
            // than that one resource is missing.
            if let Err(e @ admin::StoreError::Uninitialised { .. }) = store.check().await {
                return Err(e).with_context(reading);
            }
            anyhow::bail!("resource {resource} is not defined")
        }
    }
    if history {
        for event in store.history(&resource).await? {
            println!("{}", serde_json::to_string(&event)?);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_run_on_worker_threads_and_the_tools_on_a_thread_per_core() {
        use tokio::runtime::RuntimeFlavor;
        let mut settings = Settings::load(None).unwrap();
        let flavor = |args: &[&str], settings: &Settings| {
            let cli = Cli::parse_from(args);
            runtime(&cli, settings).unwrap().handle().runtime_flavor()
        };
        assert_eq!(settings.worker.threads, 1, "the shipped default");
        for replica in [&["rw", "run"][..], &["rw", "null-worker"]] {
            assert_eq!(flavor(replica, &settings), RuntimeFlavor::CurrentThread);
        }
        for tool in [&["rw", "setup"][..], &["rw", "status"]] {
            assert_eq!(flavor(tool, &settings), RuntimeFlavor::MultiThread);
        }
        settings.worker.threads = 0;
        assert_eq!(
            flavor(&["rw", "run"], &settings),
            RuntimeFlavor::MultiThread
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::parse_from([
            "rw",
            "send",
            "reserve",
            "--resource",
            "r",
            "--customer",
            "u",
            "--quantity",
            "2",
        ]);
        assert!(matches!(
            cli.command,
            CliCommand::Send {
                command: SendCommand::Reserve { quantity: 2, .. }
            }
        ));
    }

    #[test]
    fn cli_parses_status() {
        let cli = Cli::parse_from(["rw", "status", "--resource", "concert-42", "--json"]);
        assert!(matches!(
            cli.command,
            CliCommand::Status { resource: Some(ref r), json: true } if r == "concert-42"
        ));
        let cli = Cli::parse_from(["rw", "status"]);
        assert!(matches!(
            cli.command,
            CliCommand::Status {
                resource: None,
                json: false
            }
        ));
    }
}
