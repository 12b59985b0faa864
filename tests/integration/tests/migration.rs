//! Zero-downtime migration between backends in one daemon, as the
//! operator's guide (section 11) does it: Vault Transit primary → add AWS
//! KMS (moto, signatures checked) → make it primary → every Vault
//! ciphertext still decrypts → rewrite the corpus (what `kubectl get
//! secrets -A -o json | kubectl replace -f -` makes the apiserver do) →
//! remove Vault. Callers run round trips throughout and none may fail;
//! nothing encrypted is lost at any step.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kmsgate_integration::moto::REGION;
use kmsgate_integration::requests::{decrypt, encrypt};
use kmsgate_integration::vault_auth::{auth_table, file_source};
use kmsgate_integration::{Moto, OpenBao, ProviderSpec, RunningGateway, TestGateway, wait_until};
use kmsgate_proto::client::V2Client;
use kmsgate_proto::v2;

/// `aws-kms` on moto's `alias/kube`, signed by the host with the keys in
/// `dir`.
fn aws(moto: &Moto, dir: &Path) -> ProviderSpec {
    let access_key = dir.join("aws-access-key-id");
    let secret = dir.join("aws-secret-access-key");
    std::fs::write(&access_key, &moto.access_key_id).unwrap();
    std::fs::write(&secret, &moto.secret_access_key).unwrap();
    let auth = auth_table(
        "aws-sigv4",
        &[
            ("region", REGION.into()),
            ("access_key_id", file_source(&access_key)),
            ("secret_access_key", file_source(&secret)),
        ],
    );
    ProviderSpec::new("aws", "aws_kms")
        .setting("endpoint", &moto.endpoint)
        .setting("key", "alias/kube")
        .allow(&moto.endpoint)
        .auth("aws", auth)
}

fn config(providers: &[&ProviderSpec], primary: &str) -> TestGateway {
    let mut gateway = TestGateway::new()
        .status_interval_ms(1_000)
        .primary(primary);
    for provider in providers {
        gateway = gateway.with_provider((*provider).clone());
    }
    gateway
}

/// Round trips through the primary until `stop`; (ok, failed, first).
fn callers(
    gateway: &RunningGateway,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64, Option<String>)> {
    let socket = gateway.socket.clone();
    tokio::spawn(async move {
        let mut client = kmsgate_proto::client::v2(&socket).await.unwrap();
        let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
        let mut first = None;
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            round += 1;
            let plaintext = format!("in flight {round}");
            let result = async {
                let sealed = client
                    .encrypt(encrypt(plaintext.as_bytes()))
                    .await?
                    .into_inner();
                client
                    .decrypt(decrypt(&sealed))
                    .await
                    .map(|r| r.into_inner().plaintext)
            }
            .await;
            match result {
                Ok(opened) if opened == plaintext.as_bytes() => ok.fetch_add(1, Ordering::Relaxed),
                Ok(_) => {
                    first.get_or_insert_with(|| {
                        format!("round {round}: decrypted to something else")
                    });
                    failed.fetch_add(1, Ordering::Relaxed)
                }
                Err(status) => {
                    first.get_or_insert_with(|| {
                        format!("round {round}: {:?} {}", status.code(), status.message())
                    });
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok.into_inner(), failed.into_inner(), first)
    })
}

async fn assert_all_decrypt(
    client: &mut V2Client,
    corpus: &[(Vec<u8>, v2::EncryptResponse)],
    step: &str,
) {
    for (plaintext, sealed) in corpus {
        let opened = client
            .decrypt(decrypt(sealed))
            .await
            .unwrap_or_else(|s| panic!("{step}: {} did not decrypt: {s:?}", sealed.key_id))
            .into_inner();
        assert_eq!(&opened.plaintext, plaintext, "{step}");
    }
}

async fn reload(gateway: &RunningGateway, next: &TestGateway, remove: &[&str], step: &str) {
    gateway.rewrite_config(next);
    let report = gateway.reload_removing(remove).await;
    assert!(
        report.error.is_empty() && report.refused.is_empty(),
        "{step}: {report:?}"
    );
}

#[tokio::test]
async fn vault_to_aws_kms_with_no_failed_call_and_nothing_lost() {
    let bao = OpenBao::dev().await;
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let vault = ProviderSpec::vault("vault", &bao, "kube");
    let aws = aws(&moto, dir.path());

    let gateway = config(&[&vault], "vault").start().await;
    let mut client = gateway.v2().await;
    let mut corpus = Vec::new();
    for i in 0..40 {
        let plaintext = format!("secret's data key {i}").into_bytes();
        let sealed = client
            .encrypt(encrypt(&plaintext))
            .await
            .unwrap()
            .into_inner();
        assert!(sealed.key_id.starts_with("vault/"), "{}", sealed.key_id);
        corpus.push((plaintext, sealed));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let load = callers(&gateway, stop.clone());

    // 1. AWS KMS beside Vault; Vault still primary.
    reload(&gateway, &config(&[&vault, &aws], "vault"), &[], "add aws").await;
    assert!(gateway.provider("aws").await.healthy);
    assert_all_decrypt(&mut client, &corpus, "after adding aws").await;

    // 2. AWS KMS primary: the apiserver sees a new key id and encrypts
    //    with it; Vault's ciphertexts still decrypt.
    reload(
        &gateway,
        &config(&[&vault, &aws], "aws"),
        &[],
        "make aws primary",
    )
    .await;
    wait_until("Status to name aws", Duration::from_secs(10), || async {
        let mut client = gateway.v2().await;
        kmsgate_integration::requests::status(&mut client)
            .await
            .key_id
            .starts_with("aws/")
    })
    .await;
    assert_all_decrypt(&mut client, &corpus, "after making aws primary").await;

    // 3. Rewrite the corpus: decrypt with Vault, encrypt with AWS.
    let mut rewritten = Vec::new();
    for (plaintext, sealed) in &corpus {
        let opened = client
            .decrypt(decrypt(sealed))
            .await
            .unwrap()
            .into_inner()
            .plaintext;
        let resealed = client.encrypt(encrypt(&opened)).await.unwrap().into_inner();
        assert!(resealed.key_id.starts_with("aws/"), "{}", resealed.key_id);
        rewritten.push((plaintext.clone(), resealed));
    }

    // 4. Vault removed: a config edit alone is refused (it would strand
    //    ciphertexts by mistake); named by the operator, it goes, live.
    gateway.rewrite_config(&config(&[&aws], "aws"));
    let refused = gateway.reload().await;
    assert!(
        refused.error.contains("kmsgate reload --remove vault"),
        "{refused:?}"
    );
    reload(
        &gateway,
        &config(&[&aws], "aws"),
        &["vault"],
        "remove vault",
    )
    .await;
    assert_all_decrypt(&mut client, &rewritten, "after removing vault").await;
    let view = gateway
        .admin()
        .await
        .providers(kmsgate_proto::admin::ProvidersRequest {})
        .await
        .unwrap();
    let names: Vec<String> = view
        .into_inner()
        .providers
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["aws"]);

    stop.store(true, Ordering::Relaxed);
    let (ok, failed, first) = load.await.unwrap();
    assert_eq!(failed, 0, "{ok} ok; first failure: {first:?}");
    assert!(ok > 20, "only {ok} round trips ran across the migration");
    gateway.stop().await.unwrap();
}
