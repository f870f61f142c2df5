//! Redis: each resource's aggregate, its event history and the idempotency
//! records, changed only through WATCH/MULTI optimistic transactions.
//!
//! The store knows the key layout and how to load and write; it knows no
//! business rule. A [`Transaction`] WATCHes and loads a
//! [`Snapshot`](crate::domain::Snapshot), and commits the
//! [`ChangeSet`](crate::domain::ChangeSet) the domain decided, or reports
//! that another writer got there first.
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
//! | `P{R}:cmd:C` | string (JSON), with TTL | command `C`'s body hash and outcome event, and the outcomes of other bodies that reused `C` |
//! | `P{R}:applied` | hash | every accepted command, kept for good: `version:body hash` |
//! | `P{R}:holds` | sorted set | live holds by `expires_at` (ms), so a batch finds the due ones |
//! | `P{R}:expiry:H` | string (JSON) | hold `H`'s `expire` event, kept for good |
//!
//! And one index over every resource, which the workers sweep:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P{%due-N}:holds`, N in 0..16 | sorted set | every live hold by `expires_at`: `[R, H, expires_at]` |
//!
//! Every accepted command rewrites `state` (its version goes up), so WATCHing
//! `state` fences the holdings and reservations too; WATCHing the idempotency
//! records fences two workers racing on the same command.

mod budget;
mod due;
mod error;
mod keys;
mod replicas;
mod route;
mod transaction;

pub use due::DueEntry;
pub use error::StoreError;
pub use keys::{DUE_SHARDS, Keys};
pub use transaction::{Commit, Transaction};

use crate::config::RedisSettings;
use crate::domain::{BudgetId, CommandId, CustomerId, Resource, ResourceId, State};
use crate::message::EventEnvelope;
use error::corrupt;
use redis::IntoConnectionInfo;
use route::{Conn, Dialer, Router};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A resource as `inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The resource.
    pub resource_id: ResourceId,
    /// Total seats.
    pub capacity: u32,
    /// Seats taken for good: accepted reserves and confirmed holds.
    pub reserved: u32,
    /// Seats in live holds (holds that ran out but whose expiry is not
    /// recorded yet included: they are for sale to the next decision).
    pub held: u32,
    /// Seats for sale.
    pub remaining: u32,
    /// Most seats per customer.
    pub per_customer_limit: Option<u32>,
    /// Price per seat, in minor units.
    #[serde(default)]
    pub price: u32,
    /// The budget takes are paid from.
    #[serde(default)]
    pub budget_id: Option<BudgetId>,
    /// Aggregate version.
    pub version: u64,
}

impl Summary {
    /// What `inspect` shows of a resource's scalars.
    pub fn of(resource_id: &ResourceId, r: &Resource) -> Summary {
        Summary {
            resource_id: resource_id.clone(),
            capacity: r.capacity,
            reserved: r.reserved,
            held: r.held,
            remaining: r.remaining(),
            per_customer_limit: r.per_customer_limit,
            price: r.price,
            budget_id: r.budget_id.clone(),
            version: r.version,
        }
    }
}

/// The Redis side of the worker: connections to the one Redis or to each
/// master of a Redis Cluster, and the key layout.
#[derive(Clone)]
pub struct Store {
    router: Arc<Router>,
    keys: Keys,
    retention_secs: u64,
    wait_replicas: u32,
    wait_timeout: Duration,
}

impl Store {
    /// A store over new connection pools. Connections are opened lazily.
    pub fn new(redis: &RedisSettings) -> anyhow::Result<Store> {
        Self::named(redis, None)
    }

    /// Like [`Store::new`], with every connection named `client_name`
    /// (`CLIENT SETNAME`), so `CLIENT LIST` shows which replica owns it.
    pub fn named(redis: &RedisSettings, client_name: Option<&str>) -> anyhow::Result<Store> {
        crate::tls::install_crypto();
        // `rediss://` is TLS: verified against `redis.tls_ca_file` when given,
        // else the system's roots; it never falls back to plaintext.
        let tls = redis.tls();
        let files = if tls.any() { Some(tls.read()?) } else { None };
        let mut seeds = Vec::new();
        for url in redis.url.split() {
            let info = url.expose().into_connection_info()?;
            let client = match &files {
                Some(files) => {
                    let certificates = redis::TlsCertificates {
                        client_tls: files.identity.clone().map(|(client_cert, client_key)| {
                            redis::ClientTlsConfig {
                                client_cert,
                                client_key,
                            }
                        }),
                        root_cert: files.ca.clone(),
                    };
                    redis::Client::build_with_tls(info, certificates)?
                }
                None => redis::Client::open(info)?,
            };
            seeds.push(client.get_connection_info().clone());
        }
        let dialer = Dialer {
            seeds,
            pool_size: redis.pool_size,
            client_name: client_name.map(str::to_owned),
        };
        Ok(Store {
            router: Arc::new(Router::new(dialer, redis.cluster)?),
            keys: Keys::for_cluster(redis.key_prefix.clone(), redis.cluster),
            retention_secs: redis.idempotency_retention_secs,
            wait_replicas: redis.replicas_to_wait(),
            wait_timeout: redis.wait_timeout(),
        })
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether Redis answers a PING (every master of a cluster).
    pub async fn ping(&self) -> Result<(), StoreError> {
        for (node, _) in self.router.masters().await? {
            let mut conn = self.router.side_of(&node).await?;
            redis::cmd("PING").exec_async(&mut conn).await?;
        }
        Ok(())
    }

    /// Whether transactions can commit: the setup marker is there and
    /// Redis takes a write (it is not loading, a replica, out of memory,
    /// failing to save, or refusing the credentials). On a cluster, every
    /// master is asked, for the marker of the first slot it owns: a master
    /// that lost its data lost every marker of its slots.
    pub async fn check(&self) -> Result<(), StoreError> {
        for (node, slots) in self.router.masters().await? {
            let (marker, probe) = if self.keys.is_cluster() {
                let first = slots.first().copied().unwrap_or(0);
                (self.keys.slot_marker(first), self.keys.slot_probe(first))
            } else {
                (self.keys.marker_of_any(), self.keys.probe())
            };
            let mut conn = self.router.side_of(&node).await?;
            let (initialised,): (bool,) = redis::pipe()
                .exists(&marker)
                .set_ex(probe, "1", 60)
                .ignore()
                .query_async(&mut conn)
                .await?;
            if !initialised {
                return Err(StoreError::Uninitialised { key: marker });
            }
        }
        Ok(())
    }

    /// Marks the store as holding the data workers decide on: `setup`'s
    /// acceptance of what Redis holds now, an empty store included.
    /// `true` if a marker was missing and is written now (on a cluster,
    /// one per hash slot, each on its master).
    pub async fn initialise(&self) -> Result<bool, StoreError> {
        let stamp = format!(
            "set up at {}",
            time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
        let mut written = false;
        for (node, slots) in self.router.masters().await? {
            let markers: Vec<String> = if self.keys.is_cluster() {
                slots.iter().map(|s| self.keys.slot_marker(*s)).collect()
            } else {
                vec![self.keys.marker_of_any()]
            };
            let mut pipe = redis::pipe();
            for marker in &markers {
                pipe.cmd("SET").arg(marker).arg(&stamp).arg("NX");
            }
            let mut conn = self.router.side_of(&node).await?;
            let replies: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
            written |= replies.iter().any(Option::is_some);
        }
        Ok(written)
    }

    /// Bytes Redis uses (`used_memory` of `INFO memory`; summed over the
    /// masters of a cluster).
    pub async fn used_memory(&self) -> Result<u64, StoreError> {
        Ok(self.info_sum("memory", &["used_memory"]).await? as u64)
    }

    /// CPU time Redis has used since it started, in seconds (`used_cpu_sys`
    /// plus `used_cpu_user` of `INFO cpu`; summed over the masters of a
    /// cluster): the benchmark's measure of what the worker costs Redis.
    pub async fn cpu_seconds(&self) -> Result<f64, StoreError> {
        self.info_sum("cpu", &["used_cpu_sys", "used_cpu_user"])
            .await
    }

    /// The sum of numeric `fields` of `INFO section` over every master.
    async fn info_sum(&self, section: &str, fields: &[&str]) -> Result<f64, StoreError> {
        let mut total = 0.0;
        for (node, _) in self.router.masters().await? {
            let mut conn = self.router.side_of(&node).await?;
            let info: String = redis::cmd("INFO")
                .arg(section)
                .query_async(&mut conn)
                .await?;
            for field in fields {
                let prefix = format!("{field}:");
                total += info
                    .lines()
                    .find_map(|l| l.strip_prefix(prefix.as_str()))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .ok_or_else(|| {
                        corrupt(&format!("INFO {section}"), format!("no {field} line"))
                    })?;
            }
        }
        Ok(total)
    }

    /// Redis's `maxmemory-policy`, when the server tells it (managed
    /// services may not); on a cluster, the first master's.
    pub async fn eviction_policy(&self) -> Result<Option<String>, StoreError> {
        let Some((node, _)) = self.router.masters().await?.into_iter().next() else {
            return Ok(None);
        };
        let mut conn = self.router.side_of(&node).await?;
        let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut conn)
            .await;
        Ok(reply.ok().and_then(|pair| pair.into_iter().nth(1)))
    }

    /// Which resources one transaction may span: those with the same
    /// answer. On a single Redis any (`None`); on a cluster those in one
    /// hash slot, the only keys a transaction can hold together.
    pub fn transaction_slot(&self, resource: &ResourceId) -> Option<u16> {
        self.keys
            .is_cluster()
            .then(|| keys::slot(&self.keys.state(resource)))
    }

    /// How many masters serve the data, as far as is known now (1 on a
    /// single Redis).
    pub fn master_count(&self) -> usize {
        self.router.master_count()
    }

    /// Starts an optimistic transaction on `resource`, on a connection of
    /// its own to the master of the resource's slot: WATCH state lives on
    /// the connection, so it is never shared.
    pub async fn begin(&self, resource: &ResourceId) -> Result<Transaction<'_>, StoreError> {
        let conn = self.router.tx(&self.keys.state(resource)).await?;
        Ok(Transaction::new(conn, self))
    }

    /// Waits until `wait_replicas` replicas hold every write `conn` made
    /// (Redis `WAIT`), so a failover cannot forget a commit whose events
    /// go out next. A master with fewer replicas (its own replica was
    /// promoted and the old master has not come back) is waited for with
    /// the replicas it has: the cluster stays available, one copy short,
    /// until an operator or the old master restores it. Fewer in time is
    /// transient: the commit is not published, and its redelivery replays
    /// it.
    async fn replicated(&self, conn: &mut Conn) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let replicas = conn.replicas();
        let wanted = self.wait_replicas.min(replicas.count(conn).await?);
        if wanted == 0 {
            return Ok(());
        }
        let acked: u32 = redis::cmd("WAIT")
            .arg(wanted)
            .arg(self.wait_timeout.as_millis() as u64)
            .query_async(conn)
            .await?;
        if acked < wanted {
            replicas.forget();
            return Err(StoreError::Unavailable(
                format!(
                    "{acked} of {wanted} replicas of {} acknowledged a commit within {:?} (redis.wait_replicas)",
                    conn.node(),
                    self.wait_timeout
                )
                .into(),
            ));
        }
        Ok(())
    }

    /// One command per key, built by `command` from the key's index and
    /// the key, each sent to the master of its key: one pipeline per
    /// master, all at once. The replies come back in the order of `keys`.
    async fn each<T: redis::FromRedisValue>(
        &self,
        keys: &[String],
        command: impl Fn(usize, &str) -> redis::Cmd,
    ) -> Result<Vec<T>, StoreError> {
        let groups = route::by_node(&self.router, keys).await?;
        let replies =
            futures_util::future::try_join_all(groups.into_iter().map(|(node, indices)| {
                let command = &command;
                async move {
                    let mut pipe = redis::pipe();
                    for &i in &indices {
                        pipe.add_command(command(i, &keys[i]));
                    }
                    let mut conn = self.router.side_of(&node).await?;
                    let values: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
                    Ok::<_, StoreError>(indices.into_iter().zip(values).collect::<Vec<_>>())
                }
            }))
            .await?;
        let mut ordered: Vec<Option<redis::Value>> = vec![None; keys.len()];
        for (i, value) in replies.into_iter().flatten() {
            ordered[i] = Some(value);
        }
        ordered
            .into_iter()
            .zip(keys)
            .map(|(value, key)| error::parse(value.unwrap_or(redis::Value::Nil), key))
            .collect()
    }

    // The read side: for `inspect`, `status`, the load generator and the
    // tests.

    /// The resource's current state, if it was ever defined.
    pub async fn summary(&self, resource: &ResourceId) -> Result<Option<Summary>, StoreError> {
        let key = self.keys.state(resource);
        let (json,): (Option<String>,) = self.router.follow(&key, redis::pipe().get(&key)).await?;
        let Some(json) = json else { return Ok(None) };
        let r: Resource = serde_json::from_str(&json).map_err(|e| corrupt(&key, e))?;
        Ok(Some(Summary::of(resource, &r)))
    }

    /// Everything stored of a resource's aggregate: its scalars, every
    /// holding and every reservation (for the audit).
    pub async fn stored_state(&self, resource: &ResourceId) -> Result<State, StoreError> {
        let (state_key, holdings_key, reservations_key) = (
            self.keys.state(resource),
            self.keys.holdings(resource),
            self.keys.reservations(resource),
        );
        let (json, holdings, reservations): (
            Option<String>,
            HashMap<String, i64>,
            HashMap<String, String>,
        ) = self
            .router
            .follow(
                &state_key,
                redis::pipe()
                    .get(&state_key)
                    .hgetall(&holdings_key)
                    .hgetall(&reservations_key),
            )
            .await?;
        let mut state = State {
            resource: json
                .map(|j| serde_json::from_str(&j).map_err(|e| corrupt(&state_key, e)))
                .transpose()?,
            ..State::default()
        };
        for (customer, held) in holdings {
            let customer = CustomerId::try_from(customer).map_err(|e| corrupt(&holdings_key, e))?;
            let held = u32::try_from(held).map_err(|e| corrupt(&holdings_key, e))?;
            state.holdings.insert(customer, held);
        }
        for (id, json) in reservations {
            let id = CommandId::try_from(id).map_err(|e| corrupt(&reservations_key, e))?;
            let r = serde_json::from_str(&json).map_err(|e| corrupt(&reservations_key, e))?;
            state.reservations.insert(id, r);
        }
        Ok(state)
    }

    /// Every resource with a stored state, by SCAN.
    pub async fn resources(&self) -> Result<Vec<ResourceId>, StoreError> {
        let keys = self.scan(&self.keys.states_pattern()).await?;
        Ok(keys
            .iter()
            .filter_map(|k| self.keys.resource_of_state(k))
            .collect())
    }

    /// Every budget with a stored state, by SCAN.
    pub async fn budgets(&self) -> Result<Vec<BudgetId>, StoreError> {
        let keys = self.scan(&self.keys.budgets_pattern()).await?;
        Ok(keys
            .iter()
            .filter_map(|k| self.keys.budget_of_state(k))
            .collect())
    }

    /// Seats held per customer.
    pub async fn holdings(
        &self,
        resource: &ResourceId,
    ) -> Result<HashMap<String, u32>, StoreError> {
        let key = self.keys.holdings(resource);
        let (held,): (HashMap<String, u32>,) = self
            .router
            .follow(&key, redis::pipe().hgetall(&key))
            .await?;
        Ok(held)
    }

    /// The resource's event history, oldest first, as stored.
    pub async fn history(&self, resource: &ResourceId) -> Result<Vec<EventEnvelope>, StoreError> {
        self.stream_events(&self.keys.history(resource)).await
    }

    /// Every event of a history stream, oldest first, read in pages so
    /// Redis keeps serving while a long history is read.
    async fn stream_events<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Vec<T>, StoreError> {
        const PAGE: usize = 1000;
        let mut events = Vec::new();
        let mut start = "-".to_string();
        loop {
            let (page,): (redis::streams::StreamRangeReply,) = self
                .router
                .follow(
                    key,
                    redis::pipe()
                        .cmd("XRANGE")
                        .arg(key)
                        .arg(&start)
                        .arg("+")
                        .arg("COUNT")
                        .arg(PAGE),
                )
                .await?;
            let n = page.ids.len();
            for entry in page.ids {
                let body: String = entry
                    .get("event")
                    .ok_or_else(|| corrupt(key, format!("entry {} has no event", entry.id)))?;
                events.push(serde_json::from_str(&body).map_err(|e| corrupt(key, e))?);
                start = format!("({}", entry.id);
            }
            if n < PAGE {
                return Ok(events);
            }
        }
    }

    /// Deletes every key under this store's prefix (SCAN on every master,
    /// then one UNLINK per key on its master: a cluster refuses keys of
    /// several slots in one command). For tests and benchmarks with a
    /// prefix of their own.
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        let pattern = format!("{}*", self.keys.prefix());
        let keys = self.scan(&pattern).await?;
        for chunk in keys.chunks(5000) {
            let _: Vec<redis::Value> = self
                .each(chunk, |_, key| {
                    let mut unlink = redis::cmd("UNLINK");
                    unlink.arg(key);
                    unlink
                })
                .await?;
        }
        Ok(())
    }
}
