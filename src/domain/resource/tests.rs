//! Given / when / then tests of the single-command rules.

use super::*;
use crate::domain::testing::{T0, cancel, confirm, define, given, hold, reserve};
use crate::domain::{LimitChange, ResourceId};

#[test]
fn define_creates_a_resource() {
    given(&[])
        .when(define("c-1", 100, Some(4)))
        .then_accepted(100, 1);
}

#[test]
fn define_changes_capacity_and_limit() {
    given(&[define("c-1", 100, Some(4)), reserve("c-2", "u-1", 3)])
        .when(define("c-3", 10, None))
        .then_accepted(7, 3)
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!(
                (r.capacity, r.reserved, r.per_customer_limit),
                (10, 3, None)
            );
        });
}

#[test]
fn define_without_a_limit_keeps_the_current_one() {
    given(&[define("c-1", 100, Some(4))])
        .when(define("c-2", 50, LimitChange::Keep))
        .then_accepted(50, 2)
        .and_event(|e| assert_eq!(e.details.per_customer_limit, Some(4)))
        .and_state(|s| assert_eq!(s.resource.as_ref().unwrap().per_customer_limit, Some(4)));
}

#[test]
fn define_of_a_new_resource_without_a_limit_has_none() {
    given(&[])
        .when(define("c-1", 5, LimitChange::Keep))
        .then_accepted(5, 1)
        .and_state(|s| assert_eq!(s.resource.as_ref().unwrap().per_customer_limit, None));
}

#[test]
fn define_with_a_null_limit_removes_it() {
    given(&[define("c-1", 100, Some(4))])
        .when(define("c-2", 100, LimitChange::Remove))
        .then_accepted(100, 2)
        .and_event(|e| assert_eq!(e.details.per_customer_limit, None));
}

#[test]
fn a_lower_limit_binds_later_reserves_and_takes_nothing_back() {
    given(&[
        define("c-1", 100, Some(4)),
        reserve("c-2", "u-1", 4),
        define("c-3", 100, Some(2)),
    ])
    .when(reserve("c-4", "u-1", 1))
    .then_rejected(Reason::CustomerLimit, 96, 3)
    .and_state(|s| assert_eq!(s.held_by(&cust("u-1")), 4, "nothing taken back"));
    given(&[
        define("c-1", 100, Some(4)),
        reserve("c-2", "u-1", 1),
        define("c-3", 100, Some(2)),
    ])
    .when(reserve("c-4", "u-1", 1))
    .then_accepted(98, 4);
}

#[test]
fn define_below_reserved_is_rejected() {
    given(&[define("c-1", 100, None), reserve("c-2", "u-1", 30)])
        .when(define("c-3", 29, None))
        .then_rejected(Reason::CapacityBelowReserved, 70, 2);
}

#[test]
fn define_down_to_exactly_reserved_is_accepted() {
    given(&[define("c-1", 100, None), reserve("c-2", "u-1", 30)])
        .when(define("c-3", 30, None))
        .then_accepted(0, 3);
}

#[test]
fn reserve_takes_seats() {
    given(&[define("c-1", 10, None)])
        .when(reserve("c-2", "u-1", 4))
        .then_accepted(6, 2)
        .and_state(|s| {
            assert_eq!(s.holdings[&cust("u-1")], 4);
            assert_eq!(s.reservations[&cmd("c-2")].status, Status::Reserved);
        });
}

#[test]
fn reserve_on_unknown_resource_is_rejected() {
    given(&[])
        .when(reserve("c-1", "u-1", 1))
        .then_rejected(Reason::UnknownResource, 0, 0);
}

#[test]
fn reserve_more_than_remaining_is_sold_out_and_all_or_nothing() {
    given(&[define("c-1", 5, None), reserve("c-2", "u-1", 3)])
        .when(reserve("c-3", "u-2", 3))
        .then_rejected(Reason::SoldOut, 2, 2)
        .and_state(|s| assert_eq!(s.resource.as_ref().unwrap().reserved, 3));
}

#[test]
fn reserve_of_exactly_the_remaining_seats_is_accepted() {
    given(&[define("c-1", 5, None), reserve("c-2", "u-1", 3)])
        .when(reserve("c-3", "u-2", 2))
        .then_accepted(0, 3);
}

#[test]
fn reserve_over_the_customer_limit_is_rejected() {
    given(&[define("c-1", 100, Some(4)), reserve("c-2", "u-1", 3)])
        .when(reserve("c-3", "u-1", 2))
        .then_rejected(Reason::CustomerLimit, 97, 2);
}

#[test]
fn reserve_up_to_the_customer_limit_is_accepted() {
    given(&[define("c-1", 100, Some(4)), reserve("c-2", "u-1", 3)])
        .when(reserve("c-3", "u-1", 1))
        .then_accepted(96, 3);
}

#[test]
fn customer_limit_counts_only_that_customer() {
    given(&[define("c-1", 100, Some(2)), reserve("c-2", "u-1", 2)])
        .when(reserve("c-3", "u-2", 2))
        .then_accepted(96, 3);
}

#[test]
fn huge_quantity_does_not_overflow_the_limit_check() {
    given(&[define("c-1", u32::MAX, Some(4)), reserve("c-2", "u-1", 4)])
        .when(reserve("c-3", "u-1", u32::MAX - 4))
        .then_rejected(Reason::CustomerLimit, u32::MAX - 4, 2);
}

#[test]
fn sold_out_comes_before_customer_limit() {
    given(&[define("c-1", 100, Some(4)), reserve("c-2", "u-1", 4)])
        .when(reserve("c-3", "u-1", 97))
        .then_rejected(Reason::SoldOut, 96, 2);
}

#[test]
fn cancel_releases_seats_for_a_later_reserve() {
    given(&[
        define("c-1", 2, Some(2)),
        reserve("c-2", "u-1", 2),
        cancel("c-3", "c-2"),
    ])
    .when(reserve("c-4", "u-1", 2))
    .then_accepted(0, 4);
}

#[test]
fn cancel_reports_the_released_reservation() {
    given(&[define("c-1", 10, None), reserve("c-2", "u-1", 3)])
        .when(cancel("c-3", "c-2"))
        .then_accepted(10, 3)
        .and_event(|e| {
            assert_eq!(e.details.customer_id, Some(cust("u-1")));
            assert_eq!(e.details.quantity, Some(3));
        })
        .and_state(|s| assert_eq!(s.holdings[&cust("u-1")], 0));
}

#[test]
fn cancel_of_unknown_reservation_is_rejected() {
    given(&[define("c-1", 10, None)])
        .when(cancel("c-2", "nope"))
        .then_rejected(Reason::UnknownReservation, 10, 1);
}

#[test]
fn cancel_of_a_rejected_reserve_is_unknown_reservation() {
    given(&[define("c-1", 1, None), reserve("c-2", "u-1", 2)])
        .when(cancel("c-3", "c-2"))
        .then_rejected(Reason::UnknownReservation, 1, 1);
}

#[test]
fn cancel_twice_is_already_cancelled() {
    given(&[
        define("c-1", 10, None),
        reserve("c-2", "u-1", 3),
        cancel("c-3", "c-2"),
    ])
    .when(cancel("c-4", "c-2"))
    .then_rejected(Reason::AlreadyCancelled, 10, 3);
}

#[test]
fn cancel_on_unknown_resource_is_rejected() {
    given(&[])
        .when(cancel("c-1", "c-0"))
        .then_rejected(Reason::UnknownResource, 0, 0);
}

#[test]
fn invalid_command_is_rejected_and_changes_nothing() {
    let invalid = Command {
        command_id: cmd("c-2"),
        resource_id: ResourceId::try_from("r").unwrap(),
        action: Action::Invalid {
            kind: CommandKind::Reserve,
            detail: "quantity must be an integer >= 1".into(),
        },
    };
    given(&[define("c-1", 10, None)])
        .when(invalid)
        .then_rejected(Reason::Invalid, 10, 1)
        .and_event(|e| assert_eq!(e.command, CommandKind::Reserve));
}

#[test]
fn idempotency_conflict_reports_current_state() {
    let state = given(&[define("c-1", 10, None)]).state();
    let event = idempotency_conflict(&state, &define("c-1", 20, None));
    assert_eq!(
        event.verdict,
        Verdict::Rejected {
            reason: Reason::IdempotencyConflict,
            detail: "command_id was already used with a different body".into()
        }
    );
    assert_eq!((event.remaining, event.version), (10, 1));
    assert_eq!(event.command, CommandKind::Define);
}

#[test]
fn event_serialises_to_the_contract_fields() {
    let event = given(&[define("c-1", 10, Some(4))])
        .when(reserve("c-2", "u-7", 2))
        .event();
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "command_id": "c-2", "command": "reserve", "outcome": "accepted",
            "resource_id": "r", "customer_id": "u-7", "quantity": 2,
            "remaining": 8, "version": 2
        })
    );
    let back: Event = serde_json::from_value(json).unwrap();
    assert_eq!(back, event);
}

#[test]
fn rejection_serialises_reason_and_detail() {
    let event = given(&[]).when(reserve("c-2", "u-7", 2)).event();
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["outcome"], "rejected");
    assert_eq!(json["reason"], "unknown_resource");
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("not been defined")
    );
}

// Holds (contract v2).

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

fn cust(s: &str) -> CustomerId {
    CustomerId::try_from(s).unwrap()
}

fn cmd(s: &str) -> CommandId {
    CommandId::try_from(s).unwrap()
}
