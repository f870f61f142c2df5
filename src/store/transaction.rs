//! One optimistic transaction on one resource: WATCH and load a snapshot,
//! then commit a change set with MULTI/EXEC.

use super::Store;
use super::error::{StoreError, corrupt, parse};
use super::keys::Keys;
use super::route::Conn;
use crate::domain::{
    Applied, ChangeSet, CommandId, DueHold, Holding, Millis, Reads, Record, Resource, ResourceId,
    Snapshot, State,
};
use crate::message::OutgoingEvent;
use redis::{Cmd, RedisWrite, Value};
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
    conn: Option<Conn>,
    store: &'a Store,
    keys: &'a Keys,
    /// The states [`Transaction::load_all`] read, as stored: what a commit
    /// writes back for a resource whose state did not change.
    loaded_states: HashMap<ResourceId, String>,
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.discard();
        }
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain struct")
}

/// `name` with room for `args` more arguments of about `bytes` bytes in
/// all. `redis::cmd` starts with empty buffers and grows them as arguments
/// come, a copy each time: several allocations for a command that carries
/// an event body.
fn sized(name: &str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(args + 1, name.len() + bytes);
    cmd.arg(name);
    cmd
}

/// [`sized`] with `key` as its first argument: `args` and `bytes` count
/// the others.
fn keyed(name: &str, key: &str, args: usize, bytes: usize) -> Cmd {
    let mut cmd = sized(name, 1 + args, key.len() + bytes);
    cmd.arg(key);
    cmd
}

/// `value` as JSON, written straight into `cmd` as its next argument.
fn json_arg(cmd: &mut Cmd, value: &impl Serialize) {
    serde_json::to_writer(cmd.writer_for_next_arg(), value).expect("plain struct");
}

/// Room for a record's JSON besides its event's body: the hash, the ids,
/// the typed fields.
const RECORD_OVERHEAD: usize = 320;

impl<'a> Transaction<'a> {
    /// A transaction on `conn`, a connection of its own to the master of
    /// the resource's slot.
    pub fn new(conn: Conn, store: &'a Store) -> Self {
        Transaction {
            conn: Some(conn),
            store,
            keys: &store.keys,
            loaded_states: HashMap::new(),
        }
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a transaction has its connection until it ends")
    }

    /// WATCHes the setup marker and the resource's state, and reads
    /// everything `reads` names, in one round trip. The pipeline is not a
    /// transaction: WATCH runs first, so any write after the reads (a flush
    /// included) is caught by EXEC.
    ///
    /// The state alone stands for every key of the resource a commit
    /// writes: [`Transaction::commit_all`] rewrites it in every MULTI that
    /// writes anything for the resource, even unchanged, so a concurrent
    /// decision of the same command (a rejection changes no state) still
    /// touches a watched key. A resource without a state (never defined)
    /// has nothing to rewrite: its commands' records are watched and read
    /// again in a second round trip, only then.
    ///
    /// A command accepted before whose record has expired is found in the
    /// `applied` index; its event is read back from the history (a second
    /// round trip, only then) and given to the snapshot as its record, so
    /// it is replayed, never decided again.
    pub async fn load(
        &mut self,
        resource: &ResourceId,
        reads: &Reads<'_>,
    ) -> Result<Snapshot<OutgoingEvent>, StoreError> {
        let mut snapshots = self.load_all(&[(resource, reads)]).await?;
        Ok(snapshots.remove(0))
    }

    /// [`Transaction::load`] for several resources at once, one WATCH and
    /// one round trip for all of them: their snapshots, in order. All are
    /// decided at the same `now`. On a cluster the resources must share a
    /// hash slot (a transaction's keys always do).
    pub async fn load_all(
        &mut self,
        group: &[(&ResourceId, &Reads<'_>)],
    ) -> Result<Vec<Snapshot<OutgoingEvent>>, StoreError> {
        let keys = self.keys;
        let record_keys: Vec<Vec<String>> = group
            .iter()
            .map(|(resource, reads)| {
                let record = |c: &&CommandId| keys.record(resource, c);
                reads.commands.iter().map(record).collect()
            })
            .collect();
        // One setup marker per slot: on a single Redis, or within a
        // cluster group, usually one for the whole group.
        let mut markers: Vec<String> = if keys.is_cluster() {
            group.iter().map(|(r, _)| keys.marker(r)).collect()
        } else {
            vec![keys.marker_of_any()]
        };
        markers.sort_unstable();
        markers.dedup();
        let states: Vec<String> = group.iter().map(|(r, _)| keys.state(r)).collect();
        let length = |keys: &[String]| keys.iter().map(String::len).sum::<usize>();
        let records = record_keys.iter().map(Vec::len).sum::<usize>();
        let mut watch = sized(
            "WATCH",
            markers.len() + states.len(),
            length(&markers) + length(&states),
        );
        watch.arg(&markers).arg(&states);
        let mut pipe = redis::Pipeline::with_capacity(4 + 4 * group.len());
        pipe.add_command(watch).ignore();
        pipe.cmd("TIME");
        pipe.cmd("EXISTS").arg(&markers);
        // Every state and record of the group in one MGET: they are plain
        // strings, and share the group's slot.
        let record_bytes: usize = record_keys.iter().map(|k| length(k)).sum();
        let mut mget = sized(
            "MGET",
            states.len() + records,
            length(&states) + record_bytes,
        );
        mget.arg(&states).arg(&record_keys);
        pipe.add_command(mget);
        for (resource, reads) in group {
            queue_reads(&mut pipe, keys, resource, reads);
        }
        let replies: Vec<Value> = pipe.query_async(self.conn()).await?;
        let mut replies = replies.into_iter();
        let mut next = || replies.next().unwrap_or(Value::Nil);
        let (secs, micros): (u64, u64) = parse(next(), "TIME")?;
        let now = secs * 1000 + micros / 1000;
        let initialised: usize = parse(next(), "the setup markers")?;
        if initialised < markers.len() {
            return Err(StoreError::Uninitialised {
                key: markers.join(", "),
            });
        }
        let mut strings: Vec<Option<String>> = parse(next(), "the states and records")?;
        strings.resize(
            states.len() + record_keys.iter().map(Vec::len).sum::<usize>(),
            None,
        );
        let mut strings = strings.into_iter();
        let mut found: Vec<Found> = states
            .iter()
            .map(|_| Found {
                state: strings.next().flatten(),
                records: Vec::new(),
            })
            .collect();
        for (f, records) in found.iter_mut().zip(&record_keys) {
            f.records = strings.by_ref().take(records.len()).collect();
        }
        let mut loaded = Vec::with_capacity(group.len());
        for (((resource, reads), records), found) in group.iter().zip(&record_keys).zip(found) {
            loaded.push(read_snapshot(
                &mut next, keys, resource, reads, records, found, now,
            )?);
        }
        let undefined: Vec<(usize, &[String])> = loaded
            .iter()
            .zip(&record_keys)
            .enumerate()
            .filter(|(_, (l, records))| l.state_json.is_none() && !records.is_empty())
            .map(|(at, (_, records))| (at, records.as_slice()))
            .collect();
        if !undefined.is_empty() {
            self.watch_records(group, &mut loaded, &undefined).await?;
        }
        self.loaded_states = loaded
            .iter()
            .filter_map(|l| Some((l.snapshot.resource_id.clone(), l.state_json.clone()?)))
            .collect();
        let mut snapshots = Vec::with_capacity(group.len());
        for Loaded {
            mut snapshot,
            expired,
            due,
            ..
        } in loaded
        {
            let resource = snapshot.resource_id.clone();
            if !expired.is_empty() {
                let recovered = self.recover(&resource, &expired).await?;
                snapshot.records.extend(recovered);
            }
            // Holds that have run out: a second round trip, only when
            // there are.
            if due {
                snapshot.due = self.due(&resource, now).await?;
            }
            snapshots.push(snapshot);
        }
        Ok(snapshots)
    }

    /// WATCHes the records of the resources of `group` at `undefined`
    /// (with their keys), which have no state for a commit to rewrite, and
    /// reads them again: a decision of one of their commands that another
    /// writer committed since the first read is found now, and one
    /// committed from now on fails the EXEC.
    async fn watch_records(
        &mut self,
        group: &[(&ResourceId, &Reads<'_>)],
        loaded: &mut [Loaded<'_>],
        undefined: &[(usize, &[String])],
    ) -> Result<(), StoreError> {
        let keys: Vec<&String> = undefined.iter().flat_map(|(_, k)| k.iter()).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH").arg(&keys).ignore();
        pipe.cmd("MGET").arg(&keys);
        let (found,): (Vec<Option<String>>,) = pipe.query_async(self.conn()).await?;
        let mut found = found.into_iter();
        for &(at, records) in undefined {
            let Loaded {
                snapshot, expired, ..
            } = &mut loaded[at];
            for ((id, key), json) in group[at].1.commands.iter().zip(records).zip(found.by_ref()) {
                match json {
                    Some(json) => {
                        let record = from_json::<Record<OutgoingEvent>>(&json, key)?;
                        snapshot.records.insert((*id).clone(), record);
                        expired.retain(|(e, _)| e != id);
                    }
                    None => {
                        snapshot.records.remove(*id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Every hold of `resource` that has run out at `now`, earliest first.
    async fn due(
        &mut self,
        resource: &ResourceId,
        now: Millis,
    ) -> Result<Vec<DueHold>, StoreError> {
        let key = self.keys.holds(resource);
        let due: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(now)
            .arg("WITHSCORES")
            .query_async(self.conn())
            .await?;
        due.into_iter()
            .map(|(member, at)| {
                hold_from_member(&member, at as Millis).map_err(|e| corrupt(&key, e))
            })
            .collect()
    }

    /// Puts holds about to be committed into the due-time index that the
    /// workers sweep, for every resource of the group. Done before the
    /// commit: an entry for a hold that was not committed after all costs
    /// the sweep one look, but a committed hold missing from the index
    /// would run out unnoticed.
    pub async fn index_holds(
        &mut self,
        group: &[(&ResourceId, &[DueHold])],
    ) -> Result<(), StoreError> {
        let keys = self.keys;
        // One pipeline per master that holds an index shard of the group.
        let mut by_node: Vec<(super::route::Node, redis::Pipeline)> = Vec::new();
        for (resource, holds) in group {
            if holds.is_empty() {
                continue;
            }
            let index = keys.due_index(keys.due_shard(resource));
            let node = self.store.router.node_of(&index).await?;
            let at = match by_node.iter().position(|(n, _)| n.addr == node.addr) {
                Some(at) => at,
                None => {
                    by_node.push((node, redis::pipe()));
                    by_node.len() - 1
                }
            };
            let pipe = &mut by_node[at].1;
            for hold in *holds {
                let entry = serde_json::json!([resource, hold.id, hold.expires_at]).to_string();
                pipe.zadd(&index, entry, hold.expires_at).ignore();
            }
        }
        // On a cluster an index shard may live on another master: a
        // connection to it from the side pool, never held while waiting for
        // another, so no two transactions can deadlock on each other.
        for (node, pipe) in by_node {
            if *node.addr == *self.conn().node() {
                pipe.query_async::<()>(self.conn()).await?;
            } else {
                let mut side = self.store.router.side_of(&node).await?;
                pipe.query_async::<()>(&mut side).await?;
            }
        }
        Ok(())
    }

    /// Rebuilds the records of accepted commands whose records expired,
    /// from their events in the history (entry `<version>-0`).
    async fn recover(
        &mut self,
        resource: &ResourceId,
        expired: &[(&CommandId, Applied)],
    ) -> Result<Vec<(CommandId, Record<OutgoingEvent>)>, StoreError> {
        let key = self.keys.history(resource);
        let mut pipe = redis::pipe();
        for (_, applied) in expired {
            let id = format!("{}-0", applied.version);
            pipe.cmd("XRANGE").arg(&key).arg(&id).arg(&id);
        }
        let pages: Vec<redis::streams::StreamRangeReply> = pipe.query_async(self.conn()).await?;
        let mut recovered = Vec::with_capacity(expired.len());
        for ((id, applied), page) in expired.iter().zip(pages) {
            let body: Vec<u8> = page
                .ids
                .first()
                .and_then(|entry| entry.get("event"))
                .ok_or_else(|| {
                    corrupt(
                        &key,
                        format!("command {id} was accepted at version {} but that event is not in the history", applied.version),
                    )
                })?;
            let event = OutgoingEvent::from_body(body).map_err(|e| corrupt(&key, e))?;
            let record = Record {
                hash: applied.hash.clone(),
                event,
                conflicts: Vec::new(),
            };
            recovered.push(((*id).clone(), record));
        }
        Ok(recovered)
    }

    /// Writes `changes` in one MULTI/EXEC, with one command per hash where
    /// it can, unless a watched key changed since [`Transaction::load`].
    /// Ends the transaction either way.
    pub async fn commit(
        self,
        resource: &ResourceId,
        changes: &ChangeSet<OutgoingEvent>,
    ) -> Result<Commit, StoreError> {
        self.commit_all(&[(resource, changes)]).await
    }

    /// [`Transaction::commit`] for every resource that
    /// [`Transaction::load_all`] loaded: one MULTI/EXEC writes them all, or
    /// none of them if any watched key changed.
    pub async fn commit_all(
        mut self,
        group: &[(&ResourceId, &ChangeSet<OutgoingEvent>)],
    ) -> Result<Commit, StoreError> {
        if group.iter().all(|(_, changes)| changes.is_empty()) {
            redis::cmd("UNWATCH").exec_async(self.conn()).await?;
            self.release();
            return Ok(Commit::Committed);
        }
        let commands: usize = group
            .iter()
            .map(|(_, c)| 4 + 2 * (c.records.len() + c.expiries.len()))
            .sum();
        let mut tx = redis::Pipeline::with_capacity(1 + commands);
        tx.atomic();
        // Every state in one MSET; the rest per resource. A resource whose
        // state did not change gets it written back as it was read, so
        // the write touches the one key its next transaction watches (see
        // `load_all`).
        let states: Vec<(String, String)> = group
            .iter()
            .filter(|(_, changes)| !changes.is_empty())
            .filter_map(|(resource, changes)| {
                let state = match &changes.resource {
                    Some(state) => to_json(state),
                    None => self.loaded_states.get(*resource)?.clone(),
                };
                Some((self.keys.state(resource), state))
            })
            .collect();
        if !states.is_empty() {
            let bytes = states.iter().map(|(k, v)| k.len() + v.len()).sum();
            let mut mset = sized("MSET", 2 * states.len(), bytes);
            mset.arg(&states);
            tx.add_command(mset).ignore();
        }
        for (resource, changes) in group {
            self.multi(&mut tx, resource, changes);
        }
        let committed: Option<()> = tx.query_async(self.conn()).await?;
        // EXEC ends the WATCH whatever its result: the connection is clean.
        let outcome = match committed {
            Some(()) => {
                let store = self.store;
                store.replicated(self.conn()).await?;
                Commit::Committed
            }
            None => Commit::Conflict,
        };
        self.release();
        Ok(outcome)
    }

    /// Ends the transaction without writing: UNWATCH, and the connection
    /// goes back to the pool.
    pub async fn cancel(mut self) -> Result<(), StoreError> {
        redis::cmd("UNWATCH").exec_async(self.conn()).await?;
        self.release();
        Ok(())
    }

    /// Returns the connection to the pool: it holds no WATCH any more.
    fn release(&mut self) {
        drop(self.conn.take());
    }

    /// Queues one resource's part of the MULTI body, all but its state.
    fn multi(
        &self,
        tx: &mut redis::Pipeline,
        resource: &ResourceId,
        changes: &ChangeSet<OutgoingEvent>,
    ) {
        let keys = self.keys;
        let set: Vec<(&str, u32)> = changes
            .holdings
            .iter()
            .filter_map(|(c, h)| match h {
                Holding::Set(n) => Some((c.as_str(), *n)),
                Holding::Release(_) => None,
            })
            .collect();
        if !set.is_empty() {
            let bytes = set.iter().map(|(c, _)| c.len() + 10).sum();
            let mut hset = keyed("HSET", &keys.holdings(resource), 2 * set.len(), bytes);
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
            // A reservation's JSON is about a hundred bytes.
            let reservations = &changes.reservations;
            let bytes = reservations
                .iter()
                .map(|(id, _)| id.as_str().len() + 160)
                .sum();
            let key = keys.reservations(resource);
            let mut hset = keyed("HSET", &key, 2 * reservations.len(), bytes);
            for (id, r) in reservations {
                hset.arg(id.as_str());
                json_arg(&mut hset, r);
            }
            tx.add_command(hset).ignore();
        }
        let history = if changes.expiries.is_empty() && changes.records.is_empty() {
            String::new()
        } else {
            keys.history(resource)
        };
        // History entries are numbered by version: an accepted event is
        // `<version>-0`, so it can be found again by its version; a
        // rejection takes the next free `<version>-n`.
        let xadd = |version: u64, accepted: bool, body: &[u8]| {
            let mut xadd = keyed("XADD", &history, 3, 30 + body.len());
            match accepted {
                true => xadd.write_arg_fmt(format_args!("{version}-0")),
                false => xadd.write_arg_fmt(format_args!("{version}-*")),
            }
            xadd.arg("event").arg(body);
            xadd
        };
        for (hold, event) in &changes.expiries {
            tx.add_command(xadd(event.version, true, &event.body))
                .ignore();
            tx.set(keys.expiry(resource, hold), to_json(event)).ignore();
        }
        for hold in &changes.holds_added {
            tx.zadd(keys.holds(resource), hold_member(hold), hold.expires_at)
                .ignore();
        }
        for hold in &changes.holds_removed {
            tx.zrem(keys.holds(resource), hold_member(hold)).ignore();
        }
        for (id, record) in &changes.records {
            let event = &record.event;
            tx.add_command(xadd(event.version, event.reason.is_none(), &event.body))
                .ignore();
            let bytes = 20 + event.body.len() + RECORD_OVERHEAD;
            let mut setex = keyed("SETEX", &keys.record(resource, id), 2, bytes);
            setex.arg(self.store.retention_secs);
            json_arg(&mut setex, record);
            tx.add_command(setex).ignore();
        }
        if !changes.applied.is_empty() {
            let applied = &changes.applied;
            let bytes = applied
                .iter()
                .map(|(id, a)| id.as_str().len() + 24 + a.hash.len())
                .sum();
            let key = keys.applied(resource);
            let mut hset = keyed("HSET", &key, 2 * applied.len(), bytes);
            for (id, a) in applied {
                hset.arg(id.as_str());
                hset.write_arg_fmt(format_args!("{}:{}", a.version, a.hash));
            }
            tx.add_command(hset).ignore();
        }
        for (id, record) in &changes.conflicts {
            tx.cmd("SET")
                .arg(keys.record(resource, id))
                .arg(to_json(record))
                .arg("KEEPTTL")
                .ignore();
        }
    }
}

/// A hold as its resource's due-time index keeps it (the score is
/// `expires_at`). A hold with a cost keeps it too, for its expiry's
/// refund.
pub fn hold_member(hold: &DueHold) -> String {
    let mut member = serde_json::json!({
        "id": hold.id,
        "customer_id": hold.customer_id,
        "quantity": hold.quantity,
    });
    if let Some(amount) = hold.amount {
        member["amount"] = amount.into();
    }
    if let Some(budget) = &hold.budget_id {
        member["budget_id"] = budget.as_str().into();
    }
    member.to_string()
}

/// A hold from its due-time index entry.
fn hold_from_member(member: &str, expires_at: Millis) -> Result<DueHold, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Member {
        id: CommandId,
        customer_id: crate::domain::CustomerId,
        quantity: u32,
        #[serde(default)]
        amount: Option<u64>,
        #[serde(default)]
        budget_id: Option<crate::domain::BudgetId>,
    }
    let m: Member = serde_json::from_str(member)?;
    Ok(DueHold {
        id: m.id,
        customer_id: m.customer_id,
        quantity: m.quantity,
        expires_at,
        amount: m.amount,
        budget_id: m.budget_id,
    })
}

/// An `applied` entry: `version:hash`.
fn parse_applied(entry: &str, key: &str) -> Result<Applied, StoreError> {
    entry
        .split_once(':')
        .and_then(|(version, hash)| {
            Some(Applied {
                version: version.parse().ok()?,
                hash: hash.into(),
            })
        })
        .ok_or_else(|| corrupt(key, format!("entry {entry:?} is not version:hash")))
}

/// A stored JSON value as `T`, or `key` is unreadable.
fn from_json<T: serde::de::DeserializeOwned>(json: &str, key: &str) -> Result<T, StoreError> {
    serde_json::from_str(json).map_err(|e| corrupt(key, e))
}

/// One resource's snapshot as its first round trip read it.
struct Loaded<'r> {
    snapshot: Snapshot<OutgoingEvent>,
    /// The state as stored, for a commit to write back unchanged.
    state_json: Option<String>,
    /// Accepted commands whose records expired: rebuilt from the history.
    expired: Vec<(&'r CommandId, Applied)>,
    /// Whether a hold has run out: the due ones are read next.
    due: bool,
}

/// The strings of one resource that [`Transaction::load_all`] read
/// together for the whole group.
struct Found {
    state: Option<String>,
    /// One per command, in order.
    records: Vec<Option<String>>,
}

/// Queues the hash and sorted-set reads of one resource of a
/// [`Transaction::load_all`].
fn queue_reads(pipe: &mut redis::Pipeline, keys: &Keys, resource: &ResourceId, reads: &Reads<'_>) {
    pipe.cmd("ZRANGE")
        .arg(keys.holds(resource))
        .arg(0)
        .arg(0)
        .arg("WITHSCORES");
    let hmget = |key: String, fields: &mut dyn ExactSizeIterator<Item = &str>| {
        let mut cmd = keyed("HMGET", &key, fields.len(), 24 * fields.len());
        for field in fields {
            cmd.arg(field);
        }
        cmd
    };
    // A sweep's batch is empty: it names no command.
    if !reads.commands.is_empty() {
        let mut ids = reads.commands.iter().map(|c| c.as_str());
        pipe.add_command(hmget(keys.applied(resource), &mut ids));
    }
    if !reads.customers.is_empty() {
        let mut ids = reads.customers.iter().map(|c| c.as_str());
        pipe.add_command(hmget(keys.holdings(resource), &mut ids));
    }
    if !reads.reservations.is_empty() {
        let mut ids = reads.reservations.iter().map(|c| c.as_str());
        pipe.add_command(hmget(keys.reservations(resource), &mut ids));
    }
}

/// Reads back what [`queue_reads`] queued, in the same order, into the
/// resource's snapshot with the strings `found` for it.
fn read_snapshot<'r>(
    next: &mut impl FnMut() -> Value,
    keys: &Keys,
    resource: &ResourceId,
    reads: &Reads<'r>,
    record_keys: &[String],
    found: Found,
    now: Millis,
) -> Result<Loaded<'r>, StoreError> {
    let state_key = keys.state(resource);
    let earliest: Vec<(String, f64)> = parse(next(), &keys.holds(resource))?;
    let mut snapshot = Snapshot {
        resource_id: resource.clone(),
        now,
        due: Vec::new(),
        state: State {
            resource: found
                .state
                .as_deref()
                .map(|json| from_json::<Resource>(json, &state_key))
                .transpose()?,
            ..State::default()
        },
        records: HashMap::new(),
        funds: HashMap::new(),
    };
    let mut expired: Vec<(&CommandId, Applied)> = Vec::new();
    if !reads.commands.is_empty() {
        for ((id, key), json) in reads.commands.iter().zip(record_keys).zip(found.records) {
            if let Some(json) = json {
                snapshot.records.insert(
                    (*id).clone(),
                    from_json::<Record<OutgoingEvent>>(&json, key)?,
                );
            }
        }
        let applied_key = keys.applied(resource);
        let applied: Vec<Option<String>> = parse(next(), &applied_key)?;
        for (id, entry) in reads.commands.iter().zip(applied) {
            if let Some(entry) = entry
                && !snapshot.records.contains_key(*id)
                && !expired.iter().any(|(e, _)| e == id)
            {
                expired.push((*id, parse_applied(&entry, &applied_key)?));
            }
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
    let due = earliest.first().is_some_and(|(_, at)| *at as u64 <= now);
    Ok(Loaded {
        snapshot,
        state_json: found.state,
        expired,
        due,
    })
}
