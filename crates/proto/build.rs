//! Compiles the KMS protos with `protox` (pure Rust), so no `protoc` is
//! needed on the build machine.

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let protos = [
        "proto/v2/api.proto",
        "proto/v1beta1/api.proto",
        "proto/admin/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"]).context("parsing the KMS protos")?;
    tonic_prost_build::configure()
        // These messages carry plaintext (DEKs). Their `Debug` is written by
        // hand in `proto.rs` so that it prints lengths, never bytes.
        .skip_debug([
            ".v2.EncryptRequest",
            ".v2.DecryptResponse",
            ".v1beta1.EncryptRequest",
            ".v1beta1.DecryptResponse",
        ])
        // The providers view is defined once, here, and serialised as JSON
        // by the admin HTTP port and `kmsgate providers` alike.
        .type_attribute(
            ".kmsgate.admin.v1.ProvidersResponse",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(
            ".kmsgate.admin.v1.ProviderInfo",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(
            ".kmsgate.admin.v1.CredentialInfo",
            "#[derive(serde::Serialize)]",
        )
        .field_attribute(
            ".kmsgate.admin.v1.ProviderInfo.key_id",
            "#[serde(skip_serializing_if = \"String::is_empty\")]",
        )
        .compile_fds(fds)
        .context("generating gRPC code for the KMS protos")?;
    Ok(())
}
