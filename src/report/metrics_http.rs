//! The optional `/metrics` HTTP endpoint (settings.report.metrics_listen).

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::metrics::Metrics;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics for clients that ask for it (Prometheus does), the classic
/// text format for everyone else (curl, `promtool check metrics`).
async fn metrics(State(m): State<Arc<Mutex<Metrics>>>, headers: HeaderMap) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let m = m.lock().unwrap_or_else(|p| p.into_inner());
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], m.openmetrics())
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            m.prometheus_text(),
        )
    }
}

/// Serves `/metrics` on an already bound listener until the task is aborted.
pub(crate) fn serve(listener: TcpListener, metrics_model: Arc<Mutex<Metrics>>) -> JoinHandle<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(|| async { "drydock: metrics at /metrics\n" }))
        .with_state(metrics_model);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics HTTP server stopped");
        }
    })
}
