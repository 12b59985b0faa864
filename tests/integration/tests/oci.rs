//! `oci://` components (`crates/wasm/src/oci.rs`) against a real registry
//! (Debian's `docker-registry` with TLS and basic auth), pushed with ORAS:
//! a pinned component pulls and serves; a tampered blob in the registry's
//! storage is a digest mismatch and is refused; a registry down at start
//! leaves the cached copy serving, marked stale; a reference without a
//! digest is refused unless the operator opts out, and then a moved tag is
//! pulled only on a reload; signatures stored in
//! the registry as `cosign sign --key` stores them (made here with
//! `openssl`) are found and checked, and a wrong one is refused; a registry
//! that sends more than the manifest says is cut off.

use std::path::Path;

use kmsgate_integration::gateway::check;
use kmsgate_integration::registry::{self, Registry};
use kmsgate_integration::signing::{Key, Kind, cosign_payload};
use kmsgate_integration::{ProviderSpec, TestGateway, component};
use kmsgate_proto::admin::ProviderInfo;
use kmsgate_proto::v2;
use toml::Value;

fn registry_table(registry: &Registry, password_file: &Path, unpinned: bool) -> Value {
    let mut table = toml::Table::new();
    table.insert("username".into(), registry::USERNAME.into());
    table.insert(
        "password".into(),
        kmsgate_integration::vault_auth::file_source(password_file),
    );
    table.insert("ca_file".into(), registry.ca.display().to_string().into());
    table.insert("allow_unpinned".into(), unpinned.into());
    Value::Table(table)
}

fn gateway(reference: &str, registry: &Value, cache: &Path) -> TestGateway {
    TestGateway::new().compile_cache_dir(cache).with_provider(
        ProviderSpec::local_aes("local", "k1", 1)
            .component_reference(reference)
            .field("registry", registry.clone()),
    )
}

/// Starts `gateway`, checks that it answers Status, and returns the view
/// of its provider `local`.
async fn serves(gateway: TestGateway) -> ProviderInfo {
    let running = gateway.start().await;
    running
        .v2()
        .await
        .status(v2::StatusRequest {})
        .await
        .unwrap();
    let info = running.provider("local").await;
    running.stop().await.unwrap();
    info
}

#[tokio::test]
async fn a_pinned_component_pulls_serves_survives_a_registry_outage_and_refuses_a_mismatch() {
    let mut registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("registry-password");
    std::fs::write(&password, registry::PASSWORD).unwrap();
    let access = registry_table(&registry, &password, false);
    let digest = registry.push("providers/local-aes", "v1", &component("local_aes"));
    let reference = format!("oci://{}/providers/local-aes:v1@{digest}", registry.address);
    let cache = dir.path().join("cache");

    // Pulled, checked and served; the view names the reference.
    let info = serves(gateway(&reference, &access, &cache)).await;
    assert_eq!(info.component, reference);
    assert_eq!(info.stale, "");

    // The registry down at start: the cached copy serves, marked stale in
    // the view and in the metrics.
    registry.stop();
    let running = gateway(&reference, &access, &cache)
        .admin_http()
        .start()
        .await;
    let mut client = running.v2().await;
    client.status(v2::StatusRequest {}).await.unwrap();
    let info = running.provider("local").await;
    assert!(info.stale.contains("could not be reached"), "{info:?}");
    let metrics = running.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"kmsgate_provider_stale{provider="local"} 1"#),
        "{metrics}"
    );
    running.stop().await.unwrap();
    // Without a cached copy there is nothing to serve.
    let (ok, text) = check(&gateway(&reference, &access, &dir.path().join("empty")));
    assert!(!ok && text.contains("no copy was pulled before"), "{text}");
    registry.start_again().await;

    // A blob changed in the registry's storage: the digest does not match,
    // refused (with a cache that does not hold the good copy already).
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.blob_file(&digest)).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let blob = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let (ok, text) = check(&gateway(&reference, &access, &dir.path().join("fresh")));
    assert!(!ok && text.contains("digest mismatch"), "{text}");

    // A cache directory others may write to is not used: what it holds
    // would be run.
    let loose = dir.path().join("loose");
    std::fs::create_dir_all(loose.join("oci")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(loose.join("oci"), std::fs::Permissions::from_mode(0o777)).unwrap();
    let running = gateway(&reference, &access, &loose).start().await;
    let mut client = running.v2().await;
    let refused = client
        .decrypt(v2::DecryptRequest {
            uid: "oci".into(),
            key_id: "local/k1".into(),
            ciphertext: b"x".to_vec(),
            annotations: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("cannot hold pulled components"),
        "{}",
        refused.message()
    );
    running.stop().await.unwrap();

    // Wrong credentials: refused, saying so.
    std::fs::write(&password, "wrong").unwrap();
    let (ok, text) = check(&gateway(&reference, &access, &dir.path().join("other")));
    assert!(!ok, "{text}");
}

#[tokio::test]
async fn a_reference_without_a_digest_is_refused_unless_the_operator_opts_out() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("registry-password");
    std::fs::write(&password, registry::PASSWORD).unwrap();
    registry.push("providers/local-aes", "latest", &component("local_aes"));
    let reference = format!("oci://{}/providers/local-aes:latest", registry.address);
    let cache = dir.path().join("cache");
    let (ok, text) = check(&gateway(
        &reference,
        &registry_table(&registry, &password, false),
        &cache,
    ));
    assert!(!ok && text.contains("@sha256"), "{text}");
    let unpinned = registry_table(&registry, &password, true);
    let (ok, text) = check(&gateway(&reference, &unpinned, &cache));
    assert!(ok, "{text}");

    // The tag moves; nothing pulls it until the operator asks.
    let running = gateway(&reference, &unpinned, &cache)
        .status_interval_ms(200)
        .reload_debounce_ms(50)
        .start()
        .await;
    let before = running.provider("local").await.sha256;
    let newer = dir.path().join("newer.wasm");
    std::fs::write(
        &newer,
        kmsgate_integration::component_version("local_aes", 2),
    )
    .unwrap();
    registry.push("providers/local-aes", "latest", &newer);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(running.provider("local").await.sha256, before);
    running.reload().await;
    let after = running.provider("local").await.sha256;
    assert_eq!(
        after,
        kmsgate_wasm::integrity::sha256_hex(&std::fs::read(&newer).unwrap())
    );
    running.stop().await.unwrap();
}

/// `gateway`, trusting `keys` and requiring a signature.
fn signed_gateway(reference: &str, registry: &Value, cache: &Path, keys: &[&Key]) -> TestGateway {
    gateway(reference, registry, cache)
        .top_value(
            "trusted_keys",
            Value::Array(keys.iter().map(|k| k.trusted()).collect()),
        )
        .top_value("require_signature", Value::Boolean(true))
}

#[tokio::test]
async fn signatures_beside_the_artifact_are_checked_and_kept_with_the_cached_copy() {
    let mut registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("registry-password");
    std::fs::write(&password, registry::PASSWORD).unwrap();
    let access = registry_table(&registry, &password, false);
    let release = Key::new(dir.path(), "release", Kind::Ecdsa);
    let stranger = Key::new(dir.path(), "stranger", Kind::Ecdsa);
    let repository = "providers/signed";
    let digest = registry.push(repository, "v1", &component("local_aes"));
    let reference = format!("oci://{}/{repository}:v1@{digest}", registry.address);
    let cache = dir.path().join("cache");
    let payload_for = |name: &str, digest: &str| {
        cosign_payload(
            &dir.path().join(format!("{name}.json")),
            &format!("{}/{repository}", registry.address),
            digest,
        )
    };

    // Not signed yet, and a signature is required: refused, naming where
    // the signature was looked for.
    let (ok, text) = check(&signed_gateway(&reference, &access, &cache, &[&release]));
    assert!(
        !ok && text.contains("unsigned") && text.contains(".sig"),
        "{text}"
    );

    // Signed by a key nobody trusts: refused.
    let payload = payload_for("payload", &digest);
    registry.push_cosign_signature(
        repository,
        &digest,
        &payload,
        &stranger.sign_base64(&payload),
    );
    let (ok, text) = check(&signed_gateway(&reference, &access, &cache, &[&release]));
    assert!(!ok && text.contains("trusted: release"), "{text}");

    // Signed by the trusted key, but over another artifact's manifest
    // (moved here from elsewhere): refused.
    let other = registry.push("providers/other", "v1", &component("fixture_trapping"));
    let elsewhere = payload_for("elsewhere", &other);
    registry.push_cosign_signature(
        repository,
        &digest,
        &elsewhere,
        &release.sign_base64(&elsewhere),
    );
    let (ok, text) = check(&signed_gateway(&reference, &access, &cache, &[&release]));
    assert!(!ok && text.contains("name another artifact"), "{text}");

    // The trusted key's signature of this manifest: `check` and the view
    // name the key, and it serves.
    registry.push_cosign_signature(
        repository,
        &digest,
        &payload,
        &release.sign_base64(&payload),
    );
    let (ok, text) = check(&signed_gateway(&reference, &access, &cache, &[&release]));
    assert!(ok && text.contains("signed by release"), "{text}");
    let info = serves(signed_gateway(&reference, &access, &cache, &[&release])).await;
    assert!(info.signed_by.starts_with("release"), "{info:?}");

    // The registry down: the cached copy serves, checked against the
    // signatures pulled with it.
    registry.stop();
    let info = serves(signed_gateway(&reference, &access, &cache, &[&release])).await;
    assert!(
        info.signed_by.starts_with("release") && info.stale.contains("could not be reached"),
        "{info:?}"
    );
    // ... and a trust list without that key refuses the cached copy too
    // (a start: `kmsgate check` pulls into a directory of its own).
    let refused = signed_gateway(&reference, &access, &cache, &[&stranger])
        .start()
        .await
        .exit()
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("trusted: stranger"), "{refused}");
    registry.start_again().await;

    // A local signature file, where the config names one, is used instead.
    let local = dir.path().join("local.sig");
    let component_copy = dir.path().join("local_aes.wasm");
    std::fs::copy(component("local_aes"), &component_copy).unwrap();
    stranger.sign(&component_copy, &local);
    let with_file = TestGateway::new()
        .compile_cache_dir(&cache)
        .top_value("trusted_keys", Value::Array(vec![stranger.trusted()]))
        .top_value("require_signature", Value::Boolean(true))
        .with_provider(
            ProviderSpec::local_aes("local", "k1", 1)
                .component_reference(&reference)
                .field("registry", access.clone())
                .field("signature", local.display().to_string().into()),
        );
    let (ok, text) = check(&with_file);
    assert!(ok, "{text}");
}

#[tokio::test]
async fn a_registry_that_sends_more_than_the_manifest_says_is_cut_off() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("registry-password");
    std::fs::write(&password, registry::PASSWORD).unwrap();
    let access = registry_table(&registry, &password, false);
    let digest = registry.push("providers/long", "v1", &component("local_aes"));
    let reference = format!("oci://{}/providers/long:v1@{digest}", registry.address);
    // The component's blob in the registry's storage grows by 8 MiB; the
    // manifest still gives its old size.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(registry.blob_file(&digest)).unwrap()).unwrap();
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let blob = registry.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 8 << 20));
    std::fs::write(&blob, bytes).unwrap();
    let (ok, text) = check(&gateway(&reference, &access, &dir.path().join("cache")));
    assert!(
        !ok && text.contains("more than the") && text.contains("bytes the manifest gives"),
        "{text}"
    );
}

#[tokio::test]
async fn too_many_or_too_large_signatures_are_refused_unread() {
    let registry = Registry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("registry-password");
    std::fs::write(&password, registry::PASSWORD).unwrap();
    let access = registry_table(&registry, &password, false);
    let digest = registry.push("providers/noisy", "v1", &component("local_aes"));
    let reference = format!("oci://{}/providers/noisy:v1@{digest}", registry.address);
    let tag = format!("providers/noisy:{}.sig", digest.replace(':', "-"));
    let push_signatures = |payloads: &[std::path::PathBuf]| {
        let layers: Vec<_> = payloads
            .iter()
            .map(|payload| {
                (
                    payload.as_path(),
                    "application/vnd.dev.cosign.simplesigning.v1+json",
                    serde_json::json!({"dev.cosignproject.cosign/signature": "MEUCIQ=="}),
                )
            })
            .collect();
        registry.push_artifact(
            &tag,
            &layers,
            "application/vnd.oci.image.config.v1+json",
            serde_json::json!({}),
        );
    };

    // 17 signatures, one more than are read.
    let many: Vec<_> = (0..17)
        .map(|i| {
            let path = dir.path().join(format!("payload-{i}.json"));
            std::fs::write(&path, format!("{{\"n\":{i}}}")).unwrap();
            path
        })
        .collect();
    push_signatures(&many);
    let (ok, text) = check(&gateway(&reference, &access, &dir.path().join("a")));
    assert!(!ok && text.contains("17 signatures"), "{text}");

    // One payload of 20 KiB, more than a signed document needs.
    let large = dir.path().join("large.json");
    std::fs::write(&large, vec![b' '; 20 << 10]).unwrap();
    push_signatures(std::slice::from_ref(&large));
    let (ok, text) = check(&gateway(&reference, &access, &dir.path().join("b")));
    assert!(
        !ok && text.contains("a signature payload at") && text.contains("of 20480 bytes"),
        "{text}"
    );
}
