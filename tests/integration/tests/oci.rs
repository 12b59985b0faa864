//! `oci://` components (`crates/wasm/src/oci.rs`) against a real registry
//! (Debian's `docker-registry` with TLS and basic auth), pushed with ORAS:
//! a pinned component pulls and serves; a tampered blob in the registry's
//! storage is a digest mismatch and is refused; a registry down at start
//! leaves the cached copy serving, marked stale; a reference without a
//! digest is refused unless the operator opts out.

use std::path::Path;

use kmsgate_integration::gateway::check;
use kmsgate_integration::registry::{self, Registry};
use kmsgate_integration::{ProviderSpec, TestGateway, component};
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
    let running = gateway(&reference, &access, &cache).start().await;
    let mut client = running.v2().await;
    client.status(v2::StatusRequest {}).await.unwrap();
    let info = running.provider("local").await;
    assert_eq!(info.component, reference);
    assert_eq!(info.stale, "");
    running.stop().await.unwrap();

    // The registry down at start: the cached copy serves, marked stale.
    registry.stop();
    let running = gateway(&reference, &access, &cache).start().await;
    let mut client = running.v2().await;
    client.status(v2::StatusRequest {}).await.unwrap();
    let info = running.provider("local").await;
    assert!(info.stale.contains("could not be reached"), "{info:?}");
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
    let (ok, text) = check(&gateway(
        &reference,
        &registry_table(&registry, &password, true),
        &cache,
    ));
    assert!(ok, "{text}");
}
