//! The admin HTTP server, for kubelet probes, Prometheus and operators:
//!
//! - `GET /livez`: 200 while the process runs. Never fails because a backend
//!   is down (restarting kmsgate would not bring Vault back; kube-apiserver
//!   keeps KMS out of its own livez for the same reason).
//! - `GET /readyz`: 200 when the KMS socket is serving and the primary
//!   provider is healthy; 503 with the reason otherwise.
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text).
//! - `GET /providers`: what serves, as JSON (as `kmsgate providers`, but key
//!   ids only as hashes, as in `/metrics`: the port needs no credentials).
//! - `POST /reload`: only with `admin.allow_reload = true` on a loopback
//!   address; otherwise 404.
//!
//! On a loopback address a request must name a loopback host (`Host:
//! 127.0.0.1:9474`, `localhost:9474`), so a web page the node's browser
//! opens cannot reach the port through DNS rebinding; `POST /reload` from
//! another origin (a browser's cross-site form) is refused. Connections are
//! bounded as `connections.rs` describes: one request each, a header
//! timeout, and at most `max_connections`, the oldest that has not sent a
//! request closed first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

use crate::config::Admin;
use crate::metrics::Metrics;
use crate::reload::Reloader;
use kmsgate_core::log_limit::LogLimit;

/// The longest one admin connection may live (a reload that compiles a
/// large component included).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Request heads larger than this are refused.
const MAX_HEAD_BYTES: usize = 16 << 10;

#[derive(Clone)]
struct AdminState {
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    /// True from the moment the KMS socket serves until shutdown begins.
    serving: Arc<AtomicBool>,
}

/// Binds `config.listen` and serves until the returned task is aborted.
pub async fn spawn(
    config: &Admin,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    serving: Arc<AtomicBool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(config.listen).await?;
    let bound = listener.local_addr()?;
    let mut router = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/providers", get(providers));
    if config.allow_reload {
        router = router.route("/reload", post(reload));
    }
    let app = router
        .with_state(AdminState {
            reloader,
            metrics,
            serving,
        })
        .layer(middleware::from_fn_with_state(bound, guard));
    let service = TowerToHyperService::new(app);
    let limits = Limits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
    };
    let task = tokio::spawn(accept_loop(listener, service, limits));
    Ok((bound, task))
}

#[derive(Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
}

type Service = TowerToHyperService<Router>;

/// An open admin connection.
struct Live {
    id: u64,
    task: AbortHandle,
    /// Set once its request head has arrived: it is being served.
    busy: Arc<AtomicBool>,
}

type Connections = Arc<Mutex<VecDeque<Live>>>;

/// Accepts within the connection cap. To make room for a new connection it
/// closes the oldest one that has not sent its request yet (a flood of idle
/// connections goes first, never a probe being answered), or else the
/// oldest.
async fn accept_loop(listener: TcpListener, service: Service, limits: Limits) {
    let live: Connections = Arc::default();
    let evicted = LogLimit::default();
    let failed = LogLimit::default();
    let mut next_id = 0u64;
    loop {
        let Some((tcp, _)) =
            crate::connections::accepted(listener.accept().await, &failed, "the admin port").await
        else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        let mut connections = live.lock().expect("admin connections lock");
        if connections.len() >= limits.max_connections {
            let idle = connections
                .iter()
                .position(|connection| !connection.busy.load(Ordering::Relaxed));
            if let Some(evicted) = connections.remove(idle.unwrap_or(0)) {
                evicted.task.abort();
            }
            if let Some(skipped) = evicted.take() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    skipped,
                    "admin connection cap reached: closing connections that sent no request, oldest first (admin.max_connections)"
                );
            }
        }
        let busy = Arc::new(AtomicBool::new(false));
        // Spawned under the lock, so the task cannot remove itself before
        // it is listed.
        let task = tokio::spawn(serve_connection(
            tcp,
            service.clone(),
            limits,
            live.clone(),
            id,
            busy.clone(),
        ));
        connections.push_back(Live {
            id,
            task: task.abort_handle(),
            busy,
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    service: Service,
    limits: Limits,
    live: Connections,
    id: u64,
    busy: Arc<AtomicBool>,
) {
    let service = hyper::service::service_fn(move |request| {
        busy.store(true, Ordering::Relaxed);
        hyper::service::Service::call(&service, request)
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(false)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(tcp), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
    live.lock()
        .expect("admin connections lock")
        .retain(|connection| connection.id != id);
}

/// Refuses requests a browser could have been tricked into sending: on a
/// loopback address, any that does not name a loopback host (DNS
/// rebinding); and a `POST` from another origin.
async fn guard(State(bound): State<SocketAddr>, request: Request, next: Next) -> Response {
    if let Err(why) = check_origin(bound, request.method(), request.headers()) {
        return (StatusCode::FORBIDDEN, format!("{why}\n")).into_response();
    }
    next.run(request).await
}

fn check_origin(
    bound: SocketAddr,
    method: &axum::http::Method,
    headers: &HeaderMap,
) -> Result<(), &'static str> {
    let host = headers
        .get(header::HOST)
        .map(|value| value.to_str().unwrap_or("?"));
    if bound.ip().is_loopback()
        && let Some(host) = host
    {
        let name = match host.rsplit_once(':') {
            Some((name, port)) if port.parse::<u16>().is_ok() && !name.is_empty() => name,
            _ => host,
        };
        let loopback = matches!(name, "localhost" | "[::1]")
            || name
                .parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return Err("the admin port answers only to a loopback Host");
        }
    }
    if method == axum::http::Method::POST {
        if let Some(origin) = headers.get(header::ORIGIN) {
            let same =
                host.is_some_and(|host| origin.as_bytes() == format!("http://{host}").as_bytes());
            if !same {
                return Err("cross-origin POST refused");
            }
        }
        if headers
            .get("sec-fetch-site")
            .is_some_and(|site| site != "same-origin" && site != "none")
        {
            return Err("cross-site POST refused");
        }
    }
    Ok(())
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
    // This port has no authentication: key ids are shown only as
    // `key_id_hash` (an empty `key_id` is left out of the JSON).
    let mut view = state.reloader.view();
    for provider in &mut view.providers {
        provider.key_id.clear();
    }
    axum::Json(view).into_response()
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

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, Method};
    use rstest::rstest;

    use super::*;

    #[rstest]
    #[case::loopback_ip("127.0.0.1:9474", Method::GET, None, true)]
    #[case::localhost("localhost:9474", Method::GET, None, true)]
    #[case::ipv6_loopback("[::1]:9474", Method::GET, None, true)]
    #[case::rebound_name("evil.example.com:9474", Method::GET, None, false)]
    #[case::lan_ip("10.0.0.5:9474", Method::GET, None, false)]
    #[case::same_origin_post("127.0.0.1:9474", Method::POST, Some("http://127.0.0.1:9474"), true)]
    #[case::cross_origin_post(
        "127.0.0.1:9474",
        Method::POST,
        Some("http://evil.example.com"),
        false
    )]
    #[case::curl_post("127.0.0.1:9474", Method::POST, None, true)]
    fn browsers_cannot_be_used_against_the_port(
        #[case] host: &str,
        #[case] method: Method,
        #[case] origin: Option<&str>,
        #[case] allowed: bool,
    ) {
        let bound: SocketAddr = "127.0.0.1:9474".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        assert_eq!(check_origin(bound, &method, &headers).is_ok(), allowed);
    }

    #[test]
    fn a_port_open_to_the_network_answers_any_host() {
        let bound: SocketAddr = "0.0.0.0:9474".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            header::HOST,
            HeaderValue::from_static("node-1.example.com:9474"),
        );
        assert!(check_origin(bound, &Method::GET, &headers).is_ok());
    }
}
