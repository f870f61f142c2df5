//! Given / when / then tests of prices and budgets on a resource
//! (contract v2): what a take costs, what the budget's answer does to it,
//! in the contract's order of reasons, and what cancels and expiries give
//! back.

use super::super::*;
use super::{cmd, cust};
use crate::domain::testing::{
    T0, cancel, confirm, define, define_priced, funds_for, given, given_paid, hold, paid_from,
    reserve,
};
use crate::domain::{
    Answer, Ask, Budget, BudgetChange, BudgetStep, Funds, Ledger, LimitChange, ResourceId, StepKind,
};

/// A minute, in ms.
const MINUTE: Millis = 60_000;

fn bud(s: &str) -> BudgetId {
    BudgetId::try_from(s).unwrap()
}

fn rid() -> ResourceId {
    ResourceId::try_from("r").unwrap()
}

/// Ten seats at 450 a seat, paid from budget `b`.
fn priced() -> Command {
    define_priced("c-1", 10, 450, paid_from("b"))
}

/// The step an outcome on resource `r` does to budget `b`.
fn step_of(customer: &str, take: &str, kind: StepKind) -> Option<BudgetStep> {
    Some(BudgetStep {
        budget_id: bud("b"),
        customer_id: cust(customer),
        resource_id: rid(),
        reservation_id: cmd(take),
        kind,
    })
}

// What a take costs.

#[test]
fn a_take_costs_quantity_times_price_and_is_paid_from_the_budget() {
    let state = given(&[priced()]).state();
    assert_eq!(
        cost(&state, &reserve("c-2", "u-1", 3)),
        Some((bud("b"), 1350))
    );
    assert_eq!(
        cost(&state, &hold("h-1", "u-1", 2, 60)),
        Some((bud("b"), 900))
    );
    for other in [
        define("c-3", 5, None),
        cancel("c-3", "c-2"),
        confirm("c-3", "h-1"),
    ] {
        assert_eq!(cost(&state, &other), None, "{other:?}");
    }
}

#[test]
fn only_a_resource_with_a_budget_has_takes_to_pay_for() {
    let unknown = State::default();
    assert_eq!(cost(&unknown, &reserve("c-1", "u-1", 1)), None);
    let priced_only = given(&[define_priced("c-1", 10, 450, BudgetChange::Keep)]).state();
    assert_eq!(cost(&priced_only, &reserve("c-2", "u-1", 1)), None);
    let free = given(&[define_priced("c-1", 10, None, paid_from("b"))]).state();
    assert_eq!(cost(&free, &reserve("c-2", "u-1", 3)), Some((bud("b"), 0)));
}

#[test]
fn the_largest_cost_does_not_overflow() {
    let state = given(&[define_priced("c-1", u32::MAX, u32::MAX, paid_from("b"))]).state();
    assert_eq!(
        cost(&state, &reserve("c-2", "u-1", u32::MAX)),
        Some((bud("b"), u64::from(u32::MAX) * u64::from(u32::MAX)))
    );
}

// Define: price and budget.

#[test]
fn define_sets_a_price_and_a_budget() {
    given(&[])
        .when(priced())
        .then_accepted(10, 1)
        .and_event(|e| {
            assert_eq!(e.details.price, Some(450));
            assert_eq!(e.details.budget_id, Some(bud("b")));
            assert_eq!(e.budget_step(), None, "a define touches no budget");
        })
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.price, r.budget_id.clone()), (450, Some(bud("b"))));
        });
}

#[test]
fn a_new_resource_without_price_or_budget_is_free_and_unbudgeted() {
    given(&[])
        .when(define("c-1", 10, None))
        .then_accepted(10, 1)
        .and_event(|e| assert_eq!((e.details.price, &e.details.budget_id), (None, &None)))
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.price, &r.budget_id), (0, &None));
        });
}

#[test]
fn define_without_price_or_budget_keeps_them() {
    given(&[priced()])
        .when(define("c-2", 20, LimitChange::Keep))
        .then_accepted(20, 2)
        .and_event(|e| {
            assert_eq!(e.details.price, Some(450));
            assert_eq!(e.details.budget_id, Some(bud("b")));
        })
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.price, r.budget_id.clone()), (450, Some(bud("b"))));
        });
}

#[test]
fn define_changes_the_price_and_moves_to_another_budget() {
    given(&[priced()])
        .when(define_priced("c-2", 10, 500, paid_from("b2")))
        .then_accepted(10, 2)
        .and_event(|e| {
            assert_eq!(e.details.price, Some(500));
            assert_eq!(e.details.budget_id, Some(bud("b2")));
        })
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.price, r.budget_id.clone()), (500, Some(bud("b2"))));
        });
}

#[test]
fn define_with_a_null_budget_detaches_it_and_keeps_the_price() {
    given(&[priced()])
        .when(define_priced("c-2", 10, None, BudgetChange::Detach))
        .then_accepted(10, 2)
        .and_event(|e| assert_eq!((e.details.price, &e.details.budget_id), (Some(450), &None)))
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.price, &r.budget_id), (450, &None));
        });
}

#[test]
fn define_with_price_0_makes_it_free() {
    given(&[priced()])
        .when(define_priced("c-2", 10, 0, BudgetChange::Keep))
        .then_accepted(10, 2)
        .and_event(|e| assert_eq!(e.details.price, None, "0 is not told"))
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.price, r.budget_id.clone()), (0, Some(bud("b"))));
        });
}

#[test]
fn a_rejected_define_changes_neither_price_nor_budget() {
    given_paid(&[priced(), reserve("c-2", "u-1", 5)])
        .when(define_priced("c-3", 4, 1, paid_from("b2")))
        .then_rejected(Reason::CapacityBelowReserved, 5, 2)
        .and_state(|s| {
            let r = s.resource.as_ref().unwrap();
            assert_eq!((r.price, r.budget_id.clone()), (450, Some(bud("b"))));
        });
}

// A take and its budget's answer.

#[test]
fn a_take_paid_for_is_accepted_and_tells_its_cost_and_budget() {
    given(&[priced()])
        .when_paid(reserve("c-2", "u-1", 2), Answer::SetAside)
        .then_accepted(8, 2)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(900));
            assert_eq!(e.details.budget_id, Some(bud("b")));
            assert_eq!(
                e.budget_step(),
                step_of("u-1", "c-2", StepKind::Keep { amount: 900 })
            );
        })
        .and_state(|s| {
            let r = &s.reservations[&cmd("c-2")];
            assert_eq!((r.amount, r.budget_id.clone()), (Some(900), Some(bud("b"))));
            assert_eq!(s.held_by(&cust("u-1")), 2);
        });
}

#[test]
fn a_hold_paid_for_is_accepted_and_records_its_cost() {
    given(&[priced()])
        .when_paid(hold("h-1", "u-1", 3, 60), Answer::SetAside)
        .then_accepted(7, 2)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(1350));
            assert_eq!(e.details.expires_at, Some(at(T0 + MINUTE)));
            assert_eq!(
                e.budget_step(),
                step_of("u-1", "h-1", StepKind::Keep { amount: 1350 })
            );
        })
        .and_state(|s| {
            let h = &s.reservations[&cmd("h-1")];
            assert_eq!(h.status, Status::Held);
            assert_eq!(
                (h.amount, h.budget_id.clone()),
                (Some(1350), Some(bud("b")))
            );
        });
}

#[test]
fn a_take_over_budget_is_rejected_takes_no_seats_and_tells_the_refused_cost() {
    given(&[priced()])
        .when_paid(reserve("c-2", "u-1", 2), Answer::Exceeds)
        .then_rejected(Reason::BudgetExceeded, 10, 1)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(900));
            assert_eq!(e.details.budget_id, Some(bud("b")));
            assert!(e.verdict.detail().unwrap().contains("900"));
            assert_eq!(e.budget_step(), step_of("u-1", "c-2", StepKind::Refund));
        })
        .and_state(|s| assert!(s.reservations.is_empty()));
    given(&[priced()])
        .when_paid(hold("h-1", "u-1", 1, 60), Answer::Exceeds)
        .then_rejected(Reason::BudgetExceeded, 10, 1)
        .and_event(|e| assert_eq!(e.details.amount, Some(450)));
}

#[test]
fn a_take_on_an_undefined_budget_is_unknown_budget() {
    given(&[priced()])
        .when_paid(reserve("c-2", "u-1", 2), Answer::Unknown)
        .then_rejected(Reason::UnknownBudget, 10, 1)
        .and_event(|e| {
            assert_eq!(e.details.amount, None, "nothing was paid or refused");
            assert!(e.verdict.detail().unwrap().contains("budget b"));
            assert_eq!(e.budget_step(), step_of("u-1", "c-2", StepKind::Refund));
        });
    given(&[priced()])
        .when_paid(hold("h-1", "u-1", 2, 60), Answer::Unknown)
        .then_rejected(Reason::UnknownBudget, 10, 1);
}

#[test]
fn a_take_no_budget_answered_for_is_unknown_budget() {
    // Never accepted on money that was not set aside for it.
    given(&[priced()])
        .when(reserve("c-2", "u-1", 1))
        .then_rejected(Reason::UnknownBudget, 10, 1);
}

#[test]
fn funds_for_another_amount_count_as_an_unknown_budget() {
    given(&[priced()])
        .when_funded(reserve("c-2", "u-1", 2), |s, c| {
            funds_for(s, c, Answer::SetAside).map(|f| Funds { amount: 450, ..f })
        })
        .then_rejected(Reason::UnknownBudget, 10, 1)
        .and_event(|e| assert_eq!(e.details.amount, None));
    // Set aside at the old price, decided at the new one.
    let old = given(&[priced()]).state();
    given(&[priced(), define_priced("c-2", 10, 500, BudgetChange::Keep)])
        .when_funded(reserve("c-3", "u-1", 1), |_, c| {
            funds_for(&old, c, Answer::SetAside)
        })
        .then_rejected(Reason::UnknownBudget, 10, 2);
}

#[test]
fn funds_from_another_budget_count_as_an_unknown_budget() {
    given(&[priced()])
        .when_funded(reserve("c-2", "u-1", 2), |s, c| {
            funds_for(s, c, Answer::SetAside).map(|f| Funds {
                budget_id: bud("b2"),
                ..f
            })
        })
        .then_rejected(Reason::UnknownBudget, 10, 1);
}

#[test]
fn a_free_take_on_a_budgeted_resource_still_needs_its_budget() {
    let free = || define_priced("c-1", 10, None, paid_from("b"));
    given(&[free()])
        .when(reserve("c-2", "u-1", 1))
        .then_rejected(Reason::UnknownBudget, 10, 1);
    given(&[free()])
        .when_paid(reserve("c-2", "u-1", 1), Answer::SetAside)
        .then_accepted(9, 2)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(0));
            assert_eq!(
                e.budget_step(),
                step_of("u-1", "c-2", StepKind::Keep { amount: 0 })
            );
        });
}

#[test]
fn a_priced_resource_without_a_budget_tells_the_cost_and_asks_no_one() {
    given(&[define_priced("c-1", 10, 450, BudgetChange::Keep)])
        .when(reserve("c-2", "u-1", 2))
        .then_accepted(8, 2)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(900));
            assert_eq!(e.details.budget_id, None);
            assert_eq!(e.budget_step(), None);
        })
        .and_state(|s| {
            let r = &s.reservations[&cmd("c-2")];
            assert_eq!((r.amount, &r.budget_id), (Some(900), &None));
        });
}

#[test]
fn funds_on_a_resource_without_a_budget_are_ignored() {
    let funds = Funds {
        budget_id: bud("b"),
        amount: 1,
        answer: Answer::Exceeds,
    };
    given(&[define("c-1", 10, None)])
        .when_funded(reserve("c-2", "u-1", 1), |_, _| Some(funds))
        .then_accepted(9, 2)
        .and_event(|e| {
            assert_eq!(
                e.details.amount, None,
                "a free, unbudgeted take costs nothing"
            );
            assert_eq!(e.budget_step(), None);
        });
}

#[test]
fn decide_is_decide_funded_without_an_answer() {
    let state = given(&[priced()]).state();
    for c in [
        reserve("c-2", "u-1", 1),
        hold("h-1", "u-1", 1, 60),
        cancel("c-3", "c-2"),
    ] {
        assert_eq!(decide(&state, &c, T0), decide_funded(&state, &c, T0, None));
    }
}

// The order of reasons: invalid, unknown_resource, unknown_budget,
// sold_out, customer_limit, budget_exceeded.

/// Ten seats, two per customer, 450 a seat from budget `b`; six seats
/// left, `u-1` and `u-2` holding two each.
fn nearly_full() -> [Command; 4] {
    [
        priced(),
        define("c-2", 10, Some(2)),
        reserve("c-3", "u-1", 2),
        reserve("c-4", "u-2", 2),
    ]
}

#[test]
fn invalid_comes_first() {
    let invalid = Command {
        command_id: cmd("c-9"),
        resource_id: rid(),
        action: Action::Invalid {
            kind: CommandKind::Reserve,
            detail: "quantity must be an integer from 1 to 4294967295, got 0".into(),
        },
    };
    for answer in [Answer::Unknown, Answer::Exceeds] {
        let funds = Funds {
            budget_id: bud("b"),
            amount: 0,
            answer,
        };
        given(&[])
            .when_funded(invalid.clone(), |_, _| Some(funds.clone()))
            .then_rejected(Reason::Invalid, 0, 0);
        given_paid(&nearly_full())
            .when_funded(invalid.clone(), |_, _| Some(funds))
            .then_rejected(Reason::Invalid, 6, 4)
            .and_event(|e| {
                assert_eq!((e.details.amount, &e.details.budget_id), (None, &None));
                assert_eq!(e.budget_step(), None);
            });
    }
}

#[test]
fn unknown_resource_comes_before_unknown_budget() {
    let funds = Funds {
        budget_id: bud("b"),
        amount: 450,
        answer: Answer::Unknown,
    };
    given(&[])
        .when_funded(reserve("c-1", "u-1", 1), |_, _| Some(funds))
        .then_rejected(Reason::UnknownResource, 0, 0)
        .and_event(|e| {
            assert_eq!((e.details.amount, &e.details.budget_id), (None, &None));
            assert_eq!(e.budget_step(), None, "nothing was asked of a budget");
        });
}

#[test]
fn unknown_budget_comes_before_sold_out_and_customer_limit() {
    given_paid(&nearly_full())
        .when_paid(reserve("c-9", "u-1", 7), Answer::Unknown)
        .then_rejected(Reason::UnknownBudget, 6, 4);
    given_paid(&nearly_full())
        .when_paid(reserve("c-9", "u-1", 1), Answer::Unknown)
        .then_rejected(Reason::UnknownBudget, 6, 4);
}

#[test]
fn sold_out_comes_before_customer_limit_and_budget_exceeded() {
    for answer in [Answer::SetAside, Answer::Exceeds] {
        given_paid(&nearly_full())
            .when_paid(reserve("c-9", "u-1", 7), answer)
            .then_rejected(Reason::SoldOut, 6, 4)
            .and_event(|e| {
                assert_eq!(e.details.amount, None, "nothing paid or refused for money");
                assert_eq!(e.details.budget_id, Some(bud("b")));
                assert_eq!(e.budget_step(), step_of("u-1", "c-9", StepKind::Refund));
            });
    }
}

#[test]
fn customer_limit_comes_before_budget_exceeded() {
    for answer in [Answer::SetAside, Answer::Exceeds] {
        given_paid(&nearly_full())
            .when_paid(hold("h-9", "u-1", 1, 60), answer)
            .then_rejected(Reason::CustomerLimit, 6, 4)
            .and_event(|e| {
                assert_eq!(e.details.amount, None);
                assert_eq!(e.budget_step(), step_of("u-1", "h-9", StepKind::Refund));
            });
    }
}

#[test]
fn budget_exceeded_comes_last() {
    given_paid(&nearly_full())
        .when_paid(reserve("c-9", "u-3", 2), Answer::Exceeds)
        .then_rejected(Reason::BudgetExceeded, 6, 4)
        .and_event(|e| assert_eq!(e.details.amount, Some(900)));
    given_paid(&nearly_full())
        .when_paid(reserve("c-9", "u-3", 2), Answer::SetAside)
        .then_accepted(4, 5);
}

#[test]
fn a_lower_price_binds_later_takes_and_changes_no_recorded_amount() {
    given_paid(&[
        priced(),
        reserve("c-2", "u-1", 2),
        define_priced("c-3", 10, 100, BudgetChange::Keep),
    ])
    .when_paid(reserve("c-4", "u-1", 2), Answer::SetAside)
    .then_accepted(6, 4)
    .and_event(|e| assert_eq!(e.details.amount, Some(200)))
    .and_state(|s| assert_eq!(s.reservations[&cmd("c-2")].amount, Some(900)));
}

// Cancels and expiries give back what was recorded.

#[test]
fn cancel_gives_back_the_recorded_amount_to_the_recorded_budget() {
    given_paid(&[priced(), reserve("c-2", "u-1", 2)])
        .when(cancel("c-3", "c-2"))
        .then_accepted(10, 3)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(900));
            assert_eq!(e.details.budget_id, Some(bud("b")));
            assert_eq!(e.budget_step(), step_of("u-1", "c-2", StepKind::Release));
        })
        .and_state(|s| {
            let r = &s.reservations[&cmd("c-2")];
            assert_eq!(r.status, Status::Cancelled);
            assert_eq!((r.amount, r.budget_id.clone()), (Some(900), Some(bud("b"))));
        });
}

#[test]
fn cancel_refunds_at_the_recorded_amount_after_the_price_changed() {
    given_paid(&[
        priced(),
        reserve("c-2", "u-1", 2),
        define_priced("c-3", 10, 999, BudgetChange::Keep),
    ])
    .when(cancel("c-4", "c-2"))
    .then_accepted(10, 4)
    .and_event(|e| {
        assert_eq!(e.details.amount, Some(900));
        assert_eq!(e.budget_step(), step_of("u-1", "c-2", StepKind::Release));
    });
}

#[test]
fn cancel_refunds_the_recorded_budget_after_the_budget_changed() {
    for change in [paid_from("b2"), BudgetChange::Detach] {
        given_paid(&[
            priced(),
            reserve("c-2", "u-1", 2),
            define_priced("c-3", 10, 1, change),
        ])
        .when(cancel("c-4", "c-2"))
        .then_accepted(10, 4)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(900));
            assert_eq!(e.details.budget_id, Some(bud("b")));
            assert_eq!(e.budget_step(), step_of("u-1", "c-2", StepKind::Release));
        });
    }
}

#[test]
fn a_reservation_made_before_the_budget_gives_nothing_back_to_it() {
    given_paid(&[
        define("c-1", 10, None),
        reserve("c-2", "u-1", 2),
        define_priced("c-3", 10, 450, paid_from("b")),
    ])
    .when(cancel("c-4", "c-2"))
    .then_accepted(10, 4)
    .and_event(|e| {
        assert_eq!((e.details.amount, &e.details.budget_id), (None, &None));
        assert_eq!(e.budget_step(), None);
    });
}

#[test]
fn a_rejected_cancel_gives_nothing_back() {
    given_paid(&[priced(), reserve("c-2", "u-1", 2), cancel("c-3", "c-2")])
        .when(cancel("c-4", "c-2"))
        .then_rejected(Reason::AlreadyCancelled, 10, 3)
        .and_event(|e| {
            assert_eq!((e.details.amount, &e.details.budget_id), (None, &None));
            assert_eq!(e.budget_step(), None);
        });
    given_paid(&[priced()])
        .when(cancel("c-2", "nope"))
        .then_rejected(Reason::UnknownReservation, 10, 1)
        .and_event(|e| assert_eq!(e.budget_step(), None));
    // A take refused for money left no reservation to cancel.
    let state = given(&[priced()]).state();
    let take = reserve("c-2", "u-1", 1);
    let funds = funds_for(&state, &take, Answer::Exceeds);
    let refusal = decide_funded(&state, &take, T0, funds.as_ref());
    let refused = apply(state, &refusal);
    let event = decide(&refused, &cancel("c-3", "c-2"), T0);
    assert_eq!(event.verdict.reason(), Some(Reason::UnknownReservation));
    assert_eq!(event.budget_step(), None);
}

#[test]
fn cancel_of_a_hold_releases_it() {
    given_paid(&[priced(), hold("h-1", "u-1", 3, 60)])
        .when(cancel("c-2", "h-1"))
        .then_accepted(10, 3)
        .and_event(|e| {
            assert_eq!(e.details.amount, Some(1350));
            assert_eq!(e.budget_step(), step_of("u-1", "h-1", StepKind::Release));
        });
}

#[test]
fn confirm_keeps_the_money_and_a_later_cancel_gives_it_back() {
    given_paid(&[priced(), hold("h-1", "u-1", 3, 60)])
        .when(confirm("k-1", "h-1"))
        .then_accepted(7, 3)
        .and_event(|e| {
            assert_eq!(e.details.amount, None);
            assert_eq!(e.budget_step(), None, "the hold's amount stays kept");
        })
        .and_state(|s| assert_eq!(s.reservations[&cmd("h-1")].amount, Some(1350)));
    given_paid(&[
        priced(),
        hold("h-1", "u-1", 3, 60),
        confirm("k-1", "h-1"),
        define_priced("k-2", 10, 1, paid_from("b2")),
    ])
    .when(cancel("c-2", "h-1"))
    .then_accepted(10, 5)
    .and_event(|e| {
        assert_eq!(e.details.amount, Some(1350));
        assert_eq!(e.budget_step(), step_of("u-1", "h-1", StepKind::Release));
    });
}

#[test]
fn an_expiry_gives_back_the_recorded_amount_to_the_recorded_budget() {
    let state = given_paid(&[
        priced(),
        hold("h-1", "u-1", 3, 60),
        define_priced("c-2", 10, 999, paid_from("b2")),
    ])
    .state();
    let event = expire(&state, &rid(), &cmd("h-1"), T0 + MINUTE).expect("due");
    assert!(event.is_accepted());
    assert_eq!(event.details.amount, Some(1350));
    assert_eq!(event.details.budget_id, Some(bud("b")));
    assert_eq!(
        event.budget_step(),
        step_of("u-1", "h-1", StepKind::Release)
    );
    let after = apply(state, &event);
    assert_eq!(after.reservations[&cmd("h-1")].status, Status::Expired);
    assert_eq!(after.remaining(), 10);
}

#[test]
fn an_expiry_before_the_budget_gives_nothing_back() {
    let state = given_paid(&[define("c-1", 10, None), hold("h-1", "u-1", 3, 60)]).state();
    let event = expire(&state, &rid(), &cmd("h-1"), T0 + MINUTE).expect("due");
    assert_eq!(
        (event.details.amount, &event.details.budget_id),
        (None, &None)
    );
    assert_eq!(event.budget_step(), None);
}

#[test]
fn a_cancel_too_late_gives_nothing_back_the_expiry_does() {
    given_paid(&[priced(), hold("h-1", "u-1", 3, 60)])
        .after_ms(MINUTE)
        .when(cancel("c-2", "h-1"))
        .then_expired(&["h-1"])
        .then_rejected(Reason::HoldExpired, 10, 3)
        .and_event(|e| {
            assert_eq!(e.details.amount, None);
            assert_eq!(e.budget_step(), None);
        });
}

// The events as the wire and the fold see them.

#[test]
fn a_paid_take_serialises_its_amount_and_budget_and_folds_back() {
    let before = given(&[priced()]).state();
    let event = given(&[priced()])
        .when_paid(reserve("c-2", "u-7", 2), Answer::SetAside)
        .event();
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "command_id": "c-2", "command": "reserve", "outcome": "accepted",
            "resource_id": "r", "customer_id": "u-7", "quantity": 2,
            "amount": 900, "budget_id": "b", "remaining": 8, "version": 2
        })
    );
    let back: Event = serde_json::from_value(json).unwrap();
    assert_eq!(back.budget_step(), event.budget_step());
    let folded = apply(before, &back);
    let r = &folded.reservations[&cmd("c-2")];
    assert_eq!((r.amount, r.budget_id.clone()), (Some(900), Some(bud("b"))));
}

#[test]
fn folding_a_priced_define_sets_price_and_budget_from_the_event_alone() {
    let event = given(&[]).when(priced()).event();
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(json["price"], 450);
    assert_eq!(json["budget_id"], "b");
    let folded = apply(State::default(), &serde_json::from_value(json).unwrap());
    let r = folded.resource.unwrap();
    assert_eq!((r.price, r.budget_id, r.version), (450, Some(bud("b")), 1));
    // A later define that keeps both tells both, so its fold needs nothing
    // else.
    let state = given(&[priced()]).state();
    let keep = given(&[priced()])
        .when(define("c-2", 20, LimitChange::Keep))
        .event();
    let r = apply(state, &keep).resource.unwrap();
    assert_eq!((r.price, r.budget_id), (450, Some(bud("b"))));
}

#[test]
fn a_refused_take_folds_to_nothing() {
    for answer in [Answer::Exceeds, Answer::Unknown] {
        let before = given(&[priced()]).state();
        let event = given(&[priced()])
            .when_paid(reserve("c-2", "u-1", 2), answer)
            .event();
        assert_eq!(apply(before.clone(), &event), before);
    }
}

// The three steps together: a budget's spending follows the resource.

/// A resource and its budget `b`, each command run through the three
/// steps: set aside, decide, settle.
struct Shop {
    state: State,
    ledger: Ledger,
}

impl Shop {
    fn new(cap: u64, history: &[Command]) -> Shop {
        let mut shop = Shop {
            state: State::default(),
            ledger: Ledger {
                budget: Some(Budget {
                    per_customer_amount: cap,
                    version: 1,
                }),
                ..Ledger::default()
            },
        };
        for c in history {
            shop.run(c);
        }
        shop
    }

    fn run(&mut self, command: &Command) -> Event {
        let funds = cost(&self.state, command).map(|(budget_id, amount)| {
            assert_eq!(budget_id, bud("b"), "one budget in this shop");
            let ask = Ask {
                customer_id: command.customer().unwrap().clone(),
                resource_id: rid(),
                command_id: command.command_id.clone(),
                amount,
            };
            let [answer] = self.ledger.set_aside(&[ask])[..] else {
                unreachable!("one ask, one answer")
            };
            Funds {
                budget_id,
                amount,
                answer,
            }
        });
        let event = decide_funded(&self.state, command, T0, funds.as_ref());
        self.state = apply(std::mem::take(&mut self.state), &event);
        if let Some(step) = event.budget_step() {
            self.ledger.settle(&[step]);
        }
        event
    }

    fn spent(&self, customer: &str) -> u64 {
        self.ledger
            .customers
            .get(&cust(customer))
            .map_or(0, |s| s.spent)
    }

    /// What the customer's live reservations recorded.
    fn recorded(&self, customer: &str) -> u64 {
        self.state
            .reservations
            .values()
            .filter(|r| r.customer_id == cust(customer))
            .filter(|r| {
                matches!(
                    r.status,
                    Status::Reserved | Status::Held | Status::Confirmed
                )
            })
            .filter_map(|r| r.amount)
            .sum()
    }
}

#[test]
fn spending_is_the_sum_of_the_recorded_amounts() {
    let mut shop = Shop::new(
        2_000,
        &[
            priced(),
            reserve("c-2", "u-1", 2),
            hold("h-1", "u-1", 1, 60),
            define_priced("c-3", 10, 100, BudgetChange::Keep),
            reserve("c-4", "u-1", 3),
            cancel("c-5", "c-2"),
            confirm("k-1", "h-1"),
        ],
    );
    assert_eq!(shop.spent("u-1"), 450 + 300);
    assert_eq!(shop.spent("u-1"), shop.recorded("u-1"));
    // Refused by the resource or by the budget: nothing spent.
    let refused = shop.run(&reserve("c-6", "u-1", 7));
    assert_eq!(refused.verdict.reason(), Some(Reason::SoldOut));
    assert!(shop.run(&define("c-7", 100, None)).is_accepted());
    let refused = shop.run(&reserve("c-8", "u-1", 13));
    assert_eq!(refused.verdict.reason(), Some(Reason::BudgetExceeded));
    assert_eq!(refused.details.amount, Some(1_300));
    assert_eq!(shop.spent("u-1"), 750);
    let accepted = shop.run(&reserve("c-9", "u-1", 12));
    assert!(accepted.is_accepted(), "{accepted:?}");
    assert_eq!(shop.spent("u-1"), 1_950);
    assert_eq!(shop.spent("u-1"), shop.recorded("u-1"));
    // Replaying every settled step changes nothing.
    let before = shop.ledger.clone();
    let steps: Vec<BudgetStep> = ["c-2", "c-4", "c-9"]
        .iter()
        .filter_map(|id| {
            let r = &shop.state.reservations[&cmd(id)];
            let kind = match r.status {
                Status::Cancelled => StepKind::Release,
                _ => StepKind::Keep {
                    amount: r.amount.unwrap(),
                },
            };
            step_of("u-1", id, kind)
        })
        .collect();
    shop.ledger.settle(&steps);
    assert_eq!(shop.ledger, before);
}
