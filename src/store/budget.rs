//! Budgets in Redis: each under a hash tag of its own, so a budget's
//! transaction never spans slots, and never a resource's.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{%budget:B}:state` | string (JSON) | cap per customer, version |
//! | `P{%budget:B}:history` | stream | every `define_budget` outcome |
//! | `P{%budget:B}:cmd:C` | string (JSON), with TTL | `define_budget` `C`'s record |
//! | `P{%budget:B}:applied` | hash | every accepted `define_budget`, kept for good: `version:body hash` |
//! | `P{%budget:B}:spend:U` | hash | `spent`: customer `U`'s total; `e:[R,C]`: the entry of take `C` on resource `R` |
//!
//! Every step is a WATCH/MULTI transaction on the keys it reads (the
//! setup marker, the cap, the customers' spending), so two workers
//! spending one customer's money at once cannot both pass the cap.

use super::error::{corrupt, parse};
use super::route::Conn;
use super::{Store, StoreError};
use crate::domain::{
    Answer, Ask, Budget, BudgetCommand, BudgetEvent, BudgetId, BudgetStep, CustomerId, Entry,
    EntryKey, Ledger, Outcome, Record, Spending, apply_budget, budget_conflict, decide_budget,
    remembered,
};
use crate::message::OutgoingEvent;
use redis::Value;
use std::collections::{BTreeMap, HashMap};
use time::OffsetDateTime;
use uuid::Uuid;

/// What a `define_budget` reads: the setup marker, the budget, the
/// command's record, Redis's `TIME` and the command's `applied` entry.
type BudgetReads = (
    bool,
    Option<String>,
    Option<String>,
    (i64, i64),
    Option<String>,
);

/// The field of a spending hash that holds the customer's total.
const SPENT: &str = "spent";

/// The field of a spending hash that holds one entry.
fn entry_field(key: &EntryKey) -> String {
    format!("e:{}", serde_json::json!([key.0, key.1]))
}

/// The entry key a spending hash field names, if it names one.
fn entry_key(field: &str) -> Option<EntryKey> {
    serde_json::from_str(field.strip_prefix("e:")?).ok()
}

/// One budget and, per customer, the entries a step reads.
type Wanted<'a> = (&'a BudgetId, BTreeMap<&'a CustomerId, Vec<EntryKey>>);

/// The entries named, by customer.
fn wanted<'a>(
    keys: impl Iterator<Item = (&'a CustomerId, EntryKey)>,
) -> BTreeMap<&'a CustomerId, Vec<EntryKey>> {
    let mut wanted: BTreeMap<&CustomerId, Vec<EntryKey>> = BTreeMap::new();
    for (customer, key) in keys {
        wanted.entry(customer).or_default().push(key);
    }
    wanted
}

impl Store {
    /// Step 1 for asks on one budget: sets their amounts aside if each
    /// customer stays within the cap. `None` if another writer changed the
    /// customers' spending first (nothing was written: ask again).
    pub async fn set_aside(
        &self,
        budget: &BudgetId,
        asks: &[Ask],
    ) -> Result<Option<Vec<Answer>>, StoreError> {
        let answers = self.set_aside_all(&[(budget, asks)]).await?;
        Ok(answers.map(|mut all| all.remove(0)))
    }

    /// [`Store::set_aside`] on several budgets in one transaction: their
    /// answers in order, or `None` for all if any lost its race. On a
    /// cluster the budgets must share a hash slot ([`Store::budget_slot`]).
    pub async fn set_aside_all(
        &self,
        asks: &[(&BudgetId, &[Ask])],
    ) -> Result<Option<Vec<Vec<Answer>>>, StoreError> {
        let wanted: Vec<Wanted> = asks
            .iter()
            .map(|(budget, asks)| {
                let keys = asks.iter().map(|a| {
                    let key = (a.resource_id.clone(), a.command_id.clone());
                    (&a.customer_id, key)
                });
                (*budget, wanted(keys))
            })
            .collect();
        self.update_ledgers(&wanted, true, |ledgers| {
            let answering = ledgers.iter_mut().zip(asks);
            answering
                .map(|(ledger, (_, asks))| ledger.set_aside(asks))
                .collect()
        })
        .await
    }

    /// Step 3 for steps on one budget. `false` if another writer changed
    /// the customers' spending first (nothing was written: settle again).
    pub async fn settle(
        &self,
        budget: &BudgetId,
        steps: &[BudgetStep],
    ) -> Result<bool, StoreError> {
        self.settle_all(&[(budget, steps)]).await
    }

    /// [`Store::settle`] on several budgets in one transaction, all or
    /// none. On a cluster the budgets must share a hash slot.
    pub async fn settle_all(
        &self,
        steps: &[(&BudgetId, &[BudgetStep])],
    ) -> Result<bool, StoreError> {
        let wanted: Vec<Wanted> = steps
            .iter()
            .map(|(budget, steps)| {
                let keys = steps.iter().map(|s| {
                    let key = (s.resource_id.clone(), s.reservation_id.clone());
                    (&s.customer_id, key)
                });
                (*budget, wanted(keys))
            })
            .collect();
        // Settling never looks at the cap: a budget whose state cannot be
        // read still gives money back.
        let settled = self
            .update_ledgers(&wanted, false, |ledgers| {
                for (ledger, (_, steps)) in ledgers.iter_mut().zip(steps) {
                    ledger.settle(steps);
                }
            })
            .await?;
        Ok(settled.is_some())
    }

    /// One transaction on the ledgers of `wanted`'s budgets: loads them
    /// under WATCH, lets `change` change them, writes what changed. What
    /// `change` returned, or `None` if another writer changed a watched key
    /// first (nothing was written).
    async fn update_ledgers<T>(
        &self,
        wanted: &[Wanted<'_>],
        with_cap: bool,
        change: impl FnOnce(&mut [Ledger]) -> T,
    ) -> Result<Option<T>, StoreError> {
        let Some((first, _)) = wanted.first() else {
            return Ok(Some(change(&mut [])));
        };
        let mut conn = self.router.tx(&self.keys.budget(first)).await?;
        let result = async {
            let before = self.load_ledgers(&mut conn, wanted, with_cap).await?;
            let mut after = before.clone();
            let changed = change(&mut after);
            let written = self
                .write_ledgers(&mut conn, wanted, &before, &after)
                .await?;
            Ok(written.then_some(changed))
        }
        .await;
        discard_on_error(conn, result)
    }

    /// Which budgets one transaction may span: those with the same answer
    /// (any on a single Redis; one hash slot's on a cluster).
    pub fn budget_slot(&self, budget: &BudgetId) -> Option<u16> {
        self.keys
            .is_cluster()
            .then(|| super::keys::slot(&self.keys.budget(budget)))
    }

    /// WATCHes the markers, the caps and the customers' spending of every
    /// budget, and reads them with the entries named, in one round trip.
    async fn load_ledgers(
        &self,
        conn: &mut Conn,
        wanted: &[Wanted<'_>],
        with_cap: bool,
    ) -> Result<Vec<Ledger>, StoreError> {
        let keys = &self.keys;
        let mut markers: Vec<String> = wanted.iter().map(|(b, _)| keys.budget_marker(b)).collect();
        markers.sort_unstable();
        markers.dedup();
        let states: Vec<String> = wanted.iter().map(|(b, _)| keys.budget(b)).collect();
        let spend_keys: Vec<Vec<String>> = wanted
            .iter()
            .map(|(b, w)| w.keys().map(|c| keys.spending(b, c)).collect())
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH")
            .arg(&markers)
            .arg(&states)
            .arg(&spend_keys)
            .ignore();
        pipe.cmd("EXISTS").arg(&markers);
        pipe.cmd("MGET").arg(&states);
        for ((_, wanted), spend_keys) in wanted.iter().zip(&spend_keys) {
            for (entries, key) in wanted.values().zip(spend_keys) {
                let mut fields = vec![SPENT.to_string()];
                fields.extend(entries.iter().map(entry_field));
                pipe.cmd("HMGET").arg(key).arg(fields);
            }
        }
        let replies: Vec<Value> = pipe.query_async(&mut *conn).await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let initialised: usize = parse(next(), "the budget setup markers")?;
        if initialised < markers.len() {
            return Err(StoreError::Uninitialised {
                key: markers.join(", "),
            });
        }
        let found: Vec<Option<String>> = parse(next(), "the budgets")?;
        let mut ledgers = Vec::with_capacity(wanted.len());
        for (((_, wanted), spend_keys), (state, state_key)) in wanted
            .iter()
            .zip(&spend_keys)
            .zip(found.into_iter().zip(&states))
        {
            let mut ledger = Ledger {
                budget: state
                    .filter(|_| with_cap)
                    .map(|json| {
                        serde_json::from_str::<Budget>(&json).map_err(|e| corrupt(state_key, e))
                    })
                    .transpose()?,
                customers: HashMap::new(),
            };
            for ((customer, entries), key) in wanted.iter().zip(spend_keys) {
                let values: Vec<Option<String>> = parse(next(), key)?;
                let mut values = values.into_iter();
                let spent = values
                    .next()
                    .flatten()
                    .map(|v| v.parse::<u64>().map_err(|e| corrupt(key, e)))
                    .transpose()?
                    .unwrap_or(0);
                let mut spending = Spending {
                    spent,
                    entries: HashMap::new(),
                };
                for (entry_key, json) in entries.iter().zip(values) {
                    if let Some(json) = json {
                        let entry: Entry =
                            serde_json::from_str(&json).map_err(|e| corrupt(key, e))?;
                        spending.entries.insert(entry_key.clone(), entry);
                    }
                }
                ledger.customers.insert((*customer).clone(), spending);
            }
            ledgers.push(ledger);
        }
        Ok(ledgers)
    }

    /// Writes what changed between `before` and `after`, budget by budget,
    /// in one MULTI/EXEC (or UNWATCHes when nothing did). `false` if a
    /// watched key changed.
    async fn write_ledgers(
        &self,
        conn: &mut Conn,
        wanted: &[Wanted<'_>],
        before: &[Ledger],
        after: &[Ledger],
    ) -> Result<bool, StoreError> {
        let mut tx = redis::pipe();
        tx.atomic();
        let mut any = false;
        for (((budget, _), before), after) in wanted.iter().zip(before).zip(after) {
            any |= self.queue_ledger_writes(&mut tx, budget, before, after);
        }
        if !any {
            redis::cmd("UNWATCH").exec_async(&mut *conn).await?;
            return Ok(true);
        }
        let committed: Option<()> = tx.query_async(&mut *conn).await?;
        if committed.is_some() {
            self.replicated(conn).await?;
        }
        Ok(committed.is_some())
    }

    /// Queues what changed between `before` and `after` of one budget;
    /// `true` if anything did.
    fn queue_ledger_writes(
        &self,
        tx: &mut redis::Pipeline,
        budget: &BudgetId,
        before: &Ledger,
        after: &Ledger,
    ) -> bool {
        let mut any = false;
        for (customer, spending) in &after.customers {
            let old = before.customers.get(customer);
            let key = self.keys.spending(budget, customer);
            if old.map(|o| o.spent) != Some(spending.spent) {
                tx.hset(&key, SPENT, spending.spent).ignore();
                any = true;
            }
            for (entry_key, entry) in &spending.entries {
                let was = old.and_then(|o| o.entries.get(entry_key));
                if was == Some(entry) || (was.is_none() && entry.is_empty()) {
                    continue;
                }
                any = true;
                if entry.is_empty() {
                    tx.hdel(&key, entry_field(entry_key)).ignore();
                } else {
                    let json = serde_json::to_string(entry).expect("plain struct");
                    tx.hset(&key, entry_field(entry_key), json).ignore();
                }
            }
        }
        any
    }

    /// Decides and commits a `define_budget`, with its idempotency record
    /// and history entry. `None` if another writer got there first.
    pub async fn define_budget(
        &self,
        command: &BudgetCommand,
        body_hash: &str,
    ) -> Result<Option<Outcome<OutgoingEvent>>, StoreError> {
        let keys = &self.keys;
        let budget = &command.budget_id;
        let marker = keys.budget_marker(budget);
        let (state_key, record_key) = (
            keys.budget(budget),
            keys.budget_record(budget, &command.command_id),
        );
        let mut conn = self.router.tx(&state_key).await?;
        let result = self
            .define_budget_on(
                &mut conn,
                command,
                body_hash,
                &marker,
                &state_key,
                &record_key,
            )
            .await;
        discard_on_error(conn, result)
    }

    async fn define_budget_on(
        &self,
        conn: &mut Conn,
        command: &BudgetCommand,
        body_hash: &str,
        marker: &str,
        state_key: &str,
        record_key: &str,
    ) -> Result<Option<Outcome<OutgoingEvent>>, StoreError> {
        let keys = &self.keys;
        let budget = &command.budget_id;
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH")
            .arg(marker)
            .arg(state_key)
            .arg(record_key)
            .ignore();
        let applied_key = keys.budget_applied(budget);
        pipe.exists(marker).get(state_key).get(record_key);
        pipe.cmd("TIME");
        pipe.hget(&applied_key, command.command_id.as_str());
        let (initialised, state, record, (secs, micros), applied): BudgetReads =
            pipe.query_async(&mut *conn).await?;
        if !initialised {
            return Err(StoreError::Uninitialised {
                key: marker.to_string(),
            });
        }
        let current: Option<Budget> = state
            .map(|json| serde_json::from_str(&json).map_err(|e| corrupt(state_key, e)))
            .transpose()?;
        let mut record: Option<Record<OutgoingEvent>> = record
            .map(|json| serde_json::from_str(&json).map_err(|e| corrupt(record_key, e)))
            .transpose()?;
        if record.is_none()
            && let Some(applied) = applied
        {
            // Accepted before and its record expired: the event is in the
            // history at `<version>-0`, and is replayed, never decided again.
            record = Some(self.recover_budget_record(conn, budget, &applied).await?);
        }
        let now = OffsetDateTime::from_unix_timestamp(secs).map_err(|e| corrupt("TIME", e))?
            + time::Duration::microseconds(micros);
        let seal = |event: BudgetEvent| OutgoingEvent::of_budget(event, Uuid::new_v4(), now);
        let mut tx = redis::pipe();
        tx.atomic();
        let outcome = match record.as_mut() {
            Some(r) => {
                let conflict = || seal(budget_conflict(current.as_ref(), command));
                let (outcome, changed) = remembered(r, &body_hash.into(), conflict);
                if !changed {
                    redis::cmd("UNWATCH").exec_async(&mut *conn).await?;
                    return Ok(Some(outcome));
                }
                let json = serde_json::to_string(&r).expect("plain struct");
                tx.cmd("SET")
                    .arg(record_key)
                    .arg(json)
                    .arg("KEEPTTL")
                    .ignore();
                outcome
            }
            None => {
                let decided = decide_budget(current.as_ref(), command);
                let after = apply_budget(current.clone(), &decided);
                let event = seal(decided);
                if after != current
                    && let Some(b) = &after
                {
                    tx.set(state_key, serde_json::to_string(b).expect("plain struct"))
                        .ignore();
                }
                let entry = match event.reason {
                    None => format!("{}-0", event.version),
                    Some(_) => format!("{}-*", event.version),
                };
                tx.cmd("XADD")
                    .arg(keys.budget_history(budget))
                    .arg(entry)
                    .arg("event")
                    .arg(&event.body)
                    .ignore();
                let record = Record {
                    hash: body_hash.into(),
                    event: event.clone(),
                    conflicts: Vec::new(),
                };
                let json = serde_json::to_string(&record).expect("plain struct");
                // An accepted define_budget is kept for good in `applied`
                // and found again in the history by its version, like a
                // resource's commands; its record may expire.
                tx.set_ex(record_key, json, self.retention_secs).ignore();
                if event.reason.is_none() {
                    tx.hset(
                        &applied_key,
                        command.command_id.as_str(),
                        format!("{}:{body_hash}", event.version),
                    )
                    .ignore();
                }
                Outcome::Decided(event)
            }
        };
        let committed: Option<()> = tx.query_async(&mut *conn).await?;
        if committed.is_some() {
            self.replicated(conn).await?;
        }
        Ok(committed.map(|()| outcome))
    }

    /// The record of an accepted `define_budget` whose record expired,
    /// rebuilt from `applied` (`version:hash`) and the history.
    async fn recover_budget_record(
        &self,
        conn: &mut Conn,
        budget: &BudgetId,
        applied: &str,
    ) -> Result<Record<OutgoingEvent>, StoreError> {
        let key = self.keys.budget_history(budget);
        let (version, hash) = applied
            .split_once(':')
            .ok_or_else(|| corrupt(&key, format!("applied entry {applied:?}")))?;
        let id = format!("{version}-0");
        let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&id)
            .arg(&id)
            .query_async(&mut *conn)
            .await?;
        let body: Vec<u8> = page
            .ids
            .first()
            .and_then(|entry| entry.get("event"))
            .ok_or_else(|| corrupt(&key, format!("no entry {id} for an accepted command")))?;
        let event = OutgoingEvent::from_budget_body(body).map_err(|e| corrupt(&key, e))?;
        Ok(Record {
            hash: hash.into(),
            event,
            conflicts: Vec::new(),
        })
    }

    // The read side, for `verify` and the tests.

    /// A budget, if it was ever defined.
    pub async fn budget(&self, budget: &BudgetId) -> Result<Option<Budget>, StoreError> {
        let key = self.keys.budget(budget);
        let (json,): (Option<String>,) = self.router.follow(&key, redis::pipe().get(&key)).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|e| corrupt(&key, e)))
            .transpose()
    }

    /// Every customer's spending on a budget, with every entry (SCAN, in
    /// pages).
    pub async fn spendings(
        &self,
        budget: &BudgetId,
    ) -> Result<BTreeMap<CustomerId, Spending>, StoreError> {
        let keys = self.scan(&self.keys.spending_pattern(budget)).await?;
        let mut out = BTreeMap::new();
        for key in keys {
            let Some(customer) = self.keys.customer_of_spending(budget, &key) else {
                continue;
            };
            let (fields,): (HashMap<String, String>,) = self
                .router
                .follow(&key, redis::pipe().hgetall(&key))
                .await?;
            let mut spending = Spending::default();
            for (field, value) in fields {
                if field == SPENT {
                    spending.spent = value.parse().map_err(|e| corrupt(&key, e))?;
                } else if let Some(entry_key) = entry_key(&field) {
                    let entry = serde_json::from_str(&value).map_err(|e| corrupt(&key, e))?;
                    spending.entries.insert(entry_key, entry);
                } else {
                    return Err(corrupt(&key, format!("unknown field {field:?}")));
                }
            }
            out.insert(customer, spending);
        }
        Ok(out)
    }

    /// A budget's `define_budget` outcomes, oldest first.
    pub async fn budget_history(&self, budget: &BudgetId) -> Result<Vec<BudgetEvent>, StoreError> {
        let envelopes: Vec<crate::message::BudgetEnvelope> = self
            .stream_events(&self.keys.budget_history(budget))
            .await?;
        Ok(envelopes.into_iter().map(|e| e.event).collect())
    }

    /// Every key matching `pattern`, by SCAN on every master (never KEYS:
    /// Redis keeps serving while it runs).
    pub async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for (node, _) in self.router.masters().await? {
            let mut conn = self.router.side_of(&node).await?;
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut conn)
                    .await?;
                out.extend(keys);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Passes `result` on; after an error the connection may still hold a
/// WATCH or a half-sent MULTI, so it is closed rather than pooled.
fn discard_on_error<T>(conn: Conn, result: Result<T, StoreError>) -> Result<T, StoreError> {
    if result.is_err() {
        conn.discard();
    }
    result
}
