//! Group commit's waiting room: the commands of each resource queue in a
//! lane while that resource's previous transaction runs, and the lane's
//! task takes them as the next batch. Within a replica a hot resource then
//! never conflicts with itself, and one Redis round trip serves many
//! commands.

use crate::domain::{ResourceId, Submission};
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Mutex;

/// Commands waiting for their batch, each with what to do once it is
/// decided.
pub type Waiting<T> = Vec<(Submission, T)>;

/// Commands waiting per resource. A resource has an entry exactly while a
/// lane task runs for it.
pub struct Lanes<T> {
    waiting: Mutex<HashMap<ResourceId, Waiting<T>>>,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Lanes<T> {
    /// Queues a command behind its resource. Returns the resource when no
    /// lane runs for it yet: the caller must start one.
    pub fn push(&self, submission: Submission, then: T) -> Option<ResourceId> {
        let resource = submission.command.resource_id.clone();
        match self.waiting.lock().expect("lanes lock").entry(resource) {
            Entry::Occupied(mut queue) => {
                queue.get_mut().push((submission, then));
                None
            }
            Entry::Vacant(slot) => {
                let resource = slot.key().clone();
                slot.insert(vec![(submission, then)]);
                Some(resource)
            }
        }
    }

    /// The next batch of `resource`, at most `max` commands in arrival
    /// order; `None` ends the lane (nothing waits, or `stop`, which drops
    /// whatever still waits).
    pub fn next_batch(&self, resource: &ResourceId, max: usize, stop: bool) -> Option<Waiting<T>> {
        let mut lanes = self.waiting.lock().expect("lanes lock");
        let queue = lanes
            .get_mut(resource)
            .expect("a running lane has an entry");
        if queue.is_empty() || stop {
            lanes.remove(resource);
            return None;
        }
        let n = queue.len().min(max.max(1));
        Some(queue.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Action, Command, CommandId};

    fn submission(resource: &str, id: &str) -> Submission {
        Submission {
            command: Command {
                command_id: CommandId::try_from(id).unwrap(),
                resource_id: ResourceId::try_from(resource).unwrap(),
                action: Action::Cancel {
                    reservation_id: CommandId::try_from("x").unwrap(),
                },
            },
            body_hash: id.into(),
        }
    }

    #[test]
    fn the_first_command_of_a_resource_starts_its_lane_and_the_rest_wait_in_order() {
        let lanes = Lanes::<()>::default();
        let r = ResourceId::try_from("r").unwrap();
        assert_eq!(lanes.push(submission("r", "1"), ()), Some(r.clone()));
        assert_eq!(lanes.push(submission("r", "2"), ()), None);
        assert_eq!(lanes.push(submission("r", "3"), ()), None);
        let ids =
            |b: Waiting<()>| -> Vec<String> { b.into_iter().map(|(s, _)| s.body_hash).collect() };
        assert_eq!(ids(lanes.next_batch(&r, 2, false).unwrap()), ["1", "2"]);
        assert_eq!(ids(lanes.next_batch(&r, 2, false).unwrap()), ["3"]);
        assert!(
            lanes.next_batch(&r, 2, false).is_none(),
            "empty: the lane ends"
        );
        assert_eq!(
            lanes.push(submission("r", "4"), ()),
            Some(r),
            "a new lane starts"
        );
    }

    #[test]
    fn a_stopped_lane_drops_what_waits() {
        let lanes = Lanes::<std::sync::Arc<()>>::default();
        let r = ResourceId::try_from("r").unwrap();
        let then = std::sync::Arc::new(());
        lanes.push(submission("r", "1"), then.clone());
        assert!(lanes.next_batch(&r, 10, true).is_none());
        assert_eq!(std::sync::Arc::strong_count(&then), 1, "dropped");
        assert!(
            lanes.push(submission("r", "2"), then).is_some(),
            "the lane ended"
        );
    }
}
