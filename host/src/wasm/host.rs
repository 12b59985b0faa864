//! The store's data for one call, and the host side of the provider's
//! imports. These impls only translate and check; the logic lives in
//! [`crate::outbound`] and plain Rust.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{http, kmsgate, wasi};
use crate::outbound::OutboundClient;

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
    /// Time spent in host calls (outbound HTTP, clocks, sleeps), so the CPU
    /// budget counts only the guest's own work. Kept by [`HostState::on_call_hook`].
    pub host_time: Duration,
    host_entered: Option<Instant>,
    /// When the current call began; with `host_time`, gives its guest time.
    pub call_started: Instant,
}

impl HostState {
    pub fn new(shared: Arc<ProviderShared>, memory_cap: usize) -> Self {
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
            limiter: SandboxLimiter::new(memory_cap),
            host_time: Duration::ZERO,
            host_entered: None,
            call_started: Instant::now(),
        }
    }

    /// Starts the CPU-budget clock afresh for the next call.
    pub fn begin_call(&mut self) {
        self.host_time = Duration::ZERO;
        self.host_entered = None;
        self.limiter.hit_memory_cap = false;
        self.call_started = Instant::now();
    }

    /// Guest time of the current call so far.
    pub fn guest_time(&self) -> Duration {
        self.call_started.elapsed().saturating_sub(self.host_time)
    }

    /// Installed with `Store::call_hook`: times every stay in the host.
    pub fn on_call_hook(&mut self, hook: wasmtime::CallHook) {
        match hook {
            wasmtime::CallHook::CallingHost => self.host_entered = Some(Instant::now()),
            wasmtime::CallHook::ReturningFromHost => {
                if let Some(entered) = self.host_entered.take() {
                    self.host_time += entered.elapsed();
                }
            }
            wasmtime::CallHook::CallingWasm | wasmtime::CallHook::ReturningFromWasm => {}
        }
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

/// Longest log line a provider may emit; longer ones are cut.
const MAX_LOG_LINE: usize = 1024;

impl wasi::logging::logging::Host for HostState {
    fn log(
        &mut self,
        level: wasi::logging::logging::Level,
        context: String,
        message: String,
    ) -> wasmtime::Result<()> {
        use wasi::logging::logging::Level;
        let provider = self.shared.name.as_str();
        let message = sanitize(&message);
        let context = sanitize(&context);
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

/// Cuts a guest's log text to size and drops control characters, so a
/// provider cannot forge log lines or flood the log.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_LOG_LINE)
        .collect()
}

impl kmsgate::provider::types::Host for HostState {}

impl http::Host for HostState {
    async fn send(&mut self, request: http::Request) -> Result<http::Response, http::HttpError> {
        let result = self.shared.outbound.send(request.into()).await;
        result.map(Into::into).map_err(Into::into)
    }
}

/// Caps the total linear memory of one provider instance. wasmtime's
/// `StoreLimits` caps each memory on its own; a component can have several,
/// so this sums them.
pub struct SandboxLimiter {
    memory_cap: usize,
    memory_used: usize,
    /// Set when a growth was refused, to report RESOURCE_EXHAUSTED rather
    /// than a bare trap.
    pub hit_memory_cap: bool,
}

impl SandboxLimiter {
    fn new(memory_cap: usize) -> Self {
        SandboxLimiter {
            memory_cap,
            memory_used: 0,
            hit_memory_cap: false,
        }
    }

    /// All linear memory of the instance, in bytes.
    pub fn memory_used(&self) -> usize {
        self.memory_used
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
        let total = self.memory_used + desired.saturating_sub(current);
        if total > self.memory_cap {
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

    #[test]
    fn memory_cap_is_for_all_memories_together() {
        let mut limiter = SandboxLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(
            !limiter.memory_growing(0, 60, None).unwrap(),
            "second memory"
        );
        assert!(limiter.hit_memory_cap);
        assert!(limiter.memory_growing(60, 100, None).unwrap());
    }

    #[test]
    fn log_text_is_cut_and_cleaned() {
        assert_eq!(sanitize("a\nb\u{1b}[31mc"), "ab[31mc");
        assert_eq!(sanitize(&"x".repeat(5000)).len(), MAX_LOG_LINE);
    }
}
