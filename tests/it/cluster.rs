//! The scale-out issue's acceptance tests, on local clusters that
//! `scripts/clusters.sh` starts beside the shared servers: a 3-master Redis
//! Cluster with a replica each, and a 3-node RabbitMQ cluster.
//!
//! 1. The rush on both clusters, over resources on every master (one of
//!    them paid from a budget that lives in another slot), with the
//!    RabbitMQ node that serves workers SIGKILLed and a Redis master
//!    SIGKILLed (its replica takes over) while it runs.
//! 2. Resharding: the slot of the hot resource moves to another master and
//!    back while commands flow.
//!
//! Both check: nothing oversold, every command answered, every event of a
//! command the same bytes, `inspect` equal to the events, no command
//! dead-lettered, and `verify --all` agrees with every history.

use crate::helpers::*;
use crate::process::WorkerProcess;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reservation_worker::config::{SecretUrl, Settings};
use reservation_worker::domain::{BudgetId, CommandId, CommandKind};
use reservation_worker::message::CommandBody;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// How long the rush may take to be answered (a deadline, never a timing
/// assertion; generous for a busy 2-core machine with clusters on it).
const RUSH_DEADLINE: Duration = Duration::from_secs(240);
/// Seats per resource: fewer than the rush asks for, so every resource
/// sells out.
const CAPACITY: u32 = 150;
const CUSTOMERS: usize = 300;
/// The budget's cap per customer, and the price of the budgeted resource.
const CAP: u64 = 300;
const PRICE: u32 = 100;
const BUDGET: &str = "season";

/// One node of a local cluster, as `scripts/clusters.sh` recorded it.
#[derive(Debug, Clone, serde::Deserialize)]
struct RabbitNode {
    pid: u32,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct RedisNode {
    port: u16,
    pid: u32,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct ClusterFile {
    #[serde(default)]
    amqp_url: Option<String>,
    redis_url: String,
    #[serde(default)]
    rabbit: Vec<RabbitNode>,
    redis: Vec<RedisNode>,
}

/// Clusters started for one test, stopped (by the PIDs the script started)
/// when dropped, whatever the test's end.
struct LocalClusters {
    dir: PathBuf,
    file: ClusterFile,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/clusters.sh")
}

impl LocalClusters {
    /// Starts the clusters (`--redis-only`: the Redis Cluster alone).
    async fn start(name: &str, args: &[&str]) -> LocalClusters {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("clusters")
            .join(format!(
                "{name}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ));
        let out = tokio::process::Command::new(script())
            .arg("start")
            .arg(&dir)
            .args(args)
            .output()
            .await
            .expect("run scripts/clusters.sh");
        let clusters = |file| LocalClusters {
            dir: dir.clone(),
            file,
        };
        if !out.status.success() {
            // Stop whatever it started before failing.
            drop(clusters(ClusterFile {
                amqp_url: None,
                redis_url: String::new(),
                rabbit: Vec::new(),
                redis: Vec::new(),
            }));
            panic!(
                "scripts/clusters.sh start failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let json = std::fs::read_to_string(dir.join("cluster.json")).expect("cluster.json");
        clusters(serde_json::from_str(&json).expect("cluster.json is readable"))
    }

    /// A connection to the Redis node on `port`.
    async fn redis(&self, port: u16) -> redis::aio::MultiplexedConnection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// `(port, node id)` of the master that serves `slot`, by `CLUSTER
    /// NODES` as a live node sees it.
    async fn master_of(&self, slot: u16) -> (u16, String) {
        for node in &self.file.redis {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", node.port)) else {
                continue;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            let Ok(nodes): Result<String, _> = redis::cmd("CLUSTER")
                .arg("NODES")
                .query_async(&mut conn)
                .await
            else {
                continue;
            };
            for line in nodes.lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                if fields.len() < 8 || !fields[2].contains("master") || fields[2].contains("fail") {
                    continue;
                }
                let serves = fields[8..].iter().any(|range| {
                    let (a, b) = range.split_once('-').unwrap_or((range, range));
                    match (a.parse::<u16>(), b.parse::<u16>()) {
                        (Ok(a), Ok(b)) => (a..=b).contains(&slot),
                        _ => false,
                    }
                });
                if serves {
                    let port = fields[1]
                        .split(['@', ','])
                        .next()
                        .and_then(|a| a.rsplit_once(':'))
                        .and_then(|(_, p)| p.parse().ok())
                        .expect("a node address");
                    return (port, fields[0].to_owned());
                }
            }
        }
        panic!("no live master serves slot {slot}");
    }

    /// The hash slot of `key`, as the first live node computes it.
    async fn slot(&self, key: &str) -> u16 {
        for node in &self.file.redis {
            let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{}", node.port)) else {
                continue;
            };
            let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                continue;
            };
            if let Ok(slot) = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query_async(&mut conn)
                .await
            {
                return slot;
            }
        }
        panic!("no live Redis node to ask for the slot of {key}");
    }

    /// Moves `slot` from the master on `from` to the master on `to`, as
    /// `redis-cli --cluster reshard` does: IMPORTING / MIGRATING, MIGRATE
    /// the keys, then hand the slot over. One key per MIGRATE, so the
    /// window in which a resource's keys are split between the two
    /// masters (ASK, TRYAGAIN) lasts while commands flow.
    async fn move_slot(&self, slot: u16, from: u16, to: u16) {
        let (mut src, mut dst) = (self.redis(from).await, self.redis(to).await);
        let id = |c: &mut redis::aio::MultiplexedConnection| {
            let mut c = c.clone();
            async move {
                redis::cmd("CLUSTER")
                    .arg("MYID")
                    .query_async::<String>(&mut c)
                    .await
                    .unwrap()
            }
        };
        let (src_id, dst_id) = (id(&mut src).await, id(&mut dst).await);
        let setslot = |conn: &mut redis::aio::MultiplexedConnection, how: &str, node: &str| {
            let mut c = conn.clone();
            let (how, node) = (how.to_owned(), node.to_owned());
            async move {
                redis::cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot)
                    .arg(&how)
                    .arg(&node)
                    .exec_async(&mut c)
                    .await
                    .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how}: {e}"));
            }
        };
        setslot(&mut dst, "IMPORTING", &src_id).await;
        setslot(&mut src, "MIGRATING", &dst_id).await;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1)
                .query_async(&mut src)
                .await
                .unwrap();
            if keys.is_empty() {
                break;
            }
            redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .exec_async(&mut src)
                .await
                .unwrap();
        }
        setslot(&mut dst, "NODE", &dst_id).await;
        setslot(&mut src, "NODE", &dst_id).await;
    }
}

impl Drop for LocalClusters {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

fn kill(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -KILL {pid}");
}

/// The rush's commands: reserves of 1 to 2 seats by random customers over
/// `resources`, 10 % of them published twice (a little later).
fn rush(resources: &[String], commands: usize, seed: u64) -> Vec<CommandBody> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out: Vec<CommandBody> = Vec::with_capacity(commands + commands / 10);
    for i in 0..commands {
        let resource = &resources[rng.random_range(0..resources.len())];
        let who = format!("u{}", rng.random_range(0..CUSTOMERS));
        out.push(reserve(
            &format!("c-{seed}-{i}"),
            resource,
            &who,
            rng.random_range(1..=2),
        ));
        if rng.random_bool(0.1) && out.len() > 20 {
            let again = out[out.len() - rng.random_range(1..20)].clone();
            out.push(again);
        }
    }
    out
}

/// Every command's events, by command id, as the bytes published.
fn by_command(app: &TestApp) -> HashMap<CommandId, Vec<Vec<u8>>> {
    let mut out: HashMap<CommandId, Vec<Vec<u8>>> = HashMap::new();
    for (e, raw) in app.received() {
        out.entry(e.event.command_id.clone()).or_default().push(raw);
    }
    out
}

/// Polls until every command of `bodies` has an event.
async fn until_answered(app: &TestApp, bodies: &[CommandBody]) {
    let wanted: Vec<CommandId> = bodies.iter().map(|b| b.command_id().clone()).collect();
    let deadline = Instant::now() + RUSH_DEADLINE;
    loop {
        let seen = by_command(app);
        let missing = wanted.iter().filter(|c| !seen.contains_key(*c)).count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} commands unanswered after {RUSH_DEADLINE:?} ({} dead-lettered)",
            app.ready_in(&app.settings.amqp.dead_letter_queue).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The contract's checks once every command is answered: each command's
/// events are the same bytes; no resource sold more than its capacity;
/// what `inspect` shows is what the accepted events add up to; no customer
/// spent above the cap; nothing dead-lettered; `verify --all` agrees.
async fn assert_rush_kept_the_contract(app: &TestApp, resources: &[String]) {
    let events = by_command(app);
    let mut seats: BTreeMap<String, u32> = BTreeMap::new();
    let mut spent: BTreeMap<String, u64> = BTreeMap::new();
    for (id, bodies) in &events {
        for other in &bodies[1..] {
            assert!(
                *other == bodies[0],
                "two events of {id} differ:\n{}\n{}",
                String::from_utf8_lossy(&bodies[0]),
                String::from_utf8_lossy(other)
            );
        }
        let e: reservation_worker::message::EventEnvelope =
            serde_json::from_slice(&bodies[0]).unwrap();
        let e = e.event;
        if e.command == CommandKind::Reserve && e.is_accepted() {
            *seats.entry(e.resource_id.to_string()).or_default() += e.details.quantity.unwrap_or(0);
            if let Some(amount) = e.details.amount {
                let who = e.details.customer_id.clone().unwrap().to_string();
                *spent.entry(who).or_default() += amount;
            }
        }
    }
    for r in resources {
        let summary = app
            .store
            .summary(&rid(r))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{r} is defined"));
        let sold = seats.get(r).copied().unwrap_or(0);
        assert!(sold <= CAPACITY, "{r} oversold: {sold} of {CAPACITY}");
        assert_eq!(summary.reserved, sold, "inspect {r} against its events");
        assert_eq!(summary.remaining, CAPACITY - sold, "inspect {r}");
    }
    let over: Vec<_> = spent.iter().filter(|(_, s)| **s > CAP).collect();
    assert!(over.is_empty(), "customers over the budget: {over:?}");
    assert_eq!(
        app.ready_in(&app.settings.amqp.dead_letter_queue).await,
        0,
        "no valid command was dead-lettered"
    );
    assert_verify_agrees(&app.settings, resources.len()).await;
}

/// `verify --all` agrees, having checked every resource.
async fn assert_verify_agrees(settings: &Settings, resources: usize) {
    let report = verify_all(settings).await;
    assert_eq!(report["resources"], resources, "{report}");
}

/// Two resources on each master (found by their slots), the first priced
/// and paid from the budget.
async fn resources_on_every_master(clusters: &LocalClusters) -> Vec<String> {
    let mut per_master: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut i = 0;
    while per_master.len() < 3 || per_master.values().any(|r| r.len() < 2) {
        let r = format!("show-{i}");
        i += 1;
        let (port, _) = clusters.master_of(clusters.slot(&r).await).await;
        let list = per_master.entry(port).or_default();
        if list.len() < 2 {
            list.push(r);
        }
    }
    per_master.into_values().flatten().collect()
}

/// Publishes `bodies` with up to 64 confirms outstanding.
async fn publish(app: &TestApp, bodies: &[CommandBody]) {
    use futures_util::StreamExt;
    futures_util::stream::iter(bodies)
        .for_each_concurrent(64, |b| app.send(b))
        .await;
}

async fn define_all(app: &TestApp, resources: &[String], budgeted: bool) {
    if budgeted {
        app.send(&CommandBody::DefineBudget {
            command_id: CommandId::try_from("define-budget").unwrap(),
            budget_id: BudgetId::try_from(BUDGET).unwrap(),
            per_customer_amount: CAP,
        })
        .await;
        let defined = app.budget_outcome("define-budget").await;
        assert!(defined.event.is_accepted(), "{defined:?}");
    }
    for (i, r) in resources.iter().enumerate() {
        let paid = budgeted && i == 0;
        app.send(&CommandBody::Define {
            command_id: CommandId::try_from(format!("def-{r}")).unwrap(),
            resource_id: rid(r),
            capacity: CAPACITY,
            per_customer_limit: Some(Some(6)),
            price: paid.then_some(PRICE),
            budget_id: paid.then(|| Some(BudgetId::try_from(BUDGET).unwrap())),
        })
        .await;
    }
    for r in resources {
        assert!(app.outcome(&format!("def-{r}")).await.event.is_accepted());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rush_survives_a_broker_node_and_a_redis_master_dying_on_the_clusters() {
    let clusters = LocalClusters::start("rush", &[]).await;
    let amqp: Vec<String> = clusters
        .file
        .amqp_url
        .clone()
        .expect("a RabbitMQ cluster")
        .split(',')
        .map(|u| u.replace("%2f", "%2F"))
        .collect();
    let redis_url = clusters.file.redis_url.clone();
    // The test's own connections (producer, events) use node 1; the workers
    // know nodes 2 and 3, so the node killed below always serves workers.
    let app = TestApp::with(|s| {
        s.amqp.url = SecretUrl::new(&amqp[0]);
        s.redis.url = SecretUrl::new(&redis_url);
        s.redis.cluster = true;
    })
    .await;
    let resources = resources_on_every_master(&clusters).await;
    let mut worker_settings = app.settings.clone();
    worker_settings.amqp.url = SecretUrl::new(amqp[1..].join(","));
    let mut workers: Vec<WorkerProcess> = (0..3)
        .map(|i| WorkerProcess::spawn(&worker_settings, &format!("{}-w{i}", app.prefix())))
        .collect();
    define_all(&app, &resources, true).await;

    let bodies = rush(&resources, 3000, 7);
    let third = bodies.len() / 3;
    publish(&app, &bodies[..third]).await;
    // The RabbitMQ node that serves the most workers dies.
    let victim = busiest_node(&clusters, app.prefix(), &[1, 2]).await;
    kill(victim.pid);
    publish(&app, &bodies[third..2 * third]).await;
    // The master of the budgeted resource's slot dies; its replica takes
    // over after the cluster's node timeout.
    let (port, _) = clusters.master_of(clusters.slot(&resources[0]).await).await;
    let pid = clusters
        .file
        .redis
        .iter()
        .find(|n| n.port == port)
        .expect("a master the script started")
        .pid;
    kill(pid);
    publish(&app, &bodies[2 * third..]).await;

    until_answered(&app, &bodies).await;
    for w in &mut workers {
        w.assert_running();
    }
    let slot = clusters.slot(&resources[0]).await;
    assert_ne!(
        clusters.master_of(slot).await.0,
        port,
        "the killed master's replica took over"
    );
    assert_rush_kept_the_contract(&app, &resources).await;
    for mut w in workers {
        w.terminate().await;
    }
    app.cleanup().await;
}

/// The node of `candidates` (index into the cluster's nodes, from 0) with
/// the most connections named with `prefix`.
async fn busiest_node(clusters: &LocalClusters, prefix: &str, candidates: &[usize]) -> RabbitNode {
    eventually("the workers to connect", || async {
        let mut best: Option<(usize, usize)> = None;
        for &i in candidates {
            let out = tokio::process::Command::new(script())
                .arg("ctl")
                .arg(&clusters.dir)
                .arg((i + 1).to_string())
                .args([
                    "list_connections",
                    "-q",
                    "--no-table-headers",
                    "client_properties",
                ])
                .output()
                .await
                .expect("scripts/clusters.sh ctl");
            let n = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(prefix))
                .count();
            if n > 0 && best.is_none_or(|(_, m)| n > m) {
                best = Some((i, n));
            }
        }
        best.map(|(i, _)| clusters.file.rabbit[i].clone())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_the_hot_resources_slot_loses_nothing() {
    let clusters = LocalClusters::start("reshard", &["--redis-only"]).await;
    let redis_url = clusters.file.redis_url.clone();
    let app = TestApp::with(|s| {
        s.redis.url = SecretUrl::new(&redis_url);
        s.redis.cluster = true;
    })
    .await;
    let resources = vec!["hot".to_string(), "cool".to_string()];
    let mut workers: Vec<WorkerProcess> = (0..2)
        .map(|i| WorkerProcess::spawn(&app.settings, &format!("{}-w{i}", app.prefix())))
        .collect();
    define_all(&app, &resources, false).await;

    let slot = clusters.slot("hot").await;
    let (home, _) = clusters.master_of(slot).await;
    let (away, _) = clusters
        .master_of(slot_not_served_by(&clusters, home).await)
        .await;
    let bodies = rush(&resources, 2000, 11);
    let (a, b) = bodies.split_at(bodies.len() / 2);
    let moving = async {
        clusters.move_slot(slot, home, away).await;
        clusters.move_slot(slot, away, home).await;
    };
    tokio::join!(publish(&app, a), moving);
    clusters.move_slot(slot, home, away).await;
    publish(&app, b).await;

    until_answered(&app, &bodies).await;
    for w in &mut workers {
        w.assert_running();
    }
    assert_eq!(clusters.master_of(slot).await.0, away, "the slot moved");
    assert_rush_kept_the_contract(&app, &resources).await;
    for mut w in workers {
        w.terminate().await;
    }
    app.cleanup().await;
}

/// A slot served by a master other than the one on `port`.
async fn slot_not_served_by(clusters: &LocalClusters, port: u16) -> u16 {
    for slot in (0..16384).step_by(1000) {
        if clusters.master_of(slot).await.0 != port {
            return slot;
        }
    }
    panic!("every slot is on {port}");
}
