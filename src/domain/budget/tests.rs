//! Given / when / then tests of a budget: setting amounts aside against
//! the cap (step 1), settling them with the recorded outcome (step 3),
//! and deciding and folding `define_budget`.

use super::*;

/// A ledger whose budget caps each customer at `cap`, nobody having spent
/// anything yet.
fn ledger(cap: u64) -> Ledger {
    Ledger {
        budget: Some(Budget {
            per_customer_amount: cap,
            version: 1,
        }),
        customers: HashMap::new(),
    }
}

fn cust(s: &str) -> CustomerId {
    CustomerId::try_from(s).unwrap()
}

fn cmd(s: &str) -> CommandId {
    CommandId::try_from(s).unwrap()
}

fn bud(s: &str) -> BudgetId {
    BudgetId::try_from(s).unwrap()
}

fn key(take: &str) -> EntryKey {
    (ResourceId::try_from("r").unwrap(), cmd(take))
}

/// Take `take` on resource `r` asks for `amount` of `customer`'s money.
fn ask(customer: &str, take: &str, amount: u64) -> Ask {
    Ask {
        customer_id: cust(customer),
        resource_id: ResourceId::try_from("r").unwrap(),
        command_id: cmd(take),
        amount,
    }
}

/// The outcome of take `take` on resource `r` settles its entry.
fn step(customer: &str, take: &str, kind: StepKind) -> BudgetStep {
    BudgetStep {
        budget_id: bud("b"),
        customer_id: cust(customer),
        resource_id: ResourceId::try_from("r").unwrap(),
        reservation_id: cmd(take),
        kind,
    }
}

fn keep(amount: u64) -> StepKind {
    StepKind::Keep { amount }
}

/// What `customer` has spent, set-aside amounts included.
fn spent(ledger: &Ledger, customer: &str) -> u64 {
    ledger.customers.get(&cust(customer)).map_or(0, |s| s.spent)
}

/// The entry of take `take` by `customer` (empty when absent).
fn entry(ledger: &Ledger, customer: &str, take: &str) -> Entry {
    ledger
        .customers
        .get(&cust(customer))
        .and_then(|s| s.entries.get(&key(take)))
        .cloned()
        .unwrap_or_default()
}

/// The ledger after `asks` were answered and `steps` settled, in that
/// order, each answer checked to be what it was expected to be.
fn given(cap: u64, asks: &[(Ask, Answer)], steps: &[BudgetStep]) -> Ledger {
    let mut l = ledger(cap);
    for (ask, expected) in asks {
        assert_eq!(
            l.set_aside(std::slice::from_ref(ask)),
            [*expected],
            "{ask:?}"
        );
    }
    l.settle(steps);
    l
}

// Step 1: set aside.

#[test]
fn an_ask_within_the_cap_is_set_aside() {
    let mut l = ledger(100);
    assert_eq!(l.set_aside(&[ask("u-1", "c-1", 60)]), [Answer::SetAside]);
    assert_eq!(spent(&l, "u-1"), 60);
    assert_eq!(
        entry(&l, "u-1", "c-1"),
        Entry {
            open: vec![60],
            kept: None,
            closed: false
        }
    );
}

#[test]
fn an_ask_up_to_exactly_the_cap_is_set_aside() {
    let mut l = given(100, &[(ask("u-1", "c-1", 60), Answer::SetAside)], &[]);
    assert_eq!(l.set_aside(&[ask("u-1", "c-2", 40)]), [Answer::SetAside]);
    assert_eq!(spent(&l, "u-1"), 100);
}

#[test]
fn an_ask_over_the_cap_exceeds_it_and_writes_nothing() {
    let mut l = given(100, &[(ask("u-1", "c-1", 60), Answer::SetAside)], &[]);
    let before = l.clone();
    assert_eq!(l.set_aside(&[ask("u-1", "c-2", 41)]), [Answer::Exceeds]);
    assert_eq!(spent(&l, "u-1"), 60);
    assert!(entry(&l, "u-1", "c-2").is_empty());
    assert_eq!(entry(&l, "u-1", "c-1"), entry(&before, "u-1", "c-1"));
}

#[test]
fn a_single_ask_over_the_cap_exceeds_it() {
    let mut l = ledger(100);
    assert_eq!(l.set_aside(&[ask("u-1", "c-1", 101)]), [Answer::Exceeds]);
    assert_eq!(spent(&l, "u-1"), 0);
}

#[test]
fn an_undefined_budget_answers_unknown_and_writes_nothing() {
    let mut l = Ledger::default();
    let answers = l.set_aside(&[ask("u-1", "c-1", 1), ask("u-2", "c-2", 0)]);
    assert_eq!(answers, [Answer::Unknown, Answer::Unknown]);
    assert_eq!(l, Ledger::default());
}

#[test]
fn asking_again_for_the_same_amount_answers_the_same_and_adds_nothing() {
    let mut l = given(100, &[(ask("u-1", "c-1", 60), Answer::SetAside)], &[]);
    assert_eq!(l.set_aside(&[ask("u-1", "c-1", 60)]), [Answer::SetAside]);
    assert_eq!(spent(&l, "u-1"), 60);
    assert_eq!(entry(&l, "u-1", "c-1").open, [60]);
    // Even when the amount alone would no longer fit.
    let mut full = given(
        100,
        &[
            (ask("u-1", "c-1", 60), Answer::SetAside),
            (ask("u-1", "c-2", 40), Answer::SetAside),
        ],
        &[],
    );
    assert_eq!(full.set_aside(&[ask("u-1", "c-1", 60)]), [Answer::SetAside]);
    assert_eq!(spent(&full, "u-1"), 100);
}

#[test]
fn the_same_ask_twice_in_one_call_is_set_aside_once() {
    let mut l = ledger(100);
    let answers = l.set_aside(&[ask("u-1", "c-1", 60), ask("u-1", "c-1", 60)]);
    assert_eq!(answers, [Answer::SetAside, Answer::SetAside]);
    assert_eq!(spent(&l, "u-1"), 60);
}

#[test]
fn a_second_amount_for_the_same_take_counts_both() {
    // The price changed while the take was being decided: until it is
    // settled, both amounts are set aside.
    let mut l = given(100, &[(ask("u-1", "c-1", 60), Answer::SetAside)], &[]);
    assert_eq!(l.set_aside(&[ask("u-1", "c-1", 30)]), [Answer::SetAside]);
    assert_eq!(spent(&l, "u-1"), 90);
    assert_eq!(entry(&l, "u-1", "c-1").open, [60, 30]);
    assert_eq!(l.set_aside(&[ask("u-1", "c-1", 20)]), [Answer::Exceeds]);
    assert_eq!(spent(&l, "u-1"), 90);
}

#[test]
fn asks_in_one_call_see_what_the_earlier_ones_set_aside() {
    let mut l = ledger(100);
    let answers = l.set_aside(&[
        ask("u-1", "c-1", 60),
        ask("u-1", "c-2", 60),
        ask("u-1", "c-3", 40),
        ask("u-1", "c-4", 1),
    ]);
    assert_eq!(
        answers,
        [
            Answer::SetAside,
            Answer::Exceeds,
            Answer::SetAside,
            Answer::Exceeds
        ]
    );
    assert_eq!(spent(&l, "u-1"), 100);
    assert!(entry(&l, "u-1", "c-2").is_empty());
}

#[test]
fn each_customer_has_a_cap_of_their_own() {
    let mut l = ledger(100);
    let answers = l.set_aside(&[ask("u-1", "c-1", 100), ask("u-2", "c-2", 100)]);
    assert_eq!(answers, [Answer::SetAside, Answer::SetAside]);
    assert_eq!((spent(&l, "u-1"), spent(&l, "u-2")), (100, 100));
}

#[test]
fn the_same_take_id_on_another_resource_is_another_entry() {
    let mut l = given(100, &[(ask("u-1", "c-1", 60), Answer::SetAside)], &[]);
    let elsewhere = Ask {
        resource_id: ResourceId::try_from("s").unwrap(),
        ..ask("u-1", "c-1", 60)
    };
    assert_eq!(l.set_aside(&[elsewhere]), [Answer::Exceeds]);
}

#[test]
fn a_decided_take_asking_again_is_answered_without_adding_anything() {
    // Kept: the resource's commit replays the outcome.
    let mut kept = given(
        100,
        &[(ask("u-1", "c-1", 60), Answer::SetAside)],
        &[step("u-1", "c-1", keep(60))],
    );
    assert_eq!(kept.set_aside(&[ask("u-1", "c-1", 90)]), [Answer::SetAside]);
    assert_eq!(spent(&kept, "u-1"), 60);
    assert_eq!(entry(&kept, "u-1", "c-1").open, [] as [u64; 0]);
    // Released: given back for good.
    let mut released = given(
        100,
        &[(ask("u-1", "c-1", 60), Answer::SetAside)],
        &[
            step("u-1", "c-1", keep(60)),
            step("u-1", "c-1", StepKind::Release),
        ],
    );
    assert_eq!(
        released.set_aside(&[ask("u-1", "c-1", 60)]),
        [Answer::SetAside]
    );
    assert_eq!(spent(&released, "u-1"), 0);
}

#[test]
fn a_lower_cap_binds_later_asks_and_takes_nothing_back() {
    let mut l = given(
        100,
        &[(ask("u-1", "c-1", 80), Answer::SetAside)],
        &[step("u-1", "c-1", keep(80))],
    );
    l.budget = Some(Budget {
        per_customer_amount: 50,
        version: 2,
    });
    assert_eq!(l.set_aside(&[ask("u-1", "c-2", 1)]), [Answer::Exceeds]);
    assert_eq!(spent(&l, "u-1"), 80);
    assert_eq!(entry(&l, "u-1", "c-1").kept, Some(80));
    assert_eq!(l.set_aside(&[ask("u-2", "c-3", 50)]), [Answer::SetAside]);
}

#[test]
fn huge_amounts_do_not_overflow_the_cap_check() {
    let mut l = ledger(MAX_AMOUNT);
    l.customers.insert(
        cust("u-1"),
        Spending {
            spent: u64::MAX - 1,
            entries: HashMap::new(),
        },
    );
    assert_eq!(l.set_aside(&[ask("u-1", "c-1", 2)]), [Answer::Exceeds]);
    assert_eq!(
        l.set_aside(&[ask("u-2", "c-2", u64::MAX)]),
        [Answer::Exceeds]
    );
    assert_eq!(
        l.set_aside(&[ask("u-2", "c-3", MAX_AMOUNT)]),
        [Answer::SetAside]
    );
}

#[test]
fn a_free_take_is_set_aside_even_at_the_cap() {
    let mut l = given(100, &[(ask("u-1", "c-1", 100), Answer::SetAside)], &[]);
    assert_eq!(l.set_aside(&[ask("u-1", "c-2", 0)]), [Answer::SetAside]);
    assert_eq!(spent(&l, "u-1"), 100);
}

// Step 3: settle.

#[test]
fn keep_keeps_the_recorded_amount_and_gives_back_the_rest() {
    let mut l = given(
        100,
        &[
            (ask("u-1", "c-1", 60), Answer::SetAside),
            (ask("u-1", "c-1", 30), Answer::SetAside),
        ],
        &[],
    );
    l.settle(&[step("u-1", "c-1", keep(30))]);
    assert_eq!(spent(&l, "u-1"), 30);
    assert_eq!(
        entry(&l, "u-1", "c-1"),
        Entry {
            open: vec![],
            kept: Some(30),
            closed: false
        }
    );
}

#[test]
fn keep_twice_is_keep_once() {
    let once = given(
        100,
        &[(ask("u-1", "c-1", 60), Answer::SetAside)],
        &[step("u-1", "c-1", keep(60))],
    );
    let mut twice = once.clone();
    twice.settle(&[step("u-1", "c-1", keep(60))]);
    assert_eq!(twice, once);
    assert_eq!(spent(&twice, "u-1"), 60);
    // A later keep of another amount does not change what was kept.
    twice.settle(&[step("u-1", "c-1", keep(10))]);
    assert_eq!(twice, once);
}

#[test]
fn keep_without_anything_set_aside_still_keeps_the_recorded_amount() {
    // The resource's record is the truth, whatever the budget lost.
    let l = given(100, &[], &[step("u-1", "c-1", keep(40))]);
    assert_eq!(spent(&l, "u-1"), 40);
    assert_eq!(entry(&l, "u-1", "c-1").kept, Some(40));
}

#[test]
fn keep_leaves_the_other_takes_alone() {
    let l = given(
        100,
        &[
            (ask("u-1", "c-1", 60), Answer::SetAside),
            (ask("u-1", "c-2", 30), Answer::SetAside),
        ],
        &[step("u-1", "c-1", keep(60))],
    );
    assert_eq!(spent(&l, "u-1"), 90);
    assert_eq!(entry(&l, "u-1", "c-2").open, [30]);
}

#[test]
fn refund_gives_back_everything_set_aside() {
    let mut l = given(
        100,
        &[
            (ask("u-1", "c-1", 60), Answer::SetAside),
            (ask("u-1", "c-1", 30), Answer::SetAside),
            (ask("u-1", "c-2", 10), Answer::SetAside),
        ],
        &[step("u-1", "c-1", StepKind::Refund)],
    );
    assert_eq!(spent(&l, "u-1"), 10);
    assert!(entry(&l, "u-1", "c-1").is_empty());
    let once = l.clone();
    l.settle(&[step("u-1", "c-1", StepKind::Refund)]);
    assert_eq!(l, once, "a refund twice is a refund once");
}

#[test]
fn a_refund_frees_the_money_for_another_take() {
    let mut l = given(
        100,
        &[(ask("u-1", "c-1", 100), Answer::SetAside)],
        &[step("u-1", "c-1", StepKind::Refund)],
    );
    assert_eq!(l.set_aside(&[ask("u-1", "c-2", 100)]), [Answer::SetAside]);
}

#[test]
fn release_gives_the_kept_amount_back_for_good() {
    let mut l = given(
        100,
        &[(ask("u-1", "c-1", 60), Answer::SetAside)],
        &[
            step("u-1", "c-1", keep(60)),
            step("u-1", "c-1", StepKind::Release),
        ],
    );
    assert_eq!(spent(&l, "u-1"), 0);
    assert_eq!(
        entry(&l, "u-1", "c-1"),
        Entry {
            open: vec![],
            kept: None,
            closed: true
        }
    );
    // A redelivered reserve settles its keep again: nothing comes back.
    l.settle(&[step("u-1", "c-1", keep(60))]);
    assert_eq!(spent(&l, "u-1"), 0);
    assert_eq!(entry(&l, "u-1", "c-1").kept, None);
    // Nor does the release count twice.
    l.settle(&[step("u-1", "c-1", StepKind::Release)]);
    assert_eq!(spent(&l, "u-1"), 0);
}

#[test]
fn release_before_keep_closes_the_entry_first() {
    // The cancel's settlement overtook the reserve's.
    let l = given(
        100,
        &[(ask("u-1", "c-1", 60), Answer::SetAside)],
        &[
            step("u-1", "c-1", StepKind::Release),
            step("u-1", "c-1", keep(60)),
        ],
    );
    assert_eq!(spent(&l, "u-1"), 0);
    assert!(entry(&l, "u-1", "c-1").closed);
}

#[test]
fn release_of_one_take_leaves_the_others_counted() {
    let l = given(
        100,
        &[
            (ask("u-1", "c-1", 60), Answer::SetAside),
            (ask("u-1", "c-2", 40), Answer::SetAside),
        ],
        &[
            step("u-1", "c-1", keep(60)),
            step("u-1", "c-2", keep(40)),
            step("u-1", "c-1", StepKind::Release),
            step("u-1", "c-1", StepKind::Release),
        ],
    );
    assert_eq!(spent(&l, "u-1"), 40);
}

#[test]
fn spent_never_underflows() {
    // A spending total lower than its entries (not a state the steps
    // make, but what is loaded is not trusted to be consistent).
    let mut l = ledger(100);
    l.customers.insert(
        cust("u-1"),
        Spending {
            spent: 10,
            entries: HashMap::from([(
                key("c-1"),
                Entry {
                    open: vec![60],
                    kept: Some(30),
                    closed: false,
                },
            )]),
        },
    );
    l.settle(&[step("u-1", "c-1", StepKind::Release)]);
    assert_eq!(spent(&l, "u-1"), 0);
}

#[test]
fn settle_needs_no_budget_definition() {
    // A take refused as unknown_budget still settles its refund.
    let mut l = Ledger::default();
    l.settle(&[step("u-1", "c-1", StepKind::Refund)]);
    assert_eq!(spent(&l, "u-1"), 0);
    assert!(entry(&l, "u-1", "c-1").is_empty());
}

#[test]
fn spending_follows_a_whole_life() {
    // Set aside, kept, cancelled; another refused; a third kept.
    let l = given(
        100,
        &[
            (ask("u-1", "c-1", 50), Answer::SetAside),
            (ask("u-1", "c-2", 40), Answer::SetAside),
            (ask("u-1", "c-3", 20), Answer::Exceeds),
        ],
        &[
            step("u-1", "c-1", keep(50)),
            step("u-1", "c-2", StepKind::Refund),
            step("u-1", "c-3", StepKind::Refund),
        ],
    );
    assert_eq!(spent(&l, "u-1"), 50);
    let mut l = l;
    assert_eq!(l.set_aside(&[ask("u-1", "c-4", 50)]), [Answer::SetAside]);
    l.settle(&[
        step("u-1", "c-4", keep(50)),
        step("u-1", "c-1", StepKind::Release),
    ]);
    assert_eq!(spent(&l, "u-1"), 50);
    let counted: u64 = l.customers[&cust("u-1")]
        .entries
        .values()
        .map(Entry::counted)
        .sum();
    assert_eq!(counted, 50, "the total is the sum of the entries");
}

#[test]
fn entries_serialise_only_what_they_hold() {
    let json = |e: &Entry| serde_json::to_value(e).unwrap();
    assert_eq!(json(&Entry::default()), serde_json::json!({}));
    let full = Entry {
        open: vec![60, 30],
        kept: Some(30),
        closed: false,
    };
    assert_eq!(
        json(&full),
        serde_json::json!({"open": [60, 30], "kept": 30})
    );
    let closed = Entry {
        closed: true,
        ..Entry::default()
    };
    assert_eq!(json(&closed), serde_json::json!({"closed": true}));
    for e in [Entry::default(), full, closed] {
        assert_eq!(serde_json::from_value::<Entry>(json(&e)).unwrap(), e);
    }
}

#[test]
fn steps_serialise_their_kind() {
    let json = serde_json::to_value(step("u-1", "c-1", keep(60))).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "budget_id": "b", "customer_id": "u-1", "resource_id": "r",
            "reservation_id": "c-1", "kind": {"keep": {"amount": 60}}
        })
    );
    let release = serde_json::to_value(step("u-1", "c-1", StepKind::Release)).unwrap();
    assert_eq!(release["kind"], "release");
}

// define_budget.

fn define_budget(id: &str, action: Result<u64, &str>) -> BudgetCommand {
    BudgetCommand {
        command_id: cmd(id),
        budget_id: bud("b"),
        action: action.map_err(String::from),
    }
}

#[test]
fn define_budget_creates_a_budget_at_version_1() {
    let event = decide_budget(None, &define_budget("b-1", Ok(50_000)));
    assert_eq!(
        event,
        BudgetEvent {
            command_id: cmd("b-1"),
            command: CommandKind::DefineBudget,
            verdict: Verdict::Accepted,
            budget_id: bud("b"),
            per_customer_amount: Some(50_000),
            version: 1,
        }
    );
    assert!(event.is_accepted());
    assert_eq!(
        apply_budget(None, &event),
        Some(Budget {
            per_customer_amount: 50_000,
            version: 1
        })
    );
}

#[test]
fn define_budget_changes_the_cap_and_bumps_the_version() {
    let budget = Budget {
        per_customer_amount: 50_000,
        version: 2,
    };
    let event = decide_budget(Some(&budget), &define_budget("b-3", Ok(10)));
    assert!(event.is_accepted());
    assert_eq!((event.per_customer_amount, event.version), (Some(10), 3));
    assert_eq!(
        apply_budget(Some(budget), &event),
        Some(Budget {
            per_customer_amount: 10,
            version: 3
        })
    );
}

#[test]
fn define_budget_may_set_a_cap_of_zero() {
    let event = decide_budget(None, &define_budget("b-1", Ok(0)));
    let budget = apply_budget(None, &event);
    assert_eq!(budget.as_ref().map(|b| b.per_customer_amount), Some(0));
    let mut l = Ledger {
        budget,
        customers: HashMap::new(),
    };
    assert_eq!(
        l.set_aside(&[ask("u-1", "c-1", 1), ask("u-1", "c-2", 0)]),
        [Answer::Exceeds, Answer::SetAside]
    );
}

#[test]
fn an_invalid_define_budget_is_rejected_and_changes_nothing() {
    let detail = "per_customer_amount is required";
    let budget = Budget {
        per_customer_amount: 500,
        version: 4,
    };
    let event = decide_budget(Some(&budget), &define_budget("b-5", Err(detail)));
    assert_eq!(
        event.verdict,
        Verdict::Rejected {
            reason: Reason::Invalid,
            detail: detail.into()
        }
    );
    assert!(!event.is_accepted());
    assert_eq!(event.command, CommandKind::DefineBudget);
    assert_eq!(
        (event.per_customer_amount, event.version),
        (Some(500), 4),
        "the budget as it stands"
    );
    assert_eq!(apply_budget(Some(budget.clone()), &event), Some(budget));
    // On a budget not defined yet: no cap, version 0, still nothing.
    let event = decide_budget(None, &define_budget("b-1", Err(detail)));
    assert_eq!((event.per_customer_amount, event.version), (None, 0));
    assert_eq!(apply_budget(None, &event), None);
}

#[test]
fn a_conflict_reports_the_budget_as_it_stands_and_changes_nothing() {
    let budget = Budget {
        per_customer_amount: 500,
        version: 4,
    };
    let event = budget_conflict(Some(&budget), &define_budget("b-1", Ok(9)));
    assert_eq!(
        event.verdict.reason(),
        Some(Reason::IdempotencyConflict),
        "{event:?}"
    );
    assert!(!event.verdict.detail().unwrap_or("").is_empty());
    assert_eq!(
        (&event.command_id, event.command, &event.budget_id),
        (&cmd("b-1"), CommandKind::DefineBudget, &bud("b"))
    );
    assert_eq!((event.per_customer_amount, event.version), (Some(500), 4));
    assert_eq!(apply_budget(Some(budget.clone()), &event), Some(budget));
    let none = budget_conflict(None, &define_budget("b-1", Ok(9)));
    assert_eq!((none.per_customer_amount, none.version), (None, 0));
    assert_eq!(apply_budget(None, &none), None);
}

#[test]
fn folding_define_budgets_gives_the_last_accepted_cap() {
    let commands = [
        define_budget("b-1", Ok(100)),
        define_budget("b-2", Err("per_customer_amount is required")),
        define_budget("b-3", Ok(70)),
    ];
    let budget = commands.iter().fold(None, |budget, c| {
        let event = decide_budget(budget.as_ref(), c);
        apply_budget(budget, &event)
    });
    assert_eq!(
        budget,
        Some(Budget {
            per_customer_amount: 70,
            version: 2
        })
    );
}

#[test]
fn a_budget_event_serialises_budget_fields_and_no_resource_fields() {
    let event = decide_budget(None, &define_budget("b-1", Ok(50_000)));
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "command_id": "b-1", "command": "define_budget", "outcome": "accepted",
            "budget_id": "b", "per_customer_amount": 50_000, "version": 1
        })
    );
    assert_eq!(serde_json::from_value::<BudgetEvent>(json).unwrap(), event);
    let rejected = decide_budget(None, &define_budget("b-2", Err("bad")));
    let json = serde_json::to_value(&rejected).unwrap();
    assert_eq!(json["outcome"], "rejected");
    assert_eq!(json["reason"], "invalid");
    assert_eq!(json["detail"], "bad");
    assert!(json.get("per_customer_amount").is_none());
    assert!(json.get("resource_id").is_none());
}
