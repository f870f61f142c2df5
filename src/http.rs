//! The operations endpoint: `/healthz`, `/readyz` and `/metrics`.

use crate::health::Health;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AppState {
    health: Health,
    metrics: PrometheusHandle,
}

/// Binds `addr` and serves until `shutdown`; returns the bound address
/// (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(health, metrics);
    let task = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "the HTTP endpoint stopped");
        }
    });
    Ok((bound, task))
}

fn router(health: Health, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { health, metrics })
}

/// 200 when ready, 503 with the failing checks otherwise.
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    let report = state.health.report();
    let body: String = report
        .iter()
        .map(|(name, state)| format!("{name}: {state}\n"))
        .collect();
    let ready = state.health.is_ready();
    metrics::gauge!(crate::metrics::READY).set(if ready { 1.0 } else { 0.0 });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body)
}

async fn render_metrics(State(state): State<AppState>) -> String {
    metrics::gauge!(crate::metrics::READY).set(if state.health.is_ready() { 1.0 } else { 0.0 });
    state.metrics.render()
}
