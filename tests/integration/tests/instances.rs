//! The instance model (`crates/wasm/src/provider.rs`): an instance goes back for
//! another call only after a clean return, never after a trap or a big
//! memory growth, and at most `limits.calls_per_instance` times.
//!
//! The `stateful` fixture encrypts into the number of calls its instance
//! has served, so each ciphertext says whether the call met a used
//! instance or a fresh one. Calls here are sequential and the status
//! refresher is idle during a test, so one instance serves them all when
//! reuse is allowed.

use kmsgate_integration::requests::encrypt;
use kmsgate_integration::{ProviderSpec, RunningGateway, TestGateway};
use kmsgate_proto::client::V2Client;
use tonic::Code;

async fn start(calls_per_instance: Option<i64>) -> RunningGateway {
    let mut spec = ProviderSpec::hostile("stateful", "fixture_stateful");
    if let Some(calls) = calls_per_instance {
        spec = spec.limit("calls_per_instance", calls);
    }
    TestGateway::new()
        .with_provider(spec)
        .status_interval_ms(600_000)
        .start()
        .await
}

/// The instance's call count that served this encrypt.
async fn served_by(client: &mut V2Client, plaintext: &[u8]) -> u64 {
    let response = client.encrypt(encrypt(plaintext)).await.unwrap();
    String::from_utf8(response.into_inner().ciphertext)
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn clean_calls_reuse_an_instance() {
    let gateway = start(None).await;
    let mut client = gateway.v2().await;
    let first = served_by(&mut client, b"a").await;
    let counts = [
        first,
        served_by(&mut client, b"b").await,
        served_by(&mut client, b"c").await,
    ];
    assert_eq!(counts, [first, first + 1, first + 2]);
}

#[tokio::test]
async fn a_trap_takes_its_instance_with_it() {
    let gateway = start(None).await;
    let mut client = gateway.v2().await;
    served_by(&mut client, b"a").await;
    assert!(served_by(&mut client, b"b").await >= 2);
    let status = client.encrypt(encrypt(b"trap")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert_eq!(served_by(&mut client, b"c").await, 1, "a fresh instance");
    assert_eq!(served_by(&mut client, b"d").await, 2);
}

#[tokio::test]
async fn an_instance_that_grew_its_memory_is_not_reused() {
    let gateway = start(None).await;
    let mut client = gateway.v2().await;
    served_by(&mut client, b"a").await;
    assert!(served_by(&mut client, b"grow").await >= 2);
    assert_eq!(served_by(&mut client, b"c").await, 1, "a fresh instance");
}

#[tokio::test]
async fn calls_per_instance_bounds_reuse() {
    let gateway = start(Some(2)).await;
    let mut client = gateway.v2().await;
    let mut counts = Vec::new();
    for _ in 0..6 {
        counts.push(served_by(&mut client, b"a").await);
    }
    assert!(counts.iter().all(|&n| n <= 2), "{counts:?}");
    assert!(counts.windows(2).any(|w| w == [2, 1]), "{counts:?}");

    let gateway = start(Some(1)).await;
    let mut client = gateway.v2().await;
    for _ in 0..3 {
        assert_eq!(served_by(&mut client, b"a").await, 1);
    }
}
