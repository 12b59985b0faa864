//! Nothing secret reaches the logs: plaintext (DEKs), provider key material
//! and the Vault token are searched for, raw and encoded, in everything the
//! daemon logged at trace level while serving real traffic, failures
//! included.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kmsgate_integration::{OpenBao, ProviderSpec, TestGateway};
use kmsgate_proto::{v1beta1, v2};

/// Every level of kmsgate and its network stack. The compiler's own trace
/// output (cranelift, regalloc, wasmtime's code generation) sees only
/// component code, never request data, and would be megabytes.
const LOG_FILTER: &str = "trace,cranelift_codegen=info,cranelift_frontend=info,regalloc2=info,wasmtime_internal_cranelift=info,wasmtime_environ=info";

#[tokio::test]
async fn no_plaintext_key_or_token_in_trace_logs() {
    let bao = OpenBao::dev().await;
    let local_seed = 0x5a;
    let daemon = TestGateway::new()
        .with_provider(ProviderSpec::vault("vault", &bao, "kube"))
        .with_provider(ProviderSpec::local_aes("local", "k1", local_seed))
        .primary("vault")
        .spawn_process(LOG_FILTER);
    let mut client = daemon.v2().await;

    let dek = b"DEK-MARKER-7f3a9c-never-log-me".to_vec();
    let sealed = client
        .encrypt(v2::EncryptRequest {
            plaintext: dek.clone(),
            uid: "uid-log-test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let decrypt = |ciphertext: Vec<u8>, key_id: &str| v2::DecryptRequest {
        ciphertext,
        uid: "uid-log-test".into(),
        key_id: key_id.into(),
        annotations: sealed.annotations.clone(),
    };
    let plaintext = client
        .decrypt(decrypt(sealed.ciphertext.clone(), &sealed.key_id))
        .await
        .unwrap();
    assert_eq!(plaintext.into_inner().plaintext, dek);
    // Failures log too: make some.
    let mut tampered = sealed.ciphertext.clone();
    tampered[12] ^= 1;
    let _ = client
        .decrypt(decrypt(tampered, &sealed.key_id))
        .await
        .unwrap_err();
    let _ = client
        .decrypt(decrypt(
            b"\x01garbage-for-local-provider-000000000".to_vec(),
            "local/k1",
        ))
        .await
        .unwrap_err();
    let _ = client
        .encrypt(v2::EncryptRequest {
            plaintext: vec![],
            uid: "uid-empty".into(),
        })
        .await
        .unwrap_err();

    let mut v1 = kmsgate_proto::client::v1beta1(&daemon.socket)
        .await
        .unwrap();
    let request = v1beta1::EncryptRequest {
        version: "v1beta1".into(),
        plain: dek.clone(),
    };
    let cipher = v1.encrypt(request).await.unwrap().into_inner().cipher;
    let request = v1beta1::DecryptRequest {
        version: "v1beta1".into(),
        cipher,
    };
    assert_eq!(v1.decrypt(request).await.unwrap().into_inner().plain, dek);
    drop(client);
    drop(v1);

    let logs = daemon.terminate();
    if std::env::var_os("KMSGATE_DUMP_LOGS").is_some() {
        std::fs::write("/tmp/kmsgate-logs-test.log", &logs).unwrap();
    }
    // The capture is real: it holds request-scoped lines.
    assert!(
        logs.contains("uid-log-test"),
        "the log should carry request uids"
    );
    assert!(
        logs.lines().count() > 20,
        "expected a trace-level log, got:\n{logs}"
    );

    let local_key = STANDARD.encode([local_seed; 32]);
    let secrets = [
        ("plaintext", String::from_utf8(dek.clone()).unwrap()),
        ("plaintext (base64)", STANDARD.encode(&dek)),
        (
            "plaintext (bytes)",
            format!("{:?}", &dek[..8]).trim_end_matches(']').to_string(),
        ),
        (
            "plaintext (hex)",
            dek.iter().map(|b| format!("{b:02x}")).collect(),
        ),
        ("Vault token", bao.token.clone()),
        ("local-aes key", local_key),
    ];
    for (what, secret) in secrets {
        assert!(
            !logs.contains(&secret),
            "the {what} appears in the daemon's logs"
        );
    }
    // Nor whole ciphertexts (Transit's are printable: `vault:v1:...`).
    let ciphertext = String::from_utf8(sealed.ciphertext.clone()).unwrap();
    assert!(ciphertext.starts_with("vault:v1:"));
    assert!(
        !logs.contains(&ciphertext),
        "a ciphertext appears in the logs"
    );
    assert!(
        !logs.contains(&ciphertext["vault:v1:".len()..]),
        "a ciphertext body appears in the logs"
    );
    // The plaintext marker in any form shorter than the whole.
    assert!(
        !logs.contains("DEK-MARKER"),
        "a piece of the plaintext appears in the logs"
    );
}
