//! Each provider has its own bounded set of instances: a slow or hostile
//! provider fills only its own, callers beyond it are told
//! RESOURCE_EXHAUSTED at once (never a trap, never INTERNAL), and the
//! primary keeps serving.

use std::time::Duration;

use kmsgate_integration::{ProviderSpec, TestGateway};
use kmsgate_proto::v2;
use tonic::Code;

use crate::{assert_error, decrypt, encrypt, healthz};

#[tokio::test]
async fn a_slow_provider_cannot_starve_the_primary() {
    let slow = ProviderSpec::new("slow", "fixture_slow")
        .setting("decrypt-sleep-ms", "2000")
        .limit("max_concurrent_calls", 4)
        .limit("max_queued_calls", 4)
        // The queued calls wait 2 s, then run 2 s: room for a slow CI.
        .limit("call_timeout_ms", 20_000);
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("good", "k1", 1))
        .with_provider(slow)
        .primary("good")
        .start()
        .await;
    let mut client = gateway.v2().await;
    // The connection is up and the server's stream limit known before the
    // flood (grpc-go, like the apiserver, queues streams beyond it).
    client.status(v2::StatusRequest {}).await.unwrap();

    // More decrypts for the slow provider than the whole daemon has
    // instances (256), all at once.
    let flood: Vec<_> = (0..300)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.decrypt(decrypt("slow/w1", b"x")).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Meanwhile the primary encrypts and decrypts, and Status says ok.
    for _ in 0..20 {
        let sealed = client.encrypt(encrypt(b"dek")).await.unwrap().into_inner();
        client
            .decrypt(decrypt(&sealed.key_id, &sealed.ciphertext))
            .await
            .unwrap();
    }
    assert_eq!(healthz(&client).await, "ok");

    let mut served = 0;
    let mut exhausted = 0;
    for call in flood {
        match call.await.unwrap() {
            Ok(_) => served += 1,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "");
                exhausted += 1;
            }
        }
    }
    // 4 running and 4 queued are served; the rest were refused at once.
    assert!((8..=12).contains(&served), "{served} served");
    assert_eq!(served + exhausted, 300);
}

/// Instances are bounded by bytes, not only by count: a provider whose
/// instances hold ~1 MiB each, allowed 16 at once but 3 MiB together, runs
/// two, and the calls beyond wait for one to come back rather than fail.
/// (A Python provider's ~12.5 MiB instances meet the default 64 MiB the
/// same way: `scripts/bench-languages`.)
#[tokio::test]
async fn a_provider_runs_only_as_many_instances_as_fit_its_memory() {
    let slow = ProviderSpec::new("slow", "fixture_slow")
        .setting("decrypt-sleep-ms", "200")
        .limit("max_concurrent_calls", 16)
        .limit("instances_memory_mib", 3)
        .limit("call_timeout_ms", 20_000);
    let gateway = TestGateway::new()
        .with_provider(slow)
        .status_interval_ms(600_000)
        .start()
        .await;
    let mut client = gateway.v2().await;
    client.status(v2::StatusRequest {}).await.unwrap();

    let calls: Vec<_> = (0..16)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.decrypt(decrypt("slow/w1", b"x")).await })
        })
        .collect();
    let mut most = (0, 0);
    while !calls.iter().all(|call| call.is_finished()) {
        let info = gateway.provider("slow").await;
        most = (
            most.0.max(info.instances),
            most.1.max(info.sandbox_memory_bytes),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for call in calls {
        call.await
            .unwrap()
            .expect("a call beyond the bound waits, it does not fail");
    }
    let (instances, memory) = most;
    assert!(instances >= 1 && memory > 0, "{most:?}");
    assert!(
        instances <= 2 && memory <= 3 << 20,
        "at most {instances} instances holding {memory} bytes"
    );
}
