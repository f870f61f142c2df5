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
mod transaction;

pub use due::DueEntry;
pub use error::StoreError;
pub use keys::{DUE_SHARDS, Keys};
pub use transaction::{Commit, Transaction};

use crate::config::RedisSettings;
use crate::domain::{BudgetId, CommandId, CustomerId, Resource, ResourceId, State};
use crate::message::EventEnvelope;
use deadpool_redis::{Hook, HookError, Pool, Runtime};
use error::corrupt;
use redis::IntoConnectionInfo;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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

/// The Redis side of the worker: a pool of connections and the key layout.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keys: Keys,
    retention_secs: u64,
}

impl Store {
    /// A store over a new connection pool. Connections are opened lazily.
    pub fn new(redis: &RedisSettings) -> anyhow::Result<Store> {
        Self::named(redis, None)
    }

    /// Like [`Store::new`], with every connection named `client_name`
    /// (`CLIENT SETNAME`), so `CLIENT LIST` shows which replica owns it.
    pub fn named(redis: &RedisSettings, client_name: Option<&str>) -> anyhow::Result<Store> {
        crate::tls::install_crypto();
        let info = redis.url.expose().into_connection_info()?;
        // `rediss://` is TLS: verified against `redis.tls_ca_file` when given,
        // else the system's roots; it never falls back to plaintext.
        let tls = redis.tls();
        let client = if tls.any() {
            let files = tls.read()?;
            let certificates = redis::TlsCertificates {
                client_tls: files.identity.map(|(client_cert, client_key)| {
                    redis::ClientTlsConfig {
                        client_cert,
                        client_key,
                    }
                }),
                root_cert: files.ca,
            };
            redis::Client::build_with_tls(info, certificates)?
        } else {
            redis::Client::open(info)?
        };
        let manager = deadpool_redis::Manager::new(client.get_connection_info().clone())?;
        let mut builder = Pool::builder(manager)
            .config(deadpool_redis::PoolConfig {
                max_size: redis.pool_size,
                timeouts: deadpool_redis::Timeouts {
                    wait: Some(Duration::from_secs(5)),
                    create: Some(Duration::from_secs(5)),
                    recycle: Some(Duration::from_secs(5)),
                },
                ..Default::default()
            })
            .runtime(Runtime::Tokio1);
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

    /// Whether transactions can commit: the setup marker is there and
    /// Redis takes a write (it is not loading, a replica, out of memory,
    /// failing to save, or refusing the credentials).
    pub async fn check(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let marker = self.keys.marker_of_any();
        let (initialised,): (bool,) = redis::pipe()
            .exists(&marker)
            .set_ex(self.keys.probe(), "1", 60)
            .ignore()
            .query_async(&mut *conn)
            .await?;
        if initialised {
            Ok(())
        } else {
            Err(StoreError::Uninitialised { key: marker })
        }
    }

    /// Marks the store as holding the data workers decide on: `setup`'s
    /// acceptance of what Redis holds now, an empty store included.
    /// `true` if the marker was missing and is written now.
    pub async fn initialise(&self) -> Result<bool, StoreError> {
        let mut conn = self.pool.get().await?;
        let stamp = format!(
            "set up at {}",
            time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        );
        let written: Option<String> = redis::cmd("SET")
            .arg(self.keys.marker_of_any())
            .arg(stamp)
            .arg("NX")
            .query_async(&mut *conn)
            .await?;
        Ok(written.is_some())
    }

    /// Bytes Redis uses (`used_memory` of `INFO memory`).
    pub async fn used_memory(&self) -> Result<u64, StoreError> {
        let mut conn = self.pool.get().await?;
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut *conn)
            .await?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| corrupt("INFO memory", "no used_memory line"))
    }

    /// Redis's `maxmemory-policy`, when the server tells it (managed
    /// services may not).
    pub async fn eviction_policy(&self) -> Result<Option<String>, StoreError> {
        let mut conn = self.pool.get().await?;
        let reply: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("maxmemory-policy")
            .query_async(&mut *conn)
            .await;
        Ok(reply.ok().and_then(|pair| pair.into_iter().nth(1)))
    }

    /// Starts an optimistic transaction on a connection of its own: WATCH
    /// state lives on the connection, so it is never shared.
    pub async fn begin(&self) -> Result<Transaction<'_>, StoreError> {
        let conn = self.pool.get().await?;
        Ok(Transaction::new(conn, &self.keys, self.retention_secs))
    }

    // The read side: for `inspect`, `status`, the load generator and the
    // tests.

    /// The resource's current state, if it was ever defined.
    pub async fn summary(&self, resource: &ResourceId) -> Result<Option<Summary>, StoreError> {
        let mut conn = self.pool.get().await?;
        let key = self.keys.state(resource);
        let json: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut *conn).await?;
        let Some(json) = json else { return Ok(None) };
        let r: Resource = serde_json::from_str(&json).map_err(|e| corrupt(&key, e))?;
        Ok(Some(Summary::of(resource, &r)))
    }

    /// Everything stored of a resource's aggregate: its scalars, every
    /// holding and every reservation (for the audit).
    pub async fn stored_state(&self, resource: &ResourceId) -> Result<State, StoreError> {
        let mut conn = self.pool.get().await?;
        let (state_key, holdings_key, reservations_key) = (
            self.keys.state(resource),
            self.keys.holdings(resource),
            self.keys.reservations(resource),
        );
        let (json, holdings, reservations): (
            Option<String>,
            HashMap<String, i64>,
            HashMap<String, String>,
        ) = redis::pipe()
            .get(&state_key)
            .hgetall(&holdings_key)
            .hgetall(&reservations_key)
            .query_async(&mut *conn)
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
        let mut conn = self.pool.get().await?;
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.holdings(resource))
            .query_async(&mut *conn)
            .await?)
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
        let mut conn = self.pool.get().await?;
        let mut events = Vec::new();
        let mut start = "-".to_string();
        loop {
            let page: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(key)
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
                    .ok_or_else(|| corrupt(key, format!("entry {} has no event", entry.id)))?;
                events.push(serde_json::from_str(&body).map_err(|e| corrupt(key, e))?);
                start = format!("({}", entry.id);
            }
            if n < PAGE {
                return Ok(events);
            }
        }
    }

    /// Deletes every key under this store's prefix (SCAN + UNLINK). For
    /// tests and benchmarks with a prefix of their own.
    pub async fn delete_all(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await?;
        let pattern = format!("{}*", self.keys.prefix());
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
}
