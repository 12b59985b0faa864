//! The kmsgate daemon: serves the Kubernetes KMS v2 (and v1beta1) gRPC API
//! on a Unix socket and routes every key operation to a provider, hot-swaps
//! providers when their files change, and answers operators on a loopback
//! admin port.
//!
//! A call flows: kube-apiserver → [`grpc`] (translate) → [`gateway::Gateway`]
//! (limits, routing by key id, cached status) → [`slot::Slot`] (the serving
//! version, its breaker and batcher) → a `kmsgate_core::kms::KmsProvider`,
//! in production a `kmsgate_wasm::WasmProvider` (a sandboxed instance,
//! reused after clean calls) → the provider's own code, which reaches its
//! backend only through the host's outbound HTTP.
//!
//! Crates below this one: `kmsgate-core` (the provider trait, errors,
//! limits, secrets), `kmsgate-wasm` (engine, sandbox, outbound HTTP),
//! `kmsgate-proto` (generated gRPC code and the client).
//!
//! # Layout
//! - [`config`] — the TOML config file, validated; read at start and at every reload.
//! - [`server`] — `run(config, socket, shutdown)`, the daemon's main loop.
//! - [`socket`] — the Unix socket: mode, stale-file recovery, removal.
//! - [`connections`] — bounded listeners: connection caps, idle and header timeouts.
//! - [`grpc`] — the v2, v1beta1 and admin gRPC services, and errors → gRPC codes.
//! - [`gateway`] — routing, apiserver limits, status kept fresh in the background.
//! - [`slot`] — one provider: the swappable serving version, health, canary samples.
//! - [`breaker`] — fail fast while a provider's backend is known to be down.
//! - [`coalesce`] — concurrent decrypts coalesced into batches.
//! - [`reload`] — hot swap: re-read config, build, canary, switch.
//! - [`watch`] — reload when a watched file changes.
//! - [`admin_http`] — /livez, /readyz, /metrics, /providers on loopback.
//! - [`metrics`] — Prometheus metrics.

pub mod admin_http;
pub mod breaker;
pub mod coalesce;
pub mod config;
pub mod connections;
pub mod gateway;
pub mod grpc;
pub mod metrics;
pub mod reload;
pub mod server;
pub mod slot;
pub mod socket;
pub mod watch;
