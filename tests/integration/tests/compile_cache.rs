//! The on-disk compile cache (`compile_cache_dir`): a restart loads the
//! compiled component instead of compiling again, a damaged file is
//! replaced, and a directory others can write to is not trusted.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kmsgate_integration::requests::{decrypt, encrypt};
use kmsgate_integration::{ProviderSpec, TestGateway};

fn gateway(cache: &Path) -> TestGateway {
    TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .compile_cache_dir(cache)
}

/// Starts the daemon, checks a round trip, stops it.
async fn serve_once(cache: &Path) {
    let running = gateway(cache).start().await;
    let mut client = running.v2().await;
    let sealed = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();
    let opened = client.decrypt(decrypt(&sealed)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"dek");
    running.stop().await.unwrap();
}

fn compiled_files(cache: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(cache) {
        Ok(entries) => entries.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn a_restart_loads_the_compiled_component_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    serve_once(&cache).await;

    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let files = compiled_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].to_string_lossy().ends_with(".cwasm"));
    let before = std::fs::metadata(&files[0]).unwrap();
    assert_eq!(before.permissions().mode() & 0o777, 0o600);

    // A recompile would write the file anew (a new inode, by rename).
    serve_once(&cache).await;
    let after = std::fs::metadata(&files[0]).unwrap();
    assert_eq!(
        (after.ino(), after.mtime_nsec()),
        (before.ino(), before.mtime_nsec())
    );
}

#[tokio::test]
async fn a_damaged_compiled_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    serve_once(&cache).await;
    let file = compiled_files(&cache).remove(0);
    std::fs::write(&file, b"not machine code").unwrap();

    serve_once(&cache).await;
    assert!(std::fs::metadata(&file).unwrap().len() > 1000);
}

#[tokio::test]
async fn a_directory_others_can_write_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();

    serve_once(&cache).await;
    assert_eq!(compiled_files(&cache), Vec::<PathBuf>::new());
}

/// `cache`'s one compiled file, its name split at the component digest.
fn only_file(cache: &Path) -> (PathBuf, String) {
    let file = compiled_files(cache).remove(0);
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let (_, engine) = name.split_once('-').unwrap();
    (file, engine.to_string())
}

#[tokio::test]
async fn a_compiled_file_of_another_component_is_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    serve_once(&cache).await;
    let (local_aes_file, engine) = only_file(&cache);

    // Someone puts local-aes's compiled code where the `trapping` fixture's
    // would be.
    let trapping = kmsgate_integration::component("fixture_trapping");
    let digest = kmsgate_wasm::integrity::sha256_hex(&std::fs::read(&trapping).unwrap());
    let planted = cache.join(format!("{digest}-{engine}"));
    std::fs::copy(&local_aes_file, &planted).unwrap();

    let running = TestGateway::new()
        .with_provider(ProviderSpec::hostile("trapping", "fixture_trapping"))
        .compile_cache_dir(&cache)
        .start()
        .await;
    let mut client = running.v2().await;
    // The fixture's own code serves (local-aes would answer "k1").
    let status = kmsgate_integration::requests::status(&mut client).await;
    assert_eq!(status.key_id, "trapping/t1");
    running.stop().await.unwrap();
    assert_ne!(
        std::fs::read(&planted).unwrap(),
        std::fs::read(&local_aes_file).unwrap(),
        "the planted file was replaced by a fresh compile"
    );
}

#[tokio::test]
async fn a_cache_below_a_directory_others_can_write_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let cache = open.join("cache");

    serve_once(&cache).await;
    assert_eq!(compiled_files(&cache), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn trust_is_checked_again_at_every_use() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let component = dir.path().join("provider.wasm");
    std::fs::write(
        &component,
        kmsgate_integration::component_version("local_aes", 1),
    )
    .unwrap();
    let running = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1).component_path(&component))
        .compile_cache_dir(&cache)
        .start()
        .await;
    kmsgate_integration::requests::status(&mut running.v2().await).await;
    assert_eq!(compiled_files(&cache).len(), 1);

    // The directory turns writable for everyone while the daemon runs: a
    // reload that compiles must not use it.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    kmsgate_integration::write_atomically(
        &component,
        &kmsgate_integration::component_version("local_aes", 2),
    );
    let report = running.reload().await;
    assert_eq!(report.swapped, ["local"], "{report:?}");
    assert_eq!(
        compiled_files(&cache).len(),
        1,
        "written to an untrusted directory"
    );
    running.stop().await.unwrap();
}

/// `kmsgate compile` fills the cache a start then loads from, untouched;
/// a component with an import the host never links is refused before
/// anything is compiled.
#[tokio::test]
async fn kmsgate_compile_fills_the_cache_ahead_of_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let compile = |component: &Path| {
        std::process::Command::new(kmsgate_integration::daemon_binary())
            .args(["--log", "error", "compile", "--cache-dir"])
            .arg(&cache)
            .arg(component)
            .output()
            .expect("running kmsgate compile")
    };
    let output = compile(&kmsgate_integration::component("local_aes"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("compiled"),
        "{stdout}"
    );
    let files = compiled_files(&cache);
    assert_eq!(files.len(), 1, "{files:?}");
    let before = std::fs::metadata(&files[0]).unwrap();

    serve_once(&cache).await;
    let after = std::fs::metadata(&files[0]).unwrap();
    assert_eq!(
        (after.ino(), after.mtime_nsec()),
        (before.ino(), before.mtime_nsec()),
        "the start compiled again instead of loading what kmsgate compile wrote"
    );
    // Again: already there.
    let output = compile(&kmsgate_integration::component("local_aes"));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("cached"));
    // A component for a WIT version the host lacks: refused, nothing new.
    let output = compile(&kmsgate_integration::component("fixture_wit_from_future"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success() && stdout.contains("kmsgate:provider@0.9.0"),
        "{stdout}"
    );
    assert_eq!(compiled_files(&cache).len(), 1);
}
