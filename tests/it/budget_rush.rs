//! The budget rush (the budgets issue's acceptance tests): 40 customers
//! spend one budget of 500 across six priced resources at once, through
//! three workers, with duplicates, then top up on the cheapest resource.
//! First with in-process workers, then with worker processes SIGKILLed
//! every second that also abort between the budget's steps (failpoints).
//!
//! Never overspent, every refund made, every delivery of a command answered
//! with the same bytes, the budget's books equal to what the resources
//! recorded, and `verify --all` agrees.

use crate::helpers::*;
use crate::process::WorkerProcess;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reservation_worker::config::Settings;
use reservation_worker::domain::{BudgetId, CommandId, CommandKind, CustomerId, ResourceId};
use reservation_worker::message::{CommandBody, EventEnvelope};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

const BUDGET: &str = "festival";
/// Most one customer may spend.
const CAP: u64 = 500;
const CUSTOMERS: usize = 40;
/// Reserves per customer in the rush, the one-seat attempt first.
const PER_CUSTOMER: usize = 100;
/// Share of the rush's commands published twice.
const DUPLICATES: f64 = 0.1;
/// How far behind its original a duplicate is published, at most.
const DUPLICATE_LAG: usize = 200;
/// Top-up reserves per customer on the cheapest resource: 25 x 20 is the
/// whole cap, so every customer can reach it from anywhere.
const TOP_UPS: usize = 25;
/// The resources with room for everyone, priced in multiples of 20 so a
/// customer's total can reach the cap exactly.
const PRICED: [(&str, u32); 5] = [
    ("p20", 20),
    ("p40", 40),
    ("p60", 60),
    ("p100", 100),
    ("p140", 140),
];
const CHEAPEST: &str = "p20";
/// One seat that every customer tries first: all but one are refused
/// `sold_out`, and the 100 set aside for them must come back.
const SEAT: &str = "seat";
const SEAT_PRICE: u32 = 100;
/// Seats on each priced resource: more than all reserves together.
const ROOMY: u32 = 100_000;
/// Publishes awaiting their confirm at once.
const IN_FLIGHT: usize = 128;
/// How long one phase may take before the test fails (a deadline, as in
/// `eventually`, generous for a busy 2-core machine).
const PHASE_DEADLINE: Duration = Duration::from_secs(240);
/// The failpoints of the process-based rush: a worker aborts after the
/// budget set money aside, and after the resource committed, before the
/// budget settled.
const FAILPOINTS: &str = "budget.after_set_aside=0.02,budget.after_commit=0.02";

fn budget() -> BudgetId {
    BudgetId::try_from(BUDGET).unwrap()
}

fn cid(s: &str) -> CommandId {
    CommandId::try_from(s).unwrap()
}

fn customer(i: usize) -> String {
    format!("u{i:02}")
}

/// Every resource with its capacity and price.
fn resources() -> Vec<(&'static str, u32, u32)> {
    PRICED
        .iter()
        .map(|(r, price)| (*r, ROOMY, *price))
        .chain([(SEAT, 1, SEAT_PRICE)])
        .collect()
}

/// What the test publishes after the setup.
struct Workload {
    /// The rush in publishing order, duplicates included: round `i` is
    /// every customer's `i`-th reserve, round 0 the one seat.
    rush: Vec<CommandBody>,
    /// Each customer's top-ups on the cheapest resource, interleaved.
    top_up: Vec<CommandBody>,
}

fn workload(per_customer: usize, seed: u64) -> Workload {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut originals = Vec::with_capacity(per_customer * CUSTOMERS);
    for round in 0..per_customer {
        for c in 0..CUSTOMERS {
            let resource = if round == 0 {
                SEAT
            } else {
                PRICED[rng.random_range(0..PRICED.len())].0
            };
            let id = format!("{}-{round}", customer(c));
            originals.push(reserve(&id, resource, &customer(c), 1));
        }
    }
    // Each original at 2k, a duplicate at 2(k + lag) + 1: a little later,
    // among other commands.
    let mut keyed: Vec<(usize, CommandBody)> = Vec::new();
    for (k, body) in originals.into_iter().enumerate() {
        if rng.random_bool(DUPLICATES) {
            let lag = rng.random_range(1..=DUPLICATE_LAG);
            keyed.push((2 * (k + lag) + 1, body.clone()));
        }
        keyed.push((2 * k, body));
    }
    keyed.sort_by_key(|(key, _)| *key);
    let top_up = (0..TOP_UPS)
        .flat_map(|t| {
            (0..CUSTOMERS).map(move |c| {
                let id = format!("{}-top-{t}", customer(c));
                reserve(&id, CHEAPEST, &customer(c), 1)
            })
        })
        .collect();
    Workload {
        rush: keyed.into_iter().map(|(_, b)| b).collect(),
        top_up,
    }
}

/// How many events each command of `bodies` should get: one per publish.
fn publishes(bodies: &[CommandBody]) -> HashMap<CommandId, usize> {
    let mut wanted = HashMap::new();
    for b in bodies {
        *wanted.entry(b.command_id().clone()).or_default() += 1;
    }
    wanted
}

/// Defines the budget, then every resource on it, and waits for each.
async fn define_all(app: &TestApp) {
    app.send(&CommandBody::DefineBudget {
        command_id: cid("define-budget"),
        budget_id: budget(),
        per_customer_amount: CAP,
    })
    .await;
    let defined = app.budget_outcome("define-budget").await;
    assert!(defined.event.is_accepted(), "{defined:?}");
    for (resource, capacity, price) in resources() {
        app.send(&CommandBody::Define {
            command_id: cid(&format!("define-{resource}")),
            resource_id: rid(resource),
            capacity,
            per_customer_limit: None,
            price: Some(price),
            budget_id: Some(Some(budget())),
        })
        .await;
    }
    for (resource, _, _) in resources() {
        let e = app.outcome(&format!("define-{resource}")).await;
        assert!(e.event.is_accepted(), "{e:?}");
    }
}

/// Publishes every body, `IN_FLIGHT` awaiting their confirm at once.
async fn publish(app: &TestApp, bodies: &[CommandBody]) {
    futures_util::stream::iter(bodies)
        .for_each_concurrent(IN_FLIGHT, |b| app.send(b))
        .await
}

/// Every event received, by command, parsed and as the exact bytes.
#[derive(Default)]
struct Tally {
    seen: usize,
    by_command: HashMap<CommandId, Vec<(EventEnvelope, Vec<u8>)>>,
}

impl Tally {
    /// Takes in the events that arrived since the last look.
    fn update(&mut self, app: &TestApp) {
        let fresh = app.received_since(self.seen);
        self.seen += fresh.len();
        for (e, raw) in fresh {
            let id = e.event.command_id.clone();
            self.by_command.entry(id).or_default().push((e, raw));
        }
    }

    /// The commands of `wanted` with fewer events than wanted.
    fn missing(&self, wanted: &HashMap<CommandId, usize>) -> usize {
        wanted
            .iter()
            .filter(|(id, n)| self.by_command.get(*id).map_or(0, Vec::len) < **n)
            .count()
    }

    /// Polls until every command of `wanted` has its events.
    async fn until_answered(&mut self, app: &TestApp, wanted: &HashMap<CommandId, usize>) {
        let deadline = Instant::now() + PHASE_DEADLINE;
        loop {
            self.update(app);
            let missing = self.missing(wanted);
            if missing == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{missing} of {} commands still lack events",
                wanted.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Each customer's accepted takes, `(resource, command)` to amount.
type Spent = BTreeMap<CustomerId, BTreeMap<(ResourceId, CommandId), u64>>;

/// Checks that every event of one command is the same bytes and that each
/// accepted take cost its resource's price; returns the accepted takes.
fn accepted_takes(tally: &Tally) -> Spent {
    let prices: HashMap<ResourceId, u64> = resources()
        .into_iter()
        .map(|(r, _, price)| (rid(r), u64::from(price)))
        .collect();
    let mut spent = Spent::new();
    for (id, events) in &tally.by_command {
        let first = &events[0].1;
        for (_, raw) in &events[1..] {
            assert!(
                raw == first,
                "two events of {id} differ:\n{}\n{}",
                String::from_utf8_lossy(first),
                String::from_utf8_lossy(raw)
            );
        }
        let e = &events[0].0.event;
        if e.command != CommandKind::Reserve || !e.is_accepted() {
            continue;
        }
        let amount = e
            .details
            .amount
            .unwrap_or_else(|| panic!("no amount: {e:?}"));
        assert_eq!(amount, prices[&e.resource_id], "what {id} cost: {e:?}");
        let who = e.details.customer_id.clone().expect("a take's customer");
        spent
            .entry(who)
            .or_default()
            .insert((e.resource_id.clone(), id.clone()), amount);
    }
    spent
}

/// What the events say, once every command is answered: no customer
/// above the cap, and exactly one customer on the one seat. Returns each
/// customer's total.
fn assert_never_overspent(spent: &Spent) -> BTreeMap<CustomerId, u64> {
    let totals: BTreeMap<CustomerId, u64> = spent
        .iter()
        .map(|(c, takes)| (c.clone(), takes.values().sum()))
        .collect();
    let over: Vec<_> = totals.iter().filter(|(_, t)| **t > CAP).collect();
    assert!(over.is_empty(), "customers over the cap of {CAP}: {over:?}");
    let seated: Vec<_> = spent
        .iter()
        .flat_map(|(c, takes)| takes.keys().map(move |(r, _)| (c, r)))
        .filter(|(_, r)| r.as_str() == SEAT)
        .collect();
    assert_eq!(seated.len(), 1, "the one seat, sold once: {seated:?}");
    totals
}

/// Once nothing is in flight, the budget's books are exactly what the
/// resources recorded: each customer's `spent` is the sum of their
/// accepted takes, each accepted take is kept at its amount, and nothing
/// is left set aside.
async fn assert_books_balance(app: &TestApp, spent: &Spent) {
    let spendings = app.store.spendings(&budget()).await.unwrap();
    let mut wrong = Vec::new();
    let customers = spendings.keys().chain(spent.keys());
    for c in customers.collect::<BTreeSet<_>>() {
        let books = spendings.get(c).cloned().unwrap_or_default();
        let takes = spent.get(c).cloned().unwrap_or_default();
        let recorded: u64 = takes.values().sum();
        if books.spent != recorded {
            wrong.push(format!(
                "{c}: the budget says {} spent, accepted takes add up to {recorded}",
                books.spent
            ));
        }
        let mut kept = BTreeMap::new();
        for (key, entry) in &books.entries {
            if !entry.open.is_empty() {
                wrong.push(format!("{c}: {:?} still set aside for {key:?}", entry.open));
            }
            if let Some(amount) = entry.kept {
                kept.insert(key.clone(), amount);
            }
        }
        if kept != takes {
            wrong.push(format!(
                "{c}: the budget keeps {kept:?}, the resources accepted {takes:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the budget disagrees with the resources:\n{}",
        wrong.join("\n")
    );
}

/// `verify --all` agrees, having checked every resource and the budget.
async fn assert_verify_agrees(settings: &Settings) {
    let report = verify_all(settings).await;
    assert_eq!(report["resources"], resources().len(), "{report}");
    assert_eq!(report["budgets"], 1, "{report}");
}

/// In-process workers: the rush, then the top-ups. Every customer ends
/// exactly at the cap, which only happens if the 39 customers refused the
/// one seat got back the 100 set aside for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_rush_through_three_workers_never_overspends_and_refunds_every_refusal() {
    let started = std::time::Instant::now();
    let mut app = TestApp::new().await;
    for _ in 0..3 {
        app.start_worker();
    }
    define_all(&app).await;
    let work = workload(PER_CUSTOMER, 11);
    let mut tally = Tally::default();

    publish(&app, &work.rush).await;
    tally.until_answered(&app, &publishes(&work.rush)).await;
    // Only now: a top-up decided while a refund is still on its way could
    // be refused for money that is about to come back.
    publish(&app, &work.top_up).await;
    tally.until_answered(&app, &publishes(&work.top_up)).await;
    eprintln!(
        "{} publishes answered by {} events in {:?}",
        work.rush.len() + work.top_up.len(),
        tally.seen,
        started.elapsed()
    );

    let spent = accepted_takes(&tally);
    let totals = assert_never_overspent(&spent);
    let short: Vec<_> = (0..CUSTOMERS)
        .map(|c| CustomerId::try_from(customer(c).as_str()).unwrap())
        .filter(|c| totals.get(c) != Some(&CAP))
        .map(|c| (c.to_string(), totals.get(&c).copied().unwrap_or(0)))
        .collect();
    assert!(
        short.is_empty(),
        "customers who did not end at exactly {CAP}: {short:?}"
    );
    assert_books_balance(&app, &spent).await;
    app.stop_workers().await;
    assert_verify_agrees(&app.settings).await;
    eprintln!("in-process budget rush took {:?}", started.elapsed());
    app.cleanup().await;
}

/// Three worker processes with failpoints, and the killing that goes on
/// meanwhile.
struct Fleet {
    settings: Settings,
    prefix: String,
    workers: Vec<WorkerProcess>,
    /// Processes started so far (each gets a name of its own).
    started: usize,
    /// SIGKILLs sent.
    kills: usize,
    /// Workers found dead on their own (a failpoint).
    aborted: usize,
    last_kill: Instant,
}

impl Fleet {
    fn new(app: &TestApp, size: usize) -> Fleet {
        let mut fleet = Fleet {
            settings: app.settings.clone(),
            prefix: app.prefix().to_string(),
            workers: Vec::new(),
            started: 0,
            kills: 0,
            aborted: 0,
            last_kill: Instant::now(),
        };
        for _ in 0..size {
            let worker = fleet.spawn();
            fleet.workers.push(worker);
        }
        fleet
    }

    fn spawn(&mut self) -> WorkerProcess {
        self.started += 1;
        let name = format!("{}-w{}", self.prefix, self.started);
        WorkerProcess::spawn_with_env(&self.settings, &name, &[("RW_FAILPOINTS", FAILPOINTS)])
    }

    /// Starts again every worker that aborted; with `killing`, SIGKILLs
    /// one (and starts it again) once a second.
    fn tend(&mut self, killing: bool) {
        for i in 0..self.workers.len() {
            if !self.workers[i].is_running() {
                self.aborted += 1;
                self.workers[i] = self.spawn();
            }
        }
        if killing && self.last_kill.elapsed() >= Duration::from_secs(1) {
            let i = self.kills % self.workers.len();
            self.workers[i].kill();
            self.kills += 1;
            self.workers[i] = self.spawn();
            self.last_kill = Instant::now();
        }
    }

    /// Publishes `bodies` while tending the fleet (killing one a second),
    /// until every command has at least one event.
    async fn rush(&mut self, app: &TestApp, tally: &mut Tally, bodies: &[CommandBody]) {
        let wanted: HashMap<CommandId, usize> =
            bodies.iter().map(|b| (b.command_id().clone(), 1)).collect();
        let deadline = Instant::now() + PHASE_DEADLINE;
        let mut sending = std::pin::pin!(publish(app, bodies));
        let mut sent = false;
        loop {
            if !sent {
                // Publish for a while between looks at the events.
                sent = tokio::time::timeout(Duration::from_millis(50), &mut sending)
                    .await
                    .is_ok();
            } else {
                // Poll again shortly (the loop has a deadline).
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tally.update(app);
            let missing = tally.missing(&wanted);
            if sent && missing == 0 {
                return;
            }
            if Instant::now() >= deadline {
                let dead = app.ready_in(&app.settings.amqp.dead_letter_queue).await;
                panic!(
                    "{missing} of {} commands unanswered ({dead} dead-lettered; {} kills, {} \
                     aborts; logs in {})",
                    wanted.len(),
                    self.kills,
                    self.aborted,
                    self.workers[0].log().display()
                );
            }
            self.tend(true);
        }
    }

    /// Keeps the workers up (no more kills) until the command queue holds
    /// nothing, ready or unacked: no command is in flight any more.
    async fn drain(&mut self, app: &TestApp) {
        let queue = app.settings.amqp.commands_queue.clone();
        let deadline = Instant::now() + PHASE_DEADLINE;
        loop {
            self.tend(false);
            let left = messages_in(&queue).await;
            if left == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{left} commands still in {queue}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to every worker, waiting for each to exit.
    async fn stop(&mut self) {
        for w in &mut self.workers {
            if w.is_running() {
                w.terminate().await;
            }
        }
    }
}

/// Messages in `queue`, ready and unacked (`rabbitmqctl list_queues`; the
/// passive declare counts only ready ones).
async fn messages_in(queue: &str) -> u64 {
    queue_column("messages")
        .await
        .get(queue)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("queue {queue} in rabbitmqctl list_queues"))
}

/// The same rush through three worker processes, one SIGKILLed every
/// second and started again, each aborting now and then right after the
/// budget set money aside or right after the resource committed (before
/// the budget settled). Once nothing is in flight, the books balance.
#[tokio::test]
async fn a_budget_rush_with_workers_killed_between_the_steps_balances_the_books() {
    let started = std::time::Instant::now();
    let app = TestApp::new().await;
    let mut fleet = Fleet::new(&app, 3);
    define_all(&app).await;
    let work = workload(PER_CUSTOMER, 12);
    let mut tally = Tally::default();

    fleet.rush(&app, &mut tally, &work.rush).await;
    fleet.rush(&app, &mut tally, &work.top_up).await;
    fleet.drain(&app).await;
    fleet.stop().await;
    tally.update(&app);
    eprintln!(
        "{} publishes answered by {} events; {} workers killed, {} aborted at a failpoint; {:?}",
        work.rush.len() + work.top_up.len(),
        tally.seen,
        fleet.kills,
        fleet.aborted,
        started.elapsed()
    );
    assert!(fleet.kills >= 3, "workers were killed ({})", fleet.kills);
    assert!(fleet.aborted > 0, "failpoints fired");
    assert_eq!(
        app.ready_in(&app.settings.amqp.dead_letter_queue).await,
        0,
        "no command was dead-lettered"
    );

    let spent = accepted_takes(&tally);
    assert_never_overspent(&spent);
    assert_books_balance(&app, &spent).await;
    assert_verify_agrees(&app.settings).await;
    eprintln!("process budget rush took {:?}", started.elapsed());
    app.cleanup().await;
}
