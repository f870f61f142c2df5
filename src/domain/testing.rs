//! A small given / when / then harness for `decide` and `apply`.

use super::budget::{Answer, Funds};
use super::command::{Action, BudgetChange, Command, LimitChange};
use super::event::{Event, Reason, Verdict};
use super::ids::{BudgetId, CommandId, CustomerId, ResourceId};
use super::resource::{Millis, State, apply, cost, decide, decide_funded, expire};

/// The moment the history starts at (2023-11-14T22:13:20Z), in ms.
pub const T0: Millis = 1_700_000_000_000;

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
            price: None,
            budget: Default::default(),
        },
    )
}

/// A define without a per-customer limit that sets the price (`None`
/// keeps it) and changes the budget as `budget` says.
pub fn define_priced(
    id: &str,
    capacity: u32,
    price: impl Into<Option<u32>>,
    budget: BudgetChange,
) -> Command {
    command(
        id,
        Action::Define {
            capacity,
            per_customer_limit: LimitChange::Keep,
            price: price.into(),
            budget,
        },
    )
}

/// Takes are paid from budget `budget` from now on.
pub fn paid_from(budget: &str) -> BudgetChange {
    BudgetChange::Attach(BudgetId::try_from(budget).unwrap())
}

/// What a budget answered for the cost of `command` (a take on a resource
/// with a budget) in `state`; `None` for any other command.
pub fn funds_for(state: &State, command: &Command, answer: Answer) -> Option<Funds> {
    cost(state, command).map(|(budget_id, amount)| Funds {
        budget_id,
        amount,
        answer,
    })
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

pub fn hold(id: &str, customer: &str, quantity: u32, secs: u32) -> Command {
    command(
        id,
        Action::Hold {
            customer_id: CustomerId::try_from(customer).unwrap(),
            quantity,
            hold_secs: secs,
        },
    )
}

pub fn confirm(id: &str, hold: &str) -> Command {
    command(
        id,
        Action::Confirm {
            hold_id: CommandId::try_from(hold).unwrap(),
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

/// The history so far: each command is decided and applied in order, all
/// at [`T0`].
pub fn given(history: &[Command]) -> Given {
    let state = history.iter().fold(State::default(), |state, c| {
        let event = decide(&state, c, T0);
        apply(state, &event)
    });
    Given { state, now: T0 }
}

/// The history so far, every take on a resource with a budget paid for:
/// decided as if its budget had set its cost aside.
pub fn given_paid(history: &[Command]) -> Given {
    let state = history.iter().fold(State::default(), |state, c| {
        let funds = funds_for(&state, c, Answer::SetAside);
        let event = decide_funded(&state, c, T0, funds.as_ref());
        apply(state, &event)
    });
    Given { state, now: T0 }
}

pub struct Given {
    state: State,
    now: Millis,
}

/// Expires every hold due at `now`, as a batch does before its commands.
fn expire_due(mut state: State, now: Millis) -> (State, Vec<Event>) {
    let mut expiries = Vec::new();
    for id in state.due(now) {
        let resource_id = ResourceId::try_from("r").unwrap();
        if let Some(event) = expire(&state, &resource_id, &id, now) {
            state = apply(state, &event);
            expiries.push(event);
        }
    }
    (state, expiries)
}

impl Given {
    pub fn state(self) -> State {
        self.state
    }

    /// The clock moves on by `ms` milliseconds.
    pub fn after_ms(mut self, ms: Millis) -> Self {
        self.now += ms;
        self
    }

    /// Decides `command` now, after expiring the holds that are due, the
    /// way a batch does.
    pub fn when(self, command: Command) -> Then {
        self.when_funded(command, |_, _| None)
    }

    /// Decides `command` like [`Given::when`], its budget having answered
    /// `answer` for exactly its cost.
    pub fn when_paid(self, command: Command, answer: Answer) -> Then {
        self.when_funded(command, |state, command| funds_for(state, command, answer))
    }

    /// Decides `command` like [`Given::when`], with the funds `funds`
    /// gives for the state it is decided against.
    pub fn when_funded(
        self,
        command: Command,
        funds: impl FnOnce(&State, &Command) -> Option<Funds>,
    ) -> Then {
        let (before, expiries) = expire_due(self.state, self.now);
        let funds = funds(&before, &command);
        let event = decide_funded(&before, &command, self.now, funds.as_ref());
        let state = apply(before.clone(), &event);
        Then {
            before,
            expiries,
            event,
            state,
        }
    }
}

pub struct Then {
    /// The state the command was decided against (holds due expired).
    before: State,
    /// The expiries recorded before the command.
    expiries: Vec<Event>,
    event: Event,
    state: State,
}

impl Then {
    pub fn event(self) -> Event {
        self.event
    }

    /// The holds that expired before the command was decided.
    pub fn then_expired(self, holds: &[&str]) -> Self {
        let got: Vec<&str> = self
            .expiries
            .iter()
            .map(|e| e.details.hold_id.as_ref().map_or("", |h| h.as_str()))
            .collect();
        assert_eq!(got, holds, "expiries: {:?}", self.expiries);
        self
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
