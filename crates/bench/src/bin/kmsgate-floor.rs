//! `kmsgate-floor`: serves a benchmark floor on a socket, for
//! `scripts/bench`. The same gateway, gRPC stack and connection bounds as
//! the daemon, with a native provider instead of a Wasm one.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use kmsgate_bench::floor::{NativeAes, NativeTransit, TransitClient};
use kmsgate_core::kms::KmsProvider;
use kmsgate_core::secret::Secret;
use kmsgate_daemon::{server, socket};

#[derive(Parser)]
#[command(
    name = "kmsgate-floor",
    about = "Serve kmsgate's native benchmark floor"
)]
struct Cli {
    #[arg(long, short)]
    socket: PathBuf,
    /// Vault Transit through a native client instead of local AES (token
    /// from $VAULT_TOKEN).
    #[arg(long, requires = "vault_key")]
    vault_address: Option<String>,
    /// The Transit key for --vault-address.
    #[arg(long)]
    vault_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let provider: Arc<dyn KmsProvider> = match (cli.vault_address, cli.vault_key) {
        (Some(address), Some(key)) => {
            let token = Secret::new(
                std::env::var("VAULT_TOKEN")
                    .context("--vault-address reads the token from $VAULT_TOKEN")?,
            );
            let client = TransitClient::new(&address, "transit", &key, &token)
                .map_err(anyhow::Error::msg)?;
            Arc::new(NativeTransit::new(client))
        }
        _ => Arc::new(NativeAes::random()),
    };
    let socket = socket::bind(&cli.socket, 0o600).await?;
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let stop = async move {
        tokio::select! {
            _ = shutdown => {}
            _ = term.recv() => {}
        }
    };
    server::run_native(socket, "floor", provider, stop).await?;
    Ok(())
}
