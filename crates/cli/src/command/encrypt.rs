//! `kmsgate encrypt`: encrypt stdin through a running daemon.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kmsgate_proto::{client, v1beta1, v2};

use super::{Api, Sealed};

/// Encrypt stdin; print JSON (ciphertext in base64, key id, annotations)
/// that `kmsgate decrypt` reads back.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    socket: PathBuf,
    #[arg(long, value_enum, default_value_t = Api::V2)]
    api: Api,
}

pub async fn run(Args { socket, api }: Args) -> anyhow::Result<()> {
    let mut plaintext = Vec::new();
    std::io::stdin()
        .read_to_end(&mut plaintext)
        .context("reading plaintext from stdin")?;
    let sealed = match api {
        Api::V2 => {
            let mut client = client::v2(&socket).await?;
            let uid = format!("kmsgate-cli-{}", std::process::id());
            let response = client
                .encrypt(v2::EncryptRequest { plaintext, uid })
                .await?
                .into_inner();
            Sealed {
                ciphertext: STANDARD.encode(response.ciphertext),
                key_id: response.key_id,
                annotations: response
                    .annotations
                    .into_iter()
                    .map(|(k, v)| (k, STANDARD.encode(v)))
                    .collect(),
            }
        }
        Api::V1beta1 => {
            let mut client = client::v1beta1(&socket).await?;
            let request = v1beta1::EncryptRequest {
                version: "v1beta1".into(),
                plain: plaintext,
            };
            let response = client.encrypt(request).await?.into_inner();
            Sealed {
                ciphertext: STANDARD.encode(response.cipher),
                key_id: String::new(),
                annotations: BTreeMap::new(),
            }
        }
    };
    println!("{}", serde_json::to_string(&sealed)?);
    Ok(())
}
