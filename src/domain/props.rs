//! Property tests: random command sequences (defines, reserves, holds,
//! confirms, cancels, with time passing) keep every invariant, folding
//! the events gives the state, and a batch decides exactly as the same
//! commands one by one.

use super::batch::{Snapshot, Submission, decide_batch};
use super::command::{Action, Command, LimitChange};
use super::event::Event;
use super::ids::{CommandId, CustomerId, ResourceId};
use super::resource::{Millis, State, Status, apply, decide, expire};
use proptest::prelude::*;
use std::collections::HashMap;

const T0: Millis = 1_700_000_000_000;

/// One step: a command, after some milliseconds.
#[derive(Debug, Clone)]
struct Step {
    after_ms: Millis,
    command: Command,
}

fn id(s: String) -> CommandId {
    CommandId::try_from(s).unwrap()
}

fn customer(n: u8) -> CustomerId {
    CustomerId::try_from(format!("u{n}")).unwrap()
}

/// A random step; `i` is its position (its command id), and earlier ids
/// are what confirms and cancels name.
fn step(i: usize) -> impl Strategy<Value = Step> {
    let earlier = i.max(1);
    let action = prop_oneof![
        1 => (0u32..12, prop::option::of(1u32..5)).prop_map(|(capacity, limit)| Action::Define {
            capacity,
            per_customer_limit: limit.into(),
            price: None,
            budget: Default::default(),
        }),
        4 => (0u8..4, 1u32..4).prop_map(|(c, quantity)| Action::Reserve {
            customer_id: customer(c),
            quantity,
        }),
        4 => (0u8..4, 1u32..4, 1u32..4).prop_map(|(c, quantity, hold_secs)| Action::Hold {
            customer_id: customer(c),
            quantity,
            hold_secs,
        }),
        2 => (0..earlier).prop_map(|k| Action::Confirm { hold_id: id(format!("c{k}")) }),
        2 => (0..earlier).prop_map(|k| Action::Cancel { reservation_id: id(format!("c{k}")) }),
    ];
    (0u64..2_500, action).prop_map(move |(after_ms, action)| Step {
        after_ms,
        command: Command {
            command_id: id(format!("c{i}")),
            resource_id: ResourceId::try_from("r").unwrap(),
            action,
        },
    })
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    (1usize..40).prop_flat_map(|n| (0..n).map(step).collect::<Vec<_>>())
}

/// Every invariant of one state.
fn check(state: &State) -> Result<(), TestCaseError> {
    let Some(r) = &state.resource else {
        return Ok(());
    };
    prop_assert!(
        u64::from(r.reserved) + u64::from(r.held) <= u64::from(r.capacity),
        "oversold: {r:?}"
    );
    let held: u32 = state
        .reservations
        .values()
        .filter(|x| x.status == Status::Held)
        .map(|x| x.quantity)
        .sum();
    prop_assert_eq!(held, r.held, "held seats are the live holds'");
    let taken: u32 = state.holdings.values().sum();
    prop_assert_eq!(taken, r.reserved + r.held, "holdings add up");
    Ok(())
}

/// Decides the steps one by one, expiring what is due first, as a batch
/// does; returns every event and the state.
fn one_by_one(steps: &[Step]) -> Result<(Vec<Event>, State), TestCaseError> {
    let r = ResourceId::try_from("r").unwrap();
    let (mut state, mut now, mut events) = (State::default(), T0, Vec::new());
    for s in steps {
        now += s.after_ms;
        for hold in state.due(now) {
            let e = expire(&state, &r, &hold, now).expect("due");
            state = apply(state, &e);
            events.push(e);
            check(&state)?;
        }
        let before = state.clone();
        let e = decide(&state, &s.command, now);
        if let (true, Some(limit)) = (
            e.is_accepted()
                && matches!(
                    s.command.action,
                    Action::Reserve { .. } | Action::Hold { .. }
                ),
            before.resource.as_ref().and_then(|r| r.per_customer_limit),
        ) {
            let c = e.details.customer_id.as_ref().unwrap();
            prop_assert!(
                before.held_by(c) + e.details.quantity.unwrap() <= limit,
                "over the limit: {e:?}"
            );
        }
        state = apply(state, &e);
        events.push(e);
        check(&state)?;
    }
    Ok((events, state))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn random_sequences_keep_every_invariant_and_fold_to_the_state(steps in steps()) {
        let (events, state) = one_by_one(&steps)?;
        let folded = events.iter().fold(State::default(), apply);
        prop_assert_eq!(folded, state);
    }

    #[test]
    fn a_batch_decides_as_its_commands_one_by_one(steps in steps()) {
        // All at one moment: the batch sees one `now`.
        let at_once: Vec<Step> = steps.iter().map(|s| Step { after_ms: 0, ..s.clone() }).collect();
        let (expected, state) = one_by_one(&at_once)?;
        let batch: Vec<Submission> = at_once
            .iter()
            .map(|s| Submission {
                command: s.command.clone(),
                body_hash: format!("{:?}", s.command.action).into(),
            })
            .collect();
        let snapshot = Snapshot {
            resource_id: ResourceId::try_from("r").unwrap(),
            state: State::default(),
            records: HashMap::new(),
            now: T0,
            due: Vec::new(),
            funds: HashMap::new(),
        };
        let decision = decide_batch(snapshot, &batch, |e| e);
        let decided: Vec<Event> = decision.outcomes.iter().map(|o| o.event().clone()).collect();
        prop_assert_eq!(decided, expected);
        let changed = !decision.changes.applied.is_empty();
        prop_assert_eq!(decision.changes.resource, state.resource.filter(|_| changed));
    }
}

#[test]
fn limit_change_from_option() {
    // The strategy above relies on this conversion.
    assert_eq!(LimitChange::from(Some(3)), LimitChange::Set(3));
}
