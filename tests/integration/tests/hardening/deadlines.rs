//! The caller's deadline bounds every call, and a backend known to be down
//! fails calls at once (the circuit breaker) until it answers again.

use std::time::{Duration, Instant};

use kmsgate_integration::{DelayProxy, OpenBao, TestGateway, wait_until};
use tonic::Code;

use crate::{
    assert_error, encrypt, healthz, metrics_text, vault_behind, wait_until_healthy, with_timeout,
};

#[tokio::test]
async fn a_frozen_backend_is_answered_before_the_deadline_then_failed_fast() {
    let bao = OpenBao::dev().await;
    let proxy = DelayProxy::start(&bao.address).await;
    let gateway = TestGateway::new()
        .with_provider(vault_behind(&bao, &proxy))
        .admin_http()
        .start()
        .await;
    let mut client = gateway.v2().await;
    client.encrypt(encrypt(b"dek")).await.unwrap();

    // A stopped server: its kernel takes the bytes, nothing answers.
    proxy.freeze();
    let apiserver_timeout = Duration::from_secs(3);
    let started = Instant::now();
    let status = client
        .encrypt(with_timeout(encrypt(b"dek"), apiserver_timeout))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // Answered by the daemon before the caller gives up. The caller's
    // deadline alone does not declare the backend down (a caller could set
    // a short one): it makes the status check run at once, within the
    // provider's own limits.
    assert_error(&status, Code::DeadlineExceeded, "no answer within");
    // It says which limit: the caller's, not the provider's.
    assert!(
        status.message().contains("the caller's deadline"),
        "{}",
        status.message()
    );
    assert!(took < apiserver_timeout, "answered after {took:?}");

    // Known down once that check fails (the outbound timeout, 3 s): then
    // unhealthy, and calls fail at once.
    let open = r#"kmsgate_provider_breaker_open{provider="vault"} 1"#;
    wait_until("the breaker to open", Duration::from_secs(20), || async {
        metrics_text(&gateway).await.contains(open)
    })
    .await;
    let healthz = healthz(&client).await;
    assert!(healthz.contains("unavailable"), "{healthz}");
    let started = Instant::now();
    let mut fast = 0;
    for _ in 0..5 {
        let status = client
            .encrypt(with_timeout(encrypt(b"dek"), apiserver_timeout))
            .await
            .unwrap_err();
        // One may be let through as the breaker's probe, and time out.
        if status.message().contains("backend down") {
            assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
            fast += 1;
        }
    }
    assert!(fast >= 4, "{fast} failed fast");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert!(
        metrics_text(&gateway)
            .await
            .contains(r#"kmsgate_provider_fast_failures_total{provider="vault"}"#)
    );

    // Back on its own once the backend answers.
    proxy.thaw();
    wait_until("encrypt to work again", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            client
                .encrypt(with_timeout(encrypt(b"dek"), apiserver_timeout))
                .await
                .is_ok()
        }
    })
    .await;
    wait_until_healthy(&client, "Status ok again").await;
}
