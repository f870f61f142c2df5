//! Deciding a batch: the commands of one resource that one transaction
//! commits together, decided in order against one snapshot.
//!
//! Idempotency lives here. A command whose record is in the snapshot
//! replays its stored event; the same `command_id` with another body is an
//! idempotency conflict, stored with the record so that its redeliveries
//! repeat it; a command twice in one batch is decided once. The result is
//! every command's outcome and the [`ChangeSet`] one transaction writes.
//!
//! Event ids and timestamps come from the `seal` function the caller
//! passes in, so a decision is a pure function of its inputs.

use super::command::{Action, Command, CommandKind};
use super::event::Event;
use super::ids::{CommandId, CustomerId};
use super::resource::{Reservation, Resource, State, apply, decide, idempotency_conflict};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// A delivered command: the parsed command and the hash of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The command to decide.
    pub command: Command,
    /// SHA-256 of the canonical body (of the raw body for invalid commands),
    /// hex-encoded. Two deliveries with the same `command_id` are the same
    /// command exactly when their hashes are equal.
    pub body_hash: String,
}

/// What is remembered of a decided command: the body that was decided and
/// the event published for it, in its sealed form `E`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<E> {
    /// The decided body's hash.
    pub hash: String,
    /// Its outcome, exactly as first published.
    pub event: E,
    /// Outcomes given to other bodies that reused the `command_id`.
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict<E>>,
}

/// The `idempotency_conflict` outcome given to one reused body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conflict<E> {
    /// The reused body's hash.
    pub hash: String,
    /// Its outcome, exactly as first published.
    pub event: E,
}

/// Conflicting bodies remembered per record. A producer that reuses one id
/// with more bodies than this still gets `idempotency_conflict` for each,
/// but the extra ones are not stored, so their redeliveries are decided
/// (still as conflicts) anew; the record cannot grow without bound.
pub const MAX_STORED_CONFLICTS: usize = 16;

/// Everything a batch can read, as loaded under one WATCH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot<E> {
    /// The resource, the holdings of the customers in [`Reads::customers`]
    /// (0 when absent) and the reservations in [`Reads::reservations`]
    /// that exist.
    pub state: State,
    /// The records found for [`Reads::commands`].
    pub records: HashMap<CommandId, Record<E>>,
}

/// What a batch needs loaded besides the resource itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reads<'a> {
    /// Every command's record, in batch order.
    pub commands: Vec<&'a CommandId>,
    /// The holdings of customers who reserve.
    pub customers: Vec<&'a CustomerId>,
    /// The reservations that cancels name.
    pub reservations: Vec<&'a CommandId>,
}

/// What a batch needs loaded.
pub fn reads(batch: &[Submission]) -> Reads<'_> {
    let mut reads = Reads::default();
    let mut customers = HashSet::new();
    let mut reservations = HashSet::new();
    for s in batch {
        reads.commands.push(&s.command.command_id);
        match &s.command.action {
            Action::Reserve { customer_id, .. } if customers.insert(customer_id) => {
                reads.customers.push(customer_id)
            }
            Action::Cancel { reservation_id } if reservations.insert(reservation_id) => {
                reads.reservations.push(reservation_id)
            }
            _ => {}
        }
    }
    reads
}

/// What became of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<E> {
    /// Decided now.
    Decided(E),
    /// Decided before (a duplicate delivery): the stored event, unchanged.
    Replayed(E),
    /// The `command_id` was decided with a different body: nothing changed.
    Conflict(E),
}

impl<E> Outcome<E> {
    /// The event to publish.
    pub fn event(&self) -> &E {
        match self {
            Outcome::Decided(e) | Outcome::Replayed(e) | Outcome::Conflict(e) => e,
        }
    }
}

/// A customer's holding after the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// The holding was loaded: this is its new value.
    Set(u32),
    /// The holding was not loaded (the customer only cancelled, and the
    /// reservation named them): take this many seats off it.
    Release(u32),
}

/// What one transaction writes. Every command decided in the batch leaves
/// a new record, and every new record's event is appended to the history
/// in record order, so an empty change set writes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet<E> {
    /// The resource's new scalars, when an accepted command changed them.
    pub resource: Option<Resource>,
    /// Holdings that changed.
    pub holdings: Vec<(CustomerId, Holding)>,
    /// Reservations made or cancelled, in their end state.
    pub reservations: Vec<(CommandId, Reservation)>,
    /// Records of the commands decided now, in decision order.
    pub records: Vec<(CommandId, Record<E>)>,
    /// Existing records with a conflicting body added (their lifetime is
    /// kept, so a conflict never outlives the record it shadows).
    pub conflicts: Vec<(CommandId, Record<E>)>,
    /// The commands accepted now, kept for good: a command that changed the
    /// state is recognised on redelivery even after its record expired.
    pub applied: Vec<(CommandId, Applied)>,
}

/// What is kept for good of an accepted command: the version its event
/// carries (which finds the event in the history) and its body's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The aggregate version after the command.
    pub version: u64,
    /// The decided body's hash.
    pub hash: String,
}

impl<E> ChangeSet<E> {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.conflicts.is_empty()
    }
}

/// A decided batch: one outcome per command, in batch order, and the
/// writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision<E> {
    /// One per command of the batch.
    pub outcomes: Vec<Outcome<E>>,
    /// What to commit.
    pub changes: ChangeSet<E>,
}

/// Decides `batch` in order against `snapshot`, each command seeing the
/// state the previous ones left. `seal` turns a new event into its
/// publishable form (adding its id and time).
pub fn decide_batch<E: Clone>(
    snapshot: Snapshot<E>,
    batch: &[Submission],
    mut seal: impl FnMut(Event) -> E,
) -> Decision<E> {
    let Snapshot {
        mut state,
        mut records,
    } = snapshot;
    let loaded: HashSet<CustomerId> = state.holdings.keys().cloned().collect();
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut fresh: Vec<&CommandId> = Vec::new();
    let mut conflicted: Vec<&CommandId> = Vec::new();
    let mut accepted: Vec<Event> = Vec::new();
    let mut applied: Vec<(CommandId, Applied)> = Vec::new();
    for s in batch {
        let id = &s.command.command_id;
        let outcome = match records.get_mut(id) {
            Some(record) if record.hash == s.body_hash => Outcome::Replayed(record.event.clone()),
            Some(record) => match record.conflicts.iter().find(|c| c.hash == s.body_hash) {
                Some(stored) => Outcome::Conflict(stored.event.clone()),
                None => {
                    let event = seal(idempotency_conflict(&state, &s.command));
                    if record.conflicts.len() < MAX_STORED_CONFLICTS {
                        record.conflicts.push(Conflict {
                            hash: s.body_hash.clone(),
                            event: event.clone(),
                        });
                        if !fresh.contains(&id) && !conflicted.contains(&id) {
                            conflicted.push(id);
                        }
                    }
                    Outcome::Conflict(event)
                }
            },
            None => {
                let event = decide(&state, &s.command);
                let sealed = seal(event.clone());
                if event.is_accepted() {
                    let hash = s.body_hash.clone();
                    applied.push((
                        id.clone(),
                        Applied {
                            version: event.version,
                            hash,
                        },
                    ));
                    state = apply(state, &event);
                    accepted.push(event);
                }
                records.insert(
                    id.clone(),
                    Record {
                        hash: s.body_hash.clone(),
                        event: sealed.clone(),
                        conflicts: Vec::new(),
                    },
                );
                fresh.push(id);
                Outcome::Decided(sealed)
            }
        };
        outcomes.push(outcome);
    }
    let mut take = |ids: Vec<&CommandId>| -> Vec<(CommandId, Record<E>)> {
        ids.into_iter()
            .filter_map(|id| Some((id.clone(), records.remove(id)?)))
            .collect()
    };
    let records = take(fresh);
    let conflicts = take(conflicted);
    let changes = ChangeSet {
        holdings: holdings(&accepted, &loaded, &state),
        reservations: reservations(&accepted, &state),
        resource: state.resource.filter(|_| !accepted.is_empty()),
        records,
        conflicts,
        applied,
    };
    Decision { outcomes, changes }
}

/// The holdings the accepted events changed. A loaded holding gets its end
/// value; one that was not loaded (a customer who only cancels) is
/// decremented by what their cancels released.
fn holdings(
    accepted: &[Event],
    loaded: &HashSet<CustomerId>,
    state: &State,
) -> Vec<(CustomerId, Holding)> {
    let mut out: Vec<(CustomerId, Holding)> = Vec::new();
    let mut index: HashMap<&CustomerId, usize> = HashMap::new();
    for event in accepted {
        let (Some(customer), Some(quantity)) = (&event.details.customer_id, event.details.quantity)
        else {
            continue;
        };
        let change = if loaded.contains(customer) {
            Holding::Set(state.held_by(customer))
        } else {
            Holding::Release(quantity)
        };
        match (index.get(customer), change) {
            (Some(&i), Holding::Release(q)) => {
                if let Holding::Release(total) = &mut out[i].1 {
                    *total += q;
                }
            }
            (Some(&i), set) => out[i].1 = set,
            (None, change) => {
                index.insert(customer, out.len());
                out.push((customer.clone(), change));
            }
        }
    }
    out
}

/// The reservations the accepted events made or cancelled, each once, in
/// its end state.
fn reservations(accepted: &[Event], state: &State) -> Vec<(CommandId, Reservation)> {
    let mut seen = HashSet::new();
    accepted
        .iter()
        .filter_map(|event| match event.command {
            CommandKind::Reserve => Some(&event.command_id),
            CommandKind::Cancel => event.details.reservation_id.as_ref(),
            CommandKind::Define | CommandKind::Unknown => None,
        })
        .filter(|id| seen.insert(*id))
        .filter_map(|id| Some((id.clone(), state.reservations.get(id)?.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::Reason;
    use crate::domain::testing::{cancel, define, given, reserve};

    /// A sealed event for tests: the event and the order it was sealed in.
    type Sealed = (u32, Event);

    fn submit(command: Command) -> Submission {
        // The hash of a command is its debug form: equal commands, equal
        // hashes.
        let body_hash = format!("{:?}", command.action);
        Submission { command, body_hash }
    }

    fn batch(commands: impl IntoIterator<Item = Command>) -> Vec<Submission> {
        commands.into_iter().map(submit).collect()
    }

    /// The resource after `history`, loaded as the store would for `batch`:
    /// only the customers and reservations the batch names.
    fn snapshot(history: &[Command], batch: &[Submission]) -> Snapshot<Sealed> {
        let full = given(history).state();
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
            state,
            records: HashMap::new(),
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
        assert!(d.changes.reservations[0].1.cancelled);
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
}
