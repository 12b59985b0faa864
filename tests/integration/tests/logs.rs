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

/// The credentials of every auth the host holds (a given Vault token, an
/// AppRole secret id, a JWT, the tokens it logs in for, AWS keys and a
/// session token) never reach the logs, at trace level, through logins,
/// renewals, signed requests and a refused login.
#[tokio::test]
async fn no_credential_of_an_auth_in_trace_logs() {
    use kmsgate_integration::vault_auth::{JwtSigner, auth_table, file_source};
    let bao = OpenBao::dev().await;
    bao.create_transit_policy().await;
    let given = bao.create_token("5s", "").await;
    let role_id = bao.enable_approle().await;
    let secret_id = bao.new_secret_id().await;
    let signer = JwtSigner::new();
    bao.enable_jwt(&signer).await;
    let jwt = signer.token("kmsgate", 3600);
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let token_file = file("token", &given);
    let role_file = file("role-id", &role_id);
    let secret_file = file("secret-id", &secret_id);
    let jwt_file = file("jwt", &jwt);
    // AWS keys with a session token, signed into every KMS call (moto
    // with checking off, so made-up keys are taken).
    let moto = kmsgate_integration::Moto::start_unchecked().await;
    let aws_secret = "AWS-SECRET-MARKER-wJalrXUtnFEMI-K7MDENG";
    let session_token = "AWS-SESSION-MARKER-FQoGZXIvYXdzEJr";
    let aws_auth = auth_table(
        "aws-sigv4",
        &[
            ("region", kmsgate_integration::moto::REGION.into()),
            (
                "access_key_id",
                file_source(&file("aws-key-id", "AKIALOGTEST000000000")),
            ),
            (
                "secret_access_key",
                file_source(&file("aws-secret", aws_secret)),
            ),
            (
                "session_token",
                file_source(&file("aws-session", session_token)),
            ),
        ],
    );
    let aws = ProviderSpec::new("aws", "aws_kms")
        .setting("endpoint", &moto.endpoint)
        .setting("key", "alias/kube")
        .allow(&moto.endpoint)
        .auth("aws", aws_auth);
    // Four providers: smaller instances, to fit the daemon's memory budget.
    let aws = aws.limit("memory_mib", 16);
    let vault = |name: &str, auth| {
        ProviderSpec::vault_with_auth(name, &bao.address, "kube", auth).limit("memory_mib", 16)
    };
    let daemon = TestGateway::new()
        .with_provider(vault(
            "token",
            auth_table("vault-token", &[("token", file_source(&token_file))]),
        ))
        .with_provider(vault(
            "approle",
            auth_table(
                "vault-approle",
                &[
                    ("role_id", file_source(&role_file)),
                    ("secret_id", file_source(&secret_file)),
                ],
            ),
        ))
        .with_provider(vault(
            "jwt",
            auth_table(
                "vault-jwt",
                &[
                    ("role", "kms".into()),
                    ("jwt_file", jwt_file.display().to_string().into()),
                ],
            ),
        ))
        .with_provider(aws)
        .primary("approle")
        .status_interval_ms(1_000)
        .spawn_process(LOG_FILTER);
    let mut client = daemon.v2().await;
    // Long enough for renewals (every 2.5 s) to be logged.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let sealed = client
            .encrypt(v2::EncryptRequest {
                plaintext: b"dek".to_vec(),
                uid: "uid-auth-log".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(sealed.key_id.starts_with("approle/"));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The AWS provider signs its status calls; show they went through.
    let mut admin = kmsgate_proto::client::admin(&daemon.socket).await.unwrap();
    let view = admin
        .providers(kmsgate_proto::admin::ProvidersRequest {})
        .await
        .unwrap()
        .into_inner();
    let aws = view.providers.iter().find(|p| p.name == "aws").unwrap();
    assert!(aws.healthy, "{aws:?}");
    // A refused login logs its failure.
    std::fs::write(&secret_file, "not-a-secret-id").unwrap();
    bao.revoke_logins("approle").await;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    drop(client);
    let logs = daemon.terminate();
    assert!(
        logs.contains("credential refreshed"),
        "no auth activity logged"
    );
    assert!(
        logs.contains("refreshing the credential failed"),
        "no failure logged"
    );
    for (what, secret) in [
        ("given token", given.as_str()),
        ("secret id", secret_id.as_str()),
        ("JWT", jwt.as_str()),
        ("JWT signature", jwt.rsplit('.').next().unwrap()),
        ("root token", bao.token.as_str()),
        ("AWS secret key", aws_secret),
        ("AWS session token", session_token),
    ] {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
        assert!(
            !logs.contains(&STANDARD.encode(secret)),
            "the {what} appears base64-encoded in the logs"
        );
    }
    // Tokens the host logged in for: OpenBao's service tokens are `s.`
    // and 24 characters.
    let tokens: Vec<&str> = logs
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.'))
        .filter(|word| word.starts_with("s.") && word.len() == 26)
        .collect();
    assert!(tokens.is_empty(), "Vault tokens in the logs: {tokens:?}");
}
