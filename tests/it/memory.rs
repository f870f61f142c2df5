//! Memory stays bounded on any input: huge bodies are rejected without
//! costing more than themselves, and none outlives its decision. Measured
//! on a real worker process at the shipped prefetch, from its peak resident
//! memory (`VmHWM`), not from a timing.

use crate::helpers::*;
use crate::process::WorkerProcess;
use reservation_worker::config::Settings;

/// The most the worker that ships (a release build, about 19 MiB at rest)
/// may reach: half the Deployment's 128 Mi limit.
const PEAK_RSS_KIB: u64 = 64 * 1024;

/// The most the bodies may add to a worker at rest, whatever its build (a
/// debug build rests at about 33 MiB): about two 16 MiB bodies held at once.
const GROWTH_KIB: u64 = 40 * 1024;

fn body(id: &str, pad: usize) -> Vec<u8> {
    format!(
        r#"{{"type":"reserve","command_id":"{id}","resource_id":"big","customer_id":"u","quantity":1,"pad":"{}"}}"#,
        "x".repeat(pad)
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_bodies_keep_a_workers_memory_bounded() {
    let app = TestApp::with(|s| s.amqp.prefetch = Settings::defaults().amqp.prefetch).await;
    let worker = WorkerProcess::spawn(&app.settings, &format!("{}-memory", app.prefix()));
    app.send(&define("d", "big", 10, None)).await;
    app.outcome("d").await;
    let at_rest = worker.rss_kib();
    // One after the other, as a producer with publisher confirms sends.
    let huge: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| format!("huge-{i}"))
        .map(|id| (id.clone(), body(&id, 16 * 1024 * 1024)))
        .collect();
    let large: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| format!("large-{i}"))
        .map(|id| (id.clone(), body(&id, 1024 * 1024)))
        .collect();
    for (_, b) in huge.iter().chain(&large) {
        app.send_raw(b).await;
    }
    let ids: Vec<&String> = huge.iter().chain(&large).map(|(id, _)| id).collect();
    for id in ids {
        let e = app.outcome(id).await;
        assert!(!e.event.is_accepted(), "{id} is invalid: over 64 KiB");
    }
    let peak = worker.peak_rss_kib();
    println!(
        "peak RSS after 10 x 16 MiB and 100 x 1 MiB bodies: {peak} KiB ({at_rest} KiB at rest)"
    );
    assert!(
        peak - at_rest < GROWTH_KIB,
        "the bodies took the worker from {at_rest} KiB to {peak} KiB"
    );
    // `cargo test --release` runs the release binary: the bound that ships.
    if !cfg!(debug_assertions) {
        assert!(
            peak < PEAK_RSS_KIB,
            "peak RSS {peak} KiB, above {PEAK_RSS_KIB} KiB"
        );
    }
    app.cleanup().await;
}
