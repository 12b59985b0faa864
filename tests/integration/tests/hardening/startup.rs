//! A provider that cannot load at start (revoked token, backend frozen)
//! does not stop the daemon: it serves without it, unhealthy, and recovers
//! on its own. Signals during start-up are handled, not fatal.

use std::time::{Duration, Instant};

use kmsgate_integration::{DelayProxy, OpenBao, ProviderSpec, TestGateway, wait_until};
use kmsgate_proto::v2;
use tonic::Code;

use crate::{assert_error, encrypt, healthz, vault_behind, wait_until_healthy};

#[tokio::test]
async fn a_revoked_token_at_start_recovers_when_the_secret_file_is_fixed() {
    let bao = OpenBao::dev().await;
    let vault = ProviderSpec::vault("vault", &bao, "kube").secret("token", "revoked-token");
    let gateway = TestGateway::new()
        .with_provider(vault)
        .admin_http()
        .start()
        .await;
    let mut client = gateway.v2().await;

    // Serving, unhealthy, saying why.
    let status = client
        .status(v2::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_ne!(status.healthz, "ok");
    assert!(
        status.healthz.contains("permission denied"),
        "{}",
        status.healthz
    );
    assert_eq!(status.key_id, "");
    let refused = client.encrypt(encrypt(b"dek")).await.unwrap_err();
    assert_error(&refused, Code::Unavailable, "");
    let readyz = format!("{}/readyz", gateway.admin_url.as_ref().unwrap());
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);

    // The operator (or an agent) writes a good token; no reload, no restart.
    std::fs::write(gateway.dir.path().join("vault-token.secret"), &bao.token).unwrap();
    wait_until_healthy(&client, "the provider to load on retry").await;
    client.encrypt(encrypt(b"dek")).await.unwrap();
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    assert_eq!(gateway.provider("vault").await.generation, 1);
}

#[tokio::test]
async fn a_backend_that_times_out_at_start_recovers_when_it_answers() {
    let bao = OpenBao::dev().await;
    let proxy = DelayProxy::start(&bao.address).await;
    proxy.freeze();
    let gateway = TestGateway::new()
        .with_provider(vault_behind(&bao, &proxy))
        .start()
        .await;
    let mut client = gateway.v2().await;
    assert_ne!(healthz(&client).await, "ok");
    proxy.thaw();
    wait_until_healthy(&client, "the backend to be seen again").await;
    client.encrypt(encrypt(b"dek")).await.unwrap();
}

#[tokio::test]
async fn sighup_and_sigterm_during_start_up_are_handled() {
    let bao = OpenBao::dev().await;
    let proxy = DelayProxy::start(&bao.address).await;
    // Start-up waits on the frozen backend (init, then the first status).
    proxy.freeze();
    let mut daemon = TestGateway::new()
        .with_provider(vault_behind(&bao, &proxy))
        .spawn_process("info");
    wait_until("the socket to be bound", Duration::from_secs(30), || {
        let socket = daemon.socket.clone();
        async move { socket.exists() }
    })
    .await;

    daemon.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        daemon.exited(),
        None,
        "SIGHUP killed the daemon while it started"
    );

    let sent = Instant::now();
    daemon.signal("TERM");
    let status = loop {
        if let Some(status) = daemon.exited() {
            break status;
        }
        assert!(sent.elapsed() < Duration::from_secs(10), "SIGTERM ignored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    assert!(!daemon.socket.exists(), "socket removed");
}
