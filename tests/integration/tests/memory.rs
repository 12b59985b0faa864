//! The daemon's memory stays bounded: across 100 reloads, and across
//! hostile calls that fill a provider's memory or return huge output.
//! Alone in its test binary, so that RSS is this test's alone.

use kmsgate_integration::requests::{encrypt, status};
use kmsgate_integration::{ProviderSpec, TestGateway, component_version, write_atomically};
use kmsgate_proto::v2;

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib / 1024.0
}

/// Growth allowed over the warmed-up baseline. The compile cache holds at
/// most 8 components (~2 MiB each) and the pooling allocator reuses slots,
/// so a leak of even 100 KiB per reload or call would exceed it.
const ALLOWED_GROWTH_MIB: f64 = 24.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_is_bounded_across_reloads_and_hostile_calls() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("local.wasm");
    std::fs::write(&component, component_version("local_aes", 0)).unwrap();
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "local-1", 1).component_path(&component))
        .with_provider(ProviderSpec::new("greedy", "fixture_greedy"))
        .with_provider(ProviderSpec::new("huge", "fixture_huge_output"))
        .primary("local")
        .start()
        .await;
    let mut client = gateway.v2().await;
    assert_eq!(status(&mut client).await.healthz, "ok");

    let mut version = 0;
    let mut reload = async |count: u32| {
        for _ in 0..count {
            version += 1;
            write_atomically(&component, &component_version("local_aes", version));
            assert_eq!(gateway.reload().await.swapped, ["local"]);
        }
    };
    let hostile = |count: usize| {
        let client = client.clone();
        async move {
            for _ in 0..count {
                // Greedy fills its 64 MiB cap; huge returns 32 MiB.
                for key_id in ["greedy/g1", "huge/h1"] {
                    let request = v2::DecryptRequest {
                        ciphertext: vec![1],
                        uid: "u".into(),
                        key_id: key_id.into(),
                        annotations: Default::default(),
                    };
                    let _ = client.clone().decrypt(request).await;
                }
            }
        }
    };

    // Warm up: the first reloads and ordinary calls fill caches and pools.
    // No hostile call yet, so the baseline holds none of their memory.
    reload(10).await;
    for _ in 0..100 {
        client.clone().encrypt(encrypt(b"warm-up")).await.unwrap();
    }
    let baseline = rss_mib();

    reload(100).await;
    let after_reloads = rss_mib();
    hostile(50).await;
    let after_hostile = rss_mib();
    println!(
        "RSS: baseline {baseline:.1} MiB, after 100 reloads {after_reloads:.1} MiB, after 100 hostile calls {after_hostile:.1} MiB"
    );
    assert!(
        after_reloads - baseline < ALLOWED_GROWTH_MIB,
        "reloads grew RSS by {:.1} MiB",
        after_reloads - baseline
    );
    assert!(
        after_hostile - baseline < ALLOWED_GROWTH_MIB,
        "hostile calls grew RSS by {:.1} MiB",
        after_hostile - baseline
    );
    client.encrypt(encrypt(b"still serving")).await.unwrap();
}
