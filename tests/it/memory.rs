//! Memory stays bounded on any input: huge bodies are rejected without
//! costing more than themselves, and none outlives its decision. Measured
//! on a real worker process at the shipped prefetch, from its peak resident
//! memory (`VmHWM`), not from a timing.

use crate::helpers::*;
use crate::process::WorkerProcess;
use reservation_worker::config::Settings;

/// The most a worker may reach: half the Deployment's 128 Mi limit.
const PEAK_RSS_KIB: u64 = 64 * 1024;

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
    // All at once: the broker hands them over as fast as it can.
    let huge: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| format!("huge-{i}"))
        .map(|id| (id.clone(), body(&id, 16 * 1024 * 1024)))
        .collect();
    let large: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| format!("large-{i}"))
        .map(|id| (id.clone(), body(&id, 1024 * 1024)))
        .collect();
    futures_util::future::join_all(huge.iter().chain(&large).map(|(_, b)| app.send_raw(b))).await;
    let ids: Vec<&String> = huge.iter().chain(&large).map(|(id, _)| id).collect();
    for id in ids {
        let e = app.outcome(id).await;
        assert!(!e.event.is_accepted(), "{id} is invalid: over 64 KiB");
    }
    let peak = worker.peak_rss_kib();
    println!("peak RSS after 10 x 16 MiB and 100 x 1 MiB bodies: {} KiB", peak);
    assert!(
        peak < PEAK_RSS_KIB,
        "peak RSS {peak} KiB, above {PEAK_RSS_KIB} KiB"
    );
    app.cleanup().await;
}
