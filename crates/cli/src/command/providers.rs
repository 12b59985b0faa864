//! `kmsgate providers`: what a running daemon serves.

use std::path::PathBuf;

use anyhow::Context;
use kmsgate_proto::{admin, client};

/// Show what a running daemon serves: per provider the component, its
/// sha256, load time, generation, health, and the last reload error.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    socket: PathBuf,
}

pub async fn run(Args { socket }: Args) -> anyhow::Result<()> {
    let mut client = client::admin(&socket)
        .await
        .with_context(|| format!("connecting to {socket:?}"))?;
    let view = client
        .providers(admin::ProvidersRequest {})
        .await?
        .into_inner();
    let providers: Vec<_> = view
        .providers
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name, "primary": p.primary, "component": p.component, "sha256": p.sha256,
                "loaded_at_unix_ms": p.loaded_at_unix_ms, "generation": p.generation,
                "healthy": p.healthy, "key_id": p.key_id, "detail": p.detail,
                "last_reload_error": p.last_reload_error,
                "batches_decrypts": p.batches_decrypts, "decrypt_batches": p.decrypt_batches,
                "decrypt_batch_items": p.decrypt_batch_items,
                "decrypts_abandoned": p.decrypts_abandoned, "breaker": p.breaker,
                "fast_failures": p.fast_failures, "instances": p.instances,
                "queued_calls": p.queued_calls, "sandbox_memory_bytes": p.sandbox_memory_bytes,
            })
        })
        .collect();
    let json = serde_json::json!({
        "providers": providers,
        "reloads_total": view.reloads_total,
        "reload_failures_total": view.reload_failures_total,
        "last_reload_error": view.last_reload_error,
    });
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
