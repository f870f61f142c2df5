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

use super::budget::{Answer, Ask, BudgetStep, Funds, StepKind};
use super::command::{Action, Command, CommandKind};
use super::event::Event;
use super::ids::{BudgetId, CommandId, CustomerId, ResourceId};
use super::resource::{
    Millis, Reservation, Resource, State, Status, apply, cost, decide_funded, expire,
    idempotency_conflict,
};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// A delivered command: the parsed command and the hash of its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// The command to decide.
    pub command: Command,
    /// SHA-256 of the canonical body (of the raw body for invalid commands),
    /// hex-encoded. Two deliveries with the same `command_id` are the same
    /// command exactly when their hashes are equal. Shared: the command's
    /// record and `applied` entry keep the same one.
    pub body_hash: Arc<str>,
}

/// What is remembered of a decided command: the body that was decided and
/// the event published for it, in its sealed form `E`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record<E> {
    /// The decided body's hash.
    pub hash: Arc<str>,
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
    pub hash: Arc<str>,
    /// Its outcome, exactly as first published.
    pub event: E,
}

/// Conflicting bodies remembered per record. A producer that reuses one id
/// with more bodies than this still gets `idempotency_conflict` for each,
/// but the extra ones are not stored, so their redeliveries are decided
/// (still as conflicts) anew; the record cannot grow without bound.
pub const MAX_STORED_CONFLICTS: usize = 16;

/// Everything a batch can read, as loaded under one WATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot<E> {
    /// The resource the batch is about.
    pub resource_id: ResourceId,
    /// The resource, the holdings of the customers in [`Reads::customers`]
    /// (0 when absent) and the reservations in [`Reads::reservations`]
    /// that exist.
    pub state: State,
    /// The records found for [`Reads::commands`].
    pub records: HashMap<CommandId, Record<E>>,
    /// The moment the batch is decided at, by the one clock every replica
    /// shares (Redis's).
    pub now: Millis,
    /// Every live hold of the resource that has run out at `now`.
    pub due: Vec<DueHold>,
    /// What budgets answered for the batch's takes, by command: empty on
    /// the first try, and for resources without a budget.
    pub funds: HashMap<CommandId, Funds>,
}

/// A live hold as the resource's due-time index keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueHold {
    /// The hold's id.
    pub id: CommandId,
    /// Whose seats.
    pub customer_id: CustomerId,
    /// How many.
    pub quantity: u32,
    /// When it runs out.
    pub expires_at: Millis,
    /// What it cost, if it had a price or a budget.
    pub amount: Option<u64>,
    /// The budget that paid.
    pub budget_id: Option<BudgetId>,
}

impl DueHold {
    /// The hold as a reservation.
    fn reservation(&self) -> Reservation {
        Reservation {
            customer_id: self.customer_id.clone(),
            quantity: self.quantity,
            status: Status::Held,
            expires_at: Some(self.expires_at),
            amount: self.amount,
            budget_id: self.budget_id.clone(),
        }
    }
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
            Action::Hold { customer_id, .. } if customers.insert(customer_id) => {
                reads.customers.push(customer_id)
            }
            Action::Cancel { reservation_id } if reservations.insert(reservation_id) => {
                reads.reservations.push(reservation_id)
            }
            Action::Confirm { hold_id } if reservations.insert(hold_id) => {
                reads.reservations.push(hold_id)
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
    /// The holds that ran out, by hold id, with their `expire` events, in
    /// the order decided: before the batch's commands.
    pub expiries: Vec<(CommandId, E)>,
    /// Live holds taken now: into the due-time index.
    pub holds_added: Vec<DueHold>,
    /// Holds no longer live (confirmed, cancelled, expired): out of it.
    pub holds_removed: Vec<DueHold>,
}

/// What is kept for good of an accepted command: the version its event
/// carries (which finds the event in the history) and its body's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The aggregate version after the command.
    pub version: u64,
    /// The decided body's hash.
    pub hash: Arc<str>,
}

impl<E> ChangeSet<E> {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.conflicts.is_empty() && self.expiries.is_empty()
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
    /// Takes whose cost no budget has answered for (in the snapshot's
    /// `funds`): the decision assumed the money was set aside. When there
    /// are any, nothing may be committed: set them aside, add the answers
    /// to the snapshot and decide again.
    pub asks: Vec<(BudgetId, Ask)>,
    /// Refunds on the budgets the resource was paid from before, for every
    /// take of the batch: money set aside there before the resource moved
    /// to another budget (in this batch, or by another replica between a
    /// set-aside and its commit) would otherwise stay set aside. A refund
    /// gives back only what is set aside, never what a take kept.
    pub refunds: Vec<BudgetStep>,
}

/// What a stored record makes of a delivery whose body hashes to `hash`:
/// the replay of its event, the conflict stored for that body, or a new
/// conflict (made by `conflict`), remembered in the record while it has
/// room. The flag says whether the record changed (and must be written).
pub fn remembered<E: Clone>(
    record: &mut Record<E>,
    hash: &Arc<str>,
    conflict: impl FnOnce() -> E,
) -> (Outcome<E>, bool) {
    if record.hash == *hash {
        return (Outcome::Replayed(record.event.clone()), false);
    }
    if let Some(stored) = record.conflicts.iter().find(|c| c.hash == *hash) {
        return (Outcome::Conflict(stored.event.clone()), false);
    }
    let event = conflict();
    let room = record.conflicts.len() < MAX_STORED_CONFLICTS;
    if room {
        record.conflicts.push(Conflict {
            hash: hash.clone(),
            event: event.clone(),
        });
    }
    (Outcome::Conflict(event), room)
}

/// Decides `batch` in order against `snapshot`, each command seeing the
/// state the previous ones left, at the snapshot's `now`. First, every hold
/// that has run out expires, so its seats are for sale to the batch. `seal`
/// turns a new event into its publishable form (adding its id and time).
pub fn decide_batch<E: Clone>(
    snapshot: Snapshot<E>,
    batch: &[Submission],
    mut seal: impl FnMut(Event) -> E,
) -> Decision<E> {
    let Snapshot {
        resource_id,
        mut state,
        mut records,
        now,
        due,
        funds,
    } = snapshot;
    let mut asks = Vec::new();
    let loaded: HashSet<CustomerId> = state.holdings.keys().cloned().collect();
    let mut accepted: Vec<Event> = Vec::new();
    let mut expiries: Vec<(CommandId, E)> = Vec::new();
    for hold in &due {
        state
            .reservations
            .entry(hold.id.clone())
            .or_insert_with(|| hold.reservation());
        if let Some(event) = expire(&state, &resource_id, &hold.id, now) {
            expiries.push((hold.id.clone(), seal(event.clone())));
            state = apply(state, &event);
            accepted.push(event);
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut fresh: Vec<&CommandId> = Vec::new();
    let mut conflicted: Vec<&CommandId> = Vec::new();
    let mut applied: Vec<(CommandId, Applied)> = Vec::new();
    for s in batch {
        let id = &s.command.command_id;
        let outcome = match records.get_mut(id) {
            Some(record) => {
                let conflict = || seal(idempotency_conflict(&state, &s.command));
                let (outcome, changed) = remembered(record, &s.body_hash, conflict);
                if changed && !fresh.contains(&id) && !conflicted.contains(&id) {
                    conflicted.push(id);
                }
                outcome
            }
            None => {
                let paid =
                    cost(&state, &s.command).map(|(budget_id, amount)| match funds.get(id) {
                        Some(f) if f.budget_id == budget_id && f.amount == amount => f.clone(),
                        _ => {
                            if let Some(customer_id) = s.command.customer() {
                                let ask = Ask {
                                    customer_id: customer_id.clone(),
                                    resource_id: resource_id.clone(),
                                    command_id: id.clone(),
                                    amount,
                                };
                                asks.push((budget_id.clone(), ask));
                            }
                            Funds {
                                budget_id,
                                amount,
                                answer: Answer::SetAside,
                            }
                        }
                    });
                let event = decide_funded(&state, &s.command, now, paid.as_ref());
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
    let (holds_added, holds_removed) = due_index(&accepted, &state);
    // The budgets the resource left (not the one it is back on, if any).
    let former: Vec<&BudgetId> = state.resource.as_ref().map_or(Vec::new(), |r| {
        let current = r.budget_id.as_ref();
        r.former_budgets
            .iter()
            .filter(|b| Some(*b) != current)
            .collect()
    });
    // Not for a body that reused another's id: its refund could drop the
    // money of the id's own take before that take's keep.
    let refunds = batch
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| !matches!(o, Outcome::Conflict(_)))
        .filter_map(|(s, _)| Some((s.command.customer()?, &s.command.command_id)))
        .flat_map(|(customer, id)| {
            former.iter().map(|budget| BudgetStep {
                budget_id: (*budget).clone(),
                customer_id: customer.clone(),
                resource_id: resource_id.clone(),
                reservation_id: id.clone(),
                kind: StepKind::Refund,
            })
        })
        .collect();
    let changes = ChangeSet {
        holdings: holdings(&accepted, &loaded, &state),
        reservations: reservations(&accepted, &state),
        resource: state.resource.filter(|_| !accepted.is_empty()),
        records,
        conflicts,
        applied,
        expiries,
        holds_added,
        holds_removed,
    };
    Decision {
        outcomes,
        changes,
        asks,
        refunds,
    }
}

/// What the accepted events add to and remove from the due-time index.
fn due_index(accepted: &[Event], state: &State) -> (Vec<DueHold>, Vec<DueHold>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    for event in accepted {
        let id = match event.command {
            CommandKind::Hold => &event.command_id,
            CommandKind::Confirm | CommandKind::Expire => match &event.details.hold_id {
                Some(id) => id,
                None => continue,
            },
            CommandKind::Cancel => match &event.details.reservation_id {
                Some(id) => id,
                None => continue,
            },
            _ => continue,
        };
        let Some(r) = state.reservations.get(id) else {
            continue;
        };
        let Some(expires_at) = r.expires_at else {
            continue;
        };
        let hold = DueHold {
            id: id.clone(),
            customer_id: r.customer_id.clone(),
            quantity: r.quantity,
            expires_at,
            amount: r.amount,
            budget_id: r.budget_id.clone(),
        };
        if event.command == CommandKind::Hold {
            added.push(hold);
        } else {
            removed.push(hold);
        }
    }
    (added, removed)
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
        // A confirm keeps the seats with the customer; a define names none.
        if !matches!(
            event.command,
            CommandKind::Reserve | CommandKind::Hold | CommandKind::Cancel | CommandKind::Expire
        ) {
            continue;
        }
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
            CommandKind::Reserve | CommandKind::Hold => Some(&event.command_id),
            CommandKind::Cancel => event.details.reservation_id.as_ref(),
            CommandKind::Confirm | CommandKind::Expire => event.details.hold_id.as_ref(),
            CommandKind::Define | CommandKind::DefineBudget | CommandKind::Unknown => None,
        })
        .filter(|id| seen.insert(*id))
        .filter_map(|id| Some((id.clone(), state.reservations.get(id)?.clone())))
        .collect()
}

#[cfg(test)]
mod tests;
