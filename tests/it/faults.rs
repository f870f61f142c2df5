//! Fault injection: a small ticket rush (duplicates and cancels included)
//! against several real worker processes, one kind of fault in the middle of
//! it, and the contract's invariants checked by one shared checker once the
//! fault has cleared.
//!
//! Every worker process reaches RabbitMQ through a [`Proxy`] of its own,
//! which can delay, stall or reset its connections and checks, frame by
//! frame, that no delivery is acked before the broker confirmed a publish of
//! its outcome.
//! Faults are triggered on observed progress (events received, deliveries
//! held), never on timers; the traffic is paced by the outcomes, so commands
//! are always in flight when a fault hits and traffic keeps coming after it.

use crate::helpers::*;
use crate::plan::{self as rush, RushOptions};
use crate::process::WorkerProcess;
use crate::proxy::{Key, MonitorReport, Proxy};
use futures_util::future::join_all;
use lapin::types::FieldTable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reservation_worker::config::{AmqpSettings, SecretUrl, Settings};
use reservation_worker::domain::{CommandKind, Reason, Verdict};
use reservation_worker::message::{CommandBody, EventEnvelope};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;

/// A resource on sale in every scenario: demand far above capacity, and
/// customers x limit above capacity too, so both `sold_out` and
/// `customer_limit` happen.
#[derive(Debug, Clone, Copy)]
struct Sale {
    id: &'static str,
    capacity: u32,
    limit: u32,
    reserves: usize,
}

const SALES: [Sale; 2] = [
    Sale {
        id: "hall",
        capacity: 120,
        limit: 4,
        reserves: 900,
    },
    Sale {
        id: "club",
        capacity: 40,
        limit: 2,
        reserves: 300,
    },
];

/// Worker processes per scenario.
const REPLICAS: usize = 3;

/// Commands published but not answered yet, at most (more than the
/// replicas' prefetch together, so the queue has a backlog).
const WINDOW: usize = 300;

/// Network delay the proxies add from broker to worker: each delivery
/// spends at least this long in a worker's hands (waiting for its confirm),
/// so commands are in flight whenever traffic flows.
const LATENCY: Duration = Duration::from_millis(20);

fn key_of(body: &CommandBody) -> Key {
    (
        body.routing_key().to_string(),
        body.command_id().to_string(),
    )
}

fn event_key(e: &EventEnvelope) -> Key {
    (
        e.event.resource_id.to_string(),
        e.event.command_id.to_string(),
    )
}

/// The rush: for each sale, reserves with duplicates (`rush::generate`) plus
/// cancels of early reservations (some sent twice), the sales interleaved at
/// random. Deterministic for a seed.
fn traffic(seed: u64) -> Vec<CommandBody> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut streams: Vec<VecDeque<CommandBody>> = Vec::new();
    for (i, sale) in SALES.iter().enumerate() {
        let options = RushOptions {
            resource: None,
            commands: sale.reserves,
            capacity: sale.capacity,
            limit: sale.limit,
            customers: sale.capacity as usize,
            max_quantity: 3,
            duplicates: 0.15,
            seed: seed * 100 + i as u64,
            timeout_secs: 0,
            in_flight: 1,
            holds: false,
            confirm_ratio: 0.0,
            hold_secs: rush::HoldSecs { min: 1, max: 1 },
            report: None,
        };
        let mut bodies = rush::generate(&rid(sale.id), &options);
        // Cancel reservations among the first (likely accepted) ones, mostly
        // after they were published; a cancel may still overtake its reserve.
        for k in 0..sale.reserves / 20 {
            let target = format!("{}-r{}", sale.id, rng.random_range(0..sale.capacity / 2));
            let body = cancel(&format!("{}-c{k}", sale.id), sale.id, &target);
            let at = rng.random_range(bodies.len() / 10..=bodies.len());
            bodies.insert(at, body.clone());
            if k % 4 == 0 {
                let again = rng.random_range(at..=bodies.len());
                bodies.insert(again, body);
            }
        }
        streams.push(bodies.into());
    }
    let mut out = Vec::new();
    while streams.iter().any(|s| !s.is_empty()) {
        let i = rng.random_range(0..streams.len());
        out.extend(streams[i].pop_front());
    }
    out
}

/// One scenario's world: an isolated `TestApp`, worker processes each behind
/// its own proxy, and the traffic.
struct Rig {
    app: TestApp,
    /// `proxies[i]` carries worker slot `i`'s broker connection.
    proxies: Vec<Proxy>,
    /// The settings worker slot `i` runs with (its AMQP URL is its proxy).
    settings: Vec<Settings>,
    /// Never locked across an await.
    workers: Mutex<Vec<WorkerProcess>>,
    /// Every command that must get an outcome (the defines first).
    traffic: Vec<CommandBody>,
    /// Events before the rush (the defines').
    base: usize,
    /// The feed's window (see [`Feed`]).
    window: usize,
}

impl Rig {
    /// Declares the topology, starts [`REPLICAS`] worker processes, defines
    /// the sales and waits for them to be accepted.
    async fn start(seed: u64, adjust: impl FnOnce(&mut Settings)) -> Rig {
        Self::start_with(seed, adjust, |_, _| {}).await
    }

    /// Like [`Rig::start`], with each worker slot's settings adjusted too.
    async fn start_with(
        seed: u64,
        adjust: impl FnOnce(&mut Settings),
        per_worker: impl Fn(usize, &mut Settings),
    ) -> Rig {
        let app = TestApp::with(adjust).await;
        let upstream = authority(&app.settings.amqp.url);
        let mut proxies = Vec::new();
        let mut settings = Vec::new();
        let mut workers = Vec::new();
        for i in 0..REPLICAS {
            let proxy = Proxy::start(&upstream).await;
            proxy.set_latency(LATENCY);
            let mut s = app.settings.clone();
            s.amqp.url = proxy.url(&app.settings.amqp.url);
            // The first replica runs its tasks on a thread per core, the
            // others on one (the default): every fault meets both.
            if i == 0 {
                s.worker.threads = 0;
            }
            per_worker(i, &mut s);
            workers.push(WorkerProcess::spawn(&s, &worker_name(&app, i)));
            proxies.push(proxy);
            settings.push(s);
        }
        let defines: Vec<CommandBody> = SALES
            .iter()
            .map(|s| {
                let id = format!("{}-define", s.id);
                define(&id, s.id, s.capacity, Some(s.limit))
            })
            .collect();
        for d in &defines {
            app.send(d).await;
            assert!(
                app.outcome(d.command_id().as_str())
                    .await
                    .event
                    .is_accepted()
            );
        }
        let base = app.event_count();
        let mut traffic = defines;
        traffic.extend(self::traffic(seed));
        Rig {
            app,
            proxies,
            settings,
            workers: Mutex::new(workers),
            traffic,
            base,
            window: WINDOW,
        }
    }

    /// A slower network and a smaller window: the rush takes seconds, with
    /// commands in the workers' hands all along.
    fn slow_down(&mut self, latency: Duration, window: usize) {
        for p in &self.proxies {
            p.set_latency(latency);
        }
        self.window = window;
    }

    /// The rush commands (not the defines).
    fn rush(&self) -> Vec<CommandBody> {
        self.traffic[SALES.len()..].to_vec()
    }

    /// Waits until `n` outcome events of the rush arrived and `also` holds.
    async fn when(&self, what: &str, n: usize, also: impl Fn() -> bool) {
        let target = self.base + n;
        eventually(what, || async {
            self.assert_workers_running();
            (self.app.event_count() >= target && also()).then_some(())
        })
        .await;
    }

    /// Waits until every command of `keys` has an outcome.
    async fn answered(&self, what: &str, keys: &[Key]) {
        eventually(what, || async {
            self.assert_workers_running();
            let answered: HashSet<Key> = self.app.events().iter().map(event_key).collect();
            keys.iter().all(|k| answered.contains(k)).then_some(())
        })
        .await;
    }

    /// Connections each proxy accepted so far.
    fn accepted(&self) -> Vec<usize> {
        self.proxies.iter().map(|p| p.accepted()).collect()
    }

    /// Waits until every worker consumes again on a broker connection it
    /// opened since `before` (from [`Rig::accepted`]).
    async fn reconnected(&self, before: &[usize]) {
        eventually("every worker to reconnect and consume", || async {
            self.assert_workers_running();
            self.proxies
                .iter()
                .zip(before)
                .all(|(p, b)| p.consuming_since(*b))
                .then_some(())
        })
        .await;
    }

    fn with_worker<T>(&self, i: usize, f: impl FnOnce(&mut WorkerProcess) -> T) -> T {
        f(&mut self.workers.lock().unwrap()[i])
    }

    /// SIGKILLs worker slot `i` and starts a new process in its place.
    fn kill_and_restart(&self, i: usize) {
        let name = worker_name(&self.app, i);
        self.with_worker(i, |w| {
            w.kill();
            *w = WorkerProcess::spawn(&self.settings[i], &name);
        });
    }

    fn assert_workers_running(&self) {
        for w in self.workers.lock().unwrap().iter_mut() {
            w.assert_running();
        }
    }

    /// Every delivery any worker holds unacked right now.
    fn held(&self) -> Vec<Key> {
        self.proxies.iter().flat_map(|p| p.held()).collect()
    }

    /// Checks the invariants, stops the workers (each must still be running
    /// and must exit cleanly on SIGTERM), checks that nothing is left in the
    /// queue and that no delivery was acked before its confirm, cleans up.
    /// Returns what the frame monitors saw, for the scenario's own checks.
    async fn finish(self) -> MonitorReport {
        let tally = check_invariants(&self).await;
        self.assert_workers_running();
        let mut workers = std::mem::take(&mut *self.workers.lock().unwrap());
        let statuses = join_all(workers.iter_mut().map(|w| w.terminate())).await;
        for (w, status) in workers.iter().zip(statuses) {
            assert!(
                status.success(),
                "{} exited with {status} after SIGTERM; see {}",
                w.name(),
                w.log().display()
            );
        }
        // No consumer left: every message still in the queue is ready now,
        // so this also counts what a worker had left unacked.
        assert_eq!(
            self.app.commands_pending().await,
            0,
            "commands left in the queue once the workers stopped"
        );
        let mut monitor = MonitorReport::default();
        for p in &self.proxies {
            monitor.merge(p.report());
        }
        let v = &monitor.violations;
        assert!(
            v.is_empty(),
            "{} deliveries acked without a confirmed outcome, e.g. {:?}",
            v.len(),
            &v[..v.len().min(3)]
        );
        // An ack that overtook its own confirm, with that confirm arriving
        // right after, came from confirms matched to the wrong message (see
        // `publisher_confirms_belong_to_their_own_publish`).
        let early = &monitor.early_acks;
        assert!(
            early.is_empty(),
            "{} acks overtook their own confirm: {early:?}",
            early.len()
        );
        let distinct = self.traffic.iter().map(key_of).collect::<HashSet<_>>();
        assert!(
            monitor.acks_checked >= distinct.len() - SALES.len(),
            "the proxies saw only {} acks for {} commands: is the frame monitor blind?",
            monitor.acks_checked,
            distinct.len()
        );
        println!(
            "{tally:?}\n{} deliveries, {} acks checked against confirms, {} given back, \
             {} dropped with their connection, {} outcomes published again",
            monitor.deliveries,
            monitor.acks_checked,
            monitor.given_back,
            monitor.dropped(),
            monitor.republished
        );
        self.app.cleanup().await;
        monitor
    }
}

fn worker_name(app: &TestApp, i: usize) -> String {
    format!("{}-p{i}", app.prefix())
}

/// Publishes commands with confirms, never more than a window ahead of the
/// outcomes: the rush moves at the workers' pace, and stalls with them.
struct Feed<'a> {
    rig: &'a Rig,
    sent: usize,
}

impl<'a> Feed<'a> {
    fn new(rig: &'a Rig) -> Feed<'a> {
        Feed { rig, sent: 0 }
    }

    async fn send(&mut self, bodies: &[CommandBody]) {
        let rig = self.rig;
        for chunk in bodies.chunks(16) {
            let allowed = rig.base + self.sent + chunk.len();
            eventually("the workers to keep up with the rush", || async {
                rig.assert_workers_running();
                (rig.app.event_count() + rig.window >= allowed).then_some(())
            })
            .await;
            join_all(chunk.iter().map(|b| rig.app.send(b))).await;
            self.sent += chunk.len();
        }
    }
}

/// What the checker counted (printed by [`Rig::finish`]).
#[derive(Debug, Default)]
#[allow(dead_code)] // read through `Debug`
struct Tally {
    events: usize,
    commands: usize,
    accepted: usize,
    cancels_accepted: usize,
    rejected: BTreeMap<String, usize>,
}

/// The invariants, from the events received and from Redis:
///
/// - every command of `rig.traffic` has an outcome event, no other command
///   has one, and no rush command is rejected as invalid or a conflict;
/// - all events of one command are byte-identical (same `event_id` too);
/// - the command queue drains: nothing ready, nothing held by a worker;
/// - per resource: reserved <= capacity, reserved == seats of accepted
///   reserves - seats of accepted cancels, version == accepted commands;
/// - per customer: seats held in Redis == seats from the events <= limit;
/// - the history stream holds each command's outcome exactly once, equal to
///   the published one (a double commit shows up here).
async fn check_invariants(rig: &Rig) -> Tally {
    let app = &rig.app;
    let keys: Vec<Key> = rig.traffic.iter().map(key_of).collect();
    rig.answered("an outcome for every command", &keys).await;
    eventually("the command queue to drain", || async {
        (app.commands_pending().await == 0 && rig.held().is_empty()).then_some(())
    })
    .await;

    let expected: HashSet<Key> = keys.into_iter().collect();
    let received = app.received();
    let mut first: HashMap<Key, (&EventEnvelope, &Vec<u8>)> = HashMap::new();
    for (envelope, bytes) in &received {
        let key = event_key(envelope);
        assert!(
            expected.contains(&key),
            "an event for {key:?}, which must have none: {}",
            String::from_utf8_lossy(bytes)
        );
        match first.get(&key) {
            Some((_, earlier)) => assert_eq!(
                String::from_utf8_lossy(earlier),
                String::from_utf8_lossy(bytes),
                "two different outcomes for {key:?}"
            ),
            None => {
                first.insert(key, (envelope, bytes));
            }
        }
    }

    let mut tally = Tally {
        events: received.len() - rig.base,
        commands: first.len() - SALES.len(),
        ..Tally::default()
    };
    for sale in SALES {
        let mut reserved: i64 = 0;
        let mut accepted: u64 = 0;
        let mut sold_out = 0;
        let mut held: HashMap<String, i64> = HashMap::new();
        let outcomes = first
            .values()
            .map(|(e, _)| &e.event)
            .filter(|e| e.resource_id.as_str() == sale.id);
        for ev in outcomes {
            match &ev.verdict {
                Verdict::Accepted => {
                    accepted += 1;
                    tally.accepted += 1;
                    let sign = match ev.command {
                        CommandKind::Reserve => 1,
                        CommandKind::Cancel => {
                            tally.cancels_accepted += 1;
                            -1
                        }
                        _ => 0,
                    };
                    let seats = sign * i64::from(ev.details.quantity.unwrap_or(0));
                    reserved += seats;
                    if let Some(c) = &ev.details.customer_id {
                        *held.entry(c.to_string()).or_default() += seats;
                    }
                }
                Verdict::Rejected { reason, .. } => {
                    assert!(
                        !matches!(reason, Reason::IdempotencyConflict | Reason::Invalid),
                        "no command of the rush is invalid or a conflict: {ev:?}"
                    );
                    if *reason == Reason::SoldOut {
                        sold_out += 1;
                    }
                    let name = serde_json::to_value(reason).unwrap();
                    *tally
                        .rejected
                        .entry(name.as_str().unwrap().to_string())
                        .or_default() += 1;
                }
            }
        }
        let r = rid(sale.id);
        let s = app
            .store
            .summary(&r)
            .await
            .unwrap()
            .expect("the sale is in Redis");
        assert_eq!(s.capacity, sale.capacity);
        assert!(
            s.reserved <= s.capacity,
            "OVERSOLD {}: {} of {}",
            sale.id,
            s.reserved,
            s.capacity
        );
        assert_eq!(
            i64::from(s.reserved),
            reserved,
            "{}: Redis says {} reserved, the accepted events add up to {reserved}",
            sale.id,
            s.reserved
        );
        assert_eq!(
            s.version, accepted,
            "{}: version = accepted commands",
            sale.id
        );
        assert!(sold_out > 0, "{}: the rush must sell out", sale.id);

        let holdings = app.store.holdings(&r).await.unwrap();
        for (customer, &seats) in &holdings {
            assert!(
                seats <= sale.limit,
                "{}: {customer} holds {seats} seats, over the limit of {}",
                sale.id,
                sale.limit
            );
        }
        let in_redis: HashMap<&String, i64> = holdings
            .iter()
            .filter(|(_, s)| **s > 0)
            .map(|(c, s)| (c, i64::from(*s)))
            .collect();
        let from_events: HashMap<&String, i64> = held
            .iter()
            .filter(|(_, s)| **s != 0)
            .map(|(c, s)| (c, *s))
            .collect();
        assert_eq!(in_redis, from_events, "{}: seats per customer", sale.id);

        let history = app.store.history(&r).await.unwrap();
        let mut committed = HashSet::new();
        for h in &history {
            let key = event_key(h);
            assert!(committed.insert(key.clone()), "{key:?} committed twice");
            let (published, _) = first
                .get(&key)
                .unwrap_or_else(|| panic!("{key:?} committed but never published"));
            assert_eq!(*published, h, "the published outcome is the committed one");
        }
        let answered = first.keys().filter(|(res, _)| res == sale.id).count();
        assert_eq!(
            history.len(),
            answered,
            "{}: one commit per command",
            sale.id
        );
    }
    assert!(tally.rejected.contains_key("customer_limit"), "{tally:?}");
    tally
}

/// This test's worker processes' broker connections, as `(pid, name)`.
async fn broker_connections(app: &TestApp) -> Vec<(String, String)> {
    crate::helpers::broker_connections(&format!("{}-p", app.prefix())).await
}

/// Closes (`rabbitmqctl close_connection`) the broker connections of this
/// test's worker processes, found by connection name; returns their names.
async fn close_broker_connections(app: &TestApp) -> Vec<String> {
    let found = broker_connections(app).await;
    let closed = join_all(found.iter().map(|(pid, _)| {
        tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", pid, "fault injection"])
            .output()
    }))
    .await;
    // Closing one of a worker's connections ends its session and the worker
    // closes its other connection itself, so a close can lose that race and
    // fail. A failed close is fine when its connection is gone all the same.
    let failed: Vec<_> = found
        .iter()
        .zip(closed)
        .filter_map(|((pid, _), c)| {
            let c = c.expect("rabbitmqctl");
            (!c.status.success()).then(|| (pid.clone(), c))
        })
        .collect();
    if !failed.is_empty() {
        let left = broker_connections(app).await;
        for (pid, c) in failed {
            assert!(
                !left.iter().any(|(p, _)| *p == pid),
                "rabbitmqctl close_connection failed and {pid} is still open: {c:?}"
            );
        }
    }
    found.into_iter().map(|(_, name)| name).collect()
}

/// Asserts that every worker slot had a connection among `closed`.
fn assert_each_worker_closed(app: &TestApp, closed: &[String]) {
    for i in 0..REPLICAS {
        let name = worker_name(app, i);
        assert!(
            closed
                .iter()
                .any(|c| c == &name || c.starts_with(&format!("{name}-"))),
            "no broker connection of {name} among {closed:?}"
        );
    }
}

/// This test's worker processes' Redis clients (by `CLIENT SETNAME`), as
/// `(id, name)`.
async fn redis_clients(
    conn: &mut redis::aio::MultiplexedConnection,
    app: &TestApp,
) -> Vec<(String, String)> {
    let mine = format!("{}-p", app.prefix());
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(conn)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| {
            let field = |f: &str| line.split(' ').find_map(|kv| kv.strip_prefix(f));
            let name = field("name=")?;
            let id = field("id=")?;
            name.starts_with(&mine)
                .then(|| (id.to_string(), name.to_string()))
        })
        .collect()
}

/// An AMQP URL with a short heartbeat: the broker drops a silent
/// connection within a few seconds.
fn with_heartbeat(url: &SecretUrl, secs: u32) -> SecretUrl {
    let url = url.expose();
    let sep = if url.contains('?') { '&' } else { '?' };
    SecretUrl::new(format!("{url}{sep}heartbeat={secs}"))
}

/// 1. Processes die mid-command: four times, a replica holding deliveries is
///    SIGKILLed and a new process takes its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_workers_lose_nothing_and_book_nothing_twice() {
    let rig = Rig::start(1, |_| {}).await;
    let rush = rig.rush();
    let kills = 4;
    let mut feed = Feed::new(&rig);
    let faults = async {
        for k in 1..=kills {
            let victim = k % REPLICAS;
            rig.when(
                "a worker holding deliveries, to kill",
                k * rush.len() / (kills + 2),
                || !rig.proxies[victim].held().is_empty(),
            )
            .await;
            rig.kill_and_restart(victim);
        }
    };
    tokio::join!(feed.send(&rush), faults);
    eventually("every replacement to connect to the broker", || async {
        (rig.accepted().iter().sum::<usize>() >= REPLICAS + kills).then_some(())
    })
    .await;
    let done = rig.finish().await;
    assert!(done.dropped() > 0, "some deliveries died with their worker");
}

/// 2. The broker drops the workers' connections (`rabbitmqctl
///    close_connection`), twice mid-rush and once idle: they reconnect on
///    their own and carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_reconnect_when_the_broker_closes_their_connections() {
    let mut rig = Rig::start(2, |_| {}).await;
    // A rabbitmqctl call takes about a second: the rush must last several,
    // with commands in the workers' hands whenever a connection is closed.
    rig.slow_down(Duration::from_millis(150), 40);
    let rush = rig.rush();
    let mut feed = Feed::new(&rig);
    let faults = async {
        for round in 1..=2 {
            rig.when("the rush under way", round * rush.len() / 4, || true)
                .await;
            let before = rig.accepted();
            let closed = close_broker_connections(&rig.app).await;
            assert_each_worker_closed(&rig.app, &closed);
            rig.reconnected(&before).await;
        }
    };
    tokio::join!(feed.send(&rush), faults);

    // Idle: nothing in flight to notice the loss with.
    let keys: Vec<Key> = rig.traffic.iter().map(key_of).collect();
    rig.answered("the rush answered", &keys).await;
    let before = rig.accepted();
    let closed = close_broker_connections(&rig.app).await;
    assert_each_worker_closed(&rig.app, &closed);
    rig.reconnected(&before).await;
    let after = reserve("hall-after", "hall", "late-customer", 1);
    rig.app.send(&after).await;
    rig.traffic.push(after);
    let done = rig.finish().await;
    assert!(
        done.dropped() > 0,
        "connections were closed with deliveries in the workers' hands"
    );
}

/// 3. Redis drops the workers' connections (`CLIENT KILL ID`), in bursts,
///    while transactions are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_survive_their_redis_connections_being_killed() {
    let rig = Rig::start(3, |_| {}).await;
    let rush = rig.rush();
    let client = redis::Client::open(rig.app.settings.redis.url.expose()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let mut feed = Feed::new(&rig);
    let faults = async {
        let mut killed = 0;
        for round in 1..=3 {
            rig.when("the rush under way", round * rush.len() / 5, || true)
                .await;
            for _burst in 0..3 {
                // Kill when every replica has Redis connections again.
                let clients = eventually("every worker connected to Redis", || async {
                    let clients = redis_clients(&mut redis.clone(), &rig.app).await;
                    let names: HashSet<&String> = clients.iter().map(|(_, n)| n).collect();
                    (names.len() == REPLICAS).then_some(clients)
                })
                .await;
                for (id, _) in clients {
                    let n: i64 = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ID")
                        .arg(&id)
                        .query_async(&mut redis)
                        .await
                        .unwrap();
                    killed += n;
                }
            }
        }
        assert!(killed >= 9 * REPLICAS as i64, "killed only {killed}");
    };
    tokio::join!(feed.send(&rush), faults);
    rig.finish().await;
}

/// 4. A replica frozen (SIGSTOP) with deliveries in hand: its short AMQP
///    heartbeat makes the broker drop it and hand its deliveries to the
///    others; when it thaws, its stale in-flight work (commits, publishes,
///    acks) must not change anything, and it rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_worker_that_thaws_late_changes_nothing() {
    let rig = Rig::start_with(
        4,
        |_| {},
        |i, s| {
            if i == 0 {
                s.amqp.url = with_heartbeat(&s.amqp.url, 2);
            }
        },
    )
    .await;
    let rush = rig.rush();
    let (first, second) = rush.split_at(rush.len() * 3 / 5);
    let thawed = Notify::new();
    let mut feed = Feed::new(&rig);
    let traffic = async {
        feed.send(first).await;
        thawed.notified().await;
        feed.send(second).await;
    };
    let p0 = &rig.proxies[0];
    let faults = async {
        let held = loop {
            rig.when("worker 0 holding deliveries", first.len() / 4, || {
                !p0.held().is_empty()
            })
            .await;
            rig.with_worker(0, |w| w.pause());
            let held = p0.held();
            if !held.is_empty() {
                break held;
            }
            rig.with_worker(0, |w| w.resume());
        };
        let acks_before = p0.report().acks_checked;
        eventually("the broker to drop the silent worker", || async {
            (p0.open() == 0).then_some(())
        })
        .await;
        rig.answered("the others to answer what the frozen one held", &held)
            .await;
        let accepted = p0.accepted();
        let log = rig.with_worker(0, |w| w.log().display().to_string());
        rig.with_worker(0, |w| w.resume());
        let what = format!("the thawed worker to consume again (its log: {log})");
        eventually(&what, || async {
            p0.consuming_since(accepted).then_some(())
        })
        .await;
        thawed.notify_one();
        eventually("the thawed worker to ack commands again", || async {
            (p0.report().acks_checked > acks_before).then_some(())
        })
        .await;
        println!("worker 0 was frozen holding {} deliveries", held.len());
        held.len()
    };
    let ((), held) = tokio::join!(traffic, faults);
    let done = rig.finish().await;
    assert!(
        done.dropped() >= held,
        "what the frozen worker held went with its connection"
    );
}

/// 5. A poison command among good traffic: its resource's state in Redis is
///    garbage, so it fails on every delivery. After `delivery_limit` (3)
///    deliveries it is dead-lettered with the error in `x-error`; the good
///    commands all get their outcomes and the workers keep consuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_command_is_dead_lettered_while_good_traffic_flows() {
    let mut rig = Rig::start(5, |s| s.amqp.delivery_limit = 3).await;
    let state_key = rig.app.store.keys().state(&rid("poison"));
    let client = redis::Client::open(rig.app.settings.redis.url.expose()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(&state_key)
        .arg("not json")
        .query_async(&mut redis)
        .await
        .unwrap();
    let poison = [
        reserve("poison-r1", "poison", "u-1", 1),
        cancel("poison-c1", "poison", "poison-r0"),
    ];
    let mut rush = rig.rush();
    rush.insert(rush.len() / 2, poison[0].clone());
    rush.insert(rush.len() * 2 / 3, poison[1].clone());
    Feed::new(&rig).send(&rush).await;

    let dead = rig.app.dead_letters(poison.len()).await;
    for p in &poison {
        let m = dead
            .iter()
            .find(|m| m.delivery.data == p.to_json())
            .unwrap_or_else(|| panic!("{} was dead-lettered", p.command_id()));
        let error =
            header_text(m.delivery.properties.headers(), "x-error").expect("an x-error header");
        assert!(
            error.contains("cannot read") && error.contains(&state_key),
            "x-error names the failure: {error:?}"
        );
        assert!(error.contains("3 deliveries"), "x-error: {error:?}");
    }
    // The workers still consume.
    let after = reserve("hall-after", "hall", "late-customer", 1);
    rig.app.send(&after).await;
    rig.traffic.push(after);
    rig.assert_workers_running();
    // Nothing else was dead-lettered (the poison commands are not in
    // `traffic`, so the checker also fails on any outcome event for them).
    assert_eq!(
        rig.app
            .ready_in(&rig.app.settings.amqp.dead_letter_queue)
            .await,
        0,
        "only the poison was dead-lettered"
    );
    let _: () = redis::cmd("DEL")
        .arg(&state_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    rig.finish().await;
}

/// 6. Publisher confirms withheld: the proxy stops forwarding the broker's
///    bytes until the workers have timed out on confirms and re-published;
///    a committed command is never given back for it. Later the proxy
///    drops every connection at once. No delivery is acked before its
///    confirm, and every command gets its one outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withheld_confirms_and_reset_connections_never_ack_early() {
    // Only the workers time out quickly; the test's own producer waits.
    let rig = Rig::start_with(6, |_| {}, |_, s| s.amqp.confirm_timeout_ms = 500).await;
    let rush = rig.rush();
    let (first, second) = rush.split_at(rush.len() * 3 / 5);
    let reset_done = Notify::new();
    let mut feed = Feed::new(&rig);
    let traffic = async {
        feed.send(first).await;
        reset_done.notified().await;
        feed.send(second).await;
    };
    let totals = |f: fn(&crate::proxy::MonitorReport) -> usize| -> usize {
        rig.proxies.iter().map(|p| f(&p.report())).sum()
    };
    let faults = async {
        rig.when("deliveries in flight", first.len() / 4, || {
            rig.proxies.iter().all(|p| !p.held().is_empty())
        })
        .await;
        let republished = totals(|r| r.republished);
        let given_back = totals(|r| r.given_back);
        for p in &rig.proxies {
            p.stall();
        }
        let held = rig.held().len();
        // Held until the workers timed out on confirms and published the
        // same events again, with the confirms still here; more than twice
        // as many times as events are held, so at least one event went out
        // three times.
        eventually("publishes retried", || async {
            (totals(|r| r.republished) > republished + 2 * held).then_some(())
        })
        .await;
        for p in &rig.proxies {
            p.release();
        }
        // Committed means published: those commands were held, not given
        // back to the queue.
        assert_eq!(
            totals(|r| r.given_back),
            given_back,
            "a committed command was given back instead of its event published again"
        );
        rig.when("the rush under way again", first.len() * 2 / 3, || {
            !rig.held().is_empty()
        })
        .await;
        let before = rig.accepted();
        for p in &rig.proxies {
            p.reset();
        }
        rig.reconnected(&before).await;
        reset_done.notify_one();
    };
    tokio::join!(traffic, faults);
    let done = rig.finish().await;
    assert!(
        done.dropped() > 0,
        "the reset dropped deliveries in the workers' hands"
    );
}

/// The frame monitor the scenarios rely on does catch an early ack: a hand
/// driven consumer acks while the confirm of its outcome is withheld.
#[tokio::test(flavor = "multi_thread")]
async fn the_proxy_catches_an_ack_sent_before_the_confirm() {
    use lapin::options::{BasicAckOptions, BasicConsumeOptions, ConfirmSelectOptions};
    let app = TestApp::new().await;
    let proxy = Proxy::start(&authority(&app.settings.amqp.url)).await;
    let through_proxy = AmqpSettings {
        url: proxy.url(&app.settings.amqp.url),
        ..app.settings.amqp.clone()
    };
    let conn =
        reservation_worker::admin::connect(&through_proxy, &format!("{}-monitor", app.prefix()))
            .await
            .unwrap();
    let publisher = conn.create_channel().await.unwrap();
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            app.settings.amqp.commands_queue.as_str().into(),
            "monitor".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Dead letters carry the command body, which the monitor accepts as the
    // command's outcome (and no event listener sees them).
    let exchange = app.settings.amqp.dead_letter_exchange.as_str();
    use futures_util::StreamExt;

    // By the rule: publish, wait for the confirm, then ack.
    app.send(&reserve("good", "r", "u", 1)).await;
    let d = consumer.next().await.unwrap().unwrap();
    let confirm = publish_unconfirmed(&publisher, exchange, &d.data).await;
    confirm.await.unwrap();
    d.ack(BasicAckOptions::default()).await.unwrap();
    // Against it: the confirm is held back, and the ack goes out anyway.
    app.send(&reserve("early", "r", "u", 1)).await;
    let d = consumer.next().await.unwrap().unwrap();
    proxy.stall();
    let confirm = publish_unconfirmed(&publisher, exchange, &d.data).await;
    d.ack(BasicAckOptions::default()).await.unwrap();
    let report = eventually("the monitor to check both acks", || async {
        let r = proxy.report();
        (r.acks_checked == 2).then_some(r)
    })
    .await;
    proxy.release();
    confirm.await.unwrap();
    assert_eq!(report.violations.len(), 1, "{:?}", report.violations);
    assert!(
        report.violations[0].contains("\"early\""),
        "{:?}",
        report.violations
    );
    let _ = conn.close(200, "done".into()).await;
    app.cleanup().await;
}

/// Publishes `body` with routing key `r`; returns the confirm, not awaited.
async fn publish_unconfirmed(
    channel: &lapin::Channel,
    exchange: &str,
    body: &[u8],
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            exchange.into(),
            "r".into(),
            Default::default(),
            body,
            Default::default(),
        )
        .await
        .unwrap()
}

/// `broker::Publisher::publish` returns `Ok` only once the broker confirmed
/// *that* message, even when many tasks publish on the one confirm channel at
/// once, as the worker's lanes do. The proxy sees the wire: a publish that
/// returns `Ok` while its own confirm has not been forwarded was matched with
/// another message's confirm.
///
/// lapin 4.12 takes a publish's confirm sequence number and queues its frames
/// in two steps of one poll; concurrent publishes on different threads could
/// interleave between them, reach the wire in another order than their
/// numbers, and a confirm then resolved the wrong `PublisherConfirm` (1 to 5
/// of 25,600 publishes per run, before `Publisher` serialised that poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publisher_confirms_belong_to_their_own_publish() {
    use reservation_worker::admin::{Message, Publisher};
    use std::sync::Arc;
    let app = TestApp::new().await;
    let proxy = Arc::new(Proxy::start(&authority(&app.settings.amqp.url)).await);
    let through_proxy = AmqpSettings {
        url: proxy.url(&app.settings.amqp.url),
        ..app.settings.amqp.clone()
    };
    let conn =
        reservation_worker::admin::connect(&through_proxy, &format!("{}-confirms", app.prefix()))
            .await
            .unwrap();
    let publisher = Publisher::open(&conn, Duration::from_secs(10))
        .await
        .unwrap();
    let early = Arc::new(Mutex::new(Vec::new()));
    let lanes: Vec<_> = (0..8)
        .map(|lane| {
            let (publisher, proxy, early) = (publisher.clone(), proxy.clone(), early.clone());
            // Lanes on different runtime threads, as a worker's are with
            // `worker.threads` above 1.
            tokio::spawn(async move {
                for batch in 0..100 {
                    // A batch's publishes go out together, then each awaits
                    // its own confirm (as the worker's publish_and_ack does).
                    join_all((0..32).map(|i| {
                        let (publisher, proxy, early) =
                            (publisher.clone(), proxy.clone(), early.clone());
                        async move {
                            let id = format!("c-{lane}-{batch}-{i}");
                            let body = format!(r#"{{"resource_id":"r","command_id":"{id}"}}"#);
                            publisher
                                .publish(Message {
                                    exchange: "",
                                    routing_key: "nowhere",
                                    body: body.as_bytes(),
                                    ..Default::default()
                                })
                                .await
                                .unwrap();
                            let key = ("r".to_string(), id.clone());
                            if !proxy.confirmed(&key) {
                                early
                                    .lock()
                                    .unwrap()
                                    .push(format!("{id}: {}", proxy.explain(&key)));
                            }
                        }
                    }))
                    .await;
                }
            })
        })
        .collect();
    for lane in lanes {
        lane.await.unwrap();
    }
    let _ = conn.close(200, "".into()).await;
    app.cleanup().await;
    let early = early.lock().unwrap();
    assert!(
        early.is_empty(),
        "{} of 25600 publishes returned Ok before the broker confirmed them, e.g. {:?}",
        early.len(),
        &early[..early.len().min(3)]
    );
}
