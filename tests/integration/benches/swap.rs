//! Hot-swap and instance-model figures (a benchmark, not a test: it prints,
//! it does not judge). Run: `cargo bench -p kmsgate-integration --bench swap`
//! after `scripts/build`.
//!
//! Prints:
//! - swap latency, file written → new version serving, with the compile
//!   cache missed (a new component) and hit (a version seen before), both
//!   through the file watch and through `kmsgate reload`;
//! - per-call cost of the two instance models: a fresh instance per call
//!   (`calls_per_instance = 1`) and the default reuse, in the same run.

use std::time::{Duration, Instant};

use kmsgate_core::kms::{Call, KmsProvider};
use kmsgate_core::secret::Plaintext;
use kmsgate_daemon::config::Config;
use kmsgate_integration::requests::status;
use kmsgate_integration::{
    ProviderSpec, TestGateway, component, component_version, write_atomically,
};
use kmsgate_wasm::{Runtime, WasmProvider};

const SWAPS: u32 = 20;
const CALLS: usize = 2_000;

#[tokio::main]
async fn main() {
    println!("kmsgate hot-swap benchmark ({SWAPS} swaps per row, medians)\n");
    println!(
        "{:<44} {:>10} {:>10}",
        "swap: file written → new version serving", "median", "max"
    );
    for (label, watch, reuse) in [
        ("kmsgate reload, compile cache miss", false, false),
        ("kmsgate reload, compile cache hit", false, true),
        ("file watch (50 ms debounce), cache miss", true, false),
        ("file watch (50 ms debounce), cache hit", true, true),
    ] {
        let times = swap_latencies(watch, reuse).await;
        println!(
            "{label:<44} {:>8.1}ms {:>8.1}ms",
            ms(median(&times)),
            ms(*times.iter().max().unwrap())
        );
    }

    println!("\ninstance model: {CALLS} sequential local-aes encrypts");
    let (fresh, reused) = per_call_costs().await;
    println!(
        "{:<44} {:>8.1}µs",
        "fresh instance per call (calls_per_instance 1)",
        us(fresh)
    );
    println!(
        "{:<44} {:>8.1}µs",
        "instances reused (the default)",
        us(reused)
    );
    println!(
        "{:<44} {:>8.1}µs ({:.2}× the reused call)",
        "isolation costs per call",
        us(fresh.saturating_sub(reused)),
        fresh.as_secs_f64() / reused.as_secs_f64()
    );
}

async fn swap_latencies(watch: bool, reuse_versions: bool) -> Vec<Duration> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local.wasm");
    std::fs::write(&path, component_version("local_aes", 0)).unwrap();
    let mut spec = TestGateway::new()
        .with_provider(ProviderSpec::local_aes("local", "local-1", 1).component_path(&path))
        .watch(watch);
    spec = spec.reload_debounce_ms(50);
    let gateway = spec.start().await;
    status(&mut gateway.v2().await).await;
    // Versions 1 and 2 compiled once up front: "hit" rows alternate them.
    let mut times = Vec::new();
    for round in 0..SWAPS + 2 {
        let version = if reuse_versions {
            1 + round % 2
        } else {
            1000 + round
        };
        let bytes = component_version("local_aes", version);
        let sha = kmsgate_wasm::integrity::sha256_hex(&bytes);
        let started = Instant::now();
        write_atomically(&path, &bytes);
        if !watch {
            gateway.reload().await;
        }
        while gateway.provider("local").await.sha256 != sha {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        if round >= 2 {
            times.push(started.elapsed());
        }
    }
    gateway.stop().await.unwrap();
    times
}

/// Per-call cost of one local-aes encrypt with a fresh instance for every
/// call (`calls_per_instance = 1`), and with the default reuse.
async fn per_call_costs() -> (Duration, Duration) {
    let runtime = Runtime::new(None, 4096 << 20).unwrap();
    let load = |calls_per_instance: u64| {
        let text = format!(
            "socket = \"/unused\"\n[[providers]]\nname = \"local\"\ncomponent = {:?}\n[providers.settings]\nkey-id = \"k1\"\nkey = {:?}\n[providers.limits]\ncalls_per_instance = {calls_per_instance}\n",
            component("local_aes"),
            kmsgate_integration::gateway::local_aes_key(1),
        );
        let config = Config::parse(&text).unwrap();
        let runtime = runtime.clone();
        async move {
            WasmProvider::load(&runtime, &config.providers[0])
                .await
                .unwrap()
        }
    };
    let fresh_provider = load(1).await;
    let reusing_provider = load(1000).await;
    let plaintext = Plaintext::new(vec![7; 32]);

    let mut fresh = Vec::new();
    let mut reused = Vec::new();
    for _ in 0..5 {
        for (provider, times) in [
            (&fresh_provider, &mut fresh),
            (&reusing_provider, &mut reused),
        ] {
            let started = Instant::now();
            for _ in 0..CALLS {
                provider
                    // A caller's call: the host's own (control) calls never
                    // keep their instance.
                    .encrypt(Call::caller(None), "bench", "k1", &plaintext)
                    .await
                    .unwrap();
            }
            times.push(started.elapsed() / CALLS as u32);
        }
    }
    (median(&fresh), median(&reused))
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
