//! Hot swap: a new component or config takes over without a restart, every
//! ciphertext keeps decrypting, and a bad version is refused while the old
//! one keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kmsgate_integration::requests::{decrypt, encrypt, status};
use kmsgate_integration::{
    ProviderSpec, RunningGateway, TestGateway, component, component_version, wait_until,
    write_atomically,
};
use tempfile::TempDir;

/// A gateway whose one provider, `local`, runs local-aes from a file the
/// test owns (so it can replace it).
struct SwapSetup {
    gateway: RunningGateway,
    spec: TestGateway,
    component: PathBuf,
    _dir: TempDir,
}

async fn setup(watch: bool) -> SwapSetup {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("local.wasm");
    std::fs::write(&component, component_version("local_aes", 0)).unwrap();
    let spec = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "local-1", 1).component_path(&component))
        .watch(watch);
    let gateway = spec.clone().start().await;
    // Once Status answers, the file watch and the SIGHUP handler are set up.
    assert_eq!(status(&mut gateway.v2().await).await.healthz, "ok");
    SwapSetup {
        gateway,
        spec,
        component,
        _dir: dir,
    }
}

fn sha256_of(path: &Path) -> String {
    kmsgate_wasm::integrity::sha256_hex(&std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_concurrent_load_lose_nothing() {
    const CALLERS: usize = 16;
    const SWAPS: u32 = 50;
    let setup = setup(false).await;
    let client = setup.gateway.v2().await;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));

    let callers: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let mut client = client.clone();
            let (stop, failures) = (stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut sealed_all = Vec::new();
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let plaintext = format!("dek-{caller}-{n}").into_bytes();
                    n += 1;
                    let sealed = match client.encrypt(encrypt(&plaintext)).await {
                        Ok(sealed) => sealed.into_inner(),
                        Err(status) => {
                            eprintln!("encrypt failed: {status}");
                            failures.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    };
                    match client.decrypt(decrypt(&sealed)).await {
                        Ok(opened) if opened.get_ref().plaintext == plaintext => {}
                        other => {
                            eprintln!("decrypt failed: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    sealed_all.push((sealed, plaintext));
                }
                sealed_all
            })
        })
        .collect();

    for version in 1..=SWAPS {
        write_atomically(&setup.component, &component_version("local_aes", version));
        let report = setup.gateway.reload().await;
        assert_eq!(
            report.swapped,
            ["local"],
            "swap {version}: {}",
            report.error
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut sealed_all = Vec::new();
    for caller in callers {
        sealed_all.extend(caller.await.unwrap());
    }

    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed during the swaps"
    );
    let info = setup.gateway.provider("local").await;
    assert_eq!(info.generation, u64::from(SWAPS) + 1);
    assert_eq!(info.sha256, sha256_of(&setup.component));
    // Every ciphertext from before, during and after the swaps decrypts.
    let mut client = client;
    for (sealed, plaintext) in &sealed_all {
        let opened = client
            .decrypt(decrypt(sealed))
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(&opened, plaintext);
    }
    println!(
        "{} round trips by {CALLERS} callers across {SWAPS} swaps, none failed",
        sealed_all.len()
    );
    assert!(
        sealed_all.len() > CALLERS * 10,
        "the load was too light to prove anything"
    );
}

#[tokio::test]
async fn bad_replacements_are_refused_and_the_old_version_keeps_serving() {
    let setup = setup(false).await;
    let mut client = setup.gateway.v2().await;
    let before = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();
    let serving = setup.gateway.provider("local").await;

    let read = |name: &str| std::fs::read(component(name)).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage bytes",
            b"this is not wasm".to_vec(),
            "not a valid component",
        ),
        (
            "another WIT world",
            read("fixture_wrong_world"),
            "does not fit the kmsgate:provider world",
        ),
        (
            "cannot decrypt earlier ciphertexts",
            read("fixture_forgetful"),
            "canary: cannot decrypt a recent ciphertext",
        ),
        ("traps", read("fixture_trapping"), "canary"),
        (
            "returns oversize ciphertexts",
            read("fixture_oversized"),
            "canary",
        ),
    ];
    for (what, bytes, reason) in cases {
        write_atomically(&setup.component, &bytes);
        let report = setup.gateway.reload().await;
        assert_eq!(report.refused, ["local"], "{what}");
        assert!(report.error.contains(reason), "{what}: {}", report.error);

        // The reason is visible to the operator, and nothing changed.
        let info = setup.gateway.provider("local").await;
        assert!(
            info.last_reload_error.contains(reason),
            "{what}: {}",
            info.last_reload_error
        );
        assert_eq!(
            (info.sha256.as_str(), info.generation),
            (serving.sha256.as_str(), serving.generation)
        );
        let opened = client
            .decrypt(decrypt(&before))
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(opened, b"dek", "{what}");
        assert_eq!(status(&mut client).await.healthz, "ok");
    }

    // A good version clears the error.
    write_atomically(&setup.component, &component_version("local_aes", 7));
    assert_eq!(setup.gateway.reload().await.swapped, ["local"]);
    assert_eq!(setup.gateway.provider("local").await.last_reload_error, "");
}

#[tokio::test]
async fn a_pinned_sha256_refuses_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.wasm");
    std::fs::write(&path, component_version("local_aes", 0)).unwrap();
    let pin = sha256_of(&path);
    let spec = TestGateway::new().with_provider(
        ProviderSpec::local_aes("local", "local-1", 1)
            .component_path(&path)
            .sha256(&pin),
    );
    let gateway = spec.start().await;
    let mut client = gateway.v2().await;
    assert_eq!(status(&mut client).await.healthz, "ok");

    write_atomically(&path, &component_version("local_aes", 1));
    let report = gateway.reload().await;
    assert!(report.error.contains("pins"), "{report:?}");
    assert_eq!(gateway.provider("local").await.sha256, pin);
    client.encrypt(encrypt(b"dek")).await.unwrap();
}

#[tokio::test]
async fn key_rotation_by_config_keeps_old_ciphertexts() {
    let setup = setup(false).await;
    let mut client = setup.gateway.v2().await;
    let old = client
        .encrypt(encrypt(b"old-dek"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.key_id, "local/local-1");

    // Rotating without keeping the old key would strand `old`: refused.
    let dropped = ProviderSpec::local_aes("local", "local-2", 2).component_path(&setup.component);
    setup
        .gateway
        .rewrite_config(&TestGateway::new().with_provider(dropped.clone()));
    let report = setup.gateway.reload().await;
    assert!(
        report.error.contains("cannot decrypt a recent ciphertext"),
        "{}",
        report.error
    );
    assert_eq!(status(&mut client).await.key_id, "local/local-1");

    // Keeping it as a retired key is a proper rotation.
    let old_key = kmsgate_integration::gateway::local_aes_key(1);
    let rotated = dropped.setting("retired-key.local-1", &old_key);
    setup
        .gateway
        .rewrite_config(&TestGateway::new().with_provider(rotated));
    assert_eq!(setup.gateway.reload().await.swapped, ["local"]);
    assert_eq!(status(&mut client).await.key_id, "local/local-2");
    let new = client
        .encrypt(encrypt(b"new-dek"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(new.key_id, "local/local-2");
    for (sealed, plaintext) in [(&old, &b"old-dek"[..]), (&new, &b"new-dek"[..])] {
        assert_eq!(
            client
                .decrypt(decrypt(sealed))
                .await
                .unwrap()
                .into_inner()
                .plaintext,
            plaintext
        );
    }
}

#[tokio::test]
async fn every_provider_counts_generations_from_one() {
    let setup = setup(false).await;
    assert_eq!(setup.gateway.provider("local").await.generation, 1);
    // A provider a reload adds is built as one at start is.
    let added = ProviderSpec::local_aes("second", "k2", 2);
    setup
        .gateway
        .rewrite_config(&setup.spec.clone().with_provider(added).primary("local"));
    let report = setup.gateway.reload().await;
    assert_eq!(report.swapped, ["second"], "{report:?}");
    assert_eq!(setup.gateway.provider("second").await.generation, 1);
    assert_eq!(setup.gateway.provider("local").await.generation, 1);
}

#[tokio::test]
async fn reloads_that_would_strand_data_or_move_the_socket_are_refused() {
    let setup = setup(false).await;
    let mut client = setup.gateway.v2().await;
    client.encrypt(encrypt(b"dek")).await.unwrap();
    // Add a provider: fine, and it serves decrypts at once.
    let two = setup
        .spec
        .clone()
        .with_provider(ProviderSpec::local_aes("second", "s1", 3))
        .primary("local");
    setup.gateway.rewrite_config(&two);
    let report = setup.gateway.reload().await;
    assert_eq!(report.swapped, ["second"], "{report:?}");
    // Make it primary: Encrypt moves over; the first still decrypts.
    setup.gateway.rewrite_config(&two.clone().primary("second"));
    setup.gateway.reload().await;
    assert_eq!(status(&mut client).await.key_id, "second/s1");
    // Remove the first: refused, it would strand its ciphertexts.
    let only_second = TestGateway::new().with_provider(ProviderSpec::local_aes("second", "s1", 3));
    setup.gateway.rewrite_config(&only_second);
    let report = setup.gateway.reload().await;
    assert!(
        report.error.contains("provider local was removed"),
        "{}",
        report.error
    );
    assert!(setup.gateway.provider("local").await.name == "local");
}

#[tokio::test]
async fn file_changes_reload_by_atomic_rename_and_in_place_write() {
    let setup = setup(true).await;
    let mut client = setup.gateway.v2().await;
    let admin_generation = || async { setup.gateway.provider("local").await.generation };

    write_atomically(&setup.component, &component_version("local_aes", 1));
    let took = wait_until(
        "a reload after an atomic rename",
        Duration::from_secs(10),
        || async { admin_generation().await == 2 },
    )
    .await;
    println!("atomic rename → serving in {took:?}");

    // In place: truncate and write in two pieces, as `cp` over a file does.
    let bytes = component_version("local_aes", 2);
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&setup.component).unwrap();
        file.write_all(&bytes[..bytes.len() / 2]).unwrap();
        file.flush().unwrap();
        file.write_all(&bytes[bytes.len() / 2..]).unwrap();
    }
    wait_until(
        "a reload after an in-place write",
        Duration::from_secs(10),
        || async { setup.gateway.provider("local").await.sha256 == sha256_of(&setup.component) },
    )
    .await;
    client.encrypt(encrypt(b"dek")).await.unwrap();

    // Editing the config file reloads too.
    let rotated = ProviderSpec::local_aes("local", "local-2", 2)
        .component_path(&setup.component)
        .setting(
            "retired-key.local-1",
            &kmsgate_integration::gateway::local_aes_key(1),
        );
    setup
        .gateway
        .rewrite_config(&TestGateway::new().with_provider(rotated).watch(true));
    wait_until(
        "a reload after a config edit",
        Duration::from_secs(10),
        || async { status(&mut client.clone()).await.key_id == "local/local-2" },
    )
    .await;
}

#[tokio::test]
async fn a_provider_that_batches_decrypts_wrongly_is_refused() {
    let local = || ProviderSpec::local_aes("local", "k1", 1);
    let gateway = TestGateway::new().with_provider(local()).start().await;
    let next = TestGateway::new()
        .with_provider(local())
        .with_provider(ProviderSpec::new("batchy", "fixture_wrong_batch"))
        .primary("local");
    gateway.rewrite_config(&next);
    let report = gateway.reload().await;
    assert_eq!(report.refused, ["batchy"]);
    assert!(
        report.error.contains("canary: decrypt-batch"),
        "{}",
        report.error
    );
}
