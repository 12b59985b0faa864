//! Hot swap: re-read the config, and for every provider whose component,
//! settings or secrets changed, build the new version beside the old one,
//! prove it with a canary, then switch atomically. One code path for every
//! trigger (a file change, SIGHUP, `kmsgate reload`).
//!
//! The canary, in order: the new version's status is healthy with a valid
//! key id; it round-trips a random probe; and it decrypts, to the same
//! plaintext digest, a recent ciphertext of every key id the old version
//! served (plus a probe the old version encrypts just before the swap). So
//! a swap can never strand data. On any failure the old version keeps
//! serving, and the reason is logged, counted and shown by
//! `kmsgate providers`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::config::{Config, ProviderConfig};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::slot::{Health, Sample, Serving, Slot};
use kmsgate_core::kms::{Call, DecryptItem, KmsProvider};
use kmsgate_core::secret::Plaintext;
use kmsgate_core::{key_id, limits};
use kmsgate_proto::admin::{ProviderInfo, ProvidersResponse};
use kmsgate_wasm::{Prepared, Runtime, WasmProvider};

/// The uid the canary's calls carry in logs.
const CANARY_UID: &str = "kmsgate-canary";

/// What one reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Providers now serving a new version (or newly added).
    pub swapped: Vec<String>,
    /// Providers whose new version was refused, with why; the old version
    /// keeps serving.
    pub refused: Vec<(String, String)>,
    /// Why the reload as a whole failed (nothing changed).
    pub error: Option<String>,
    /// Providers removed, as the operator asked.
    pub removed: Vec<String>,
}

impl ReloadReport {
    pub fn failed(&self) -> bool {
        self.error.is_some() || !self.refused.is_empty()
    }

    /// One line for operators: what went wrong, or empty.
    pub fn problems(&self) -> String {
        let mut parts: Vec<String> = self.error.iter().cloned().collect();
        parts.extend(
            self.refused
                .iter()
                .map(|(name, why)| format!("provider {name}: {why}")),
        );
        parts.join("; ")
    }
}

/// Counters and the last failure, for operators and metrics.
#[derive(Debug, Default)]
pub struct ReloadStats {
    pub reloads_total: AtomicU64,
    pub failures_total: AtomicU64,
    last_error: RwLock<Option<String>>,
}

impl ReloadStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.read().expect("stats lock poisoned").clone()
    }
}

pub struct Reloader {
    runtime: Runtime,
    gateway: Arc<Gateway>,
    metrics: Arc<Metrics>,
    /// The config in force; the mutex also serialises reloads.
    current: tokio::sync::Mutex<Config>,
    pub stats: ReloadStats,
}

impl Reloader {
    pub fn new(
        config: Config,
        runtime: Runtime,
        gateway: Arc<Gateway>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            runtime,
            gateway,
            metrics,
            current: tokio::sync::Mutex::new(config),
            stats: ReloadStats::default(),
        }
    }

    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// What serves now: the one providers view, for the admin gRPC service
    /// (`kmsgate providers`) and the admin HTTP port.
    pub fn view(&self) -> ProvidersResponse {
        let primary = self.gateway.primary();
        let providers = self
            .gateway
            .slots()
            .iter()
            .map(|slot| {
                let serving = slot.serving();
                let health = slot.health();
                let usage = serving.provider.usage();
                let identity = serving.origin.identity.as_ref();
                ProviderInfo {
                    name: slot.name().to_string(),
                    primary: slot.name() == primary.name(),
                    component: serving.origin.component.display().to_string(),
                    sha256: serving.origin.sha256.clone(),
                    loaded_at_unix_ms: serving
                        .loaded_at
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or_default(),
                    generation: serving.generation,
                    healthy: health.healthy,
                    key_id_hash: health
                        .key_id
                        .as_ref()
                        .map(|id| crate::metrics::key_id_hash(slot.name(), id))
                        .unwrap_or_default(),
                    key_id: health
                        .key_id
                        .map(|id| key_id::namespaced(slot.name(), &id))
                        .unwrap_or_default(),
                    detail: health.detail,
                    last_reload_error: slot.last_reload_error().unwrap_or_default(),
                    batches_decrypts: serving.provider.batching().is_some(),
                    decrypt_batches: slot.batch_stats().batches.load(Ordering::Relaxed),
                    decrypt_batch_items: slot.batch_stats().items.load(Ordering::Relaxed),
                    decrypts_abandoned: slot.batch_stats().abandoned.load(Ordering::Relaxed),
                    breaker: slot.breaker().state().as_str().to_string(),
                    fast_failures: slot.breaker().fast_failures.load(Ordering::Relaxed),
                    instances: usage.instances,
                    queued_calls: usage.queued,
                    sandbox_memory_bytes: usage.memory_bytes,
                    component_name: identity.map(|i| i.name.clone()).unwrap_or_default(),
                    component_version: identity.map(|i| i.version.clone()).unwrap_or_default(),
                    component_sdk: identity.map(|i| i.sdk.clone()).unwrap_or_default(),
                    signed_by: serving.origin.signed_by.clone().unwrap_or_default(),
                    stale: serving.origin.stale.clone().unwrap_or_default(),
                    credentials: serving
                        .provider
                        .credentials()
                        .into_iter()
                        .map(credential_info)
                        .collect(),
                }
            })
            .collect();
        ProvidersResponse {
            providers,
            reloads_total: self.stats.reloads_total.load(Ordering::Relaxed),
            reload_failures_total: self.stats.failures_total.load(Ordering::Relaxed),
            last_reload_error: self.stats.last_error().unwrap_or_default(),
        }
    }

    /// The files whose change should trigger a reload: the config file,
    /// every component, and every file a setting or secret reads.
    pub async fn watched_files(&self) -> Vec<PathBuf> {
        self.current.lock().await.watched_files()
    }

    /// Re-reads the config file and swaps what changed. `trigger` is for
    /// the log.
    pub async fn reload(&self, trigger: &str) -> ReloadReport {
        self.reload_removing(trigger, &[]).await
    }

    /// [`Reloader::reload`], also removing the providers named in `remove`
    /// that the new config no longer has (see
    /// [`Config::reloadable_to`]); only `kmsgate reload --remove` asks.
    pub async fn reload_removing(&self, trigger: &str, remove: &[String]) -> ReloadReport {
        let mut current = self.current.lock().await;
        tracing::info!(trigger, ?remove, "reload started");
        let report = self.reload_locked(&mut current, remove).await;
        self.stats.reloads_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.reloaded(!report.failed());
        let problems = report.problems();
        if report.failed() {
            self.stats.failures_total.fetch_add(1, Ordering::Relaxed);
            tracing::error!(trigger, swapped = ?report.swapped, "reload refused, previous versions keep serving: {problems}");
            *self.stats.last_error.write().expect("stats lock poisoned") = Some(problems);
        } else {
            tracing::info!(trigger, swapped = ?report.swapped, "reload done");
            *self.stats.last_error.write().expect("stats lock poisoned") = None;
        }
        report
    }

    async fn reload_locked(&self, current: &mut Config, remove: &[String]) -> ReloadReport {
        let mut report = ReloadReport::default();
        let Some(path) = current.path.clone() else {
            report.error = Some("the daemon was not started from a config file".into());
            return report;
        };
        let loaded =
            kmsgate_core::files::off_runtime("the config", move || Config::load(&path)).await;
        let next = match loaded {
            Ok(Ok(next)) => next,
            Ok(Err(error)) => {
                report.error = Some(error.to_string());
                return report;
            }
            Err(why) => {
                report.error = Some(why);
                return report;
            }
        };
        let removed = match current.reloadable_to(&next, remove) {
            Ok(removed) => removed,
            Err(why) => {
                report.error = Some(why);
                return report;
            }
        };

        for config in &next.providers {
            let result = match self.gateway.slot(&config.name) {
                Some(slot) => self.swap(&slot, config).await,
                None => self.add(config).await,
            };
            match result {
                Ok(true) => report.swapped.push(config.name.clone()),
                Ok(false) => {}
                Err(why) => {
                    if let Some(slot) = self.gateway.slot(&config.name) {
                        slot.set_reload_error(Some(why.clone()));
                    }
                    report.refused.push((config.name.clone(), why));
                }
            }
        }

        let primary = next.primary.as_str();
        if self.gateway.primary().name() != primary {
            if self.gateway.set_primary(primary) {
                tracing::info!(primary, "primary provider changed");
            } else {
                report.refused.push((
                    primary.to_string(),
                    "cannot become primary: it failed to load".into(),
                ));
            }
        }
        // Last, once the new primary serves: a provider that was primary
        // goes only if another took its place.
        for name in removed {
            if self.gateway.remove(&name) {
                tracing::info!(provider = %name, "provider removed");
                report.removed.push(name);
            } else {
                report
                    .refused
                    .push((name, "cannot be removed while it is the primary".into()));
            }
        }
        *current = next;
        report
    }

    /// Swaps `slot` to the provider `config` describes, if anything changed.
    async fn swap(
        &self,
        slot: &Slot,
        config: &crate::config::ProviderConfig,
    ) -> Result<bool, String> {
        let prepared = Prepared::read_off_runtime(config)
            .await
            .map_err(|e| e.reason)?;
        if prepared.origin().fingerprint == slot.serving().origin.fingerprint {
            return Ok(false);
        }
        let origin = prepared.origin().clone();
        let candidate = WasmProvider::build(&self.runtime, config, prepared)
            .await
            .map_err(|e| e.reason)?;
        // A fresh sample from the version serving now, so the canary checks
        // it even when no traffic has flowed yet. (One that never loaded
        // has nothing to hand over.)
        if slot.serving().is_loaded() {
            let mut probe = [0u8; 32];
            getrandom::fill(&mut probe)
                .map_err(|e| format!("no randomness for the canary: {e}"))?;
            if let Err(error) = slot
                .encrypt(CANARY_UID, &Plaintext::new(probe.to_vec()), None)
                .await
            {
                tracing::warn!(provider = %slot.name(), "the serving version could not encrypt a canary probe: {error}");
            }
        }
        let health = canary(slot.name(), &candidate, &slot.samples()).await?;
        slot.swap(serving(candidate, origin), health);
        tracing::info!(provider = %slot.name(), sha256 = %slot.serving().origin.sha256, generation = slot.serving().generation, "provider swapped");
        Ok(true)
    }

    /// Tries again to load every provider that could not load at start
    /// (see [`crate::slot::Serving::not_loaded`]). Returns how many are
    /// still not loaded.
    pub async fn retry_not_loaded(&self) -> usize {
        let current = self.current.lock().await;
        let mut pending = 0;
        for slot in self.gateway.slots() {
            if slot.serving().is_loaded() {
                continue;
            }
            let Some(config) = current.providers.iter().find(|p| p.name == slot.name()) else {
                continue;
            };
            match self.swap(&slot, config).await {
                Ok(_) => tracing::info!(provider = %slot.name(), "provider loaded on retry"),
                Err(why) => {
                    tracing::warn!(provider = %slot.name(), "provider still not loaded: {why}");
                    slot.set_reload_error(Some(why));
                    pending += 1;
                }
            }
        }
        pending
    }

    async fn add(&self, config: &crate::config::ProviderConfig) -> Result<bool, String> {
        let prepared = Prepared::read_off_runtime(config)
            .await
            .map_err(|e| e.reason)?;
        let origin = prepared.origin().clone();
        let candidate = WasmProvider::build(&self.runtime, config, prepared)
            .await
            .map_err(|e| e.reason)?;
        let health = canary(&config.name, &candidate, &[]).await?;
        let slot = Slot::new(config.name.clone(), serving(candidate, origin));
        slot.swap_health(health);
        self.gateway.add(slot);
        tracing::info!(provider = %config.name, "provider added");
        Ok(true)
    }
}

/// A built version as a slot serves it: generation 1 for a provider the
/// reload adds, as at start; a swap numbers it after the one it replaces.
fn serving(provider: WasmProvider, origin: kmsgate_wasm::Origin) -> Serving {
    Serving::new(Arc::new(provider), origin, 1)
}

/// What `kmsgate check` found for one provider.
pub enum Checked {
    /// Built, and the swap canary passed: what serves after a reload.
    Passed(Health),
    /// Built, but its backend did not answer well enough to run the canary
    /// (the status, or why it failed); a swap would be refused until it does.
    BackendDown(String),
}

/// `kmsgate check` for one provider: builds it as a start or a reload does
/// and, when its backend answers, runs the canary a swap runs (without
/// samples: no version serves to hand any over), so that `check` and a
/// swap agree on what may serve. Also returns where the loaded version
/// came from (its digest, signer, registry state), to show.
pub async fn check(
    runtime: &Runtime,
    config: &ProviderConfig,
) -> Result<(Checked, kmsgate_wasm::Origin), String> {
    let candidate = WasmProvider::load(runtime, config)
        .await
        .map_err(|e| e.reason)?;
    let origin = candidate.origin().clone();
    let checked = match candidate.status().await {
        Ok(status) if status.healthy => canary(&config.name, &candidate, &[])
            .await
            .map(Checked::Passed),
        Ok(status) => Ok(Checked::BackendDown(format!(
            "key id {:?}, unhealthy: {}",
            // Not yet checked: the canary checks it.
            kmsgate_core::sanitize::clean(&status.key_id, kmsgate_core::sanitize::MAX_DETAIL),
            status.detail
        ))),
        Err(kmsgate_core::error::ProviderError::Unavailable(why)) => {
            Ok(Checked::BackendDown(format!("backend unavailable: {why}")))
        }
        Err(error) => Err(format!("status failed: {error}")),
    }?;
    Ok((checked, origin))
}

/// Proves `candidate` can take over from a version that produced `samples`.
/// Returns the health it saw, to serve from the moment of the swap.
pub async fn canary(
    name: &str,
    candidate: &dyn KmsProvider,
    samples: &[Sample],
) -> Result<Health, String> {
    let status = candidate
        .status()
        .await
        .map_err(|e| format!("canary: status failed: {e}"))?;
    key_id::check_reported(name, &status.key_id).map_err(|e| format!("canary: {e}"))?;
    if !status.healthy {
        return Err(format!("canary: status is unhealthy: {}", status.detail));
    }

    let mut probe = [0u8; 32];
    getrandom::fill(&mut probe).map_err(|e| format!("no randomness for the canary: {e}"))?;
    let probe = Plaintext::new(probe.to_vec());
    let sealed = candidate
        .encrypt(Call::CONTROL, CANARY_UID, &status.key_id, &probe)
        .await
        .map_err(|e| format!("canary: encrypt failed: {e}"))?;
    if sealed.key_id != status.key_id {
        return Err(format!(
            "canary: encrypt used key id {:?}, status says {:?}",
            kmsgate_core::sanitize::clean(&sealed.key_id, kmsgate_core::sanitize::MAX_DETAIL),
            status.key_id
        ));
    }
    limits::check_ciphertext(&sealed.ciphertext).map_err(|e| format!("canary: {e}"))?;
    limits::check_annotations(&sealed.annotations).map_err(|e| format!("canary: {e}"))?;
    let opened = candidate
        .decrypt(
            Call::CONTROL,
            CANARY_UID,
            &sealed.key_id,
            &sealed.ciphertext,
            &sealed.annotations,
        )
        .await
        .map_err(|e| format!("canary: decrypting its own ciphertext failed: {e}"))?;
    if opened != probe {
        return Err("canary: its own ciphertext decrypted to different bytes".into());
    }

    for sample in samples {
        let opened = candidate
            .decrypt(
                Call::CONTROL,
                CANARY_UID,
                &sample.key_id,
                &sample.ciphertext,
                &sample.annotations,
            )
            .await
            .map_err(|e| {
                format!(
                    "canary: cannot decrypt a recent ciphertext of key id {:?}: {e}",
                    sample.key_id
                )
            })?;
        if <[u8; 32]>::from(Sha256::digest(opened.as_bytes())) != sample.plaintext_sha256 {
            return Err(format!(
                "canary: a recent ciphertext of key id {:?} decrypts to different bytes",
                sample.key_id
            ));
        }
    }
    if candidate.batching().is_some() {
        batch_canary(candidate, &sealed, &probe, samples).await?;
    }
    Ok(Health {
        key_id: Some(status.key_id),
        healthy: true,
        detail: status.detail,
    })
}

/// For a provider that batches decrypts: its own ciphertext, every sample,
/// and one ciphertext that must fail, in one `decrypt_batch`, each answer
/// checked on its own. Storms go through this path, so a version that gets
/// it wrong must not serve.
async fn batch_canary(
    candidate: &dyn KmsProvider,
    sealed: &kmsgate_core::kms::Encrypted,
    probe: &Plaintext,
    samples: &[Sample],
) -> Result<(), String> {
    let item = |key_id: &str,
                ciphertext: &[u8],
                annotations: &kmsgate_core::limits::Annotations| DecryptItem {
        uid: CANARY_UID.into(),
        key_id: key_id.into(),
        ciphertext: ciphertext.to_vec(),
        annotations: annotations.clone(),
    };
    // The probe's ciphertext with a byte in the middle flipped: tampered.
    // (Not an end byte: some encodings ignore bits there.)
    let mut tampered = sealed.ciphertext.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    let mut items = vec![
        item(&sealed.key_id, &sealed.ciphertext, &sealed.annotations),
        item(&sealed.key_id, &tampered, &sealed.annotations),
    ];
    items.extend(
        samples
            .iter()
            .map(|s| item(&s.key_id, &s.ciphertext, &s.annotations)),
    );
    let count = items.len();
    let results = candidate
        .decrypt_batch(Call::CONTROL, items)
        .await
        .map_err(|e| format!("canary: decrypt-batch failed: {e}"))?;
    if results.len() != count {
        return Err(format!(
            "canary: decrypt-batch returned {} results for {count} items",
            results.len()
        ));
    }
    let mut results = results.into_iter();
    match results.next() {
        Some(Ok(opened)) if opened == *probe => {}
        _ => return Err("canary: decrypt-batch got its own ciphertext wrong".into()),
    }
    if let Some(Ok(_)) = results.next() {
        return Err("canary: decrypt-batch accepted a tampered ciphertext".into());
    }
    for (sample, result) in samples.iter().zip(results) {
        let digest = result.map(|opened| <[u8; 32]>::from(Sha256::digest(opened.as_bytes())));
        if digest.as_ref().ok() != Some(&sample.plaintext_sha256) {
            return Err(format!(
                "canary: decrypt-batch got a recent ciphertext of key id {:?} wrong",
                sample.key_id
            ));
        }
    }
    Ok(())
}

/// A credential's state for the providers view: never its value.
fn credential_info(
    status: kmsgate_core::kms::CredentialStatus,
) -> kmsgate_proto::admin::CredentialInfo {
    kmsgate_proto::admin::CredentialInfo {
        name: status.name,
        kind: status.kind.to_owned(),
        state: status.state.to_owned(),
        expires_in_seconds: status
            .expires_in
            .map(|left| left.as_secs() as i64)
            .unwrap_or(-1),
        logins: status.logins,
        renewals: status.renewals,
        failures: status.failures,
        detail: status.detail,
    }
}
