//! One provider inside the gateway: the version serving now (swappable),
//! its cached health, and a few recent ciphertexts the next version must
//! still decrypt.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use crate::breaker::{Breaker, Outcome};
use crate::coalesce::{BatchStats, Coalescer};
use kmsgate_core::error::{Action, KmsError, ProviderError};
use kmsgate_core::key_id;
use kmsgate_core::kms::{Call, DecryptItem, KmsProvider};
use kmsgate_core::limits::{self, Annotations};
use kmsgate_core::secret::Plaintext;
pub use kmsgate_wasm::Origin;

/// The version of a provider that serves calls now.
#[derive(Clone)]
pub struct Serving {
    pub provider: Arc<dyn KmsProvider>,
    pub origin: Origin,
    pub loaded_at: SystemTime,
    /// 1 at start, +1 per successful swap.
    pub generation: u64,
    /// Set by the slot when the provider batches its decrypts.
    coalescer: Option<Arc<Coalescer>>,
}

impl Serving {
    pub fn new(provider: Arc<dyn KmsProvider>, origin: Origin, generation: u64) -> Serving {
        Serving {
            provider,
            origin,
            loaded_at: SystemTime::now(),
            generation,
            coalescer: None,
        }
    }

    /// A stand-in for a provider that could not load yet (its token was
    /// revoked, its backend timed out at `init`): every call fails with
    /// UNAVAILABLE saying why, until a retry or a reload swaps the real one
    /// in. Generation 0.
    pub fn not_loaded(component: PathBuf, reason: String) -> Serving {
        let origin = Origin {
            component,
            sha256: String::new(),
            fingerprint: String::new(),
            identity: None,
            signed_by: None,
            stale: None,
        };
        Serving::new(Arc::new(NotLoaded { reason }), origin, 0)
    }

    /// Whether a real provider serves (not a [`Serving::not_loaded`] one).
    pub fn is_loaded(&self) -> bool {
        !self.origin.fingerprint.is_empty()
    }
}

/// See [`Serving::not_loaded`].
struct NotLoaded {
    reason: String,
}

impl NotLoaded {
    fn error(&self) -> ProviderError {
        ProviderError::Unavailable(format!("not loaded yet, retrying: {}", self.reason))
    }
}

#[async_trait::async_trait]
impl KmsProvider for NotLoaded {
    async fn status(&self) -> Result<kmsgate_core::kms::ProviderStatus, ProviderError> {
        Err(self.error())
    }

    async fn encrypt(
        &self,
        _: Call,
        _: &str,
        _: &str,
        _: &Plaintext,
    ) -> Result<kmsgate_core::kms::Encrypted, ProviderError> {
        Err(self.error())
    }

    async fn decrypt(
        &self,
        _: Call,
        _: &str,
        _: &str,
        _: &[u8],
        _: &Annotations,
    ) -> Result<Plaintext, ProviderError> {
        Err(self.error())
    }
}

/// The last known state of one provider's backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The provider's own key id, once it has reported one. Kept through
    /// outages, so Decrypt routing and the apiserver's view stay stable.
    pub key_id: Option<String>,
    pub healthy: bool,
    /// For operators; never contains secrets.
    pub detail: String,
}

/// A ciphertext this provider returned recently, with a digest of its
/// plaintext (never the plaintext itself), so a swap canary can check that
/// the next version decrypts it to the same bytes.
#[derive(Debug, Clone)]
pub struct Sample {
    pub key_id: String,
    pub ciphertext: Vec<u8>,
    pub annotations: Annotations,
    pub plaintext_sha256: [u8; 32],
}

/// A health report with the generation of the version it describes. A
/// status answer from a version already swapped out must not overwrite the
/// health of the version that replaced it (its key id would route calls to
/// the old key).
struct Observed {
    generation: u64,
    health: Health,
}

/// How many distinct key ids keep a sample (one each, newest wins).
const MAX_SAMPLES: usize = 16;

pub struct Slot {
    name: String,
    serving: RwLock<Serving>,
    health: RwLock<Observed>,
    /// Wakes the refresher early, after a call saw the backend unavailable.
    pub(crate) refresh_now: Notify,
    samples: Mutex<VecDeque<Sample>>,
    last_reload_error: RwLock<Option<String>>,
    batch_stats: Arc<BatchStats>,
    /// Fails calls fast while the backend is known to be down; kept across
    /// swaps (the backend is the same).
    breaker: Breaker,
}

impl Slot {
    pub fn new(name: String, serving: Serving) -> Slot {
        let batch_stats = Arc::new(BatchStats::default());
        let generation = serving.generation;
        Slot {
            name,
            serving: RwLock::new(with_coalescer(serving, &batch_stats)),
            batch_stats,
            health: RwLock::new(Observed {
                generation,
                health: Health {
                    key_id: None,
                    healthy: false,
                    detail: "status not yet checked".into(),
                },
            }),
            refresh_now: Notify::new(),
            samples: Mutex::new(VecDeque::new()),
            last_reload_error: RwLock::new(None),
            breaker: Breaker::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn health(&self) -> Health {
        self.health
            .read()
            .expect("health lock poisoned")
            .health
            .clone()
    }

    pub fn serving(&self) -> Serving {
        self.serving.read().expect("serving lock poisoned").clone()
    }

    /// The provider serving now. Calls keep their `Arc`, so a swap never
    /// disturbs a call in flight: it finishes on the version it started on.
    pub fn provider(&self) -> Arc<dyn KmsProvider> {
        self.serving
            .read()
            .expect("serving lock poisoned")
            .provider
            .clone()
    }

    /// Makes `next` the serving version, with the health its canary saw.
    pub fn swap(&self, next: Serving, health: Health) {
        let mut next = with_coalescer(next, &self.batch_stats);
        let mut serving = self.serving.write().expect("serving lock poisoned");
        let generation = serving.generation + 1;
        next.generation = generation;
        *serving = next;
        drop(serving);
        *self.health.write().expect("health lock poisoned") = Observed { generation, health };
        // The canary just reached the backend.
        if self.breaker.backend_up() {
            self.log_breaker(None);
        }
        self.set_reload_error(None);
    }

    /// Sets the health a canary saw, before the slot serves.
    pub fn swap_health(&self, health: Health) {
        self.health.write().expect("health lock poisoned").health = health;
    }

    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Decrypt batches so far, across swaps.
    pub fn batch_stats(&self) -> &BatchStats {
        &self.batch_stats
    }

    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error
            .read()
            .expect("reload error lock poisoned")
            .clone()
    }

    pub fn set_reload_error(&self, error: Option<String>) {
        *self
            .last_reload_error
            .write()
            .expect("reload error lock poisoned") = error;
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("samples lock poisoned")
            .iter()
            .cloned()
            .collect()
    }

    fn record_sample(
        &self,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &Annotations,
        plaintext: &Plaintext,
    ) {
        let sample = Sample {
            key_id: key_id.to_owned(),
            ciphertext: ciphertext.to_vec(),
            annotations: annotations.clone(),
            plaintext_sha256: Sha256::digest(plaintext.as_bytes()).into(),
        };
        let mut samples = self.samples.lock().expect("samples lock poisoned");
        samples.retain(|s| s.key_id != sample.key_id);
        samples.push_back(sample);
        if samples.len() > MAX_SAMPLES {
            samples.pop_front();
        }
    }

    /// Asks the provider for its status once and records the answer, unless
    /// a swap replaced the version asked while it answered.
    pub async fn refresh(&self) {
        let (provider, generation) = {
            let serving = self.serving.read().expect("serving lock poisoned");
            (serving.provider.clone(), serving.generation)
        };
        let result = provider.status().await.and_then(|status| {
            key_id::check_reported(&self.name, &status.key_id)?;
            Ok(status)
        });
        let outcome = breaker_outcome(result.as_ref().err());
        if self.breaker.checked(outcome) {
            self.log_breaker(outcome.down());
        }
        let mut observed = self.health.write().expect("health lock poisoned");
        if observed.generation != generation {
            tracing::debug!(provider = %self.name, "status of a replaced version dropped");
            return;
        }
        let previous = &observed.health;
        let next = match result {
            Ok(status) => Health {
                key_id: Some(status.key_id),
                healthy: status.healthy,
                detail: status.detail,
            },
            Err(error) => Health {
                key_id: previous.key_id.clone(),
                healthy: false,
                detail: format!("status failed: {error}"),
            },
        };
        if next.key_id != previous.key_id && previous.key_id.is_some() {
            tracing::info!(provider = %self.name, old = ?previous.key_id, new = ?next.key_id, "key id changed (rotation)");
        }
        if next.healthy != previous.healthy {
            if next.healthy {
                tracing::info!(provider = %self.name, "provider healthy: {}", next.detail);
            } else {
                tracing::warn!(provider = %self.name, "provider unhealthy: {}", next.detail);
            }
        }
        observed.health = next;
    }

    /// Encrypts under the last key id from status, and holds the provider to
    /// the apiserver's limits.
    pub async fn encrypt(
        &self,
        uid: &str,
        plaintext: &Plaintext,
        deadline: Option<Instant>,
    ) -> Result<kmsgate_core::kms::Encrypted, KmsError> {
        let health = self.health();
        let key_id = health.key_id.ok_or_else(|| KmsError::NotReady {
            provider: self.name.clone(),
            reason: health.detail,
        })?;
        let admission = self
            .breaker
            .admit()
            .map_err(|why| self.fast_failure(Action::Encrypt, why))?;
        let result = self
            .provider()
            .encrypt(Call::caller(deadline), uid, &key_id, plaintext)
            .await;
        self.settle(admission, result.as_ref().err());
        let encrypted = result.map_err(|e| self.error(Action::Encrypt, e))?;
        let contract =
            |message: String| self.error(Action::Encrypt, ProviderError::Contract(message));
        if encrypted.key_id != key_id {
            return Err(contract(format!(
                "encrypted with key id {:?}, asked for {key_id:?}",
                kmsgate_core::sanitize::clean(
                    &encrypted.key_id,
                    kmsgate_core::sanitize::MAX_DETAIL
                )
            )));
        }
        if let Err(why) = limits::check_ciphertext(&encrypted.ciphertext) {
            // A provider whose overhead alone fits the limit is not at
            // fault: the plaintext was too long for it.
            let overhead = encrypted.ciphertext.len().saturating_sub(plaintext.len());
            return Err(if overhead < limits::MAX_CIPHERTEXT_BYTES {
                KmsError::InvalidRequest(format!(
                    "a plaintext of {} bytes encrypts to {} bytes with provider {}, over the apiserver's limit of {}",
                    plaintext.len(),
                    encrypted.ciphertext.len(),
                    self.name,
                    limits::MAX_CIPHERTEXT_BYTES
                ))
            } else {
                contract(why)
            });
        }
        limits::check_annotations(&encrypted.annotations).map_err(contract)?;
        self.record_sample(
            &key_id,
            &encrypted.ciphertext,
            &encrypted.annotations,
            plaintext,
        );
        Ok(encrypted)
    }

    pub async fn decrypt(
        &self,
        uid: &str,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &Annotations,
        deadline: Option<Instant>,
    ) -> Result<Plaintext, KmsError> {
        // The two `Arc`s only, not the whole `Serving` (its origin has
        // strings to copy).
        let (provider, coalescer) = {
            let serving = self.serving.read().expect("serving lock poisoned");
            (serving.provider.clone(), serving.coalescer.clone())
        };
        let admission = self
            .breaker
            .admit()
            .map_err(|why| self.fast_failure(Action::Decrypt, why))?;
        let result = match &coalescer {
            Some(coalescer) => {
                let item = DecryptItem {
                    uid: uid.to_string(),
                    key_id: key_id.to_string(),
                    ciphertext: ciphertext.to_vec(),
                    annotations: annotations.clone(),
                };
                coalescer.decrypt(item, deadline).await
            }
            None => {
                provider
                    .decrypt(Call::caller(deadline), uid, key_id, ciphertext, annotations)
                    .await
            }
        };
        self.settle(admission, result.as_ref().err());
        let plaintext = result.map_err(|e| self.error(Action::Decrypt, e))?;
        limits::check_plaintext(plaintext.as_bytes()).map_err(|e| {
            self.error(
                Action::Decrypt,
                ProviderError::Contract(format!("decrypt returned a {e}")),
            )
        })?;
        Ok(plaintext)
    }

    /// Tells the breaker how a call went. A backend found unavailable is
    /// marked down at once (without waiting for the next poll), and the
    /// refresher is asked to check again.
    fn settle(&self, admission: crate::breaker::Admission<'_>, error: Option<&ProviderError>) {
        if let Some(ProviderError::TimedOut(..)) = error {
            // Out of time on the caller's deadline: maybe the backend
            // hangs, maybe the caller was impatient. The status refresher
            // finds out now, with the provider's own time limits.
            self.refresh_now.notify_one();
        }
        let outcome = breaker_outcome(error);
        let down = outcome.down();
        if admission.finish(outcome) {
            self.log_breaker(down);
        }
        if let Some(why) = down {
            let mut observed = self.health.write().expect("health lock poisoned");
            let health = &mut observed.health;
            if health.healthy {
                tracing::warn!(provider = %self.name, "provider unhealthy: backend unavailable: {why}");
            }
            health.healthy = false;
            health.detail = format!("backend unavailable: {why}");
            drop(observed);
            self.refresh_now.notify_one();
        }
    }

    fn log_breaker(&self, down: Option<&str>) {
        match down {
            Some(why) => {
                tracing::warn!(provider = %self.name, "backend down, failing calls fast until it answers: {why}")
            }
            None => tracing::info!(provider = %self.name, "backend answers again"),
        }
    }

    /// A call the breaker refused: the backend is known to be down.
    fn fast_failure(&self, action: Action, why: String) -> KmsError {
        KmsError::Provider {
            provider: self.name.clone(),
            action,
            error: ProviderError::Unavailable(why),
        }
    }

    fn error(&self, action: Action, error: ProviderError) -> KmsError {
        KmsError::Provider {
            provider: self.name.clone(),
            action,
            error,
        }
    }
}

/// What a call's result says about the backend: success is up;
/// unavailability is down; anything else (a bad ciphertext the provider may
/// have refused without asking, a refused credential, a limit hit, a trap,
/// a timeout on the caller's deadline) says nothing for certain.
fn breaker_outcome(error: Option<&ProviderError>) -> Outcome<'_> {
    match error {
        None => Outcome::Up,
        Some(ProviderError::Unavailable(why)) => Outcome::Down(why),
        Some(_) => Outcome::Neutral,
    }
}

/// Gives `serving` a coalescer if its provider batches decrypts.
fn with_coalescer(mut serving: Serving, stats: &Arc<BatchStats>) -> Serving {
    serving.coalescer = serving.provider.batching().map(|batching| {
        Arc::new(Coalescer::new(
            serving.provider.clone(),
            batching,
            stats.clone(),
        ))
    });
    serving
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;

    use super::*;
    use kmsgate_core::kms::{Encrypted, ProviderStatus};

    /// A provider whose status answers with its own key id, and only once
    /// released.
    struct Gated {
        key_id: &'static str,
        asked: Notify,
        release: Notify,
    }

    impl Gated {
        fn new(key_id: &'static str) -> Arc<Gated> {
            Arc::new(Gated {
                key_id,
                asked: Notify::new(),
                release: Notify::new(),
            })
        }
    }

    #[async_trait]
    impl KmsProvider for Gated {
        async fn status(&self) -> Result<ProviderStatus, ProviderError> {
            self.asked.notify_one();
            self.release.notified().await;
            Ok(ProviderStatus {
                key_id: self.key_id.into(),
                healthy: true,
                detail: format!("status of {}", self.key_id),
            })
        }

        async fn encrypt(
            &self,
            _: Call,
            _: &str,
            key_id: &str,
            _: &Plaintext,
        ) -> Result<Encrypted, ProviderError> {
            Err(ProviderError::UnknownKey(key_id.into()))
        }

        async fn decrypt(
            &self,
            _: Call,
            _: &str,
            key_id: &str,
            _: &[u8],
            _: &Annotations,
        ) -> Result<Plaintext, ProviderError> {
            Err(ProviderError::UnknownKey(key_id.into()))
        }
    }

    fn serving(provider: Arc<Gated>) -> Serving {
        let origin = Origin {
            component: format!("{}.wasm", provider.key_id).into(),
            sha256: String::new(),
            fingerprint: provider.key_id.into(),
            identity: None,
            signed_by: None,
            stale: None,
        };
        Serving::new(provider, origin, 1)
    }

    #[tokio::test]
    async fn a_status_from_a_replaced_version_does_not_overwrite_its_successor() {
        let old = Gated::new("old");
        let slot = Arc::new(Slot::new("p".into(), serving(old.clone())));
        let refreshing = tokio::spawn({
            let slot = slot.clone();
            async move { slot.refresh().await }
        });
        // The old version is answering when the swap lands.
        old.asked.notified().await;
        let new = Gated::new("new");
        let canary_saw = Health {
            key_id: Some("new".into()),
            healthy: true,
            detail: "canary".into(),
        };
        slot.swap(serving(new.clone()), canary_saw.clone());
        old.release.notify_one();
        refreshing.await.unwrap();
        assert_eq!(slot.health(), canary_saw);

        // The serving version's own answers still land.
        new.release.notify_one();
        slot.refresh().await;
        assert_eq!(slot.health().detail, "status of new");
        assert_eq!(slot.serving().generation, 2);
    }
}
