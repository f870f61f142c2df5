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
//! - [`domain`]: the pure core. `decide` and `apply` for one resource, the
//!   id newtypes, rejection reasons. No I/O.
//! - [`message`]: the wire formats: decoding command bodies (dead-letter vs.
//!   `invalid`), the canonical body hash, event envelopes.
//! - [`schema`]: JSON Schemas of the command and event bodies, generated
//!   from the wire types (committed under `schema/`).
//! - [`store`]: Redis: the key layout, the WATCH/MULTI transaction that
//!   dedupes, decides and commits, and read-side queries.
//! - [`broker`]: RabbitMQ: connecting, declaring the topology, publishing
//!   with publisher confirms.
//! - [`producer`]: the public API for publishing commands from Rust.
//! - [`worker`]: the consumer loop: one span per delivery, a lane per
//!   resource for group commit, reconnects, ack only after commit and
//!   confirm.
//! - [`settle`]: acks coalesced into `multiple` acks, in delivery-tag order.
//! - [`health`]: readiness flags the worker keeps current.
//! - [`http`]: `/healthz`, `/readyz` and `/metrics`.
//! - [`metrics`]: the name of every metric, and the Prometheus recorder.
//! - [`config`]: layered settings: defaults file, `--config FILE`, env.
//! - [`telemetry`]: structured `tracing` logs.
//! - [`shutdown`]: SIGTERM / Ctrl-C as a cancellation token.
//! - [`rush`]: the ticket-rush load generator and invariant checker.
//! - [`bench`](mod@bench): throughput and latency against the null-worker and
//!   one-transaction-per-command baselines.
//! - [`status`]: `reservation-worker status`: queue depths, consumers and a
//!   resource's state, for operators.
//! - [`cli`]: the `reservation-worker` subcommands.

pub mod bench;
pub mod broker;
pub mod cli;
pub mod config;
pub mod domain;
pub mod health;
pub mod http;
pub mod message;
pub mod metrics;
pub mod producer;
pub mod rush;
pub mod schema;
pub mod settle;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod worker;
