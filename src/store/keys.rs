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

    /// The commands accepted, kept for good (hash: command id ->
    /// `version:body hash`).
    pub fn applied(&self, r: &ResourceId) -> String {
        self.key(r, "applied")
    }

    /// The marker that only `setup` writes: while it exists, the store
    /// holds the data workers decided on. Every transaction reads it under
    /// its WATCH.
    pub fn marker(&self, _r: &ResourceId) -> String {
        self.marker_of_any()
    }

    /// The marker, where one key serves every resource (a single Redis).
    pub fn marker_of_any(&self) -> String {
        format!("{}{{setup}}:initialised", self.prefix)
    }

    /// A key the readiness probe writes to, to learn whether Redis takes
    /// writes.
    pub fn probe(&self) -> String {
        format!("{}{{setup}}:probe", self.prefix)
    }

    /// One command's idempotency record.
    pub fn record(&self, r: &ResourceId, c: &CommandId) -> String {
        self.key(r, &format!("cmd:{c}"))
    }
}
