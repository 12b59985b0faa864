//! The daemon's memory stays bounded: across 200 reloads, and across
//! hostile calls that fill a provider's memory or return huge output.
//! Alone in its test binary, so that RSS is this test's alone.
//!
//! Two measures. RSS does not grow smoothly: the allocator takes memory in
//! steps (a new thread's arena, a heap that fragments, then settles; jumps
//! of ~16 MiB seen under CPU contention) and a leak first fills the slack
//! freed memory left, so RSS only bounds the total. A leak is caught by the
//! heap bytes live at once, counted exactly by this binary's allocator:
//! they must come back to the warmed-up level after every reload and
//! hostile call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

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

/// Reloads, and pairs of hostile calls, measured.
const ROUNDS: u32 = 200;

/// Live heap growth allowed after all rounds: 5 KiB per round. A leak of
/// even one small buffer per reload or call exceeds it; measured growth is
/// under 100 KiB (log and metric state that settles).
const ALLOWED_HEAP_GROWTH_MIB: f64 = ROUNDS as f64 * 5.0 / 1024.0;

/// RSS growth allowed over the warmed-up baseline in all: a few allocator
/// steps, but no component, instance or response kept per reload or call.
const ALLOWED_RSS_GROWTH_MIB: f64 = 64.0;

/// The system allocator, counting the bytes live at once.
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// A `GlobalAlloc` is unsafe to implement; this one only forwards to the
// system allocator and counts, so the test can see leaks that RSS hides.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes live now, in MiB.
fn live_heap_mib() -> f64 {
    LIVE_BYTES.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_is_bounded_across_reloads_and_hostile_calls() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("local.wasm");
    std::fs::write(&component, component_version("local_aes", 0)).unwrap();
    let gateway = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "local-1", 1).component_path(&component))
        .with_provider(ProviderSpec::hostile("greedy", "fixture_greedy"))
        .with_provider(ProviderSpec::hostile("huge", "fixture_huge_output"))
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
    let hostile = |count: u32| {
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
    let heap_baseline = live_heap_mib();

    reload(ROUNDS).await;
    let after_reloads = (rss_mib(), live_heap_mib());
    hostile(ROUNDS).await;
    let after_hostile = (rss_mib(), live_heap_mib());
    println!(
        "RSS: baseline {baseline:.1} MiB, after {ROUNDS} reloads {:.1} MiB, after {ROUNDS} pairs of hostile calls {:.1} MiB; live heap: baseline {heap_baseline:.2} MiB, {:+.2} after the reloads, {:+.2} after the hostile calls",
        after_reloads.0,
        after_hostile.0,
        after_reloads.1 - heap_baseline,
        after_hostile.1 - heap_baseline,
    );
    assert!(
        after_reloads.1 - heap_baseline < ALLOWED_HEAP_GROWTH_MIB,
        "reloads left {:.2} MiB more heap live: a leak",
        after_reloads.1 - heap_baseline
    );
    assert!(
        after_hostile.1 - heap_baseline < ALLOWED_HEAP_GROWTH_MIB,
        "hostile calls left {:.2} MiB more heap live: a leak",
        after_hostile.1 - heap_baseline
    );
    assert!(
        after_hostile.0 - baseline < ALLOWED_RSS_GROWTH_MIB,
        "RSS grew by {:.1} MiB",
        after_hostile.0 - baseline
    );
    client.encrypt(encrypt(b"still serving")).await.unwrap();
}
