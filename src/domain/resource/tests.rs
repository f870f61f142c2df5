//! Given / when / then tests of the single-command rules.

use super::*;
use crate::domain::testing::{cancel, define, given, reserve};
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

mod budgets;
mod holds;

pub(super) fn cust(s: &str) -> CustomerId {
    CustomerId::try_from(s).unwrap()
}

pub(super) fn cmd(s: &str) -> CommandId {
    CommandId::try_from(s).unwrap()
}
