//! `kmsgate decrypt`: decrypt what `kmsgate encrypt` printed.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kmsgate_proto::{client, v1beta1, v2};

use super::{Api, Sealed};

/// Decrypt the JSON that `kmsgate encrypt` printed (on stdin); write the
/// plaintext to stdout.
#[derive(clap::Args)]
pub struct Args {
    #[arg(long, short)]
    socket: PathBuf,
    #[arg(long, value_enum, default_value_t = Api::V2)]
    api: Api,
}

pub async fn run(Args { socket, api }: Args) -> anyhow::Result<()> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading JSON from stdin")?;
    let sealed: Sealed =
        serde_json::from_str(&input).context("stdin is not the JSON `kmsgate encrypt` prints")?;
    let ciphertext = STANDARD
        .decode(&sealed.ciphertext)
        .context("ciphertext is not base64")?;
    let plaintext = match api {
        Api::V2 => {
            let annotations = sealed
                .annotations
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        STANDARD
                            .decode(v)
                            .with_context(|| format!("annotation {k} is not base64"))?,
                    ))
                })
                .collect::<anyhow::Result<_>>()?;
            let mut client = client::v2(&socket).await?;
            let uid = format!("kmsgate-cli-{}", std::process::id());
            let request = v2::DecryptRequest {
                ciphertext,
                uid,
                key_id: sealed.key_id,
                annotations,
            };
            client.decrypt(request).await?.into_inner().plaintext
        }
        Api::V1beta1 => {
            let mut client = client::v1beta1(&socket).await?;
            let request = v1beta1::DecryptRequest {
                version: "v1beta1".into(),
                cipher: ciphertext,
            };
            client.decrypt(request).await?.into_inner().plain
        }
    };
    std::io::stdout().write_all(&plaintext)?;
    Ok(())
}
