//! Replicas racing on one hot resource, and on many at once.

use crate::helpers::*;
use futures_util::StreamExt;
use reservation_worker::domain::{Reason, Verdict};
use reservation_worker::message::CommandBody;
use std::collections::HashMap;

async fn send_all(app: &TestApp, bodies: &[CommandBody]) {
    futures_util::stream::iter(bodies)
        .for_each_concurrent(64, |b| app.send(b))
        .await;
}

fn count_reasons(app: &TestApp, resource: &str) -> (usize, HashMap<Reason, usize>) {
    let mut accepted = 0;
    let mut rejected = HashMap::new();
    for e in app
        .events()
        .into_iter()
        .filter(|e| e.event.resource_id.as_str() == resource)
    {
        match e.event.verdict {
            Verdict::Accepted => accepted += 1,
            Verdict::Rejected { reason, .. } => *rejected.entry(reason).or_default() += 1,
        }
    }
    (accepted, rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_never_oversell_a_hot_resource() {
    let mut app = TestApp::new().await;
    app.send(&define("d", "hot", 100, None)).await;
    for _ in 0..4 {
        app.start_worker();
    }
    app.outcome("d").await;
    let bodies: Vec<_> = (0..1000)
        .map(|i| reserve(&format!("r{i}"), "hot", &format!("u{i}"), 1))
        .collect();
    send_all(&app, &bodies).await;
    app.wait_for_events(1001).await;

    let (accepted, rejected) = count_reasons(&app, "hot");
    assert_eq!(accepted, 100 + 1, "100 reserves and the define");
    assert_eq!(rejected.get(&Reason::SoldOut), Some(&900));
    assert_eq!(rejected.len(), 1, "only sold_out: {rejected:?}");
    for b in &bodies {
        assert_eq!(
            app.events_for(b.command_id().as_str()).len(),
            1,
            "one outcome for {}",
            b.command_id()
        );
    }
    let s = app.store.summary(&rid("hot")).await.unwrap().unwrap();
    assert_eq!((s.reserved, s.remaining, s.version), (100, 0, 101));
    let history = app.store.history(&rid("hot")).await.unwrap();
    let accepted_reserves = history
        .iter()
        .filter(|e| e.event.is_accepted() && e.event.details.quantity.is_some())
        .count();
    assert_eq!(accepted_reserves, 100);
    assert_eq!(history.len(), 1001);
    app.cleanup().await;
}

/// Each replica decides the waiting commands of many resources in one
/// transaction; four replicas' groups overlap on every resource, so their
/// WATCHes race on all of them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_deciding_many_resources_together_never_oversell_any() {
    let mut app = TestApp::new().await;
    let resources: Vec<String> = (0..20).map(|i| format!("hall{i}")).collect();
    let defines: Vec<_> = resources
        .iter()
        .map(|r| define(&format!("d-{r}"), r, 10, None))
        .collect();
    send_all(&app, &defines).await;
    for _ in 0..4 {
        app.start_worker();
    }
    app.wait_for_events(defines.len()).await;
    // 30 reserves per resource, interleaved so every group spans many.
    let bodies: Vec<_> = (0..600)
        .map(|i| {
            let r = &resources[i % resources.len()];
            reserve(&format!("r{i}"), r, &format!("u{i}"), 1)
        })
        .collect();
    send_all(&app, &bodies).await;
    app.wait_for_events(defines.len() + bodies.len()).await;

    for r in &resources {
        let (accepted, rejected) = count_reasons(&app, r);
        assert_eq!(accepted, 10 + 1, "{r}: 10 reserves and the define");
        assert_eq!(rejected.get(&Reason::SoldOut), Some(&20), "{r}");
        let s = app.store.summary(&rid(r)).await.unwrap().unwrap();
        assert_eq!((s.reserved, s.remaining, s.version), (10, 0, 11), "{r}");
    }
    for b in &bodies {
        let id = b.command_id();
        assert_eq!(app.events_for(id.as_str()).len(), 1, "one outcome for {id}");
    }
    app.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_per_customer_limit_holds_under_the_same_race() {
    let mut app = TestApp::new().await;
    app.send(&define("d", "limited", 1000, Some(3))).await;
    for _ in 0..4 {
        app.start_worker();
    }
    app.outcome("d").await;
    // 50 customers each try 10 single seats.
    let bodies: Vec<_> = (0..500)
        .map(|i| reserve(&format!("r{i}"), "limited", &format!("u{}", i % 50), 1))
        .collect();
    send_all(&app, &bodies).await;
    app.wait_for_events(501).await;

    let (accepted, rejected) = count_reasons(&app, "limited");
    assert_eq!(accepted, 150 + 1);
    assert_eq!(rejected.get(&Reason::CustomerLimit), Some(&350));
    let holdings = app.store.holdings(&rid("limited")).await.unwrap();
    assert_eq!(holdings.len(), 50);
    assert!(holdings.values().all(|&h| h == 3), "{holdings:?}");
    let s = app.store.summary(&rid("limited")).await.unwrap().unwrap();
    assert_eq!(s.reserved, 150);
    app.cleanup().await;
}

/// Two transactions decide the same command at once, and it is refused,
/// which changes no state: only one of them commits, so the command keeps
/// one record and gets one event. A transaction watches its resource's
/// state, not every command's record; a commit writes the state back even
/// unchanged, so the slower one sees the faster. An undefined resource has
/// no state to write back: there the records are watched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_decided_twice_at_once_commits_once() {
    use reservation_worker::admin::{Commit, Transaction};
    use reservation_worker::domain;
    use reservation_worker::message::{OutgoingEvent, decode};
    let app = TestApp::new().await;
    let hall = rid("hall");
    let submit = |b: CommandBody| decode(&b.to_json()).unwrap();
    app.commit(&hall, &[submit(define("d", "hall", 1, None))])
        .await;
    app.commit(&hall, &[submit(reserve("r1", "hall", "u", 1))])
        .await;
    for (resource, reason) in [
        ("hall", Reason::SoldOut),
        ("ghost", Reason::UnknownResource),
    ] {
        let r = rid(resource);
        let batch = vec![submit(reserve("late", resource, "v", 1))];
        let reads = domain::reads(&batch);
        let mut first = app.store.begin(&r).await.unwrap();
        let mut second = app.store.begin(&r).await.unwrap();
        let decide = async |tx: &mut Transaction<'_>| {
            let snapshot = tx.load_all(&[(&r, &reads)]).await.unwrap().remove(0);
            let now = domain::at(snapshot.now);
            domain::decide_batch(snapshot, &batch, |e| {
                OutgoingEvent::new(e, uuid::Uuid::new_v4(), now)
            })
        };
        let (a, b) = (decide(&mut first).await, decide(&mut second).await);
        for d in [&a, &b] {
            assert_eq!(d.outcomes[0].event().reason, Some(reason), "{resource}");
        }
        let committed = second.commit_all(&[(&r, &b.changes)]).await.unwrap();
        assert_eq!(committed, Commit::Committed, "{resource}");
        let raced = first.commit_all(&[(&r, &a.changes)]).await.unwrap();
        assert_eq!(raced, Commit::Conflict, "{resource}: decided twice");
    }
    app.cleanup().await;
}
