//! The operations endpoint: /healthz, /readyz and /metrics on a real worker.

use crate::helpers::*;
use reservation_worker::store::Store;
use reservation_worker::worker::Worker;
use std::net::SocketAddr;
use std::sync::OnceLock;
use tokio_util::sync::CancellationToken;

/// The process-wide Prometheus recorder (it can be installed only once).
fn recorder() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| reservation_worker::metrics::install().expect("install the recorder"))
        .clone()
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Starts a worker for `app`'s settings (or others) with its endpoint on a
/// free port.
async fn worker_with_endpoint(
    settings: reservation_worker::config::Settings,
) -> (SocketAddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let store = Store::named(&settings.redis, &settings.worker, Some("http-test")).unwrap();
    let worker = Worker::new(settings, store, "http-test");
    let (addr, _) = reservation_worker::http::serve(
        "127.0.0.1:0".parse().unwrap(),
        worker.health(),
        recorder(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    tokio::spawn(worker.run(shutdown.clone()));
    (addr, shutdown)
}

#[tokio::test]
async fn healthz_readyz_and_metrics_report_a_working_worker() {
    let app = TestApp::new().await;
    let (addr, shutdown) = worker_with_endpoint(app.settings.clone()).await;

    assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
    let body = eventually("the worker to be ready", || async {
        let (status, body) = get(addr, "/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(
        body.contains("broker: ok") && body.contains("redis: ok") && body.contains("consuming: ok"),
        "{body}"
    );

    app.send(&define("d", "metered", 5, None)).await;
    app.outcome("d").await;
    app.send(&reserve("r", "metered", "u", 9)).await;
    app.outcome("r").await;
    let metrics = eventually("the outcome counters", || async {
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        body.contains("reservation_rejections_total{reason=\"sold_out\"}")
            .then_some(body)
    })
    .await;
    for name in [
        "reservation_commands_total{command=\"define\",outcome=\"accepted\"}",
        "reservation_commits_total",
        "reservation_batch_size_bucket",
        "reservation_commit_seconds_bucket",
        "reservation_process_seconds_bucket",
        "reservation_in_flight",
        "reservation_ready 1",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}");
    }
    shutdown.cancel();
    app.cleanup().await;
}

#[tokio::test]
async fn readyz_says_which_dependency_is_down() {
    let (mut settings, _) = isolated_settings();
    // Nothing listens on port 1.
    settings.redis.url = "redis://127.0.0.1:1/0".into();
    settings.amqp.url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    let (addr, shutdown) = worker_with_endpoint(settings).await;
    assert_eq!(
        get(addr, "/healthz").await.0,
        200,
        "alive even when not ready"
    );
    let body = eventually("readyz to report both dependencies down", || async {
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503);
        (body.contains("redis: down") && body.contains("broker: down")).then_some(body)
    })
    .await;
    assert!(body.contains("consuming: down"));
    shutdown.cancel();
}
