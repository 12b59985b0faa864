//! [`WasmProvider`]: a provider component, loaded, linked and called
//! within its limits, and the [`Runtime`] they share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use thiserror::Error;
use wasmtime::component::{InstancePre, Linker};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap, UpdateDeadline,
};

use crate::bindings::{annotations_to_wit, kms, kms_batch};
use crate::cache::CompileCache;
use crate::host::{HostState, ProviderShared, SandboxLimiter};
use crate::meter::{CallMeter, metered};
use crate::outbound::{OutboundClient, OutboundSettings};
use crate::quota::{Acquired, InstanceQuota, Lane, MemoryBudget, Permit, Sizes};
use crate::spec::ProviderConfig;
use kmsgate_core::error::{ProviderError, TimeLimit};
use kmsgate_core::kms::{
    BatchResult, Batching, Call, CredentialStatus, DecryptItem, Encrypted, KmsProvider,
    ProviderStatus, Usage,
};
use kmsgate_core::limits::Annotations;
use kmsgate_core::secret::{Plaintext, Secret};

/// Where a serving version came from, for operators and for deciding
/// whether a reload changes anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub component: PathBuf,
    /// Hex SHA-256 of the component file.
    pub sha256: String,
    /// Changes whenever the component, settings, secrets or limits change.
    pub fingerprint: String,
    /// The name and version the component claims, if it says.
    pub identity: Option<crate::identity::Identity>,
    /// The trusted key whose signature it carries (`release-2026
    /// (ecdsa-p256 sha256:…)`); `None` if unsigned, or no key is trusted.
    pub signed_by: Option<String>,
    /// For an `oci://` component served from the cache because the
    /// registry could not be reached: why.
    pub stale: Option<String>,
}

/// The guest's last output lines and backtrace frames in a trap's log entry.
const TRAP_OUTPUT_LINES: usize = 10;
const TRAP_FRAMES: usize = 16;

/// How often the epoch advances; the granularity of CPU budgets.
const TICK: Duration = Duration::from_millis(10);
/// Instances that may be alive at once across all providers (the pool
/// size). Config validation keeps every provider's quota within it.
const MAX_LIVE_INSTANCES: u32 = crate::spec::MAX_INSTANCES as u32;
/// How much of each pooled slot stays resident between calls.
const KEEP_RESIDENT_BYTES: usize = 64 << 10;
/// The largest memory a single instance may have; per-provider caps are
/// enforced below this by the limiter.
const MAX_MEMORY_BYTES: usize = 4096 << 20;
/// How much an instance's memory may have grown since instantiation and
/// still be reused: room for an allocator's first growth, not for a guest
/// that ballooned (its pages would stay resident while it sits idle).
const REUSE_MEMORY_GROWTH: usize = 1 << 20;

/// The engine and linker every provider shares, and every provider's
/// instance quota.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<HostState>>,
    cache: Arc<CompileCache>,
    budget: Arc<MemoryBudget>,
    /// By provider name: every version of a provider shares one quota.
    quotas: Arc<Mutex<HashMap<String, Arc<InstanceQuota>>>>,
}

impl Runtime {
    /// `compile_cache_dir`: where compiled components persist, if anywhere
    /// (see [`cache`]). `memory_budget`: bytes of guest memory all
    /// instances together may use.
    pub fn new(
        compile_cache_dir: Option<&std::path::Path>,
        memory_budget: usize,
    ) -> wasmtime::Result<Runtime> {
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
        crate::host::add_to_linker(&mut linker)?;

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
            budget: Arc::new(MemoryBudget::new(memory_budget)),
            quotas: Arc::default(),
        })
    }

    /// The quota of provider `name`. A reload that keeps its sizes keeps
    /// the quota, so the old and new versions share it; new sizes start a
    /// new one (the old version's calls finish under the old one).
    fn quota(&self, name: &str, limits: &crate::spec::LimitsConfig) -> Arc<InstanceQuota> {
        let sizes = Sizes {
            max_concurrent: limits.max_concurrent_calls as usize,
            max_queued: limits.max_queued_calls as usize,
            pool_bytes: (limits.instances_memory_mib << 20) as usize,
        };
        let mut quotas = self.quotas.lock().expect("quotas lock poisoned");
        let quota = quotas
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(InstanceQuota::new(sizes, self.budget.clone())));
        if !quota.has_sizes(sizes) {
            *quota = Arc::new(InstanceQuota::new(sizes, self.budget.clone()));
        }
        quota.clone()
    }

    /// Checks a component's imports and compiles it into the compile cache
    /// (memory, and the disk directory if the runtime has one), as a load
    /// would, without running it: `kmsgate compile`, so that a swap finds
    /// it compiled. Returns its digest and whether it was compiled now.
    pub async fn compile(&self, bytes: Vec<u8>) -> Result<(String, bool), String> {
        crate::imports::check(&bytes)?;
        let sha256 = crate::integrity::sha256_hex(&bytes);
        let (_, source) = self
            .cache
            .get_or_compile(&self.engine, &sha256, bytes)
            .await?;
        Ok((sha256, matches!(source, crate::cache::Source::Compiled)))
    }

    /// Guest memory of every live instance, in bytes.
    pub fn memory_used(&self) -> usize {
        self.budget.used()
    }
}

/// A provider's inputs, read and checked but not yet compiled: enough to
/// tell whether a reload changes anything ([`Prepared::origin`]).
pub struct Prepared {
    bytes: Vec<u8>,
    origin: Origin,
    settings: Vec<(String, String)>,
    secrets: std::collections::HashMap<String, Secret>,
    tls: crate::outbound::TlsFiles,
}

/// Everything that, if changed, makes a provider a different one: the
/// component's digest, the provider's parsed config (its values, serialised;
/// never its `Debug`, which redacts and may change with the code), and the
/// settings and secrets it resolved to. A reload swaps only the providers
/// whose fingerprint changed.
fn fingerprint(
    sha256: &str,
    signature: Option<&[u8]>,
    config: &ProviderConfig,
    settings: &[(String, String)],
    secrets: &HashMap<String, Secret>,
) -> Result<String, String> {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        // Length-prefixed, so no two sequences of fields hash alike.
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(sha256.as_bytes());
    // A new signature or a changed trust list checks the component again:
    // a key dropped from the list must not leave what it signed serving
    // unnoticed.
    field(signature.unwrap_or_default());
    field(config.policy.fingerprint().as_bytes());
    let parsed = serde_json::to_vec(config)
        .map_err(|e| format!("provider config cannot be fingerprinted: {e}"))?;
    field(&parsed);
    for (key, value) in settings {
        field(key.as_bytes());
        field(value.as_bytes());
    }
    let mut names: Vec<_> = secrets.keys().collect();
    names.sort();
    for name in names {
        field(name.as_bytes());
        field(secrets[name].expose().as_bytes());
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The signature file's contents; `None` if there is none.
fn read_signature(path: &std::path::Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::symlink_metadata(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        _ => kmsgate_core::files::read_bounded(path, crate::signature::MAX_SIGNATURE_FILE)
            .map(Some)
            .map_err(|why| format!("signature: {why}")),
    }
}

impl Prepared {
    /// [`Prepared::read`] on the blocking pool, bounded in time (see
    /// [`kmsgate_core::files`]).
    pub async fn read_off_runtime(config: &ProviderConfig) -> Result<Prepared, LoadError> {
        let mut owned = config.clone();
        // An `oci://` component is pulled (or found in the cache) first;
        // then its bytes are read and checked as a local file's are.
        let fetched = match config.oci_reference() {
            Some(reference) => {
                let reference = reference.map_err(|why| LoadError::fatal(config, why))?;
                let cache = config.oci_cache.as_deref().ok_or_else(|| {
                    LoadError::fatal(config, "an oci:// component needs compile_cache_dir".into())
                })?;
                let fetched = crate::oci::fetch(&reference, &config.registry, cache)
                    .await
                    // A registry that refuses may be fixed; worth retrying.
                    .map_err(|why| LoadError::retryable(config, why))?;
                if let Some(why) = &fetched.stale {
                    tracing::warn!(provider = %config.name, component = %reference.text(), "stale: {why}");
                }
                owned.component = fetched.path.clone();
                Some((reference, fetched))
            }
            None => None,
        };
        kmsgate_core::files::off_runtime(&format!("provider {}", config.name), move || {
            let pulled = fetched
                .as_ref()
                .map(|(reference, fetched)| (reference, fetched));
            Prepared::read(&owned, pulled)
        })
        .await
        // Timed out: the files may be readable later.
        .map_err(|why| LoadError::retryable(config, why))?
    }

    /// Reads the component (checking its pin and signature), resolves
    /// settings and secrets, and reads the TLS files. `pulled` is what
    /// [`crate::oci::fetch`] found for an `oci://` component, whose bytes
    /// are then at `config.component`. Blocking: see
    /// [`Prepared::read_off_runtime`].
    fn read(
        config: &ProviderConfig,
        pulled: Option<(&crate::oci::OciReference, &crate::oci::Fetched)>,
    ) -> Result<Prepared, LoadError> {
        let fail = |reason: String| LoadError::fatal(config, reason);
        let bytes = kmsgate_core::files::read_bounded(
            &config.component,
            kmsgate_core::files::MAX_COMPONENT,
        )
        .map_err(fail)?;
        let sha256 = crate::integrity::verify(config.sha256.as_deref(), &bytes).map_err(fail)?;
        // The signature is over these bytes, the ones compiled (or looked up
        // in the compile cache by their digest) below: nothing unverified
        // reaches the compiler or the cache.
        let (signed_by, signature) = match pulled {
            // Signed in the registry: over the manifest, which names these
            // bytes by digest. A `signature` file named in the config wins.
            Some((_, fetched)) if config.signature.is_none() => {
                if format!("sha256:{sha256}") != fetched.layer_digest {
                    return Err(fail(format!(
                        "the pulled component changed on disk: digest sha256:{sha256}, the manifest says {}",
                        fetched.layer_digest
                    )));
                }
                let signed_by = config.policy.check_cosign(
                    &fetched.manifest_digest,
                    &fetched.signatures,
                    &fetched.signatures_at,
                );
                let evidence = serde_json::to_vec(&fetched.signatures)
                    .map_err(|e| fail(format!("signatures: {e}")))?;
                (signed_by, Some(evidence))
            }
            _ => {
                let signature_path = config.signature_path();
                let signature = read_signature(&signature_path).map_err(fail)?;
                let signed_by = config
                    .policy
                    .check(&bytes, signature.as_deref(), &signature_path);
                (signed_by, signature)
            }
        };
        let signed_by = signed_by
            .map_err(|why| fail(format!("signature: {why}")))?
            .map(|key| format!("{key:?}"));
        // A setting or secret file may appear or be fixed later (a token
        // written by an agent): worth retrying.
        let retry = |e: crate::spec::ResolveError| LoadError::retryable(config, e.to_string());
        let settings = config.resolve_settings().map_err(retry)?;
        let secrets = config.resolve_secrets().map_err(retry)?;
        let tls = crate::outbound::TlsFiles::read(&config.outbound)
            .map_err(|reason| LoadError::retryable(config, reason))?;

        let fingerprint = fingerprint(&sha256, signature.as_deref(), config, &settings, &secrets)
            .map_err(fail)?;
        let origin = Origin {
            component: match pulled {
                Some((reference, _)) => PathBuf::from(reference.text()),
                None => config.component.clone(),
            },
            sha256,
            fingerprint,
            identity: crate::identity::Identity::read(&bytes),
            signed_by,
            stale: pulled.and_then(|(_, fetched)| fetched.stale.clone()),
        };
        Ok(Prepared {
            bytes,
            origin,
            settings,
            secrets,
            tls,
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
    /// Whether trying again later may succeed without a new component: the
    /// failure was in something outside it (a secret or settings file, TLS
    /// files, `init` reaching its backend). A component that does not
    /// compile, link or match its pin fails the same way every time.
    pub retryable: bool,
}

impl LoadError {
    fn fatal(config: &ProviderConfig, reason: String) -> LoadError {
        LoadError {
            provider: config.name.clone(),
            path: config.component.clone(),
            reason,
            retryable: false,
        }
    }

    fn retryable(config: &ProviderConfig, reason: String) -> LoadError {
        LoadError {
            retryable: true,
            ..LoadError::fatal(config, reason)
        }
    }
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
    quota: Arc<InstanceQuota>,
    memory_cap: usize,
    cpu_budget: Duration,
    call_timeout: Duration,
    calls_per_instance: u64,
    /// Instances between calls, most recently used last. Each holds its
    /// quota permit, so there are never more than the quota allows.
    idle: Mutex<Vec<Instance>>,
    origin: Origin,
    /// Trap diagnostics are logged at most this often.
    trap_log: kmsgate_core::log_limit::LogLimit,
}

/// When a call must end, and whether that is its caller's deadline.
#[derive(Clone, Copy)]
struct Until {
    at: Instant,
    callers: bool,
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
    /// Its place in the provider's quota; given back when it drops.
    permit: Permit,
}

impl WasmProvider {
    /// Reads, compiles and links the component, resolves its settings and
    /// secrets, and runs its `init`. A backend that is merely unavailable
    /// does not stop the load (it may come up later); anything else does.
    pub async fn load(
        runtime: &Runtime,
        config: &ProviderConfig,
    ) -> Result<WasmProvider, LoadError> {
        WasmProvider::build(runtime, config, Prepared::read_off_runtime(config).await?).await
    }

    /// Compiles (or takes from the cache), links and inits `prepared`.
    pub async fn build(
        runtime: &Runtime,
        config: &ProviderConfig,
        prepared: Prepared,
    ) -> Result<WasmProvider, LoadError> {
        let fail = |reason: String| LoadError::fatal(config, reason);
        let retry = |reason: String| LoadError::retryable(config, reason);
        let Prepared {
            bytes,
            origin,
            settings,
            secrets,
            tls,
        } = prepared;
        // Before compiling, which takes seconds for a large component.
        crate::imports::check(&bytes).map_err(fail)?;
        let (component, source) = runtime
            .cache
            .get_or_compile(&runtime.engine, &origin.sha256, bytes)
            .await
            .map_err(fail)?;
        tracing::debug!(provider = %config.name, sha256 = %origin.sha256, ?source, "component ready");
        let not_fitting = |e: wasmtime::Error| {
            fail(format!(
                "does not fit the kmsgate:provider world: {e:#}; {}",
                crate::imports::offered()
            ))
        };
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
            max_queued: batch.max_queued as usize,
        });
        let outbound = OutboundSettings::from_config(
            &config.name,
            &config.outbound,
            &config.secrets,
            secrets,
            tls,
            &config.auth,
        )
        .and_then(OutboundClient::new)
        .map_err(retry)?;
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
            quota: runtime.quota(&config.name, limits),
            memory_cap: (limits.memory_mib << 20) as usize,
            cpu_budget: Duration::from_millis(limits.cpu_ms),
            call_timeout: Duration::from_millis(limits.call_timeout_ms),
            calls_per_instance: limits.calls_per_instance,
            idle: Mutex::new(Vec::new()),
            origin,
            trap_log: kmsgate_core::log_limit::LogLimit::default(),
        };
        match provider.init().await {
            Ok(()) => {}
            Err(ProviderError::Unavailable(why)) => {
                tracing::warn!(provider = %provider.name, "backend unavailable at load: {why}");
            }
            Err(error) => return Err(retry(format!("init failed: {error}"))),
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

    /// A provider whose credential the host could not obtain is not
    /// healthy, whatever its guest says (it may not have needed the
    /// credential for its status), and the detail says why.
    fn with_credentials(&self, mut status: ProviderStatus) -> ProviderStatus {
        for credential in self.shared.outbound.auth_statuses() {
            if credential.state == "failed" {
                status.healthy = false;
                status.detail = kmsgate_core::sanitize::clean(
                    &format!("auth {}: {}", credential.name, credential.detail),
                    kmsgate_core::sanitize::MAX_DETAIL,
                );
                break;
            }
        }
        status
    }

    async fn init(&self) -> Result<(), ProviderError> {
        let (until, meter) = self.begin(Call::CONTROL);
        self.bounded(until, &meter, async {
            let Acquired::Permit(permit) = self
                .quota
                .acquire(Lane::Control, until.at, || None::<Instance>)
                .await?
            else {
                unreachable!("no idle instance is offered");
            };
            let Instance { mut store, kms, .. } = self.instantiate(permit, &meter).await?;
            let result = kms.call_init(&mut store).await;
            // `init` is a check, not a warm-up: its instance is not kept.
            match result {
                Ok(returned) => returned.map_err(Into::into),
                Err(trap) => Err(self.classify(&store, trap)),
            }
        })
        .await
    }

    /// A call's deadline (its caller's, or `limits.call_timeout_ms` from
    /// now if sooner) and its clock.
    fn begin(&self, call: Call) -> (Until, Arc<CallMeter>) {
        let limit = Instant::now() + self.call_timeout;
        let until = match call.deadline {
            Some(deadline) if deadline < limit => Until {
                at: deadline,
                callers: true,
            },
            _ => Until {
                at: limit,
                callers: false,
            },
        };
        (until, Arc::new(CallMeter::default()))
    }

    /// An instance for one call: an idle one if there is one, else a new
    /// one, once the quota allows (waiting no later than `until`). Either
    /// way its CPU budget starts now.
    async fn check_out(
        &self,
        call: Call,
        meter: &Arc<CallMeter>,
        until: Instant,
    ) -> Result<Instance, ProviderError> {
        let lane = if call.control {
            Lane::Control
        } else {
            Lane::Call
        };
        let take_idle = || self.idle.lock().expect("idle instances lock").pop();
        let mut instance = match self.quota.acquire(lane, until, take_idle).await? {
            Acquired::Idle(instance) => instance,
            Acquired::Permit(permit) => {
                let instance = self.instantiate(permit, meter).await?;
                // Creating the instance (bounded by the budget on its own;
                // for a large component most of a first call) is not the
                // call's work: its budget starts now. The wall-clock limit
                // still covers both.
                meter.restart();
                instance
            }
        };
        meter.started();
        instance.store.data_mut().begin_call(meter.clone());
        instance.store.set_epoch_deadline(1);
        instance.calls += 1;
        Ok(instance)
    }

    /// Keeps an instance whose call returned, if it may serve another, and
    /// wakes the calls waiting for one. Instances of the host's own lane
    /// are never kept (their permits are few).
    fn check_in(&self, instance: Instance) {
        let grown = instance
            .store
            .data()
            .limiter
            .memory_used()
            .saturating_sub(instance.memory_at_start);
        if instance.permit.lane == Lane::Control
            || instance.calls >= self.calls_per_instance
            || grown > REUSE_MEMORY_GROWTH
        {
            return;
        }
        self.idle
            .lock()
            .expect("idle instances lock")
            .push(instance);
        self.quota.parked();
    }

    /// A fresh store, limited and with its CPU budget armed, and an instance
    /// in it.
    async fn instantiate(
        &self,
        mut permit: Permit,
        meter: &Arc<CallMeter>,
    ) -> Result<Instance, ProviderError> {
        let limiter = SandboxLimiter::new(self.memory_cap, self.quota.clone());
        let state = HostState::new(self.shared.clone(), limiter, meter.clone());
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|state| &mut state.limiter);
        let budget = self.cpu_budget;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |context| {
            if context.data().meter.running() > budget {
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
        let memory_at_start = store.data().limiter.memory_used();
        permit.instantiated(memory_at_start);
        Ok(Instance {
            memory_at_start,
            store,
            kms,
            kms_batch,
            calls: 0,
            permit,
        })
    }

    /// Settles a call: flattens its two channels (trap or `kms-error`) into
    /// one, and hands the instance back only if the guest returned.
    fn finish<T, U>(
        &self,
        instance: Instance,
        result: wasmtime::Result<Result<T, crate::bindings::KmsError>>,
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
        if error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
        {
            return ProviderError::Busy(format!("the daemon's instance pool is full: {error}"));
        }
        let trapped = match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                return ProviderError::CpuBudgetExceeded(self.cpu_budget.as_millis() as u64);
            }
            Some(trap) => ProviderError::Trapped(trap.to_string()),
            // The message can carry names from the component's own name
            // section: provider-supplied text.
            None => ProviderError::Trapped(kmsgate_core::sanitize::clean(
                &error.to_string(),
                kmsgate_core::sanitize::MAX_MESSAGE,
            )),
        };
        self.log_trap(store, &error, &trapped);
        trapped
    }

    /// The operator's view of a trap: what the guest last wrote to stdout
    /// and stderr in the call (its panic message or traceback) and the
    /// Wasm backtrace, with function names where the component has them.
    /// Neither goes to the caller. At most one entry every few seconds: a
    /// provider could trap on every call.
    fn log_trap(&self, store: &Store<HostState>, error: &wasmtime::Error, trapped: &ProviderError) {
        if !self.trap_log.allow() {
            return;
        }
        let output = store
            .data()
            .output
            .last_lines(TRAP_OUTPUT_LINES)
            .join(" | ");
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|backtrace| {
                let frames: Vec<String> = backtrace
                    .frames()
                    .iter()
                    .take(TRAP_FRAMES)
                    .map(|frame| {
                        let name = frame.func_name().unwrap_or("?");
                        kmsgate_core::sanitize::clean(name, 200)
                    })
                    .collect();
                frames.join(" <- ")
            })
            .unwrap_or_default();
        tracing::warn!(provider = %self.name, %output, %backtrace, "{trapped}");
    }

    /// Runs `work` on the call's clock until `until`. Out of time, it says
    /// what the call was doing: still waiting for an instance (busy);
    /// waiting on its backend past `limits.call_timeout_ms` (unavailable:
    /// the backend is slow by the operator's own measure); anything else,
    /// the caller's own deadline included, timed out. (A caller with a short
    /// deadline must not be able to declare a backend down.) Dropping a
    /// wasmtime future mid-call is safe; the store goes with it.
    async fn bounded<T>(
        &self,
        until: Until,
        meter: &CallMeter,
        work: impl Future<Output = Result<T, ProviderError>>,
    ) -> Result<T, ProviderError> {
        let started = Instant::now();
        match tokio::time::timeout_at(until.at.into(), metered(meter, work)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                let ms = started.elapsed().as_millis();
                Err(if !meter.has_started() {
                    ProviderError::Busy(format!("no instance came free within {ms} ms"))
                } else if meter.awaiting_backend() && !until.callers {
                    ProviderError::Unavailable(format!(
                        "the backend did not answer within {ms} ms (limits.call_timeout_ms)"
                    ))
                } else {
                    let limit = if until.callers {
                        TimeLimit::Caller
                    } else {
                        TimeLimit::CallTimeout
                    };
                    ProviderError::TimedOut(ms as u64, limit)
                })
            }
        }
    }
}

#[async_trait]
impl KmsProvider for WasmProvider {
    async fn status(&self) -> Result<ProviderStatus, ProviderError> {
        let call = Call::CONTROL;
        let (until, meter) = self.begin(call);
        self.bounded(until, &meter, async {
            let mut instance = self.check_out(call, &meter, until.at).await?;
            let result = instance.kms.call_status(&mut instance.store).await;
            self.finish(instance, result)
        })
        .await
        .map(|status| self.with_credentials(status))
    }

    fn credentials(&self) -> Vec<CredentialStatus> {
        self.shared.outbound.auth_statuses()
    }

    async fn encrypt(
        &self,
        call: Call,
        uid: &str,
        key_id: &str,
        plaintext: &Plaintext,
    ) -> Result<Encrypted, ProviderError> {
        let (until, meter) = self.begin(call);
        self.bounded(until, &meter, async {
            let mut instance = self.check_out(call, &meter, until.at).await?;
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
        call: Call,
        uid: &str,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &Annotations,
    ) -> Result<Plaintext, ProviderError> {
        let (until, meter) = self.begin(call);
        self.bounded(until, &meter, async {
            let mut instance = self.check_out(call, &meter, until.at).await?;
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

    fn usage(&self) -> Usage {
        Usage {
            instances: self.quota.in_use() as u64,
            queued: self.quota.queued() as u64,
            memory_bytes: self.quota.memory_used() as u64,
        }
    }

    async fn decrypt_batch(&self, call: Call, items: Vec<DecryptItem>) -> BatchResult {
        let (until, meter) = self.begin(call);
        self.bounded(until, &meter, async {
            let mut instance = self.check_out(call, &meter, until.at).await?;
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
            let results: Vec<Result<Vec<u8>, crate::bindings::KmsError>> =
                self.finish(instance, result)?;
            Ok(results
                .into_iter()
                .map(|result| result.map(Plaintext::new).map_err(Into::into))
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> ProviderConfig {
        toml::from_str(toml_text).unwrap()
    }

    fn of(config: &ProviderConfig) -> String {
        fingerprint("digest", None, config, &[], &HashMap::new()).unwrap()
    }

    #[test]
    fn the_fingerprint_comes_from_parsed_values_not_their_debug() {
        let text = r#"
            name = "p"
            component = "p.wasm"
            settings = { key = "alpha", key-id = "k1" }
            limits = { cpu_ms = 200 }
        "#;
        let config = parse(text);
        // The same values, written another way.
        let rewritten = parse(
            r#"
            component = "p.wasm"   # a comment
            name = "p"
            [limits]
            cpu_ms = 200
            [settings]
            key-id = "k1"
            key = "alpha"
            "#,
        );
        assert_eq!(of(&config), of(&rewritten));

        // `Debug` redacts a literal setting to its length: two configs it
        // shows alike are still two providers.
        let same_length = parse(&text.replace("alpha", "omega"));
        assert_eq!(format!("{config:?}"), format!("{same_length:?}"));
        assert_ne!(of(&config), of(&same_length));

        let mut limits = config.clone();
        limits.limits.cpu_ms = 201;
        assert_ne!(of(&config), of(&limits));
        let other_component = fingerprint("other", None, &config, &[], &HashMap::new()).unwrap();
        assert_ne!(of(&config), other_component);
        // A new signature, or a changed trust list, checks it again.
        let signed = fingerprint("digest", Some(b"sig"), &config, &[], &HashMap::new()).unwrap();
        assert_ne!(of(&config), signed);
        let mut required = config.clone();
        required.policy.required = true;
        assert_ne!(of(&config), of(&required));
    }

    #[test]
    fn resolved_settings_and_secrets_are_part_of_the_fingerprint() {
        let config = parse("name = \"p\"\ncomponent = \"p.wasm\"");
        let settings = |value: &str| vec![("key".to_owned(), value.to_owned())];
        let secrets =
            |value: &str| HashMap::from([("token".to_owned(), Secret::new(value.into()))]);
        let base = fingerprint("d", None, &config, &settings("a"), &secrets("t1")).unwrap();
        assert_ne!(
            base,
            fingerprint("d", None, &config, &settings("b"), &secrets("t1")).unwrap()
        );
        assert_ne!(
            base,
            fingerprint("d", None, &config, &settings("a"), &secrets("t2")).unwrap()
        );
        // Field boundaries count: "ab" + "" is not "a" + "b".
        let split = |key: &str, value: &str| vec![(key.to_owned(), value.to_owned())];
        assert_ne!(
            fingerprint("d", None, &config, &split("ab", ""), &HashMap::new()).unwrap(),
            fingerprint("d", None, &config, &split("a", "b"), &HashMap::new()).unwrap()
        );
    }
}
