//! Key names, under a configurable prefix.

use crate::domain::{CommandId, ResourceId};

/// The keys of every resource, under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Keys {
            prefix: prefix.into(),
        }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, r: &ResourceId, suffix: &str) -> String {
        format!("{}{{{r}}}:{suffix}", self.prefix)
    }

    /// The scalar state.
    pub fn state(&self, r: &ResourceId) -> String {
        self.key(r, "state")
    }

    /// Seats per customer.
    pub fn holdings(&self, r: &ResourceId) -> String {
        self.key(r, "holdings")
    }

    /// Accepted reservations.
    pub fn reservations(&self, r: &ResourceId) -> String {
        self.key(r, "reservations")
    }

    /// The event history stream.
    pub fn history(&self, r: &ResourceId) -> String {
        self.key(r, "history")
    }

    /// One command's idempotency record.
    pub fn record(&self, r: &ResourceId, c: &CommandId) -> String {
        self.key(r, &format!("cmd:{c}"))
    }
}
