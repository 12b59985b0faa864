//! kmsgate's WebAssembly layer: provider components run by wasmtime, each in
//! its own sandbox, reaching the network only through the host.
//!
//! This crate knows nothing of gRPC or the daemon (Cargo keeps it so: it
//! depends only on `kmsgate-core`). It turns a [`spec::ProviderConfig`]
//! into a [`WasmProvider`], an implementation of
//! [`kmsgate_core::kms::KmsProvider`].
//!
//! Invariants:
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
//! - Every call is bounded four ways: a memory cap for the whole instance
//!   ([`host::SandboxLimiter`]); a CPU budget for the time the call spends
//!   running rather than waiting ([`meter`]; epoch interruption stops a
//!   guest over it); a wall-clock limit around everything, the caller's
//!   deadline when sooner (epochs do not interrupt host calls); and the
//!   provider's instance quota ([`quota`]), so it never holds more than
//!   its share of instances and memory.
//! - Traps and limit hits become [`ProviderError`]s here and nowhere else.

//!
//! # Layout
//! - [`spec`] — a provider's config as the operator writes it, validated, and its settings and secrets resolved.
//! - [`provider`] — [`WasmProvider`] and the [`Runtime`] (engine, linker, instance pool) they share.
//! - `bindings` — the one `bindgen!` of the WIT world; generated types stop there.
//! - `host` — the store's data, and the host side of the provider's imports, one module each with its own `add_to_linker` (config store, logging, outbound HTTP), and the memory limiter.
//! - [`meter`] — the CPU budget: running time, not waiting time.
//! - [`quota`] — each provider's share of instances, and the daemon-wide memory budget.
//! - `cache` — compiled components, in memory and on disk, by content hash.
//! - [`outbound`] — providers' outbound HTTP (reqwest) with TLS and caps.
//! - [`allowlist`] — which hosts a provider may reach.
//! - [`auth`] — credentials the host obtains, renews and applies to a provider's requests (Vault logins, AWS SigV4).
//! - [`leak`] — finds a provider's credentials in a response before it sees it.
//! - [`integrity`] — the component pin.
//! - [`oci`] — components pulled from OCI registries, checked by digest and cached.
//! - [`signature`] — detached signatures by the operator's trusted keys, checked before compiling.
//! - [`imports`] — a component's imports checked before compiling, and what the host offers.
//! - [`identity`] — the name and version a component claims (a custom section the SDK writes).

pub mod allowlist;
pub mod auth;
mod bindings;
mod cache;
mod host;
pub mod identity;
pub mod imports;
pub mod integrity;
pub mod leak;
pub mod meter;
pub mod oci;
pub mod outbound;
pub mod provider;
pub mod quota;
pub mod signature;
pub mod spec;

pub use bindings::WIT_VERSION;
pub use provider::{LoadError, Origin, Prepared, Runtime, WasmProvider};
