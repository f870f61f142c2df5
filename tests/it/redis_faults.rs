//! Redis failing the way production ones do, on a `redis-server` of the
//! test's own: out of memory, a failover to an empty replica (read-only,
//! then lost data), refused credentials, a flush mid-rush. Each is waited
//! out: nothing is dead-lettered, nothing is decided on lost data, every
//! command gets exactly its one outcome, and the invariants hold.

use crate::helpers::*;
use crate::redis_server::RedisServer;
use futures_util::future::join_all;
use reservation_worker::message::CommandBody;
use std::collections::{HashMap, HashSet};

const CAPACITY: u32 = 30;
const LIMIT: u32 = 3;

/// A sale on a private Redis with two in-process workers, the resource
/// defined. A low delivery limit: a command that failed its way through
/// deliveries would be dead-lettered within a second.
async fn sale(redis: &RedisServer) -> TestApp {
    let url = redis.url();
    let mut app = TestApp::with(|s| {
        s.redis.url = url;
        s.amqp.delivery_limit = 3;
    })
    .await;
    app.start_worker();
    app.start_worker();
    define_hall(&app, "define").await;
    app
}

async fn define_hall(app: &TestApp, id: &str) {
    app.send(&define(id, "hall", CAPACITY, Some(LIMIT))).await;
    assert!(app.outcome(id).await.event.is_accepted(), "{id}");
}

/// Reserves `n` for `tag`: 15 customers, 1 or 2 seats each.
fn reserves(tag: &str, n: usize) -> Vec<CommandBody> {
    (0..n)
        .map(|i| {
            let customer = format!("u-{}", i % 15);
            reserve(&format!("{tag}-{i}"), "hall", &customer, 1 + (i % 2) as u32)
        })
        .collect()
}

async fn send_all(app: &TestApp, bodies: &[CommandBody]) {
    join_all(bodies.iter().map(|b| app.send(b))).await;
}

/// Waits for every command of `bodies` to have an outcome, then checks the
/// contract: all events of one command identical, nothing dead-lettered,
/// never oversold, no customer over the limit, Redis as the events say.
async fn check(app: &TestApp, bodies: &[CommandBody]) {
    for b in bodies {
        app.outcome(b.command_id().as_str()).await;
    }
    let mut by_command: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for (e, raw) in app.received() {
        by_command
            .entry(e.event.command_id.to_string())
            .or_default()
            .push(raw);
    }
    for (id, raws) in &by_command {
        assert!(
            raws.iter().all(|r| r == &raws[0]),
            "{id} got different events: {:?}",
            raws.iter()
                .map(|r| String::from_utf8_lossy(r).into_owned())
                .collect::<Vec<_>>()
        );
    }
    assert_eq!(
        app.ready_in(&app.settings.amqp.dead_letter_queue).await,
        0,
        "nothing dead-lettered"
    );
    let summary = app.store.summary(&rid("hall")).await.unwrap().unwrap();
    assert!(summary.reserved <= summary.capacity, "{summary:?}");
    let held = app.store.holdings(&rid("hall")).await.unwrap();
    assert!(held.values().all(|h| *h <= LIMIT), "{held:?}");
    let seats: u32 = held.values().sum();
    assert_eq!(seats, summary.reserved, "holdings add up to reserved");
}

/// No outcome yet for any of `bodies`.
fn undecided(app: &TestApp, bodies: &[CommandBody]) -> bool {
    let ids: HashSet<&str> = bodies.iter().map(|b| b.command_id().as_str()).collect();
    !app.events()
        .iter()
        .any(|e| ids.contains(e.event.command_id.as_str()))
}

/// Out of memory (`maxmemory` reached, no eviction): every transaction is
/// refused with OOM / EXECABORT until memory is given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn out_of_memory_is_waited_out() {
    let redis = RedisServer::start(&["--maxmemory-policy", "noeviction"]).await;
    let app = sale(&redis).await;
    let before = redis.errors("OOM").await;
    redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]).await;
    let during = reserves("oom", 20);
    send_all(&app, &during).await;
    // Far more refusals than the delivery limit allows deliveries.
    redis
        .wait_for_growth("OOM replies", before, 60, || redis.errors("OOM"))
        .await;
    assert!(
        undecided(&app, &during),
        "nothing decided while out of memory"
    );
    assert_eq!(app.ready_in(&app.settings.amqp.dead_letter_queue).await, 0);
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await;
    check(&app, &during).await;
    app.cleanup().await;
}

/// The credentials change under the workers (NOAUTH on every new
/// connection) until the operator fixes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_credentials_are_waited_out() {
    let redis = RedisServer::start(&[]).await;
    let app = sale(&redis).await;
    let before = redis.errors("NOAUTH").await;
    redis.cmd(&["CONFIG", "SET", "requirepass", "s3cret"]).await;
    redis.use_password(Some("s3cret"));
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    let during = reserves("noauth", 20);
    send_all(&app, &during).await;
    redis
        .wait_for_growth("NOAUTH replies", before, 60, || redis.errors("NOAUTH"))
        .await;
    assert!(undecided(&app, &during));
    assert_eq!(app.ready_in(&app.settings.amqp.dead_letter_queue).await, 0);
    redis.cmd(&["CONFIG", "SET", "requirepass", ""]).await;
    redis.use_password(None);
    check(&app, &during).await;
    app.cleanup().await;
}

/// A failover to an empty replica: Redis turns read-only, then holds no
/// data. Nothing is decided on it until `setup` accepts the empty store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_to_an_empty_replica_decides_nothing_until_setup() {
    let redis = RedisServer::start(&[]).await;
    let empty = RedisServer::start(&[]).await;
    let app = sale(&redis).await;
    let before = reserves("before", 10);
    send_all(&app, &before).await;
    for b in &before {
        app.outcome(b.command_id().as_str()).await;
    }
    let readonly = redis.errors("READONLY").await;
    let port = empty.port().to_string();
    redis.cmd(&["REPLICAOF", "127.0.0.1", &port]).await;
    // The readiness probe writes: a replica refuses.
    redis
        .wait_for_growth("READONLY replies", readonly, 2, || redis.errors("READONLY"))
        .await;
    eventually("the replica to hold the empty primary's data", || {
        synced(&redis)
    })
    .await;
    let during = reserves("during", 10);
    send_all(&app, &during).await;
    redis.cmd(&["REPLICAOF", "NO", "ONE"]).await;
    // Writable again, and empty: the workers look for the marker and find
    // none, and write nothing.
    let looked = redis.calls("exists").await;
    redis
        .wait_for_growth("marker checks", looked, 20, || redis.calls("exists"))
        .await;
    let state = app.store.keys().state(&rid("hall"));
    assert_eq!(
        redis.cmd(&["EXISTS", &state]).await,
        redis::Value::Int(0),
        "nothing decided on the empty store"
    );
    assert!(undecided(&app, &during));
    assert_eq!(app.ready_in(&app.settings.amqp.dead_letter_queue).await, 0);

    let done = reservation_worker::startup::setup(&app.settings)
        .await
        .unwrap();
    assert!(done.store_initialised, "setup accepts the empty store");
    define_hall(&app, "define-again").await;
    let after = reserves("after", 10);
    send_all(&app, &after).await;
    let all: Vec<_> = [before, during, after].concat();
    check(&app, &all).await;
    app.cleanup().await;
}

/// FLUSHALL in the middle of a rush: no event after the flush differs from
/// an earlier one for the same command, nothing is decided until `setup`
/// runs, then the work resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flush_mid_rush_stops_decisions_until_setup() {
    let redis = RedisServer::start(&[]).await;
    let app = sale(&redis).await;
    let first = reserves("first", 40);
    let sending = send_all(&app, &first);
    let flush = async {
        eventually("the rush under way", || async {
            (app.event_count() >= 10).then_some(())
        })
        .await;
        redis.cmd(&["FLUSHALL"]).await;
    };
    tokio::join!(sending, flush);
    let second = reserves("second", 20);
    send_all(&app, &second).await;
    let looked = redis.calls("exists").await;
    redis
        .wait_for_growth("marker checks", looked, 20, || redis.calls("exists"))
        .await;
    for key in [
        app.store.keys().state(&rid("hall")),
        app.store.keys().history(&rid("hall")),
    ] {
        assert_eq!(
            redis.cmd(&["EXISTS", &key]).await,
            redis::Value::Int(0),
            "nothing decided after the flush: {key}"
        );
    }
    assert!(undecided(&app, &second));

    reservation_worker::startup::setup(&app.settings)
        .await
        .unwrap();
    define_hall(&app, "define-again").await;
    let all: Vec<_> = [first, second].concat();
    check(&app, &all).await;
    app.cleanup().await;
}

/// Whether `server`, a replica, has synced with its primary.
async fn synced(server: &RedisServer) -> Option<()> {
    let info: String = redis::from_redis_value(server.cmd(&["INFO", "replication"]).await).unwrap();
    info.contains("master_link_status:up").then_some(())
}

/// The store tells a failure that passes from one that does not, on the
/// replies a real server gives: out of memory (the EXECABORT it causes),
/// read-only (a replica), refused credentials, lost data; but WRONGTYPE
/// (a key holding something else) is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_that_pass_are_told_apart_from_those_that_do_not() {
    use reservation_worker::admin::{Store, StoreError, decide_and_commit};
    use reservation_worker::message::decode;
    let redis = RedisServer::start(&["--maxmemory-policy", "noeviction"]).await;
    let app = TestApp::with(|s| s.redis.url = redis.url()).await;
    let store = Store::new(&app.settings.redis).unwrap();
    let batch = |id: &str| vec![decode(&reserve(id, "hall", "u", 1).to_json()).unwrap()];
    let commit = |id: &'static str| {
        let (store, batch) = (store.clone(), batch(id));
        async move { decide_and_commit(&store, &rid("hall"), &batch).await }
    };
    let define = vec![decode(&define("d", "hall", 5, None).to_json()).unwrap()];
    decide_and_commit(&store, &rid("hall"), &define)
        .await
        .unwrap()
        .unwrap();
    let transient = |e: StoreError, code: &str| {
        let text = reservation_worker::telemetry::chain(&e);
        assert!(e.is_transient(), "{code}: {text}");
        assert!(text.to_uppercase().contains(code), "{code}: {text}");
    };

    redis.cmd(&["CONFIG", "SET", "maxmemory", "1"]).await;
    transient(commit("oom").await.unwrap_err(), "OOM");
    redis.cmd(&["CONFIG", "SET", "maxmemory", "0"]).await;

    // Read-only, with the data: a copy becomes the primary of the original.
    let copy = RedisServer::start(&[]).await;
    let port = redis.port().to_string();
    copy.cmd(&["REPLICAOF", "127.0.0.1", &port]).await;
    eventually("the copy to sync", || synced(&copy)).await;
    copy.cmd(&["REPLICAOF", "NO", "ONE"]).await;
    let copy_port = copy.port().to_string();
    redis.cmd(&["REPLICAOF", "127.0.0.1", &copy_port]).await;
    eventually("the original to sync", || synced(&redis)).await;
    transient(commit("readonly").await.unwrap_err(), "READONLY");
    redis.cmd(&["REPLICAOF", "NO", "ONE"]).await;

    redis.cmd(&["CONFIG", "SET", "requirepass", "s3cret"]).await;
    redis.use_password(Some("s3cret"));
    redis.cmd(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    let refused = commit("noauth").await.unwrap_err();
    assert!(
        refused.is_transient(),
        "{}",
        reservation_worker::telemetry::chain(&refused)
    );
    redis.cmd(&["CONFIG", "SET", "requirepass", ""]).await;
    redis.use_password(None);

    let holdings = app.store.keys().holdings(&rid("hall"));
    redis.cmd(&["SET", &holdings, "not a hash"]).await;
    let wrong = commit("wrongtype").await.unwrap_err();
    assert!(
        !wrong.is_transient(),
        "{}",
        reservation_worker::telemetry::chain(&wrong)
    );
    redis.cmd(&["DEL", &holdings]).await;

    redis.cmd(&["FLUSHALL"]).await;
    let lost = commit("lost").await.unwrap_err();
    assert!(matches!(lost, StoreError::Uninitialised { .. }), "{lost}");
    app.cleanup().await;
}

/// A pooled connection is handed out again at once without a PING (a round
/// trip per transaction saved), and one whose request failed on the
/// connection itself is closed, not pooled: the next caller gets a working
/// one, not the broken one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_are_reused_without_a_ping_and_broken_ones_are_closed() {
    use reservation_worker::admin::Store;
    let redis = RedisServer::start(&[]).await;
    let (mut settings, _) = isolated_settings();
    settings.redis.url = redis.url();
    settings.redis.pool_size = 1;
    let store = Store::named(&settings.redis, Some("pool-test")).unwrap();

    const USES: u64 = 20;
    let pings = redis.calls("ping").await;
    for _ in 0..USES {
        store.used_memory().await.unwrap();
    }
    // A reuse that waited past the trusted window (a stalled machine) is
    // checked with a PING: allow some, but not one per reuse.
    let checked = redis.calls("ping").await - pings;
    assert!(
        checked <= USES / 2,
        "{checked} PINGs for {USES} reuses at once"
    );

    // The pooled connection dies on the server's side (a restart, a
    // timeout, a proxy): the next request on it may fail, and the one
    // after it must not.
    let killed: i64 = redis::from_redis_value(
        redis
            .cmd(&["CLIENT", "KILL", "USER", "default", "SKIPME", "yes"])
            .await,
    )
    .unwrap();
    assert_eq!(killed, 1, "the pool's one connection was killed");
    let _ = store.used_memory().await;
    store
        .used_memory()
        .await
        .expect("a connection that failed is replaced, not pooled again");
}
