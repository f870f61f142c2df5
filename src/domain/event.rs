//! Outcome events: what became of one command.

use super::budget::{BudgetStep, StepKind};
use super::command::CommandKind;
use super::ids::{BudgetId, CommandId, CustomerId, ResourceId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
    /// A confirm names no hold (nothing, or a plain reserve).
    UnknownHold,
    /// The hold ran out before the confirm or cancel.
    HoldExpired,
    /// The hold was confirmed before.
    AlreadyConfirmed,
    /// The customer would spend more than the budget's cap.
    BudgetExceeded,
    /// The resource names a budget that was never defined.
    UnknownBudget,
}

impl Reason {
    /// Every reason, for metrics and docs.
    pub const ALL: [Reason; 13] = [
        Reason::UnknownResource,
        Reason::SoldOut,
        Reason::CustomerLimit,
        Reason::UnknownReservation,
        Reason::AlreadyCancelled,
        Reason::CapacityBelowReserved,
        Reason::Invalid,
        Reason::IdempotencyConflict,
        Reason::UnknownHold,
        Reason::HoldExpired,
        Reason::AlreadyConfirmed,
        Reason::BudgetExceeded,
        Reason::UnknownBudget,
    ];

    /// The wire name, as in the event's `reason` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownResource => "unknown_resource",
            Reason::SoldOut => "sold_out",
            Reason::CustomerLimit => "customer_limit",
            Reason::UnknownReservation => "unknown_reservation",
            Reason::AlreadyCancelled => "already_cancelled",
            Reason::CapacityBelowReserved => "capacity_below_reserved",
            Reason::Invalid => "invalid",
            Reason::IdempotencyConflict => "idempotency_conflict",
            Reason::UnknownHold => "unknown_hold",
            Reason::HoldExpired => "hold_expired",
            Reason::AlreadyConfirmed => "already_confirmed",
            Reason::BudgetExceeded => "budget_exceeded",
            Reason::UnknownBudget => "unknown_budget",
        }
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

impl Verdict {
    /// The rejection reason, if any.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Verdict::Accepted => None,
            Verdict::Rejected { reason, .. } => Some(*reason),
        }
    }

    /// The rejection's explanation, if any.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Verdict::Accepted => None,
            Verdict::Rejected { detail, .. } => Some(detail),
        }
    }

    /// `accepted` or `rejected`, as in routing keys.
    pub fn outcome(&self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected { .. } => "rejected",
        }
    }
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
    /// confirm, expire
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_id: Option<CommandId>,
    /// hold, confirm, expire: when the hold runs (or ran) out
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    pub expires_at: Option<OffsetDateTime>,
    /// define
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// define
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_customer_limit: Option<u32>,
    /// define: the price per seat after it, when not 0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<u32>,
    /// define: the budget after it; reserve, hold: the budget asked;
    /// cancel, expire: the budget given back to
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_id: Option<BudgetId>,
    /// reserve, hold: what the seats cost (accepted, or refused with
    /// `budget_exceeded`); cancel, expire: what was given back
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<u64>,
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
    /// Capacity minus reserved and held seats after the command.
    pub remaining: u32,
    /// Seats in live holds after the command; on the events of a resource
    /// that has holds, and of every hold, confirm and expiry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<u32>,
    /// Aggregate version after the command (unchanged by a rejection).
    pub version: u64,
}

impl Event {
    /// Whether the command changed the aggregate.
    pub fn is_accepted(&self) -> bool {
        self.verdict == Verdict::Accepted
    }

    /// The routing key: `<command>.<outcome>`.
    pub fn routing_key(&self) -> String {
        format!("{}.{}", self.command.as_str(), self.verdict.outcome())
    }

    /// What this outcome does to its budget, if it touched one: an
    /// accepted take keeps its amount, a refused one gets back what was set
    /// aside for it, a cancel or expiry releases the reservation's amount.
    pub fn budget_step(&self) -> Option<BudgetStep> {
        let d = &self.details;
        let budget_id = d.budget_id.clone()?;
        let (reservation_id, kind) = match (self.command, &self.verdict) {
            (CommandKind::Reserve | CommandKind::Hold, Verdict::Accepted) => (
                self.command_id.clone(),
                StepKind::Keep {
                    amount: d.amount.unwrap_or(0),
                },
            ),
            (CommandKind::Reserve | CommandKind::Hold, Verdict::Rejected { .. }) => {
                (self.command_id.clone(), StepKind::Refund)
            }
            (CommandKind::Cancel, Verdict::Accepted) => {
                (d.reservation_id.clone()?, StepKind::Release)
            }
            (CommandKind::Expire, Verdict::Accepted) => (d.hold_id.clone()?, StepKind::Release),
            _ => return None,
        };
        Some(BudgetStep {
            budget_id,
            customer_id: d.customer_id.clone()?,
            resource_id: self.resource_id.clone(),
            reservation_id,
            kind,
        })
    }
}
