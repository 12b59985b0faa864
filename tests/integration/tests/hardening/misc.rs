//! The smaller promises: input that cannot fit is refused as bad input, no
//! file read can hang the daemon, its own log does not feed the file watch,
//! caller input is escaped in logs, and the admin port answers only its
//! own origin.

use std::time::{Duration, Instant};

use kmsgate_integration::{ProviderSpec, TestGateway, wait_until};
use kmsgate_proto::v1beta1;
use tonic::Code;

use crate::{decrypt, encrypt};

#[tokio::test]
async fn a_plaintext_that_cannot_fit_is_invalid_argument() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .start()
        .await;
    let mut v2 = gateway.v2().await;
    // Over the apiserver's ciphertext limit by itself, or once local-aes
    // adds its nonce and tag.
    for size in [60 << 10, 2048, 1010] {
        let status = v2.encrypt(encrypt(&vec![7; size])).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{size}: {}",
            status.message()
        );
    }
    let mut v1 = gateway.v1beta1().await;
    let request = v1beta1::EncryptRequest {
        version: "v1beta1".into(),
        plain: vec![7; 60 << 10],
    };
    let status = v1.encrypt(request).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    // What fits still works.
    v2.encrypt(encrypt(&[7; 900])).await.unwrap();
}

#[tokio::test]
async fn a_fifo_for_a_settings_file_hangs_neither_a_reload_nor_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.b64");
    std::fs::write(&key, kmsgate_integration::gateway::local_aes_key(1)).unwrap();
    let spec = ProviderSpec::new("local", "local_aes")
        .setting("key-id", "k1")
        .file_setting("key", &key);
    let gateway = TestGateway::new().with_provider(spec).start().await;
    kmsgate_integration::requests::status(&mut gateway.v2().await).await;

    std::fs::remove_file(&key).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let started = Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(15), gateway.reload())
        .await
        .expect("the reload hung on a FIFO");
    assert!(report.error.contains("not a regular file"), "{report:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // The old version keeps serving, and the daemon stops promptly.
    kmsgate_integration::requests::status(&mut gateway.v2().await).await;
    tokio::time::timeout(Duration::from_secs(10), gateway.stop())
        .await
        .expect("the exit hung")
        .unwrap();
}

#[tokio::test]
async fn the_daemons_own_log_in_a_watched_directory_does_not_feed_itself() {
    let daemon = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .watch(true)
        .spawn_process("trace");
    // Its log is `daemon.log` beside `kmsgate.toml`, in the watched
    // directory.
    kmsgate_integration::requests::status(&mut daemon.v2().await).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let size = || std::fs::metadata(&daemon.log_path).unwrap().len();
    let before = size();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown = size() - before;
    assert!(
        grown < 64 << 10,
        "an idle daemon logged {grown} bytes in 2 s"
    );
}

#[tokio::test]
async fn caller_input_is_escaped_in_human_logs() {
    let daemon = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .human_logs()
        .spawn_process("debug");
    let mut client = daemon.v2().await;
    let forged = "\n2026-01-01T00:00:00Z  INFO kmsgate: forged line\u{1b}[31m";
    let mut request = decrypt(&format!("local/k1{forged}"), b"garbage ciphertext");
    request.uid = format!("u1{forged}");
    client.decrypt(request).await.unwrap_err();
    let log = daemon.terminate();
    assert!(
        log.contains("forged line"),
        "the input reached the log: {log}"
    );
    for line in log.lines() {
        assert!(!line.starts_with("2026-01-01"), "a forged line: {line:?}");
        assert!(!line.contains('\u{1b}'), "a raw escape sequence: {line:?}");
    }
}

#[tokio::test]
async fn the_admin_port_answers_only_its_own_origin() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .admin_http()
        .start()
        .await;
    kmsgate_integration::requests::status(&mut gateway.v2().await).await;
    let admin = gateway.admin_url.clone().unwrap();
    let http = reqwest::Client::new();
    wait_until("the admin port", Duration::from_secs(10), || async {
        http.get(format!("{admin}/livez")).send().await.is_ok()
    })
    .await;

    // DNS rebinding: a page from evil.example.com whose name now points at
    // 127.0.0.1.
    let rebound = http
        .get(format!("{admin}/providers"))
        .header("host", "evil.example.com:9474")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    // A cross-site form posting to /reload.
    let cross = http
        .post(format!("{admin}/reload"))
        .header("origin", "http://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    // The operator's own tools still work.
    let own = http.post(format!("{admin}/reload")).send().await.unwrap();
    assert_eq!(own.status(), 200);
    let view = http
        .get(format!("{admin}/providers"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !view.contains("local/k1") && view.contains("key_id_hash"),
        "{view}"
    );
}
