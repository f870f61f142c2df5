//! Where a key's commands go: the one Redis, or, on a Redis Cluster, the
//! master that owns the key's hash slot.
//!
//! redis-rs's cluster connection shares one connection per node and sends
//! UNWATCH to every primary, so a WATCH/MULTI transaction on it is not safe
//! under concurrency. Here every master gets pools of dedicated connections
//! instead, and a transaction runs on one connection to the master of its
//! slot:
//!
//! - the slot map comes from `CLUSTER SLOTS`, asked of the known masters and
//!   then the seed nodes, and is asked again after any reply that says it
//!   is out of date (MOVED, ASK, CLUSTERDOWN, TRYAGAIN, READONLY,
//!   MASTERDOWN) or a connection that fails, at most every
//!   [`REFRESH_EVERY`];
//! - the command that got such a reply fails as transient: the worker waits
//!   it out and tries again on the master the new map names. A plain read
//!   follows a MOVED or ASK for its one request instead ([`Router::follow`]);
//!   a transaction never does (see `docs/scaling.md`).
//!
//! Each master has two pools: `tx` for transactions, and `side` for single
//! commands sent while a transaction holds its connection (the due-time
//! index entry of a hold, which lives in another slot). A side connection
//! is never held while waiting for another, so two masters' transactions
//! cannot deadlock on each other's pools.
//!
//! A pooled connection that was handed out less than [`TRUSTED_FOR`] ago is
//! handed out again as it is; an older one is checked first (UNWATCH and
//! PING). Under load that saves a round trip per transaction. A connection
//! that failed (I/O, timeout) is closed rather than pooled, and one that may
//! hold a WATCH is closed by its transaction (see [`Conn::discard`]), so a
//! connection back in the pool is clean and was working when last used.

use super::error::StoreError;
use super::keys::{SLOTS, slot};
use deadpool::managed::{self, Hook, HookError, Metrics, RecycleResult};
use deadpool_redis::Runtime;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{ConnectionAddr, ConnectionInfo, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// The least time between two reads of the slot map.
pub const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// A pooled connection handed out less than this long ago is handed out
/// again without a PING: it answered moments ago, and one that failed since
/// was not pooled. (HikariCP's `aliveBypassWindowMs` is the same idea, at
/// 500 ms.)
pub const TRUSTED_FOR: Duration = Duration::from_millis(500);

/// deadpool-redis's manager, except that a connection used within
/// [`TRUSTED_FOR`] is not checked again before it is reused.
struct Manager(deadpool_redis::Manager);

impl managed::Manager for Manager {
    type Type = MultiplexedConnection;
    type Error = redis::RedisError;

    async fn create(&self) -> Result<MultiplexedConnection, redis::RedisError> {
        self.0.create().await
    }

    async fn recycle(
        &self,
        conn: &mut MultiplexedConnection,
        metrics: &Metrics,
    ) -> RecycleResult<redis::RedisError> {
        if metrics.last_used() < TRUSTED_FOR {
            return Ok(());
        }
        self.0.recycle(conn, metrics).await
    }
}

type Pool = managed::Pool<Manager>;

/// How connections are made: the server's address and credentials (and
/// TLS) of the first URL, the pool size, the client name.
#[derive(Clone)]
pub struct Dialer {
    /// Every URL given: the one Redis, or the cluster's seed nodes.
    pub seeds: Vec<ConnectionInfo>,
    /// Connections per pool.
    pub pool_size: usize,
    /// `CLIENT SETNAME` of every connection.
    pub client_name: Option<String>,
}

impl Dialer {
    fn pool(&self, info: ConnectionInfo) -> Result<Pool, StoreError> {
        let manager = deadpool_redis::Manager::new(info).map_err(StoreError::from)?;
        let mut builder = Pool::builder(Manager(manager))
            .config(deadpool_redis::PoolConfig {
                max_size: self.pool_size,
                timeouts: deadpool_redis::Timeouts {
                    wait: Some(Duration::from_secs(5)),
                    create: Some(Duration::from_secs(5)),
                    recycle: Some(Duration::from_secs(5)),
                },
                ..Default::default()
            })
            .runtime(Runtime::Tokio1);
        if let Some(name) = &self.client_name {
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
        builder
            .build()
            .map_err(|e| StoreError::Unavailable(Box::new(e)))
    }

    /// The node at `host:port`, reached like the first seed (same
    /// credentials, same TLS).
    fn node(&self, host: &str, port: u16) -> Result<Node, StoreError> {
        let seed = self.seeds[0].clone();
        let addr = match seed.addr().clone() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        Node::new(self, seed.set_addr(addr), format!("{host}:{port}"))
    }
}

/// One server: its address and its pools.
#[derive(Clone)]
pub struct Node {
    /// `host:port`.
    pub addr: Arc<str>,
    tx: Pool,
    side: Pool,
    replicas: Arc<Replicas>,
}

impl Node {
    fn new(dialer: &Dialer, info: ConnectionInfo, addr: String) -> Result<Node, StoreError> {
        let tx = dialer.pool(info.clone())?;
        Ok(Node {
            addr: addr.into(),
            side: dialer.pool(info)?,
            tx,
            replicas: Arc::default(),
        })
    }
}

/// How many replicas a master has, as it last said (`INFO replication`),
/// read again at most every [`Replicas::FRESH_FOR`].
#[derive(Default)]
pub struct Replicas {
    known: std::sync::Mutex<Option<(u32, Instant)>>,
}

impl Replicas {
    /// How long a count is trusted.
    const FRESH_FOR: Duration = Duration::from_secs(1);

    /// The master's replica count, asked on `conn` when not fresh.
    pub async fn count(&self, conn: &mut Conn) -> Result<u32, StoreError> {
        if let Some((n, at)) = *self.known.lock().expect("replica count lock")
            && at.elapsed() < Self::FRESH_FOR
        {
            return Ok(n);
        }
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(conn)
            .await?;
        // Only replicas that are online can acknowledge: one in a full
        // resync is connected, but would make every WAIT time out.
        let n = info
            .lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count() as u32;
        *self.known.lock().expect("replica count lock") = Some((n, Instant::now()));
        Ok(n)
    }

    /// Forgets the count: a WAIT came back short.
    pub fn forget(&self) {
        *self.known.lock().expect("replica count lock") = None;
    }
}

/// A pooled connection that tells its router when a reply says the slot
/// map is out of date.
pub struct Conn {
    inner: Option<managed::Object<Manager>>,
    node: Arc<str>,
    replicas: Arc<Replicas>,
    stale: Option<Arc<AtomicBool>>,
    /// A request failed with the connection itself (I/O, timeout): it is
    /// closed, not pooled.
    broken: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.broken
            && let Some(conn) = self.inner.take()
        {
            drop(managed::Object::take(conn));
        }
    }
}

impl Conn {
    /// The node it is connected to.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Its node's replica count.
    pub fn replicas(&self) -> Arc<Replicas> {
        self.replicas.clone()
    }

    /// Closes the connection rather than pooling it: it may still hold a
    /// WATCH or a half-sent MULTI.
    pub fn discard(mut self) {
        if let Some(conn) = self.inner.take() {
            drop(managed::Object::take(conn));
        }
    }

    fn inner(&mut self) -> &mut MultiplexedConnection {
        self.inner.as_mut().expect("a connection until discarded")
    }

    fn saw<T>(&mut self, result: &redis::RedisResult<T>, values: impl FnOnce(&T) -> bool) {
        let failed = result.as_ref().is_err_and(|e| {
            e.is_io_error()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
                || e.is_timeout()
        });
        self.broken |= failed;
        let Some(stale) = &self.stale else { return };
        let out_of_date = match result {
            Ok(v) => values(v),
            Err(e) => {
                failed
                    || e.code().is_some_and(says_map_changed)
                    || e.clone().into_server_errors().is_some_and(|errors| {
                        errors.iter().any(|(_, e)| says_map_changed(e.code()))
                    })
            }
        };
        if out_of_date {
            stale.store(true, Ordering::Relaxed);
        }
    }
}

/// Error codes after which the slot map must be read again.
fn says_map_changed(code: &str) -> bool {
    matches!(
        code,
        "MOVED" | "ASK" | "CLUSTERDOWN" | "TRYAGAIN" | "READONLY" | "MASTERDOWN"
    )
}

fn value_says_map_changed(v: &Value) -> bool {
    match v {
        Value::ServerError(e) => says_map_changed(e.code()),
        Value::Array(items) => items.iter().any(value_says_map_changed),
        _ => false,
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            let result = self.inner().req_packed_command(cmd).await;
            self.saw(&result, value_says_map_changed);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let result = self
                .inner()
                .req_packed_commands(pipeline, offset, count)
                .await;
            self.saw(&result, |values| values.iter().any(value_says_map_changed));
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.as_ref().map_or(0, |c| c.get_db())
    }
}

/// Which node a key's commands go to.
pub struct Router {
    dialer: Dialer,
    cluster: Option<Cluster>,
    single: Option<Node>,
}

struct Cluster {
    map: RwLock<Arc<SlotMap>>,
    stale: Arc<AtomicBool>,
    /// When the map was last read; held while it is read, so one refresh
    /// runs at a time.
    refreshed: tokio::sync::Mutex<Option<Instant>>,
}

/// The master of every slot.
struct SlotMap {
    /// Index into `masters` per slot; `None` while no master serves it.
    slots: Vec<Option<u16>>,
    masters: Vec<Node>,
}

impl Router {
    /// A router for one Redis (`cluster` false) or the cluster the seeds
    /// belong to. No connection is made yet.
    pub fn new(dialer: Dialer, cluster: bool) -> Result<Router, StoreError> {
        if !cluster {
            let info = dialer.seeds[0].clone();
            let addr = host_port(info.addr())
                .map_or_else(|| info.addr().to_string(), |(h, p)| format!("{h}:{p}"));
            let tx = dialer.pool(info)?;
            // One pool serves both: a single Redis's transactions never send
            // a side command on another connection.
            let single = Node {
                addr: addr.into(),
                side: tx.clone(),
                tx,
                replicas: Arc::default(),
            };
            return Ok(Router {
                dialer,
                cluster: None,
                single: Some(single),
            });
        }
        Ok(Router {
            dialer,
            cluster: Some(Cluster {
                map: RwLock::new(Arc::new(SlotMap {
                    slots: vec![None; usize::from(SLOTS)],
                    masters: Vec::new(),
                })),
                stale: Arc::new(AtomicBool::new(true)),
                refreshed: tokio::sync::Mutex::new(None),
            }),
            single: None,
        })
    }

    /// How many masters serve the data as far as is known now: 1 on a
    /// single Redis; on a cluster, the last slot map's masters, or the
    /// seeds before the first map is read.
    pub fn master_count(&self) -> usize {
        match &self.cluster {
            None => 1,
            Some(cluster) => {
                let known = cluster.map.read().map_or(0, |map| map.masters.len());
                known.max(self.dialer.seeds.len()).max(1)
            }
        }
    }

    /// The node that owns `key`.
    pub async fn node_of(&self, key: &str) -> Result<Node, StoreError> {
        let Some(cluster) = &self.cluster else {
            return Ok(self.single.clone().expect("single"));
        };
        let s = slot(key);
        let map = self.map(cluster).await?;
        map.slots[usize::from(s)]
            .map(|i| map.masters[usize::from(i)].clone())
            .ok_or_else(|| unavailable(format!("no master serves hash slot {s} (CLUSTERDOWN)")))
    }

    /// Every master, each with the slots it owns (the one Redis owns all).
    pub async fn masters(&self) -> Result<Vec<(Node, Vec<u16>)>, StoreError> {
        let Some(cluster) = &self.cluster else {
            return Ok(vec![(
                self.single.clone().expect("single"),
                (0..SLOTS).collect(),
            )]);
        };
        let map = self.map(cluster).await?;
        let mut owned: Vec<Vec<u16>> = vec![Vec::new(); map.masters.len()];
        for (s, owner) in map.slots.iter().enumerate() {
            match owner {
                Some(i) => owned[usize::from(*i)].push(s as u16),
                None => {
                    return Err(unavailable(format!(
                        "no master serves hash slot {s} (CLUSTERDOWN)"
                    )));
                }
            }
        }
        Ok(map.masters.iter().cloned().zip(owned).collect())
    }

    /// A transaction connection to the master of `key`.
    pub async fn tx(&self, key: &str) -> Result<Conn, StoreError> {
        let node = self.node_of(key).await?;
        self.get(&node, &node.tx).await
    }

    /// A connection for single commands to the master of `key`.
    pub async fn side(&self, key: &str) -> Result<Conn, StoreError> {
        let node = self.node_of(key).await?;
        self.get(&node, &node.side).await
    }

    /// A connection for single commands to `node`.
    pub async fn side_of(&self, node: &Node) -> Result<Conn, StoreError> {
        self.get(node, &node.side).await
    }

    async fn get(&self, node: &Node, pool: &Pool) -> Result<Conn, StoreError> {
        let stale = self.cluster.as_ref().map(|c| c.stale.clone());
        match pool.get().await {
            Ok(inner) => Ok(Conn {
                inner: Some(inner),
                node: node.addr.clone(),
                replicas: node.replicas.clone(),
                stale,
                broken: false,
            }),
            Err(e) => {
                if let Some(stale) = stale {
                    stale.store(true, Ordering::Relaxed);
                }
                Err(e.into())
            }
        }
    }

    /// Runs `pipe` (one slot's commands) on the master of `key`, following
    /// a MOVED or ASK reply once, for this request only. On a cluster, a
    /// master that does not answer is asked again, with the slot map read
    /// again, a few times over about a second (a failover in progress).
    pub async fn follow<T: redis::FromRedisValue>(
        &self,
        key: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let attempts = if self.cluster.is_some() { 10 } else { 1 };
        let mut last = None;
        for _ in 0..attempts {
            match self.follow_once(key, pipe).await {
                Err(e) if e.is_transient() => {
                    last = Some(e);
                    tokio::time::sleep(REFRESH_EVERY).await;
                }
                done => return done,
            }
        }
        Err(last.expect("at least one attempt"))
    }

    async fn follow_once<T: redis::FromRedisValue>(
        &self,
        key: &str,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.side(key).await?;
        let first = pipe.query_async::<T>(&mut conn).await;
        let e = match first {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let Some((addr, ask)) = redirect(&e) else {
            return Err(e.into());
        };
        let Some((host, port)) = addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
        else {
            return Err(e.into());
        };
        let node = match self.known(&addr) {
            Some(node) => node,
            None => self.dialer.node(&host, port)?,
        };
        let mut conn = self.side_of(&node).await?;
        if ask {
            let mut asking = redis::pipe();
            for cmd in pipe.cmd_iter() {
                asking.cmd("ASKING").ignore();
                asking.add_command(cmd.clone());
            }
            Ok(asking.query_async(&mut conn).await?)
        } else {
            Ok(pipe.query_async(&mut conn).await?)
        }
    }

    /// The master at `addr`, if the map knows it.
    fn known(&self, addr: &str) -> Option<Node> {
        let cluster = self.cluster.as_ref()?;
        let map = cluster.map.read().expect("slot map lock").clone();
        map.masters.iter().find(|n| &*n.addr == addr).cloned()
    }

    /// The slot map, read again first when a reply said it is stale.
    async fn map(&self, cluster: &Cluster) -> Result<Arc<SlotMap>, StoreError> {
        if cluster.stale.load(Ordering::Relaxed) {
            let known = !cluster
                .map
                .read()
                .expect("slot map lock")
                .masters
                .is_empty();
            // One refresh at a time; while it runs, the others go on with
            // the map they have (their replies say again if it is wrong),
            // unless there is none yet.
            let guard = if known {
                cluster.refreshed.try_lock().ok()
            } else {
                Some(cluster.refreshed.lock().await)
            };
            if let Some(mut refreshed) = guard
                && refreshed.is_none_or(|at| at.elapsed() >= REFRESH_EVERY)
                // Cleared before the read: a reply that says stale while
                // it runs asks for the next one.
                && cluster.stale.swap(false, Ordering::Relaxed)
            {
                let result = self.refresh(cluster).await;
                *refreshed = Some(Instant::now());
                if let Err(e) = result {
                    cluster.stale.store(true, Ordering::Relaxed);
                    if !known {
                        return Err(e);
                    }
                    tracing::warn!(error = %crate::telemetry::chain(&e), "cannot read the Redis Cluster's slot map; using the last one");
                }
            }
        }
        Ok(cluster.map.read().expect("slot map lock").clone())
    }

    /// Reads `CLUSTER SLOTS` from the first node that answers: the known
    /// masters, then the seeds.
    async fn refresh(&self, cluster: &Cluster) -> Result<(), StoreError> {
        let old = cluster.map.read().expect("slot map lock").clone();
        let mut candidates: Vec<Node> = old.masters.clone();
        for seed in &self.dialer.seeds {
            if let Some((h, p)) = host_port(seed.addr())
                && !candidates.iter().any(|n| *n.addr == format!("{h}:{p}"))
            {
                candidates.push(self.dialer.node(h, p)?);
            }
        }
        let mut last = None;
        for node in candidates {
            // The whole attempt, connecting included, is bounded: a dead
            // node must not hold the refresh for the pool's timeouts.
            let reply = tokio::time::timeout(Duration::from_secs(1), async {
                let mut conn = node.side.get().await?;
                let reply: Value = redis::cmd("CLUSTER")
                    .arg("SLOTS")
                    .query_async(&mut *conn)
                    .await?;
                Ok::<_, StoreError>(reply)
            })
            .await
            .unwrap_or_else(|_| {
                Err(unavailable(format!(
                    "{} did not answer CLUSTER SLOTS within 1 s",
                    node.addr
                )))
            });
            match reply.and_then(|v| parse_slots(&v, &node.addr)) {
                Ok(ranges) if ranges.iter().map(|r| r.1 - r.0 + 1).sum::<u32>() > 0 => {
                    let map = self.build(&old, ranges)?;
                    *cluster.map.write().expect("slot map lock") = Arc::new(map);
                    return Ok(());
                }
                Ok(_) => last = Some(unavailable(format!("{} serves no slots", node.addr))),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| unavailable("no Redis Cluster node to ask".into())))
    }

    fn build(
        &self,
        old: &SlotMap,
        ranges: Vec<(u32, u32, String, u16)>,
    ) -> Result<SlotMap, StoreError> {
        let mut masters: Vec<Node> = Vec::new();
        let mut slots = vec![None; usize::from(SLOTS)];
        for (start, end, host, port) in ranges {
            let addr = format!("{host}:{port}");
            let index = match masters.iter().position(|n| *n.addr == addr) {
                Some(i) => i,
                None => {
                    let node = match old.masters.iter().find(|n| *n.addr == addr) {
                        Some(n) => n.clone(),
                        None => self.dialer.node(&host, port)?,
                    };
                    masters.push(node);
                    masters.len() - 1
                }
            };
            for s in start..=end.min(u32::from(SLOTS) - 1) {
                slots[s as usize] = Some(index as u16);
            }
        }
        Ok(SlotMap { slots, masters })
    }
}

/// The host and port of a TCP address (plain or TLS).
fn host_port(addr: &ConnectionAddr) -> Option<(&str, u16)> {
    match addr {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => Some((h, *p)),
        _ => None,
    }
}

/// `(start, end, master host, master port)` per range of a `CLUSTER SLOTS`
/// reply. A master that names no host is the node that answered.
fn parse_slots(reply: &Value, asked: &str) -> Result<Vec<(u32, u32, String, u16)>, StoreError> {
    let bad = || unavailable(format!("{asked} gave an unreadable CLUSTER SLOTS reply"));
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let asked_host = asked.rsplit_once(':').map_or(asked, |(h, _)| h);
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u32::try_from(*n).ok(),
            _ => None,
        };
        let (Some(start), Some(end)) = (int(fields.first()), int(fields.get(1))) else {
            return Err(bad());
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            return Err(bad());
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => String::new(),
        };
        let host = if host.is_empty() || host == "?" {
            asked_host.to_owned()
        } else {
            host
        };
        let Some(port) = int(master.get(1)).and_then(|p| u16::try_from(p).ok()) else {
            return Err(bad());
        };
        out.push((start, end, host, port));
    }
    Ok(out)
}

/// Where a MOVED or ASK reply sends the request, and whether it is an ASK.
fn redirect(e: &redis::RedisError) -> Option<(String, bool)> {
    let errors = e.clone().into_server_errors()?;
    let (_, first) = errors.first()?;
    let ask = first.code() == "ASK";
    if !(ask || first.code() == "MOVED") {
        return None;
    }
    let addr = first.details()?.split_ascii_whitespace().nth(1)?.to_owned();
    Some((addr, ask))
}

fn unavailable(why: String) -> StoreError {
    StoreError::Unavailable(why.into())
}

/// Groups `keys` by the node that owns each: `(node, indices into keys)`.
pub async fn by_node(
    router: &Router,
    keys: &[String],
) -> Result<Vec<(Node, Vec<usize>)>, StoreError> {
    let mut groups: Vec<(Node, Vec<usize>)> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for (i, key) in keys.iter().enumerate() {
        let node = router.node_of(key).await?;
        let g = *index.entry(node.addr.clone()).or_insert_with(|| {
            groups.push((node.clone(), Vec::new()));
            groups.len() - 1
        });
        groups[g].1.push(i);
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_slots_reply_names_each_ranges_master() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("127.0.0.1", 7000),
                node("127.0.0.1", 7003),
            ]),
            Value::Array(vec![Value::Int(5461), Value::Int(16383), node("", 7001)]),
        ]);
        assert_eq!(
            parse_slots(&reply, "10.0.0.9:7001").unwrap(),
            vec![
                (0, 5460, "127.0.0.1".into(), 7000),
                (5461, 16383, "10.0.0.9".into(), 7001)
            ]
        );
        assert!(parse_slots(&Value::Nil, "x:1").is_err());
    }

    #[test]
    fn replies_that_mean_a_new_map() {
        for code in [
            "MOVED",
            "ASK",
            "CLUSTERDOWN",
            "TRYAGAIN",
            "READONLY",
            "MASTERDOWN",
        ] {
            assert!(says_map_changed(code), "{code}");
        }
        for code in ["ERR", "OOM", "WRONGTYPE", "CROSSSLOT"] {
            assert!(!says_map_changed(code), "{code}");
        }
    }

    #[test]
    fn redirects_name_their_node() {
        let moved = redis::make_extension_error("MOVED".into(), Some("3999 127.0.0.1:6381".into()));
        let ask = redis::make_extension_error("ASK".into(), Some("3999 127.0.0.1:6382".into()));
        assert_eq!(redirect(&moved), Some(("127.0.0.1:6381".into(), false)));
        assert_eq!(redirect(&ask), Some(("127.0.0.1:6382".into(), true)));
        let other = redis::make_extension_error("ERR".into(), Some("x".into()));
        assert_eq!(redirect(&other), None);
    }
}
