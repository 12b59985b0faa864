//! `kmsgate status`: ask a running daemon for its status (v2) or version
//! (v1beta1).

use std::path::PathBuf;

use anyhow::bail;
use kmsgate_proto::{client, v1beta1, v2};

use super::Api;

/// Ask a running daemon for its status (v2) or version (v1beta1).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    socket: PathBuf,
    #[arg(long, value_enum, default_value_t = Api::V2)]
    api: Api,
}

pub async fn run(Args { socket, api }: Args) -> anyhow::Result<()> {
    match api {
        Api::V2 => {
            let mut client = client::v2(&socket).await?;
            let status = client.status(v2::StatusRequest {}).await?.into_inner();
            super::print_line(
                &serde_json::json!({
                    "version": status.version, "healthz": status.healthz, "key_id": status.key_id,
                })
                .to_string(),
            )?;
            if status.healthz != "ok" {
                bail!("unhealthy: {}", status.healthz);
            }
        }
        Api::V1beta1 => {
            let mut client = client::v1beta1(&socket).await?;
            let version = client
                .version(v1beta1::VersionRequest {
                    version: "v1beta1".into(),
                })
                .await?
                .into_inner();
            super::print_line(
                &serde_json::json!({
                    "version": version.version, "runtime_name": version.runtime_name,
                    "runtime_version": version.runtime_version,
                })
                .to_string(),
            )?;
        }
    }
    Ok(())
}
