//! Misbehaving provider components are contained: a clear error for the
//! call, and the daemon keeps serving its other providers.
//!
//! Every directory under `tests/fixtures/` must be used here (see
//! `every_fixture_is_used`).

use std::collections::HashMap;

use kmsgate::proto::v2;
use kmsgate_integration::{ProviderSpec, TestGateway, workspace_root};
use tonic::Code;

/// A healthy `local-aes` (the primary) next to the fixture `name`.
async fn gateway_with(fixture: &str, spec: ProviderSpec) -> kmsgate_integration::RunningGateway {
    TestGateway::new()
        .with_provider(ProviderSpec::local_aes("good", "k1", 1))
        .with_provider(spec)
        .primary(fixture)
        .start()
        .await
}

fn encrypt(plaintext: &[u8]) -> v2::EncryptRequest {
    v2::EncryptRequest {
        plaintext: plaintext.to_vec(),
        uid: "u".into(),
    }
}

async fn assert_good_provider_still_serves(client: &mut kmsgate::client::V2Client) {
    let request = v2::DecryptRequest {
        ciphertext: vec![1; 40],
        uid: "u".into(),
        key_id: "good/k1".into(),
        annotations: HashMap::new(),
    };
    // A well-formed but wrong ciphertext reaches the good provider and is
    // judged by it: the daemon and the other provider are alive.
    let status = client.decrypt(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert_eq!(
        client
            .status(v2::StatusRequest {})
            .await
            .unwrap()
            .into_inner()
            .healthz,
        "ok"
    );
}

#[tokio::test]
async fn trapping_provider_is_contained() {
    let gateway = gateway_with(
        "trapping",
        ProviderSpec::new("trapping", "fixture_trapping"),
    )
    .await;
    let mut client = gateway.v2().await;
    for _ in 0..3 {
        let status = client.encrypt(encrypt(b"dek")).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal);
        assert!(status.message().contains("trapped"), "{}", status.message());
    }
    let request = v2::DecryptRequest {
        ciphertext: vec![1],
        uid: "u".into(),
        key_id: "trapping/t1".into(),
        annotations: HashMap::new(),
    };
    assert_eq!(
        client.decrypt(request).await.unwrap_err().code(),
        Code::Internal
    );
    assert_good_provider_still_serves(&mut client).await;
}

#[tokio::test]
async fn oversized_ciphertext_and_bad_annotation_are_refused_at_the_gateway() {
    let gateway = gateway_with(
        "oversized",
        ProviderSpec::new("oversized", "fixture_oversized"),
    )
    .await;
    let mut client = gateway.v2().await;
    let status = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("2000 bytes"),
        "{}",
        status.message()
    );
    let status = client.encrypt(encrypt(b"annotate")).await.unwrap_err();
    assert!(
        status.message().contains("Not_A/DNS-name"),
        "{}",
        status.message()
    );
    assert_good_provider_still_serves(&mut client).await;
}

#[test]
fn every_fixture_is_used() {
    let root = workspace_root();
    let sources: String = std::fs::read_dir(root.join("tests/integration/tests"))
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    for entry in std::fs::read_dir(root.join("tests/fixtures")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let component = format!("\"fixture_{}\"", name.replace('-', "_"));
        assert!(
            sources.contains(&component),
            "fixture {name} is not used by any test ({component})"
        );
    }
}
