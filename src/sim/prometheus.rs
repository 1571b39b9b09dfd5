//! A Prometheus that only answers `GET /api/v1/alerts`, with alerts that a
//! test turns on and off (flapping) and an outage mode, for fault injection
//! against the alerts gate. Prometheus's own response shape; nothing else
//! of Prometheus is simulated.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::SimError;

/// What the simulated Prometheus answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PromMode {
    /// No alert firing.
    #[default]
    Quiet,
    /// One alert (`KubeNodeUnreachable`) firing.
    Firing,
    /// 503, as a Prometheus that is restarting.
    Unavailable,
}

#[derive(Default)]
struct PromState {
    mode: PromMode,
    requests: u64,
}

/// A running simulated Prometheus; stops when dropped.
pub struct SimPrometheus {
    addr: SocketAddr,
    state: Arc<Mutex<PromState>>,
    task: tokio::task::JoinHandle<()>,
}

impl SimPrometheus {
    /// Listens on an ephemeral port of 127.0.0.1.
    pub async fn start() -> Result<SimPrometheus, SimError> {
        let addr: SocketAddr = ([127, 0, 0, 1], 0).into();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| SimError::Bind { addr, source })?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(PromState::default()));
        let app = Router::new()
            .route("/api/v1/alerts", get(alerts))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(SimPrometheus { addr, state, task })
    }

    /// The base URL, as `alerts.prometheus-url` takes it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: PromMode) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).mode = mode;
    }
}

impl Drop for SimPrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn alerts(State(state): State<Arc<Mutex<PromState>>>) -> Response {
    let mode = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.requests += 1;
        s.mode
    };
    match mode {
        PromMode::Quiet => {
            axum::Json(json!({"status": "success", "data": {"alerts": []}})).into_response()
        }
        PromMode::Firing => axum::Json(json!({
            "status": "success",
            "data": {"alerts": [{
                "labels": {"alertname": "KubeNodeUnreachable", "severity": "warning"},
                "annotations": {},
                "state": "firing",
                "activeAt": "2026-01-01T00:00:00Z",
                "value": "1e+00"
            }]}
        }))
        .into_response(),
        PromMode::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable: Prometheus is restarting",
        )
            .into_response(),
    }
}
