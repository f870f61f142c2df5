//! The replicas of one run, as separate processes of this binary, and the
//! null worker: the baseline replica that only consumes, publishes and acks.

use super::plan::Mode;
use anyhow::Context as _;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use reservation_worker::admin::{self, Message, Publisher};
use reservation_worker::config::{LogFormat, Settings};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Worker replica processes of one run.
pub(super) struct Replicas {
    children: Vec<(Child, u16)>,
}

impl Replicas {
    pub(super) fn spawn(
        exe: &std::path::Path,
        settings: &Settings,
        prefix: &str,
        n: usize,
        mode: Mode,
        prefetch: u16,
    ) -> anyhow::Result<Replicas> {
        let mut children = Vec::new();
        for i in 0..n {
            let port = free_port()?;
            // The run's settings, as the tests give theirs to worker
            // processes: every key through the environment.
            let mut s = settings.clone();
            s.amqp.prefetch = prefetch;
            s.worker.group_commit = mode != Mode::Naive;
            s.http.port = port;
            s.http.bind = "127.0.0.1".into();
            s.log.level = "warn".into();
            s.log.format = LogFormat::Json;
            let mut cmd = Command::new(exe);
            match mode {
                Mode::Null => cmd.arg("null-worker"),
                Mode::Group | Mode::Naive | Mode::Baseline => cmd.arg("run"),
            };
            cmd.args(["--name", &format!("{prefix}-w{i}")])
                .envs(s.to_env())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            children.push((cmd.spawn().context("starting a replica")?, port));
        }
        Ok(Replicas { children })
    }

    /// CPU time (user + system) the replicas have used so far, in seconds,
    /// counted from each replica's start, so its start-up is included (a
    /// few ms).
    pub(super) fn cpu_seconds(&self) -> f64 {
        self.children
            .iter()
            .filter_map(|(c, _)| cpu_seconds_of(c.id()))
            .sum()
    }

    /// Peak resident memory of each replica (VmHWM), in KiB.
    pub(super) fn peak_rss(&self) -> Vec<u64> {
        self.children
            .iter()
            .map(|(c, _)| {
                std::fs::read_to_string(format!("/proc/{}/status", c.id()))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmHWM:"))
                            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                    })
                    .unwrap_or(0)
            })
            .collect()
    }

    /// Sums of selected counters, per replica, from `/metrics`.
    pub(super) async fn scrape(&self) -> Vec<HashMap<String, f64>> {
        let mut all = Vec::new();
        for (_, port) in &self.children {
            all.push(scrape(*port).await.unwrap_or_default());
        }
        all
    }

    pub(super) fn stop(mut self) {
        for (c, _) in &self.children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        for (c, _) in &mut self.children {
            let _ = c.wait();
        }
        self.children.clear();
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for (c, _) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// CPU time (user + system) process `pid` has used so far, in seconds.
pub(super) fn cpu_seconds_of(pid: u32) -> Option<f64> {
    // utime and stime are fields 14 and 15 of /proc/PID/stat, counted after
    // the parenthesised command name, in clock ticks: USER_HZ, which Linux
    // fixes at 100 for this interface.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The broker's process when it runs on this machine: the one Erlang VM
/// (`beam.smp`) here. `None` with none, or with several (other nodes, which
/// could not be told apart), so its CPU is never taken from the wrong one.
pub(super) fn local_broker() -> Option<u32> {
    let mut found = std::fs::read_dir("/proc").ok()?.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (comm.trim_end() == "beam.smp").then_some(pid)
    });
    let pid = found.next()?;
    found.next().is_none().then_some(pid)
}

/// The null worker's command counter.
pub(super) const NULL_COMMANDS: &str = "null_commands_total";

/// `reservation-worker null-worker`: consume, publish an outcome of the same
/// size with a confirm, ack. No Redis, no decoding: the broker's limit.
pub async fn null_worker(
    settings: &Settings,
    name: &str,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let a = &settings.amqp;
    serve_metrics(settings, &shutdown).await?;
    let connection = admin::connect(a, name).await?;
    let publisher = Publisher::open(&connection, a.confirm_timeout()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(a.prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            a.commands_queue.as_str().into(),
            name.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // The size of a typical accepted reserve event.
    let body = format!(
        r#"{{"event_id":"{}","command_id":"c-000000","command":"reserve","outcome":"accepted","resource_id":"hot","customer_id":"u-00000","quantity":1,"remaining":100000,"version":100000,"occurred_at":"2026-11-23T10:00:00Z"}}"#,
        uuid::Uuid::nil()
    );
    let body = Arc::new(body.into_bytes());
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = consumer.next() => match d { Some(d) => d?, None => break },
        };
        let (publisher, body, exchange) =
            (publisher.clone(), body.clone(), a.events_exchange.clone());
        tracker.spawn(async move {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default();
            let correlation = String::from_utf8_lossy(&delivery.data)
                .split("\"command_id\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_default()
                .to_owned();
            let published = publisher
                .publish(Message {
                    exchange: &exchange,
                    routing_key: "reserve.accepted",
                    body: &body,
                    message_id: Some(&id),
                    correlation_id: Some(&correlation),
                    ..Default::default()
                })
                .await;
            if published.is_ok() && delivery.ack(BasicAckOptions::default()).await.is_ok() {
                metrics::counter!(NULL_COMMANDS).increment(1);
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    publisher.close().await;
    let _ = channel.close(200, "done".into()).await;
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// `/metrics` of the null worker, for the bench to scrape like a worker's.
async fn serve_metrics(settings: &Settings, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let handle = reservation_worker::metrics::install()?;
    let addr = (settings.http.bind.as_str(), settings.http.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .context("binding the null worker's /metrics")?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || std::future::ready(handle.render())),
    );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

pub(super) async fn scrape(port: u16) -> anyhow::Result<HashMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    let mut sums = HashMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name_labels.split('{').next().unwrap_or(name_labels);
        if let Ok(v) = value.parse::<f64>() {
            *sums.entry(name.to_owned()).or_insert(0.0) += v;
        }
    }
    Ok(sums)
}
