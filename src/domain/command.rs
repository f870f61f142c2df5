//! Commands against one resource, as the domain sees them: already parsed
//! and validated from the wire.

use super::ids::{BudgetId, CommandId, CustomerId, ResourceId};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A command against one resource.
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
        /// What becomes of the per-customer limit.
        per_customer_limit: LimitChange,
        /// The price per seat from now on, in minor units; `None` keeps it
        /// (0 for a new resource).
        price: Option<u32>,
        /// What becomes of the budget the resource's takes are paid from.
        budget: BudgetChange,
    },
    /// Take `quantity` seats for a customer, all or nothing.
    Reserve {
        /// Who the seats are for.
        customer_id: CustomerId,
        /// How many seats, at least 1.
        quantity: u32,
    },
    /// Take `quantity` seats for a customer until `hold_secs` after the
    /// decision, unless confirmed before (contract v2).
    Hold {
        /// Who the seats are for.
        customer_id: CustomerId,
        /// How many seats, at least 1.
        quantity: u32,
        /// How long the hold lasts, 1 to 86400 seconds.
        hold_secs: u32,
    },
    /// Make a live hold a reservation for good.
    Confirm {
        /// The `command_id` of the hold.
        hold_id: CommandId,
    },
    /// Release the seats of an accepted reservation, or of a live or
    /// confirmed hold.
    Cancel {
        /// The `command_id` of the reserve (or hold) that took the seats.
        reservation_id: CommandId,
    },
    /// A command whose ids are readable but whose other fields are not
    /// valid; it is always rejected with [`Reason::Invalid`](super::Reason::Invalid).
    Invalid {
        /// The command kind, when it could be read.
        kind: CommandKind,
        /// What is wrong, for humans.
        detail: String,
    },
}

/// What a `define` does to the per-customer limit (contract v2: an absent
/// `per_customer_limit` keeps it, `null` removes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitChange {
    /// Keep the current limit (none for a new resource).
    Keep,
    /// No limit from now on.
    Remove,
    /// At most this many seats per customer from now on.
    Set(u32),
}

/// What a `define` does to the resource's budget (contract v2: an absent
/// `budget_id` keeps it, `null` detaches it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BudgetChange {
    /// Keep the current budget (none for a new resource).
    #[default]
    Keep,
    /// No budget from now on.
    Detach,
    /// Takes are paid from this budget from now on.
    Attach(BudgetId),
}

impl BudgetChange {
    /// The budget after the change, given the current one.
    pub fn applied_to(&self, current: Option<&BudgetId>) -> Option<BudgetId> {
        match self {
            BudgetChange::Keep => current.cloned(),
            BudgetChange::Detach => None,
            BudgetChange::Attach(b) => Some(b.clone()),
        }
    }
}

impl LimitChange {
    /// The limit in force after the change, given the current one.
    pub fn applied_to(self, current: Option<u32>) -> Option<u32> {
        match self {
            LimitChange::Keep => current,
            LimitChange::Remove => None,
            LimitChange::Set(n) => Some(n),
        }
    }
}

impl From<Option<u32>> for LimitChange {
    /// A limit, or `None` for no limit (the change is never "keep").
    fn from(limit: Option<u32>) -> Self {
        limit.map_or(LimitChange::Remove, LimitChange::Set)
    }
}

impl Command {
    /// The customer a reserve or hold takes seats for.
    pub fn customer(&self) -> Option<&CustomerId> {
        match &self.action {
            Action::Reserve { customer_id, .. } | Action::Hold { customer_id, .. } => {
                Some(customer_id)
            }
            _ => None,
        }
    }
}

impl Action {
    /// The kind of command this action belongs to.
    pub fn kind(&self) -> CommandKind {
        match self {
            Action::Define { .. } => CommandKind::Define,
            Action::Reserve { .. } => CommandKind::Reserve,
            Action::Hold { .. } => CommandKind::Hold,
            Action::Confirm { .. } => CommandKind::Confirm,
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
    /// `hold`
    Hold,
    /// `confirm`
    Confirm,
    /// A hold's expiry: not a command, the outcome of time passing.
    Expire,
    /// `define_budget`
    DefineBudget,
    /// A `type` that is missing or not one of the above.
    Unknown,
}

impl CommandKind {
    /// Every kind, for metrics and docs.
    pub const ALL: [CommandKind; 8] = [
        CommandKind::Define,
        CommandKind::Reserve,
        CommandKind::Cancel,
        CommandKind::Hold,
        CommandKind::Confirm,
        CommandKind::Expire,
        CommandKind::DefineBudget,
        CommandKind::Unknown,
    ];

    /// The wire name, as used in routing keys.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandKind::Define => "define",
            CommandKind::Reserve => "reserve",
            CommandKind::Cancel => "cancel",
            CommandKind::Hold => "hold",
            CommandKind::Confirm => "confirm",
            CommandKind::Expire => "expire",
            CommandKind::DefineBudget => "define_budget",
            CommandKind::Unknown => "unknown",
        }
    }
}
