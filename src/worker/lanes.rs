//! Group commit's waiting room. The commands of each resource queue in a
//! lane; a resource is *ready* while commands wait in its lane and no
//! transaction of this replica runs for it. A bounded set of committer
//! tasks takes ready resources as groups: one transaction decides the
//! waiting commands of many resources at once (up to a batch's worth), so
//! a festival of ten thousand resources pays the round trips of few
//! transactions, and a hot resource's commands still pile up behind its
//! running transaction and go together in the next. Within a replica a
//! resource then never conflicts with itself, and its commands are decided
//! in arrival order.

use crate::domain::{ResourceId, Submission};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Commands waiting for their batch, each with what to do once it is
/// decided.
pub type Waiting<T> = Vec<(Submission, T)>;

/// A group for one transaction: resources with the batch each contributes.
pub type Group<T> = Vec<(ResourceId, Waiting<T>)>;

/// The lanes, the ready resources, and how many committers run.
pub struct Lanes<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    /// A resource has a lane while commands wait in it or a transaction
    /// runs for it.
    lanes: HashMap<ResourceId, Lane<T>>,
    /// Resources with waiting commands and no running transaction, in the
    /// order they became ready.
    ready: VecDeque<ResourceId>,
    /// Committer tasks running.
    committers: usize,
}

struct Lane<T> {
    waiting: Waiting<T>,
    /// A transaction runs for the resource.
    busy: bool,
}

impl<T> Default for Lanes<T> {
    fn default() -> Self {
        Lanes {
            state: Mutex::new(State {
                lanes: HashMap::new(),
                ready: VecDeque::new(),
                committers: 0,
            }),
        }
    }
}

impl<T> Lanes<T> {
    /// Queues a command behind its resource. `true` when the caller must
    /// start a committer: work is ready and fewer than `committers` run.
    pub fn push(&self, submission: Submission, then: T, committers: usize) -> bool {
        let resource = submission.command.resource_id.clone();
        let mut s = self.state.lock().expect("lanes lock");
        let state = &mut *s;
        match state.lanes.entry(resource) {
            Entry::Occupied(mut lane) => lane.get_mut().waiting.push((submission, then)),
            Entry::Vacant(slot) => {
                state.ready.push_back(slot.key().clone());
                slot.insert(Lane {
                    waiting: vec![(submission, then)],
                    busy: false,
                });
            }
        }
        if !state.ready.is_empty() && state.committers < committers.max(1) {
            state.committers += 1;
            true
        } else {
            false
        }
    }

    /// The next group for a committer: the first ready resource, then the
    /// other ready ones that may share its transaction (the same `slot`),
    /// in the order they became ready, each with its waiting commands in
    /// arrival order, at most `max` commands in all. Its resources are busy
    /// until [`Lanes::done`]. `None` ends the committer: nothing is ready,
    /// or `stop`, which drops whatever waits.
    pub fn next_group<S: PartialEq>(
        &self,
        max: usize,
        slot: impl Fn(&ResourceId) -> S,
        stop: bool,
    ) -> Option<Group<T>> {
        let mut s = self.state.lock().expect("lanes lock");
        let state = &mut *s;
        if stop {
            state.lanes.clear();
            state.ready.clear();
        }
        let Some(first) = state.ready.pop_front() else {
            state.committers -= 1;
            return None;
        };
        let max = max.max(1);
        let shared = slot(&first);
        let mut group = Vec::new();
        let mut total = take(&mut state.lanes, first, max, &mut group);
        let mut i = 0;
        while i < state.ready.len() && total < max {
            if slot(&state.ready[i]) == shared {
                let resource = state.ready.remove(i).expect("in range");
                total += take(&mut state.lanes, resource, max - total, &mut group);
            } else {
                i += 1;
            }
        }
        Some(group)
    }

    /// The transaction of a group's resources is over: those with commands
    /// waiting are ready again, behind the others.
    pub fn done<'r>(&self, resources: impl IntoIterator<Item = &'r ResourceId>) {
        let mut s = self.state.lock().expect("lanes lock");
        let state = &mut *s;
        for resource in resources {
            let Some(lane) = state.lanes.get_mut(resource) else {
                continue; // dropped by a stop
            };
            lane.busy = false;
            if lane.waiting.is_empty() {
                state.lanes.remove(resource);
            } else {
                state.ready.push_back(resource.clone());
            }
        }
    }
}

/// Moves up to `max` of `resource`'s waiting commands into `group`, marks
/// it busy, and says how many it moved.
fn take<T>(
    lanes: &mut HashMap<ResourceId, Lane<T>>,
    resource: ResourceId,
    max: usize,
    group: &mut Group<T>,
) -> usize {
    let lane = lanes
        .get_mut(&resource)
        .expect("a ready resource has a lane");
    lane.busy = true;
    let n = lane.waiting.len().min(max);
    group.push((resource, lane.waiting.drain(..n).collect()));
    n
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

    fn rid(r: &str) -> ResourceId {
        ResourceId::try_from(r).unwrap()
    }

    /// The group as `resource: ids`.
    fn shape(group: Group<()>) -> Vec<String> {
        group
            .into_iter()
            .map(|(r, batch)| {
                let ids: Vec<String> = batch
                    .into_iter()
                    .map(|(s, _)| s.body_hash.to_string())
                    .collect();
                format!("{r}: {}", ids.join(","))
            })
            .collect()
    }

    const ANY: fn(&ResourceId) -> () = |_| ();

    #[test]
    fn one_group_takes_every_ready_resource_in_order_up_to_the_batch_size() {
        let lanes = Lanes::<()>::default();
        assert!(
            lanes.push(submission("a", "1"), (), 4),
            "a committer starts"
        );
        assert!(
            lanes.push(submission("b", "2"), (), 4),
            "another may start: none has taken the work yet"
        );
        lanes.push(submission("a", "3"), (), 4);
        lanes.push(submission("c", "4"), (), 4);
        let group = lanes.next_group(3, ANY, false).unwrap();
        assert_eq!(shape(group), ["a: 1,3", "b: 2"]);
        let group = lanes.next_group(3, ANY, false).unwrap();
        assert_eq!(shape(group), ["c: 4"]);
        assert!(lanes.next_group(3, ANY, false).is_none());
    }

    #[test]
    fn a_busy_resource_waits_for_its_transaction_then_goes_on_in_order() {
        let lanes = Lanes::<()>::default();
        lanes.push(submission("hot", "1"), (), 2);
        let first = lanes.next_group(10, ANY, false).unwrap();
        assert_eq!(shape(first), ["hot: 1"]);
        lanes.push(submission("hot", "2"), (), 2);
        lanes.push(submission("hot", "3"), (), 2);
        lanes.push(submission("cold", "4"), (), 2);
        assert_eq!(
            shape(lanes.next_group(10, ANY, false).unwrap()),
            ["cold: 4"],
            "hot is busy: its commands wait for the running transaction"
        );
        lanes.done([&rid("hot")]);
        assert_eq!(
            shape(lanes.next_group(10, ANY, false).unwrap()),
            ["hot: 2,3"]
        );
        lanes.done([&rid("hot"), &rid("cold")]);
        assert!(lanes.next_group(10, ANY, false).is_none(), "all done");
    }

    #[test]
    fn a_long_lane_is_taken_a_batch_at_a_time() {
        let lanes = Lanes::<()>::default();
        for i in 0..5 {
            lanes.push(submission("hot", &i.to_string()), (), 1);
        }
        assert_eq!(
            shape(lanes.next_group(2, ANY, false).unwrap()),
            ["hot: 0,1"]
        );
        assert!(
            !lanes.push(submission("x", "x"), (), 1),
            "the one committer runs: no other starts"
        );
        lanes.done([&rid("hot")]);
        assert_eq!(
            shape(lanes.next_group(2, ANY, false).unwrap()),
            ["x: x", "hot: 2"],
            "hot is ready again, behind x"
        );
        lanes.done([&rid("x"), &rid("hot")]);
        assert_eq!(
            shape(lanes.next_group(2, ANY, false).unwrap()),
            ["hot: 3,4"]
        );
    }

    #[test]
    fn resources_share_a_group_only_when_they_share_a_slot() {
        let lanes = Lanes::<()>::default();
        for (r, id) in [("a1", "1"), ("b1", "2"), ("a2", "3"), ("b2", "4")] {
            lanes.push(submission(r, id), (), 1);
        }
        let slot = |r: &ResourceId| r.as_str().as_bytes()[0];
        assert_eq!(
            shape(lanes.next_group(10, slot, false).unwrap()),
            ["a1: 1", "a2: 3"]
        );
        assert_eq!(
            shape(lanes.next_group(10, slot, false).unwrap()),
            ["b1: 2", "b2: 4"]
        );
    }

    #[test]
    fn committers_are_bounded_and_one_starts_again_once_all_have_ended() {
        let lanes = Lanes::<()>::default();
        assert!(lanes.push(submission("a", "1"), (), 2));
        assert!(lanes.push(submission("b", "2"), (), 2));
        assert!(!lanes.push(submission("c", "3"), (), 2), "two run already");
        assert!(lanes.next_group(1, ANY, false).is_some());
        assert!(lanes.next_group(1, ANY, false).is_some());
        assert!(lanes.next_group(1, ANY, false).is_some());
        assert!(lanes.next_group(1, ANY, false).is_none(), "one ends");
        assert!(
            lanes.push(submission("d", "4"), (), 2),
            "one of two ended: another may start"
        );
        assert!(lanes.next_group(1, ANY, false).is_some());
        assert!(lanes.next_group(1, ANY, false).is_none());
        assert!(lanes.next_group(1, ANY, false).is_none());
        assert!(lanes.push(submission("e", "5"), (), 2), "none runs");
    }

    #[test]
    fn a_stop_drops_what_waits() {
        let lanes = Lanes::<std::sync::Arc<()>>::default();
        let then = std::sync::Arc::new(());
        lanes.push(submission("r", "1"), then.clone(), 1);
        assert!(lanes.next_group(10, ANY, true).is_none());
        assert_eq!(std::sync::Arc::strong_count(&then), 1, "dropped");
        assert!(
            lanes.push(submission("r", "2"), then, 1),
            "the committer ended: a new one starts"
        );
    }
}
