//! The admin HTTP server, for kubelet probes, Prometheus and operators:
//!
//! - `GET /livez`: 200 while the process runs. Never fails because a backend
//!   is down (restarting kmsgate would not bring Vault back; kube-apiserver
//!   keeps KMS out of its own livez for the same reason).
//! - `GET /readyz`: 200 when the KMS socket is serving and the primary
//!   provider is healthy; 503 with the reason otherwise.
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text).
//! - `GET /providers`: what serves, as JSON (as `kmsgate providers`).
//! - `POST /reload`: only with `admin.allow_reload = true` on a loopback
//!   address; otherwise 404.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::reload::Reloader;

#[derive(Clone)]
struct AdminState {
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    /// True from the moment the KMS socket serves until shutdown begins.
    serving: Arc<AtomicBool>,
}

/// Binds `addr` and serves until the returned task is aborted.
pub async fn spawn(
    addr: SocketAddr,
    allow_reload: bool,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    serving: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let mut router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/providers", get(providers));
    if allow_reload {
        router = router.route("/reload", post(reload));
    }
    let app = router.with_state(AdminState {
        reloader,
        metrics,
        serving,
    });
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!("admin HTTP server stopped: {error}");
        }
    });
    Ok((bound, task))
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if !state.serving.load(Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not serving the KMS socket\n",
        )
            .into_response();
    }
    let status = state.reloader.gateway().status();
    if status.healthz == "ok" {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", status.healthz),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<AdminState>) -> Response {
    let text = state.metrics.render(&state.reloader.gateway().slots());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn providers(State(state): State<AdminState>) -> Response {
    axum::Json(state.reloader.view()).into_response()
}

async fn reload(State(state): State<AdminState>) -> Response {
    let report = state.reloader.reload("admin HTTP").await;
    let status = if report.failed() {
        StatusCode::CONFLICT
    } else {
        StatusCode::OK
    };
    let body = serde_json::json!({
        "swapped": report.swapped,
        "refused": report.refused.iter().map(|(name, _)| name).collect::<Vec<_>>(),
        "error": report.problems(),
    });
    (status, axum::Json(body)).into_response()
}
