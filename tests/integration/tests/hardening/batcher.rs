//! The decrypt batcher sends only what callers still wait for, and its
//! queue is bounded.

use std::time::Duration;

use kmsgate_integration::{DelayProxy, OpenBao, ProviderSpec, TestGateway};
use tonic::Code;

use crate::{decrypt, encrypt, with_timeout};

#[tokio::test]
async fn decrypts_whose_callers_gave_up_are_not_sent_when_the_backend_returns() {
    let bao = OpenBao::dev().await;
    let proxy = DelayProxy::start(&bao.address).await;
    let vault = ProviderSpec::vault_via("vault", &bao, &proxy.address, "kube")
        .batch("max_items", 8)
        .batch("max_in_flight", 1);
    let gateway = TestGateway::new().with_provider(vault).start().await;
    let mut client = gateway.v2().await;
    let sealed = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();

    proxy.freeze();
    let before = proxy.ciphertexts();
    // A retry storm against a backend that does not answer: every caller
    // gives up after 500 ms.
    let storm: Vec<_> = (0..200)
        .map(|_| {
            let mut client = client.clone();
            let request = decrypt(&sealed.key_id, &sealed.ciphertext);
            tokio::spawn(async move {
                client
                    .decrypt(with_timeout(request, Duration::from_millis(500)))
                    .await
            })
        })
        .collect();
    for call in storm {
        let status = call.await.unwrap().unwrap_err();
        // Out of time (by the daemon's clock or the caller's), or failed
        // fast once the backend was known down.
        assert!(
            matches!(
                status.code(),
                Code::DeadlineExceeded | Code::Cancelled | Code::Unavailable
            ),
            "{status:?}"
        );
    }
    proxy.thaw();
    // Let anything still queued drain to the backend.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = proxy.ciphertexts() - before;
    // Only batches that left while their callers still waited: the first,
    // and the few taken before the last deadlines of the storm passed
    // (its callers started a few milliseconds apart). Without the fix,
    // all 200.
    assert!(sent <= 24, "{sent} decrypts reached the backend");
    // The queued ones were dropped unsent. (Not all 200 reached the queue:
    // the socket lets one connection have 64 requests open, and the client
    // gave up on some of the others before they were sent.)
    let view = gateway.provider("vault").await;
    assert!(view.decrypts_abandoned >= 48, "{view:?}");
}

#[tokio::test]
async fn a_full_batch_queue_is_resource_exhausted_at_once() {
    let bao = OpenBao::dev().await;
    let proxy = DelayProxy::start(&bao.address).await;
    let vault = ProviderSpec::vault_via("vault", &bao, &proxy.address, "kube")
        .batch("max_items", 2)
        .batch("max_in_flight", 1)
        .batch("max_queued", 10);
    let gateway = TestGateway::new().with_provider(vault).start().await;
    let mut client = gateway.v2().await;
    let sealed = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();

    proxy.freeze();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = client.clone();
            let request = decrypt(&sealed.key_id, &sealed.ciphertext);
            tokio::spawn(async move {
                client
                    .decrypt(with_timeout(request, Duration::from_millis(1500)))
                    .await
            })
        })
        .collect();
    let mut exhausted = 0;
    for call in calls {
        let status = call.await.unwrap().unwrap_err();
        match status.code() {
            Code::ResourceExhausted => exhausted += 1,
            Code::DeadlineExceeded | Code::Unavailable => {}
            code => panic!("{code:?}: {}", status.message()),
        }
    }
    // 50 callers, at most 2 on the wire and 10 queued.
    assert!(exhausted >= 36, "{exhausted} refused at once");
}
