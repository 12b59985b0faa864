//! `kmsgate providers`: what a running daemon serves.

use std::path::PathBuf;

use kmsgate_proto::{admin, client};

/// Show what a running daemon serves: per provider the component, its
/// sha256, load time, generation, health, the state of each credential the
/// host holds for it (never the credential), and the last reload error, as
/// JSON: the same view as the admin port's `/providers`, with key ids.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    socket: PathBuf,
}

pub async fn run(Args { socket }: Args) -> anyhow::Result<()> {
    let mut client = client::admin(&socket).await?;
    let view = client
        .providers(admin::ProvidersRequest {})
        .await?
        .into_inner();
    super::print_line(&serde_json::to_string_pretty(&view)?)?;
    Ok(())
}
