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
}

pub async fn run(Args { socket }: Args) -> anyhow::Result<()> {
    let mut client = client::admin(&socket).await?;
    let report = client.reload(admin::ReloadRequest {}).await?.into_inner();
    if !report.error.is_empty() {
        bail!(
            "reload refused, previous versions keep serving: {}",
            report.error
        );
    }
    if report.swapped.is_empty() {
        println!("nothing changed");
    } else {
        println!("swapped: {}", report.swapped.join(", "));
    }
    Ok(())
}
