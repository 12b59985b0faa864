//! Signed components (`crates/wasm/src/signature.rs`): keys and signatures
//! made by `openssl`, as an operator would make them (ECDSA P-256 in
//! cosign's format, Ed25519), never by kmsgate. The matrix: a good
//! signature of each kind serves and `kmsgate providers` names its key; a
//! wrong key, a changed component, a truncated signature, another
//! component's signature and a missing one are refused at start, on a
//! reload (the old version keeps serving, the reason shown) and by `kmsgate
//! check`; a key dropped from the trust list on a reload is refused the
//! same way; a rotation (two keys trusted, then only the new) swaps
//! cleanly; a compile cache filled with an unsigned component is no way
//! around the check.

use std::path::{Path, PathBuf};
use std::process::Command;

use kmsgate_integration::gateway::check;
use kmsgate_integration::signing::{Key, Kind};
use kmsgate_integration::{ProviderSpec, TestGateway, component, daemon_binary};
use kmsgate_proto::v2;
use toml::Value;

/// Copies the built local-aes component to `dir/NAME.wasm`, optionally
/// made different (a custom section appended).
fn component_copy(dir: &Path, name: &str, version: Option<u32>) -> PathBuf {
    let path = dir.join(format!("{name}.wasm"));
    let bytes = match version {
        Some(version) => kmsgate_integration::component_version("local_aes", version),
        None => std::fs::read(component("local_aes")).unwrap(),
    };
    std::fs::write(&path, bytes).unwrap();
    path
}

fn signature_of(component: &Path) -> PathBuf {
    PathBuf::from(format!("{}.sig", component.display()))
}

/// A daemon config with one local-aes provider running `component`,
/// trusting `keys`, a signature required unless `required` is false.
fn gateway(component: &Path, keys: &[&Key], required: bool) -> TestGateway {
    TestGateway::new()
        .top_value(
            "trusted_keys",
            Value::Array(keys.iter().map(|k| k.trusted()).collect()),
        )
        .top_value("require_signature", Value::Boolean(required))
        .with_provider(ProviderSpec::local_aes("local", "k1", 1).component_path(component))
}

/// Why the daemon refused to start with `gateway`.
async fn start_error(gateway: TestGateway) -> String {
    gateway.start().await.exit().await.unwrap_err().to_string()
}

#[tokio::test]
async fn good_signatures_of_either_kind_serve_and_name_their_key() {
    let dir = tempfile::tempdir().unwrap();
    for kind in [Kind::Ecdsa, Kind::Ed25519] {
        let key = Key::new(dir.path(), &format!("release-{}", kind as u8), kind);
        let wasm = component_copy(dir.path(), &format!("signed-{}", kind as u8), None);
        key.sign(&wasm, &signature_of(&wasm));
        let config = gateway(&wasm, &[&key], true);
        assert!(check(&config).0, "check passes a good signature");
        let running = config.start().await;
        let mut client = running.v2().await;
        client.status(v2::StatusRequest {}).await.unwrap();
        let info = running.provider("local").await;
        assert!(
            info.signed_by.starts_with(&key.name),
            "signed_by {:?}",
            info.signed_by
        );
        running.stop().await.unwrap();
    }
}

/// Spoils the component or its signature, one way.
type Case<'a> = Box<dyn Fn() + 'a>;

#[tokio::test]
async fn every_bad_signature_is_refused_at_start_and_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = Key::new(dir.path(), "trusted", Kind::Ecdsa);
    let other = Key::new(dir.path(), "other", Kind::Ed25519);
    let wasm = component_copy(dir.path(), "c", None);
    let elsewhere = component_copy(dir.path(), "another", Some(7));
    let sig = signature_of(&wasm);

    let cases: Vec<(&str, Case<'_>)> = vec![
        ("wrong key", Box::new(|| other.sign(&wasm, &sig))),
        (
            "tampered component",
            Box::new(|| {
                trusted.sign(&wasm, &sig);
                let mut bytes = std::fs::read(&wasm).unwrap();
                bytes.extend_from_slice(&[0, 3, 2, b'x', b'y']); // one more custom section
                std::fs::write(&wasm, bytes).unwrap();
            }),
        ),
        (
            "truncated signature",
            Box::new(|| {
                trusted.sign(&wasm, &sig);
                let text = std::fs::read(&sig).unwrap();
                std::fs::write(&sig, &text[..text.len() - 8]).unwrap();
            }),
        ),
        (
            "another component's signature",
            Box::new(|| trusted.sign(&elsewhere, &sig)),
        ),
        (
            "no signature",
            Box::new(|| {
                let _ = std::fs::remove_file(&sig);
            }),
        ),
        // The bounds on reading it: not a whole file of junk, and a FIFO
        // (which would block a plain read forever) is no regular file.
        (
            "oversized signature",
            Box::new(|| std::fs::write(&sig, "A".repeat(64 << 10)).unwrap()),
        ),
        (
            "a fifo for a signature",
            Box::new(|| {
                let _ = std::fs::remove_file(&sig);
                let made = Command::new("mkfifo").arg(&sig).status().unwrap();
                assert!(made.success());
            }),
        ),
    ];
    for (case, prepare) in cases {
        component_copy(dir.path(), "c", None);
        let _ = std::fs::remove_file(&sig);
        prepare();
        let config = gateway(&wasm, &[&trusted], true);
        let (ok, text) = check(&config);
        assert!(!ok, "{case}: check passed it: {text}");
        let expected = match case {
            "no signature" => "unsigned",
            "oversized signature" => "larger than 4096 bytes",
            "a fifo for a signature" => "not a regular file",
            _ => "not by a trusted key",
        };
        assert!(text.contains(expected), "{case}: {text}");
        let error = start_error(config).await;
        assert!(error.contains(expected), "{case}: {error}");
    }
}

#[tokio::test]
async fn a_reload_refuses_a_bad_signature_and_a_dropped_key_and_the_old_version_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let old_key = Key::new(dir.path(), "release-2025", Kind::Ecdsa);
    let new_key = Key::new(dir.path(), "release-2026", Kind::Ed25519);
    let wasm = component_copy(dir.path(), "c", None);
    old_key.sign(&wasm, &signature_of(&wasm));
    let running = gateway(&wasm, &[&old_key], true).start().await;
    let mut client = running.v2().await;
    let sealed = client
        .encrypt(kmsgate_integration::requests::encrypt(b"dek"))
        .await
        .unwrap()
        .into_inner();

    // A new version signed by a key not (yet) trusted: refused, the old
    // one serves, and the reason is in `kmsgate providers`.
    let next = component_copy(dir.path(), "next", Some(2));
    new_key.sign(&next, &signature_of(&next));
    running.rewrite_config(&gateway(&next, &[&old_key], true));
    let reload = running.reload().await;
    assert!(!reload.error.is_empty(), "{reload:?}");
    let info = running.provider("local").await;
    assert!(
        info.last_reload_error.contains("not by a trusted key"),
        "{info:?}"
    );
    assert!(info.signed_by.starts_with("release-2025"), "{info:?}");
    client
        .decrypt(kmsgate_integration::requests::decrypt(&sealed))
        .await
        .expect("the old version still serves");

    // Rotation: trust both, swap to the new version, then drop the old key.
    running.rewrite_config(&gateway(&next, &[&old_key, &new_key], true));
    let reload = running.reload().await;
    assert!(reload.error.is_empty(), "{reload:?}");
    assert!(
        running
            .provider("local")
            .await
            .signed_by
            .starts_with("release-2026")
    );
    running.rewrite_config(&gateway(&next, &[&new_key], true));
    let reload = running.reload().await;
    assert!(reload.error.is_empty(), "{reload:?}");

    // Dropping the key that signed what serves: the reload is refused for
    // that provider, which keeps serving, the reason shown.
    running.rewrite_config(&gateway(&next, &[&old_key], true));
    let reload = running.reload().await;
    assert!(!reload.error.is_empty(), "{reload:?}");
    let info = running.provider("local").await;
    assert!(
        info.last_reload_error.contains("not by a trusted key")
            && info.last_reload_error.contains("release-2025"),
        "{info:?}"
    );
    client
        .decrypt(kmsgate_integration::requests::decrypt(&sealed))
        .await
        .expect("still serving");
}

#[tokio::test]
async fn a_compile_cache_filled_with_an_unsigned_component_is_no_way_around_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let key = Key::new(dir.path(), "trusted", Kind::Ecdsa);
    let wasm = component_copy(dir.path(), "c", Some(9));
    // Compiled ahead, as `kmsgate compile` does, but never signed.
    let output = Command::new(daemon_binary())
        .args(["--log", "error", "compile", "--cache-dir"])
        .arg(&cache)
        .arg(&wasm)
        .output()
        .unwrap();
    assert!(output.status.success());
    let config = gateway(&wasm, &[&key], true).compile_cache_dir(&cache);
    let error = start_error(config).await;
    assert!(error.contains("unsigned"), "{error}");
    // Signed, the same bytes load (from the cache).
    key.sign(&wasm, &signature_of(&wasm));
    let running = gateway(&wasm, &[&key], true)
        .compile_cache_dir(&cache)
        .start()
        .await;
    running
        .v2()
        .await
        .status(v2::StatusRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn without_a_requirement_an_unsigned_component_serves_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "trusted", Kind::Ecdsa);
    let wasm = component_copy(dir.path(), "c", None);
    let running = gateway(&wasm, &[&key], false).start().await;
    running
        .v2()
        .await
        .status(v2::StatusRequest {})
        .await
        .unwrap();
    assert_eq!(running.provider("local").await.signed_by, "");
}

#[tokio::test]
async fn provider_test_takes_the_trust_list_by_flag_and_refuses_as_a_start_would() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::new(dir.path(), "trusted", Kind::Ed25519);
    let wasm = component_copy(dir.path(), "c", None);
    let key_setting = format!("key={}", kmsgate_integration::gateway::local_aes_key(2));
    let trusted = format!("trusted={}", key.public.display());
    let provider_test = || {
        let output = Command::new(daemon_binary())
            .args(["--log", "error", "provider", "test", "--latency-calls", "2"])
            .arg(&wasm)
            .args(["--setting", "key-id=k1", "--setting", &key_setting])
            .args(["--trusted-key", &trusted, "--require-signature"])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, report) = provider_test();
    assert!(
        !ok && report.contains("FAIL  start") && report.contains("unsigned"),
        "{report}"
    );
    key.sign(&wasm, &signature_of(&wasm));
    let (ok, report) = provider_test();
    assert!(ok, "{report}");
}
