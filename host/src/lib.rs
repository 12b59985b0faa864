//! kmsgate: a Kubernetes KMS plugin that serves the KMS v2 (and v1beta1)
//! gRPC API on a Unix socket and delegates every key operation to a
//! provider compiled to a WebAssembly component.
//!
//! A call flows: kube-apiserver → [`grpc`] (translate) → [`gateway::Gateway`]
//! (limits, routing by key id, cached status) → [`kms::KmsProvider`] →
//! [`wasm::WasmProvider`] (a sandboxed instance, reused after clean calls) → the
//! provider's own code, which reaches its backend only through
//! [`outbound`].
//!
//! # Layout
//! - [`config`] — the TOML config file, validated.
//! - [`files`] — reading the files the config names: regular, bounded, off the runtime.
//! - [`server`] — `run(config, socket, shutdown)`, the daemon's main loop.
//! - [`socket`] — the Unix socket: mode, stale-file recovery, removal.
//! - [`connections`] — bounded listeners: connection caps, idle and header timeouts.
//! - [`grpc`] — the v2 and v1beta1 gRPC services.
//! - [`proto`] — generated gRPC code, with redacting `Debug`.
//! - [`gateway`] — routing, apiserver limits, status kept fresh in the background.
//! - [`slot`] — one provider: the swappable serving version, health, canary samples.
//! - [`breaker`] — fail fast while a provider's backend is known to be down.
//! - [`coalesce`] — concurrent decrypts coalesced into batches.
//! - [`reload`] — hot swap: re-read config, build, canary, switch.
//! - [`watch`] — reload when a watched file changes.
//! - [`integrity`] — the component pin (and the place for signatures).
//! - [`limits`] — the apiserver's limits on key ids, ciphertexts, annotations.
//! - [`envelope`] — the v1beta1 ciphertext header that carries the key id.
//! - [`kms`] — the provider trait and its domain types.
//! - [`error`] — errors, and their one mapping to gRPC codes.
//! - [`wasm`] — wasmtime engine, component loading, per-call sandboxing.
//! - [`outbound`] — providers' outbound HTTP (reqwest) with TLS and caps.
//! - [`allowlist`] — which hosts a provider may reach.
//! - [`leak`] — finds a provider's credentials in a response before it sees it.
//! - [`log_limit`] — log lines outsiders can provoke, written at most every few seconds.
//! - [`secret`] — redacting wrappers for plaintext and credentials.
//! - [`sanitize`] — provider- and caller-supplied text, cut and cleaned before it is shown.
//! - [`client`] — a client for the socket (CLI and tests).
//! - [`admin_http`] — /livez, /readyz, /metrics, /providers on loopback.
//! - [`metrics`] — Prometheus metrics.
//! - [`bench`] — `kmsgate bench`, a load generator for any KMS socket.
//! - [`floor`] — the native provider benchmarks compare against.

pub mod admin_http;
pub mod allowlist;
pub mod bench;
pub mod breaker;
pub mod client;
pub mod coalesce;
pub mod config;
pub mod connections;
pub mod envelope;
pub mod error;
pub mod files;
pub mod floor;
pub mod gateway;
pub mod grpc;
pub mod integrity;
pub mod kms;
pub mod leak;
pub mod limits;
pub mod log_limit;
pub mod metrics;
pub mod outbound;
pub mod proto;
pub mod reload;
pub mod sanitize;
pub mod secret;
pub mod server;
pub mod slot;
pub mod socket;
pub mod wasm;
pub mod watch;
