//! Vault Transit end to end: the `vault-transit` component against a real
//! OpenBao server started by the test.

use std::time::{Duration, Instant};

use kmsgate_integration::requests::{
    decrypt as decrypt_request, encrypt as encrypt_request, status,
};
use kmsgate_integration::{OpenBao, ProviderSpec, TestGateway, wait_until};
use kmsgate_proto::v1beta1;
use tonic::Code;

/// The status refresh interval these tests run with.
const STATUS_INTERVAL_MS: i64 = 300;

async fn key_id(client: &mut kmsgate_proto::client::V2Client) -> String {
    status(client).await.key_id
}

/// Why the daemon refused to start with `spec`.
/// Why `spec` could not load: the daemon serves without it (retrying in
/// the background) and its Status says why.
async fn load_error(spec: ProviderSpec) -> String {
    let gateway = TestGateway::new().with_provider(spec).start().await;
    let healthz = status(&mut gateway.v2().await).await.healthz;
    assert_ne!(healthz, "ok");
    healthz
}

#[tokio::test]
async fn round_trip_rotation_and_old_ciphertexts() {
    let bao = OpenBao::dev().await;
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault("vault", &bao, "kube"))
        .status_interval_ms(STATUS_INTERVAL_MS)
        .start()
        .await;
    let mut client = gateway.v2().await;

    let initial = status(&mut client).await;
    assert_eq!(
        (initial.healthz.as_str(), initial.key_id.as_str()),
        ("ok", "vault/kube:v1")
    );
    let old = client
        .encrypt(encrypt_request(b"dek-before-rotation"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.key_id, "vault/kube:v1");
    assert!(old.ciphertext.starts_with(b"vault:v1:"));
    let plaintext = client
        .decrypt(decrypt_request(&old))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"dek-before-rotation");

    // Rotate in Vault: the new key id shows within the refresh interval.
    bao.rotate("kube").await;
    let took = wait_until("the rotated key id", Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { key_id(&mut client).await == "vault/kube:v2" }
    })
    .await;
    assert!(
        took < Duration::from_millis(STATUS_INTERVAL_MS as u64 * 3),
        "rotation seen after {took:?}"
    );
    let new = client
        .encrypt(encrypt_request(b"dek-after-rotation"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(new.key_id, "vault/kube:v2");
    assert!(new.ciphertext.starts_with(b"vault:v2:"));

    // Old and new ciphertexts both decrypt.
    for (sealed, expected) in [
        (&old, &b"dek-before-rotation"[..]),
        (&new, &b"dek-after-rotation"[..]),
    ] {
        let plaintext = client
            .decrypt(decrypt_request(sealed))
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        assert_eq!(plaintext, expected);
    }

    // v1beta1 through the same provider.
    let mut v1 = gateway.v1beta1().await;
    let request = v1beta1::EncryptRequest {
        version: "v1beta1".into(),
        plain: b"v1-dek".to_vec(),
    };
    let cipher = v1.encrypt(request).await.unwrap().into_inner().cipher;
    let request = v1beta1::DecryptRequest {
        version: "v1beta1".into(),
        cipher,
    };
    assert_eq!(
        v1.decrypt(request).await.unwrap().into_inner().plain,
        b"v1-dek"
    );
}

#[tokio::test]
async fn bad_input_against_vault() {
    let bao = OpenBao::dev().await;
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault("vault", &bao, "kube"))
        .start()
        .await;
    let mut client = gateway.v2().await;
    let sealed = client
        .encrypt(encrypt_request(b"dek"))
        .await
        .unwrap()
        .into_inner();

    let mut tampered = decrypt_request(&sealed);
    let last = tampered.ciphertext.len() - 2;
    tampered.ciphertext[last] = if tampered.ciphertext[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let mut garbage = decrypt_request(&sealed);
    garbage.ciphertext = b"not-a-vault-ciphertext".to_vec();
    let mut wrong_version = decrypt_request(&sealed);
    wrong_version.key_id = "vault/kube:v7".into();
    let mut unknown_key = decrypt_request(&sealed);
    unknown_key.key_id = "vault/other:v1".into();
    let cases = [
        ("tampered", tampered, Code::InvalidArgument),
        ("garbage", garbage, Code::InvalidArgument),
        (
            "key id version differs from the ciphertext's",
            wrong_version,
            Code::InvalidArgument,
        ),
        ("unknown key", unknown_key, Code::NotFound),
    ];
    for (what, request, code) in cases {
        let started = Instant::now();
        let status = client.decrypt(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    let empty = client.encrypt(encrypt_request(b"")).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn outage_shows_unhealthy_and_unavailable_then_recovers() {
    let mut bao = OpenBao::persistent().await;
    // Documented bound: unhealthy within status_interval_ms + call_timeout_ms.
    let call_timeout_ms = 2_000;
    let bound = Duration::from_millis(STATUS_INTERVAL_MS as u64 + call_timeout_ms);
    let gateway = TestGateway::new()
        .with_provider(
            ProviderSpec::vault("vault", &bao, "kube")
                .outbound_timeout_ms(1_000)
                .limit("call_timeout_ms", call_timeout_ms as i64),
        )
        .status_interval_ms(STATUS_INTERVAL_MS)
        .start()
        .await;
    let mut client = gateway.v2().await;
    let before = client
        .encrypt(encrypt_request(b"dek-before-outage"))
        .await
        .unwrap()
        .into_inner();

    bao.stop();
    let took = wait_until("Status to turn unhealthy", bound, || {
        let mut client = client.clone();
        async move { status(&mut client).await.healthz != "ok" }
    })
    .await;
    println!("unhealthy after {took:?} (bound {bound:?})");
    let during = status(&mut client).await;
    assert_eq!(
        during.key_id, "vault/kube:v1",
        "the key id survives the outage"
    );
    assert!(during.healthz.contains("unavailable"), "{}", during.healthz);

    let started = Instant::now();
    let error = client.encrypt(encrypt_request(b"dek")).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
    assert!(
        started.elapsed() < bound,
        "UNAVAILABLE took {:?}",
        started.elapsed()
    );
    let error = client.decrypt(decrypt_request(&before)).await.unwrap_err();
    assert_eq!(error.code(), Code::Unavailable, "{}", error.message());

    bao.start_again().await;
    let took = wait_until("Status to recover", bound * 2, || {
        let mut client = client.clone();
        async move { status(&mut client).await.healthz == "ok" }
    })
    .await;
    println!("healthy again {took:?} after OpenBao was unsealed");
    let plaintext = client
        .decrypt(decrypt_request(&before))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"dek-before-outage");
    client
        .encrypt(encrypt_request(b"dek-after-outage"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_key_refuses_the_load_and_is_not_created() {
    let bao = OpenBao::dev().await;
    let error = load_error(ProviderSpec::vault("vault", &bao, "missing")).await;
    assert!(error.contains("unknown key"), "{error}");
    // At least one retry has run by now (the first comes after 1 s).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        bao.get_status("transit/keys/missing").await,
        404,
        "the key must not be upserted"
    );
}

#[tokio::test]
async fn a_host_outside_the_allowlist_is_denied() {
    let bao = OpenBao::dev().await;
    let spec = ProviderSpec::new("vault", "vault_transit")
        .setting("address", &bao.address)
        .setting("key", "kube")
        .secret("token", &bao.token)
        .allow("http://127.0.0.1:1");
    let error = load_error(spec).await;
    assert!(error.contains("allowed_hosts"), "{error}");
}

#[tokio::test]
async fn a_wrong_token_is_permission_denied_not_unavailable() {
    let bao = OpenBao::dev().await;
    let spec = ProviderSpec::new("vault", "vault_transit")
        .setting("address", &bao.address)
        .setting("key", "kube")
        .secret("token", "not-the-token")
        .allow(&bao.address);
    let error = load_error(spec).await;
    assert!(error.contains("permission denied"), "{error}");
}

/// Encrypts `dek-0` .. `dek-{count - 1}`, in order.
async fn seal_deks(
    client: &mut kmsgate_proto::client::V2Client,
    count: usize,
) -> Vec<kmsgate_proto::v2::EncryptResponse> {
    let mut sealed = Vec::with_capacity(count);
    for i in 0..count {
        let request = encrypt_request(format!("dek-{i}").as_bytes());
        sealed.push(client.encrypt(request).await.unwrap().into_inner());
    }
    sealed
}

/// Concurrent decrypts of `sealed` (plaintext i is `dek-{i}`), and of every
/// `bad` ciphertext (under key id `vault/kube:v1`), all at once. Returns the
/// codes of the bad ones; panics if a good one comes back wrong.
async fn decrypt_all_at_once(
    client: &kmsgate_proto::client::V2Client,
    sealed: &[kmsgate_proto::v2::EncryptResponse],
    bad: &[Vec<u8>],
) -> Vec<Code> {
    let mut calls = tokio::task::JoinSet::new();
    for (i, sealed) in sealed.iter().enumerate() {
        let (mut client, request) = (client.clone(), decrypt_request(sealed));
        calls.spawn(async move {
            let plaintext = client
                .decrypt(request)
                .await
                .unwrap()
                .into_inner()
                .plaintext;
            assert_eq!(plaintext, format!("dek-{i}").into_bytes());
            None
        });
    }
    for ciphertext in bad {
        let mut client = client.clone();
        let request =
            kmsgate_integration::requests::decrypt_raw(ciphertext.clone(), "vault/kube:v1");
        calls.spawn(async move { Some(client.decrypt(request).await.unwrap_err().code()) });
    }
    calls.join_all().await.into_iter().flatten().collect()
}

#[tokio::test]
async fn a_decrypt_storm_is_batched_and_every_answer_is_its_own() {
    let bao = OpenBao::dev().await;
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault("vault", &bao, "kube"))
        .start()
        .await;
    let mut client = gateway.v2().await;
    let sealed = seal_deks(&mut client, 300).await;
    // Tampered (Vault refuses it inside the batch) and of a version the key
    // id does not name (refused before Vault).
    let mut tampered = sealed[0].ciphertext.clone();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let wrong_version = b"vault:v9:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_vec();

    let codes = decrypt_all_at_once(&client, &sealed, &[tampered, wrong_version]).await;
    assert_eq!(codes, [Code::InvalidArgument, Code::InvalidArgument]);

    let info = gateway.provider("vault").await;
    assert!(info.batches_decrypts);
    assert!(
        info.decrypt_batches > 0 && info.decrypt_batch_items > info.decrypt_batches,
        "302 concurrent decrypts made {} batches of {} items",
        info.decrypt_batches,
        info.decrypt_batch_items
    );
}

#[tokio::test]
async fn batching_can_be_turned_off() {
    let bao = OpenBao::dev().await;
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault("vault", &bao, "kube").batch("max_items", 1))
        .start()
        .await;
    let mut client = gateway.v2().await;
    let sealed = seal_deks(&mut client, 50).await;
    decrypt_all_at_once(&client, &sealed, &[]).await;
    let info = gateway.provider("vault").await;
    assert!(!info.batches_decrypts);
    assert_eq!((info.decrypt_batches, info.decrypt_batch_items), (0, 0));
}
