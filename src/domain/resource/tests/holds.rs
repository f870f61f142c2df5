//! Given / when / then tests of holds (contract v2): taken, confirmed,
//! cancelled, and run out at exactly `expires_at`.

use super::super::*;
use super::{cmd, cust};
use crate::domain::ResourceId;
use crate::domain::testing::{T0, cancel, confirm, define, given, hold, reserve};

/// A minute, in ms.
const MINUTE: Millis = 60_000;

#[test]
fn hold_takes_seats_until_it_runs_out() {
    given(&[define("c-1", 10, None)])
        .when(hold("h-1", "u-1", 3, 60))
        .then_accepted(7, 2)
        .and_event(|e| {
            assert_eq!(e.held, Some(3));
            assert_eq!(e.details.expires_at, Some(at(T0 + MINUTE)));
        })
        .and_state(|s| {
            let h = &s.reservations[&cmd("h-1")];
            assert_eq!((h.status, h.expires_at), (Status::Held, Some(T0 + MINUTE)));
            assert_eq!(s.held_by(&cust("u-1")), 3);
        });
}

#[test]
fn held_seats_are_not_for_sale() {
    given(&[define("c-1", 5, None), hold("h-1", "u-1", 3, 60)])
        .when(reserve("c-2", "u-2", 3))
        .then_rejected(Reason::SoldOut, 2, 2)
        .and_event(|e| assert_eq!(e.held, Some(3)));
}

#[test]
fn held_seats_count_against_the_customer_limit() {
    given(&[define("c-1", 100, Some(4)), hold("h-1", "u-1", 3, 60)])
        .when(reserve("c-2", "u-1", 2))
        .then_rejected(Reason::CustomerLimit, 97, 2);
}

#[test]
fn repeated_holds_cannot_hoard_past_the_limit() {
    given(&[
        define("c-1", 100, Some(4)),
        hold("h-1", "u-1", 2, 60),
        hold("h-2", "u-1", 2, 60),
    ])
    .when(hold("h-3", "u-1", 1, 60))
    .then_rejected(Reason::CustomerLimit, 96, 3);
}

#[test]
fn hold_on_an_unknown_resource_is_rejected() {
    given(&[])
        .when(hold("h-1", "u-1", 1, 60))
        .then_rejected(Reason::UnknownResource, 0, 0);
}

#[test]
fn hold_more_than_remaining_is_sold_out_before_the_limit() {
    given(&[define("c-1", 3, Some(1))])
        .when(hold("h-1", "u-1", 4, 60))
        .then_rejected(Reason::SoldOut, 3, 1);
}

#[test]
fn confirm_makes_a_hold_a_reservation_for_good() {
    given(&[define("c-1", 10, None), hold("h-1", "u-1", 3, 60)])
        .when(confirm("k-1", "h-1"))
        .then_accepted(7, 3)
        .and_event(|e| {
            assert_eq!(e.held, Some(0));
            assert_eq!(e.details.hold_id, Some(cmd("h-1")));
            assert_eq!(e.details.customer_id, Some(cust("u-1")));
            assert_eq!(e.details.quantity, Some(3));
            assert_eq!(e.details.expires_at, Some(at(T0 + MINUTE)));
        })
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.reserved, r.held), (3, 0));
            assert_eq!(s.reservations[&cmd("h-1")].status, Status::Confirmed);
            assert_eq!(s.held_by(&cust("u-1")), 3, "still the customer's");
        });
}

#[test]
fn a_confirmed_hold_never_runs_out() {
    given(&[
        define("c-1", 3, None),
        hold("h-1", "u-1", 3, 60),
        confirm("k-1", "h-1"),
    ])
    .after_ms(10 * MINUTE)
    .when(reserve("c-2", "u-2", 1))
    .then_expired(&[])
    .then_rejected(Reason::SoldOut, 0, 3);
}

#[test]
fn confirm_of_nothing_is_unknown_hold() {
    given(&[define("c-1", 10, None)])
        .when(confirm("k-1", "h-1"))
        .then_rejected(Reason::UnknownHold, 10, 1)
        .and_event(|e| assert_eq!(e.details.hold_id, Some(cmd("h-1"))));
}

#[test]
fn confirm_of_a_plain_reserve_is_unknown_hold() {
    given(&[define("c-1", 10, None), reserve("c-2", "u-1", 1)])
        .when(confirm("k-1", "c-2"))
        .then_rejected(Reason::UnknownHold, 9, 2);
}

#[test]
fn confirm_twice_is_already_confirmed() {
    given(&[
        define("c-1", 10, None),
        hold("h-1", "u-1", 1, 60),
        confirm("k-1", "h-1"),
    ])
    .when(confirm("k-2", "h-1"))
    .then_rejected(Reason::AlreadyConfirmed, 9, 3);
}

#[test]
fn confirm_of_a_cancelled_hold_is_already_cancelled() {
    given(&[
        define("c-1", 10, None),
        hold("h-1", "u-1", 1, 60),
        cancel("c-2", "h-1"),
    ])
    .when(confirm("k-1", "h-1"))
    .then_rejected(Reason::AlreadyCancelled, 10, 3);
}

#[test]
fn confirm_on_an_unknown_resource_is_rejected() {
    given(&[])
        .when(confirm("k-1", "h-1"))
        .then_rejected(Reason::UnknownResource, 0, 0);
}

#[test]
fn confirm_a_moment_before_the_hold_runs_out_is_accepted() {
    given(&[define("c-1", 10, None), hold("h-1", "u-1", 1, 60)])
        .after_ms(MINUTE - 1)
        .when(confirm("k-1", "h-1"))
        .then_expired(&[])
        .then_accepted(9, 3);
}

#[test]
fn confirm_at_or_after_expires_at_is_hold_expired_and_records_the_expiry() {
    given(&[define("c-1", 10, None), hold("h-1", "u-1", 1, 60)])
        .after_ms(MINUTE)
        .when(confirm("k-1", "h-1"))
        .then_expired(&["h-1"])
        .then_rejected(Reason::HoldExpired, 10, 3)
        .and_state(|s| {
            assert_eq!(s.reservations[&cmd("h-1")].status, Status::Expired);
            assert_eq!(s.held_by(&cust("u-1")), 0);
        });
}

#[test]
fn cancel_of_a_live_hold_gives_its_seats_back() {
    given(&[define("c-1", 10, None), hold("h-1", "u-1", 4, 60)])
        .when(cancel("c-2", "h-1"))
        .then_accepted(10, 3)
        .and_event(|e| assert_eq!(e.held, Some(0)))
        .and_state(|s| {
            assert_eq!(s.resource.as_ref().unwrap().held, 0);
            assert_eq!(s.held_by(&cust("u-1")), 0);
            assert_eq!(s.reservations[&cmd("h-1")].status, Status::Cancelled);
        });
}

#[test]
fn cancel_of_a_confirmed_hold_gives_its_seats_back() {
    given(&[
        define("c-1", 10, None),
        hold("h-1", "u-1", 4, 60),
        confirm("k-1", "h-1"),
    ])
    .when(cancel("c-2", "h-1"))
    .then_accepted(10, 4)
    .and_state(|s| {
        let r = s.resource.as_ref().unwrap();
        assert_eq!((r.reserved, r.held), (0, 0));
    });
}

#[test]
fn cancel_of_an_expired_hold_is_hold_expired() {
    given(&[define("c-1", 10, None), hold("h-1", "u-1", 4, 60)])
        .after_ms(2 * MINUTE)
        .when(cancel("c-2", "h-1"))
        .then_expired(&["h-1"])
        .then_rejected(Reason::HoldExpired, 10, 3);
}

#[test]
fn seats_come_back_exactly_when_the_hold_runs_out() {
    let history = [define("c-1", 5, None), hold("h-1", "u-1", 5, 10)];
    given(&history)
        .after_ms(9_999)
        .when(reserve("c-2", "u-2", 5))
        .then_expired(&[])
        .then_rejected(Reason::SoldOut, 0, 2);
    given(&history)
        .after_ms(10_000)
        .when(reserve("c-2", "u-2", 5))
        .then_expired(&["h-1"])
        .then_accepted(0, 4)
        // No live hold before or after it: `held` is left out (it is 0).
        .and_event(|e| assert_eq!(e.held, None));
}

#[test]
fn holds_expire_earliest_first() {
    given(&[
        define("c-1", 10, None),
        hold("h-b", "u-1", 1, 20),
        hold("h-a", "u-2", 1, 30),
        hold("h-c", "u-3", 1, 10),
    ])
    .after_ms(MINUTE)
    .when(reserve("c-2", "u-4", 10))
    .then_expired(&["h-c", "h-b", "h-a"])
    .then_accepted(0, 8);
}

#[test]
fn an_expiry_is_an_accepted_expire_event_about_the_hold() {
    let state = given(&[define("c-1", 10, None), hold("h-1", "u-1", 4, 60)]).state();
    let r = ResourceId::try_from("r").unwrap();
    assert_eq!(
        expire(&state, &r, &cmd("h-1"), T0 + MINUTE - 1),
        None,
        "not due"
    );
    let event = expire(&state, &r, &cmd("h-1"), T0 + MINUTE).unwrap();
    assert_eq!(event.command_id, cmd("expire:h-1"));
    assert_eq!(event.command, CommandKind::Expire);
    assert!(event.is_accepted());
    assert_eq!(event.details.hold_id, Some(cmd("h-1")));
    assert_eq!(event.details.customer_id, Some(cust("u-1")));
    assert_eq!(event.details.quantity, Some(4));
    assert_eq!(event.details.expires_at, Some(at(T0 + MINUTE)));
    assert_eq!(
        (event.remaining, event.held, event.version),
        (10, Some(0), 3)
    );
    let after = apply(state, &event);
    assert_eq!(after.reservations[&cmd("h-1")].status, Status::Expired);
    assert_eq!(
        expire(&after, &r, &cmd("h-1"), T0 + 2 * MINUTE),
        None,
        "a hold expires once"
    );
}

#[test]
fn confirmed_cancelled_and_unknown_holds_never_expire() {
    let r = ResourceId::try_from("r").unwrap();
    let late = T0 + 10 * MINUTE;
    let confirmed = given(&[
        define("c-1", 10, None),
        hold("h-1", "u-1", 1, 60),
        confirm("k-1", "h-1"),
    ])
    .state();
    assert_eq!(expire(&confirmed, &r, &cmd("h-1"), late), None);
    let cancelled = given(&[
        define("c-1", 10, None),
        hold("h-1", "u-1", 1, 60),
        cancel("c-2", "h-1"),
    ])
    .state();
    assert_eq!(expire(&cancelled, &r, &cmd("h-1"), late), None);
    assert_eq!(expire(&cancelled, &r, &cmd("nope"), late), None);
    let reserved = given(&[define("c-1", 10, None), reserve("c-2", "u-1", 1)]).state();
    assert_eq!(expire(&reserved, &r, &cmd("c-2"), late), None);
}

#[test]
fn define_below_reserved_and_held_is_rejected() {
    let history = [
        define("c-1", 10, None),
        reserve("c-2", "u-1", 3),
        hold("h-1", "u-2", 4, 60),
    ];
    given(&history)
        .when(define("c-3", 6, None))
        .then_rejected(Reason::CapacityBelowReserved, 3, 3)
        .and_event(|e| assert!(e.verdict.detail().unwrap().contains("4 held")));
    given(&history)
        .when(define("c-3", 7, None))
        .then_accepted(0, 4);
}

#[test]
fn events_of_a_resource_without_holds_carry_no_held_figure() {
    given(&[define("c-1", 10, None)])
        .when(reserve("c-2", "u-1", 1))
        .then_accepted(9, 2)
        .and_event(|e| assert_eq!(e.held, None));
}

#[test]
fn hold_secs_bound_is_the_contracts() {
    assert_eq!(MAX_HOLD_SECS, 86_400);
}

#[test]
fn the_history_folds_back_to_the_state() {
    let commands = [
        define("c-1", 10, Some(6)),
        hold("h-1", "u-1", 2, 10),
        hold("h-2", "u-2", 3, 20),
        reserve("c-2", "u-1", 1),
        confirm("k-1", "h-1"),
        hold("h-3", "u-1", 2, 5),
        cancel("c-3", "h-2"),
    ];
    // Decide the commands one second apart, then let every hold run out.
    let mut state = State::default();
    let mut events = Vec::new();
    let r = ResourceId::try_from("r").unwrap();
    for (i, c) in commands.iter().enumerate() {
        let now = T0 + 1_000 * i as u64;
        let event = decide(&state, c, now);
        state = apply(state, &event);
        events.push(event);
    }
    for id in state.due(T0 + MINUTE) {
        let event = expire(&state, &r, &id, T0 + MINUTE).unwrap();
        state = apply(state, &event);
        events.push(event);
    }
    let folded = events.iter().fold(State::default(), apply);
    assert_eq!(folded, state);
    let r = state.resource.as_ref().unwrap();
    assert_eq!((r.reserved, r.held, r.version), (3, 0, 8));
    assert_eq!(state.reservations[&cmd("h-3")].status, Status::Expired);
    assert_eq!(state.held_by(&cust("u-1")), 3);
    assert_eq!(state.held_by(&cust("u-2")), 0);
}
