//! The store's data for one call, and the host side of the provider's
//! imports. These impls only translate and check; the logic lives in
//! [`crate::outbound`] and plain Rust.

use std::sync::Arc;

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::{http, kmsgate, wasi};
use crate::meter::CallMeter;
use crate::outbound::OutboundClient;
use crate::quota::InstanceQuota;
use kmsgate_core::sanitize;

/// What every call of one provider shares: set when the provider loads.
pub struct ProviderShared {
    pub name: String,
    /// The settings the provider reads through `wasi:config/store`.
    pub settings: Vec<(String, String)>,
    pub outbound: OutboundClient,
}

/// A store's data: lives as long as its instance, which may serve several
/// calls (see `limits.calls_per_instance`); [`HostState::begin_call`] resets
/// the per-call parts.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    shared: Arc<ProviderShared>,
    pub limiter: SandboxLimiter,
    /// The current call's clock, read by the CPU budget's epoch callback.
    pub meter: Arc<CallMeter>,
}

impl HostState {
    pub fn new(
        shared: Arc<ProviderShared>,
        limiter: SandboxLimiter,
        meter: Arc<CallMeter>,
    ) -> Self {
        // Deny by default: no preopened directories, no environment, no
        // arguments, no stdio, and sockets off (the default socket check
        // refuses every address; TCP, UDP and name lookup are off too).
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            shared,
            limiter,
            meter,
        }
    }

    /// Starts the next call on this instance, with its own clock.
    pub fn begin_call(&mut self, meter: Arc<CallMeter>) {
        self.meter = meter;
        self.limiter.hit_memory_cap = false;
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasi::config::store::Host for HostState {
    fn get(
        &mut self,
        key: String,
    ) -> wasmtime::Result<Result<Option<String>, wasi::config::store::Error>> {
        let value = self.shared.settings.iter().find(|(k, _)| *k == key);
        Ok(Ok(value.map(|(_, v)| v.clone())))
    }

    fn get_all(
        &mut self,
    ) -> wasmtime::Result<Result<Vec<(String, String)>, wasi::config::store::Error>> {
        Ok(Ok(self.shared.settings.clone()))
    }
}

impl wasi::logging::logging::Host for HostState {
    fn log(
        &mut self,
        level: wasi::logging::logging::Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        use wasi::logging::logging::Level;
        let provider = self.shared.name.as_str();
        let message = sanitize::clean(&message, sanitize::MAX_LOG_LINE);
        let context = sanitize::clean(&context, sanitize::MAX_DETAIL);
        match level {
            Level::Trace => tracing::trace!(provider, context, "{message}"),
            Level::Debug => tracing::debug!(provider, context, "{message}"),
            Level::Info => tracing::info!(provider, context, "{message}"),
            Level::Warn => tracing::warn!(provider, context, "{message}"),
            Level::Error | Level::Critical => tracing::error!(provider, context, "{message}"),
        }
        Ok(())
    }
}

impl kmsgate::provider::types::Host for HostState {}

impl http::Host for HostState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        // While the request is out, a timeout is the backend's fault, not
        // the guest's.
        let meter = self.meter.clone();
        let result = meter
            .outbound(self.shared.outbound.send(request.into()))
            .await;
        result.map(Into::into).map_err(Into::into)
    }
}

/// Caps the total linear memory of one provider instance, and charges it
/// to the provider's quota and the daemon's budget ([`super::quota`]).
/// wasmtime's `StoreLimits` caps each memory on its own; a component can
/// have several, so this sums them.
pub struct SandboxLimiter {
    memory_cap: usize,
    memory_used: usize,
    quota: Arc<InstanceQuota>,
    /// Set when a growth was refused, to report RESOURCE_EXHAUSTED rather
    /// than a bare trap.
    pub hit_memory_cap: bool,
}

impl SandboxLimiter {
    pub fn new(memory_cap: usize, quota: Arc<InstanceQuota>) -> Self {
        SandboxLimiter {
            memory_cap,
            memory_used: 0,
            quota,
            hit_memory_cap: false,
        }
    }

    /// All linear memory of the instance, in bytes.
    pub fn memory_used(&self) -> usize {
        self.memory_used
    }
}

impl Drop for SandboxLimiter {
    fn drop(&mut self) {
        self.quota.release(self.memory_used);
    }
}

/// Caps besides memory: generous for real providers, tight for abuse.
const MAX_TABLE_ELEMENTS: usize = 100_000;
const MAX_INSTANCES: usize = 32;
const MAX_TABLES: usize = 32;
const MAX_MEMORIES: usize = 8;

impl ResourceLimiter for SandboxLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.memory_used + growth;
        if total > self.memory_cap || !self.quota.charge(growth) {
            self.hit_memory_cap = true;
            return Ok(false);
        }
        self.memory_used = total;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::quota::MemoryBudget;

    fn quota(budget: usize) -> Arc<InstanceQuota> {
        Arc::new(InstanceQuota::new(
            1,
            0,
            Arc::new(MemoryBudget::new(budget)),
        ))
    }

    #[test]
    fn memory_cap_is_for_all_memories_together() {
        let quota = quota(1000);
        let mut limiter = SandboxLimiter::new(100, quota.clone());
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "second memory"
        );
        assert!(limiter.hit_memory_cap);
        assert!(limiter.memory_growing(60, 100, None).unwrap());
        assert_eq!(quota.memory_used(), 100);
        drop(limiter);
        assert_eq!(quota.memory_used(), 0, "given back when the instance goes");
    }

    #[test]
    fn the_daemon_budget_caps_growth_too() {
        let mut limiter = SandboxLimiter::new(100, quota(50));
        assert!(!limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.hit_memory_cap);
    }
}
