//! Commands against one resource, as the domain sees them: already parsed
//! and validated from the wire.

use super::ids::{CommandId, CustomerId, ResourceId};
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
    /// valid; it is always rejected with [`Reason::Invalid`](super::Reason::Invalid).
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
    /// Every kind, for metrics and docs.
    pub const ALL: [CommandKind; 4] = [
        CommandKind::Define,
        CommandKind::Reserve,
        CommandKind::Cancel,
        CommandKind::Unknown,
    ];

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
