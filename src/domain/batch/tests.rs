//! Given / when / then tests of deciding a batch.

use super::*;
use crate::domain::event::Reason;
use crate::domain::testing::{T0, cancel, confirm, define, given_paid, hold, reserve};

/// A sealed event for tests: the event and the order it was sealed in.
type Sealed = (u32, Event);

fn submit(command: Command) -> Submission {
    // The hash of a command is its debug form: equal commands, equal
    // hashes.
    let body_hash = format!("{:?}", command.action);
    Submission {
        command,
        body_hash: body_hash.into(),
    }
}

fn batch(commands: impl IntoIterator<Item = Command>) -> Vec<Submission> {
    commands.into_iter().map(submit).collect()
}

/// The resource after `history`, loaded as the store would for `batch`:
/// only the customers and reservations the batch names.
fn snapshot(history: &[Command], batch: &[Submission]) -> Snapshot<Sealed> {
    snapshot_at(history, batch, T0)
}

/// The same, `now` being later than the history: the holds due by then
/// are loaded from the resource's due-time index, as the store does. Takes
/// in the history on a resource with a budget were paid for.
fn snapshot_at(history: &[Command], batch: &[Submission], now: Millis) -> Snapshot<Sealed> {
    let full = given_paid(history).state();
    let due = full
        .due(now)
        .into_iter()
        .map(|id| {
            let r = &full.reservations[&id];
            DueHold {
                customer_id: r.customer_id.clone(),
                quantity: r.quantity,
                expires_at: r.expires_at.unwrap(),
                amount: r.amount,
                budget_id: r.budget_id.clone(),
                id,
            }
        })
        .collect();
    let reads = reads(batch);
    let mut state = State {
        resource: full.resource.clone(),
        ..State::default()
    };
    for c in reads.customers {
        state.holdings.insert(c.clone(), full.held_by(c));
    }
    for r in reads.reservations {
        if let Some(found) = full.reservations.get(r) {
            state.reservations.insert(r.clone(), found.clone());
        }
    }
    Snapshot {
        resource_id: ResourceId::try_from("r").unwrap(),
        state,
        records: HashMap::new(),
        now,
        due,
        funds: HashMap::new(),
    }
}

fn run(snapshot: Snapshot<Sealed>, batch: &[Submission]) -> Decision<Sealed> {
    let mut n = 0;
    decide_batch(snapshot, batch, |event| {
        n += 1;
        (n, event)
    })
}

fn reason(o: &Outcome<Sealed>) -> Option<Reason> {
    o.event().1.verdict.reason()
}

fn id(s: &str) -> CommandId {
    CommandId::try_from(s).unwrap()
}

fn customer(s: &str) -> CustomerId {
    CustomerId::try_from(s).unwrap()
}

#[test]
fn reads_name_every_record_the_reserving_customers_and_the_cancelled_reservations() {
    let b = batch([
        reserve("r1", "a", 1),
        reserve("r2", "a", 1),
        cancel("c1", "r0"),
        reserve("r1", "a", 1),
    ]);
    let r = reads(&b);
    assert_eq!(r.commands, [&id("r1"), &id("r2"), &id("c1"), &id("r1")]);
    assert_eq!(r.customers, [&customer("a")]);
    assert_eq!(r.reservations, [&id("r0")]);
}

#[test]
fn commands_see_the_state_the_earlier_ones_left() {
    let b = batch([reserve("r1", "a", 3), reserve("r2", "b", 3)]);
    let d = run(snapshot(&[define("d", 5, None)], &b), &b);
    assert!(matches!(d.outcomes[0], Outcome::Decided((1, ref e)) if e.is_accepted()));
    assert_eq!(reason(&d.outcomes[1]), Some(Reason::SoldOut));
    let r = d.changes.resource.unwrap();
    assert_eq!((r.reserved, r.version), (3, 2));
    assert_eq!(d.changes.holdings, [(customer("a"), Holding::Set(3))]);
    // The rejection is recorded (and so appended to the history) too,
    // but only the acceptance is kept for good.
    assert_eq!(d.changes.records.len(), 2);
    assert_eq!(
        d.changes.applied,
        [(
            id("r1"),
            Applied {
                version: 2,
                hash: b[0].body_hash.clone()
            }
        )]
    );
}

#[test]
fn the_same_command_twice_in_a_batch_is_decided_once() {
    let b = batch([reserve("r1", "a", 2), reserve("r1", "a", 2)]);
    let d = run(snapshot(&[define("d", 5, None)], &b), &b);
    assert!(matches!(d.outcomes[0], Outcome::Decided(_)));
    assert_eq!(
        d.outcomes[1],
        Outcome::Replayed(d.outcomes[0].event().clone())
    );
    assert_eq!(d.changes.records.len(), 1);
    assert_eq!(d.changes.resource.unwrap().reserved, 2);
}

#[test]
fn a_reserve_and_its_cancel_in_one_batch_write_the_reservation_once_cancelled() {
    let b = batch([reserve("r1", "a", 2), cancel("c1", "r1")]);
    let d = run(snapshot(&[define("d", 5, None)], &b), &b);
    assert!(d.outcomes.iter().all(|o| o.event().1.is_accepted()));
    assert_eq!(d.changes.reservations.len(), 1);
    assert_eq!(d.changes.reservations[0].1.status, Status::Cancelled);
    assert_eq!(d.changes.holdings, [(customer("a"), Holding::Set(0))]);
    let r = d.changes.resource.unwrap();
    assert_eq!((r.reserved, r.version), (0, 3));
}

#[test]
fn a_customer_who_only_cancels_is_decremented_not_overwritten() {
    let history = [
        define("d", 10, None),
        reserve("r1", "a", 2),
        reserve("r2", "a", 3),
    ];
    let b = batch([cancel("c1", "r1"), cancel("c2", "r2")]);
    let d = run(snapshot(&history, &b), &b);
    assert_eq!(d.changes.holdings, [(customer("a"), Holding::Release(5))]);
}

#[test]
fn a_replayed_command_changes_nothing() {
    let b = batch([reserve("r1", "a", 2)]);
    let first = run(snapshot(&[define("d", 5, None)], &b), &b);
    let mut again = snapshot(&[define("d", 5, None)], &b);
    again.records = first.changes.records.iter().cloned().collect();
    let d = run(again, &b);
    assert_eq!(
        d.outcomes,
        [Outcome::Replayed(first.outcomes[0].event().clone())]
    );
    assert!(d.changes.is_empty());
    assert_eq!(d.changes.resource, None);
}

#[test]
fn a_reused_id_is_a_conflict_stored_with_its_record() {
    let first = batch([reserve("r1", "a", 2)]);
    let decided = run(snapshot(&[define("d", 5, None)], &first), &first);
    let b = batch([reserve("r1", "b", 1)]);
    let mut s = snapshot(&[define("d", 5, None), reserve("r1", "a", 2)], &b);
    s.records = decided.changes.records.iter().cloned().collect();
    let d = run(s, &b);
    assert!(matches!(d.outcomes[0], Outcome::Conflict(_)));
    let event = &d.outcomes[0].event().1;
    assert_eq!(reason(&d.outcomes[0]), Some(Reason::IdempotencyConflict));
    assert_eq!(
        (event.remaining, event.version),
        (3, 2),
        "the current state"
    );
    assert_eq!(event.command, CommandKind::Reserve);
    assert!(d.changes.records.is_empty(), "nothing decided");
    assert_eq!(d.changes.resource, None, "nothing changed");
    let (cid, record) = &d.changes.conflicts[0];
    assert_eq!(cid, &id("r1"));
    assert_eq!(record.conflicts[0].event, *d.outcomes[0].event());

    // Its redelivery repeats the stored conflict and writes nothing.
    let mut s = snapshot(&[define("d", 5, None), reserve("r1", "a", 2)], &b);
    s.records = d.changes.conflicts.iter().cloned().collect();
    let again = run(s, &b);
    assert_eq!(
        again.outcomes,
        [Outcome::Conflict(d.outcomes[0].event().clone())]
    );
    assert!(again.changes.is_empty());
}

#[test]
fn a_reused_id_in_the_same_batch_conflicts_with_the_fresh_record() {
    let b = batch([
        reserve("r1", "a", 2),
        reserve("r1", "b", 1),
        reserve("r1", "b", 1),
    ]);
    let d = run(snapshot(&[define("d", 5, None)], &b), &b);
    assert!(matches!(d.outcomes[0], Outcome::Decided(_)));
    assert!(matches!(d.outcomes[1], Outcome::Conflict(_)));
    assert_eq!(
        d.outcomes[2], d.outcomes[1],
        "the same reused body, one outcome"
    );
    assert!(d.changes.conflicts.is_empty());
    let (_, record) = &d.changes.records[0];
    assert_eq!(record.conflicts.len(), 1, "written with the new record");
}

#[test]
fn conflicts_beyond_the_cap_are_answered_but_not_stored() {
    let first = batch([reserve("r1", "a", 1)]);
    let decided = run(snapshot(&[define("d", 5, None)], &first), &first);
    let reused = batch((2..=(MAX_STORED_CONFLICTS as u32 + 2)).map(|q| reserve("r1", "a", q)));
    let mut s = snapshot(&[define("d", 5, None), reserve("r1", "a", 1)], &reused);
    s.records = decided.changes.records.iter().cloned().collect();
    let d = run(s, &reused);
    assert!(d.outcomes.iter().all(|o| matches!(o, Outcome::Conflict(_))));
    assert_eq!(
        d.changes.conflicts[0].1.conflicts.len(),
        MAX_STORED_CONFLICTS
    );
}

#[test]
fn seal_is_called_once_per_new_outcome_in_batch_order() {
    let b = batch([
        define("d", 5, None),
        reserve("r1", "a", 1),
        reserve("r1", "a", 1),
    ]);
    let d = run(snapshot(&[], &b), &b);
    let order: Vec<u32> = d.outcomes.iter().map(|o| o.event().0).collect();
    assert_eq!(order, [1, 2, 2]);
    let recorded: Vec<u32> = d.changes.records.iter().map(|(_, r)| r.event.0).collect();
    assert_eq!(recorded, [1, 2], "history order is decision order");
}

// Holds.

/// Ten seconds, in ms.
const TEN_S: Millis = 10_000;

#[test]
fn a_hold_goes_into_the_due_time_index() {
    let b = batch([hold("h1", "a", 2, 10)]);
    let d = run(snapshot(&[define("d", 5, None)], &b), &b);
    assert_eq!(
        d.changes.holds_added,
        [DueHold {
            id: id("h1"),
            customer_id: customer("a"),
            quantity: 2,
            expires_at: T0 + TEN_S,
            amount: None,
            budget_id: None,
        }]
    );
    assert!(d.changes.holds_removed.is_empty());
    assert!(d.changes.expiries.is_empty());
    let r = d.changes.resource.unwrap();
    assert_eq!((r.reserved, r.held), (0, 2));
}

#[test]
fn a_batch_expires_the_holds_that_are_due_before_its_commands() {
    let history = [define("d", 5, None), hold("h1", "a", 5, 10)];
    let b = batch([reserve("r1", "b", 5)]);
    let d = run(snapshot_at(&history, &b, T0 + TEN_S), &b);
    assert!(d.outcomes[0].event().1.is_accepted(), "the seats came back");
    let [(hold_id, (n, expiry))] = &d.changes.expiries[..] else {
        panic!("one expiry: {:?}", d.changes.expiries)
    };
    assert_eq!((hold_id, *n), (&id("h1"), 1), "sealed first");
    assert_eq!(expiry.command_id, id("expire:h1"));
    assert_eq!(expiry.version, 3);
    assert_eq!(d.outcomes[0].event().1.version, 4);
    assert_eq!(d.changes.holds_removed[0].id, id("h1"));
    assert_eq!(
        d.changes.holdings,
        [
            (customer("a"), Holding::Release(5)),
            (customer("b"), Holding::Set(5))
        ]
    );
    let expired = d.changes.reservations.iter().find(|(i, _)| i == &id("h1"));
    assert_eq!(expired.unwrap().1.status, Status::Expired);
    let r = d.changes.resource.unwrap();
    assert_eq!((r.reserved, r.held, r.version), (5, 0, 4));
}

#[test]
fn an_empty_batch_still_records_the_expiries_that_are_due() {
    let history = [define("d", 5, None), hold("h1", "a", 2, 10)];
    let d = run(snapshot_at(&history, &[], T0 + TEN_S), &[]);
    assert!(d.outcomes.is_empty());
    assert!(!d.changes.is_empty());
    assert_eq!(d.changes.expiries.len(), 1);
    assert!(d.changes.records.is_empty(), "no command, no record");
    assert_eq!(d.changes.resource.unwrap().held, 0);
}

#[test]
fn nothing_due_nothing_written() {
    let history = [define("d", 5, None), hold("h1", "a", 2, 10)];
    let d = run(snapshot_at(&history, &[], T0 + TEN_S - 1), &[]);
    assert!(d.changes.is_empty());
    assert_eq!(d.changes.resource, None);
}

#[test]
fn a_confirm_too_late_finds_the_hold_expired_by_the_same_batch() {
    let history = [define("d", 5, None), hold("h1", "a", 2, 10)];
    let b = batch([confirm("k1", "h1")]);
    let d = run(snapshot_at(&history, &b, T0 + TEN_S), &b);
    assert_eq!(reason(&d.outcomes[0]), Some(Reason::HoldExpired));
    assert_eq!(d.changes.expiries.len(), 1);
    assert_eq!(d.changes.holds_removed.len(), 1, "removed once");
}

#[test]
fn a_confirm_takes_the_hold_out_of_the_index_and_keeps_the_holding() {
    let history = [define("d", 5, None), hold("h1", "a", 2, 10)];
    let b = batch([confirm("k1", "h1")]);
    let d = run(snapshot(&history, &b), &b);
    assert!(d.outcomes[0].event().1.is_accepted());
    assert_eq!(d.changes.holds_removed[0].id, id("h1"));
    assert!(d.changes.holdings.is_empty(), "still the customer's seats");
    assert_eq!(d.changes.reservations[0].1.status, Status::Confirmed);
    let r = d.changes.resource.unwrap();
    assert_eq!((r.reserved, r.held), (2, 0));
}

#[test]
fn a_cancelled_hold_leaves_the_index_and_the_holding() {
    let history = [define("d", 5, None), hold("h1", "a", 2, 10)];
    let b = batch([cancel("c1", "h1")]);
    let d = run(snapshot(&history, &b), &b);
    assert!(d.outcomes[0].event().1.is_accepted());
    assert_eq!(d.changes.holds_removed[0].id, id("h1"));
    assert_eq!(d.changes.holdings, [(customer("a"), Holding::Release(2))]);
}

#[test]
fn a_hold_and_its_confirm_in_one_batch() {
    let b = batch([hold("h1", "a", 2, 10), confirm("k1", "h1")]);
    let d = run(snapshot(&[define("d", 5, None)], &b), &b);
    assert!(d.outcomes.iter().all(|o| o.event().1.is_accepted()));
    assert_eq!(d.changes.holds_added.len(), 1);
    assert_eq!(d.changes.holds_removed.len(), 1);
    assert_eq!(d.changes.reservations.len(), 1);
    assert_eq!(d.changes.reservations[0].1.status, Status::Confirmed);
    assert_eq!(d.changes.holdings, [(customer("a"), Holding::Set(2))]);
}

mod budgets;
