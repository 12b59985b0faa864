//! Prometheus metrics, in the OpenMetrics text format, named by the
//! ecosystem's conventions (`kmsgate_` prefix, `_total`, `_seconds`).
//! Key ids appear only as hashes; provider labels only for loaded providers,
//! so a caller cannot grow the label set with made-up key ids.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::slot::Slot;
use kmsgate_core::error::{KmsError, ProviderError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    api: &'static str,
    method: &'static str,
    provider: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    api: &'static str,
    method: &'static str,
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderInfoLabels {
    provider: String,
    sha256: String,
    /// The name and version the component claims; empty if it does not.
    component_name: String,
    component_version: String,
    /// The trusted key that signed it (its name); empty if unsigned.
    signed_by: String,
    /// First 16 hex digits of the SHA-256 of the namespaced key id.
    key_id_hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabels {
    provider: String,
    auth: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type LatencyFamily = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// All of kmsgate's metrics. Cheap to share (`Arc<Metrics>`).
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    traps: Family<ProviderLabels, Counter>,
    deadlines: Family<ProviderLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    healthy: Family<ProviderLabels, Gauge>,
    provider_info: Family<ProviderInfoLabels, Gauge>,
    stale: Family<ProviderLabels, Gauge>,
    decrypt_batches: Family<ProviderLabels, Counter>,
    decrypt_batch_items: Family<ProviderLabels, Counter>,
    decrypts_abandoned: Family<ProviderLabels, Counter>,
    breaker_open: Family<ProviderLabels, Gauge>,
    breaker_opened: Family<ProviderLabels, Counter>,
    fast_failures: Family<ProviderLabels, Counter>,
    instances: Family<ProviderLabels, Gauge>,
    queued_calls: Family<ProviderLabels, Gauge>,
    sandbox_memory: Family<ProviderLabels, Gauge>,
    credential_expiry: Family<CredentialLabels, Gauge>,
    credential_valid: Family<CredentialLabels, Gauge>,
    credential_logins: Family<CredentialLabels, Counter>,
    credential_renewals: Family<CredentialLabels, Counter>,
    credential_failures: Family<CredentialLabels, Counter>,
    in_flight: Gauge,
}

/// Counts a request in flight until dropped.
pub struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn latency_histogram() -> Histogram {
    // 100 µs to ~3.3 s.
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("kmsgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "KMS requests by API version, method, provider and gRPC code",
            requests.clone(),
        );
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "KMS request latency",
            latency.clone(),
        );
        let traps = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_traps",
            "Provider calls that trapped (including memory cap hits)",
            traps.clone(),
        );
        let deadlines = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_deadline_exceeded",
            "Provider calls stopped by the CPU budget or call timeout",
            deadlines.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Reloads by result (success, failure)",
            reloads.clone(),
        );
        let healthy = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_healthy",
            "1 when the provider's backend is healthy",
            healthy.clone(),
        );
        let stale = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_stale",
            "1 when an oci:// provider serves the copy pulled before because its registry could not be reached",
            stale.clone(),
        );
        let provider_info = Family::<ProviderInfoLabels, Gauge>::default();
        registry.register(
            "provider_info",
            "The serving version of each provider (always 1)",
            provider_info.clone(),
        );
        let decrypt_batches = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "decrypt_batches",
            "Provider calls that carried two or more coalesced decrypts",
            decrypt_batches.clone(),
        );
        let decrypt_batch_items = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "decrypt_batch_items",
            "Decrypts carried by those calls",
            decrypt_batch_items.clone(),
        );
        let decrypts_abandoned = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "decrypts_abandoned",
            "Queued decrypts dropped unsent because their caller gave up or its deadline passed",
            decrypts_abandoned.clone(),
        );
        let breaker_open = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_breaker_open",
            "1 while the provider's backend is known to be down and calls fail fast",
            breaker_open.clone(),
        );
        let breaker_opened = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_breaker_opened",
            "Times the provider's circuit breaker opened",
            breaker_opened.clone(),
        );
        let fast_failures = Family::<ProviderLabels, Counter>::default();
        registry.register(
            "provider_fast_failures",
            "Calls failed at once (UNAVAILABLE) while the breaker was open",
            fast_failures.clone(),
        );
        let instances = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_instances",
            "Sandboxed instances alive for callers (busy or idle)",
            instances.clone(),
        );
        let queued_calls = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_queued_calls",
            "Calls waiting for a free instance",
            queued_calls.clone(),
        );
        let sandbox_memory = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "provider_sandbox_memory_bytes",
            "Guest memory of the provider's live instances",
            sandbox_memory.clone(),
        );
        let credential_expiry = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "provider_credential_expiry_seconds",
            "Seconds left on the credential the host holds for a provider's auth; -1 when it has no end or none is held",
            credential_expiry.clone(),
        );
        let credential_valid = Family::<CredentialLabels, Gauge>::default();
        registry.register(
            "provider_credential_valid",
            "1 while the host holds a credential for the auth, else 0",
            credential_valid.clone(),
        );
        let credential_logins = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "provider_credential_logins",
            "Logins of the auth (a lookup of a given token counts as one), since its provider version loaded",
            credential_logins.clone(),
        );
        let credential_renewals = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "provider_credential_renewals",
            "Renewals of the auth's credential, since its provider version loaded",
            credential_renewals.clone(),
        );
        let credential_failures = Family::<CredentialLabels, Counter>::default();
        registry.register(
            "provider_credential_failures",
            "Failed logins and renewals of the auth, since its provider version loaded",
            credential_failures.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Encrypt and Decrypt calls being served",
            in_flight.clone(),
        );
        let build_info = Family::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "kmsgate's version (always 1)", build_info);
        Metrics {
            registry,
            requests,
            latency,
            traps,
            deadlines,
            reloads,
            healthy,
            provider_info,
            stale,
            decrypt_batches,
            decrypt_batch_items,
            decrypts_abandoned,
            breaker_open,
            breaker_opened,
            fast_failures,
            instances,
            queued_calls,
            sandbox_memory,
            credential_expiry,
            credential_valid,
            credential_logins,
            credential_renewals,
            credential_failures,
            in_flight,
        }
    }

    /// Marks an Encrypt or Decrypt as in flight while the guard lives.
    pub fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Records one KMS request. `provider` must be a loaded provider's name
    /// (or "" when there is none), never caller input.
    pub fn observe(
        &self,
        api: &'static str,
        method: &'static str,
        provider: &str,
        result: Result<(), &KmsError>,
        elapsed: Duration,
    ) {
        let code = match result {
            Ok(()) => tonic::Code::Ok,
            Err(error) => crate::grpc::status::code(error),
        };
        self.requests
            .get_or_create(&RequestLabels {
                api,
                method,
                provider: provider.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                api,
                method,
                provider: provider.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        if let Err(KmsError::Provider {
            provider, error, ..
        }) = result
        {
            let labels = ProviderLabels {
                provider: provider.clone(),
            };
            match error {
                ProviderError::Trapped(_) | ProviderError::MemoryExhausted(_) => {
                    self.traps.get_or_create(&labels).inc();
                }
                ProviderError::CpuBudgetExceeded(_) | ProviderError::TimedOut(..) => {
                    self.deadlines.get_or_create(&labels).inc();
                }
                _ => {}
            }
        }
    }

    pub fn reloaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// The metrics in OpenMetrics text, with provider gauges read from
    /// `slots` now.
    pub fn render(&self, slots: &[Arc<Slot>]) -> String {
        self.provider_info.clear();
        for slot in slots {
            let health = slot.health();
            let provider = slot.name().to_string();
            self.healthy
                .get_or_create(&ProviderLabels {
                    provider: provider.clone(),
                })
                .set(i64::from(health.healthy));
            // The slot counts across swaps; the counters mirror it.
            let labels = ProviderLabels {
                provider: provider.clone(),
            };
            let stats = slot.batch_stats();
            self.decrypt_batches
                .get_or_create(&labels)
                .inner()
                .store(stats.batches.load(Ordering::Relaxed), Ordering::Relaxed);
            self.decrypt_batch_items
                .get_or_create(&labels)
                .inner()
                .store(stats.items.load(Ordering::Relaxed), Ordering::Relaxed);
            self.decrypts_abandoned
                .get_or_create(&labels)
                .inner()
                .store(stats.abandoned.load(Ordering::Relaxed), Ordering::Relaxed);
            let breaker = slot.breaker();
            self.breaker_open.get_or_create(&labels).set(i64::from(
                breaker.state() != crate::breaker::BreakerState::Closed,
            ));
            self.breaker_opened
                .get_or_create(&labels)
                .inner()
                .store(breaker.opened.load(Ordering::Relaxed), Ordering::Relaxed);
            self.fast_failures.get_or_create(&labels).inner().store(
                breaker.fast_failures.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            let usage = slot.serving().provider.usage();
            self.instances
                .get_or_create(&labels)
                .set(usage.instances as i64);
            self.queued_calls
                .get_or_create(&labels)
                .set(usage.queued as i64);
            self.sandbox_memory
                .get_or_create(&labels)
                .set(usage.memory_bytes as i64);
            for credential in slot.serving().provider.credentials() {
                let labels = CredentialLabels {
                    provider: provider.clone(),
                    auth: credential.name,
                    kind: credential.kind,
                };
                let left = credential
                    .expires_in
                    .map_or(-1, |left| left.as_secs() as i64);
                self.credential_expiry.get_or_create(&labels).set(left);
                self.credential_valid
                    .get_or_create(&labels)
                    .set(i64::from(credential.state == "valid"));
                for (family, value) in [
                    (&self.credential_logins, credential.logins),
                    (&self.credential_renewals, credential.renewals),
                    (&self.credential_failures, credential.failures),
                ] {
                    family
                        .get_or_create(&labels)
                        .inner()
                        .store(value, Ordering::Relaxed);
                }
            }
            let key_id_hash = health
                .key_id
                .map(|id| key_id_hash(&provider, &id))
                .unwrap_or_default();
            let origin = slot.serving().origin;
            self.stale
                .get_or_create(&ProviderLabels {
                    provider: provider.clone(),
                })
                .set(i64::from(origin.stale.is_some()));
            let identity = origin.identity.clone().unwrap_or_default();
            self.provider_info
                .get_or_create(&ProviderInfoLabels {
                    provider,
                    sha256: origin.sha256,
                    component_name: identity.name,
                    component_version: identity.version,
                    signed_by: origin
                        .signed_by
                        .as_deref()
                        .and_then(|signer| signer.split(' ').next())
                        .unwrap_or_default()
                        .to_owned(),
                    key_id_hash,
                })
                .set(1);
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// How key ids are shown where no credentials guard the view: the first
/// 16 hex digits of the SHA-256 of the namespaced key id.
pub fn key_id_hash(provider: &str, key_id: &str) -> String {
    kmsgate_wasm::integrity::sha256_hex(
        kmsgate_core::key_id::namespaced(provider, key_id).as_bytes(),
    )[..16]
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_limit_hits_are_counted() {
        let metrics = Metrics::new();
        metrics.observe("v2", "encrypt", "p", Ok(()), Duration::from_millis(2));
        let trapped = KmsError::Provider {
            provider: "p".into(),
            action: kmsgate_core::error::Action::Encrypt,
            error: ProviderError::Trapped("unreachable".into()),
        };
        metrics.observe(
            "v2",
            "encrypt",
            "p",
            Err(&trapped),
            Duration::from_millis(2),
        );
        metrics.reloaded(false);
        let text = metrics.render(&[]);
        assert!(
            text.contains(
                r#"kmsgate_requests_total{api="v2",method="encrypt",provider="p",code="Ok"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"kmsgate_provider_traps_total{provider="p"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kmsgate_reloads_total{result="failure"} 1"#),
            "{text}"
        );
        assert!(text.contains("kmsgate_build_info"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }
}
