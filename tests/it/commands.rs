//! The basic rules end to end, and idempotency.

use crate::helpers::*;
use reservation_worker::domain::{Reason, Verdict};
use reservation_worker::message::CommandBody;

fn cmd(id: &str) -> reservation_worker::domain::CommandId {
    reservation_worker::domain::CommandId::try_from(id).unwrap()
}

fn reason(e: &reservation_worker::message::EventEnvelope) -> Option<Reason> {
    match &e.event.verdict {
        Verdict::Rejected { reason, .. } => Some(*reason),
        Verdict::Accepted => None,
    }
}

#[tokio::test]
async fn define_reserve_cancel_end_to_end() {
    let mut app = TestApp::new().await;
    app.start_worker();

    app.send(&define("d1", "show", 3, Some(2))).await;
    let e = app.outcome("d1").await;
    assert!(e.event.is_accepted());
    assert_eq!((e.event.remaining, e.event.version), (3, 1));

    app.send(&reserve("r1", "show", "alice", 2)).await;
    let e = app.outcome("r1").await;
    assert!(e.event.is_accepted());
    assert_eq!((e.event.remaining, e.event.version), (1, 2));

    app.send(&reserve("r2", "show", "bob", 2)).await;
    let e = app.outcome("r2").await;
    assert_eq!(reason(&e), Some(Reason::SoldOut));
    assert_eq!(
        (e.event.remaining, e.event.version),
        (1, 2),
        "a rejection keeps the version"
    );

    app.send(&reserve("r3", "show", "alice", 1)).await;
    assert_eq!(
        reason(&app.outcome("r3").await),
        Some(Reason::CustomerLimit)
    );

    app.send(&reserve("r4", "nowhere", "alice", 1)).await;
    assert_eq!(
        reason(&app.outcome("r4").await),
        Some(Reason::UnknownResource)
    );

    let summary = app.store.summary(&rid("show")).await.unwrap().unwrap();
    assert_eq!(
        (summary.capacity, summary.reserved, summary.version),
        (3, 2, 2)
    );
    app.cleanup().await;
}

#[tokio::test]
async fn cancel_releases_seats_that_a_later_reserve_takes() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d1", "table-7", 1, None)).await;
    app.outcome("d1").await;
    app.send(&reserve("r1", "table-7", "alice", 1)).await;
    assert!(app.outcome("r1").await.event.is_accepted());
    app.send(&reserve("r2", "table-7", "bob", 1)).await;
    assert_eq!(reason(&app.outcome("r2").await), Some(Reason::SoldOut));

    app.send(&cancel("c1", "table-7", "r1")).await;
    let e = app.outcome("c1").await;
    assert!(e.event.is_accepted());
    assert_eq!(e.event.details.quantity, Some(1));
    assert_eq!(e.event.remaining, 1);

    app.send(&reserve("r3", "table-7", "bob", 1)).await;
    assert!(app.outcome("r3").await.event.is_accepted());

    app.send(&cancel("c2", "table-7", "r1")).await;
    assert_eq!(
        reason(&app.outcome("c2").await),
        Some(Reason::AlreadyCancelled)
    );
    app.send(&cancel("c3", "table-7", "r2")).await;
    assert_eq!(
        reason(&app.outcome("c3").await),
        Some(Reason::UnknownReservation)
    );

    let s = app.store.summary(&rid("table-7")).await.unwrap().unwrap();
    assert_eq!((s.reserved, s.remaining), (1, 0));
    app.cleanup().await;
}

#[tokio::test]
async fn define_below_reserved_is_rejected() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d1", "hall", 10, None)).await;
    app.outcome("d1").await;
    app.send(&reserve("r1", "hall", "alice", 6)).await;
    app.outcome("r1").await;
    app.send(&define("d2", "hall", 5, None)).await;
    assert_eq!(
        reason(&app.outcome("d2").await),
        Some(Reason::CapacityBelowReserved)
    );
    app.send(&define("d3", "hall", 6, Some(1))).await;
    assert!(app.outcome("d3").await.event.is_accepted());
    let s = app.store.summary(&rid("hall")).await.unwrap().unwrap();
    assert_eq!(
        (s.capacity, s.reserved, s.per_customer_limit),
        (6, 6, Some(1))
    );
    app.cleanup().await;
}

#[tokio::test]
async fn a_command_published_twice_changes_state_once_and_repeats_its_event() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d1", "gig", 10, None)).await;
    app.outcome("d1").await;

    let body = reserve("r1", "gig", "alice", 3);
    app.send(&body).await;
    app.outcome("r1").await;
    app.send(&body).await;
    let events = app.outcomes("r1", 2).await;
    assert_eq!(events[0], events[1], "same event_id, byte-identical bodies");

    let s = app.store.summary(&rid("gig")).await.unwrap().unwrap();
    assert_eq!((s.reserved, s.version), (3, 2), "booked once");
    let history = app.store.history(&rid("gig")).await.unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|e| e.event.command_id.as_str() == "r1")
            .count(),
        1
    );
    app.cleanup().await;
}

/// A reserve and a cancel that changed the state are recognised on
/// redelivery even after their idempotency records expired (deleted here),
/// and repeat their events byte for byte; a reused id is still a conflict.
#[tokio::test]
async fn commands_that_changed_state_are_never_decided_again_after_their_records_expire() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d1", "gig", 10, Some(4))).await;
    app.outcome("d1").await;
    let (r1, c1) = (reserve("r1", "gig", "alice", 3), cancel("c1", "gig", "r1"));
    app.send(&r1).await;
    let first_reserve = app.outcomes("r1", 1).await.remove(0).1;
    app.send(&c1).await;
    let first_cancel = app.outcomes("c1", 1).await.remove(0).1;
    let before = app.store.summary(&rid("gig")).await.unwrap().unwrap();

    let client = redis::Client::open(app.settings.redis.url.expose()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    for id in ["r1", "c1"] {
        let key = app.store.keys().record(&rid("gig"), &cmd(id));
        let deleted: u32 = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert_eq!(deleted, 1, "{key} existed");
    }
    app.send(&r1).await;
    app.send(&c1).await;
    assert_eq!(
        app.outcomes("r1", 2).await[1].1,
        first_reserve,
        "same event"
    );
    assert_eq!(app.outcomes("c1", 2).await[1].1, first_cancel, "same event");
    let reused = reserve("r1", "gig", "bob", 1);
    app.send(&reused).await;
    let conflict = app.outcomes("r1", 3).await.remove(2).0;
    assert_eq!(reason(&conflict), Some(Reason::IdempotencyConflict));
    let after = app.store.summary(&rid("gig")).await.unwrap().unwrap();
    assert_eq!(after, before, "state unchanged");
    app.cleanup().await;
}

/// Contract v2 `define`: an absent `per_customer_limit` keeps the limit,
/// `null` removes it.
#[tokio::test]
async fn define_keeps_the_limit_when_absent_and_removes_it_when_null() {
    let mut app = TestApp::new().await;
    app.start_worker();
    let limit = |id: &str, limit: Option<Option<u32>>| CommandBody::Define {
        command_id: cmd(id),
        resource_id: rid("club"),
        capacity: 10,
        per_customer_limit: limit,
        price: None,
        budget_id: None,
    };
    for (body, expected) in [
        (limit("d1", Some(Some(4))), Some(4)),
        (limit("d2", None), Some(4)),
        (limit("d3", Some(None)), None),
    ] {
        let id = body.command_id().to_string();
        app.send(&body).await;
        let e = app.outcome(&id).await;
        assert!(e.event.is_accepted(), "{id}");
        assert_eq!(e.event.details.per_customer_limit, expected, "{id}'s event");
        let s = app.store.summary(&rid("club")).await.unwrap().unwrap();
        assert_eq!(s.per_customer_limit, expected, "after {id}");
    }
    app.cleanup().await;
}

#[tokio::test]
async fn events_can_go_out_on_a_connection_of_their_own() {
    let mut app = TestApp::with(|s| s.amqp.separate_publisher_connection = true).await;
    app.start_worker();
    app.send(&define("d1", "gig", 2, None)).await;
    app.outcome("d1").await;
    let worker = format!("{}-worker-0", app.prefix());
    let mut names: Vec<String> = broker_connections(&worker)
        .await
        .into_iter()
        .map(|(_, name)| name)
        .collect();
    names.sort();
    assert_eq!(names, [worker.clone(), format!("{worker}-publisher")]);
    app.send(&reserve("r1", "gig", "alice", 2)).await;
    assert!(app.outcome("r1").await.event.is_accepted());
    app.send(&reserve("r2", "gig", "bob", 1)).await;
    assert_eq!(reason(&app.outcome("r2").await), Some(Reason::SoldOut));
    app.cleanup().await;
}

#[tokio::test]
async fn same_command_id_with_another_body_is_an_idempotency_conflict() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d1", "gig", 10, None)).await;
    app.outcome("d1").await;
    app.send(&reserve("r1", "gig", "alice", 3)).await;
    let first = app.outcome("r1").await;
    assert!(first.event.is_accepted());

    app.send(&reserve("r1", "gig", "alice", 4)).await;
    let events = app.outcomes("r1", 2).await;
    assert_eq!(reason(&events[1].0), Some(Reason::IdempotencyConflict));
    assert_ne!(events[1].0.event_id, first.event_id);

    // The state moves on; a redelivery of the conflicting body still
    // repeats its first outcome, byte for byte.
    app.send(&reserve("r2", "gig", "bob", 2)).await;
    app.outcome("r2").await;
    app.send(&reserve("r1", "gig", "alice", 4)).await;
    let events = app.outcomes("r1", 3).await;
    assert_eq!(
        events[2], events[1],
        "the same conflict event, byte for byte"
    );

    let s = app.store.summary(&rid("gig")).await.unwrap().unwrap();
    assert_eq!(
        (s.reserved, s.version),
        (5, 3),
        "the conflicts changed nothing"
    );
    let history = app.store.history(&rid("gig")).await.unwrap();
    assert!(
        history
            .iter()
            .all(|e| reason(e) != Some(Reason::IdempotencyConflict)),
        "conflicts stay out of the history"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn history_rebuilds_the_state() {
    use reservation_worker::domain::{State, apply};
    let mut app = TestApp::new().await;
    app.start_worker();
    let bodies = [
        define("d1", "club", 5, Some(3)),
        reserve("r1", "club", "a", 2),
        reserve("r2", "club", "b", 3),
        reserve("r3", "club", "c", 1),
        cancel("c1", "club", "r1"),
        reserve("r4", "club", "c", 2),
    ];
    for b in &bodies {
        app.send(b).await;
        app.outcome(b.command_id().as_str()).await;
    }
    let history = app.store.history(&rid("club")).await.unwrap();
    assert_eq!(
        history.len(),
        bodies.len(),
        "every outcome is in the history"
    );
    let rebuilt = history
        .iter()
        .fold(State::default(), |s, e| apply(s, &e.event));
    let r = rebuilt.resource.unwrap();
    let s = app.store.summary(&rid("club")).await.unwrap().unwrap();
    assert_eq!(
        (r.capacity, r.reserved, r.version),
        (s.capacity, s.reserved, s.version)
    );
    assert_eq!((s.reserved, s.version), (5, 5));
    app.cleanup().await;
}

#[tokio::test]
async fn events_carry_the_contract_properties() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d1", "gig", 10, None)).await;
    let e = app.outcome("d1").await;
    let json: serde_json::Value = serde_json::from_slice(
        app.raw_events()
            .iter()
            .find(|b| String::from_utf8_lossy(b).contains("\"d1\""))
            .unwrap(),
    )
    .unwrap();
    for field in [
        "event_id",
        "command_id",
        "command",
        "outcome",
        "resource_id",
        "remaining",
        "version",
        "occurred_at",
    ] {
        assert!(json.get(field).is_some(), "event has {field}: {json}");
    }
    assert_eq!(json["command"], "define");
    assert_eq!(json["capacity"], 10);
    assert_eq!(e.event_id.to_string(), json["event_id"]);
    app.cleanup().await;
}

#[tokio::test]
async fn setup_is_idempotent() {
    let app = TestApp::new().await;
    reservation_worker::startup::setup(&app.settings)
        .await
        .unwrap();
    reservation_worker::startup::setup(&app.settings)
        .await
        .unwrap();
    app.cleanup().await;
}

/// One transaction writes a whole batch: customers who reserve get their
/// end holding written, customers who only cancel are decremented. Either
/// way Redis must agree with the history folded from scratch.
#[tokio::test]
async fn a_batch_leaves_holdings_and_reservations_as_its_history_says() {
    use reservation_worker::domain::{State, apply};
    use reservation_worker::message::decode;
    let app = TestApp::new().await;
    let club = rid("club");
    let batch = |bodies: &[reservation_worker::message::CommandBody]| {
        bodies
            .iter()
            .map(|b| decode(&b.to_json()).expect("decodable"))
            .collect::<Vec<_>>()
    };
    let first = batch(&[
        define("d1", "club", 10, Some(4)),
        reserve("r1", "club", "a", 2),
        reserve("r2", "club", "b", 3),
        reserve("r5", "club", "d", 1),
        reserve("r7", "club", "a", 1),
    ]);
    app.commit(&club, &first).await;
    let second = batch(&[
        cancel("c1", "club", "r1"),    // a only cancels
        reserve("r3", "club", "b", 1), // b reserves ...
        cancel("c2", "club", "r2"),    // ... and cancels in the same batch
        reserve("r4", "club", "c", 1), // c reserves ...
        cancel("c3", "club", "r4"),    // ... and cancels that very reservation
        reserve("r6", "club", "d", 4), // d goes over the limit: rejected
        cancel("c4", "club", "r1"),    // already cancelled
    ]);
    let outcomes = app.commit(&club, &second).await;
    assert_eq!(outcomes.len(), second.len());

    // The same command twice, and a reused id twice, in one batch: each
    // pair shares one outcome and writes once.
    let third = batch(&[
        reserve("r8", "club", "e", 2),
        reserve("r8", "club", "e", 2),
        reserve("r5", "club", "x", 1),
        reserve("r5", "club", "x", 1),
    ]);
    let outcomes = app.commit(&club, &third).await;
    let events: Vec<_> = outcomes.iter().map(|o| o.event().clone()).collect();
    assert_eq!(events[0], events[1]);
    assert_eq!(events[0].routing_key(), "reserve.accepted");
    assert_eq!(events[2], events[3]);
    assert_eq!(events[2].reason, Some(Reason::IdempotencyConflict));

    let history = app.store.history(&club).await.unwrap();
    assert_eq!(history.len(), first.len() + second.len() + 1);
    let rebuilt = history
        .iter()
        .fold(State::default(), |s, e| apply(s, &e.event));
    let held = app.store.holdings(&club).await.unwrap();
    for customer in ["a", "b", "c", "d", "e", "x"] {
        let id = reservation_worker::domain::CustomerId::try_from(customer).unwrap();
        assert_eq!(
            held.get(customer).copied().unwrap_or(0),
            rebuilt.held_by(&id),
            "holding of {customer}"
        );
    }
    assert_eq!(
        ["a", "b", "c", "d", "e", "x"].map(|c| held.get(c).copied().unwrap_or(0)),
        [1, 1, 0, 1, 2, 0]
    );
    let s = app.store.summary(&club).await.unwrap().unwrap();
    let r = rebuilt.resource.unwrap();
    assert_eq!((s.reserved, s.version), (r.reserved, r.version));
    assert_eq!(s.reserved, 5);

    // A cancel in a later batch sees the reservations the batch wrote.
    let fourth = batch(&[cancel("c5", "club", "r3"), cancel("c6", "club", "r4")]);
    let outcomes = app.commit(&club, &fourth).await;
    let results: Vec<_> = outcomes
        .iter()
        .map(|o| (o.event().routing_key(), o.event().reason))
        .collect();
    assert_eq!(
        results,
        [
            ("cancel.accepted".to_string(), None),
            (
                "cancel.rejected".to_string(),
                Some(Reason::AlreadyCancelled)
            )
        ]
    );
    assert_eq!(
        app.store.holdings(&club).await.unwrap().get("b").copied(),
        Some(0)
    );
    app.cleanup().await;
}

/// Every log line about a command carries its ids: the delivery's span has
/// `command_id` and `resource_id` from the start, and `outcome` once it is
/// decided (the worker's JSON log, as it runs in production).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_log_lines_carry_its_ids_and_outcome() {
    use crate::process::WorkerProcess;
    let app = TestApp::new().await;
    let mut worker = WorkerProcess::spawn(&app.settings, &format!("{}-logs", app.prefix()));
    app.send(&define("logs-define", "stage", 5, None)).await;
    app.outcome("logs-define").await;
    let twice = reserve("logs-twice", "stage", "u", 1);
    app.send(&twice).await;
    app.outcomes("logs-twice", 1).await;
    app.send(&twice).await;
    app.outcomes("logs-twice", 2).await;
    assert!(worker.terminate().await.success());
    let log = std::fs::read_to_string(worker.log()).unwrap();
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("duplicate delivery"))
        })
        .unwrap_or_else(|| panic!("no line about the duplicate in:\n{log}"));
    let span = &line["span"];
    assert_eq!(span["name"], "command", "{line}");
    assert_eq!(span["command_id"], "logs-twice", "{line}");
    assert_eq!(span["resource_id"], "stage", "{line}");
    assert_eq!(span["outcome"], "reserve.accepted", "{line}");
    assert_eq!(span["redelivered"], false, "{line}");
    assert!(span["delivery_tag"].is_u64(), "{line}");
    app.cleanup().await;
}
