//! One resource's aggregate: its state, the rules that decide a command
//! against it, and the fold that applies an event to it.

use super::command::{Action, Command, CommandKind};
use super::event::{Details, Event, Reason, Verdict};
use super::ids::{CommandId, CustomerId};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The scalar part of a defined resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// Total seats.
    pub capacity: u32,
    /// Seats held by accepted, uncancelled reservations.
    pub reserved: u32,
    /// Most seats one customer may hold.
    #[serde(default)]
    pub per_customer_limit: Option<u32>,
    /// Bumped by every accepted command.
    pub version: u64,
}

impl Resource {
    /// Seats still for sale.
    pub fn remaining(&self) -> u32 {
        self.capacity.saturating_sub(self.reserved)
    }
}

/// An accepted reservation, kept so it can be cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// Who holds the seats.
    pub customer_id: CustomerId,
    /// How many seats.
    pub quantity: u32,
    /// Whether a cancel released them.
    pub cancelled: bool,
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
    /// Seats held per customer.
    pub holdings: HashMap<CustomerId, u32>,
    /// Reservations by id (the reserve command's `command_id`).
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

    /// Seats `customer` holds (0 when absent).
    pub fn held_by(&self, customer: &CustomerId) -> u32 {
        self.holdings.get(customer).copied().unwrap_or(0)
    }
}

/// Decides the outcome of `command` against `state`. Pure and total: every
/// command gets exactly one event.
pub fn decide(state: &State, command: &Command) -> Event {
    let (details, decision) = match &command.action {
        Action::Define {
            capacity,
            per_customer_limit,
        } => (
            Details {
                capacity: Some(*capacity),
                // The limit in force after the define: folding the event
                // needs no other input.
                per_customer_limit: per_customer_limit
                    .applied_to(state.resource.as_ref().and_then(|r| r.per_customer_limit)),
                ..Details::default()
            },
            decide_define(state, *capacity),
        ),
        Action::Reserve {
            customer_id,
            quantity,
        } => (
            Details {
                customer_id: Some(customer_id.clone()),
                quantity: Some(*quantity),
                ..Details::default()
            },
            decide_reserve(state, customer_id, *quantity),
        ),
        Action::Cancel { reservation_id } => {
            let reservation = state.reservations.get(reservation_id);
            (
                Details {
                    reservation_id: Some(reservation_id.clone()),
                    customer_id: reservation.map(|r| r.customer_id.clone()),
                    quantity: reservation.map(|r| r.quantity),
                    ..Details::default()
                },
                decide_cancel(state, reservation_id),
            )
        }
        Action::Invalid { detail, .. } => {
            (Details::default(), Err((Reason::Invalid, detail.clone())))
        }
    };
    let verdict = match decision {
        Ok(()) => Verdict::Accepted,
        Err((reason, detail)) => Verdict::Rejected { reason, detail },
    };
    let mut event = Event {
        command_id: command.command_id.clone(),
        command: command.action.kind(),
        verdict,
        resource_id: command.resource_id.clone(),
        details,
        remaining: state.remaining(),
        version: state.version(),
    };
    if event.is_accepted() {
        // The event reports the state after itself; applying it to a copy of
        // the scalars is the one place that arithmetic lives.
        let after = apply_scalars(state.resource.clone(), &event, state);
        event.remaining = after.remaining();
        event.version = after.version;
    }
    event
}

/// The rejection of a command whose `command_id` was decided before with
/// another body. It reports the current state and changes nothing.
pub fn idempotency_conflict(state: &State, command: &Command) -> Event {
    Event {
        command_id: command.command_id.clone(),
        command: command.action.kind(),
        verdict: Verdict::Rejected {
            reason: Reason::IdempotencyConflict,
            detail: "command_id was already used with a different body".into(),
        },
        resource_id: command.resource_id.clone(),
        details: Details::default(),
        remaining: state.remaining(),
        version: state.version(),
    }
}

type Decision = Result<(), (Reason, String)>;

fn decide_define(state: &State, capacity: u32) -> Decision {
    match &state.resource {
        Some(r) if capacity < r.reserved => Err((
            Reason::CapacityBelowReserved,
            format!(
                "capacity {capacity} is below the {} seats reserved",
                r.reserved
            ),
        )),
        _ => Ok(()),
    }
}

fn decide_reserve(state: &State, customer: &CustomerId, quantity: u32) -> Decision {
    let Some(r) = &state.resource else {
        return Err(unknown_resource());
    };
    let held = state.held_by(customer);
    if let Some(limit) = r.per_customer_limit
        && u64::from(held) + u64::from(quantity) > u64::from(limit)
    {
        return Err((
            Reason::CustomerLimit,
            format!("customer holds {held} of at most {limit} seats and asked for {quantity}"),
        ));
    }
    if quantity > r.remaining() {
        return Err((
            Reason::SoldOut,
            format!("{} seats remain, {quantity} asked for", r.remaining()),
        ));
    }
    Ok(())
}

fn decide_cancel(state: &State, reservation_id: &CommandId) -> Decision {
    if state.resource.is_none() {
        return Err(unknown_resource());
    }
    match state.reservations.get(reservation_id) {
        None => Err((
            Reason::UnknownReservation,
            format!("no accepted reservation {reservation_id}"),
        )),
        Some(r) if r.cancelled => Err((
            Reason::AlreadyCancelled,
            format!("reservation {reservation_id} was already cancelled"),
        )),
        Some(_) => Ok(()),
    }
}

fn unknown_resource() -> (Reason, String) {
    (
        Reason::UnknownResource,
        "the resource has not been defined".into(),
    )
}

/// Folds an event into the state. Rejections change nothing.
pub fn apply(mut state: State, event: &Event) -> State {
    if !event.is_accepted() {
        return state;
    }
    state.resource = Some(apply_scalars(state.resource.take(), event, &state));
    match event.command {
        CommandKind::Reserve => {
            if let (Some(customer), Some(quantity)) =
                (&event.details.customer_id, event.details.quantity)
            {
                *state.holdings.entry(customer.clone()).or_insert(0) += quantity;
                state.reservations.insert(
                    event.command_id.clone(),
                    Reservation {
                        customer_id: customer.clone(),
                        quantity,
                        cancelled: false,
                    },
                );
            }
        }
        CommandKind::Cancel => {
            if let Some(reservation) = event
                .details
                .reservation_id
                .as_ref()
                .and_then(|id| state.reservations.get_mut(id))
            {
                reservation.cancelled = true;
                let held = state
                    .holdings
                    .entry(reservation.customer_id.clone())
                    .or_insert(0);
                *held = held.saturating_sub(reservation.quantity);
            }
        }
        CommandKind::Define | CommandKind::Unknown => {}
    }
    state
}

/// The scalar effect of an accepted event: capacity, reserved, version.
fn apply_scalars(resource: Option<Resource>, event: &Event, state: &State) -> Resource {
    let mut r = resource.unwrap_or(Resource {
        capacity: 0,
        reserved: 0,
        per_customer_limit: None,
        version: 0,
    });
    match event.command {
        CommandKind::Define => {
            r.capacity = event.details.capacity.unwrap_or(r.capacity);
            r.per_customer_limit = event.details.per_customer_limit;
        }
        CommandKind::Reserve => r.reserved += event.details.quantity.unwrap_or(0),
        CommandKind::Cancel => {
            let released = event
                .details
                .reservation_id
                .as_ref()
                .and_then(|id| state.reservations.get(id))
                .filter(|res| !res.cancelled)
                .map_or(0, |res| res.quantity);
            r.reserved = r.reserved.saturating_sub(released);
        }
        CommandKind::Unknown => {}
    }
    r.version += 1;
    r
}

#[cfg(test)]
mod tests;
