//! `kmsgate reload`: make a running daemon re-read its config.

use std::path::PathBuf;

use anyhow::bail;
use kmsgate_proto::{admin, client};

/// Make a running daemon re-read its config and hot-swap what changed
/// (the same as SIGHUP). Fails if any new version was refused.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    socket: PathBuf,
    /// Also remove this provider, dropped from the config, at once (no
    /// restart). What it encrypted stops decrypting: rewrite it first.
    /// Repeatable.
    #[arg(long = "remove", value_name = "PROVIDER")]
    remove: Vec<String>,
}

pub async fn run(Args { socket, remove }: Args) -> anyhow::Result<()> {
    let mut client = client::admin(&socket).await?;
    let report = client
        .reload(admin::ReloadRequest { remove })
        .await?
        .into_inner();
    if !report.error.is_empty() {
        bail!(
            "reload refused, previous versions keep serving: {}",
            report.error
        );
    }
    if report.swapped.is_empty() && report.removed.is_empty() {
        println!("nothing changed");
    }
    if !report.swapped.is_empty() {
        println!("swapped: {}", report.swapped.join(", "));
    }
    if !report.removed.is_empty() {
        println!("removed: {}", report.removed.join(", "));
    }
    Ok(())
}
