//! The store's data for one call ([`HostState`]), and the host side of the
//! provider's imports: one module per import, each with its own
//! `add_to_linker`. These impls only translate and check; the logic lives
//! in [`crate::outbound`] and plain Rust.
//!
//! - [`config_store`] — `wasi:config/store`: the provider's settings.
//! - [`logging`] — `wasi:logging/logging`: log lines, cut and cleaned.
//! - [`outbound_http`] — `kmsgate:provider/outbound-http`: the only network.
//! - [`limiter`] — the memory cap of one instance, charged to its quota.
//! - [`output`] — the end of the guest's stdout and stderr, for a trap's log entry.
//!
//! WASI itself (clocks, random, and filesystem and sockets denied) is
//! wasmtime-wasi's, with a context that grants nothing.

pub mod config_store;
pub mod limiter;
pub mod logging;
pub mod outbound_http;
pub mod output;

use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::kmsgate;
use crate::meter::CallMeter;
use crate::outbound::OutboundClient;

pub use limiter::SandboxLimiter;

/// Links every import of the `batching-provider` world (a superset of
/// `provider`'s) to its host implementation.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    kmsgate::provider::types::add_to_linker::<_, HasSelf<_>>(linker, |state| state)?;
    config_store::add_to_linker(linker)?;
    logging::add_to_linker(linker)?;
    outbound_http::add_to_linker(linker)
}

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
    /// The end of what the current call wrote to stdout and stderr.
    pub output: output::OutputTail,
}

impl HostState {
    pub fn new(
        shared: Arc<ProviderShared>,
        limiter: SandboxLimiter,
        meter: Arc<CallMeter>,
    ) -> Self {
        // Deny by default: no preopened directories, no environment, no
        // arguments, no stdin, and sockets off (the default socket check
        // refuses every address; TCP, UDP and name lookup are off too).
        // stdout and stderr go to a bounded tail, read only for a trap's
        // log entry.
        let output = output::OutputTail::default();
        let wasi = WasiCtx::builder()
            .stdout(output.clone())
            .stderr(output.clone())
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
            output,
        }
    }

    /// Starts the next call on this instance, with its own clock.
    pub fn begin_call(&mut self, meter: Arc<CallMeter>) {
        self.meter = meter;
        self.limiter.hit_memory_cap = false;
        self.output.clear();
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

/// `kmsgate:provider/types` holds only types; there is nothing to implement.
impl kmsgate::provider::types::Host for HostState {}
