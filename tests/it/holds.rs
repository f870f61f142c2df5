//! Holds (contract v2): taken, confirmed, cancelled, and run out on time
//! with no other traffic, by Redis's clock, once, through crashes.

use crate::helpers::*;
use crate::ledger::{self, Ledger, Seen};
use crate::plan::{self, HoldSecs, RushOptions};
use crate::process::WorkerProcess;
use futures_util::StreamExt;
use reservation_worker::domain::{CommandKind, Reason};
use reservation_worker::message::EventEnvelope;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The contract's bound on an expiry's lateness.
const EXPIRY_BOUND: time::Duration = time::Duration::seconds(2);

fn reason(e: &EventEnvelope) -> Option<Reason> {
    e.event.verdict.reason()
}

/// Checks an expiry against its hold: the contract's fields, recorded at
/// or after `expires_at` and within the bound.
fn assert_expiry_of(expiry: &EventEnvelope, hold: &EventEnvelope) {
    let e = &expiry.event;
    assert_eq!(e.command, CommandKind::Expire);
    assert!(e.is_accepted());
    assert_eq!(
        e.command_id.as_str(),
        format!("expire:{}", hold.event.command_id)
    );
    assert_eq!(e.details.hold_id.as_ref(), Some(&hold.event.command_id));
    assert_eq!(e.details.customer_id, hold.event.details.customer_id);
    assert_eq!(e.details.quantity, hold.event.details.quantity);
    assert!(e.held.is_some(), "expire events carry held");
    let expires_at = hold.event.details.expires_at.expect("a hold's expires_at");
    assert_eq!(e.details.expires_at, Some(expires_at));
    assert!(
        expiry.occurred_at >= expires_at,
        "recorded at {} before the hold ran out at {expires_at}",
        expiry.occurred_at
    );
    assert!(
        expiry.occurred_at - expires_at < EXPIRY_BOUND,
        "recorded at {}, more than 2 s after {expires_at}",
        expiry.occurred_at
    );
}

#[tokio::test]
async fn a_hold_runs_out_with_no_other_traffic_and_its_seats_are_sold_again() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d", "gig", 3, None)).await;
    app.outcome("d").await;

    app.send(&hold("h1", "gig", "alice", 3, 1)).await;
    let held = app.outcome("h1").await;
    assert!(held.event.is_accepted());
    assert_eq!((held.event.remaining, held.event.held), (0, Some(3)));
    let expires_at = held.event.details.expires_at.unwrap();
    assert_eq!(expires_at - held.occurred_at, time::Duration::seconds(1));
    let s = app.store.summary(&rid("gig")).await.unwrap().unwrap();
    assert_eq!(
        (s.reserved, s.held, s.remaining),
        (0, 3, 0),
        "inspect shows it"
    );

    // Nothing else is sent: the sweep alone releases it.
    let expiry = app.outcome("expire:h1").await;
    let lag =
        app.store.time().await.unwrap() as i128 - expires_at.unix_timestamp_nanos() / 1_000_000;
    eprintln!("expire.accepted seen {lag} ms after expires_at (Redis clock)");
    assert_expiry_of(&expiry, &held);
    assert_eq!((expiry.event.remaining, expiry.event.held), (3, Some(0)));
    assert_eq!(expiry.event.version, held.event.version + 1);

    app.send(&confirm("k1", "gig", "h1")).await;
    assert_eq!(reason(&app.outcome("k1").await), Some(Reason::HoldExpired));
    app.send(&cancel("c1", "gig", "h1")).await;
    assert_eq!(reason(&app.outcome("c1").await), Some(Reason::HoldExpired));
    app.send(&reserve("r1", "gig", "bob", 3)).await;
    let bought = app.outcome("r1").await;
    assert!(bought.event.is_accepted(), "{bought:?}");

    // Exactly one expiry, and the index is empty once it is published.
    eventually("the due-time index emptied", || async {
        (app.store.due_index_len().await.unwrap() == 0).then_some(())
    })
    .await;
    let expiries = app.events_for("expire:h1");
    assert!(expiries.iter().all(|e| e.event_id == expiry.event_id));
    let history = app.store.history(&rid("gig")).await.unwrap();
    let expired_in_history = history
        .iter()
        .filter(|e| e.event.command == CommandKind::Expire)
        .count();
    assert_eq!(expired_in_history, 1, "recorded once");
    let folded = ledger::fold(&history).unwrap().resource.unwrap();
    let s = app.store.summary(&rid("gig")).await.unwrap().unwrap();
    assert_eq!(
        (folded.reserved, folded.held, folded.version),
        (s.reserved, s.held, s.version)
    );
    assert_eq!((s.reserved, s.held), (3, 0));
    app.stop_workers().await;
    app.cleanup().await;
}

#[tokio::test]
async fn holds_are_confirmed_and_cancelled_as_the_contract_says() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d", "club", 10, Some(4))).await;
    app.outcome("d").await;

    let steps: [(_, Option<Reason>); 10] = [
        (hold("h1", "club", "ann", 2, 600), None),
        (hold("h2", "club", "ann", 2, 600), None),
        // Held seats count against the limit: no hoarding by holding again.
        (
            hold("h3", "club", "ann", 1, 600),
            Some(Reason::CustomerLimit),
        ),
        (confirm("k1", "club", "h1"), None),
        (confirm("k2", "club", "h1"), Some(Reason::AlreadyConfirmed)),
        (cancel("c1", "club", "h2"), None),
        (confirm("k3", "club", "h2"), Some(Reason::AlreadyCancelled)),
        (confirm("k4", "club", "nope"), Some(Reason::UnknownHold)),
        (reserve("r1", "club", "bob", 1), None),
        (confirm("k5", "club", "r1"), Some(Reason::UnknownHold)),
    ];
    for (body, expected) in &steps {
        app.send(body).await;
        let e = app.outcome(body.command_id().as_str()).await;
        assert_eq!(reason(&e), *expected, "{}: {e:?}", body.command_id());
    }
    let s = app.store.summary(&rid("club")).await.unwrap().unwrap();
    assert_eq!((s.reserved, s.held, s.remaining), (3, 0, 7));

    // A confirmed hold can be cancelled: the seats come back for good.
    app.send(&cancel("c2", "club", "h1")).await;
    assert!(app.outcome("c2").await.event.is_accepted());
    let s = app.store.summary(&rid("club")).await.unwrap().unwrap();
    assert_eq!((s.reserved, s.held, s.remaining), (1, 0, 9));

    // A confirm or cancel changed nothing when redelivered.
    app.send(&confirm("k1", "club", "h1")).await;
    let again = app.outcomes("k1", 2).await;
    assert_eq!(again[0].1, again[1].1, "the same event, byte for byte");
    let history = app.store.history(&rid("club")).await.unwrap();
    let folded = ledger::fold(&history).unwrap().resource.unwrap();
    assert_eq!((folded.reserved, folded.held), (1, 0));
    app.stop_workers().await;
    app.cleanup().await;
}

/// A worker that recorded an expiry and died before publishing it (here:
/// the expiry is recorded by hand, as the sweep's first step does, and
/// never published) leaves the hold in the due-time index: the next
/// worker's sweep publishes the recorded event.
#[tokio::test]
async fn an_expiry_recorded_by_a_worker_that_died_is_still_published() {
    let mut app = TestApp::new().await;
    app.start_worker();
    app.send(&define("d", "hall", 5, None)).await;
    app.outcome("d").await;
    app.stop_workers().await;

    // Decided by hand, so no sweep runs until a worker starts again.
    let body = hold("h1", "hall", "ann", 2, 1);
    let submission = reservation_worker::message::decode(&body.to_json()).unwrap();
    let outcomes = app.commit(&rid("hall"), &[submission]).await;
    let taken: EventEnvelope = serde_json::from_slice(&outcomes[0].event().body).unwrap();
    assert!(taken.event.is_accepted());
    let expires_at = taken.event.details.expires_at.unwrap();
    let expires_ms = (expires_at.unix_timestamp_nanos() / 1_000_000) as u64;
    eventually("the hold to run out by Redis's clock", || async {
        (app.store.time().await.unwrap() >= expires_ms).then_some(())
    })
    .await;
    let recorded = app.commit(&rid("hall"), &[]).await;
    assert!(recorded.is_empty(), "an empty batch has no outcomes");
    let s = app.store.summary(&rid("hall")).await.unwrap().unwrap();
    assert_eq!((s.held, s.version), (0, 3), "the expiry is recorded");
    assert_eq!(app.event_count(), 1, "but not published");

    app.start_worker();
    let expiry = app.outcome("expire:h1").await;
    assert_eq!(expiry.event.version, 3, "the recorded event, not a new one");
    let history = app.store.history(&rid("hall")).await.unwrap();
    assert_eq!(
        history.last().unwrap().event_id,
        expiry.event_id,
        "byte for byte the event in the history"
    );
    eventually("the due-time index emptied", || async {
        (app.store.due_index_len().await.unwrap() == 0).then_some(())
    })
    .await;
    app.stop_workers().await;
    app.cleanup().await;
}

/// Two replicas whose clocks are 90 s ahead and 90 s behind: every time
/// in the events is Redis's, and each hold runs out once, on time.
#[tokio::test]
async fn replicas_with_clocks_off_decide_and_expire_by_redis_time() {
    let app = TestApp::new().await;
    let ahead =
        WorkerProcess::spawn_with_clock(&app.settings, &worker_name(&app, "ahead"), Some("+90s"));
    app.send(&define("d", "show", 100, None)).await;
    app.outcome("d").await;

    // Decided by the replica whose clock is ahead: a hold taken by its
    // clock would run out 90 s early.
    let before = app.store.time().await.unwrap();
    let holds: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
    for (i, id) in holds.iter().enumerate() {
        app.send(&hold(id, "show", &format!("u{i}"), 1, 2)).await;
    }
    let mut taken = HashMap::new();
    for id in &holds {
        taken.insert(id.clone(), app.outcome(id).await);
    }
    let after = app.store.time().await.unwrap();
    for e in taken.values() {
        let at = (e.occurred_at.unix_timestamp_nanos() / 1_000_000) as u64;
        assert!(
            (before / 1000 * 1000..=after).contains(&at),
            "{} decided at {} by a replica's clock, not Redis's ({before}..{after})",
            e.event.command_id,
            e.occurred_at
        );
        assert_eq!(
            e.event.details.expires_at.unwrap() - e.occurred_at,
            time::Duration::seconds(2)
        );
    }

    // Now one behind as well: both sweep, and each hold runs out once.
    let behind =
        WorkerProcess::spawn_with_clock(&app.settings, &worker_name(&app, "behind"), Some("-90s"));
    for id in &holds {
        let expiry = app.outcome(&format!("expire:{id}")).await;
        assert_expiry_of(&expiry, &taken[id]);
    }
    eventually("the due-time index emptied", || async {
        (app.store.due_index_len().await.unwrap() == 0).then_some(())
    })
    .await;
    let mut ledger = Ledger::default();
    for (e, _) in app.received() {
        ledger.record(&e);
    }
    assert_eq!(ledger.problems(), Vec::<String>::new());
    assert_eq!(ledger.hold_ends(), (10, 0, 0, 10));
    let s = app.store.summary(&rid("show")).await.unwrap().unwrap();
    assert_eq!((s.held, s.remaining, s.version), (0, 100, 21));
    for mut w in [ahead, behind] {
        w.assert_running();
        assert!(w.terminate().await.success());
    }
    app.cleanup().await;
}

fn worker_name(app: &TestApp, role: &str) -> String {
    format!("{}-{role}", app.prefix())
}

/// Worker `i`'s name in its `generation`-th life.
fn replica(app: &TestApp, i: usize, generation: usize) -> String {
    format!("{}-w{i}-{generation}", app.prefix())
}

/// The acceptance rush: 10,000 holds of 2 to 5 s on 1,000 seats from 4
/// worker processes, 70 % confirmed, one worker SIGKILLed (and started
/// again) every second until every hold has ended.
#[tokio::test]
async fn a_checkout_rush_with_workers_killed_every_second_ends_every_hold_once() {
    let app = TestApp::new().await;
    let o = RushOptions {
        resource: Some("rush".into()),
        commands: 10_000,
        capacity: 1_000,
        limit: 4,
        customers: 4_000,
        max_quantity: 2,
        duplicates: 0.05,
        seed: 7,
        timeout_secs: 0,
        in_flight: 256,
        holds: true,
        confirm_ratio: 0.7,
        hold_secs: HoldSecs { min: 2, max: 5 },
        report: None,
    };
    let resource = rid("rush");
    let mut workers: Vec<WorkerProcess> = (0..4)
        .map(|i| WorkerProcess::spawn(&app.settings, &replica(&app, i, 0)))
        .collect();
    app.send(&define("d", "rush", o.capacity, Some(o.limit)))
        .await;
    app.outcome("d").await;

    let traffic = plan::generate(&resource, &o);
    let (ledger, kills) = rush_until_every_hold_ended(&app, &o, &traffic, &mut workers).await;
    let (held, confirmed, cancelled, expired) = ledger.hold_ends();
    eprintln!(
        "{held} holds accepted: {confirmed} confirmed, {expired} expired; {kills} workers killed"
    );
    assert_eq!(ledger.problems(), Vec::<String>::new());
    assert_eq!(confirmed + cancelled + expired, held, "each ended once");
    assert!(kills >= 3, "workers died during the rush ({kills})");
    assert!(expired > 0 && confirmed > 0);

    eventually("the due-time index emptied", || async {
        (app.store.due_index_len().await.unwrap() == 0).then_some(())
    })
    .await;

    // The seats that came back are for sale, and only they.
    let back = app
        .store
        .summary(&resource)
        .await
        .unwrap()
        .unwrap()
        .remaining;
    let late = plan::late_buyers(&resource, back as usize + 5);
    for b in &late {
        app.send(b).await;
    }
    let mut ledger = ledger;
    for b in &late {
        ledger.record(&app.outcome(b.command_id().as_str()).await);
    }
    let sold_again = late
        .iter()
        .filter(|b| ledger.was_accepted(b.command_id()) == Some(true))
        .count();
    assert_eq!(
        sold_again, back as usize,
        "every seat that came back, sold once"
    );

    let history = app.store.history(&resource).await.unwrap();
    let folded = ledger::fold(&history).expect("never oversold");
    let r = folded.resource.unwrap();
    let s = app.store.summary(&resource).await.unwrap().unwrap();
    assert_eq!(
        (r.reserved, r.held, r.version),
        (s.reserved, s.held, s.version),
        "the state is the folded history"
    );
    assert_eq!((s.held, s.reserved), (0, o.capacity), "sold out, none held");
    for e in app.events() {
        if let Some(held) = e.event.held {
            assert!(
                held + e.event.remaining <= o.capacity,
                "figures over capacity: {e:?}"
            );
        }
    }
    for w in &mut workers {
        w.assert_running();
        assert!(w.terminate().await.success());
    }
    app.cleanup().await;
}

/// Publishes `traffic`, confirms the holds whose customers pay, and kills
/// one worker every second (starting it again at once), until every hold
/// has an outcome and has ended.
async fn rush_until_every_hold_ended(
    app: &TestApp,
    o: &RushOptions,
    traffic: &[reservation_worker::message::CommandBody],
    workers: &mut [WorkerProcess],
) -> (Ledger, usize) {
    let resource = rid("rush");
    let hold_ids: HashSet<_> = traffic.iter().map(|b| b.command_id().clone()).collect();
    let producer = &app.producer;
    let sending = futures_util::stream::iter(traffic)
        .map(|b| async move { producer.send(b).await.expect("publish confirmed") })
        .buffer_unordered(o.in_flight)
        .collect::<Vec<()>>();

    let mut ledger = Ledger::default();
    let mut confirms = HashSet::new();
    let mut seen = 1; // the define's event
    let mut kills = 0;
    let mut last_kill = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    let mut sending = std::pin::pin!(sending);
    let mut sent = false;
    loop {
        if !sent {
            // Publish for a while between looks at the events.
            sent = tokio::time::timeout(Duration::from_millis(50), &mut sending)
                .await
                .is_ok();
        } else {
            // Poll the events again shortly (the loop has a deadline).
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fresh = app.received_since(seen);
        seen += fresh.len();
        for (e, _) in fresh {
            if let Seen::NewHold(h) = ledger.record(&e)
                && plan::pays(&h, o)
            {
                let body = plan::confirm(&resource, &h);
                confirms.insert(body.command_id().clone());
                app.send(&body).await;
            }
        }
        let done = sent
            && hold_ids.iter().all(|h| ledger.answered(h))
            && confirms.iter().all(|c| ledger.answered(c))
            && ledger.open_holds() == 0;
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rush did not end: {} of {} holds answered, {} holds open, {kills} kills",
            hold_ids.iter().filter(|h| ledger.answered(h)).count(),
            hold_ids.len(),
            ledger.open_holds()
        );
        if last_kill.elapsed() >= Duration::from_secs(1) {
            let i = kills % workers.len();
            workers[i].kill();
            kills += 1;
            workers[i] = WorkerProcess::spawn(&app.settings, &replica(app, i, kills));
            last_kill = tokio::time::Instant::now();
        }
    }
    (ledger, kills)
}
