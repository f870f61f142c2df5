//! Readiness: whether this worker can do its job right now.
//!
//! The worker flips these flags as it connects, consumes and talks to Redis;
//! a probe reads them. A worker that cannot reach the broker or Redis is
//! alive but not ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Shared readiness flags; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Health(Arc<Flags>);

#[derive(Debug)]
struct Flags {
    broker: AtomicBool,
    redis: AtomicBool,
    consuming: AtomicBool,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            broker: AtomicBool::new(false),
            // Redis is assumed reachable until a command finds otherwise.
            redis: AtomicBool::new(true),
            consuming: AtomicBool::new(false),
        }
    }
}

impl Health {
    /// Connected to the broker.
    pub fn set_broker(&self, up: bool) {
        self.0.broker.store(up, Ordering::Relaxed);
    }

    /// Redis answered the last request.
    pub fn set_redis(&self, up: bool) {
        self.0.redis.store(up, Ordering::Relaxed);
    }

    /// Subscribed to the command queue.
    pub fn set_consuming(&self, up: bool) {
        self.0.consuming.store(up, Ordering::Relaxed);
    }

    /// Broker and Redis reachable, and consuming.
    pub fn is_ready(&self) -> bool {
        self.0.broker.load(Ordering::Relaxed)
            && self.0.redis.load(Ordering::Relaxed)
            && self.0.consuming.load(Ordering::Relaxed)
    }

    /// Each flag by name, for a readiness report.
    pub fn report(&self) -> [(&'static str, bool); 3] {
        [
            ("broker", self.0.broker.load(Ordering::Relaxed)),
            ("redis", self.0.redis.load(Ordering::Relaxed)),
            ("consuming", self.0.consuming.load(Ordering::Relaxed)),
        ]
    }
}
