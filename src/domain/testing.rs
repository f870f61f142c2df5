//! A small given / when / then harness for `decide` and `apply`.

use super::command::{Action, Command, LimitChange};
use super::event::{Event, Reason, Verdict};
use super::ids::{CommandId, CustomerId, ResourceId};
use super::resource::{State, apply, decide};

/// A command against resource `r`.
fn command(id: &str, action: Action) -> Command {
    Command {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: ResourceId::try_from("r").unwrap(),
        action,
    }
}

/// A define; `limit` is a number, `None` for no limit, or a
/// [`LimitChange`].
pub fn define(id: &str, capacity: u32, limit: impl Into<LimitChange>) -> Command {
    command(
        id,
        Action::Define {
            capacity,
            per_customer_limit: limit.into(),
        },
    )
}

pub fn reserve(id: &str, customer: &str, quantity: u32) -> Command {
    command(
        id,
        Action::Reserve {
            customer_id: CustomerId::try_from(customer).unwrap(),
            quantity,
        },
    )
}

pub fn cancel(id: &str, reservation: &str) -> Command {
    command(
        id,
        Action::Cancel {
            reservation_id: CommandId::try_from(reservation).unwrap(),
        },
    )
}

/// The history so far: each command is decided and applied in order.
pub fn given(history: &[Command]) -> Given {
    let state = history.iter().fold(State::default(), |state, c| {
        let event = decide(&state, c);
        apply(state, &event)
    });
    Given { state }
}

pub struct Given {
    state: State,
}

impl Given {
    pub fn state(self) -> State {
        self.state
    }

    pub fn when(self, command: Command) -> Then {
        let event = decide(&self.state, &command);
        let state = apply(self.state.clone(), &event);
        Then {
            before: self.state,
            event,
            state,
        }
    }
}

pub struct Then {
    before: State,
    event: Event,
    state: State,
}

impl Then {
    pub fn event(self) -> Event {
        self.event
    }

    pub fn then_accepted(self, remaining: u32, version: u64) -> Self {
        assert_eq!(
            self.event.verdict,
            Verdict::Accepted,
            "event: {:?}",
            self.event
        );
        assert_eq!(
            (self.event.remaining, self.event.version),
            (remaining, version),
            "event: {:?}",
            self.event
        );
        assert_eq!(
            (self.state.remaining(), self.state.version()),
            (remaining, version),
            "the event must report the state after it"
        );
        self
    }

    pub fn then_rejected(self, reason: Reason, remaining: u32, version: u64) -> Self {
        match &self.event.verdict {
            Verdict::Rejected { reason: r, detail } => {
                assert_eq!(*r, reason);
                assert!(!detail.is_empty(), "a rejection explains itself");
            }
            Verdict::Accepted => panic!("expected {reason:?}, got accepted: {:?}", self.event),
        }
        assert_eq!(
            (self.event.remaining, self.event.version),
            (remaining, version),
            "event: {:?}",
            self.event
        );
        assert_eq!(self.state, self.before, "a rejection changes nothing");
        self
    }

    pub fn and_event(self, check: impl FnOnce(&Event)) -> Self {
        check(&self.event);
        self
    }

    pub fn and_state(self, check: impl FnOnce(&State)) -> Self {
        check(&self.state);
        self
    }
}
