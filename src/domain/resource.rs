//! One resource's aggregate: its state, the rules that decide a command
//! against it, and the fold that applies an event to it.
//!
//! Time is an input: every decision is made at `now`, milliseconds since the
//! Unix epoch by one clock (Redis's), so a hold runs out at the same moment
//! for every replica, whatever their own clocks say.

use super::budget::{Answer, Funds};
use super::command::{Action, Command, CommandKind};
use super::event::{Details, Event, Reason, Verdict};
use super::ids::{BudgetId, CommandId, CustomerId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The longest a hold may last, in seconds (a day).
pub const MAX_HOLD_SECS: u32 = 86_400;

/// A moment as the contract writes it (RFC 3339 UTC).
pub fn at(ms: Millis) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The scalar part of a defined resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Total seats.
    pub capacity: u32,
    /// Seats taken for good: accepted reserves and confirmed holds, not
    /// cancelled.
    pub reserved: u32,
    /// Seats in live holds.
    #[serde(default)]
    pub held: u32,
    /// Most seats one customer may hold.
    #[serde(default)]
    pub per_customer_limit: Option<u32>,
    /// Price per seat, in minor units.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub price: u32,
    /// The budget takes are paid from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<BudgetId>,
    /// Budgets the resource was paid from before: money set aside there
    /// for a take that is decided after the move must be given back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_budgets: Vec<BudgetId>,
    /// Bumped by every accepted command and expiry.
    pub version: u64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Resource {
    /// Seats still for sale.
    pub fn remaining(&self) -> u32 {
        self.capacity
            .saturating_sub(self.reserved)
            .saturating_sub(self.held)
    }
}

/// Where a reservation or hold stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// An accepted reserve: the seats are taken for good.
    Reserved,
    /// A live hold: the seats are taken until it runs out.
    Held,
    /// A confirmed hold: the seats are taken for good.
    Confirmed,
    /// A cancel gave the seats back.
    Cancelled,
    /// The hold ran out and gave the seats back.
    Expired,
}

/// An accepted reservation or hold, kept so it can be cancelled (and a hold
/// confirmed or expired).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Who has the seats.
    pub customer_id: CustomerId,
    /// How many seats.
    pub quantity: u32,
    /// Where it stands.
    pub status: Status,
    /// When a hold runs out; `None` for a reserve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Millis>,
    /// What the seats cost, when the resource has a price or a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
    /// The budget that amount was paid from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<BudgetId>,
}

impl Reservation {
    /// Whether this is a hold (live, confirmed, cancelled or expired).
    pub fn is_hold(&self) -> bool {
        self.expires_at.is_some()
    }

    /// Whether this is a live hold that has run out at `now`.
    pub fn is_due(&self, now: Millis) -> bool {
        self.status == Status::Held && self.expires_at.is_some_and(|t| t <= now)
    }
}

/// The part of one resource's aggregate that a set of commands can touch.
///
/// The shell loads the scalar [`Resource`] plus the holdings of every
/// customer and every reservation the commands name; `decide` treats a
/// customer absent from `holdings` as holding nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// `None` until a `define` is accepted.
    pub resource: Option<Resource>,
    /// Seats held per customer, reserved or in live holds.
    pub holdings: HashMap<CustomerId, u32>,
    /// Reservations and holds by id (the reserve's or hold's `command_id`).
    pub reservations: HashMap<CommandId, Reservation>,
}

impl State {
    /// Seats for sale now (0 for an unknown resource).
    pub fn remaining(&self) -> u32 {
        self.resource.as_ref().map_or(0, Resource::remaining)
    }

    /// The aggregate version (0 for an unknown resource).
    pub fn version(&self) -> u64 {
        self.resource.as_ref().map_or(0, |r| r.version)
    }

    /// Seats in live holds (0 for an unknown resource).
    pub fn held(&self) -> u32 {
        self.resource.as_ref().map_or(0, |r| r.held)
    }

    /// The live holds that have run out at `now`, earliest first (ties by
    /// id).
    pub fn due(&self, now: Millis) -> Vec<CommandId> {
        let mut due: Vec<(&Millis, &CommandId)> = self
            .reservations
            .iter()
            .filter(|(_, r)| r.is_due(now))
            .filter_map(|(id, r)| Some((r.expires_at.as_ref()?, id)))
            .collect();
        due.sort();
        due.into_iter().map(|(_, id)| id.clone()).collect()
    }

    /// Seats `customer` holds (0 when absent).
    pub fn held_by(&self, customer: &CustomerId) -> u32 {
        self.holdings.get(customer).copied().unwrap_or(0)
    }
}

/// What a take (reserve or hold) costs on its resource, and the budget
/// that pays: `None` for other commands, unknown resources and resources
/// without a budget. The amount is at the price in force in `state`.
pub fn cost(state: &State, command: &Command) -> Option<(BudgetId, u64)> {
    let quantity = match &command.action {
        Action::Reserve { quantity, .. } | Action::Hold { quantity, .. } => *quantity,
        _ => return None,
    };
    let r = state.resource.as_ref()?;
    let budget = r.budget_id.clone()?;
    Some((budget, u64::from(quantity) * u64::from(r.price)))
}

/// Decides the outcome of `command` against `state` at `now`. Pure and
/// total: every command gets exactly one event. A take on a resource with
/// a budget is decided as if the budget were unknown: see [`decide_funded`].
pub fn decide(state: &State, command: &Command, now: Millis) -> Event {
    decide_funded(state, command, now, None)
}

/// Decides like [`decide`], with what the budget answered when asked to set
/// the take's cost aside. Funds for another budget or amount than the
/// take's [`cost`] count as no answer, and no answer as an unknown budget:
/// a take is never accepted on money that was not set aside for it.
pub fn decide_funded(
    state: &State,
    command: &Command,
    now: Millis,
    funds: Option<&Funds>,
) -> Event {
    let answer = match (cost(state, command), funds) {
        (Some((budget, amount)), Some(f)) if f.budget_id == budget && f.amount == amount => {
            Some(f.answer)
        }
        (Some(_), _) => Some(Answer::Unknown),
        (None, _) => None,
    };
    let (mut details, decision) = match &command.action {
        Action::Define {
            capacity,
            per_customer_limit,
            price,
            budget,
        } => {
            let current = state.resource.as_ref();
            (
                Details {
                    capacity: Some(*capacity),
                    // What is in force after the define: folding the event
                    // needs no other input.
                    per_customer_limit: per_customer_limit
                        .applied_to(current.and_then(|r| r.per_customer_limit)),
                    price: price.or(current.map(|r| r.price)).filter(|p| *p > 0),
                    budget_id: budget.applied_to(current.and_then(|r| r.budget_id.as_ref())),
                    ..Details::default()
                },
                decide_define(state, *capacity),
            )
        }
        Action::Reserve {
            customer_id,
            quantity,
        } => (
            take_details(state, customer_id, *quantity),
            decide_take(state, customer_id, *quantity, answer),
        ),
        Action::Hold {
            customer_id,
            quantity,
            hold_secs,
        } => (
            Details {
                expires_at: Some(at(now + u64::from(*hold_secs) * 1000)),
                ..take_details(state, customer_id, *quantity)
            },
            decide_take(state, customer_id, *quantity, answer),
        ),
        Action::Confirm { hold_id } => {
            let hold = state.reservations.get(hold_id).filter(|r| r.is_hold());
            (
                Details {
                    hold_id: Some(hold_id.clone()),
                    customer_id: hold.map(|r| r.customer_id.clone()),
                    quantity: hold.map(|r| r.quantity),
                    expires_at: hold.and_then(|r| r.expires_at).map(at),
                    ..Details::default()
                },
                decide_confirm(state, hold_id, now),
            )
        }
        Action::Cancel { reservation_id } => {
            let reservation = state.reservations.get(reservation_id);
            let decision = decide_cancel(state, reservation_id, now);
            // What is given back, only when something is.
            let refund = reservation.filter(|_| decision.is_ok());
            (
                Details {
                    reservation_id: Some(reservation_id.clone()),
                    customer_id: reservation.map(|r| r.customer_id.clone()),
                    quantity: reservation.map(|r| r.quantity),
                    amount: refund.and_then(|r| r.amount),
                    budget_id: refund.and_then(|r| r.budget_id.clone()),
                    ..Details::default()
                },
                decision,
            )
        }
        Action::Invalid { detail, .. } => {
            (Details::default(), Err((Reason::Invalid, detail.clone())))
        }
    };
    if matches!(command.action, Action::Reserve { .. } | Action::Hold { .. }) {
        // The cost is told when it was paid or is why the take was refused.
        let paid_or_refused = match &decision {
            Ok(()) => true,
            Err((reason, _)) => *reason == Reason::BudgetExceeded,
        };
        if !paid_or_refused {
            details.amount = None;
        }
    }
    let verdict = match decision {
        Ok(()) => Verdict::Accepted,
        Err((reason, detail)) => Verdict::Rejected { reason, detail },
    };
    let event = Event {
        command_id: command.command_id.clone(),
        command: command.action.kind(),
        verdict,
        resource_id: command.resource_id.clone(),
        details,
        remaining: state.remaining(),
        held: None,
        version: state.version(),
    };
    reported(state, event)
}

/// The expiry of hold `hold_id` if it has run out at `now`: an accepted
/// `expire` event (`command_id` = `expire:<hold id>`) that gives its seats
/// back; `None` if it is not a live hold that has run out.
pub fn expire(
    state: &State,
    resource_id: &super::ResourceId,
    hold_id: &CommandId,
    now: Millis,
) -> Option<Event> {
    let hold = state.reservations.get(hold_id).filter(|r| r.is_due(now))?;
    let event = Event {
        command_id: CommandId::expiry_of(hold_id),
        command: CommandKind::Expire,
        verdict: Verdict::Accepted,
        resource_id: resource_id.clone(),
        details: Details {
            hold_id: Some(hold_id.clone()),
            customer_id: Some(hold.customer_id.clone()),
            quantity: Some(hold.quantity),
            expires_at: hold.expires_at.map(at),
            amount: hold.amount,
            budget_id: hold.budget_id.clone(),
            ..Details::default()
        },
        remaining: state.remaining(),
        held: None,
        version: state.version(),
    };
    Some(reported(state, event))
}

/// The event reporting the state after itself: applying it to a copy of the
/// scalars is the one place that arithmetic lives. `held` is reported on the
/// events of a resource with holds, and on every hold, confirm and expiry.
fn reported(state: &State, mut event: Event) -> Event {
    let after = if event.is_accepted() {
        apply_scalars(state.resource.clone(), &event, state)
    } else {
        state.resource.clone().unwrap_or(EMPTY)
    };
    event.remaining = after.remaining();
    event.version = after.version;
    let about_holds = matches!(
        event.command,
        CommandKind::Hold | CommandKind::Confirm | CommandKind::Expire
    );
    if about_holds || after.held > 0 || state.held() > 0 {
        event.held = Some(after.held);
    }
    event
}

/// A resource before its first define.
const EMPTY: Resource = Resource {
    capacity: 0,
    reserved: 0,
    held: 0,
    per_customer_limit: None,
    price: 0,
    budget_id: None,
    former_budgets: Vec::new(),
    version: 0,
};

/// A take's details: who, how many, and on a resource with a price or a
/// budget, the cost and the budget asked.
fn take_details(state: &State, customer: &CustomerId, quantity: u32) -> Details {
    let r = state.resource.as_ref();
    let priced = r.is_some_and(|r| r.price > 0 || r.budget_id.is_some());
    Details {
        customer_id: Some(customer.clone()),
        quantity: Some(quantity),
        amount: priced
            .then(|| r.map(|r| u64::from(quantity) * u64::from(r.price)))
            .flatten(),
        budget_id: r.and_then(|r| r.budget_id.clone()),
        ..Details::default()
    }
}

/// The rejection of a command whose `command_id` was decided before with
/// another body. It reports the current state and changes nothing.
pub fn idempotency_conflict(state: &State, command: &Command) -> Event {
    let event = Event {
        command_id: command.command_id.clone(),
        command: command.action.kind(),
        verdict: Verdict::Rejected {
            reason: Reason::IdempotencyConflict,
            detail: "command_id was already used with a different body".into(),
        },
        resource_id: command.resource_id.clone(),
        details: Details::default(),
        remaining: state.remaining(),
        held: None,
        version: state.version(),
    };
    reported(state, event)
}

type Decision = Result<(), (Reason, String)>;

fn decide_define(state: &State, capacity: u32) -> Decision {
    match &state.resource {
        Some(r) if u64::from(capacity) < u64::from(r.reserved) + u64::from(r.held) => Err((
            Reason::CapacityBelowReserved,
            format!(
                "capacity {capacity} is below the {} seats reserved and {} held",
                r.reserved, r.held
            ),
        )),
        _ => Ok(()),
    }
}

/// A reserve or a hold: the same rules, in the contract's order of
/// reasons. `answer` is the budget's, for a resource with one.
fn decide_take(
    state: &State,
    customer: &CustomerId,
    quantity: u32,
    answer: Option<Answer>,
) -> Decision {
    let Some(r) = &state.resource else {
        return Err(unknown_resource());
    };
    if answer == Some(Answer::Unknown) {
        return Err((
            Reason::UnknownBudget,
            format!(
                "budget {} has not been defined",
                r.budget_id.as_ref().map_or("", |b| b.as_str())
            ),
        ));
    }
    if quantity > r.remaining() {
        return Err((
            Reason::SoldOut,
            format!("{} seats remain, {quantity} asked for", r.remaining()),
        ));
    }
    let held = state.held_by(customer);
    if let Some(limit) = r.per_customer_limit
        && u64::from(held) + u64::from(quantity) > u64::from(limit)
    {
        return Err((
            Reason::CustomerLimit,
            format!("customer holds {held} of at most {limit} seats and asked for {quantity}"),
        ));
    }
    if answer == Some(Answer::Exceeds) {
        return Err((
            Reason::BudgetExceeded,
            format!(
                "{} would take the customer over budget {}",
                u64::from(quantity) * u64::from(r.price),
                r.budget_id.as_ref().map_or("", |b| b.as_str())
            ),
        ));
    }
    Ok(())
}

fn decide_confirm(state: &State, hold_id: &CommandId, now: Millis) -> Decision {
    if state.resource.is_none() {
        return Err(unknown_resource());
    }
    let hold = state.reservations.get(hold_id).filter(|r| r.is_hold());
    match hold.map(|h| (h.status, h.is_due(now))) {
        None => Err((Reason::UnknownHold, format!("no hold {hold_id}"))),
        Some((Status::Held, true) | (Status::Expired, _)) => Err(expired(hold_id)),
        Some((Status::Held, false)) => Ok(()),
        Some((Status::Confirmed, _)) => Err((
            Reason::AlreadyConfirmed,
            format!("hold {hold_id} was already confirmed"),
        )),
        Some((Status::Cancelled, _)) => Err(cancelled(hold_id)),
        Some((Status::Reserved, _)) => Err((Reason::UnknownHold, format!("no hold {hold_id}"))),
    }
}

fn decide_cancel(state: &State, reservation_id: &CommandId, now: Millis) -> Decision {
    if state.resource.is_none() {
        return Err(unknown_resource());
    }
    let reservation = state.reservations.get(reservation_id);
    match reservation.map(|r| (r.status, r.is_due(now))) {
        None => Err((
            Reason::UnknownReservation,
            format!("no accepted reservation {reservation_id}"),
        )),
        Some((Status::Cancelled, _)) => Err(cancelled(reservation_id)),
        Some((Status::Held, true) | (Status::Expired, _)) => Err(expired(reservation_id)),
        Some((Status::Reserved | Status::Held | Status::Confirmed, _)) => Ok(()),
    }
}

fn unknown_resource() -> (Reason, String) {
    (
        Reason::UnknownResource,
        "the resource has not been defined".into(),
    )
}

fn cancelled(id: &CommandId) -> (Reason, String) {
    (
        Reason::AlreadyCancelled,
        format!("reservation {id} was already cancelled"),
    )
}

fn expired(id: &CommandId) -> (Reason, String) {
    (Reason::HoldExpired, format!("hold {id} has run out"))
}

/// Folds an event into the state. Rejections change nothing.
pub fn apply(mut state: State, event: &Event) -> State {
    if !event.is_accepted() {
        return state;
    }
    state.resource = Some(apply_scalars(state.resource.take(), event, &state));
    let d = &event.details;
    match event.command {
        CommandKind::Reserve | CommandKind::Hold => {
            if let (Some(customer), Some(quantity)) = (&d.customer_id, d.quantity) {
                *state.holdings.entry(customer.clone()).or_insert(0) += quantity;
                let expires_at = d.expires_at.map(millis);
                let status = if expires_at.is_some() {
                    Status::Held
                } else {
                    Status::Reserved
                };
                state.reservations.insert(
                    event.command_id.clone(),
                    Reservation {
                        customer_id: customer.clone(),
                        quantity,
                        status,
                        expires_at,
                        amount: d.amount,
                        budget_id: d.budget_id.clone(),
                    },
                );
            }
        }
        CommandKind::Confirm => {
            if let Some(hold) = d
                .hold_id
                .as_ref()
                .and_then(|id| state.reservations.get_mut(id))
            {
                hold.status = Status::Confirmed;
            }
        }
        CommandKind::Cancel | CommandKind::Expire => {
            let id = d.reservation_id.as_ref().or(d.hold_id.as_ref());
            if let Some(reservation) = id.and_then(|id| state.reservations.get_mut(id)) {
                reservation.status = match event.command {
                    CommandKind::Cancel => Status::Cancelled,
                    _ => Status::Expired,
                };
                let held = state
                    .holdings
                    .entry(reservation.customer_id.clone())
                    .or_insert(0);
                *held = held.saturating_sub(reservation.quantity);
            }
        }
        CommandKind::Define | CommandKind::DefineBudget | CommandKind::Unknown => {}
    }
    state
}

/// A moment as milliseconds since the Unix epoch.
pub fn millis(t: OffsetDateTime) -> Millis {
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// The scalar effect of an accepted event: capacity, reserved, held,
/// version.
fn apply_scalars(resource: Option<Resource>, event: &Event, state: &State) -> Resource {
    let mut r = resource.unwrap_or(EMPTY);
    let d = &event.details;
    let quantity = d.quantity.unwrap_or(0);
    match event.command {
        CommandKind::Define => {
            r.capacity = d.capacity.unwrap_or(r.capacity);
            r.per_customer_limit = d.per_customer_limit;
            r.price = d.price.unwrap_or(0);
            if let Some(old) = r.budget_id.take()
                && d.budget_id.as_ref() != Some(&old)
                && !r.former_budgets.contains(&old)
            {
                r.former_budgets.push(old);
            }
            r.budget_id = d.budget_id.clone();
        }
        CommandKind::Reserve => r.reserved += quantity,
        CommandKind::Hold => r.held += quantity,
        CommandKind::Confirm => {
            r.held = r.held.saturating_sub(quantity);
            r.reserved += quantity;
        }
        CommandKind::Expire => r.held = r.held.saturating_sub(quantity),
        CommandKind::Cancel => {
            let released = d
                .reservation_id
                .as_ref()
                .and_then(|id| state.reservations.get(id));
            match released.map(|res| (res.status, res.quantity)) {
                Some((Status::Held, q)) => r.held = r.held.saturating_sub(q),
                Some((Status::Reserved | Status::Confirmed, q)) => {
                    r.reserved = r.reserved.saturating_sub(q)
                }
                _ => {}
            }
        }
        CommandKind::DefineBudget | CommandKind::Unknown => {}
    }
    r.version += 1;
    r
}

#[cfg(test)]
mod tests;
