//! The caller's deadline bounds every call, and a backend known to be down
//! fails calls at once (the circuit breaker) until it answers again.

use std::time::{Duration, Instant};

use kmsgate::proto::v2;
use kmsgate_integration::{DelayProxy, OpenBao, ProviderSpec, TestGateway, wait_until};
use tonic::Code;

use crate::{encrypt, metrics_text, with_timeout};

#[tokio::test]
async fn a_frozen_backend_is_answered_before_the_deadline_then_failed_fast() {
    let bao = OpenBao::dev().await;
    let proxy = DelayProxy::start(&bao.address).await;
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::vault_via(
            "vault",
            &bao,
            &proxy.address,
            "kube",
        ))
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
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(took < apiserver_timeout, "answered after {took:?}");

    // Known down: unhealthy at once, and the next calls fail at once.
    let healthz = client
        .status(v2::StatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .healthz;
    assert_ne!(healthz, "ok");
    let started = Instant::now();
    for _ in 0..5 {
        let status = client
            .encrypt(with_timeout(encrypt(b"dek"), apiserver_timeout))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
        assert!(
            status.message().contains("backend down"),
            "{}",
            status.message()
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    let metrics = metrics_text(&gateway).await;
    assert!(
        metrics.contains(r#"kmsgate_provider_breaker_open{provider="vault"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"kmsgate_provider_fast_failures_total{provider="vault"} 5"#),
        "{metrics}"
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
    wait_until("Status ok again", Duration::from_secs(30), || {
        let mut client = client.clone();
        async move {
            client
                .status(v2::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .healthz
                == "ok"
        }
    })
    .await;
}
