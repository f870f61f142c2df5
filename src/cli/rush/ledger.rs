//! What a rush's outcome events and a resource's history say, checked
//! against the contract. Pure: the rush and the fault-injection tests feed
//! it what they received.

use reservation_worker::domain::{self, CommandId, CommandKind, State, Verdict};
use reservation_worker::message::EventEnvelope;
use std::collections::{BTreeMap, HashMap};

/// How one accepted hold ended, as its events tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Life {
    confirmed: bool,
    cancelled: bool,
    expired: bool,
}

impl Life {
    fn ends(&self) -> usize {
        [self.confirmed, self.cancelled, self.expired]
            .iter()
            .filter(|e| **e)
            .count()
    }
}

/// The events of one rush, first deliveries and repeats.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Each command's first event, as canonical JSON.
    first: HashMap<CommandId, Vec<u8>>,
    /// Accepted holds and how they ended.
    holds: HashMap<CommandId, Life>,
    /// Commands accepted.
    accepted: std::collections::HashSet<CommandId>,
    /// Commands whose repeated events differed from the first.
    pub inconsistent: usize,
    /// Events received, repeats included.
    pub events: usize,
    /// Distinct outcomes by routing key, e.g. `hold.accepted`.
    pub outcomes: BTreeMap<String, usize>,
    /// Rejections by reason.
    pub rejected: BTreeMap<String, usize>,
    /// Seats taken by accepted reserves and holds.
    pub seats_taken: u64,
}

/// What a newly seen event means to the rush.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// A command's first event.
    New,
    /// A hold was accepted now: its customer may pay.
    NewHold(CommandId),
    /// A repeat of an event seen before.
    Repeat,
}

impl Ledger {
    /// Takes in one event.
    pub fn record(&mut self, envelope: &EventEnvelope) -> Seen {
        self.events += 1;
        let canonical = serde_json::to_vec(envelope).expect("plain struct");
        let event = &envelope.event;
        if let Some(first) = self.first.get(&event.command_id) {
            if *first != canonical {
                self.inconsistent += 1;
            }
            return Seen::Repeat;
        }
        self.first.insert(event.command_id.clone(), canonical);
        *self.outcomes.entry(event.routing_key()).or_default() += 1;
        if let Verdict::Rejected { reason, .. } = &event.verdict {
            *self.rejected.entry(reason.as_str().into()).or_default() += 1;
            return Seen::New;
        }
        self.accepted.insert(event.command_id.clone());
        let about = event.details.hold_id.as_ref();
        match event.command {
            CommandKind::Reserve => {
                self.seats_taken += u64::from(event.details.quantity.unwrap_or(0));
            }
            CommandKind::Hold => {
                self.seats_taken += u64::from(event.details.quantity.unwrap_or(0));
                self.holds.entry(event.command_id.clone()).or_default();
                return Seen::NewHold(event.command_id.clone());
            }
            CommandKind::Confirm => {
                if let Some(id) = about {
                    self.holds.entry(id.clone()).or_default().confirmed = true;
                }
            }
            CommandKind::Expire => {
                if let Some(id) = about {
                    self.holds.entry(id.clone()).or_default().expired = true;
                }
            }
            CommandKind::Cancel => {
                if let Some(life) = event
                    .details
                    .reservation_id
                    .as_ref()
                    .and_then(|id| self.holds.get_mut(id))
                {
                    life.cancelled = true;
                }
            }
            CommandKind::Define | CommandKind::DefineBudget | CommandKind::Unknown => {}
        }
        Seen::New
    }

    /// Whether `command` has an event.
    pub fn answered(&self, command: &CommandId) -> bool {
        self.first.contains_key(command)
    }

    /// Whether `command` was accepted; `None` before its event.
    pub fn was_accepted(&self, command: &CommandId) -> Option<bool> {
        self.answered(command)
            .then(|| self.accepted.contains(command))
    }

    /// Accepted holds that have not ended yet.
    pub fn open_holds(&self) -> usize {
        self.holds.values().filter(|l| l.ends() == 0).count()
    }

    /// Accepted holds, and how many were confirmed, cancelled, expired.
    pub fn hold_ends(&self) -> (usize, usize, usize, usize) {
        let count = |f: fn(&Life) -> bool| self.holds.values().filter(|l| f(l)).count();
        (
            self.holds.len(),
            count(|l| l.confirmed),
            count(|l| l.cancelled),
            count(|l| l.expired),
        )
    }

    /// Each broken promise, in words.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.inconsistent > 0 {
            p.push(format!(
                "{} commands got differing events",
                self.inconsistent
            ));
        }
        let mut twice: Vec<&CommandId> = self
            .holds
            .iter()
            .filter(|(_, l)| l.ends() > 1)
            .map(|(id, _)| id)
            .collect();
        twice.sort();
        if let Some(first) = twice.first() {
            p.push(format!(
                "{} holds ended twice (confirmed, cancelled or expired), e.g. {first}",
                twice.len()
            ));
        }
        p
    }
}

/// Folds a resource's history back into its state, checking at every step
/// that no more seats are reserved and held than there are.
pub fn fold(history: &[EventEnvelope]) -> Result<State, String> {
    let mut state = State::default();
    for (i, envelope) in history.iter().enumerate() {
        state = domain::apply(state, &envelope.event);
        if let Some(r) = &state.resource
            && u64::from(r.reserved) + u64::from(r.held) > u64::from(r.capacity)
        {
            return Err(format!(
                "OVERSOLD after event {i} ({}): {} reserved + {} held > {} seats",
                envelope.event.command_id, r.reserved, r.held, r.capacity
            ));
        }
    }
    Ok(state)
}
