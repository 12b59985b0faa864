//! `kmsgate serve`: the daemon.

use std::path::PathBuf;

use anyhow::Context;
use kmsgate_daemon::config::Config;
use kmsgate_daemon::{server, socket};

/// Serve the KMS API on the configured Unix socket.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    config: PathBuf,
}

pub async fn run(
    Args {
        config: config_path,
    }: Args,
) -> anyhow::Result<()> {
    // Before anything that can take time: a SIGTERM from here on is a clean
    // shutdown, and a SIGHUP no longer terminates (tokio keeps a handler
    // once installed; `server::run` listens for SIGHUP itself).
    let shutdown = shutdown_signal()?;
    drop(tokio::signal::unix::signal(
        tokio::signal::unix::SignalKind::hangup(),
    )?);
    let config = Config::load(&config_path)?;
    let socket = socket::bind(&config.socket, config.socket_mode).await?;
    server::run(config, socket, shutdown).await?;
    Ok(())
}

/// Completes on SIGTERM (kubelet, systemd) or SIGINT (a terminal). The
/// handlers are installed now, not when the future is first polled.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
