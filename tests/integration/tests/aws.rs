//! The `aws-kms` provider against moto (the AWS emulator) with signature
//! checking on: the host signs every request with SigV4 from key files the
//! provider never sees. Round trips, a wrong secret, a disabled key and an
//! on-demand rotation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kmsgate_integration::moto::REGION;
use kmsgate_integration::requests::{decrypt, decrypt_raw, encrypt, status};
use kmsgate_integration::vault_auth::{auth_table, file_source};
use kmsgate_integration::{Moto, ProviderSpec, RunningGateway, TestGateway, wait_until};
use kmsgate_proto::client::V2Client;
use tempfile::TempDir;
use tonic::Code;

/// The provider's name, and the prefix of its key ids.
const NAME: &str = "aws";

/// Key files for the moto user, in a directory the test keeps.
struct Keys {
    _dir: TempDir,
    secret: PathBuf,
    access_key: PathBuf,
}

impl Keys {
    fn new(moto: &Moto) -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let access_key = dir.path().join("access_key_id");
        let secret = dir.path().join("secret_access_key");
        write(&access_key, &moto.access_key_id);
        write(&secret, &moto.secret_access_key);
        Keys {
            _dir: dir,
            secret,
            access_key,
        }
    }
}

fn write(path: &Path, text: &str) {
    kmsgate_integration::write_atomically(path, text.as_bytes());
}

/// `aws-kms` on `moto`'s key `key`, signed by auth `aws` from `keys`.
fn spec(moto: &Moto, key: &str, keys: &Keys) -> ProviderSpec {
    let auth = auth_table(
        "aws-sigv4",
        &[
            ("region", REGION.into()),
            ("service", "kms".into()),
            ("access_key_id", file_source(&keys.access_key)),
            ("secret_access_key", file_source(&keys.secret)),
        ],
    );
    ProviderSpec::new(NAME, "aws_kms")
        .setting("endpoint", &moto.endpoint)
        .setting("key", key)
        .allow(&moto.endpoint)
        .auth("aws", auth)
}

async fn start(spec: ProviderSpec) -> RunningGateway {
    TestGateway::new()
        .with_provider(spec)
        .status_interval_ms(1_000)
        .start()
        .await
}

async fn key_id(client: &mut V2Client) -> String {
    status(client).await.key_id
}

/// Waits for the provider's health to be `healthy`; returns its detail.
async fn wait_health(gateway: &RunningGateway, healthy: bool, limit: Duration) -> String {
    wait_until(
        &format!("provider {NAME} healthy={healthy}"),
        limit,
        || async { gateway.provider(NAME).await.healthy == healthy },
    )
    .await;
    gateway.provider(NAME).await.detail
}

#[tokio::test]
async fn round_trips_through_kms_and_refuses_tampered_ciphertexts() {
    let moto = Moto::start().await;
    let keys = Keys::new(&moto);
    // By alias: the key id still names the key's uuid, from DescribeKey.
    let gateway = start(spec(&moto, "alias/kube", &keys)).await;
    let mut client = gateway.v2().await;

    let initial = status(&mut client).await;
    assert_eq!(initial.healthz, "ok");
    assert_eq!(initial.key_id, format!("{NAME}/{}:r0", moto.key_id));

    for size in [1, 32, 256, 768] {
        let plaintext: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
        let sealed = client
            .encrypt(encrypt(&plaintext))
            .await
            .unwrap_or_else(|s| panic!("encrypt {size}: {s:?}\n{}", moto.log()))
            .into_inner();
        assert_eq!(sealed.key_id, initial.key_id);
        assert!(sealed.ciphertext.len() > size as usize);
        assert!(sealed.ciphertext.len() <= 1024);
        let opened = client.decrypt(decrypt(&sealed)).await.unwrap().into_inner();
        assert_eq!(opened.plaintext, plaintext, "size {size}");
    }

    let sealed = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();
    let mut tampered = sealed.ciphertext.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let garbage = b"not a KMS ciphertext at all".to_vec();
    for (what, ciphertext) in [("tampered", tampered), ("garbage", garbage)] {
        let error = client
            .decrypt(decrypt_raw(ciphertext, &sealed.key_id))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument, "{what}: {error:?}");
        assert!(
            error.message().contains("InvalidCiphertextException"),
            "{what}: {}",
            error.message()
        );
    }
    // A key id of another shape never reaches KMS.
    let error = client
        .decrypt(decrypt_raw(
            sealed.ciphertext.clone(),
            &format!("{NAME}/kube:v1"),
        ))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::NotFound, "{error:?}");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_wrong_secret_key_is_permission_denied_naming_the_aws_code_not_the_secret() {
    let moto = Moto::start().await;
    let keys = Keys::new(&moto);
    let gateway = start(spec(&moto, &moto.key_id, &keys)).await;
    let mut client = gateway.v2().await;
    let before = client
        .encrypt(encrypt(b"made before"))
        .await
        .unwrap()
        .into_inner();

    // The host re-reads the file: from now on its signatures are wrong.
    let wrong = "wRongSecretAccessKey0000000000000000000000";
    write(&keys.secret, wrong);
    let detail = wait_health(&gateway, false, Duration::from_secs(10)).await;
    assert!(detail.contains("SignatureDoesNotMatch"), "{detail}");
    let error = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_eq!(error.code(), Code::PermissionDenied, "{error:?}");
    assert!(
        error.message().contains("SignatureDoesNotMatch"),
        "{}",
        error.message()
    );
    for text in [error.message(), detail.as_str()] {
        assert!(!text.contains(wrong), "{text}");
        assert!(!text.contains(&moto.secret_access_key), "{text}");
    }

    // The right secret again: healthy without a restart.
    write(&keys.secret, &moto.secret_access_key);
    wait_health(&gateway, true, Duration::from_secs(10)).await;
    let opened = client.decrypt(decrypt(&before)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"made before");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn a_disabled_key_makes_the_provider_unhealthy_until_it_is_enabled() {
    let moto = Moto::start().await;
    let keys = Keys::new(&moto);
    let gateway = start(spec(&moto, &moto.key_id, &keys)).await;
    let mut client = gateway.v2().await;
    let key_before = key_id(&mut client).await;
    wait_health(&gateway, true, Duration::from_secs(5)).await;

    moto.disable().await;
    let disabled_at = Instant::now();
    let detail = wait_health(&gateway, false, Duration::from_secs(5)).await;
    assert!(
        disabled_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        disabled_at.elapsed()
    );
    assert!(
        detail.contains(&format!("key {} is Disabled", moto.key_arn)),
        "{detail}"
    );
    assert_ne!(status(&mut client).await.healthz, "ok");

    moto.enable().await;
    wait_health(&gateway, true, Duration::from_secs(5)).await;
    // Enabling again is not a rotation.
    assert_eq!(key_id(&mut client).await, key_before);
    let sealed = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();
    let opened = client.decrypt(decrypt(&sealed)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"dek");
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn an_on_demand_rotation_changes_the_key_id_and_old_ciphertexts_still_decrypt() {
    let moto = Moto::start().await;
    let keys = Keys::new(&moto);
    let gateway = start(spec(&moto, &moto.key_id, &keys)).await;
    let mut client = gateway.v2().await;
    let first = format!("{NAME}/{}:r0", moto.key_id);
    assert_eq!(key_id(&mut client).await, first);
    let before = client
        .encrypt(encrypt(b"made before"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.key_id, first);

    moto.rotate().await;
    let second = format!("{NAME}/{}:r1", moto.key_id);
    let took = wait_until("the rotated key id", Duration::from_secs(5), || {
        let mut client = client.clone();
        let second = second.clone();
        async move { key_id(&mut client).await == second }
    })
    .await;
    assert!(took < Duration::from_secs(3), "took {took:?}");

    let opened = client.decrypt(decrypt(&before)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"made before");
    let after = client
        .encrypt(encrypt(b"made after"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.key_id, second);
    let opened = client.decrypt(decrypt(&after)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"made after");
    gateway.stop().await.unwrap();
}

/// `aws-sigv4` with web identity: the host trades a token file for
/// temporary keys at STS (`AssumeRoleWithWebIdentity`), then signs every
/// KMS call with them and their session token, which moto checks.
#[tokio::test]
async fn web_identity_keys_from_sts_sign_every_call() {
    let moto = Moto::start_unchecked().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("web-identity-token");
    // moto does not check the token itself, only that one is sent.
    write(&token_file, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJrbXNnYXRlIn0.");
    let mut web_identity = toml::Table::new();
    web_identity.insert("role_arn".into(), moto.role_arn.clone().into());
    web_identity.insert("token_file".into(), token_file.display().to_string().into());
    web_identity.insert("sts_endpoint".into(), moto.endpoint.clone().into());
    let auth = auth_table(
        "aws-sigv4",
        &[
            ("region", REGION.into()),
            ("web_identity", toml::Value::Table(web_identity)),
        ],
    );
    let spec = ProviderSpec::new(NAME, "aws_kms")
        .setting("endpoint", &moto.endpoint)
        .setting("key", "alias/kube")
        .allow(&moto.endpoint)
        .auth("aws", auth);
    let gateway = start(spec).await;
    wait_until("keys from STS", Duration::from_secs(10), || async {
        let info = gateway.provider(NAME).await;
        info.credentials.first().is_some_and(|c| c.state == "valid")
    })
    .await;
    // From here on moto refuses anything not signed with known keys.
    moto.enforce_signatures().await;
    let mut client = gateway.v2().await;
    let sealed = client
        .encrypt(encrypt(b"a dek"))
        .await
        .unwrap()
        .into_inner();
    let opened = client.decrypt(decrypt(&sealed)).await.unwrap().into_inner();
    assert_eq!(opened.plaintext, b"a dek");
    let held = gateway.provider(NAME).await.credentials[0].clone();
    assert_eq!(
        (held.kind.as_str(), held.logins),
        ("aws-sigv4", 1),
        "{held:?}"
    );
    // STS's keys last an hour by default; the host refreshes at half.
    assert!((1..=3600).contains(&held.expires_in_seconds), "{held:?}");
    gateway.stop().await.unwrap();
}
