//! `kmsgate check`: load every provider as a start or reload would, and run
//! the swap canary on it, without serving.

use std::path::PathBuf;

use anyhow::bail;
use kmsgate_daemon::config::Config;
use kmsgate_daemon::reload::{self, Checked};
use kmsgate_wasm::Runtime;

/// Validate the config, load every provider (compile, link, init) and
/// run the swap canary on it when its backend is up, without serving.
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
    let mut config = Config::load(&config_path)?;
    // No disk cache: a check writes nothing of the daemon's. `oci://`
    // components are pulled into a directory of its own, which goes with
    // it (a check run as another user must not leave files in the daemon's
    // cache that the daemon would then refuse).
    let pulled = tempfile::tempdir()?;
    for provider in &mut config.providers {
        if provider.oci_cache.is_some() {
            provider.oci_cache = Some(pulled.path().join("oci"));
        }
    }
    let runtime =
        Runtime::new(None, config.memory_budget_bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut failed = false;
    for provider in &config.providers {
        match reload::check(&runtime, provider).await {
            Ok((Checked::Passed(health), origin)) => println!(
                "ok    {}: key id {:?}, canary passed{}{}",
                provider.name,
                health.key_id.unwrap_or_default(),
                provenance(&origin),
                if health.detail.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", health.detail)
                }
            ),
            Ok((Checked::BackendDown(why), origin)) => println!(
                "ok    {}: loaded{}; canary not run, the backend is not healthy: {why}",
                provider.name,
                provenance(&origin),
            ),
            Err(error) => {
                failed = true;
                println!("error {}: {error}", provider.name);
            }
        }
    }
    if failed {
        bail!("{config_path:?}: some providers failed to load or failed the canary");
    }
    println!(
        "{config_path:?}: config valid, {} provider(s) loaded and checked",
        config.providers.len()
    );
    Ok(())
}

/// Who signed what was loaded, and whether a registry's copy is stale.
fn provenance(origin: &kmsgate_wasm::Origin) -> String {
    let mut text = String::new();
    if let Some(signer) = &origin.signed_by {
        text.push_str(&format!(", signed by {signer}"));
    }
    if let Some(why) = &origin.stale {
        text.push_str(&format!(", stale: {why}"));
    }
    text
}
