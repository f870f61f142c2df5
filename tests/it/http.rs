//! The operations endpoint: /healthz, /readyz and /metrics on a real worker.

use crate::helpers::*;
use crate::process::WorkerProcess;
use reservation_worker::config::{SecretUrl, Settings};
use reservation_worker::domain::{CommandKind, Reason};
use reservation_worker::startup::Application;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
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

/// A free port on the loopback interface.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `settings` with the endpoint on a free loopback port.
pub fn with_endpoint(mut settings: Settings) -> (Settings, SocketAddr) {
    let port = free_port();
    settings.http.enabled = true;
    settings.http.bind = "127.0.0.1".into();
    settings.http.port = port;
    (settings, SocketAddr::from(([127, 0, 0, 1], port)))
}

#[tokio::test]
async fn healthz_readyz_and_metrics_report_a_working_worker() {
    let app = TestApp::new().await;
    // A process of its own, so its /metrics counts only its own work.
    let (settings, addr) = with_endpoint(app.settings.clone());
    let mut worker = WorkerProcess::spawn(&settings, &format!("{}-http", app.prefix()));
    eventually("the endpoint to answer", || async {
        tokio::net::TcpStream::connect(addr).await.ok()
    })
    .await;

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

    // Before any command: every counter and gauge is there, at 0, for
    // every label value it can take, and the backlog and holds figures
    // are read.
    let queue = &settings.amqp.commands_queue;
    let idle = eventually("the observed figures", || async {
        let (_, body) = get(addr, "/metrics").await;
        body.contains(&format!(
            "reservation_queue_messages{{queue=\"{queue}\"}} 0\n"
        ))
        .then_some(body)
    })
    .await;
    let mut zeros: Vec<String> = Vec::new();
    for kind in CommandKind::ALL {
        for outcome in ["accepted", "rejected"] {
            let command = kind.as_str();
            zeros.push(format!(
                "reservation_commands_total{{command=\"{command}\",outcome=\"{outcome}\"}} 0\n"
            ));
        }
    }
    for reason in Reason::ALL {
        let reason = reason.as_str();
        zeros.push(format!(
            "reservation_rejections_total{{reason=\"{reason}\"}} 0\n"
        ));
    }
    for cause in ["unreadable", "delivery_limit"] {
        zeros.push(format!(
            "reservation_dead_lettered_total{{cause=\"{cause}\"}} 0\n"
        ));
    }
    for name in [
        "reservation_duplicates_total",
        "reservation_commits_total",
        "reservation_watch_conflicts_total",
        "reservation_contention_pauses_total",
        "reservation_ack_frames_total",
        "reservation_reconnects_total",
        "reservation_redis_errors_total",
        "reservation_publish_failures_total",
        "reservation_requeued_total",
        "reservation_expiries_total",
        "reservation_in_flight",
        "reservation_store_uninitialised",
        "reservation_hold_index_entries",
    ] {
        zeros.push(format!("{name} 0\n"));
    }
    for zero in &zeros {
        assert!(
            idle.contains(zero.as_str()),
            "idle /metrics has {zero}:\n{idle}"
        );
    }

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
        "reservation_commands_total{command=\"define\",outcome=\"accepted\"} 1\n",
        "reservation_commands_total{command=\"reserve\",outcome=\"rejected\"} 1\n",
        "reservation_rejections_total{reason=\"sold_out\"} 1\n",
        "reservation_commits_total 2\n",
        "reservation_batch_size_bucket",
        "reservation_commit_seconds_bucket",
        "reservation_process_seconds_bucket",
        "reservation_in_flight",
        "reservation_ready 1\n",
    ] {
        assert!(metrics.contains(name), "/metrics has {name}:\n{metrics}");
    }
    assert!(worker.terminate().await.success());
    app.cleanup().await;
}

#[tokio::test]
async fn readyz_says_which_dependency_is_down() {
    let (mut settings, _) = isolated_settings();
    // Nothing listens on port 1.
    settings.redis.url = SecretUrl::new("redis://127.0.0.1:1/0");
    settings.amqp.url = SecretUrl::new("amqp://guest:guest@127.0.0.1:1/%2f");
    settings.http.enabled = true;
    settings.http.bind = "127.0.0.1".into();
    settings.http.port = 0;
    let app = Application::build(settings, "http-test").await.unwrap();
    let addr = app.http_addr().expect("the endpoint is enabled");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(app.run_until(shutdown.clone()));
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
    running.await.unwrap();
}
