//! Redis: each resource's aggregate, its event history and the idempotency
//! records, changed only through WATCH/MULTI optimistic transactions.
//!
//! Keys of resource `R` (prefix `P`), all under the hash tag `{R}` so one
//! resource's transaction never spans Redis Cluster slots:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{R}:state` | string (JSON) | capacity, reserved, per-customer limit, version |
//! | `P{R}:holdings` | hash | seats held per customer |
//! | `P{R}:reservations` | hash (JSON values) | accepted reservations, for cancel |
//! | `P{R}:history` | stream | every outcome event, in commit order |
//! | `P{R}:cmd:C` | string (JSON), with TTL | command `C`'s body hash and outcome event |
//! | `P{R}:conflict:H:C` | string (JSON), with TTL | the `idempotency_conflict` event of id `C` reused with body hash `H` |
//!
//! Every accepted command rewrites `state` (its version goes up), so WATCHing
//! `state` fences the holdings and reservations too; WATCHing the idempotency
//! records fences two workers racing on the same command. Conflict records
//! are WATCHed too, in a second round trip taken only when a batch holds a
//! reused `command_id`, before they are read.

use crate::config::{RedisSettings, WorkerSettings};
use crate::domain::{
    Action, CommandId, CommandKind, CustomerId, Event, Reservation, Resource, ResourceId, State,
    apply, decide, idempotency_conflict,
};
use crate::message::{Decoded, EventEnvelope, OutgoingEvent, derived_event_id};
use crate::metrics as metric;
use deadpool_redis::{Hook, HookError};
use deadpool_redis::{Pool, PoolError, Runtime};
use rand::Rng;
use redis::Value;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use time::OffsetDateTime;
use uuid::Uuid;

/// What became of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Decided now and committed.
    Decided(OutgoingEvent),
    /// Decided before (a duplicate delivery): the stored event, unchanged.
    Replayed(OutgoingEvent),
    /// The `command_id` was recorded with a different body: nothing changed.
    Conflict(OutgoingEvent),
}

impl Outcome {
    /// The event to publish.
    pub fn event(&self) -> &OutgoingEvent {
        match self {
            Outcome::Decided(e) | Outcome::Replayed(e) | Outcome::Conflict(e) => e,
        }
    }
}

/// Why a batch could not be committed. None of these is a business "no":
/// the commands stay unacked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot be reached, or the connection broke; the outcome of an
    /// EXEC in flight is unknown, so the next attempt re-reads the records.
    #[error("redis is unavailable: {0}")]
    Unavailable(String),
    /// Other writers won every optimistic attempt.
    #[error("gave up after {0} WATCH conflicts")]
    Contention(u32),
    /// Redis answered with an error, or holds data this worker cannot read.
    #[error("redis error: {0}")]
    Failed(String),
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        if e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
        {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Failed(e.to_string())
        }
    }
}

impl From<redis::ParsingError> for StoreError {
    fn from(e: redis::ParsingError) -> Self {
        StoreError::Failed(format!("unexpected reply: {e}"))
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            other => StoreError::Unavailable(other.to_string()),
        }
    }
}

fn corrupt(key: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(format!("cannot read {key}: {e}"))
}

/// Key names, under a configurable prefix.
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

    /// The outcome of command id `c` reused with the body hashed `hash`.
    /// The fixed-length hash comes first, so no command id can forge
    /// another's key.
    pub fn conflict(&self, r: &ResourceId, c: &CommandId, hash: &str) -> String {
        self.key(r, &format!("conflict:{hash}:{c}"))
    }
}

/// An idempotency record: which body was decided, and its event.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    hash: String,
    event: OutgoingEvent,
}

/// A command decided in the current attempt.
struct Fresh<'a> {
    event: Event,
    record: Record,
    key: &'a str,
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain struct")
}

/// A resource as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The resource.
    pub resource_id: ResourceId,
    /// Total seats.
    pub capacity: u32,
    /// Seats held.
    pub reserved: u32,
    /// Seats for sale.
    pub remaining: u32,
    /// Most seats per customer.
    pub per_customer_limit: Option<u32>,
    /// Aggregate version.
    pub version: u64,
}

/// The Redis side of the worker.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    retention_secs: u64,
    max_attempts: u32,
    retry_base: Duration,
    retry_max: Duration,
}

impl Store {
    /// A store over a new connection pool. Connections are opened lazily.
    pub fn new(redis: &RedisSettings, worker: &WorkerSettings) -> anyhow::Result<Store> {
        Self::named(redis, worker, None)
    }

    /// Like [`Store::new`], with every connection named `client_name`
    /// (`CLIENT SETNAME`), so `CLIENT LIST` shows which replica owns it.
    pub fn named(
        redis: &RedisSettings,
        worker: &WorkerSettings,
        client_name: Option<&str>,
    ) -> anyhow::Result<Store> {
        let mut config = deadpool_redis::Config::from_url(redis.url.clone());
        config.pool = Some(deadpool_redis::PoolConfig {
            max_size: redis.pool_size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(Duration::from_secs(5)),
                create: Some(Duration::from_secs(5)),
                recycle: Some(Duration::from_secs(5)),
            },
            ..Default::default()
        });
        let mut builder = config.builder()?.runtime(Runtime::Tokio1);
        if let Some(name) = client_name {
            // Redis client names cannot contain spaces.
            let name: String = name
                .chars()
                .map(|c| if c.is_whitespace() { '_' } else { c })
                .collect();
            builder = builder.post_create(Hook::async_fn(move |conn, _| {
                let name = name.clone();
                Box::pin(async move {
                    redis::cmd("CLIENT")
                        .arg("SETNAME")
                        .arg(&name)
                        .exec_async(conn)
                        .await
                        .map_err(HookError::Backend)
                })
            }));
        }
        Ok(Store {
            pool: builder.build()?,
            keys: Keys::new(redis.key_prefix.clone()),
            retention_secs: redis.idempotency_retention_secs,
            max_attempts: worker.max_commit_attempts.max(1),
            retry_base: Duration::from_millis(worker.retry_base_ms),
            retry_max: Duration::from_millis(worker.retry_max_ms),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether Redis answers a PING.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        redis::cmd("PING").exec_async(&mut *conn).await?;
        Ok(())
    }

    /// Decides and commits a batch of commands for one resource, in order,
    /// in one optimistic transaction; retries on WATCH conflicts.
    ///
    /// Every command of `batch` must target `resource`.
    pub async fn execute(
        &self,
        resource: &ResourceId,
        batch: &[Decoded],
    ) -> Result<Vec<Outcome>, StoreError> {
        debug_assert!(batch.iter().all(|d| &d.command.resource_id == resource));
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A connection of its own: WATCH state lives on the connection.
            let mut conn = self.pool.get().await?;
            match self.attempt(&mut conn, resource, batch).await {
                Ok(Some(outcomes)) => {
                    metrics::counter!(metric::COMMITS).increment(1);
                    return Ok(outcomes);
                }
                Ok(None) => {
                    metrics::counter!(metric::WATCH_CONFLICTS).increment(1);
                    if attempt >= self.max_attempts {
                        metrics::counter!(metric::CONTENTION_GIVE_UPS).increment(1);
                        return Err(StoreError::Contention(attempt));
                    }
                    drop(conn);
                    tokio::time::sleep(self.backoff(attempt)).await;
                }
                Err(e) => {
                    // The connection may still hold a WATCH or a half-sent
                    // MULTI: never hand it back to the pool.
                    drop(deadpool_redis::Connection::take(conn));
                    return Err(e);
                }
            }
        }
    }

    /// Full jitter: a random delay up to an exponentially growing cap, so
    /// replicas that collided do not collide again in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .retry_base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.retry_max);
        rand::rng().random_range(Duration::ZERO..=cap)
    }

    /// One WATCH / read / decide / MULTI..EXEC round. `None` means another
    /// writer changed a watched key and nothing was written.
    async fn attempt(
        &self,
        conn: &mut deadpool_redis::Connection,
        resource: &ResourceId,
        batch: &[Decoded],
    ) -> Result<Option<Vec<Outcome>>, StoreError> {
        let keys = &self.keys;
        let state_key = keys.state(resource);
        let record_keys: Vec<String> = batch
            .iter()
            .map(|d| keys.record(resource, &d.command.command_id))
            .collect();
        let (mut state, mut records) = self
            .watch_and_load(conn, resource, batch, &state_key, &record_keys)
            .await?;

        let now = OffsetDateTime::now_utc();
        let mut outcomes = Vec::with_capacity(batch.len());
        // Commands decided in this attempt: their event, record and key.
        let mut fresh: Vec<Fresh> = Vec::new();
        // Idempotency conflicts: their outcome's index, record key and body
        // hash.
        let mut conflicts: Vec<(usize, String, &str)> = Vec::new();
        for (d, record_key) in batch.iter().zip(&record_keys) {
            let cid = &d.command.command_id;
            let known = records.get(cid).or_else(|| {
                // The same command twice in one batch: the first decides.
                fresh
                    .iter()
                    .map(|f| &f.record)
                    .find(|r| &r.event.command_id == cid)
            });
            let outcome = match known {
                Some(r) if r.hash == d.body_hash => Outcome::Replayed(r.event.clone()),
                Some(_) => {
                    let event = idempotency_conflict(
                        &state,
                        d.command.action.kind(),
                        cid.clone(),
                        resource.clone(),
                    );
                    let id = derived_event_id(cid, &d.body_hash);
                    let key = keys.conflict(resource, cid, &d.body_hash);
                    conflicts.push((outcomes.len(), key, &d.body_hash));
                    Outcome::Conflict(OutgoingEvent::new(event, id, now))
                }
                None => {
                    let event = decide(&state, &d.command);
                    state = apply(state, &event);
                    let out = OutgoingEvent::new(event.clone(), Uuid::new_v4(), now);
                    fresh.push(Fresh {
                        event,
                        record: Record {
                            hash: d.body_hash.clone(),
                            event: out.clone(),
                        },
                        key: record_key,
                    });
                    Outcome::Decided(out)
                }
            };
            outcomes.push(outcome);
        }
        let new_conflicts = self
            .settle_conflicts(conn, &conflicts, &mut outcomes)
            .await?;
        if fresh.is_empty() && new_conflicts.is_empty() {
            redis::cmd("UNWATCH").exec_async(&mut **conn).await?;
            return Ok(Some(outcomes));
        }
        records.clear();

        let mut tx = self.transaction(resource, &state, &fresh);
        for (key, record) in new_conflicts {
            tx.set_ex(key, to_json(&record), self.retention_secs)
                .ignore();
        }
        let committed: Option<()> = tx.query_async(&mut **conn).await?;
        Ok(committed.map(|()| outcomes))
    }

    /// Makes every delivery of a conflicting body repeat one event: WATCHes
    /// and reads the conflict records, replays the stored ones, and returns
    /// the records to write for the new ones (the same body twice in one
    /// batch shares one).
    async fn settle_conflicts(
        &self,
        conn: &mut deadpool_redis::Connection,
        conflicts: &[(usize, String, &str)],
        outcomes: &mut [Outcome],
    ) -> Result<Vec<(String, Record)>, StoreError> {
        if conflicts.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&str> = conflicts.iter().map(|(_, k, _)| k.as_str()).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH").arg(&keys).ignore();
        pipe.cmd("MGET").arg(&keys);
        let (stored,): (Vec<Option<String>>,) = pipe.query_async(&mut **conn).await?;
        let mut new: Vec<(String, Record)> = Vec::new();
        for ((i, key, hash), stored) in conflicts.iter().zip(stored) {
            if let Some(json) = stored {
                let record: Record = serde_json::from_str(&json).map_err(|e| corrupt(key, e))?;
                // Still a conflict: logged and counted as one, not as a
                // duplicate delivery.
                outcomes[*i] = Outcome::Conflict(record.event);
            } else if let Some((_, first)) = new.iter().find(|(k, _)| k == key) {
                outcomes[*i] = Outcome::Conflict(first.event.clone());
            } else {
                let event = outcomes[*i].event().clone();
                let hash = (*hash).to_owned();
                new.push((key.clone(), Record { hash, event }));
            }
        }
        Ok(new)
    }

    /// WATCHes the state and the batch's idempotency records and reads
    /// everything the batch can touch, in one round trip. The pipeline is
    /// not a transaction: WATCH runs first, so any write after the reads is
    /// caught by EXEC.
    async fn watch_and_load(
        &self,
        conn: &mut deadpool_redis::Connection,
        resource: &ResourceId,
        batch: &[Decoded],
        state_key: &str,
        record_keys: &[String],
    ) -> Result<(State, HashMap<CommandId, Record>), StoreError> {
        let keys = &self.keys;
        let mut customers: Vec<&CustomerId> = Vec::new();
        let mut reservation_ids: Vec<&CommandId> = Vec::new();
        for d in batch {
            match &d.command.action {
                Action::Reserve { customer_id, .. } if !customers.contains(&customer_id) => {
                    customers.push(customer_id)
                }
                Action::Cancel { reservation_id } if !reservation_ids.contains(&reservation_id) => {
                    reservation_ids.push(reservation_id)
                }
                _ => {}
            }
        }
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH").arg(state_key).arg(record_keys).ignore();
        pipe.get(state_key);
        pipe.cmd("MGET").arg(record_keys);
        if !customers.is_empty() {
            pipe.cmd("HMGET")
                .arg(keys.holdings(resource))
                .arg(customers.iter().map(|c| c.as_str()).collect::<Vec<_>>());
        }
        if !reservation_ids.is_empty() {
            pipe.cmd("HMGET").arg(keys.reservations(resource)).arg(
                reservation_ids
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>(),
            );
        }
        let mut replies: std::vec::IntoIter<Value> = pipe
            .query_async::<Vec<Value>>(&mut **conn)
            .await?
            .into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);

        let state_json: Option<String> = redis::from_redis_value(next())?;
        let resource_state = state_json
            .map(|s| serde_json::from_str::<Resource>(&s))
            .transpose()
            .map_err(|e| corrupt(state_key, e))?;

        let record_values: Vec<Option<String>> = redis::from_redis_value(next())?;
        let mut records = HashMap::new();
        for (key, value) in record_keys.iter().zip(record_values) {
            if let Some(v) = value {
                let record: Record = serde_json::from_str(&v).map_err(|e| corrupt(key, e))?;
                records.insert(record.event.command_id.clone(), record);
            }
        }

        let mut state = State {
            resource: resource_state,
            ..State::default()
        };
        if !customers.is_empty() {
            let held: Vec<Option<u32>> = redis::from_redis_value(next())?;
            for (c, h) in customers.into_iter().zip(held) {
                state.holdings.insert(c.clone(), h.unwrap_or(0));
            }
        }
        if !reservation_ids.is_empty() {
            let found: Vec<Option<String>> = redis::from_redis_value(next())?;
            for (id, json) in reservation_ids.into_iter().zip(found) {
                if let Some(json) = json {
                    let r: Reservation = serde_json::from_str(&json)
                        .map_err(|e| corrupt(&keys.reservations(resource), e))?;
                    state.reservations.insert(id.clone(), r);
                }
            }
        }
        Ok((state, records))
    }

    /// The MULTI body: new state, holdings, reservations, history entries
    /// and idempotency records, with one command per hash where it can.
    ///
    /// Reserving customers' holdings and the cancelled reservations were
    /// read under the WATCH, so their end values are written. A customer
    /// who only cancels was not read (the reservation names them), so their
    /// holding is decremented instead.
    fn transaction(
        &self,
        resource: &ResourceId,
        state: &State,
        fresh: &[Fresh],
    ) -> redis::Pipeline {
        let keys = &self.keys;
        let mut tx = redis::pipe();
        tx.atomic();
        let mut reserving: Vec<&CustomerId> = Vec::new();
        let mut released: Vec<(&CustomerId, i64)> = Vec::new();
        let mut reservations: Vec<&CommandId> = Vec::new();
        for Fresh { event, .. } in fresh.iter().filter(|f| f.event.is_accepted()) {
            let (customer, quantity) = (&event.details.customer_id, event.details.quantity);
            match (event.command, customer, quantity) {
                (CommandKind::Reserve, Some(c), _) => {
                    reservations.push(&event.command_id);
                    if !reserving.contains(&c) {
                        reserving.push(c);
                    }
                }
                (CommandKind::Cancel, Some(c), Some(q)) => {
                    // A reservation made in this batch is written once, in
                    // its end state.
                    if let Some(id) = &event.details.reservation_id
                        && !reservations.contains(&id)
                    {
                        reservations.push(id);
                    }
                    match released.iter_mut().find(|(r, _)| *r == c) {
                        Some((_, total)) => *total += i64::from(q),
                        None => released.push((c, i64::from(q))),
                    }
                }
                _ => {}
            }
        }
        if let Some(r) = &state.resource
            && fresh.iter().any(|f| f.event.is_accepted())
        {
            tx.set(keys.state(resource), to_json(r)).ignore();
        }
        if !reserving.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(keys.holdings(resource));
            for c in &reserving {
                hset.arg(c.as_str()).arg(state.held_by(c));
            }
            tx.add_command(hset).ignore();
        }
        for (c, quantity) in released.into_iter().filter(|(c, _)| !reserving.contains(c)) {
            tx.cmd("HINCRBY")
                .arg(keys.holdings(resource))
                .arg(c.as_str())
                .arg(-quantity)
                .ignore();
        }
        let touched: Vec<(&CommandId, &Reservation)> = reservations
            .into_iter()
            .filter_map(|id| Some((id, state.reservations.get(id)?)))
            .collect();
        if !touched.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(keys.reservations(resource));
            for (id, r) in touched {
                hset.arg(id.as_str()).arg(to_json(r));
            }
            tx.add_command(hset).ignore();
        }
        for f in fresh {
            tx.cmd("XADD")
                .arg(keys.history(resource))
                .arg("*")
                .arg("event")
                .arg(&f.record.event.body)
                .ignore();
            tx.set_ex(f.key, to_json(&f.record), self.retention_secs)
                .ignore();
        }
        tx
    }

    /// Deletes every key under this store's prefix (SCAN + UNLINK). For
    /// tests and benchmarks with a prefix of their own.
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let pattern = format!("{}*", self.keys.prefix);
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(5000)
                .query_async(&mut *conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .exec_async(&mut *conn)
                    .await?;
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// The resource's current state, if it was ever defined.
    pub async fn summary(&self, resource: &ResourceId) -> Result<Option<Summary>, StoreError> {
        let mut conn = self.pool.get().await?;
        let key = self.keys.state(resource);
        let json: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut *conn).await?;
        let Some(json) = json else { return Ok(None) };
        let r: Resource = serde_json::from_str(&json).map_err(|e| corrupt(&key, e))?;
        Ok(Some(Summary {
            resource_id: resource.clone(),
            capacity: r.capacity,
            reserved: r.reserved,
            remaining: r.remaining(),
            per_customer_limit: r.per_customer_limit,
            version: r.version,
        }))
    }

    /// Seats held per customer.
    pub async fn holdings(
        &self,
        resource: &ResourceId,
    ) -> Result<HashMap<String, u32>, StoreError> {
        let mut conn = self.pool.get().await?;
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.holdings(resource))
            .query_async(&mut *conn)
            .await?)
    }

    /// The resource's event history, oldest first, as stored.
    pub async fn history(&self, resource: &ResourceId) -> Result<Vec<EventEnvelope>, StoreError> {
        const PAGE: usize = 1000;
        let key = self.keys.history(resource);
        let mut conn = self.pool.get().await?;
        let mut events = Vec::new();
        let mut start = "-".to_string();
        loop {
            let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(&key)
                .arg(&start)
                .arg("+")
                .arg("COUNT")
                .arg(PAGE)
                .query_async(&mut *conn)
                .await?;
            let n = page.ids.len();
            for entry in page.ids {
                let body: String = entry
                    .get("event")
                    .ok_or_else(|| corrupt(&key, format!("entry {} has no event", entry.id)))?;
                events.push(serde_json::from_str(&body).map_err(|e| corrupt(&key, e))?);
                start = format!("({}", entry.id);
            }
            if n < PAGE {
                return Ok(events);
            }
        }
    }
}
