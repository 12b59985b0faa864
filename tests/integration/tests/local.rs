//! KMS v2 and v1beta1 over a real Unix socket with the generated client,
//! against the `local-aes` provider: round trips and bad input.

use kmsgate_integration::requests::{
    decrypt_raw as decrypt_request, encrypt as encrypt_request, status,
};
use kmsgate_integration::{ProviderSpec, TestGateway};
use kmsgate_proto::{v1beta1, v2};
use tonic::Code;

#[tokio::test]
async fn v2_round_trip_and_status() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .start()
        .await;
    let mut client = gateway.v2().await;

    let status = status(&mut client).await;
    assert_eq!(
        (status.version.as_str(), status.healthz.as_str()),
        ("v2", "ok")
    );
    assert_eq!(status.key_id, "local/k1");

    let dek = [42u8; 32];
    let sealed = client
        .encrypt(encrypt_request(&dek))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sealed.key_id, status.key_id,
        "Encrypt's key id equals Status's"
    );
    assert!((1..=1024).contains(&sealed.ciphertext.len()));
    assert_ne!(sealed.ciphertext, dek);

    let mut request = decrypt_request(sealed.ciphertext, &sealed.key_id);
    request.annotations = sealed.annotations;
    let plaintext = client
        .decrypt(request)
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, dek);
    gateway.stop().await.unwrap();
}

#[tokio::test]
async fn v1beta1_round_trip_and_version() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .start()
        .await;
    let mut client = gateway.v1beta1().await;
    let version = client
        .version(v1beta1::VersionRequest {
            version: "v1beta1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (version.version.as_str(), version.runtime_name.as_str()),
        ("v1beta1", "kmsgate")
    );

    let request = v1beta1::EncryptRequest {
        version: "v1beta1".into(),
        plain: b"v1-dek".to_vec(),
    };
    let cipher = client.encrypt(request).await.unwrap().into_inner().cipher;
    let request = v1beta1::DecryptRequest {
        version: "v1beta1".into(),
        cipher,
    };
    assert_eq!(
        client.decrypt(request).await.unwrap().into_inner().plain,
        b"v1-dek"
    );

    let garbage = v1beta1::DecryptRequest {
        version: "v1beta1".into(),
        cipher: b"garbage".to_vec(),
    };
    assert_eq!(
        client.decrypt(garbage).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let wrong_version = v1beta1::VersionRequest {
        version: "v9".into(),
    };
    assert_eq!(
        client.version(wrong_version).await.unwrap_err().code(),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn bad_input_gets_clear_codes_never_internal() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .start()
        .await;
    let mut client = gateway.v2().await;
    let sealed = client
        .encrypt(encrypt_request(b"dek"))
        .await
        .unwrap()
        .into_inner();

    let mut tampered = sealed.ciphertext.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let cases: Vec<(&str, v2::DecryptRequest, Code)> = vec![
        (
            "tampered",
            decrypt_request(tampered, &sealed.key_id),
            Code::InvalidArgument,
        ),
        (
            "garbage",
            decrypt_request(b"garbage".to_vec(), &sealed.key_id),
            Code::InvalidArgument,
        ),
        (
            "empty ciphertext",
            decrypt_request(vec![], &sealed.key_id),
            Code::InvalidArgument,
        ),
        (
            "oversize ciphertext",
            decrypt_request(vec![1; 1025], &sealed.key_id),
            Code::InvalidArgument,
        ),
        (
            "unknown provider",
            decrypt_request(sealed.ciphertext.clone(), "nobody/k1"),
            Code::NotFound,
        ),
        (
            "unknown key",
            decrypt_request(sealed.ciphertext.clone(), "local/k9"),
            Code::NotFound,
        ),
        (
            "empty key id",
            decrypt_request(sealed.ciphertext.clone(), ""),
            Code::InvalidArgument,
        ),
        (
            "oversize key id",
            decrypt_request(sealed.ciphertext.clone(), &"k".repeat(1025)),
            Code::InvalidArgument,
        ),
    ];
    for (what, request, code) in cases {
        let status = client.decrypt(request).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {}", status.message());
    }

    let mut bad_annotation = decrypt_request(sealed.ciphertext.clone(), &sealed.key_id);
    bad_annotation
        .annotations
        .insert("Not/A-Name".into(), vec![1]);
    assert_eq!(
        client.decrypt(bad_annotation).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    let empty = client.encrypt(encrypt_request(b"")).await.unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument, "{}", empty.message());

    // After all that, it still serves.
    let status = status(&mut client).await;
    assert_eq!(status.healthz, "ok");
}

#[tokio::test]
async fn decrypt_routes_by_key_id_prefix_across_providers() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("old", "k1", 1))
        .with_provider(ProviderSpec::local_aes("new", "k2", 2))
        .primary("new")
        .start()
        .await;
    let mut client = gateway.v2().await;
    let sealed = client
        .encrypt(encrypt_request(b"dek"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sealed.key_id, "new/k2");
    // Same ciphertext under the other provider's namespace fails cleanly.
    let misrouted = client
        .decrypt(decrypt_request(sealed.ciphertext.clone(), "old/k2"))
        .await
        .unwrap_err();
    assert_eq!(misrouted.code(), Code::NotFound);
    let plaintext = client
        .decrypt(decrypt_request(sealed.ciphertext, &sealed.key_id))
        .await
        .unwrap();
    assert_eq!(plaintext.into_inner().plaintext, b"dek");
}

#[tokio::test]
async fn socket_is_removed_on_shutdown() {
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "k1", 1))
        .start()
        .await;
    let socket = gateway.socket.clone();
    let mut client = gateway.v2().await;
    client.status(v2::StatusRequest {}).await.unwrap();
    assert!(socket.exists());
    gateway.stop().await.unwrap();
    assert!(!socket.exists());
}
