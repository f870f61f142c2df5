//! `reservation-worker` sells limited capacity (concert seats, cinema seats,
//! restaurant tables) safely when thousands of requests arrive at once.
//!
//! Producers publish `define` / `reserve` / `cancel` commands to RabbitMQ;
//! worker replicas consume them at least once, decide each one against the
//! resource's aggregate in Redis under WATCH/MULTI optimistic versioning, and
//! publish exactly one outcome event per command with publisher confirms. The
//! wire contract is described in `docs/contract.md`.
//!
//! # Layout
//!
//! The path of one delivery reads top to bottom in `src/worker/pipeline.rs`:
//! `Pipeline::process` decodes it (`message`) and queues it behind its
//! resource; the lane (`run_lane`, same file) decides it together with the
//! other waiting commands of that resource (`worker/commit.rs`: load a
//! snapshot from `store`, decide it with [`domain::decide_batch`], commit
//! the change set); then `Pipeline::finish` publishes the outcome with a
//! confirm (`broker`) and settles the delivery. The one function that
//! chooses ack, requeue, dead-letter or leave is `disposition`, in the same
//! file.
//!
//! Public, for producers, embedders and tools:
//! - [`domain`]: the pure core. `decide` and `apply` for one command,
//!   `decide_batch` for a transaction's batch (idempotency included), ids,
//!   reasons, events. No I/O.
//! - [`message`]: the wire formats: decoding command bodies (dead-letter vs.
//!   `invalid`), the canonical body hash, event envelopes.
//! - [`producer`]: publishing commands from Rust, with confirms.
//! - [`config`]: layered settings (defaults file, `--config FILE`, env) and
//!   the URL type that never prints its password.
//! - [`startup`]: build and run a worker replica (`Application`), and
//!   `setup`.
//! - [`admin`]: the topology, connection and store calls that operators'
//!   tools and the tests use.
//! - [`audit`]: folding histories from scratch and comparing them with the
//!   stored state and budgets (`verify`, `inspect --at`).
//! - [`schema`]: JSON Schemas of the command and event bodies, generated
//!   from the wire types (committed under `schema/`).
//! - [`metrics`]: the name of every metric the worker exports, and the
//!   Prometheus recorder.
//! - [`telemetry`]: structured `tracing` logs; [`shutdown`]: SIGTERM /
//!   Ctrl-C as a cancellation token.
//!
//! Budgets (a customer's spending cap across resources) span two
//! aggregates: `worker/commit.rs` sets the cost aside on the budget
//! (`store/budget.rs`) before the resource's commit, and the pipeline
//! settles it after, before publishing; `domain/budget.rs` holds the rules
//! of each step and `docs/budgets.md` the protocol. `failpoint` lets the
//! tests crash a worker between the steps.
//!
//! Private, under them (arrows point down):
//! - `worker`: the consumer: sessions with reconnects, the pipeline of one
//!   delivery, group-commit lanes, the commit loop.
//! - `broker`: RabbitMQ: connecting, the topology, publishing with
//!   confirms, the delivery handle that is settled once, coalesced acks.
//! - `store`: Redis: the key layout, the WATCH/MULTI transaction that loads
//!   a snapshot and commits a change set, the read side.
//! - `http`, `health`: `/healthz`, `/readyz` and `/metrics`, and the
//!   readiness flags behind them.
//!
//! The programs (`reservation-worker setup | run | send | inspect | status
//! | rush | bench`) are the binary in `src/main.rs` and `src/cli/`.

pub mod admin;
pub mod audit;
pub mod config;
pub mod domain;
pub mod message;
pub mod metrics;
pub mod producer;
pub mod schema;
pub mod shutdown;
pub mod startup;
pub mod telemetry;

mod broker;
mod failpoint;
mod health;
mod http;
mod store;
mod tls;
mod worker;
