//! `limits.cpu_ms` measures the time a call runs, not the time it waits:
//! a slow backend does not use it up, and a guest that spends its time in
//! cheap host calls cannot hide there.

use std::time::{Duration, Instant};

use kmsgate_integration::{DelayProxy, OpenBao, ProviderSpec, TestGateway};
use tonic::Code;

use crate::{assert_error, decrypt, encrypt, healthz, vault_behind};

#[tokio::test]
async fn a_slow_backend_does_not_use_up_the_cpu_budget() {
    let bao = OpenBao::dev().await;
    let proxy = DelayProxy::start(&bao.address).await;
    // Below the outbound timeout (3 s), well above the CPU budget (1 s).
    proxy.set_delay(Duration::from_millis(1500));
    let gateway = TestGateway::new()
        .with_provider(vault_behind(&bao, &proxy))
        .start()
        .await;
    let mut client = gateway.v2().await;

    // Start-up (init, its canary, the first status) went through the proxy.
    assert_eq!(healthz(&client).await, "ok");
    let started = Instant::now();
    let sealed = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "through the proxy"
    );
    let plaintext = client
        .decrypt(decrypt(&sealed.key_id, &sealed.ciphertext))
        .await
        .unwrap()
        .into_inner()
        .plaintext;
    assert_eq!(plaintext, b"dek");
    assert!(proxy.requests() >= 4, "{} requests", proxy.requests());
}

#[tokio::test]
async fn a_guest_looping_on_host_calls_stops_at_its_cpu_budget() {
    let looping = ProviderSpec::hostile("looping", "fixture_looping")
        .limit("cpu_ms", 300)
        .limit("call_timeout_ms", 20_000);
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("good", "k1", 1))
        .with_provider(looping)
        .primary("looping")
        .start()
        .await;
    let mut client = gateway.v2().await;
    let started = Instant::now();
    let status = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_error(&status, Code::DeadlineExceeded, "CPU budget of 300 ms");
    // Far from the 20 s wall-clock limit; the margin is for a loaded CI.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
