//! Misbehaving provider components are contained: a clear error for the
//! call, and the daemon keeps serving its other providers.
//!
//! Every directory under `tests/fixtures/` must be used here (see
//! `every_fixture_is_used`).

use std::collections::HashMap;

use kmsgate_integration::{ProviderSpec, TestGateway, workspace_root};
use kmsgate_proto::v2;
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

async fn assert_good_provider_still_serves(client: &mut kmsgate_proto::client::V2Client) {
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
        ProviderSpec::hostile("trapping", "fixture_trapping"),
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

/// A trap keeps its message for the operator: the log entry carries what
/// the guest wrote to stderr (a Rust panic message here; a Python traceback
/// or JS exception the same way) and the Wasm backtrace with function
/// names; the caller gets INTERNAL without either.
#[tokio::test]
async fn a_trap_is_logged_with_the_guests_last_output_and_backtrace() {
    let daemon = TestGateway::new()
        .with_provider(ProviderSpec::hostile("trapping", "fixture_trapping"))
        .spawn_process("info");
    let mut client = daemon.v2().await;
    let status = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert!(
        !status.message().contains("always panics"),
        "{}",
        status.message()
    );
    drop(client);
    let log = daemon.terminate();
    let entry = log
        .lines()
        .find(|line| line.contains("provider trapped"))
        .unwrap_or_else(|| panic!("no trap entry in:\n{log}"));
    assert!(
        entry.contains("fixture trapping: encrypt always panics"),
        "{entry}"
    );
    assert!(
        entry.contains("backtrace") && entry.contains("encrypt"),
        "{entry}"
    );
}

#[tokio::test]
async fn oversized_ciphertext_and_bad_annotation_are_refused_at_the_gateway() {
    let gateway = gateway_with(
        "oversized",
        ProviderSpec::hostile("oversized", "fixture_oversized"),
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

#[tokio::test]
async fn spinning_provider_hits_its_cpu_budget() {
    let spec = ProviderSpec::hostile("spinning", "fixture_spinning").limit("cpu_ms", 200);
    let gateway = gateway_with("spinning", spec).await;
    let mut client = gateway.v2().await;
    // Two at once on a two-core machine: neither starves the good provider.
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.encrypt(encrypt(b"dek")).await })
        })
        .collect();
    assert_good_provider_still_serves(&mut client).await;
    for spinner in spinners {
        let status = spinner.await.unwrap().unwrap_err();
        assert_eq!(
            status.code(),
            Code::DeadlineExceeded,
            "{}",
            status.message()
        );
        // It names the limit hit.
        assert!(
            status.message().contains("limits.cpu_ms"),
            "{}",
            status.message()
        );
    }
    assert_good_provider_still_serves(&mut client).await;
}

#[tokio::test]
async fn greedy_provider_hits_its_memory_cap() {
    let spec = ProviderSpec::hostile("greedy", "fixture_greedy").limit("memory_mib", 16);
    let gateway = gateway_with("greedy", spec).await;
    let mut client = gateway.v2().await;
    let status = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(status.message().contains("16 MiB"), "{}", status.message());
    assert_good_provider_still_serves(&mut client).await;
}

#[tokio::test]
async fn traps_do_not_disturb_concurrent_calls_to_other_providers() {
    let gateway = gateway_with(
        "trapping",
        ProviderSpec::hostile("trapping", "fixture_trapping"),
    )
    .await;
    let client = gateway.v2().await;
    let mut calls = Vec::new();
    for i in 0..40 {
        let mut client = client.clone();
        calls.push(tokio::spawn(async move {
            if i % 2 == 0 {
                client.encrypt(encrypt(b"dek")).await.unwrap_err().code()
            } else {
                let mut client = client;
                assert_good_provider_still_serves(&mut client).await;
                Code::Ok
            }
        }));
    }
    for (i, call) in calls.into_iter().enumerate() {
        let code = call.await.unwrap();
        assert_eq!(code, if i % 2 == 0 { Code::Internal } else { Code::Ok });
    }
}

#[tokio::test]
async fn escaping_provider_finds_no_files_env_sockets_or_hosts() {
    let gateway = gateway_with(
        "escaping",
        ProviderSpec::hostile("escaping", "fixture_escaping"),
    )
    .await;
    let mut client = gateway.v2().await;
    let status = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("refused: filesystem, environment, arguments, sockets, http"),
        "{}",
        status.message()
    );
    assert_good_provider_still_serves(&mut client).await;
}

#[tokio::test]
async fn huge_output_is_refused_at_the_gateway() {
    let gateway = gateway_with(
        "huge-output",
        ProviderSpec::hostile("huge-output", "fixture_huge_output"),
    )
    .await;
    let mut client = gateway.v2().await;
    let status = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status.message().contains("33554432 bytes"),
        "{}",
        status.message()
    );
    let request = v2::DecryptRequest {
        ciphertext: vec![1],
        uid: "u".into(),
        key_id: "huge-output/h1".into(),
        annotations: HashMap::new(),
    };
    let status = client.decrypt(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(
        status
            .message()
            .contains("decrypt returned a plaintext is 33554432 bytes"),
        "{}",
        status.message()
    );
    assert_good_provider_still_serves(&mut client).await;
}

/// Why the daemon refused to start with `spec` beside a good provider.
async fn start_error(spec: ProviderSpec) -> String {
    gateway_with("good", spec)
        .await
        .exit()
        .await
        .unwrap_err()
        .to_string()
}

#[tokio::test]
async fn a_component_of_another_world_is_refused_at_load() {
    let error = start_error(ProviderSpec::new("wrong-world", "fixture_wrong_world")).await;
    assert!(
        error.contains("does not fit the kmsgate:provider world"),
        "{error}"
    );
    // And it says what would fit.
    assert!(
        error.contains("this host offers kmsgate:provider@0.1.0 to @0.1.1"),
        "{error}"
    );
}

/// The versioning policy of `wit/README.md`: a component built against
/// `kmsgate:provider@0.1.0` as released keeps loading and serving, every
/// export and import, on a host that offers a later 0.1 version.
#[tokio::test]
async fn a_component_built_against_wit_0_1_0_loads_and_works_unchanged() {
    let gateway = gateway_with(
        "old",
        ProviderSpec::new("old", "fixture_wit_0_1_0").setting("key-id", "old-7"),
    )
    .await;
    let mut client = gateway.v2().await;
    let status = kmsgate_integration::requests::status(&mut client).await;
    assert_eq!(
        (status.key_id.as_str(), status.healthz.as_str()),
        ("old/old-7", "ok")
    );
    let sealed = client
        .encrypt(encrypt(b"a dek"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sealed.key_id, "old/old-7");
    let opened = client
        .decrypt(kmsgate_integration::requests::decrypt(&sealed))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(opened.plaintext, b"a dek");
    let garbage = kmsgate_integration::requests::decrypt_raw(b"garbage".to_vec(), "old/old-7");
    let error = client.decrypt(garbage).await.unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
    gateway.stop().await.unwrap();
}

/// A component says what it is (the SDK writes its crate's name and
/// version): `kmsgate providers` and the metrics show it; one that does not
/// say (built without the SDK) shows nothing.
#[tokio::test]
async fn the_components_claimed_name_and_version_are_shown() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("good", "k1", 1))
        .with_provider(ProviderSpec::new("old", "fixture_wit_0_1_0"))
        .primary("good")
        .admin_http()
        .start()
        .await;
    let good = gateway.provider("good").await;
    assert_eq!(
        (
            good.component_name.as_str(),
            good.component_version.as_str()
        ),
        ("local-aes", env!("CARGO_PKG_VERSION"))
    );
    assert!(
        good.component_sdk.starts_with("kmsgate-provider "),
        "{good:?}"
    );
    let old = gateway.provider("old").await;
    assert_eq!(
        (old.component_name.as_str(), old.component_sdk.as_str()),
        ("", "")
    );
    let metrics = gateway.admin_get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("kmsgate_provider_info{")
                && line.contains(r#"component_name="local-aes""#)),
        "{metrics}"
    );
    let view = gateway.admin_get("/providers").await;
    assert!(view.contains(r#""component_name":"local-aes""#), "{view}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_component_built_for_a_newer_wit_is_refused_naming_both_versions() {
    let error = start_error(ProviderSpec::new("future", "fixture_wit_from_future")).await;
    assert!(
        error.contains("kmsgate:provider@0.9.0") && error.contains("@0.1.0 to @0.1.1"),
        "{error}"
    );
}

#[test]
fn every_fixture_is_used() {
    fn read_sources(dir: &std::path::Path, into: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                read_sources(&path, into);
            } else {
                into.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = workspace_root();
    let mut sources = String::new();
    read_sources(&root.join("tests/integration/tests"), &mut sources);
    for entry in std::fs::read_dir(root.join("tests/fixtures")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let component = format!("\"fixture_{}\"", name.replace('-', "_"));
        assert!(
            sources.contains(&component),
            "fixture {name} is not used by any test ({component})"
        );
    }
}

#[tokio::test]
async fn a_provider_that_batches_decrypts_wrongly_is_refused_at_start() {
    let error = start_error(ProviderSpec::new("batchy", "fixture_wrong_batch")).await;
    assert!(error.contains("canary: decrypt-batch"), "{error}");
}

#[tokio::test]
async fn a_provider_that_fails_the_canary_is_refused_at_start_as_on_a_swap() {
    // Passes init and status, but its ciphertexts break the apiserver's
    // limit: `kmsgate check` and a swap refuse it, and so does a start.
    let error = start_error(ProviderSpec::new("big", "fixture_oversized")).await;
    assert!(
        error.contains("big") && error.contains("canary") && error.contains("ciphertext"),
        "{error}"
    );
}
