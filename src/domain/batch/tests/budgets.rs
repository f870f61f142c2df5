//! Deciding a batch on a resource with a budget: takes no budget has
//! answered for are asked for (and nothing may be committed), takes with
//! answers are decided with them.

use super::*;
use crate::domain::testing::{define_priced, paid_from};
use crate::domain::{BudgetChange, StepKind};

fn bud(s: &str) -> BudgetId {
    BudgetId::try_from(s).unwrap()
}

/// Ten seats at 450 a seat, paid from budget `b`.
fn priced() -> Command {
    define_priced("d", 10, 450, paid_from("b"))
}

/// Take `take` on resource `r` asks `budget` for `amount` of `customer`'s
/// money.
fn ask(budget: &str, customer: &str, take: &str, amount: u64) -> (BudgetId, Ask) {
    (
        bud(budget),
        Ask {
            customer_id: super::customer(customer),
            resource_id: ResourceId::try_from("r").unwrap(),
            command_id: id(take),
            amount,
        },
    )
}

/// The snapshot with the budget's answers to `asks` added.
fn answered(
    mut snapshot: Snapshot<Sealed>,
    asks: &[(BudgetId, Ask)],
    answer: Answer,
) -> Snapshot<Sealed> {
    for (budget_id, ask) in asks {
        snapshot.funds.insert(
            ask.command_id.clone(),
            Funds {
                budget_id: budget_id.clone(),
                amount: ask.amount,
                answer,
            },
        );
    }
    snapshot
}

fn event(o: &Outcome<Sealed>) -> &Event {
    &o.event().1
}

#[test]
fn takes_without_funds_are_asked_for_one_each() {
    let b = batch([
        reserve("r1", "a", 2),
        hold("h1", "b", 1, 10),
        cancel("c1", "r0"),
        confirm("k1", "h0"),
        define_priced("d2", 10, None, BudgetChange::Keep),
    ]);
    let d = run(snapshot(&[priced()], &b), &b);
    assert_eq!(
        d.asks,
        [ask("b", "a", "r1", 900), ask("b", "b", "h1", 450)],
        "only takes cost money"
    );
    // Decided as if the money were set aside: the caller must not commit
    // this decision, but it is what the answered one will be.
    assert!(event(&d.outcomes[0]).is_accepted());
    assert!(event(&d.outcomes[1]).is_accepted());
}

#[test]
fn takes_are_asked_for_whatever_the_resource_then_decides() {
    // The second is sold out once the first is taken; its ask is made all
    // the same (the refusal's refund will give it back).
    let b = batch([reserve("r1", "a", 6), reserve("r2", "b", 6)]);
    let d = run(snapshot(&[priced()], &b), &b);
    assert_eq!(
        d.asks,
        [ask("b", "a", "r1", 2700), ask("b", "b", "r2", 2700)]
    );
    assert_eq!(reason(&d.outcomes[1]), Some(Reason::SoldOut));
}

#[test]
fn with_the_answers_the_batch_is_decided() {
    let b = batch([reserve("r1", "a", 2), hold("h1", "b", 1, 10)]);
    let first = run(snapshot(&[priced()], &b), &b);
    let d = run(
        answered(snapshot(&[priced()], &b), &first.asks, Answer::SetAside),
        &b,
    );
    assert!(d.asks.is_empty());
    let (r1, h1) = (event(&d.outcomes[0]), event(&d.outcomes[1]));
    assert!(r1.is_accepted() && h1.is_accepted());
    assert_eq!(r1.details.amount, Some(900));
    assert_eq!(
        r1.budget_step().map(|s| s.kind),
        Some(StepKind::Keep { amount: 900 })
    );
    assert_eq!(d.changes.reservations[0].1.amount, Some(900));
    assert_eq!(d.changes.reservations[0].1.budget_id, Some(bud("b")));
    assert_eq!(
        d.changes.holds_added,
        [DueHold {
            id: id("h1"),
            customer_id: customer("b"),
            quantity: 1,
            expires_at: T0 + TEN_S,
            amount: Some(450),
            budget_id: Some(bud("b")),
        }]
    );
    assert_eq!(d.changes.resource.unwrap().reserved, 2);
}

#[test]
fn answers_that_refuse_the_money_refuse_the_takes() {
    let b = batch([reserve("r1", "a", 2), reserve("r2", "a", 1)]);
    let first = run(snapshot(&[priced()], &b), &b);
    for (answer, refusal) in [
        (Answer::Exceeds, Reason::BudgetExceeded),
        (Answer::Unknown, Reason::UnknownBudget),
    ] {
        let d = run(answered(snapshot(&[priced()], &b), &first.asks, answer), &b);
        assert!(d.asks.is_empty());
        assert_eq!(reason(&d.outcomes[0]), Some(refusal));
        assert_eq!(reason(&d.outcomes[1]), Some(refusal));
        assert_eq!(
            event(&d.outcomes[0]).budget_step().map(|s| s.kind),
            Some(StepKind::Refund)
        );
        assert_eq!(d.changes.resource, None, "nothing taken");
        assert!(d.changes.applied.is_empty());
        assert_eq!(d.changes.records.len(), 2, "the refusals are recorded");
    }
}

#[test]
fn each_take_is_decided_with_its_own_answer() {
    let b = batch([reserve("r1", "a", 2), reserve("r2", "b", 2)]);
    let mut s = snapshot(&[priced()], &b);
    s = answered(s, &[ask("b", "a", "r1", 900)], Answer::Exceeds);
    s = answered(s, &[ask("b", "b", "r2", 900)], Answer::SetAside);
    let d = run(s, &b);
    assert!(d.asks.is_empty());
    assert_eq!(reason(&d.outcomes[0]), Some(Reason::BudgetExceeded));
    assert!(event(&d.outcomes[1]).is_accepted());
    assert_eq!(event(&d.outcomes[1]).remaining, 8);
}

#[test]
fn a_replayed_or_repeated_take_is_not_asked_for_again() {
    let b = batch([reserve("r1", "a", 2), reserve("r1", "a", 2)]);
    let first = run(snapshot(&[priced()], &b), &b);
    assert_eq!(first.asks, [ask("b", "a", "r1", 900)], "decided once");
    let decided = run(
        answered(snapshot(&[priced()], &b), &first.asks, Answer::SetAside),
        &b,
    );
    // Redelivered: replayed from its record, no budget asked.
    let mut again = snapshot(&[priced()], &b);
    again.records = decided.changes.records.iter().cloned().collect();
    let d = run(again, &b);
    assert!(d.asks.is_empty());
    assert!(matches!(d.outcomes[0], Outcome::Replayed(_)));
    assert!(d.changes.is_empty());
}

#[test]
fn a_reused_id_is_not_asked_for() {
    let first = batch([reserve("r1", "a", 2)]);
    let decided = run(
        answered(
            snapshot(&[priced()], &first),
            &[ask("b", "a", "r1", 900)],
            Answer::SetAside,
        ),
        &first,
    );
    let b = batch([reserve("r1", "b", 1)]);
    let mut s = snapshot(&[priced()], &b);
    s.records = decided.changes.records.iter().cloned().collect();
    let d = run(s, &b);
    assert!(d.asks.is_empty());
    assert_eq!(reason(&d.outcomes[0]), Some(Reason::IdempotencyConflict));
    assert_eq!(event(&d.outcomes[0]).budget_step(), None);
}

#[test]
fn a_define_in_the_batch_that_changes_the_price_makes_the_ask_use_the_new_one() {
    let b = batch([
        reserve("r1", "a", 2),
        define_priced("d2", 10, 500, BudgetChange::Keep),
        reserve("r2", "a", 2),
    ]);
    let first = run(snapshot(&[priced()], &b), &b);
    assert_eq!(
        first.asks,
        [ask("b", "a", "r1", 900), ask("b", "a", "r2", 1000)]
    );
    let d = run(
        answered(snapshot(&[priced()], &b), &first.asks, Answer::SetAside),
        &b,
    );
    assert!(d.asks.is_empty());
    assert_eq!(event(&d.outcomes[0]).details.amount, Some(900));
    assert_eq!(event(&d.outcomes[2]).details.amount, Some(1000));
}

#[test]
fn funds_for_the_old_price_are_asked_for_again_at_the_new_one() {
    // Answered for 900 before a define (in another batch) raised the
    // price: the take is asked for again, not refused.
    let b = batch([reserve("r1", "a", 2)]);
    let history = [priced(), define_priced("d2", 10, 500, BudgetChange::Keep)];
    let s = answered(
        snapshot(&history, &b),
        &[ask("b", "a", "r1", 900)],
        Answer::SetAside,
    );
    let d = run(s, &b);
    assert_eq!(d.asks, [ask("b", "a", "r1", 1000)]);
}

#[test]
fn a_define_in_the_batch_that_moves_the_budget_asks_the_new_one() {
    let b = batch([
        define_priced("d2", 10, None, paid_from("b2")),
        reserve("r1", "a", 1),
    ]);
    let d = run(snapshot(&[priced()], &b), &b);
    assert_eq!(d.asks, [ask("b2", "a", "r1", 450)]);
    // Funds from the old budget do not pay for it.
    let s = answered(
        snapshot(&[priced()], &b),
        &[ask("b", "a", "r1", 450)],
        Answer::SetAside,
    );
    assert_eq!(run(s, &b).asks, [ask("b2", "a", "r1", 450)]);
}

#[test]
fn a_resource_without_a_budget_asks_no_one() {
    let b = batch([reserve("r1", "a", 2), hold("h1", "b", 1, 10)]);
    let unbudgeted = [define_priced("d", 10, 450, BudgetChange::Keep)];
    let d = run(snapshot(&unbudgeted, &b), &b);
    assert!(d.asks.is_empty());
    assert_eq!(event(&d.outcomes[0]).details.amount, Some(900));
    // Nor does one whose budget the batch detaches first.
    let b = batch([
        define_priced("d2", 10, None, BudgetChange::Detach),
        reserve("r1", "a", 2),
    ]);
    let d = run(snapshot(&[priced()], &b), &b);
    assert!(d.asks.is_empty());
    assert!(event(&d.outcomes[1]).is_accepted());
}

#[test]
fn a_take_on_an_unknown_resource_asks_no_one() {
    let b = batch([reserve("r1", "a", 2)]);
    let d = run(snapshot(&[], &b), &b);
    assert!(d.asks.is_empty());
    assert_eq!(reason(&d.outcomes[0]), Some(Reason::UnknownResource));
}

#[test]
fn an_expired_hold_gives_back_what_the_index_recorded() {
    let history = [priced(), hold("h1", "a", 2, 10)];
    let b = batch([]);
    let mut s = snapshot_at(&history, &b, T0 + TEN_S);
    assert_eq!(s.due[0].amount, Some(900), "{:?}", s.due);
    // The resource moved to another budget and price since.
    let r = s.state.resource.as_mut().unwrap();
    r.budget_id = Some(bud("b2"));
    r.price = 1;
    let d = run(s, &b);
    let [(_, (_, expiry))] = &d.changes.expiries[..] else {
        panic!("one expiry: {:?}", d.changes.expiries)
    };
    assert_eq!(expiry.details.amount, Some(900));
    assert_eq!(expiry.details.budget_id, Some(bud("b")));
    let step = expiry.budget_step().expect("a release");
    assert_eq!(
        (step.budget_id, step.reservation_id, step.kind),
        (bud("b"), id("h1"), StepKind::Release)
    );
    assert_eq!(d.changes.holds_removed[0].amount, Some(900));
    assert!(d.asks.is_empty(), "an expiry asks nothing");
}

#[test]
fn a_cancel_in_the_batch_releases_at_the_recorded_amount() {
    let history = [
        priced(),
        reserve("r1", "a", 2),
        define_priced("d2", 10, 999, BudgetChange::Keep),
    ];
    let b = batch([cancel("c1", "r1")]);
    let d = run(snapshot(&history, &b), &b);
    assert!(d.asks.is_empty());
    let e = event(&d.outcomes[0]);
    assert_eq!(e.details.amount, Some(900));
    assert_eq!(
        e.budget_step().map(|s| (s.budget_id, s.kind)),
        Some((bud("b"), StepKind::Release))
    );
}

#[test]
fn money_set_aside_on_a_budget_the_resource_left_is_given_back() {
    // r1 is refused, so the define that moves the resource to b2 is
    // accepted, and r2 is paid from b2: what b set aside for r2 (and r1)
    // must come back from b.
    let b = batch([
        reserve("r1", "a", 5),
        define_priced("d2", 4, None, paid_from("b2")),
        reserve("r2", "a", 1),
    ]);
    let first = run(snapshot(&[priced()], &b), &b);
    assert_eq!(
        first.asks,
        [ask("b", "a", "r1", 2250), ask("b", "a", "r2", 450)]
    );
    assert!(first.refunds.is_empty(), "the resource has not moved yet");
    let mut s = answered(snapshot(&[priced()], &b), &first.asks[..1], Answer::Exceeds);
    s = answered(s, &first.asks[1..], Answer::SetAside);
    let second = run(s.clone(), &b);
    assert_eq!(second.asks, [ask("b2", "a", "r2", 450)]);
    let third = run(answered(s, &second.asks, Answer::SetAside), &b);
    assert!(third.asks.is_empty());
    assert!(event(&third.outcomes[2]).is_accepted());
    let refunded: Vec<(&str, &str, StepKind)> = third
        .refunds
        .iter()
        .map(|r| (r.budget_id.as_str(), r.reservation_id.as_str(), r.kind))
        .collect();
    assert_eq!(
        refunded,
        [("b", "r1", StepKind::Refund), ("b", "r2", StepKind::Refund)]
    );
}

#[test]
fn a_resource_remembers_every_budget_it_was_paid_from() {
    let state = crate::domain::testing::given(&[
        priced(),
        define_priced("d2", 10, None, paid_from("b2")),
        define_priced("d3", 10, None, paid_from("b")),
        define_priced("d4", 10, None, BudgetChange::Detach),
    ])
    .state();
    let r = state.resource.unwrap();
    assert_eq!(r.budget_id, None);
    assert_eq!(r.former_budgets, [bud("b"), bud("b2")]);
}

#[test]
fn a_resource_back_on_a_budget_refunds_only_the_one_it_left() {
    let history = [
        priced(),
        define_priced("d2", 10, None, paid_from("b2")),
        define_priced("d3", 10, None, paid_from("b")),
    ];
    let b = batch([reserve("r1", "a", 1)]);
    let d = run(snapshot(&history, &b), &b);
    let d = run(
        answered(snapshot(&history, &b), &d.asks, Answer::SetAside),
        &b,
    );
    let refunded: Vec<&str> = d.refunds.iter().map(|r| r.budget_id.as_str()).collect();
    assert_eq!(refunded, ["b2"]);
}

#[test]
fn a_reused_id_refunds_nothing_on_a_budget_the_resource_left() {
    // Its refund could drop the money of the id's own take before that
    // take's keep: only decided and replayed takes refund former budgets.
    let moved = [priced(), define_priced("d2", 10, None, paid_from("b2"))];
    let first = batch([reserve("r1", "a", 2)]);
    let s = snapshot(&moved, &first);
    let asks = run(s.clone(), &first).asks;
    let decided = run(answered(s, &asks, Answer::SetAside), &first);
    assert_eq!(decided.refunds.len(), 1, "the decided take refunds b");
    let b = batch([reserve("r1", "a", 1)]);
    let mut s = snapshot(&moved, &b);
    s.records = decided.changes.records.iter().cloned().collect();
    let d = run(s, &b);
    assert_eq!(reason(&d.outcomes[0]), Some(Reason::IdempotencyConflict));
    assert!(d.refunds.is_empty(), "{:?}", d.refunds);
}
