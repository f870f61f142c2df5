//! Budgets (contract v2): a customer's spending cap across resources,
//! refunds of refused takes, cancels and expiries, and the audit that
//! replays every history (`verify`, `inspect --at`).

use crate::helpers::*;
use futures_util::StreamExt;
use reservation_worker::config::Settings;
use reservation_worker::domain::{BudgetId, CustomerId, Reason};
use reservation_worker::message::{CommandBody, EventEnvelope};
use std::process::Output;

fn budget_id(s: &str) -> BudgetId {
    BudgetId::try_from(s).unwrap()
}

fn define_budget(id: &str, budget: &str, amount: u64) -> CommandBody {
    CommandBody::DefineBudget {
        command_id: id.try_into().unwrap(),
        budget_id: budget_id(budget),
        per_customer_amount: amount,
    }
}

fn priced(id: &str, resource: &str, capacity: u32, price: u32, budget: &str) -> CommandBody {
    CommandBody::Define {
        command_id: id.try_into().unwrap(),
        resource_id: rid(resource),
        capacity,
        per_customer_limit: None,
        price: Some(price),
        budget_id: Some(Some(budget_id(budget))),
    }
}

fn reason(e: &EventEnvelope) -> Option<Reason> {
    e.event.verdict.reason()
}

/// Sends `body` and waits for its outcome.
async fn decided(app: &TestApp, body: CommandBody) -> EventEnvelope {
    app.send(&body).await;
    app.outcome(body.command_id().as_str()).await
}

/// `reservation-worker ARGS` against the test's own servers and names.
pub fn cli(settings: &Settings, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_reservation-worker"));
    command.args(args).env_clear().envs(settings.to_env());
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.output().expect("run the binary")
}

/// What `verify --all --json` says, and whether it exited 0.
pub fn verify_all(settings: &Settings) -> (bool, serde_json::Value) {
    let out = cli(settings, &["verify", "--all", "--json"]);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

async fn spent(app: &TestApp, budget: &str, customer: &str) -> u64 {
    let spendings = app.store.spendings(&budget_id(budget)).await.unwrap();
    let customer = CustomerId::try_from(customer).unwrap();
    spendings.get(&customer).map_or(0, |s| {
        assert!(
            s.entries.values().all(|e| e.open.is_empty()),
            "nothing left set aside: {s:?}"
        );
        s.spent
    })
}

#[tokio::test]
async fn a_budget_caps_a_customer_across_resources_and_gives_back_what_was_refused() {
    let mut app = TestApp::new().await;
    app.start_worker();
    let defined = {
        app.send(&define_budget("b1", "fest", 100)).await;
        app.budget_outcome("b1").await
    };
    assert!(defined.event.is_accepted());
    assert_eq!(
        (defined.event.per_customer_amount, defined.event.version),
        (Some(100), 1)
    );
    decided(&app, priced("da", "hall", 10, 30, "fest")).await;
    let one = decided(&app, priced("db", "solo", 1, 50, "fest")).await;
    assert_eq!(one.event.details.price, Some(50));
    assert_eq!(one.event.details.budget_id, Some(budget_id("fest")));

    let won = decided(&app, reserve("r1", "solo", "u1", 1)).await;
    assert!(won.event.is_accepted());
    assert_eq!(won.event.details.amount, Some(50));
    assert_eq!(won.event.details.budget_id, Some(budget_id("fest")));
    let lost = decided(&app, reserve("r2", "solo", "u2", 1)).await;
    assert_eq!(reason(&lost), Some(Reason::SoldOut));
    assert_eq!(
        lost.event.details.amount, None,
        "a refused take cost nothing"
    );
    assert_eq!(spent(&app, "fest", "u2").await, 0, "u2's 50 came back");

    // u2 can spend the whole budget elsewhere: 90, then 30 more is over.
    let all = decided(&app, reserve("r3", "hall", "u2", 3)).await;
    assert!(all.event.is_accepted());
    assert_eq!(all.event.details.amount, Some(90));
    let over = decided(&app, reserve("r4", "hall", "u2", 1)).await;
    assert_eq!(reason(&over), Some(Reason::BudgetExceeded));
    assert_eq!(over.event.details.amount, Some(30), "the cost refused");
    let r = app.store.summary(&rid("hall")).await.unwrap().unwrap();
    assert_eq!(r.reserved, 3, "a take over budget takes no seats");

    // u1 has 50 left: 60 is over, until the cancel gives 50 back.
    let over = decided(&app, reserve("r5", "hall", "u1", 2)).await;
    assert_eq!(reason(&over), Some(Reason::BudgetExceeded));
    let cancelled = decided(&app, cancel("c1", "solo", "r1")).await;
    assert!(cancelled.event.is_accepted());
    assert_eq!(cancelled.event.details.amount, Some(50), "given back");
    let again = decided(&app, reserve("r6", "hall", "u1", 3)).await;
    assert!(again.event.is_accepted(), "{again:?}");
    assert_eq!(
        (
            spent(&app, "fest", "u1").await,
            spent(&app, "fest", "u2").await
        ),
        (90, 90)
    );

    // A lower cap binds later decisions; nothing spent is taken back.
    let lower = {
        app.send(&define_budget("b2", "fest", 60)).await;
        app.budget_outcome("b2").await
    };
    assert_eq!(lower.event.version, 2);
    assert_eq!(spent(&app, "fest", "u1").await, 90);
    let over = decided(&app, reserve("r7", "solo", "u3", 1)).await;
    assert!(
        over.event.is_accepted(),
        "the seat came back with the cancel"
    );
    let over = decided(&app, reserve("r8", "hall", "u3", 1)).await;
    assert_eq!(reason(&over), Some(Reason::BudgetExceeded), "50 + 30 > 60");

    let (ok, report) = verify_all(&app.settings);
    assert!(ok, "{report:#}");
    assert_eq!(
        (report["resources"].as_u64(), report["budgets"].as_u64()),
        (Some(2), Some(1))
    );
    app.cleanup().await;
}

#[tokio::test]
async fn unknown_budgets_come_before_sold_out_and_define_budget_is_idempotent() {
    let mut app = TestApp::new().await;
    app.start_worker();
    decided(&app, priced("d", "gig", 1, 10, "later")).await;
    decided(&app, reserve("r0", "gig", "u", 2)).await;
    let e = app.outcome("r0").await;
    assert_eq!(reason(&e), Some(Reason::UnknownBudget), "before sold_out");
    app.send(&define_budget("b", "later", 10)).await;
    let first = app.budget_outcome("b").await;
    // A redelivery, and a reuse of the id with another body.
    app.send(&define_budget("b", "later", 10)).await;
    app.send(&define_budget("b", "later", 99)).await;
    let events = eventually("three define_budget outcomes", || async {
        let all: Vec<_> = app
            .budget_events()
            .into_iter()
            .filter(|e| e.event.command_id.as_str() == "b")
            .collect();
        (all.len() == 3).then_some(all)
    })
    .await;
    assert_eq!(events[1], first, "a redelivery re-publishes the same event");
    assert_eq!(
        events[2].event.verdict.reason(),
        Some(Reason::IdempotencyConflict)
    );
    let budget = app
        .store
        .budget(&budget_id("later"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((budget.per_customer_amount, budget.version), (10, 1));

    let bad = br#"{"type":"define_budget","command_id":"x","budget_id":"later","per_customer_amount":-5}"#;
    app.send_raw(bad).await;
    let rejected = app.budget_outcome("x").await;
    assert_eq!(rejected.event.verdict.reason(), Some(Reason::Invalid));
    let detail = rejected.event.verdict.detail().unwrap();
    assert!(detail.contains("per_customer_amount"), "{detail}");

    let e = decided(&app, reserve("r1", "gig", "u", 1)).await;
    assert!(e.event.is_accepted());
    let e = decided(&app, reserve("r2", "gig", "v", 1)).await;
    assert_eq!(
        reason(&e),
        Some(Reason::SoldOut),
        "sold_out before budget_exceeded"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_hold_that_runs_out_gives_its_money_back() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define_budget("b", "fest", 100)).await;
    app.budget_outcome("b").await;
    decided(&app, priced("d", "gig", 5, 40, "fest")).await;
    let held = decided(&app, hold("h", "gig", "u", 2, 1)).await;
    assert_eq!(held.event.details.amount, Some(80));
    let over = decided(&app, reserve("r", "gig", "u", 1)).await;
    assert_eq!(
        reason(&over),
        Some(Reason::BudgetExceeded),
        "held seats count"
    );
    let expiry = app.outcome("expire:h").await;
    assert_eq!(expiry.event.details.amount, Some(80));
    assert_eq!(spent(&app, "fest", "u").await, 0);
    let again = decided(&app, reserve("r2", "gig", "u", 2)).await;
    assert!(again.event.is_accepted());
    let (ok, report) = verify_all(&app.settings);
    assert!(ok, "{report:#}");
    app.cleanup().await;
}

#[tokio::test]
async fn verify_names_a_tampered_holding_reserved_count_or_budget() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define_budget("b", "fest", 100)).await;
    app.budget_outcome("b").await;
    decided(&app, priced("d", "gig", 5, 10, "fest")).await;
    decided(&app, reserve("r", "gig", "u", 2)).await;
    decided(&app, reserve("r2", "gig", "v", 1)).await;
    let (ok, report) = verify_all(&app.settings);
    assert!(ok, "{report:#}");

    // `inspect --at 1`: the state right after the first define.
    let out = cli(&app.settings, &["inspect", "gig", "--at", "1"]);
    assert!(out.status.success(), "{out:?}");
    let at: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &at["version"],
            &at["reserved"],
            &at["remaining"],
            &at["price"]
        ),
        (&1.into(), &0.into(), &5.into(), &10.into())
    );
    assert_eq!(at["budget_id"], "fest");
    let out = cli(&app.settings, &["inspect", "gig", "--at", "9"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no version 9"),
        "{out:?}"
    );

    let mut conn = redis::Client::open(app.settings.redis.url.expose())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys = app.store.keys().clone();
    // Runs `tamper` on Redis, then verify (which must fail), and returns
    // what it found as (kind, id, difference).
    let tamperer = conn.clone();
    let findings_after = async |tamper: redis::Cmd| -> Vec<(String, String, String)> {
        let _: () = tamper.query_async(&mut tamperer.clone()).await.unwrap();
        let (ok, report) = verify_all(&app.settings);
        assert!(!ok, "{report:#}");
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|f| {
                f["differences"].as_array().unwrap().iter().map(|d| {
                    (
                        f["kind"].as_str().unwrap().to_string(),
                        f["id"].as_str().unwrap().to_string(),
                        d.as_str().unwrap().to_string(),
                    )
                })
            })
            .collect()
    };
    let finding = |kind: &str, id: &str, what: &str| vec![(kind.into(), id.into(), what.into())];
    let hset = |key: String, field: &str, value: u64| {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(key).arg(field).arg(value);
        cmd
    };
    let set = |key: &str, value: &str| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        cmd
    };

    // A holding.
    let holdings = keys.holdings(&rid("gig"));
    assert_eq!(
        findings_after(hset(holdings.clone(), "u", 3)).await,
        finding(
            "resource",
            "gig",
            "holding of customer u: history says 2, stored 3"
        )
    );

    // The reserved count (the holding put back).
    let state_key = keys.state(&rid("gig"));
    let json: String = redis::cmd("GET")
        .arg(&state_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut state: serde_json::Value = serde_json::from_str(&json).unwrap();
    state["reserved"] = 1.into();
    let _: () = hset(holdings, "u", 2).query_async(&mut conn).await.unwrap();
    assert_eq!(
        findings_after(set(&state_key, &state.to_string())).await,
        finding("resource", "gig", "reserved: history says 3, stored 1")
    );

    // A budget's spending (the state put back).
    let _: () = set(&state_key, &json).query_async(&mut conn).await.unwrap();
    let spend_key = keys.spending(&budget_id("fest"), &CustomerId::try_from("v").unwrap());
    assert_eq!(
        findings_after(hset(spend_key, "spent", 0)).await,
        finding(
            "budget",
            "fest",
            "customer v: spent is 0 but their entries add up to 10"
        )
    );
    // A key that cannot be read is named, and the rest still verified.
    let reservations = keys.reservations(&rid("gig"));
    let mut corrupt = redis::cmd("HSET");
    corrupt.arg(&reservations).arg("r").arg("not json");
    let found = findings_after(corrupt).await;
    assert!(
        found.iter().any(|(kind, id, what)| kind == "resource"
            && id == "gig"
            && what.starts_with("cannot be read")),
        "{found:?}"
    );
    assert!(found.iter().any(|(kind, ..)| kind == "budget"), "{found:?}");

    // The human form names it too, and exits 1.
    let out = cli(&app.settings, &["verify", "--all"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("budget fest:"), "{text}");
    assert!(text.contains("2 differ"), "{text}");
    app.cleanup().await;
}

#[tokio::test]
async fn a_define_budget_redelivered_after_its_record_expired_is_replayed_not_decided_again() {
    let mut app = TestApp::with(|s| s.redis.idempotency_retention_secs = 1).await;
    app.start_worker();
    app.send(&define_budget("b1", "fest", 10)).await;
    let first = app.budget_outcome("b1").await;
    app.send(&define_budget("b2", "fest", 20)).await;
    app.budget_outcome("b2").await;
    let record = app
        .store
        .keys()
        .budget_record(&budget_id("fest"), &"b1".try_into().unwrap());
    let conn = redis::Client::open(app.settings.redis.url.expose())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    eventually("b1's record to expire", || {
        let (record, mut conn) = (record.clone(), conn.clone());
        async move {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&record)
                .query_async(&mut conn)
                .await
                .unwrap();
            (!exists).then_some(())
        }
    })
    .await;
    app.send(&define_budget("b1", "fest", 10)).await;
    let replayed = eventually("b1's second outcome", || async {
        let all: Vec<_> = app
            .budget_events()
            .into_iter()
            .filter(|e| e.event.command_id.as_str() == "b1")
            .collect();
        (all.len() == 2).then(|| all[1].clone())
    })
    .await;
    assert_eq!(replayed, first, "the same event, replayed from the history");
    let budget = app.store.budget(&budget_id("fest")).await.unwrap().unwrap();
    assert_eq!((budget.per_customer_amount, budget.version), (20, 2));
    app.cleanup().await;
}

#[tokio::test]
async fn money_set_aside_on_a_budget_the_resource_left_comes_back() {
    let mut app = TestApp::new().await;
    app.start_worker();
    for (id, budget) in [("b1", "old"), ("b2", "new")] {
        app.send(&define_budget(id, budget, 100)).await;
        app.budget_outcome(id).await;
    }
    decided(&app, priced("d1", "gig", 10, 30, "old")).await;
    let kept = decided(&app, reserve("r1", "gig", "u", 1)).await;
    assert!(kept.event.is_accepted());
    // A set-aside on `old` whose take was then decided on `new` (as when a
    // worker died between the steps and a define moved the resource).
    let ask = reservation_worker::domain::Ask {
        customer_id: CustomerId::try_from("u").unwrap(),
        resource_id: rid("gig"),
        command_id: "r2".try_into().unwrap(),
        amount: 30,
    };
    let answered = app
        .store
        .set_aside(&budget_id("old"), std::slice::from_ref(&ask))
        .await
        .unwrap();
    assert_eq!(
        answered,
        Some(vec![reservation_worker::domain::Answer::SetAside])
    );
    decided(&app, priced("d2", "gig", 10, 30, "new")).await;
    let moved = decided(&app, reserve("r2", "gig", "u", 1)).await;
    assert_eq!(moved.event.details.budget_id, Some(budget_id("new")));
    assert_eq!(
        spent(&app, "old", "u").await,
        30,
        "r1's 30 stays kept on old"
    );
    assert_eq!(spent(&app, "new", "u").await, 30);
    let (ok, report) = verify_all(&app.settings);
    assert!(ok, "{report:#}");
    app.cleanup().await;
}

/// Groups span resources paid from different budgets: one transaction sets
/// money aside on all of them, and one settles them. Four replicas race on
/// every budget at once; each customer still gets exactly what each budget
/// allows, and nothing stays set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_budgets_set_aside_and_settled_together_are_never_overspent() {
    let mut app = TestApp::new().await;
    let budgets = ["b0", "b1", "b2"];
    for _ in 0..4 {
        app.start_worker();
    }
    for (i, b) in budgets.iter().enumerate() {
        app.send(&define_budget(&format!("db-{b}"), b, 30)).await;
        app.budget_outcome(&format!("db-{b}")).await;
        decided(
            &app,
            priced(&format!("d-{i}"), &format!("hall{i}"), 10_000, 10, b),
        )
        .await;
    }
    // 8 customers, 40 one-seat reserves each on every hall, interleaved so
    // each group holds takes on all three budgets.
    let mut bodies = Vec::new();
    for round in 0..40 {
        for c in 0..8 {
            for hall in 0..budgets.len() {
                let id = format!("r-{round}-{c}-{hall}");
                bodies.push(reserve(&id, &format!("hall{hall}"), &format!("u{c}"), 1));
            }
        }
    }
    let before = app.events().len();
    futures_util::stream::iter(&bodies)
        .for_each_concurrent(64, |b| app.send(b))
        .await;
    app.wait_for_events(before + bodies.len()).await;
    for (hall, b) in budgets.iter().enumerate() {
        for c in 0..8 {
            let customer = format!("u{c}");
            let accepted = bodies
                .iter()
                .filter(|body| {
                    let id = body.command_id();
                    id.as_str().ends_with(&format!("-{c}-{hall}"))
                        && app
                            .events_for(id.as_str())
                            .iter()
                            .any(|e| e.event.is_accepted())
                })
                .count();
            assert_eq!(accepted, 3, "{customer} on hall{hall}: 30 / 10 a seat");
            assert_eq!(spent(&app, b, &customer).await, 30, "{customer} on {b}");
        }
    }
    let (ok, report) = verify_all(&app.settings);
    assert!(ok, "verify --all: {report}");
    app.cleanup().await;
}
