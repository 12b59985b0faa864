//! The checks of `kmsgate provider test` made on the provider itself rather
//! than over the socket: what the KMS API cannot show. `decrypt-batch`
//! (which only the daemon's coalescer calls) against `decrypt`, item by
//! item; and what a call costs in CPU and guest memory.

use std::time::{Duration, Instant};

use kmsgate_conformance::{Check, Outcome};
use kmsgate_core::error::ProviderError;
use kmsgate_core::kms::{Call, DecryptItem, KmsProvider};
use kmsgate_core::secret::Plaintext;
use kmsgate_wasm::spec::ProviderConfig;
use kmsgate_wasm::{Runtime, WasmProvider};

/// Loads the provider on its own runtime (as the daemon would, with the
/// daemon's memory budget) and runs the checks; a provider that cannot
/// load here already failed `start`, so that is one FAIL line.
pub async fn run(
    config: &ProviderConfig,
    compile_cache: &std::path::Path,
    memory_budget: usize,
    calls: usize,
) -> Vec<Check> {
    // The daemon's run filled this cache: no second compile.
    let runtime = match Runtime::new(Some(compile_cache), memory_budget) {
        Ok(runtime) => runtime,
        Err(error) => return vec![fail("direct checks", format!("no runtime: {error:#}"))],
    };
    let provider = match WasmProvider::load(&runtime, config).await {
        Ok(provider) => provider,
        Err(error) => return vec![fail("direct checks", error.to_string())],
    };
    let key_id = match provider.status().await {
        Ok(status) => status.key_id,
        Err(error) => return vec![fail("direct checks", format!("status: {error}"))],
    };
    vec![
        batch(&provider, &key_id).await,
        cost(&provider, config, &key_id, calls.max(1)).await,
    ]
}

fn fail(name: &str, detail: String) -> Check {
    Check::new(name, Outcome::Fail, detail)
}

fn call() -> Call {
    Call::caller(Some(Instant::now() + Duration::from_secs(10)))
}

async fn seal(
    provider: &WasmProvider,
    key_id: &str,
    plaintext: &[u8],
) -> Result<DecryptItem, ProviderError> {
    let sealed = provider
        .encrypt(
            call(),
            "provider-test",
            key_id,
            &Plaintext::new(plaintext.to_vec()),
        )
        .await?;
    Ok(DecryptItem {
        uid: "provider-test".into(),
        key_id: sealed.key_id,
        ciphertext: sealed.ciphertext,
        annotations: sealed.annotations,
    })
}

async fn open(provider: &WasmProvider, item: &DecryptItem) -> Result<Plaintext, ProviderError> {
    provider
        .decrypt(
            call(),
            &item.uid,
            &item.key_id,
            &item.ciphertext,
            &item.annotations,
        )
        .await
}

/// `decrypt-batch`, if exported, answers every item as `decrypt` answers
/// it alone: the same plaintext, or an error of the same kind, in order,
/// without one bad item failing the others.
async fn batch(provider: &WasmProvider, key_id: &str) -> Check {
    const NAME: &str = "decrypt-batch agrees with decrypt";
    if provider.batching().is_none() {
        return Check::new(
            NAME,
            Outcome::Info,
            "not exported (or batch.max_items is 1): decrypts go one by one",
        );
    }
    let mut items = Vec::new();
    for plaintext in [
        &b"batch item one"[..],
        b"batch item two",
        b"batch item three",
    ] {
        match seal(provider, key_id, plaintext).await {
            Ok(item) => items.push(item),
            Err(error) => return fail(NAME, format!("encrypt: {error}")),
        }
    }
    let mut tampered = items[1].clone();
    let middle = tampered.ciphertext.len() / 2;
    tampered.ciphertext[middle] ^= 0x01;
    let mut unknown = items[0].clone();
    unknown.key_id = format!("{}-provider-test-unknown", unknown.key_id);
    let garbage = DecryptItem {
        ciphertext: b"provider-test garbage".to_vec(),
        ..items[2].clone()
    };
    items.splice(1..1, [tampered, unknown, garbage]);
    let kinds = "3 good, tampered, unknown key id, garbage";

    let answers = match provider.decrypt_batch(call(), items.clone()).await {
        Ok(answers) => answers,
        Err(error) => return fail(NAME, format!("the whole batch failed ({kinds}): {error}")),
    };
    if answers.len() != items.len() {
        return fail(
            NAME,
            format!("{} answers for {} items", answers.len(), items.len()),
        );
    }
    for (n, (item, batched)) in items.iter().zip(&answers).enumerate() {
        let alone = open(provider, item).await;
        let agree = match (batched, &alone) {
            (Ok(a), Ok(b)) => a.as_bytes() == b.as_bytes(),
            (Err(a), Err(b)) => std::mem::discriminant(a) == std::mem::discriminant(b),
            _ => false,
        };
        if !agree {
            let show = |r: &Result<Plaintext, ProviderError>| match r {
                Ok(_) => "a plaintext".to_owned(),
                Err(error) => error.to_string(),
            };
            return fail(
                NAME,
                format!(
                    "item {n} ({kinds}): the batch answered {}, decrypt alone {}",
                    show(batched),
                    show(&alone)
                ),
            );
        }
    }
    let errors = answers.iter().filter(|a| a.is_err()).count();
    Check::new(
        NAME,
        Outcome::Pass,
        format!(
            "{} items ({kinds}): each as decrypt alone, {errors} per-item errors kept",
            items.len()
        ),
    )
}

/// CPU time of this process (guest and host work; the backend is another
/// process) and guest memory, for sequential calls.
async fn cost(
    provider: &WasmProvider,
    config: &ProviderConfig,
    key_id: &str,
    calls: usize,
) -> Check {
    const NAME: &str = "cost per call";
    let cpu = |f: Duration| f.as_secs_f64() * 1e6 / calls as f64;
    let started = cpu_time();
    let mut last = None;
    for _ in 0..calls {
        match seal(provider, key_id, &[7; 32]).await {
            Ok(item) => last = Some(item),
            Err(error) => return fail(NAME, format!("encrypt: {error}")),
        }
    }
    let encrypt = cpu(cpu_time() - started);
    let item = last.expect("at least one call");
    let started = cpu_time();
    for _ in 0..calls {
        if let Err(error) = open(provider, &item).await {
            return fail(NAME, format!("decrypt: {error}"));
        }
    }
    let decrypt = cpu(cpu_time() - started);
    let usage = provider.usage();
    let per_instance =
        usage.memory_bytes as f64 / usage.instances.max(1) as f64 / f64::from(1 << 20);
    let limits = &config.limits;
    let fit = (limits.instances_memory_mib as f64 / per_instance.max(0.001)).floor() as u64;
    Check::new(
        NAME,
        Outcome::Info,
        format!(
            "CPU {encrypt:.0}µs per encrypt, {decrypt:.0}µs per decrypt (guest and host, backend excluded; {calls} sequential calls); \
             guest memory {per_instance:.1} MiB per instance (limits.memory_mib {}), so {} at once in limits.instances_memory_mib {}",
            limits.memory_mib,
            fit.clamp(1, limits.max_concurrent_calls),
            limits.instances_memory_mib,
        ),
    )
}

fn cpu_time() -> Duration {
    let time = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(time.tv_sec as u64, time.tv_nsec as u32)
}
