//! `run`: load the providers, serve the KMS socket until shutdown, drain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::config::{Config, KmsSocket, ProviderConfig};
use crate::gateway::Gateway;
use crate::grpc::{AdminService, V1beta1Service, V2Service};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::slot::{Serving, Slot};
use crate::socket::BoundSocket;
use kmsgate_core::kms::KmsProvider;
use kmsgate_wasm::{LoadError, Runtime, WasmProvider};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("config: {0}")]
    Config(String),
    #[error("starting the WebAssembly runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("binding the admin HTTP server on {addr}: {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Loads every provider in `config`, then serves KMS v2, v1beta1, gRPC
/// health and the admin service on `socket`, and the admin HTTP server,
/// until `shutdown` completes. Reloads on SIGHUP, `kmsgate reload`, and
/// (with `watch`) file changes. On shutdown, gRPC health turns NOT_SERVING,
/// then in-flight calls get `shutdown_grace` to finish; the socket file is
/// removed on return. A shutdown while providers load returns at once; a
/// SIGHUP then is kept and reloads once serving.
pub async fn run(
    config: Config,
    mut socket: BoundSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    // First, before anything slow: from here SIGHUP no longer has its
    // default action (terminate).
    let hangups = listen_for_sighup();
    // Metadata of files that may sit on a hung network file system: off
    // the runtime, bounded in time like every other read.
    let checked = config.clone();
    match kmsgate_core::files::off_runtime("permission checks", move || {
        permission_warnings(&checked)
    })
    .await
    {
        Ok(warnings) => warnings
            .iter()
            .for_each(|warning| tracing::warn!("{warning}")),
        Err(why) => tracing::warn!("{why}"),
    }
    let mut shutdown = Box::pin(shutdown);
    let runtime = Runtime::new(
        config.compile_cache_dir.as_deref(),
        config.memory_budget_bytes,
    )
    .map_err(|e| ServeError::Runtime(e.to_string()))?;
    let starting = async {
        let gateway = load_gateway(&runtime, &config).await?;
        gateway.start().await;
        Ok::<_, ServeError>(gateway)
    };
    let gateway = tokio::select! {
        gateway = starting => Arc::new(gateway?),
        () = &mut shutdown => {
            tracing::info!("shut down while starting");
            return Ok(());
        }
    };
    let status = gateway.status();
    tracing::info!(socket = ?socket.path(), key_id = %status.key_id, healthz = %status.healthz, "serving");

    let grace = config.shutdown_grace;
    let kms_socket = config.kms_socket.clone();
    let debounce = config.reload_debounce;
    let watch = config.watch;
    let admin = config.admin.clone();
    let metrics = Arc::new(Metrics::new());
    let reloader = Arc::new(Reloader::new(
        config,
        runtime,
        gateway.clone(),
        metrics.clone(),
    ));
    let serving = Arc::new(AtomicBool::new(false));
    let _admin_http = if admin.enabled {
        let (addr, task) =
            crate::admin_http::spawn(&admin, reloader.clone(), metrics.clone(), serving.clone())
                .await
                .map_err(|source| ServeError::Admin {
                    addr: admin.listen,
                    source,
                })?;
        tracing::info!(%addr, "admin HTTP serving /livez /readyz /metrics /providers");
        Some(AbortOnDrop(task))
    } else {
        None
    };
    let _file_watch = if watch {
        match crate::watch::spawn(reloader.clone(), debounce).await {
            Ok(file_watch) => Some(file_watch),
            Err(error) => {
                tracing::warn!(
                    "cannot watch files, reload with SIGHUP or `kmsgate reload`: {error}"
                );
                None
            }
        }
    } else {
        None
    };
    let _sighup = hangups.map(|hangups| spawn_sighup_reloads(reloader.clone(), hangups));
    let _load_retries = spawn_load_retries(reloader.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    for service in HEALTH_SERVICES {
        health
            .set_service_status(service, tonic_health::ServingStatus::Serving)
            .await;
    }

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let not_serving = serving.clone();
    tokio::spawn(async move {
        shutdown.await;
        // Probes and health checks see the drain before the socket closes.
        not_serving.store(false, Ordering::Relaxed);
        for service in HEALTH_SERVICES {
            health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
        let _ = stop_tx.send(true);
    });
    let mut stopping = stop_rx.clone();
    serving.store(true, Ordering::Relaxed);
    let server = kms_server(&kms_socket)
        .add_service(health_service)
        .add_service(V2Service::server(gateway.clone(), metrics.clone()))
        .add_service(V1beta1Service::server(gateway.clone(), metrics))
        .add_service(AdminService::server(reloader))
        .serve_with_incoming_shutdown(kms_connections(&mut socket, &kms_socket), async move {
            let _ = stopping.wait_for(|stop| *stop).await;
            tracing::info!("shutting down: draining in-flight calls");
        });
    let mut grace_timer = stop_rx;
    tokio::select! {
        result = server => result?,
        _ = async {
            let _ = grace_timer.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => tracing::warn!("shutdown grace of {grace:?} expired; abandoning in-flight calls"),
    }
    tracing::info!("stopped");
    drop(socket);
    Ok(())
}

/// The gRPC server of the KMS socket, with its bounds per connection:
/// streams, header size, flow-control windows, and how long any request
/// may take (a half-open stream included; a caller's shorter grpc-timeout
/// wins).
fn kms_server(limits: &KmsSocket) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(limits.max_streams)
        .http2_max_header_list_size(crate::grpc::MAX_HEADER_LIST_BYTES)
        // What a stream, and a connection, may send before the daemon reads
        // it (hyper's default is 1 MiB each).
        .initial_stream_window_size(crate::grpc::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::grpc::CONNECTION_WINDOW_BYTES)
        .timeout(limits.request_timeout)
}

/// The KMS socket's connections, within its connection cap and idle
/// timeout ([`crate::connections`]).
fn kms_connections(
    socket: &mut BoundSocket,
    limits: &KmsSocket,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<crate::connections::Idle<tokio::net::UnixStream>>,
> {
    crate::connections::kms_incoming(
        socket.take_listener(),
        limits.max_connections,
        limits.idle_timeout,
    )
}

/// The names `grpc.health.v1` answers for: the server as a whole, and each
/// KMS service.
const HEALTH_SERVICES: [&str; 3] = [
    "",
    "v2.KeyManagementService",
    "v1beta1.KeyManagementService",
];

/// Loads the providers one after another: there are few, and each compile
/// already uses every core. A provider that fails for a reason outside its
/// component (a revoked token, a backend that timed out at `init`, a
/// secret file not written yet) does not stop the daemon: it serves as
/// not loaded (unhealthy, calls UNAVAILABLE) and is retried in the
/// background ([`spawn_load_retries`]). A component that cannot work
/// (does not compile, link or match its pin, or fails the swap canary
/// while its backend is up) stops the start.
pub async fn load_gateway(runtime: &Runtime, config: &Config) -> Result<Gateway, ServeError> {
    let mut slots = Vec::new();
    for provider_config in &config.providers {
        let loaded = match WasmProvider::load(runtime, provider_config).await {
            Ok(provider) => check_at_start(provider_config, &provider)
                .await
                .map(|()| provider),
            Err(error) => Err(error),
        };
        let serving = match loaded {
            Ok(provider) => {
                let origin = provider.origin().clone();
                tracing::info!(provider = %provider.name(), sha256 = %origin.sha256, component = ?origin.component, "provider loaded");
                Serving::new(Arc::new(provider), origin, 1)
            }
            Err(error) if error.retryable => {
                tracing::error!(provider = %provider_config.name, "provider not loaded; serving without it and retrying: {error}");
                Serving::not_loaded(provider_config.component.clone(), error.reason)
            }
            Err(error) => return Err(error.into()),
        };
        slots.push(Slot::new(provider_config.name.clone(), serving));
    }
    // `Config` resolved `primary` to one of its providers, and there is a
    // slot for each.
    let at = slots
        .iter()
        .position(|slot: &Slot| slot.name() == config.primary)
        .ok_or_else(|| ServeError::Config(format!("no provider is named {:?}", config.primary)))?;
    let primary = slots.swap_remove(at);
    Ok(Gateway::new(primary, slots, config.status_interval))
}

/// The swap canary, at start: what a swap or `kmsgate check` would refuse
/// does not serve from a start either. A provider that cannot round-trip
/// its own ciphertext, breaks the apiserver's limits or answers a batch out
/// of order stops the start, named. Its backend must be up for the canary
/// to run; a backend that is down at start does not stop the daemon (the
/// apiserver needs its other providers), so then the check waits for the
/// provider's first swap, which runs it.
async fn check_at_start(config: &ProviderConfig, provider: &WasmProvider) -> Result<(), LoadError> {
    match provider.status().await {
        Ok(status) if status.healthy => crate::reload::canary(&config.name, provider, &[])
            .await
            .map(|_| ())
            .map_err(|reason| LoadError {
                provider: config.name.clone(),
                path: config.component.clone(),
                reason,
                retryable: false,
            }),
        _ => {
            tracing::warn!(provider = %config.name, "backend not ready at start: the canary was not run");
            Ok(())
        }
    }
}

/// What about the files around the daemon lets other local users in: said
/// at start, not refused (an operator may have reasons).
pub fn permission_warnings(config: &Config) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut warnings = Vec::new();
    // `/proc/self` belongs to the process's effective user.
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if let Some(dir) = config.socket.parent()
        && let Ok(meta) = std::fs::metadata(dir)
        && meta.mode() & 0o002 != 0
    {
        warnings.push(format!(
            "the socket's directory {dir:?} is writable by every user: one could put its own socket in kmsgate's place before a restart"
        ));
    }
    let mode = config.socket_mode;
    if mode & !0o660 != 0 {
        warnings.push(format!(
            "socket_mode {mode:04o} is wider than 0660: users beyond the daemon's user and group can call the KMS API"
        ));
    }
    for provider in &config.providers {
        for (name, secret) in &provider.secrets {
            let Some(file) = &secret.file else { continue };
            let Ok(meta) = std::fs::metadata(file) else {
                continue;
            };
            if meta.mode() & 0o004 != 0 {
                warnings.push(format!(
                    "provider {}: secret {name}'s file {file:?} is readable by every user",
                    provider.name
                ));
            }
            if me.is_some_and(|me| meta.uid() != me && meta.uid() != 0) {
                warnings.push(format!(
                    "provider {}: secret {name}'s file {file:?} belongs to uid {}, another user, who can change it",
                    provider.name,
                    meta.uid()
                ));
            }
        }
    }
    warnings
}

/// How long the retries of providers that could not load wait, at most.
const MAX_LOAD_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Retries providers that could not load at start, waiting 1 s, then
/// twice as long each time (up to [`MAX_LOAD_RETRY_WAIT`]), until all are
/// loaded. A reload (file change, SIGHUP) also retries them.
fn spawn_load_retries(reloader: Arc<Reloader>) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        let mut wait = Duration::from_secs(1);
        let not_loaded = |reloader: &Reloader| {
            reloader
                .gateway()
                .slots()
                .iter()
                .any(|slot| !slot.serving().is_loaded())
        };
        while not_loaded(&reloader) {
            tokio::time::sleep(wait).await;
            if reloader.retry_not_loaded().await == 0 {
                break;
            }
            wait = (wait * 2).min(MAX_LOAD_RETRY_WAIT);
        }
    }))
}

fn listen_for_sighup() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .inspect_err(|error| tracing::warn!("cannot listen for SIGHUP: {error}"))
        .ok()
}

/// SIGHUP reloads, as for most Unix daemons (one that came during start-up
/// is pending in `hangups`). The task ends with the returned guard.
fn spawn_sighup_reloads(
    reloader: Arc<Reloader>,
    mut hangups: tokio::signal::unix::Signal,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reloader.reload("SIGHUP").await;
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves one native (non-Wasm) provider on `socket`: the same gateway,
/// gRPC services, tonic setup and connection bounds as [`run`] (with the
/// default limits). `kmsgate-bench` serves its native floor with it.
pub async fn run_native(
    mut socket: BoundSocket,
    name: &str,
    provider: Arc<dyn kmsgate_core::kms::KmsProvider>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let serving = Serving::new(
        provider,
        kmsgate_wasm::Origin {
            component: "native".into(),
            sha256: String::new(),
            fingerprint: String::new(),
            identity: None,
            signed_by: None,
            stale: None,
        },
        1,
    );
    let gateway = Arc::new(Gateway::new(
        Slot::new(name.into(), serving),
        Vec::new(),
        Duration::from_secs(10),
    ));
    gateway.start().await;
    let metrics = Arc::new(Metrics::new());
    tracing::info!(socket = ?socket.path(), "serving a native provider");
    let limits = KmsSocket::default();
    kms_server(&limits)
        .add_service(V2Service::server(gateway.clone(), metrics.clone()))
        .add_service(V1beta1Service::server(gateway, metrics))
        .serve_with_incoming_shutdown(kms_connections(&mut socket, &limits), shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn loose_permissions_are_pointed_out() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("token");
        std::fs::write(&secret, "t").unwrap();
        let text = |socket_mode: &str| {
            format!(
                "socket = {:?}\nsocket_mode = {socket_mode:?}\n[[providers]]\nname = \"p\"\ncomponent = \"p.wasm\"\n[providers.secrets]\ntoken = {{ file = {:?} }}\n",
                dir.path().join("kms.sock"),
                secret
            )
        };
        let set_mode = |path: &std::path::Path, mode| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        set_mode(dir.path(), 0o700);
        set_mode(&secret, 0o600);
        let tight = Config::parse(&text("0600")).unwrap();
        assert_eq!(permission_warnings(&tight), Vec::<String>::new());

        set_mode(dir.path(), 0o777);
        set_mode(&secret, 0o644);
        let loose = Config::parse(&text("0666")).unwrap();
        let warnings = permission_warnings(&loose).join("\n");
        for expected in [
            "writable by every user",
            "wider than 0660",
            "readable by every user",
        ] {
            assert!(warnings.contains(expected), "{expected}: {warnings}");
        }
    }
}
