//! Providers as wasmtime components.
//!
//! Invariants of this module:
//! - One [`Runtime`] (one `Engine`, one `Linker`) per daemon. A thread ticks
//!   the engine's epoch every [`TICK`] for as long as the engine lives.
//! - A component is compiled once per content hash ([`cache`]) and
//!   pre-linked into a `ProviderPre`; calls never compile or link.
//! - Instance model: **an instance serves one call at a time, and goes back
//!   for another only after a clean return.** A call that traps, hits a
//!   limit or times out takes its instance with it; so does one that grew
//!   the instance's memory by more than [`REUSE_MEMORY_GROWTH`]. After
//!   `limits.calls_per_instance` calls (1 = a fresh instance every call) it
//!   is dropped anyway. Parallel calls never queue on one instance: without
//!   an idle one, a call instantiates its own (cheap with the pooling
//!   allocator). What reuse trades away: guest state a provider keeps on
//!   purpose (a cache, a counter) outlives a call. It is the same provider,
//!   handling the same caller's keys, so no one else's data is at stake;
//!   `kmsgate bench` and `scripts/bench` measure what it buys.
//! - Every call is bounded three ways: a memory cap for the whole instance
//!   ([`host::SandboxLimiter`]), a CPU budget for guest code (epoch
//!   interruption; time in host calls does not count), and a wall-clock
//!   timeout around everything (epochs do not interrupt host calls).
//! - Traps and limit hits become [`ProviderError`]s here and nowhere else.

mod bindings;
mod cache;
mod host;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{HasSelf, InstancePre, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

use self::bindings::{BatchingProvider, annotations_to_wit, kms, kms_batch};
use self::cache::CompileCache;
use self::host::{HostState, ProviderShared};
use crate::config::ProviderConfig;
use crate::error::ProviderError;
use crate::kms::{BatchResult, Batching, DecryptItem, Encrypted, KmsProvider, ProviderStatus};
use crate::limits::Annotations;
use crate::outbound::{OutboundClient, OutboundSettings};
use crate::secret::{Plaintext, Secret};
use crate::slot::Origin;

/// How often the epoch advances; the granularity of CPU budgets.
const TICK: Duration = Duration::from_millis(10);
/// Instances that may be alive at once across all providers (the pool size).
const MAX_LIVE_INSTANCES: u32 = 256;
/// How much of each pooled slot stays resident between calls.
const KEEP_RESIDENT_BYTES: usize = 64 << 10;
/// The largest memory a single instance may have; per-provider caps are
/// enforced below this by the limiter.
const MAX_MEMORY_BYTES: usize = 4096 << 20;
/// Idle instances one provider keeps for reuse, at most. They count
/// against [`MAX_LIVE_INSTANCES`].
const MAX_IDLE_INSTANCES: usize = 16;
/// How much an instance's memory may have grown since instantiation and
/// still be reused: room for an allocator's first growth, not for a guest
/// that ballooned (its pages would stay resident while it sits idle).
const REUSE_MEMORY_GROWTH: usize = 1 << 20;

/// The engine and linker every provider shares.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Arc<CompileCache>,
}

impl Runtime {
    /// `compile_cache_dir`: where compiled components persist, if anywhere
    /// (see [`cache`]).
    pub fn new(compile_cache_dir: Option<&std::path::Path>) -> wasmtime::Result<Runtime> {
        let mut config = wasmtime::Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_LIVE_INSTANCES);
        pool.total_core_instances(MAX_LIVE_INSTANCES * 4);
        pool.total_memories(MAX_LIVE_INSTANCES * 2);
        pool.total_tables(MAX_LIVE_INSTANCES * 4);
        pool.max_memory_size(MAX_MEMORY_BYTES);
        // A call touches the same few hundred KiB of a slot every time;
        // keeping them resident (zeroed with memset on reuse) avoids a page
        // fault per page per call. Measured with `scripts/bench`.
        pool.linear_memory_keep_resident(KEEP_RESIDENT_BYTES);
        pool.table_keep_resident(KEEP_RESIDENT_BYTES);
        pool.async_stack_keep_resident(KEEP_RESIDENT_BYTES);
        // Not `decommit_batch_size`: batching would make returning pages
        // cheaper, but a hostile guest's memory (up to its cap) would then
        // stay resident until the batch fills, which breaks the memory bound
        // (`tests/integration/tests/memory.rs` caught it at ~300 MiB).
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        BatchingProvider::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("kmsgate-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(TICK);
                }
            })
            .map_err(wasmtime::Error::new)?;
        Ok(Runtime {
            engine,
            linker: Arc::new(linker),
            cache: Arc::new(CompileCache::with_disk(compile_cache_dir)),
        })
    }
}

/// A provider's inputs, read and checked but not yet compiled: enough to
/// tell whether a reload changes anything ([`Prepared::origin`]).
pub struct Prepared {
    bytes: Vec<u8>,
    origin: Origin,
    settings: Vec<(String, String)>,
    secrets: std::collections::HashMap<String, Secret>,
}

impl Prepared {
    /// Reads the component (checking its pin) and resolves settings and
    /// secrets.
    pub fn read(config: &ProviderConfig) -> Result<Prepared, LoadError> {
        let fail = |reason: String| LoadError {
            provider: config.name.clone(),
            path: config.component.clone(),
            reason,
        };
        let bytes = std::fs::read(&config.component).map_err(|e| fail(format!("reading: {e}")))?;
        let sha256 = crate::integrity::verify(config.sha256.as_deref(), &bytes).map_err(fail)?;
        let settings = config.resolve_settings().map_err(|e| fail(e.to_string()))?;
        let secrets = config.resolve_secrets().map_err(|e| fail(e.to_string()))?;

        // Everything that, if changed, makes this a different provider.
        let mut hasher = Sha256::new();
        hasher.update(sha256.as_bytes());
        hasher.update(format!("{config:?}").as_bytes());
        for (key, value) in &settings {
            hasher.update(format!("{}:{key}={}:{value}\n", key.len(), value.len()).as_bytes());
        }
        let mut names: Vec<_> = secrets.keys().collect();
        names.sort();
        for name in names {
            let value = secrets[name].expose();
            hasher.update(format!("{}:{name}={}:{value}\n", name.len(), value.len()).as_bytes());
        }
        let origin = Origin {
            component: config.component.clone(),
            sha256,
            fingerprint: hex::encode(hasher.finalize()),
        };
        Ok(Prepared {
            bytes,
            origin,
            settings,
            secrets,
        })
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }
}

/// Why a provider could not be loaded.
#[derive(Debug, Error)]
#[error("loading provider {provider} from {path:?}: {reason}")]
pub struct LoadError {
    pub provider: String,
    pub path: PathBuf,
    pub reason: String,
}

/// A loaded provider component, ready to serve calls.
pub struct WasmProvider {
    name: String,
    pre: InstancePre<HostState>,
    kms: kms::GuestIndices,
    /// Present when the component exports `kms-batch`.
    kms_batch: Option<kms_batch::GuestIndices>,
    batching: Option<Batching>,
    shared: Arc<ProviderShared>,
    memory_cap: usize,
    cpu_budget: Duration,
    call_timeout: Duration,
    calls_per_instance: u64,
    /// Instances between calls, most recently used last.
    idle: Mutex<Vec<Instance>>,
    origin: Origin,
}

/// A live instance in its own store.
struct Instance {
    store: Store<HostState>,
    kms: kms::Guest,
    kms_batch: Option<kms_batch::Guest>,
    /// Linear memory right after instantiation.
    memory_at_start: usize,
    /// Calls begun in this instance.
    calls: u64,
}

impl WasmProvider {
    /// Reads, compiles and links the component, resolves its settings and
    /// secrets, and runs its `init`. A backend that is merely unavailable
    /// does not stop the load (it may come up later); anything else does.
    pub async fn load(
        runtime: &Runtime,
        config: &ProviderConfig,
    ) -> Result<WasmProvider, LoadError> {
        WasmProvider::build(runtime, config, Prepared::read(config)?).await
    }

    /// Compiles (or takes from the cache), links and inits `prepared`.
    pub async fn build(
        runtime: &Runtime,
        config: &ProviderConfig,
        prepared: Prepared,
    ) -> Result<WasmProvider, LoadError> {
        let fail = |reason: String| LoadError {
            provider: config.name.clone(),
            path: config.component.clone(),
            reason,
        };
        let Prepared {
            bytes,
            origin,
            settings,
            secrets,
        } = prepared;
        let (component, source) = runtime
            .cache
            .get_or_compile(&runtime.engine, &origin.sha256, bytes)
            .await
            .map_err(fail)?;
        tracing::debug!(provider = %config.name, sha256 = %origin.sha256, ?source, "component ready");
        let not_fitting =
            |e: wasmtime::Error| fail(format!("does not fit the kmsgate:provider world: {e}"));
        let pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(not_fitting)?;
        let kms = kms::GuestIndices::new(&pre).map_err(not_fitting)?;
        let kms_batch = kms_batch::GuestIndices::new(&pre).ok();
        let batch = &config.batch;
        let batching = (kms_batch.is_some() && batch.max_items > 1).then_some(Batching {
            max_items: batch.max_items as usize,
            max_in_flight: batch.max_in_flight as usize,
        });
        let outbound = OutboundSettings::from_config(&config.outbound, secrets)
            .and_then(OutboundClient::new)
            .map_err(fail)?;
        let limits = &config.limits;
        let provider = WasmProvider {
            name: config.name.clone(),
            pre,
            kms,
            kms_batch,
            batching,
            shared: Arc::new(ProviderShared {
                name: config.name.clone(),
                settings,
                outbound,
            }),
            memory_cap: (limits.memory_mib << 20) as usize,
            cpu_budget: Duration::from_millis(limits.cpu_ms),
            call_timeout: Duration::from_millis(limits.call_timeout_ms),
            calls_per_instance: limits.calls_per_instance,
            idle: Mutex::new(Vec::new()),
            origin,
        };
        match provider.init().await {
            Ok(()) => {}
            Err(ProviderError::Unavailable(why)) => {
                tracing::warn!(provider = %provider.name, "backend unavailable at load: {why}");
            }
            Err(error) => return Err(fail(format!("init failed: {error}"))),
        }
        Ok(provider)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where this version came from (component file, digest, fingerprint).
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    async fn init(&self) -> Result<(), ProviderError> {
        self.bounded(async {
            let Instance { mut store, kms, .. } = self.instantiate().await?;
            let result = kms.call_init(&mut store).await;
            // `init` is a check, not a warm-up: its instance is not kept.
            match result {
                Ok(returned) => returned.map_err(Into::into),
                Err(trap) => Err(self.classify(&store, trap)),
            }
        })
        .await
    }

    /// An instance for one call: an idle one if there is one, else a new
    /// one. Either way its CPU budget starts now.
    async fn check_out(&self) -> Result<Instance, ProviderError> {
        let idle = self.idle.lock().expect("idle instances lock").pop();
        let mut instance = match idle {
            Some(instance) => instance,
            None => self.instantiate().await?,
        };
        instance.store.data_mut().begin_call();
        instance.store.set_epoch_deadline(1);
        instance.calls += 1;
        Ok(instance)
    }

    /// Keeps an instance whose call returned, if it may serve another.
    fn check_in(&self, instance: Instance) {
        let grown = instance
            .store
            .data()
            .limiter
            .memory_used()
            .saturating_sub(instance.memory_at_start);
        if instance.calls >= self.calls_per_instance || grown > REUSE_MEMORY_GROWTH {
            return;
        }
        let mut idle = self.idle.lock().expect("idle instances lock");
        if idle.len() < MAX_IDLE_INSTANCES {
            idle.push(instance);
        }
    }

    /// A fresh store, limited and with its CPU budget armed, and an instance
    /// in it.
    async fn instantiate(&self) -> Result<Instance, ProviderError> {
        let state = HostState::new(self.shared.clone(), self.memory_cap);
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        store.call_hook(|mut context, hook| {
            context.data_mut().on_call_hook(hook);
            Ok(())
        });
        let budget = self.cpu_budget;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |context| {
            if context.data().guest_time() > budget {
                Ok(UpdateDeadline::Interrupt)
            } else {
                // Let other tasks run on this thread, then keep going.
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let instance = match self.pre.instantiate_async(&mut store).await {
            Ok(instance) => instance,
            Err(error) => return Err(self.classify(&store, error)),
        };
        // Loading type-checks the exports' signatures.
        let not_fitting = |e: wasmtime::Error| {
            ProviderError::Contract(format!("does not fit the kmsgate:provider world: {e}"))
        };
        let kms = self.kms.load(&mut store, &instance).map_err(not_fitting)?;
        let kms_batch = match &self.kms_batch {
            Some(indices) => Some(indices.load(&mut store, &instance).map_err(not_fitting)?),
            None => None,
        };
        Ok(Instance {
            memory_at_start: store.data().limiter.memory_used(),
            store,
            kms,
            kms_batch,
            calls: 0,
        })
    }

    /// Settles a call: flattens its two channels (trap or `kms-error`) into
    /// one, and hands the instance back only if the guest returned.
    fn finish<T, U>(
        &self,
        instance: Instance,
        result: wasmtime::Result<Result<T, bindings::KmsError>>,
    ) -> Result<U, ProviderError>
    where
        U: TryFrom<T>,
        ProviderError: From<U::Error>,
    {
        match result {
            Ok(returned) => {
                self.check_in(instance);
                match returned {
                    Ok(value) => Ok(U::try_from(value)?),
                    Err(error) => Err(error.into()),
                }
            }
            Err(trap) => Err(self.classify(&instance.store, trap)),
        }
    }

    fn classify(&self, store: &Store<HostState>, error: wasmtime::Error) -> ProviderError {
        if store.data().limiter.hit_memory_cap {
            return ProviderError::MemoryExhausted((self.memory_cap >> 20) as u64);
        }
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                ProviderError::DeadlineExceeded(self.cpu_budget.as_millis() as u64)
            }
            Some(trap) => ProviderError::Trapped(trap.to_string()),
            None => ProviderError::Trapped(error.to_string()),
        }
    }

    /// The wall-clock bound. Dropping a wasmtime future mid-call is safe;
    /// the store goes with it.
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        tokio::time::timeout(self.call_timeout, call)
            .await
            .unwrap_or(Err(ProviderError::DeadlineExceeded(
                self.call_timeout.as_millis() as u64,
            )))
    }
}

#[async_trait]
impl KmsProvider for WasmProvider {
    async fn status(&self) -> Result<ProviderStatus, ProviderError> {
        self.bounded(async {
            let mut instance = self.check_out().await?;
            let result = instance.kms.call_status(&mut instance.store).await;
            self.finish(instance, result)
        })
        .await
    }

    async fn encrypt(
        &self,
        uid: &str,
        key_id: &str,
        plaintext: &Plaintext,
    ) -> Result<Encrypted, ProviderError> {
        self.bounded(async {
            let mut instance = self.check_out().await?;
            let result = instance
                .kms
                .call_encrypt(&mut instance.store, uid, key_id, plaintext.as_bytes())
                .await;
            self.finish(instance, result)
        })
        .await
    }

    async fn decrypt(
        &self,
        uid: &str,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &Annotations,
    ) -> Result<Plaintext, ProviderError> {
        self.bounded(async {
            let mut instance = self.check_out().await?;
            let annotations = annotations_to_wit(annotations);
            let result = instance
                .kms
                .call_decrypt(&mut instance.store, uid, key_id, ciphertext, &annotations)
                .await;
            let plaintext: Vec<u8> = self.finish(instance, result)?;
            Ok(Plaintext::new(plaintext))
        })
        .await
    }

    fn batching(&self) -> Option<Batching> {
        self.batching
    }

    async fn decrypt_batch(&self, items: Vec<DecryptItem>) -> BatchResult {
        self.bounded(async {
            let mut instance = self.check_out().await?;
            let Some(kms_batch) = instance.kms_batch.take() else {
                return Err(ProviderError::Contract(
                    "decrypt-batch called on a provider without kms-batch".into(),
                ));
            };
            let items: Vec<kms_batch::DecryptItem> = items.into_iter().map(Into::into).collect();
            let result = kms_batch
                .call_decrypt_batch(&mut instance.store, &items)
                .await;
            instance.kms_batch = Some(kms_batch);
            let results: Vec<Result<Vec<u8>, bindings::KmsError>> =
                self.finish(instance, result)?;
            Ok(results
                .into_iter()
                .map(|result| result.map(Plaintext::new).map_err(Into::into))
                .collect())
        })
        .await
    }
}

/// Loads a provider and runs its checks without serving: `kmsgate check`.
pub async fn check(
    runtime: &Runtime,
    config: &ProviderConfig,
) -> Result<ProviderStatus, LoadError> {
    let provider = WasmProvider::load(runtime, config).await?;
    provider.status().await.map_err(|e| LoadError {
        provider: config.name.clone(),
        path: config.component.clone(),
        reason: format!("status failed: {e}"),
    })
}
