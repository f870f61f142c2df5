//! One optimistic transaction on one resource: WATCH and load a snapshot,
//! then commit a change set with MULTI/EXEC.

use super::error::{StoreError, corrupt};
use super::keys::Keys;
use crate::domain::{ChangeSet, Holding, Reads, Record, Resource, ResourceId, Snapshot, State};
use crate::message::OutgoingEvent;
use deadpool_redis::Connection;
use redis::Value;
use serde::Serialize;
use std::collections::HashMap;

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Written (or nothing needed writing).
    Committed,
    /// Another writer changed a watched key first: nothing was written.
    Conflict,
}

/// A transaction in progress. Dropped before its commit (an error, a lost
/// future), its connection may still hold a WATCH or a half-sent MULTI, so
/// it is closed rather than returned to the pool.
pub struct Transaction<'a> {
    conn: Option<Connection>,
    keys: &'a Keys,
    /// How long idempotency records are kept, in seconds.
    retention_secs: u64,
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(Connection::take(conn));
        }
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain struct")
}

impl<'a> Transaction<'a> {
    /// A transaction on `conn`, a connection of its own.
    pub fn new(conn: Connection, keys: &'a Keys, retention_secs: u64) -> Self {
        Transaction {
            conn: Some(conn),
            keys,
            retention_secs,
        }
    }

    fn conn(&mut self) -> &mut Connection {
        self.conn
            .as_mut()
            .expect("a transaction has its connection until it ends")
    }

    /// WATCHes the resource's state and the commands' records and reads
    /// everything `reads` names, in one round trip. The pipeline is not a
    /// transaction: WATCH runs first, so any write after the reads is caught
    /// by EXEC.
    pub async fn load(
        &mut self,
        resource: &ResourceId,
        reads: &Reads<'_>,
    ) -> Result<Snapshot<OutgoingEvent>, StoreError> {
        let keys = self.keys;
        let state_key = keys.state(resource);
        let record_keys: Vec<String> = reads
            .commands
            .iter()
            .map(|c| keys.record(resource, c))
            .collect();
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH").arg(&state_key).arg(&record_keys).ignore();
        pipe.get(&state_key);
        pipe.cmd("MGET").arg(&record_keys);
        if !reads.customers.is_empty() {
            pipe.cmd("HMGET").arg(keys.holdings(resource)).arg(
                reads
                    .customers
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>(),
            );
        }
        if !reads.reservations.is_empty() {
            pipe.cmd("HMGET").arg(keys.reservations(resource)).arg(
                reads
                    .reservations
                    .iter()
                    .map(|c| c.as_str())
                    .collect::<Vec<_>>(),
            );
        }
        let replies: Vec<Value> = pipe.query_async(&mut **self.conn()).await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);

        let state: Option<String> = parse(next(), &state_key)?;
        let mut snapshot = Snapshot {
            state: State {
                resource: state
                    .map(|json| from_json::<Resource>(&json, &state_key))
                    .transpose()?,
                ..State::default()
            },
            records: HashMap::new(),
        };
        let records: Vec<Option<String>> = parse(next(), "the records")?;
        for ((id, key), json) in reads.commands.iter().zip(&record_keys).zip(records) {
            if let Some(json) = json {
                snapshot.records.insert(
                    (*id).clone(),
                    from_json::<Record<OutgoingEvent>>(&json, key)?,
                );
            }
        }
        if !reads.customers.is_empty() {
            let key = keys.holdings(resource);
            let held: Vec<Option<u32>> = parse(next(), &key)?;
            for (c, h) in reads.customers.iter().zip(held) {
                snapshot.state.holdings.insert((*c).clone(), h.unwrap_or(0));
            }
        }
        if !reads.reservations.is_empty() {
            let key = keys.reservations(resource);
            let found: Vec<Option<String>> = parse(next(), &key)?;
            for (id, json) in reads.reservations.iter().zip(found) {
                if let Some(json) = json {
                    let reservation = from_json(&json, &key)?;
                    snapshot
                        .state
                        .reservations
                        .insert((*id).clone(), reservation);
                }
            }
        }
        Ok(snapshot)
    }

    /// Writes `changes` in one MULTI/EXEC, with one command per hash where
    /// it can, unless a watched key changed since [`Transaction::load`].
    /// Ends the transaction either way.
    pub async fn commit(
        mut self,
        resource: &ResourceId,
        changes: &ChangeSet<OutgoingEvent>,
    ) -> Result<Commit, StoreError> {
        if changes.is_empty() {
            redis::cmd("UNWATCH").exec_async(&mut **self.conn()).await?;
            self.release();
            return Ok(Commit::Committed);
        }
        let tx = self.multi(resource, changes);
        let committed: Option<()> = tx.query_async(&mut **self.conn()).await?;
        // EXEC ends the WATCH whatever its result: the connection is clean.
        self.release();
        Ok(match committed {
            Some(()) => Commit::Committed,
            None => Commit::Conflict,
        })
    }

    /// Returns the connection to the pool: it holds no WATCH any more.
    fn release(&mut self) {
        drop(self.conn.take());
    }

    /// The MULTI body.
    fn multi(&self, resource: &ResourceId, changes: &ChangeSet<OutgoingEvent>) -> redis::Pipeline {
        let keys = self.keys;
        let mut tx = redis::pipe();
        tx.atomic();
        if let Some(r) = &changes.resource {
            tx.set(keys.state(resource), to_json(r)).ignore();
        }
        let set: Vec<(&str, u32)> = changes
            .holdings
            .iter()
            .filter_map(|(c, h)| match h {
                Holding::Set(n) => Some((c.as_str(), *n)),
                Holding::Release(_) => None,
            })
            .collect();
        if !set.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(keys.holdings(resource));
            for (c, n) in set {
                hset.arg(c).arg(n);
            }
            tx.add_command(hset).ignore();
        }
        for (c, h) in &changes.holdings {
            if let Holding::Release(n) = h {
                tx.cmd("HINCRBY")
                    .arg(keys.holdings(resource))
                    .arg(c.as_str())
                    .arg(-i64::from(*n))
                    .ignore();
            }
        }
        if !changes.reservations.is_empty() {
            let mut hset = redis::cmd("HSET");
            hset.arg(keys.reservations(resource));
            for (id, r) in &changes.reservations {
                hset.arg(id.as_str()).arg(to_json(r));
            }
            tx.add_command(hset).ignore();
        }
        for (id, record) in &changes.records {
            tx.cmd("XADD")
                .arg(keys.history(resource))
                .arg("*")
                .arg("event")
                .arg(&record.event.body)
                .ignore();
            tx.set_ex(
                keys.record(resource, id),
                to_json(record),
                self.retention_secs,
            )
            .ignore();
        }
        for (id, record) in &changes.conflicts {
            tx.cmd("SET")
                .arg(keys.record(resource, id))
                .arg(to_json(record))
                .arg("KEEPTTL")
                .ignore();
        }
        tx
    }
}

/// A reply as `T`, or the key it came from is unreadable.
fn parse<T: redis::FromRedisValue>(value: Value, key: &str) -> Result<T, StoreError> {
    redis::from_redis_value(value).map_err(|e| corrupt(key, e))
}

/// A stored JSON value as `T`, or `key` is unreadable.
fn from_json<T: serde::de::DeserializeOwned>(json: &str, key: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt(key, e))
}
