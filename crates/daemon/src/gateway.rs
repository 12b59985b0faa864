//! The gateway: routes KMS calls to providers, keeps each provider's status
//! fresh in the background, and holds providers to the apiserver's limits.
//!
//! Key ids are namespaced: the apiserver sees `<provider>/<provider key id>`
//! (for example `vault/kube:v3`), so Decrypt goes to the provider that
//! encrypted, whichever provider is primary now.
//!
//! Providers can be swapped and added while serving ([`crate::reload`]);
//! a call holds the version it started on until it finishes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::slot::Slot;
use kmsgate_core::error::KmsError;
use kmsgate_core::key_id;
use kmsgate_core::limits::{self, Annotations};
use kmsgate_core::secret::Plaintext;

/// What the apiserver's Status call returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayStatus {
    /// "ok", or why not.
    pub healthz: String,
    /// The namespaced key id Encrypt uses; empty until the primary provider
    /// has reported one.
    pub key_id: String,
}

/// The result of Encrypt, ready for the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub ciphertext: Vec<u8>,
    /// Namespaced: `<provider>/<provider key id>`.
    pub key_id: String,
    pub annotations: Annotations,
}

/// Routes KMS calls. Shared as `Arc<Gateway>`; dropping the last one stops
/// the background refreshers.
pub struct Gateway {
    slots: RwLock<HashMap<String, Arc<Slot>>>,
    primary: RwLock<Arc<Slot>>,
    status_interval: Duration,
    /// One per provider, by name.
    refreshers: Mutex<HashMap<String, JoinHandle<()>>>,
}

impl Gateway {
    /// The `primary` slot, which encrypts, and the `others`, by name. Does
    /// not start the refreshers: see [`Gateway::start`].
    pub fn new(primary: Slot, others: Vec<Slot>, status_interval: Duration) -> Gateway {
        let primary = Arc::new(primary);
        let slots: HashMap<String, Arc<Slot>> = others
            .into_iter()
            .map(Arc::new)
            .chain([primary.clone()])
            .map(|slot| (slot.name().to_string(), slot))
            .collect();
        Gateway {
            slots: RwLock::new(slots),
            primary: RwLock::new(primary),
            status_interval,
            refreshers: Mutex::new(HashMap::new()),
        }
    }

    /// Checks every provider's status once, concurrently, then starts one
    /// background refresher per provider.
    pub async fn start(&self) {
        self.refresh_all().await;
        for slot in self.slots() {
            self.spawn_refresher(slot);
        }
    }

    pub fn primary(&self) -> Arc<Slot> {
        self.primary.read().expect("primary lock poisoned").clone()
    }

    pub fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.slots
            .read()
            .expect("slots lock poisoned")
            .get(name)
            .cloned()
    }

    /// All providers, sorted by name.
    pub fn slots(&self) -> Vec<Arc<Slot>> {
        let mut slots: Vec<_> = self
            .slots
            .read()
            .expect("slots lock poisoned")
            .values()
            .cloned()
            .collect();
        slots.sort_by(|a, b| a.name().cmp(b.name()));
        slots
    }

    /// Adds a provider (already checked by its canary) and starts its
    /// refresher.
    pub fn add(&self, slot: Slot) -> Arc<Slot> {
        let slot = Arc::new(slot);
        self.slots
            .write()
            .expect("slots lock poisoned")
            .insert(slot.name().to_string(), slot.clone());
        self.spawn_refresher(slot.clone());
        slot
    }

    /// Makes `name` the encrypting provider. It must exist.
    pub fn set_primary(&self, name: &str) -> bool {
        match self.slot(name) {
            Some(slot) => {
                *self.primary.write().expect("primary lock poisoned") = slot;
                true
            }
            None => false,
        }
    }

    /// Refreshes every provider's status once, concurrently.
    pub async fn refresh_all(&self) {
        let mut refreshes = tokio::task::JoinSet::new();
        for slot in self.slots() {
            refreshes.spawn(async move { slot.refresh().await });
        }
        while refreshes.join_next().await.is_some() {}
    }

    /// Removes provider `name` and stops its refresher; calls in flight on
    /// it finish. The primary cannot be removed.
    pub fn remove(&self, name: &str) -> bool {
        if self.primary().name() == name {
            return false;
        }
        let removed = self
            .slots
            .write()
            .expect("slots lock poisoned")
            .remove(name)
            .is_some();
        if let Some(refresher) = self
            .refreshers
            .lock()
            .expect("refreshers lock poisoned")
            .remove(name)
        {
            refresher.abort();
        }
        removed
    }

    fn spawn_refresher(&self, slot: Arc<Slot>) {
        let interval = self.status_interval;
        let name = slot.name().to_string();
        let handle = tokio::spawn(async move {
            loop {
                // While the backend is down, check as often as the
                // breaker's cool-down says (never in a tight loop).
                let wait = slot.breaker().retry_in().map_or(interval, |retry| {
                    retry.clamp(Duration::from_millis(100), interval)
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = slot.refresh_now.notified() => {}
                }
                slot.refresh().await;
            }
        });
        self.refreshers
            .lock()
            .expect("refreshers lock poisoned")
            .insert(name, handle);
    }

    /// The apiserver's Status: from the cache, no backend round trip.
    pub fn status(&self) -> GatewayStatus {
        let primary = self.primary();
        let health = primary.health();
        let key_id = health
            .key_id
            .as_deref()
            .map(|id| key_id::namespaced(primary.name(), id))
            .unwrap_or_default();
        let healthz = if health.healthy && !key_id.is_empty() {
            "ok".to_string()
        } else {
            format!("kmsgate provider {}: {}", primary.name(), health.detail)
        };
        GatewayStatus { healthz, key_id }
    }

    /// `deadline`: when the caller needs the answer by, if it said.
    pub async fn encrypt(
        &self,
        uid: &str,
        plaintext: &Plaintext,
        deadline: Option<Instant>,
    ) -> Result<Sealed, KmsError> {
        limits::check_plaintext(plaintext.as_bytes()).map_err(KmsError::InvalidRequest)?;
        let slot = self.primary();
        let encrypted = slot.encrypt(uid, plaintext, deadline).await?;
        Ok(Sealed {
            ciphertext: encrypted.ciphertext,
            key_id: key_id::namespaced(slot.name(), &encrypted.key_id),
            annotations: encrypted.annotations,
        })
    }

    pub async fn decrypt(
        &self,
        uid: &str,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &Annotations,
        deadline: Option<Instant>,
    ) -> Result<Plaintext, KmsError> {
        limits::check_key_id(key_id).map_err(KmsError::InvalidRequest)?;
        limits::check_ciphertext(ciphertext).map_err(KmsError::InvalidRequest)?;
        limits::check_annotations(annotations).map_err(KmsError::InvalidRequest)?;
        let (name, provider_key_id) =
            key_id::split(key_id).ok_or_else(|| KmsError::UnknownProvider(key_id.to_string()))?;
        let slot = self
            .slot(name)
            .ok_or_else(|| KmsError::UnknownProvider(name.to_string()))?;
        slot.decrypt(uid, provider_key_id, ciphertext, annotations, deadline)
            .await
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for (_, handle) in self
            .refreshers
            .get_mut()
            .expect("refreshers lock poisoned")
            .drain()
        {
            handle.abort();
        }
    }
}

impl Gateway {
    /// The loaded provider a namespaced key id routes to, if any: a label
    /// for logs and metrics that callers cannot invent.
    pub fn provider_of(&self, key_id: &str) -> Option<String> {
        let (name, _) = key_id::split(key_id)?;
        self.slot(name).map(|slot| slot.name().to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tonic::Code;

    use super::*;
    use crate::slot::{Origin, Serving};
    use kmsgate_core::error::ProviderError;
    use kmsgate_core::kms::{Call, Encrypted, KmsProvider, ProviderStatus};

    /// An in-process provider: "encrypts" by reversing, answers what the
    /// test sets.
    struct Fake {
        status: Mutex<Result<ProviderStatus, ProviderError>>,
        ciphertext_len: Option<usize>,
    }

    impl Fake {
        fn healthy(key_id: &str) -> Arc<Fake> {
            Arc::new(Fake {
                status: Mutex::new(Ok(ProviderStatus {
                    key_id: key_id.into(),
                    healthy: true,
                    detail: "fine".into(),
                })),
                ciphertext_len: None,
            })
        }

        fn set_status(&self, status: Result<ProviderStatus, ProviderError>) {
            *self.status.lock().unwrap() = status;
        }
    }

    #[async_trait]
    impl KmsProvider for Fake {
        async fn status(&self) -> Result<ProviderStatus, ProviderError> {
            self.status.lock().unwrap().clone()
        }

        async fn encrypt(
            &self,
            _: Call,
            _: &str,
            key_id: &str,
            plaintext: &Plaintext,
        ) -> Result<Encrypted, ProviderError> {
            let mut ciphertext: Vec<u8> = plaintext.as_bytes().iter().rev().copied().collect();
            if let Some(len) = self.ciphertext_len {
                ciphertext.resize(len, 0);
            }
            Ok(Encrypted {
                ciphertext,
                key_id: key_id.into(),
                annotations: Annotations::new(),
            })
        }

        async fn decrypt(
            &self,
            _: Call,
            _: &str,
            key_id: &str,
            ciphertext: &[u8],
            _: &Annotations,
        ) -> Result<Plaintext, ProviderError> {
            if key_id != "k1" {
                return Err(ProviderError::UnknownKey(key_id.into()));
            }
            Ok(Plaintext::new(ciphertext.iter().rev().copied().collect()))
        }
    }

    async fn gateway(fake: Arc<Fake>) -> Gateway {
        let serving = Serving::new(
            fake,
            Origin {
                component: "fake.wasm".into(),
                sha256: String::new(),
                fingerprint: String::new(),
                identity: None,
                signed_by: None,
                stale: None,
            },
            1,
        );
        let gateway = Gateway::new(
            Slot::new("fake".into(), serving),
            Vec::new(),
            Duration::from_secs(60),
        );
        gateway.refresh_all().await;
        gateway
    }

    #[tokio::test]
    async fn round_trip_with_namespaced_key_id() {
        let gateway = gateway(Fake::healthy("k1")).await;
        assert_eq!(
            gateway.status(),
            GatewayStatus {
                healthz: "ok".into(),
                key_id: "fake/k1".into()
            }
        );
        let sealed = gateway
            .encrypt("u1", &Plaintext::new(b"dek".to_vec()), None)
            .await
            .unwrap();
        assert_eq!(sealed.key_id, "fake/k1");
        let plaintext = gateway
            .decrypt(
                "u2",
                &sealed.key_id,
                &sealed.ciphertext,
                &sealed.annotations,
                None,
            )
            .await
            .unwrap();
        assert_eq!(plaintext.as_bytes(), b"dek");
    }

    #[tokio::test]
    async fn bad_input_gets_clear_codes() {
        let gateway = gateway(Fake::healthy("k1")).await;
        let empty = gateway
            .encrypt("u", &Plaintext::new(vec![]), None)
            .await
            .unwrap_err();
        assert_eq!(crate::grpc::status::code(&empty), Code::InvalidArgument);
        let none = Annotations::new();
        let cases = [
            ("", b"x".as_slice(), Code::InvalidArgument),
            ("fake/k1", b"".as_slice(), Code::InvalidArgument),
            ("nobody/k1", b"x".as_slice(), Code::NotFound),
            ("no-separator", b"x".as_slice(), Code::NotFound),
            ("fake/k9", b"x".as_slice(), Code::NotFound),
        ];
        for (key_id, ciphertext, code) in cases {
            let error = gateway
                .decrypt("u", key_id, ciphertext, &none, None)
                .await
                .unwrap_err();
            assert_eq!(
                crate::grpc::status::code(&error),
                code,
                "{key_id:?}: {error}"
            );
        }
        let oversize = vec![1; limits::MAX_CIPHERTEXT_BYTES + 1];
        let error = gateway
            .decrypt("u", "fake/k1", &oversize, &none, None)
            .await
            .unwrap_err();
        assert_eq!(crate::grpc::status::code(&error), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn oversize_ciphertext_from_a_provider_is_a_contract_error() {
        let fake = Arc::new(Fake {
            ciphertext_len: Some(2000),
            ..Arc::into_inner(Fake::healthy("k1")).unwrap()
        });
        let gateway = gateway(fake).await;
        let error = gateway
            .encrypt("u", &Plaintext::new(b"dek".to_vec()), None)
            .await
            .unwrap_err();
        assert!(
            matches!(
                &error,
                KmsError::Provider {
                    error: ProviderError::Contract(_),
                    ..
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn outage_keeps_the_key_id_and_reports_unhealthy() {
        let fake = Fake::healthy("k1");
        let gateway = gateway(fake.clone()).await;
        fake.set_status(Err(ProviderError::Unavailable("connection refused".into())));
        gateway.refresh_all().await;
        let status = gateway.status();
        assert_eq!(status.key_id, "fake/k1");
        assert!(
            status.healthz.contains("connection refused"),
            "{}",
            status.healthz
        );
        fake.set_status(Ok(ProviderStatus {
            key_id: "k2".into(),
            healthy: true,
            detail: "rotated".into(),
        }));
        gateway.refresh_all().await;
        assert_eq!(
            gateway.status(),
            GatewayStatus {
                healthz: "ok".into(),
                key_id: "fake/k2".into()
            }
        );
    }

    #[tokio::test]
    async fn encrypt_before_any_key_id_is_unavailable() {
        let fake = Fake::healthy("k1");
        fake.set_status(Err(ProviderError::Unavailable("down".into())));
        let gateway = gateway(fake).await;
        let error = gateway
            .encrypt("u", &Plaintext::new(b"dek".to_vec()), None)
            .await
            .unwrap_err();
        assert_eq!(crate::grpc::status::code(&error), Code::Unavailable);
        assert_eq!(gateway.status().key_id, "");
    }
}
