//! Heap allocations per command on the decision path, counted: decode the
//! bodies, then one transaction (WATCH and load, decide, MULTI/EXEC) on the
//! real Redis, the way a replica's committer runs it. Allocation counts do
//! not depend on the machine's speed or load, so they show a change to the
//! path's cost where a throughput benchmark on a busy machine cannot; each
//! allocation is also a malloc and a free in a replica's profile.
//!
//! Run `cargo test --test allocations -- --nocapture` to see the figures.
//! The bounds keep about a third of headroom over what was measured (see
//! docs/benchmarks.md, "Allocations per command"), so a change that adds
//! work per command fails here and says how much.

use reservation_worker::admin::{Store, decide_and_commit, decide_and_commit_all};
use reservation_worker::config::{SecretUrl, Settings};
use reservation_worker::domain::{CommandId, CustomerId, ResourceId, Submission};
use reservation_worker::message::{CommandBody, decode};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// The system allocator, counting.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed on to `System` unchanged; only counters are
// added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract is `System`'s.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Commands per measured batch: about what a committer takes at once on
/// `hot` and `uniform` (docs/benchmarks.md, `commands/commit`).
const BATCH: usize = 32;

fn rid(s: &str) -> ResourceId {
    ResourceId::try_from(s).unwrap()
}

fn reserve(id: &str, resource: &str, customer: &str) -> Vec<u8> {
    CommandBody::Reserve {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: rid(resource),
        customer_id: CustomerId::try_from(customer).unwrap(),
        quantity: 1,
    }
    .to_json()
}

fn define(id: &str, resource: &str) -> Vec<u8> {
    CommandBody::Define {
        command_id: CommandId::try_from(id).unwrap(),
        resource_id: rid(resource),
        capacity: 100_000,
        per_customer_limit: Some(Some(4)),
        price: None,
        budget_id: None,
    }
    .to_json()
}

/// A store under a key prefix of this run's own.
async fn store() -> (Store, String) {
    let prefix = format!(
        "test-alloc-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let mut settings = Settings::defaults().under_prefix(&prefix);
    if let Ok(url) = std::env::var("REDIS_URL") {
        settings.redis.url = SecretUrl::new(url);
    }
    let store = Store::new(&settings.redis).unwrap();
    store.initialise().await.unwrap();
    (store, prefix)
}

/// Allocations and bytes per command of `run`.
async fn per_command<F: Future<Output = ()>>(commands: usize, run: F) -> (f64, f64) {
    let (a, b) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    run.await;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - a;
    let bytes = BYTES.load(Ordering::Relaxed) - b;
    (
        allocations as f64 / commands as f64,
        bytes as f64 / commands as f64,
    )
}

/// `BATCH` reserves of distinct customers on one resource (`hot`), decoded
/// and decided in one transaction: allocations per command.
async fn hot(store: &Store, round: usize) -> (f64, f64) {
    let resource = rid("hot");
    let bodies: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            reserve(
                &format!("c-{round}-{i:06}"),
                "hot",
                &format!("u-{round}-{i:05}"),
            )
        })
        .collect();
    per_command(BATCH, async {
        let batch: Vec<Submission> = bodies.iter().map(|b| decode(b).unwrap()).collect();
        let committed = decide_and_commit(store, &resource, &batch).await.unwrap();
        assert!(committed.is_some(), "no other writer");
    })
    .await
}

/// One reserve on each of `BATCH` resources (`uniform`), decoded and
/// decided in one transaction: allocations per command.
async fn uniform(store: &Store, round: usize) -> (f64, f64) {
    let resources: Vec<ResourceId> = (0..BATCH).map(|i| rid(&format!("r-{i:05}"))).collect();
    let bodies: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| {
            reserve(
                &format!("c-{round}-{i:06}"),
                resources[i].as_str(),
                &format!("u-{round}-{i:05}"),
            )
        })
        .collect();
    per_command(BATCH, async {
        let batches: Vec<Vec<Submission>> =
            bodies.iter().map(|b| vec![decode(b).unwrap()]).collect();
        let group: Vec<(&ResourceId, &[Submission])> = resources
            .iter()
            .zip(&batches)
            .map(|(r, b)| (r, b.as_slice()))
            .collect();
        let committed = decide_and_commit_all(store, &group).await.unwrap();
        assert!(committed.is_some(), "no other writer");
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn allocations_per_command_stay_bounded() {
    let (store, _prefix) = store().await;
    let mut defines = vec![decode(&define("d-hot", "hot")).unwrap()];
    decide_and_commit(&store, &rid("hot"), &defines)
        .await
        .unwrap();
    for i in 0..BATCH {
        let resource = format!("r-{i:05}");
        defines = vec![decode(&define(&format!("d-{resource}"), &resource)).unwrap()];
        decide_and_commit(&store, &rid(&resource), &defines)
            .await
            .unwrap();
    }
    // The first rounds warm up the connection pool and its buffers; the
    // last is measured.
    let mut figures = Vec::new();
    for round in 0..4 {
        figures = vec![
            ("hot", hot(&store, round).await, 34.0),
            ("uniform", uniform(&store, round).await, 108.0),
        ];
    }
    store.delete_all().await.unwrap();
    println!("| workload | allocations/command | bytes allocated/command | bound |");
    println!("|---|---|---|---|");
    for (name, (allocations, bytes), bound) in &figures {
        println!("| {name} | {allocations:.1} | {bytes:.0} | {bound} |");
    }
    for (name, (allocations, _), bound) in figures {
        assert!(
            allocations <= bound,
            "{name}: {allocations:.1} allocations per command, over the bound of {bound}"
        );
    }
}
