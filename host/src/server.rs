//! `run`: load the providers, serve the KMS socket until shutdown, drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio_stream::wrappers::UnixListenerStream;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::grpc::{V1beta1Service, V2Service};
use crate::kms::KmsProvider;
use crate::socket::BoundSocket;
use crate::wasm::{LoadError, Runtime, WasmProvider};

#[derive(Debug, Error)]
pub enum ServeError {
    #[error("starting the WebAssembly runtime: {0}")]
    Runtime(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Loads every provider in `config`, then serves KMS v2 and v1beta1 on
/// `socket` until `shutdown` completes. In-flight calls then get
/// `shutdown_grace_ms` to finish; the socket file is removed on return.
pub async fn run(
    config: Config,
    mut socket: BoundSocket,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let runtime = Runtime::new().map_err(|e| ServeError::Runtime(e.to_string()))?;
    let gateway = Arc::new(load_gateway(&runtime, &config).await?);
    gateway.refresh_all().await;
    let status = gateway.status();
    tracing::info!(socket = ?socket.path(), key_id = %status.key_id, healthz = %status.healthz, "serving");
    let _refreshers = gateway.spawn_refreshers(Duration::from_millis(config.status_interval_ms));

    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let mut stopping = stop_rx.clone();
    let server = tonic::transport::Server::builder()
        .add_service(V2Service::server(gateway.clone()))
        .add_service(V1beta1Service::server(gateway.clone()))
        .serve_with_incoming_shutdown(
            UnixListenerStream::new(socket.take_listener()),
            async move {
                let _ = stopping.wait_for(|stop| *stop).await;
                tracing::info!("shutting down: draining in-flight calls");
            },
        );
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

/// Loads all providers concurrently is not worth the complexity: there are
/// few, and each compile already uses every core.
pub async fn load_gateway(runtime: &Runtime, config: &Config) -> Result<Gateway, ServeError> {
    let mut providers: Vec<(String, Arc<dyn KmsProvider>)> = Vec::new();
    for provider_config in &config.providers {
        let provider = WasmProvider::load(runtime, provider_config).await?;
        tracing::info!(provider = %provider.name(), sha256 = %provider.sha256(), component = ?provider_config.component, "provider loaded");
        providers.push((provider_config.name.clone(), Arc::new(provider)));
    }
    let primary = config
        .primary_name()
        .expect("validated config has a primary");
    Ok(Gateway::new(providers, primary))
}
