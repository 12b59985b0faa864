//! The gateway: routes KMS calls to providers, keeps each provider's status
//! fresh in the background, and holds providers to the apiserver's limits.
//!
//! Key ids are namespaced: the apiserver sees `<provider>/<provider key id>`
//! (for example `vault/kube:v3`), so Decrypt goes to the provider that
//! encrypted, whichever provider is primary now.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::{Action, KmsError, ProviderError};
use crate::kms::KmsProvider;
use crate::limits::{self, Annotations};
use crate::secret::Plaintext;

/// Separates the provider name from the provider's own key id.
const KEY_ID_SEPARATOR: char = '/';

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

/// One provider and its cached health.
pub struct Slot {
    name: String,
    provider: Arc<dyn KmsProvider>,
    health: RwLock<Health>,
    /// Wakes the refresher early, after a call saw the backend unavailable.
    refresh_now: Notify,
}

impl Slot {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn health(&self) -> Health {
        self.health.read().expect("health lock poisoned").clone()
    }

    fn set_health(&self, health: Health) {
        *self.health.write().expect("health lock poisoned") = health;
    }

    /// Asks the provider for its status once and records the answer.
    pub async fn refresh(&self) {
        let previous = self.health();
        let next = match self.provider.status().await.and_then(|s| {
            check_provider_key_id(&self.name, &s.key_id)?;
            Ok(s)
        }) {
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
        self.set_health(next);
    }

    /// Marks the backend down at once (without waiting for the next poll)
    /// and asks the refresher to check again.
    fn saw_unavailable(&self, error: &ProviderError) {
        if let ProviderError::Unavailable(_) = error {
            let mut health = self.health.write().expect("health lock poisoned");
            if health.healthy {
                tracing::warn!(provider = %self.name, "provider unhealthy: {error}");
            }
            health.healthy = false;
            health.detail = error.to_string();
            drop(health);
            self.refresh_now.notify_one();
        }
    }

    fn error(&self, action: Action, error: ProviderError) -> KmsError {
        self.saw_unavailable(&error);
        KmsError::Provider {
            provider: self.name.clone(),
            action,
            error,
        }
    }
}

/// Routes KMS calls. Cheap to share (`Arc<Gateway>`).
pub struct Gateway {
    slots: HashMap<String, Arc<Slot>>,
    primary: Arc<Slot>,
}

impl Gateway {
    /// `providers` by name; `primary` must be one of them.
    pub fn new(providers: Vec<(String, Arc<dyn KmsProvider>)>, primary: &str) -> Gateway {
        let slots: HashMap<String, Arc<Slot>> = providers
            .into_iter()
            .map(|(name, provider)| {
                let slot = Slot {
                    name: name.clone(),
                    provider,
                    health: RwLock::new(Health {
                        key_id: None,
                        healthy: false,
                        detail: "status not yet checked".into(),
                    }),
                    refresh_now: Notify::new(),
                };
                (name, Arc::new(slot))
            })
            .collect();
        let primary = slots
            .get(primary)
            .cloned()
            .expect("the config validation guarantees the primary exists");
        Gateway { slots, primary }
    }

    pub fn primary(&self) -> &Arc<Slot> {
        &self.primary
    }

    pub fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        self.slots.values()
    }

    /// Refreshes every provider's status once, concurrently.
    pub async fn refresh_all(&self) {
        let mut refreshes = tokio::task::JoinSet::new();
        for slot in self.slots.values() {
            let slot = slot.clone();
            refreshes.spawn(async move { slot.refresh().await });
        }
        while refreshes.join_next().await.is_some() {}
    }

    /// Starts one background refresher per provider. The handles abort the
    /// refreshers when dropped.
    pub fn spawn_refreshers(&self, interval: Duration) -> Refreshers {
        let handles = self
            .slots
            .values()
            .map(|slot| {
                let slot = slot.clone();
                tokio::spawn(async move {
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(interval) => {}
                            _ = slot.refresh_now.notified() => {}
                        }
                        slot.refresh().await;
                    }
                })
            })
            .collect();
        Refreshers(handles)
    }

    /// The apiserver's Status: from the cache, no backend round trip.
    pub fn status(&self) -> GatewayStatus {
        let health = self.primary.health();
        let key_id = health
            .key_id
            .as_deref()
            .map(|id| namespaced(&self.primary.name, id))
            .unwrap_or_default();
        let healthz = if health.healthy && !key_id.is_empty() {
            "ok".to_string()
        } else {
            format!("kmsgate provider {}: {}", self.primary.name, health.detail)
        };
        GatewayStatus { healthz, key_id }
    }

    pub async fn encrypt(&self, uid: &str, plaintext: &Plaintext) -> Result<Sealed, KmsError> {
        limits::check_plaintext(plaintext.as_bytes()).map_err(KmsError::InvalidRequest)?;
        let slot = &self.primary;
        let key_id = slot.health().key_id.ok_or_else(|| KmsError::NotReady {
            provider: slot.name.clone(),
            reason: slot.health().detail,
        })?;
        let encrypted = slot
            .provider
            .encrypt(uid, &key_id, plaintext)
            .await
            .map_err(|e| slot.error(Action::Encrypt, e))?;
        let contract =
            |message: String| slot.error(Action::Encrypt, ProviderError::Contract(message));
        if encrypted.key_id != key_id {
            return Err(contract(format!(
                "encrypted with key id {:?}, asked for {key_id:?}",
                encrypted.key_id
            )));
        }
        limits::check_ciphertext(&encrypted.ciphertext).map_err(contract)?;
        limits::check_annotations(&encrypted.annotations).map_err(contract)?;
        Ok(Sealed {
            ciphertext: encrypted.ciphertext,
            key_id: namespaced(&slot.name, &key_id),
            annotations: encrypted.annotations,
        })
    }

    pub async fn decrypt(
        &self,
        uid: &str,
        key_id: &str,
        ciphertext: &[u8],
        annotations: &Annotations,
    ) -> Result<Plaintext, KmsError> {
        limits::check_key_id(key_id).map_err(KmsError::InvalidRequest)?;
        limits::check_ciphertext(ciphertext).map_err(KmsError::InvalidRequest)?;
        limits::check_annotations(annotations).map_err(KmsError::InvalidRequest)?;
        let (name, provider_key_id) = key_id
            .split_once(KEY_ID_SEPARATOR)
            .filter(|(_, inner)| !inner.is_empty())
            .ok_or_else(|| KmsError::UnknownProvider(key_id.to_string()))?;
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| KmsError::UnknownProvider(name.to_string()))?;
        slot.provider
            .decrypt(uid, provider_key_id, ciphertext, annotations)
            .await
            .map_err(|e| slot.error(Action::Decrypt, e))
    }
}

fn namespaced(provider: &str, key_id: &str) -> String {
    format!("{provider}{KEY_ID_SEPARATOR}{key_id}")
}

/// A provider's own key id must leave room for the prefix.
fn check_provider_key_id(provider: &str, key_id: &str) -> Result<(), ProviderError> {
    if key_id.is_empty() {
        return Err(ProviderError::Contract(
            "status reported an empty key id".into(),
        ));
    }
    limits::check_key_id(&namespaced(provider, key_id)).map_err(ProviderError::Contract)
}

/// Background status refreshers; aborted on drop.
pub struct Refreshers(Vec<JoinHandle<()>>);

impl Drop for Refreshers {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tonic::Code;

    use super::*;
    use crate::kms::{Encrypted, ProviderStatus};

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
        let gateway = Gateway::new(vec![("fake".into(), fake as Arc<dyn KmsProvider>)], "fake");
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
            .encrypt("u1", &Plaintext::new(b"dek".to_vec()))
            .await
            .unwrap();
        assert_eq!(sealed.key_id, "fake/k1");
        let plaintext = gateway
            .decrypt(
                "u2",
                &sealed.key_id,
                &sealed.ciphertext,
                &sealed.annotations,
            )
            .await
            .unwrap();
        assert_eq!(plaintext.as_bytes(), b"dek");
    }

    #[tokio::test]
    async fn bad_input_gets_clear_codes() {
        let gateway = gateway(Fake::healthy("k1")).await;
        let empty = gateway
            .encrypt("u", &Plaintext::new(vec![]))
            .await
            .unwrap_err();
        assert_eq!(empty.code(), Code::InvalidArgument);
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
                .decrypt("u", key_id, ciphertext, &none)
                .await
                .unwrap_err();
            assert_eq!(error.code(), code, "{key_id:?}: {error}");
        }
        let oversize = vec![1; limits::MAX_CIPHERTEXT_BYTES + 1];
        let error = gateway
            .decrypt("u", "fake/k1", &oversize, &none)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn oversize_ciphertext_from_a_provider_is_a_contract_error() {
        let fake = Arc::new(Fake {
            ciphertext_len: Some(2000),
            ..Arc::into_inner(Fake::healthy("k1")).unwrap()
        });
        let gateway = gateway(fake).await;
        let error = gateway
            .encrypt("u", &Plaintext::new(b"dek".to_vec()))
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
            .encrypt("u", &Plaintext::new(b"dek".to_vec()))
            .await
            .unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(gateway.status().key_id, "");
    }
}
