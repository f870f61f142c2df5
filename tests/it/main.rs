//! Integration tests against the real RabbitMQ and Redis on 127.0.0.1.
//! One binary; each test isolates itself (see `helpers`).

mod amqp_cluster;
mod bad_input;
mod budget_rush;
mod budgets;
mod cluster;
mod commands;
mod concurrency;
mod crash;
mod examples;
mod fairness;
mod faults;
// First come, first served, measured; shared with the binary.
#[path = "../../src/cli/fairness.rs"]
mod fairness_measure;
mod first_run;
mod helpers;
mod holds;
mod http;
// The checks of a rush's events and history, shared with the binary.
#[path = "../../src/cli/rush/ledger.rs"]
mod ledger;
mod memory;
mod partitions;
// The rush's traffic generator, shared with the binary.
#[path = "../../src/cli/rush/plan.rs"]
mod plan;
mod process;
mod prometheus;
mod proxy;
mod redis_faults;
mod redis_server;
mod secrets;
// The SVG check of the report, shared with the binary's own tests.
#[path = "../../src/cli/svg.rs"]
#[allow(dead_code)]
mod svg;
mod tls;
mod unrouted;
