//! The pure core: one resource's capacity aggregate, the commands against it
//! and the events they produce.
//!
//! `decide(&State, &Command) -> Event` is the whole business logic and
//! `apply(State, &Event) -> State` folds an event into the state. Nothing here
//! does I/O; the shell (`store`, `worker`) loads a [`State`], calls these and
//! commits what they return.

mod ids;

pub use ids::{CommandId, CustomerId, IdError, MAX_ID_CHARS, ResourceId};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A command against one resource, already parsed from the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    /// The idempotency key.
    pub command_id: CommandId,
    /// The aggregate the command targets.
    pub resource_id: ResourceId,
    /// What the command asks for.
    pub action: Action,
}

/// What a command asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create the resource, or change its capacity and per-customer limit.
    Define {
        /// Total seats.
        capacity: u32,
        /// Most seats one customer may hold; `None` means no limit.
        per_customer_limit: Option<u32>,
    },
    /// Take `quantity` seats for a customer, all or nothing.
    Reserve {
        /// Who the seats are for.
        customer_id: CustomerId,
        /// How many seats, at least 1.
        quantity: u32,
    },
    /// Release the seats of an accepted reservation.
    Cancel {
        /// The `command_id` of the reserve command that took the seats.
        reservation_id: CommandId,
    },
    /// A command whose ids are readable but whose other fields are not
    /// valid; it is always rejected with [`Reason::Invalid`].
    Invalid {
        /// The command kind, when it could be read.
        kind: CommandKind,
        /// What is wrong, for humans.
        detail: String,
    },
}

impl Action {
    /// The kind of command this action belongs to.
    pub fn kind(&self) -> CommandKind {
        match self {
            Action::Define { .. } => CommandKind::Define,
            Action::Reserve { .. } => CommandKind::Reserve,
            Action::Cancel { .. } => CommandKind::Cancel,
            Action::Invalid { kind, .. } => *kind,
        }
    }
}

/// The command names of the wire contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    /// `define`
    Define,
    /// `reserve`
    Reserve,
    /// `cancel`
    Cancel,
    /// A `type` that is missing or not one of the above.
    Unknown,
}

impl CommandKind {
    /// The wire name, as used in routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Define => "define",
            CommandKind::Reserve => "reserve",
            CommandKind::Cancel => "cancel",
            CommandKind::Unknown => "unknown",
        }
    }
}

/// Why a command was rejected (the contract's `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The resource was never defined.
    UnknownResource,
    /// Fewer seats remain than were asked for.
    SoldOut,
    /// The customer would hold more than `per_customer_limit`.
    CustomerLimit,
    /// No accepted reservation has that id.
    UnknownReservation,
    /// The reservation was cancelled before.
    AlreadyCancelled,
    /// A define would set capacity below the seats already reserved.
    CapacityBelowReserved,
    /// The command is malformed.
    Invalid,
    /// The `command_id` was seen before with a different body.
    IdempotencyConflict,
}

impl Reason {
    /// Every reason, for metrics and docs.
    pub const ALL: [Reason; 8] = [
        Reason::UnknownResource,
        Reason::SoldOut,
        Reason::CustomerLimit,
        Reason::UnknownReservation,
        Reason::AlreadyCancelled,
        Reason::CapacityBelowReserved,
        Reason::Invalid,
        Reason::IdempotencyConflict,
    ];
}

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

/// The outcome of one command: accepted, or rejected with a reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Verdict {
    /// The command changed the aggregate.
    Accepted,
    /// The command changed nothing.
    Rejected {
        /// Machine-readable reason.
        reason: Reason,
        /// Human-readable explanation.
        detail: String,
    },
}

/// The fields a command carried, echoed in its event so consumers need not
/// keep the command. For a cancel, `customer_id` and `quantity` are the
/// cancelled reservation's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Details {
    /// reserve, cancel
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<CustomerId>,
    /// reserve, cancel
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u32>,
    /// cancel
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_id: Option<CommandId>,
    /// define
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// define
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_customer_limit: Option<u32>,
}

/// The single outcome event of one command.
///
/// Serialises to the contract's event fields except the envelope
/// (`event_id`, `occurred_at`), which the shell adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The command this is the outcome of.
    pub command_id: CommandId,
    /// The command's kind (`command` on the wire).
    pub command: CommandKind,
    /// `outcome`, and for rejections `reason` and `detail`.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The aggregate.
    pub resource_id: ResourceId,
    /// The command's own fields.
    #[serde(flatten)]
    pub details: Details,
    /// Capacity minus reserved seats after the command.
    pub remaining: u32,
    /// Aggregate version after the command (unchanged by a rejection).
    pub version: u64,
}

impl Event {
    /// Whether the command changed the aggregate.
    pub fn is_accepted(&self) -> bool {
        self.verdict == Verdict::Accepted
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
                per_customer_limit: *per_customer_limit,
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

/// The rejection for a command whose `command_id` was seen with another body.
pub fn idempotency_conflict(
    state: &State,
    command: CommandKind,
    command_id: CommandId,
    resource_id: ResourceId,
) -> Event {
    Event {
        command_id,
        command,
        verdict: Verdict::Rejected {
            reason: Reason::IdempotencyConflict,
            detail: "command_id was already used with a different body".into(),
        },
        resource_id,
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
mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{cancel, define, given, reserve};
    use super::*;

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
                assert!(!s.reservations[&cmd("c-2")].cancelled);
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
        given(&[define("c-1", 100, Some(4)), reserve("c-2", "u-1", 4)])
            .when(reserve("c-3", "u-1", u32::MAX))
            .then_rejected(Reason::CustomerLimit, 96, 2);
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
        let event = idempotency_conflict(
            &state,
            CommandKind::Define,
            cmd("c-1"),
            ResourceId::try_from("r").unwrap(),
        );
        assert_eq!(
            event.verdict,
            Verdict::Rejected {
                reason: Reason::IdempotencyConflict,
                detail: "command_id was already used with a different body".into()
            }
        );
        assert_eq!((event.remaining, event.version), (10, 1));
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

    fn cust(s: &str) -> CustomerId {
        CustomerId::try_from(s).unwrap()
    }

    fn cmd(s: &str) -> CommandId {
        CommandId::try_from(s).unwrap()
    }
}
