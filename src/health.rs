//! Readiness: whether this worker can do its job right now.
//!
//! The worker flips these as it connects, consumes and talks to Redis; the
//! `/readyz` probe reads them, and the session watches the store's state to
//! stop taking deliveries while Redis fails. A worker that cannot reach the
//! broker or Redis is alive but not ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::watch;

/// What the worker last found of Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreState {
    /// Transactions commit.
    Ok,
    /// Redis cannot be reached or refuses writes for now (down, loading,
    /// read-only, out of memory, refusing the credentials).
    Failing,
    /// Redis answers but lost its data: nothing may be decided until it is
    /// restored or `setup` accepts the empty store.
    Uninitialised,
}

impl StoreState {
    /// As `/readyz` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Ok => "ok",
            StoreState::Failing => "down",
            StoreState::Uninitialised => "uninitialised (restore Redis, or run setup)",
        }
    }
}

/// Shared readiness flags; cheap to clone.
#[derive(Clone, Debug)]
pub struct Health(Arc<Flags>);

#[derive(Debug)]
struct Flags {
    broker: AtomicBool,
    consuming: AtomicBool,
    store: watch::Sender<StoreState>,
}

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(Flags {
            broker: AtomicBool::new(false),
            consuming: AtomicBool::new(false),
            // Redis is assumed usable until a command or the probe finds
            // otherwise.
            store: watch::Sender::new(StoreState::Ok),
        }))
    }
}

impl Health {
    /// Connected to the broker.
    pub fn set_broker(&self, up: bool) {
        self.0.broker.store(up, Ordering::Relaxed);
    }

    /// Subscribed to the command queue.
    pub fn set_consuming(&self, up: bool) {
        self.0.consuming.store(up, Ordering::Relaxed);
    }

    /// Records what was found of Redis; `true` if that is news.
    pub fn set_store(&self, state: StoreState) -> bool {
        let changed = self.0.store.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
        if changed {
            let lost = f64::from(u8::from(state == StoreState::Uninitialised));
            metrics::gauge!(crate::metrics::STORE_UNINITIALISED).set(lost);
        }
        changed
    }

    /// The store's state now.
    pub fn store(&self) -> StoreState {
        *self.0.store.borrow()
    }

    /// Follows the store's state.
    pub fn watch_store(&self) -> watch::Receiver<StoreState> {
        self.0.store.subscribe()
    }

    /// Broker and Redis usable, and consuming.
    pub fn is_ready(&self) -> bool {
        self.0.broker.load(Ordering::Relaxed)
            && self.store() == StoreState::Ok
            && self.0.consuming.load(Ordering::Relaxed)
    }

    /// Each check by name, for a readiness report.
    pub fn report(&self) -> [(&'static str, &'static str); 3] {
        let up = |b: &AtomicBool| {
            if b.load(Ordering::Relaxed) {
                "ok"
            } else {
                "down"
            }
        };
        [
            ("broker", up(&self.0.broker)),
            ("redis", self.store().as_str()),
            ("consuming", up(&self.0.consuming)),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_broker_store_and_consumer() {
        let h = Health::default();
        assert!(!h.is_ready());
        h.set_broker(true);
        h.set_consuming(true);
        assert!(h.is_ready());
        assert!(h.set_store(StoreState::Uninitialised), "news");
        assert!(!h.set_store(StoreState::Uninitialised), "not news");
        assert!(!h.is_ready());
        assert_eq!(
            h.report()[1].1,
            "uninitialised (restore Redis, or run setup)"
        );
        h.set_store(StoreState::Ok);
        assert!(h.is_ready());
    }

    #[test]
    fn watchers_see_the_store_fail_and_recover() {
        let h = Health::default();
        let mut w = h.watch_store();
        h.set_store(StoreState::Failing);
        assert!(w.has_changed().unwrap());
        assert_eq!(*w.borrow_and_update(), StoreState::Failing);
        h.set_store(StoreState::Failing);
        assert!(!w.has_changed().unwrap(), "no change, no wake-up");
    }
}
